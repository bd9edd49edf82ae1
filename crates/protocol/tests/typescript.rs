//! Generates the web UI's protocol types, `ui/src/lib/protocol.gen.ts`, from
//! this crate, and fails when the checked-in file is stale. Run with
//! `UPDATE_TS=1` to rewrite it.
//!
//! Nothing here is copied by hand from the Rust definitions: the action,
//! event and error code lists are the crate's own; the binary frame layout is
//! read back from an encoded header; each message shape is derived from what
//! serde writes for a sample of it (a field present in the full sample but
//! absent from the minimal one is optional). Only JSON values the Rust side
//! types as `Value` get their TypeScript type from [`OVERRIDES`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use ensemble_protocol::frame::BINARY_HEADER_LEN;
use ensemble_protocol::key::{MAX_KEY_PARTS, MAX_KEY_PART_BYTES};
use ensemble_protocol::{
    BinaryHeader, BinaryKind, ClientMessage, ErrorBody, ErrorCode, EventFrame, Holder, JoinRequest,
    Key, Limits, Participant, Role, ServerMessage, VmInfo, ACTIONS, DEFAULT_PAGE_LIMIT,
    DEFAULT_PORT, EVENTS, HARD_MAX_MESSAGE_BYTES, INPUT_ACTIONS, MAX_MESSAGE_BYTES, MAX_PAGE_LIMIT,
    OWNER_ACTIONS, PROTOCOL_VERSION, WS_PATH,
};
use serde::Serialize;
use serde_json::{json, Value};

const OUTPUT: &str = "../../ui/src/lib/protocol.gen.ts";

/// TypeScript types for fields that are free JSON on the Rust side, by
/// `Interface.field`.
const OVERRIDES: &[(&str, &str)] = &[
    ("Hello.key", "string | string[]"),
    ("Action.args", "unknown[]"),
    ("ResultMessage.value", "unknown"),
    ("EventFrame.data", "unknown"),
    ("ErrorBody.code", "ErrorCode"),
    ("ErrorBody.data", "unknown"),
    ("Participant.role", "Role"),
    ("Welcome.you", "Participant"),
    ("Welcome.participants", "Participant[]"),
    ("Welcome.control", "Holder | null"),
    ("Welcome.joinRequests", "JoinRequest[]"),
    ("VmInfo.key", "string[]"),
    ("Welcome.vm", "VmInfo"),
    ("Welcome.limits", "Limits"),
    ("Welcome.isolation", "\"bwrap\" | \"none\""),
    ("ErrorMessage.error", "ErrorBody"),
];

/// One interface: its name, its tag field (whose sample value becomes a
/// literal type), and a full and a minimal sample as serde writes them.
struct Shape {
    name: &'static str,
    tag: &'static str,
    full: Value,
    minimal: Value,
}

fn shape(name: &'static str, full: impl Serialize, minimal: impl Serialize) -> Shape {
    let value = |v: serde_json::Result<Value>| v.expect("protocol samples serialize");
    Shape {
        name,
        tag: "type",
        full: value(serde_json::to_value(full)),
        minimal: value(serde_json::to_value(minimal)),
    }
}

/// A variant of an enum tagged by `tag` (not a message's `type`).
fn variant(name: &'static str, tag: &'static str, sample: impl Serialize) -> Shape {
    let v = serde_json::to_value(sample).expect("protocol samples serialize");
    Shape {
        name,
        tag,
        full: v.clone(),
        minimal: v,
    }
}

fn participant() -> Participant {
    Participant {
        id: "p1".into(),
        name: "n".into(),
        color: "#000000".into(),
        role: Role::Owner,
        connected: true,
        last_seen: 1,
    }
}

fn person() -> Holder {
    Holder::Person {
        participant_id: "p1".into(),
    }
}

fn key() -> Key {
    Key::new(vec!["k".into()]).expect("valid key")
}

