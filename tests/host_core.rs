//! Host core end to end: the real `ensemble` binary, real SQLite files, real
//! WebSocket clients.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
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
    assert_eq!(
        a.info().id,
        b.info().id,
        "string and array key reach one VM"
    );
    assert_ne!(a.info().id, other.info().id);
    let mut rxs = [a.on("testEvent"), b.on("testEvent"), c.on("testEvent")];
    let mut other_rx = other.on("testEvent");
    let base = head(&a).await;

    // Producers on two connections at once, so seqs interleave.
    let (r1, r2) = tokio::join!(emit_numbered(&a, 0, 150), emit_numbered(&b, 1000, 150));
    assert!(r1.1 <= base + 300 && r2.1 <= base + 300);
    let mut seen = Vec::new();
    for rx in rxs.iter_mut() {
        let events = collect(rx, 300, Duration::from_secs(20)).await;
        let seqs: Vec<u64> = events.iter().map(Event::seq).collect();
        assert_eq!(
            seqs,
            (base + 1..=base + 300).collect::<Vec<_>>(),
            "consecutive seqs"
        );
        seen.push(events.iter().map(data_of).collect::<Vec<_>>());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    let ns: HashSet<u64> = seen[0].iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(ns.len(), 300);

    // The other key's log is its own: its seqs start again, and it saw
    // nothing of the first key's.
    let other_base = head(&other).await;
    assert!(other_base < 10);
    other
        .call("emit", json!([{"data": {"n": "other"}}]))
        .await
        .unwrap();
    let got = collect(&mut other_rx, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq(), other_base + 1);
    assert_eq!(data_of(&got[0]), json!({"n": "other"}));
    assert!(other_rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_with_its_last_seq_gets_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let producer = open(&host, json!(["k"]), None).await;
    let reader = open(&host, json!(["k"]), Some(0)).await;
    let mut rx = reader.on("testEvent");
    let base = head(&producer).await;
    emit_numbered(&producer, 0, 50).await;
    let before = collect(&mut rx, 50, Duration::from_secs(10)).await;
    let last = before.last().map(Event::seq).unwrap();
    assert_eq!(last, base + 50);
    drop(rx);
    drop(reader);

    // Events produced while the reader is away, and while it catches up.
    emit_numbered(&producer, 50, 100).await;
    let back = open(&host, json!(["k"]), Some(last)).await;
    let mut rx = back.on("testEvent");
    let during = tokio::spawn(async move { emit_numbered(&producer, 150, 100).await });
    let after = collect(&mut rx, 200, Duration::from_secs(20)).await;
    during.await.unwrap();
    let seqs: Vec<u64> = after.iter().map(Event::seq).collect();
    assert_eq!(seqs, (last + 1..=last + 200).collect::<Vec<_>>());
    let ns: Vec<u64> = after
        .iter()
        .map(|e| data_of(e)["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (50..250).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err(),
        "nothing after the last event: no duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_any_client_saw_and_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = HostProcess::start(dir.path());
    let port = host.addr.port();
    let readers = [
        open(&host, json!(["durable"]), Some(0)).await,
        open(&host, json!(["durable"]), Some(0)).await,
    ];
    // Each reader's events are collected as they arrive.
    let seen: Vec<Arc<Mutex<Vec<Event>>>> = readers
        .iter()
        .map(|r| {
            let mut rx = r.on("*");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = seen.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    sink.lock().unwrap().push(e);
                }
            });
            seen
        })
        .collect();
    let producer = open(&host, json!(["durable"]), None).await;
    // Produce continuously; the host is killed in the middle.
    let produce = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            if producer
                .call("emit", json!([{"count": 20, "data": {"batch": n}}]))
                .await
                .is_err()
            {
                return n;
            }
            n += 1;
        }
    });
    readers[0].wait_seq(2000).await.unwrap();
    host.kill9();
    let batches = produce.await.unwrap();
    assert!(batches >= 100);

    // What the clients received before the kill.
    let mut received = Vec::new();
    for seen in &seen {
        let events = std::mem::take(&mut *seen.lock().unwrap());
        // A listener added after `open` may miss the first (joining)
        // events; from its first event on there is no gap.
        let seqs: Vec<u64> = events.iter().map(Event::seq).collect();
        let first = seqs.first().copied().unwrap_or(1);
        assert!(first <= 3, "{first}");
        assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>());
        received.push(events);
    }

    // Restart on the same data dir and port: the readers reconnect by themselves.
    let host = HostProcess::start_with(
        dir.path(),
        HostOptions {
            bind: &format!("127.0.0.1:{port}"),
            ..HostOptions::default()
        },
    );
    let check = open(&host, json!(["durable"]), None).await;
    let mut logged = Vec::new();
    let mut since = 0;
    loop {
        let page = check
            .call("getEvents", json!([{"since": since, "limit": 10000}]))
            .await
            .unwrap();
        for e in page["events"].as_array().unwrap() {
            logged.push((e["seq"].as_u64().unwrap(), e["data"].clone()));
        }
        since = page["next"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            break;
        }
    }
    let head = logged.len() as u64;
    let seqs: Vec<u64> = logged.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "the log has no gap");
    for events in &received {
        assert!(
            events.len() as u64 <= head,
            "a client saw more than the log holds"
        );
        for e in events {
            assert_eq!(
                logged[(e.seq() - 1) as usize].1,
                data_of(e),
                "seq {}",
                e.seq()
            );
        }
    }

    // seq continues without a gap, and the readers resume by themselves.
    let r = check
        .call("emit", json!([{"data": {"after": "restart"}}]))
        .await
        .unwrap();
    assert_eq!(r["first"].as_u64().unwrap(), head + 1);
    for ((reader, seen), before) in readers.iter().zip(&seen).zip(&received) {
        reader.wait_seq(head + 1).await.unwrap();
        // The collector task may not have stored the last event yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().last().map(Event::seq) != Some(head + 1)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rest: Vec<u64> = seen.lock().unwrap().iter().map(Event::seq).collect();
        let from = before.last().map_or(0, Event::seq) + 1;
        assert_eq!(
            rest,
            (from..=head + 1).collect::<Vec<_>>(),
            "resumed without gap or repeat"
        );
    }
}

