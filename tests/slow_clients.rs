//! A client that stops reading costs the others nothing and the host's memory
//! stays bounded; when it reads again it gets everything, in order.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Events per emit call and calls: 150 MiB of log in 1 KiB events.
const PER_CALL: u64 = 10_000;
const CALLS: u64 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_delay_others_or_grow_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let producer = open(&host, json!(["slow"]), None).await;
    drive(&producer).await;

    // The stalled client: subscribes, then reads nothing at all.
    let mut stalled = Raw::connect(&host).await;
    assert_eq!(stalled.hello(json!(["slow"])).await["type"], "welcome");
    stalled
        .send_json(json!({"type": "subscribe", "since": 0}))
        .await;
    let caught_up = stalled.next_reply().await;
    assert_eq!(caught_up["type"], "caughtUp");
    let caught_up = caught_up["seq"].as_u64().unwrap();

    let healthy = [
        open(&host, json!(["slow"]), Some(0)).await,
        open(&host, json!(["slow"]), Some(0)).await,
    ];
    // Joining and taking control came first; the test events follow them.
    let base = head(&producer).await;
    let readers: Vec<_> = healthy
        .iter()
        .map(|vm| {
            let mut rx = vm.on("testEvent");
            tokio::spawn(async move {
                let mut last = base;
                while let Some(e) = rx.recv().await {
                    assert_eq!(e.seq(), last + 1, "healthy client saw a gap");
                    last = e.seq();
                    if last == base + PER_CALL * CALLS {
                        break;
                    }
                }
                last
            })
        })
        .collect();

    let rss_before = host.rss_kib();
    let payload = "p".repeat(1000);
    let mut worst_lag = Duration::ZERO;
    let mut peak_rss = rss_before;
    // RSS once the host is warm (allocator arenas, page caches, buffers):
    // after that it must not grow with the log.
    let mut warm_rss = 0;
    for call in 0..CALLS {
        if call == CALLS / 3 {
            warm_rss = peak_rss;
        }
        let r = producer
            .call("emit", json!([{"count": PER_CALL, "data": payload}]))
            .await
            .unwrap();
        let last = r["last"].as_u64().unwrap();
        let committed = Instant::now();
        for vm in &healthy {
            tokio::time::timeout(Duration::from_secs(30), vm.wait_seq(last))
                .await
                .expect("healthy client kept up")
                .unwrap();
        }
        worst_lag = worst_lag.max(committed.elapsed());
        peak_rss = peak_rss.max(host.rss_kib());
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), base + PER_CALL * CALLS);
    }
    let late_growth_mib = peak_rss.saturating_sub(warm_rss) / 1024;
    eprintln!(
        "stalled client: healthy clients' worst lag behind a 10k-event commit {worst_lag:?}; \
         host RSS {} MiB at start, {} MiB warm (50 MiB logged), peak {} MiB (150 MiB logged)",
        rss_before / 1024,
        warm_rss / 1024,
        peak_rss / 1024
    );
    // The bound: the host holds a broadcast ring (4096 events), one
    // catch-up page and a 4 MiB write buffer per connection, never the log:
    // the last 100 MiB logged must not show up in its memory.
    assert!(
        peak_rss / 1024 < 300,
        "host RSS reached {} MiB",
        peak_rss / 1024
    );
    assert!(
        late_growth_mib < 50,
        "host grew by {late_growth_mib} MiB after warming up"
    );
    assert!(
        worst_lag < Duration::from_secs(10),
        "healthy clients lagged {worst_lag:?}"
    );

    // The stalled client reads again and gets every event, in order.
    let mut next = caught_up + 1;
    while next <= base + PER_CALL * CALLS {
        let msg = tokio::time::timeout(Duration::from_secs(60), stalled.ws.next())
            .await
            .expect("stalled client is served")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "event" {
                assert_eq!(v["seq"].as_u64().unwrap(), next);
                next += 1;
            }
        }
    }
}