fn client_shapes() -> Vec<Shape> {
    vec![
        shape(
            "Hello",
            ClientMessage::Hello {
                protocol: 1,
                key: json!(["k"]),
                name: Some("n".into()),
                token: Some("t".into()),
                join_code: Some("c".into()),
                login_code: Some("l".into()),
                request_join: true,
            },
            ClientMessage::Hello {
                protocol: 1,
                key: json!(["k"]),
                name: None,
                token: None,
                join_code: None,
                login_code: None,
                request_join: false,
            },
        ),
        shape(
            "Subscribe",
            ClientMessage::Subscribe {
                events: Some(vec!["e".into()]),
                since: Some(1),
            },
            ClientMessage::Subscribe {
                events: None,
                since: None,
            },
        ),
        shape(
            "Action",
            ClientMessage::Action {
                id: 1,
                name: "a".into(),
                args: json!([]),
            },
            ClientMessage::Action {
                id: 1,
                name: "a".into(),
                args: json!([]),
            },
        ),
    ]
}

fn server_shapes() -> Vec<Shape> {
    let welcome = |token: Option<String>, join_requests| ServerMessage::Welcome {
        protocol: 1,
        server: "s".into(),
        vm: VmInfo { id: 1, key: key() },
        head: 0,
        first: 1,
        output_from: 1,
        limits: Limits::default(),
        isolation: "bwrap".into(),
        you: participant(),
        participants: vec![participant()],
        control: Some(person()),
        control_requests: vec!["p2".into()],
        join_requests,
        token,
    };
    let error = |id| ServerMessage::Error {
        id,
        error: ErrorBody::new(ErrorCode::Internal, "m"),
    };
    let result = || ServerMessage::Result {
        id: 1,
        value: json!(null),
    };
    vec![
        shape(
            "Welcome",
            welcome(Some("t".into()), Some(vec![join_request()])),
            welcome(None, None),
        ),
        shape(
            "JoinPending",
            ServerMessage::JoinPending {
                request_id: "j1".into(),
            },
            ServerMessage::JoinPending {
                request_id: "j1".into(),
            },
        ),
        shape(
            "CaughtUp",
            ServerMessage::CaughtUp { seq: 1 },
            ServerMessage::CaughtUp { seq: 1 },
        ),
        shape("ResultMessage", result(), result()),
        shape("ErrorMessage", error(Some(1)), error(None)),
    ]
}

fn join_request() -> JoinRequest {
    JoinRequest {
        request_id: "j1".into(),
        name: "n".into(),
        since: 1,
        code: Some("123 456".into()),
        fingerprint: Some("ab".into()),
    }
}

/// A join request over plain WebSocket: no code, no fingerprint.
fn plain_join_request() -> JoinRequest {
    JoinRequest {
        code: None,
        fingerprint: None,
        ..join_request()
    }
}

fn part_shapes() -> Vec<Shape> {
    let body = || ErrorBody::new(ErrorCode::Internal, "m");
    let with_data = || body().with_data(json!({ "holder": null }));
    let vm = || VmInfo { id: 1, key: key() };
    let frame = || EventFrame {
        seq: 1,
        ts: 1,
        name: "e".into(),
        data: json!(null),
    };
    vec![
        shape("ErrorBody", with_data(), body()),
        shape("Participant", participant(), participant()),
        shape("JoinRequest", join_request(), plain_join_request()),
        shape("VmInfo", vm(), vm()),
        shape("Limits", Limits::default(), Limits::default()),
        shape("EventFrame", frame(), frame()),
    ]
}

/// The TypeScript type of a sample value.
fn ts_type(v: &Value) -> String {
    match v {
        Value::Null => "unknown".into(),
        Value::Bool(_) => "boolean".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(items) => match items.first() {
            Some(first) => format!("{}[]", ts_type(first)),
            None => "unknown[]".into(),
        },
        Value::Object(map) => {
            // Sorted: serde_json's map keeps insertion order when another
            // crate of the workspace turns on `preserve_order`.
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{k}: {}", ts_type(v)))
                .collect();
            format!("{{ {} }}", fields.join("; "))
        }
    }
}