/// Issue 12 (9): docs/protocol.md's `ensemble serve` table lists exactly the
/// flags of the real binary's `--help`, with the defaults it prints.
#[test]
fn the_serve_flag_table_matches_serve_help() {
    let help = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .expect("ensemble serve --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    // "      --flag <VALUE>   text [default: X]" (help itself aside).
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines() {
        let Some(rest) = line.trim_start().strip_prefix("--") else {
            continue;
        };
        let flag = format!("--{}", rest.split_whitespace().next().unwrap_or(""));
        if flag == "--help" {
            continue;
        }
        let default = line
            .rsplit_once("[default: ")
            .map(|(_, d)| d.split(']').next().unwrap_or("").to_owned());
        flags.push((flag, default));
    }
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md"),
    )
    .unwrap();
    let rows: Vec<&str> = doc
        .lines()
        .skip_while(|l| l.trim_end() != "## `ensemble serve`")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `--"))
        .collect();
    assert!(flags.len() >= 10, "read {flags:?} from {help}");
    for (flag, default) in &flags {
        let row = rows
            .iter()
            .find(|r| r[3..].split([' ', '`']).next() == Some(flag.as_str()))
            .unwrap_or_else(|| panic!("`{flag}` has no row in docs/protocol.md's flag table"));
        if let Some(default) = default {
            let cell = row.split('|').nth(2).unwrap_or("");
            assert!(
                cell.contains(&format!("`{default}`")),
                "docs/protocol.md gives {flag} the default {cell:?}, --help says {default}"
            );
        }
    }
    assert_eq!(
        rows.len(),
        flags.len(),
        "the table has rows for flags --help does not list"
    );
}

