//! What the `ensemble` command shares with the desktop app: the host's
//! settings ([`settings`]) and the configuration file that holds them
//! ([`config`]), so that both read the same file the same way.
#![forbid(unsafe_code)]

pub mod config;
pub mod settings;
