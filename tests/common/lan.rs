//! Helpers for the LAN tests: hosts that share, the LAN state, and waiting
//! for it to change.

use std::time::{Duration, Instant};

use ensemble_client::VmClient;
use serde_json::{json, Value};

/// `ensemble serve` flags for a host that shares on loopback, announcing
/// on `lo` only (never the machine's real interfaces).
pub fn sharing_on_lo(name: &str) -> Vec<String> {
    [
        "--lan",
        "--lan-bind",
        "127.0.0.1:0",
        "--mdns-interfaces",
        "lo",
        "--lan-name",
        name,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// A host that does not share but browses on `lo`.
pub fn browsing_on_lo() -> Vec<String> {
    vec!["--mdns-interfaces".into(), "lo".into()]
}

pub async fn lan(vm: &VmClient, browse: bool) -> Value {
    vm.call("getLan", json!([{ "browse": browse }]))
        .await
        .expect("getLan")
}

/// Polls `getLan` until `pred` holds; answers the state and when it held.
pub async fn wait_lan(
    vm: &VmClient,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let state = lan(vm, true).await;
        if pred(&state) {
            return (state, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last state: {state:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The nearby entry with `fingerprint`, if listed.
pub fn nearby<'a>(state: &'a Value, fingerprint: &str) -> Option<&'a Value> {
    state["nearby"]
        .as_array()?
        .iter()
        .find(|h| h["fingerprint"] == fingerprint)
}

/// The join with `id`.
pub fn join(state: &Value, id: u64) -> Value {
    state["joins"]
        .as_array()
        .and_then(|j| j.iter().find(|j| j["joinId"] == id))
        .cloned()
        .unwrap_or(Value::Null)
}

/// SHA-256 of the host's certificate, as the LAN layer names it.
pub fn fingerprint_of(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let der = std::fs::read(data_dir.join("identity-cert.der")).expect("identity certificate");
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