fn write_interface(out: &mut String, s: &Shape) {
    let overrides: BTreeMap<&str, &str> = OVERRIDES.iter().copied().collect();
    let (Value::Object(full), Value::Object(minimal)) = (&s.full, &s.minimal) else {
        panic!("{} does not serialize as an object", s.name);
    };
    writeln!(out, "export interface {} {{", s.name).unwrap();
    // Sorted whatever serde_json's map order is (see `ts_type`).
    let full: BTreeMap<&String, &Value> = full.iter().collect();
    for (field, value) in full {
        let ty = if field == s.tag {
            format!("{value}")
        } else if let Some(t) = overrides.get(format!("{}.{field}", s.name).as_str()) {
            (*t).to_owned()
        } else {
            ts_type(value)
        };
        let optional = if minimal.contains_key(field) { "" } else { "?" };
        writeln!(out, "  {field}{optional}: {ty};").unwrap();
    }
    writeln!(out, "}}\n").unwrap();
}

fn string_union(out: &mut String, list_name: &str, type_name: &str, items: &[&str]) {
    writeln!(out, "export const {list_name} = [").unwrap();
    for item in items {
        writeln!(out, "  {},", json!(item)).unwrap();
    }
    writeln!(out, "] as const;").unwrap();
    writeln!(
        out,
        "export type {type_name} = (typeof {list_name})[number];\n"
    )
    .unwrap();
}

/// The variants of [`Holder`], named for the TypeScript union.
fn holder_shapes() -> Vec<Shape> {
    let shapes = vec![
        variant("HolderPerson", "kind", person()),
        variant(
            "HolderAgent",
            "kind",
            Holder::Agent {
                session_id: "s1".into(),
                supervisor: "p1".into(),
            },
        ),
    ];
    // A new variant must get a sample above: this match stops compiling.
    for s in &shapes {
        let holder: Holder = serde_json::from_value(s.full.clone()).expect("holder sample");
        match holder {
            Holder::Person { .. } | Holder::Agent { .. } => {}
        }
    }
    shapes
}

/// Every role, as serde writes it; the match keeps the list complete.
fn roles() -> Vec<String> {
    let all = [Role::Owner, Role::Collaborator, Role::Viewer];
    for role in all {
        match role {
            Role::Owner | Role::Collaborator | Role::Viewer => {}
        }
    }
    all.iter()
        .map(|r| {
            let v = serde_json::to_value(r).expect("role serializes");
            v.as_str().expect("role is a string").to_owned()
        })
        .collect()
}

/// Where each header field sits, read back from an encoded header whose
/// fields are distinct byte patterns.
fn header_layout() -> Vec<(&'static str, usize, usize)> {
    let header = BinaryHeader {
        kind: BinaryKind::TestBytes,
        seq: 0x1112_1314_1516_1718,
        ts: 0x2122_2324_2526_2728,
        id: 0x3132_3334,
    };
    let bytes = header.encode(b"");
    assert_eq!(bytes.len(), BINARY_HEADER_LEN);
    let find = |pattern: &[u8]| {
        bytes
            .windows(pattern.len())
            .position(|w| w == pattern)
            .expect("field in the encoded header")
    };
    vec![
        ("kind", find(&[BinaryKind::TestBytes as u8]), 1),
        ("seq", find(&header.seq.to_be_bytes()), 8),
        ("ts", find(&header.ts.to_be_bytes()), 8),
        ("id", find(&header.id.to_be_bytes()), 4),
    ]
}