/// Issue 12 (7): numbers a client gives come back exactly as given, in the
/// live event, in catch-up and in `getEvents`: doubles to their last digit,
/// integers beyond 64 bits, exponents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_come_back_exactly_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    // Random doubles, written the shortest way that reads back the same.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut doubles = Vec::new();
    while doubles.len() < 2000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let d = f64::from_bits(state);
        if d.is_finite() {
            doubles.push(format!("{d:?}"));
        }
    }
    let data = format!(
        r#"{{"x":0.24744098492908506,"big":18446744073709551616,"neg":-9223372036854775809,"small":1e-7,"kept":[1.0,2.50,1E3],"doubles":[{}]}}"#,
        doubles.join(",")
    );
    let mut raw = Raw::connect(&host).await;
    assert_eq!(raw.hello(json!(["numbers"])).await["type"], "welcome");
    raw.send(r#"{"type":"subscribe"}"#).await;
    assert_eq!(raw.next_reply().await["type"], "caughtUp");
    // Spaces and newlines outside strings may go; the numbers may not change.
    let spaced = data.replace(",\"", ", \"").replace(":", ": ");
    raw.send(format!(
        r#"{{"type":"action","id":1,"name":"emit","args":[{{"data":{spaced}}}]}}"#
    ))
    .await;
    let expected = format!(r#""data":{data}}}"#);
    let mut live = None;
    let mut result = false;
    while live.is_none() || !result {
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut raw.ws),
        )
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            if t.contains(r#""type":"event""#) && t.contains("testEvent") {
                live = Some(t.to_string());
            } else if t.contains(r#""type":"result""#) {
                result = true;
            }
        }
    }
    let live = live.unwrap();
    assert!(
        live.ends_with(&expected),
        "live event changed the numbers: {live}"
    );
    let page = raw
        .call(2, "getEvents", json!([{"names": ["testEvent"]}]))
        .await;
    assert_eq!(page["type"], "result");
    let mut raw2 = Raw::connect(&host).await;
    raw2.hello(json!(["numbers"])).await;
    raw2.send(r#"{"type":"action","id":3,"name":"getEvents","args":[{"names":["testEvent"]}]}"#)
        .await;
    let text = loop {
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut raw2.ws),
        )
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            if t.contains(r#""id":3"#) {
                break t.to_string();
            }
        }
    };
    assert!(text.contains(&expected), "getEvents changed the numbers");
}

/// Issue 12 (12): `--durability full` (SQLite `synchronous=FULL`) works, keeps
/// what it committed across a kill -9, and what it costs is measured: the
/// time of 300 single-event commits in each mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_full_commits_survive_and_its_cost_is_measured() {
    let mut took = Vec::new();
    for mode in ["normal", "full"] {
        let dir = tempfile::tempdir().unwrap();
        let mut host = HostProcess::start_with(
            dir.path(),
            HostOptions {
                extra: vec!["--durability".into(), mode.into()],
                ..HostOptions::default()
            },
        );
        let vm = open(&host, json!(["durable"]), None).await;
        let start = std::time::Instant::now();
        let mut last = 0;
        for n in 0..300 {
            last = vm.call("emit", json!([{"data": {"n": n}}])).await.unwrap()["last"]
                .as_u64()
                .unwrap();
        }
        let elapsed = start.elapsed();
        took.push((mode, elapsed));
        host.kill9();
        let host = HostProcess::start(dir.path());
        let vm = open(&host, json!(["durable"]), None).await;
        assert!(head(&vm).await >= last, "{mode}: a commit was lost");
    }
    for (mode, elapsed) in &took {
        eprintln!(
            "durability {mode}: 300 single-event commits in {elapsed:?} ({:?} each)",
            *elapsed / 300
        );
    }
}
