//! A binary frame from a host, as the Rust client decodes it: header and
//! payload, and the JSON view of the event the host gives `getEvents`.

use std::time::Duration;

use bytes::Bytes;
use ensemble_client::Event;
use ensemble_protocol::frame::{BinaryKind, BINARY_HEADER_LEN};

use crate::gen::{mutate_bytes, Rng};
use crate::Report;

pub fn run(seed: u64, budget: Duration) -> Report {
    crate::run_sync("binary_frame", seed, budget, make, check)
}

fn make(rng: &mut Rng) -> Vec<u8> {
    // Mostly a kind the host sends, so that most frames get past the header.
    let kind = match rng.below(5) {
        0 => rng.next_u64() as u8,
        1 => 1,
        2 => 2,
        3 => 3,
        _ => 0x7f,
    };
    let edge = |rng: &mut Rng| match rng.below(4) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.below(1000) as u64,
        _ => rng.next_u64(),
    };
    let mut frame = vec![kind];
    frame.extend_from_slice(&edge(rng).to_be_bytes());
    frame.extend_from_slice(&edge(rng).to_be_bytes());
    frame.extend_from_slice(&(edge(rng) as u32).to_be_bytes());
    // Now and then a payload of a whole output chunk (64 KiB).
    let len = if rng.one_in(1000) {
        65_536
    } else {
        rng.below(64)
    };
    frame.extend((0..len).map(|_| rng.next_u64() as u8));
    if rng.one_in(3) {
        mutate_bytes(rng, &mut frame);
    }
    frame
}

/// What must hold for every frame: it decodes exactly when it is long
/// enough and its kind is known, and a decoded frame encodes to itself.
pub fn check(input: &[u8]) {
    let decoded = Event::from_binary(Bytes::copy_from_slice(input));
    let valid = input.len() >= BINARY_HEADER_LEN && BinaryKind::from_u8(input[0]).is_some();
    assert_eq!(
        decoded.is_ok(),
        valid,
        "decodes iff header and kind are good"
    );
    let Ok(event) = decoded else { return };
    let Event::Bytes { header, payload } = &event else {
        panic!("a binary frame decodes to a byte event");
    };
    assert_eq!(payload.len(), input.len() - BINARY_HEADER_LEN);
    assert_eq!(&header.encode(payload)[..], input, "round trip");
    assert_eq!(event.seq(), header.seq);
    assert!(!event.name().is_empty());
    assert!(header.json_data(payload).get("data").is_some());
}
