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
