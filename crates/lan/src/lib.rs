//! Sharing a host on the LAN, without the host's internals:
//!
//! * [`identity`]: one long-lived key pair and self-signed certificate per
//!   install, and its fingerprint.
//! * [`tls`]: TLS 1.3 with mutual authentication by pinned fingerprints
//!   (no certificate authority), and the [`tls::verification_code`] both
//!   people compare on first contact.
//! * [`discovery`]: mDNS announcement and browsing (mdns-sd), restricted to
//!   the interfaces chosen, with the announced data treated as a hint only.
//! * [`join`]: joining a peer host (WebSocket over pinned TLS, `hello`).
//! * [`peers`]: the hosts this install has paired with (fingerprint, address,
//!   the member token they issued).
#![forbid(unsafe_code)]

pub mod discovery;
pub mod identity;
pub mod join;
pub mod peers;
pub mod tls;

pub use identity::{write_private, Fingerprint, Identity};