fn generate() -> String {
    let mut out = String::new();
    out.push_str(
        "// Generated by crates/protocol/tests/typescript.rs from the Rust protocol\n\
         // definition. Do not edit: run `UPDATE_TS=1 cargo test -p ensemble-protocol --test typescript`.\n\n",
    );

    writeln!(out, "export const PROTOCOL_VERSION = {PROTOCOL_VERSION};").unwrap();
    writeln!(out, "export const WS_PATH = {};", json!(WS_PATH)).unwrap();
    writeln!(out, "export const DEFAULT_PORT = {DEFAULT_PORT};").unwrap();
    writeln!(out, "export const MAX_MESSAGE_BYTES = {MAX_MESSAGE_BYTES};").unwrap();
    writeln!(
        out,
        "export const HARD_MAX_MESSAGE_BYTES = {HARD_MAX_MESSAGE_BYTES};"
    )
    .unwrap();
    writeln!(out, "export const MAX_PAGE_LIMIT = {MAX_PAGE_LIMIT};").unwrap();
    writeln!(
        out,
        "export const DEFAULT_PAGE_LIMIT = {DEFAULT_PAGE_LIMIT};"
    )
    .unwrap();
    writeln!(out, "export const MAX_KEY_PARTS = {MAX_KEY_PARTS};").unwrap();
    writeln!(
        out,
        "export const MAX_KEY_PART_BYTES = {MAX_KEY_PART_BYTES};\n"
    )
    .unwrap();

    string_union(&mut out, "ACTIONS", "ActionName", ACTIONS);
    string_union(&mut out, "INPUT_ACTIONS", "InputActionName", INPUT_ACTIONS);
    string_union(&mut out, "OWNER_ACTIONS", "OwnerActionName", OWNER_ACTIONS);
    string_union(&mut out, "EVENTS", "EventName", EVENTS);
    let roles = roles();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    string_union(&mut out, "ROLES", "Role", &roles);
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    string_union(&mut out, "ERROR_CODES", "KnownErrorCode", &codes);
    writeln!(
        out,
        "/** A code a newer host may send is still a string. */\nexport type ErrorCode = KnownErrorCode | (string & {{}});\n"
    )
    .unwrap();

    writeln!(
        out,
        "/** Binary frame header: big-endian integers, then the payload. */"
    )
    .unwrap();
    writeln!(out, "export const BINARY_HEADER_LEN = {BINARY_HEADER_LEN};").unwrap();
    writeln!(out, "export const BINARY_HEADER = {{").unwrap();
    for (field, offset, size) in header_layout() {
        writeln!(out, "  {field}: {{ offset: {offset}, size: {size} }},").unwrap();
    }
    writeln!(out, "}} as const;\n").unwrap();

    writeln!(out, "export const BinaryKind = {{").unwrap();
    let kinds: Vec<BinaryKind> = (0..=u8::MAX).filter_map(BinaryKind::from_u8).collect();
    for kind in &kinds {
        writeln!(out, "  {:?}: {},", kind, *kind as u8).unwrap();
    }
    writeln!(out, "}} as const;").unwrap();
    writeln!(
        out,
        "export type BinaryKind = (typeof BinaryKind)[keyof typeof BinaryKind];\n"
    )
    .unwrap();
    writeln!(out, "/** The event name each binary kind stands for. */").unwrap();
    writeln!(
        out,
        "export const BINARY_KIND_EVENT: Record<BinaryKind, EventName> = {{"
    )
    .unwrap();
    for kind in &kinds {
        writeln!(out, "  {}: {},", *kind as u8, json!(kind.event_name())).unwrap();
    }
    writeln!(out, "}};\n").unwrap();

    let names = |shapes: &[Shape]| {
        shapes
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    for s in part_shapes() {
        write_interface(&mut out, &s);
    }
    let holders = holder_shapes();
    for s in &holders {
        write_interface(&mut out, s);
    }
    writeln!(
        out,
        "/** Who holds the control lock (`null` on the wire: nobody). */\nexport type Holder = {};\n",
        names(&holders)
    )
    .unwrap();
    let client = client_shapes();
    for s in &client {
        write_interface(&mut out, s);
    }
    let server = server_shapes();
    for s in &server {
        write_interface(&mut out, s);
    }
    writeln!(out, "export type ClientMessage = {};", names(&client)).unwrap();
    writeln!(
        out,
        "export type ServerMessage = {} | ({{ type: \"event\" }} & EventFrame);",
        names(&server)
    )
    .unwrap();
    out
}

#[test]
fn the_ui_protocol_types_are_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(OUTPUT);
    let fresh = generate();
    if std::env::var_os("UPDATE_TS").is_some() {
        std::fs::write(&path, &fresh)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "{} is stale: run `UPDATE_TS=1 cargo test -p ensemble-protocol --test typescript` and commit it",
        path.display()
    );
}
