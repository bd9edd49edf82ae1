//! Host core end to end: the real `ensemble` binary, real SQLite files, real
//! WebSocket clients.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use ensemble_client::Event;
use serde_json::json;

fn data_of(e: &Event) -> serde_json::Value {
    match e {
        Event::Json(f) => f.data.clone(),
        Event::Bytes { .. } => panic!("unexpected binary event"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_see_the_same_sequence_and_other_keys_see_none() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let a = open(&host, json!(["shared-agent"]), None).await;
    let b = open(&host, json!("shared-agent"), None).await;
    let c = open(&host, json!(["shared-agent"]), None).await;
    let other = open(&host, json!(["other"]), None).await;
    assert_eq!(a.info().id, b.info().id, "string and array key reach one VM");
    assert_ne!(a.info().id, other.info().id);
    let mut rxs = [a.on("*"), b.on("*"), c.on("*")];
    let mut other_rx = other.on("*");

    // Producers on two connections at once, so seqs interleave.
    let (r1, r2) = tokio::join!(emit_numbered(&a, 0, 150), emit_numbered(&b, 1000, 150));
    assert!(r1.1 <= 300 && r2.1 <= 300);
    let mut seen = Vec::new();
    for rx in rxs.iter_mut() {
        let events = collect(rx, 300, Duration::from_secs(20)).await;
        let seqs: Vec<u64> = events.iter().map(Event::seq).collect();
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "consecutive seq from 1");
        seen.push(events.iter().map(data_of).collect::<Vec<_>>());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    let ns: HashSet<u64> = seen[0].iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(ns.len(), 300);

    // The other key's log is its own: its first event is seq 1, and it saw
    // nothing of the first key's.
    other
        .call("emit", json!([{"data": {"n": "other"}}]))
        .await
        .unwrap();
    let got = collect(&mut other_rx, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq(), 1);
    assert_eq!(data_of(&got[0]), json!({"n": "other"}));
    assert!(other_rx.try_recv().is_err());
}
