//! Keeps docs/protocol.md in step with this crate: every error code, action,
//! event name and limit defined here must appear there, written in backticks
//! (`invalid_json`, `getEvents`, a limit's name and value on one line).

use std::path::Path;

use ensemble_protocol::frame::BINARY_HEADER_LEN;
use ensemble_protocol::key::{MAX_KEY_PARTS, MAX_KEY_PART_BYTES};
use ensemble_protocol::{
    ErrorCode, ACTIONS, DEFAULT_PAGE_LIMIT, DEFAULT_PORT, EVENTS, HARD_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES, MAX_PAGE_LIMIT, PROTOCOL_VERSION, WS_PATH,
};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The lines of the section that starts with the heading `## {title}`.
fn section<'a>(doc: &'a str, title: &str) -> Vec<&'a str> {
    let heading = format!("## {title}");
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "docs/protocol.md has no `{heading}` section"
    );
    lines.take_while(|l| !l.starts_with("## ")).collect()
}

/// The first cell of a Markdown table row, if it is one backticked word.
fn first_code_cell(line: &str) -> Option<&str> {
    let cell = line.strip_prefix('|')?.split('|').next()?.trim();
    cell.strip_prefix('`')?.strip_suffix('`')
}

#[test]
fn the_error_table_lists_exactly_the_error_codes() {
    let doc = doc();
    let documented: Vec<&str> = section(&doc, "Error codes")
        .into_iter()
        .filter_map(first_code_cell)
        .collect();
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    for code in &codes {
        assert!(
            documented.contains(code),
            "error code `{code}` has no row in the error table of docs/protocol.md"
        );
    }
    for code in &documented {
        assert!(
            codes.contains(code),
            "docs/protocol.md lists error code `{code}`, which ErrorCode does not have"
        );
    }
}

#[test]
fn every_action_has_its_own_heading() {
    let doc = doc();
    for action in ACTIONS {
        let heading = format!("### `{action}`");
        assert!(
            doc.lines().any(|l| l.starts_with(&heading)),
            "action `{action}` has no `{heading}` section in docs/protocol.md"
        );
    }
}

#[test]
fn every_event_is_named() {
    let doc = doc();
    for event in EVENTS {
        assert!(
            doc.contains(&format!("`{event}`")),
            "event `{event}` is not described in docs/protocol.md"
        );
    }
}

#[test]
fn every_limit_is_stated_with_its_value() {
    let doc = doc();
    let limits: &[(&str, String)] = &[
        ("PROTOCOL_VERSION", PROTOCOL_VERSION.to_string()),
        ("MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES.to_string()),
        ("HARD_MAX_MESSAGE_BYTES", HARD_MAX_MESSAGE_BYTES.to_string()),
        ("MAX_PAGE_LIMIT", MAX_PAGE_LIMIT.to_string()),
        ("DEFAULT_PAGE_LIMIT", DEFAULT_PAGE_LIMIT.to_string()),
        ("MAX_KEY_PARTS", MAX_KEY_PARTS.to_string()),
        ("MAX_KEY_PART_BYTES", MAX_KEY_PART_BYTES.to_string()),
        ("BINARY_HEADER_LEN", BINARY_HEADER_LEN.to_string()),
        ("DEFAULT_PORT", DEFAULT_PORT.to_string()),
        ("WS_PATH", WS_PATH.to_owned()),
    ];
    let rows = section(&doc, "Limits");
    for (name, value) in limits {
        let name_cell = format!("`{name}`");
        let value_cell = format!("`{value}`");
        assert!(
            rows.iter()
                .any(|l| first_code_cell(l) == Some(name) && l.contains(&value_cell)),
            "the limits table of docs/protocol.md has no row {name_cell} with value {value_cell}"
        );
    }
}

/// The `### \`name\`` headings of the sections from `## Actions` on (actions,
/// participants, access, LAN), in document order.
fn action_headings(doc: &str) -> Vec<String> {
    doc.lines()
        .skip_while(|l| l.trim_end() != "## Actions")
        .take_while(|l| l.trim_end() != "## Resume semantics")
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_action_headings_are_exactly_the_actions_in_order() {
    let doc = doc();
    let headings = action_headings(&doc);
    let actions: Vec<String> = ACTIONS.iter().map(|a| (*a).to_owned()).collect();
    assert_eq!(
        headings, actions,
        "docs/protocol.md's action headings (left) must be ACTIONS in its order (right)"
    );
}

/// The long flags of `ensemble serve`, read from clap's definition: every
/// field of `ServeArgs` (and of the structs it flattens) with
/// `#[arg(long ...)]` is the flag `--field-name`. Read from the source so
/// that this crate needs no dependency on the binary; `tests/host_core.rs`
/// checks the same table against `ensemble serve --help` of the real binary.
fn serve_flags() -> Vec<String> {
    // ServeArgs and the structs it flattens live in the `ensemble` crate's
    // library, which the desktop app shares.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ensemble/src");
    let settings = std::fs::read_to_string(src.join("settings.rs")).expect("settings.rs");
    let mut flags = Vec::new();
    struct_flags(&settings, "ServeArgs", &[&settings], &mut flags);
    flags
}

fn struct_flags(source: &str, name: &str, all: &[&str], flags: &mut Vec<String>) {
    let start = format!("struct {name} {{");
    let body: Vec<&str> = source
        .lines()
        .skip_while(|l| !l.contains(&start))
        .skip(1)
        .take_while(|l| l.trim() != "}")
        .collect();
    assert!(!body.is_empty(), "no struct {name}");
    // An attribute applies to the next field line (`name: Type,`).
    let mut attr = String::new();
    for line in body {
        let line = line.trim();
        if line.starts_with("///") {
            continue;
        }
        if line.starts_with("#[") || !attr.is_empty() && !line.contains(": ") {
            attr.push_str(line);
            continue;
        }
        let Some((field, ty)) = line.split_once(':') else {
            continue;
        };
        let field = field.trim().trim_start_matches("pub ").trim();
        if attr.contains("flatten") {
            let inner = ty
                .trim()
                .trim_end_matches(',')
                .rsplit("::")
                .next()
                .unwrap_or("");
            let holder = all
                .iter()
                .find(|s| s.contains(&format!("struct {inner} {{")))
                .unwrap_or_else(|| panic!("no struct {inner}"));
            struct_flags(holder, inner, all, flags);
        } else if attr.contains("long") {
            flags.push(format!("--{}", field.replace('_', "-")));
        }
        attr.clear();
    }
}

#[test]
fn the_serve_flag_table_lists_exactly_the_flags() {
    let doc = doc();
    let documented: Vec<String> = section(&doc, "`ensemble serve`")
        .into_iter()
        .filter_map(first_code_cell)
        .filter_map(|cell| cell.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let flags = serve_flags();
    assert!(flags.len() >= 10, "read only {flags:?} from ServeArgs");
    for flag in &flags {
        assert!(
            documented.contains(flag),
            "`ensemble serve {flag}` has no row in the flag table of docs/protocol.md"
        );
    }
    for flag in &documented {
        assert!(
            flags.contains(flag),
            "docs/protocol.md lists `ensemble serve {flag}`, which ServeArgs does not have"
        );
    }
}