/// Issue 12 (1): late joiners that subscribe since 0 to a VM whose log
/// holds a lot of output, and then never read, each cost the host a bounded
/// amount of memory (≤ 16 MiB), whatever the log holds; a healthy client
/// still catches up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_late_joiners_cost_bounded_memory() {
    // ENSEMBLE_STALLED and ENSEMBLE_LATE_CALLS scale it up by hand (100
    // connections on 18 calls: 1 GiB of output).
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let stalled_count = env("ENSEMBLE_STALLED", 8) as usize;
    const CHUNK: usize = 60 << 10;
    const PER_CALL: u64 = 1000;
    let calls = env("ENSEMBLE_LATE_CALLS", 4); // 4000 events of 60 KiB: 234 MiB of output
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start_with(
        dir.path(),
        HostOptions {
            extra: vec!["--output-budget-mib".into(), "4096".into()],
            ..HostOptions::default()
        },
    );
    let producer = open(&host, json!(["late"]), None).await;
    drive(&producer).await;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; CHUNK]);
    for _ in 0..calls {
        producer
            .call(
                "emit",
                json!([{"name": "testBytes", "count": PER_CALL, "bytes": bytes}]),
            )
            .await
            .unwrap();
    }
    let last = head(&producer).await;
    // Let the host settle (commits, page cache, allocator) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = host.rss_kib();

    let mut stalled = Vec::new();
    for i in 0..stalled_count {
        let mut raw = Raw::connect(&host).await;
        assert_eq!(raw.hello(json!(["late"])).await["type"], "welcome");
        raw.send_json(json!({"type": "subscribe", "since": 0}))
            .await;
        // The first eight also send as many big reads as may run at once.
        for id in 0..if i < 8 { 64 } else { 0 } {
            raw.send_json(json!({"type": "action", "id": id, "name": "getEvents", "args": [{"since": id * 50, "limit": 10000}]}))
                .await;
        }
        // Never read from here on.
        stalled.push(raw);
    }
    let mut peak = before;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(host.rss_kib());
    }
    // A healthy late joiner still gets everything meanwhile; a big read
    // answers one bounded page.
    let healthy = open(&host, json!(["late"]), Some(0)).await;
    let page = healthy
        .call("getEvents", json!([{"since": 0, "limit": 10000}]))
        .await
        .unwrap();
    assert_eq!(page["more"], true);
    let len = page.to_string().len();
    assert!(len < 8 << 20, "a getEvents answer of {len} bytes");
    tokio::time::timeout(Duration::from_secs(60), healthy.wait_seq(last))
        .await
        .expect("a healthy late joiner caught up")
        .unwrap();
    peak = peak.max(host.rss_kib());
    let per_connection_mib = peak.saturating_sub(before) as f64 / 1024.0 / stalled_count as f64;
    eprintln!(
        "{stalled_count} stalled late joiners on {} MiB of output: host RSS {} MiB before, peak {} MiB: {per_connection_mib:.1} MiB per connection",
        (CHUNK as u64 * PER_CALL * calls) >> 20,
        before / 1024,
        peak / 1024,
    );
    assert!(
        per_connection_mib <= 16.0,
        "a stalled late joiner costs {per_connection_mib:.1} MiB"
    );
    drop(stalled);
}

/// Issue 12 (1): a member may have at most 32 connections open at once; the
/// owner is not capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_member_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let owner = open(&host, json!(["cap"]), None).await;
    let token = member_token(&host, &owner, json!(["cap"]), "viewer", "Max").await;
    let mut open_ones = Vec::new();
    for _ in 0..32 {
        let mut raw = Raw::connect(&host).await;
        raw.token = Some(token.clone());
        assert_eq!(raw.hello(json!(["cap"])).await["type"], "welcome");
        open_ones.push(raw);
    }
    let mut extra = Raw::connect(&host).await;
    extra.token = Some(token.clone());
    let refused = extra.hello(json!(["cap"])).await;
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    // The owner is not counted against anyone.
    let mut owners = Vec::new();
    for _ in 0..20 {
        owners.push(open(&host, json!(["cap"]), None).await);
    }
    // A closed connection frees its slot.
    open_ones.pop();
    let mut again = Raw::connect(&host).await;
    again.token = Some(token);
    let mut welcome = again.hello(json!(["cap"])).await;
    for _ in 0..50 {
        if welcome["type"] == "welcome" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        welcome = again.hello(json!(["cap"])).await;
    }
    assert_eq!(welcome["type"], "welcome", "{welcome}");
}
