//! Inputs the fuzzer found, kept so that what broke stays fixed.

/// `emit` options given as an array: the host's raw `data` was the array's
/// first element while `emit` read `data` from the second position.
#[test]
fn emit_options_by_position() {
    for input in [
        r#"{"type":"action","id":4294967295,"name":"emit","args":[[{}]]}"#,
        r#"{"type":"action","id":2,"name":"emit","args":[[1.0573343469695768e+18]]}"#,
        r#"{"type":"action","id":3,"name":"emit","args":[["emit"]]}"#,
    ] {
        ensemble_fuzz::client_message::check(input.as_bytes());
    }
}
