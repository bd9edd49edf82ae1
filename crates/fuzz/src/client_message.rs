//! A client's text frame, as the host's connection reads it: the message
//! decoder (`parse`), the credential and key of a `hello`, the arguments
//! array of an action, and `emit`'s data kept as the client wrote it.

use std::time::Duration;

use ensemble_host::connection::{parse, raw_emit_data};
use ensemble_protocol::{Args, ClientMessage, Key, MAX_MESSAGE_BYTES};
use serde_json::Value;

use crate::gen::{mutate_bytes, mutate_value, value, Rng};
use crate::Report;

/// Valid frames of each type, as text: `emit` keeps numbers a `Value`
/// cannot hold (2^64, a double's last digit), which only text can carry.
const SEEDS: &[&str] = &[
    r#"{"type":"hello","protocol":1,"key":"main","token":"t0k3n"}"#,
    r#"{"type":"hello","protocol":1,"key":["team","dev"],"joinCode":"ABCD-1234","name":"Bea"}"#,
    r#"{"type":"hello","protocol":1,"key":"k","requestJoin":true,"name":"Cy"}"#,
    r#"{"type":"hello","protocol":1,"key":"k","loginCode":"x"}"#,
    r#"{"type":"subscribe","events":["*"],"since":0}"#,
    r#"{"type":"subscribe","events":["shellData","prompt"]}"#,
    r#"{"type":"subscribe"}"#,
    r#"{"type":"action","id":1,"name":"getEvents","args":[{"since":0,"limit":10,"names":["prompt"]}]}"#,
    r#"{"type":"action","id":2,"name":"emit","args":[{"name":"testEvent","data":{"x":0.24744098492908506,"n":18446744073709551616,"s":"a \" b"}}]}"#,
    r#"{"type":"action","id":3,"name":"emit","args":[{"name":"testEvent","count":3,"data": [ 1 , "x" , { "y" : null } ] }]}"#,
    r#"{"type":"action","id":4,"name":"writeShell","args":["sh-1","ls -l\n"]}"#,
    r#"{"type":"action","id":18446744073709551615,"name":"sendPrompt","args":["sess-1","hi",{"shellContext":true}]}"#,
];

/// Field names of client messages and common action options.
const KEYS: &[&str] = &[
    "type",
    "protocol",
    "key",
    "name",
    "token",
    "joinCode",
    "loginCode",
    "requestJoin",
    "events",
    "since",
    "id",
    "args",
    "data",
    "count",
    "bytes",
    "limit",
    "names",
];

pub fn run(seed: u64, budget: Duration) -> Report {
    crate::run_sync("client_message", seed, budget, make, check)
}

fn make(rng: &mut Rng) -> Vec<u8> {
    let seed = *rng.pick(SEEDS);
    let mut text = match rng.below(8) {
        0 => value(rng, 4, KEYS).to_string(),
        1 | 2 => seed.to_owned(),
        _ => match serde_json::from_str::<Value>(seed) {
            Ok(mut v) => {
                mutate_value(rng, &mut v, KEYS);
                // Pretty-printed text has the whitespace `emit` must strip.
                if rng.one_in(4) {
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                } else {
                    v.to_string()
                }
            }
            Err(_) => seed.to_owned(),
        },
    }
    .into_bytes();
    if rng.one_in(3) {
        mutate_bytes(rng, &mut text);
    }
    text
}

/// What must hold for every frame: no panic; a frame that decodes encodes
/// and decodes again; `emit`'s raw data is JSON equal to the data parsed.
pub fn check(input: &[u8]) {
    // A text frame is UTF-8 (the WebSocket layer refuses anything else).
    let text = String::from_utf8_lossy(input);
    if text.len() > MAX_MESSAGE_BYTES {
        return;
    }
    let Ok(message) = parse(&text) else { return };
    let again = serde_json::to_string(&message).expect("a decoded message encodes");
    assert!(
        parse(&again).is_ok(),
        "a decoded message must decode again: {again}"
    );
    match &message {
        ClientMessage::Hello { key, .. } => {
            let _ = Key::from_value(key);
        }
        ClientMessage::Subscribe { .. } => {}
        ClientMessage::Action { args, .. } => {
            let _ = Args::from_value(args.clone());
            if let Some(raw) = raw_emit_data(&text, &message) {
                let raw_value: Value = serde_json::from_str(&raw).expect("emit's raw data is JSON");
                let parsed: Value = serde_json::from_str(&text).expect("a decoded frame is JSON");
                assert_eq!(
                    Some(&raw_value),
                    parsed.pointer("/args/0/data"),
                    "emit's raw data is the data the client sent"
                );
            }
        }
    }
}
