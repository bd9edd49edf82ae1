//! Bad input end to end: every malformed or unexpected message gets a typed
//! error, and the connection, the VM and the log stay healthy.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    v["error"]["code"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_message_gets_a_typed_error_and_nothing_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let watcher = open(&host, json!(["bad"]), Some(0)).await;
    let mut watched = watcher.on("testEvent");
    let mut raw = Raw::connect(&host).await;

    // Before hello.
    raw.send_json(json!({"type": "action", "id": 1, "name": "getEvents"}))
        .await;
    let r = raw.next_reply().await;
    assert_eq!(code(&r), "not_open");
    assert_eq!(r["id"], 1);
    raw.send_json(json!({"type": "subscribe"})).await;
    assert_eq!(code(&raw.next_reply().await), "not_open");

    // Hello with the wrong version or a bad key.
    raw.send_json(json!({"type": "hello", "protocol": 2, "key": ["bad"]}))
        .await;
    assert_eq!(code(&raw.next_reply().await), "unsupported_version");
    for key in [
        json!(null),
        json!([]),
        json!([""]),
        json!({"a": 1}),
        json!([1]),
        json!(7),
    ] {
        assert_eq!(code(&raw.hello(key).await), "invalid_key");
    }
    raw.send_json(json!({"type": "hello", "protocol": "one", "key": ["bad"]}))
        .await;
    assert_eq!(code(&raw.next_reply().await), "invalid_args");

    // Frames that are not messages.
    raw.send("{not json").await;
    assert_eq!(code(&raw.next_reply().await), "invalid_json");
    raw.send("[1,2,3]").await;
    assert_eq!(code(&raw.next_reply().await), "unknown_type");
    raw.send_json(json!({"type": "teleport"})).await;
    assert_eq!(code(&raw.next_reply().await), "unknown_type");
    raw.ws
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(code(&raw.next_reply().await), "unsupported_frame");
    let big = format!(
        r#"{{"type":"action","id":9,"name":"emit","args":["{}"]}}"#,
        "x".repeat(2 << 20)
    );
    raw.send(big).await;
    assert_eq!(code(&raw.next_reply().await), "message_too_large");

    // Now open the VM; a second hello is refused.
    let welcome = raw.hello(json!(["bad"])).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let head = welcome["head"].as_u64().unwrap();
    assert_eq!(code(&raw.hello(json!(["bad"])).await), "already_open");

    // Actions: unknown names, wrong arguments, ranges.
    let mut id = 100;
    let mut call = |name: &str, args: Value| {
        id += 1;
        (
            id,
            json!({"type": "action", "id": id, "name": name, "args": args}),
        )
    };
    let cases = [
        (call("teleport", json!([])), "unknown_action"),
        (call("getEvents", json!({"since": 0})), "invalid_args"),
        (
            call("getEvents", json!([{"since": "zero"}])),
            "invalid_args",
        ),
        (call("getEvents", json!([{"since": -1}])), "invalid_args"),
        (call("getEvents", json!([{"limit": 0}])), "invalid_args"),
        (call("getEvents", json!([{"limit": 10001}])), "invalid_args"),
        (call("getEvents", json!([{"bogus": 1}])), "invalid_args"),
        (call("getEvents", json!([{}, {}])), "invalid_args"),
        (
            call("getEvents", json!([{"since": 999}])),
            "since_beyond_head",
        ),
        (call("getSequencedEvents", json!([])), "invalid_args"),
        (call("getSequencedEvents", json!([42])), "invalid_args"),
        (
            call("getSequencedEvents", json!(["s", {"since": 5}])),
            "since_beyond_head",
        ),
        (call("emit", json!([{"count": 0}])), "invalid_args"),
        (call("emit", json!([{"name": "shellData"}])), "invalid_args"),
        (
            call("emit", json!([{"name": "sessionEvent"}])),
            "invalid_args",
        ),
        (
            call("emit", json!([{"name": "testBytes", "bytes": "!!"}])),
            "invalid_args",
        ),
    ];
    for ((id, msg), expected) in cases {
        raw.send_json(msg.clone()).await;
        let r = raw.next_reply().await;
        assert_eq!(code(&r), expected, "{msg} gave {r}");
        assert_eq!(r["id"], id);
    }
    raw.send_json(json!({"type": "action", "id": "x", "name": "getEvents"}))
        .await;
    assert_eq!(code(&raw.next_reply().await), "invalid_args");

    // A subscribe from beyond the head is refused and can be retried.
    raw.send_json(json!({"type": "subscribe", "since": 999}))
        .await;
    assert_eq!(code(&raw.next_reply().await), "since_beyond_head");
    raw.send_json(json!({"type": "subscribe", "since": 0}))
        .await;
    assert_eq!(raw.next_reply().await["type"], "caughtUp");

    // The same connection still works, and so does everyone else's.
    raw.send_json(json!({"type": "action", "id": 1, "name": "emit", "args": [{"data": "ok"}]}))
        .await;
    let r = raw.next_reply().await;
    assert_eq!(r["type"], "result", "{r}");
    assert_eq!(
        r["value"]["first"],
        head + 1,
        "no bad input reached the log"
    );
    let got = collect(&mut watched, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq(), head + 1);

    // Over the hard limit the socket is closed with 1009; the host lives on.
    let huge = "y".repeat(17 << 20);
    let _ = raw.ws.send(Message::Text(huge.into())).await;
    let mut close_code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), raw.ws.next()).await {
        match msg {
            Ok(Message::Close(Some(frame))) => {
                close_code = Some(u16::from(frame.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(close_code, Some(1009));
    let again = open(&host, json!(["bad"]), Some(0)).await;
    let page = again
        .call("getEvents", json!([{"names": ["testEvent"]}]))
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_actions_are_disabled_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start_with(
        dir.path(),
        HostOptions {
            test_actions: false,
            ..HostOptions::default()
        },
    );
    let vm = open(&host, json!(["k"]), None).await;
    let err = vm.call("emit", json!([{"data": 1}])).await.unwrap_err();
    assert_eq!(error_code(err), "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_never_exceed_the_limit_and_say_when_more_follows() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let vm = open(&host, json!(["pages"]), None).await;
    // Joining and taking control are events too.
    let before = vm.call("getEvents", json!([{"limit": 1}])).await.unwrap()["head"]
        .as_u64()
        .unwrap();
    vm.call("emit", json!([{"count": 120, "data": {"k": "a"}}]))
        .await
        .unwrap();
    // Interleave two sessions' events with other events.
    for i in 0..5 {
        vm.call("emit", json!([{"name": "sessionEvent", "sessionId": "s1", "data": {"method": "session/update", "i": i}}]))
            .await
            .unwrap();
        vm.call(
            "emit",
            json!([{"name": "sessionEvent", "sessionId": "s2", "data": {"i": i}}]),
        )
        .await
        .unwrap();
    }
    vm.call(
        "emit",
        json!([{"name": "testBytes", "bytes": "AAEC/w==", "id": 7}]),
    )
    .await
    .unwrap();

    let mut since = 0;
    let mut all = Vec::new();
    loop {
        let page = vm
            .call("getEvents", json!([{"since": since, "limit": 50}]))
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 50);
        all.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
        since = page["next"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(all, (1..=before + 131).collect::<Vec<_>>());

    let only = vm
        .call("getEvents", json!([{"names": ["testBytes"]}]))
        .await
        .unwrap();
    let events = only["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], json!({"id": 7, "data": "AAEC/w=="}));

    let seq = vm
        .call(
            "getSequencedEvents",
            json!(["s1", {"since": 2, "limit": 2}]),
        )
        .await
        .unwrap();
    assert_eq!(
        seq["events"],
        json!([
            {"sequenceNumber": 3, "notification": {"method": "session/update", "i": 2}},
            {"sequenceNumber": 4, "notification": {"method": "session/update", "i": 3}}
        ])
    );
    assert_eq!(seq["more"], true);
    let rest = vm
        .call("getSequencedEvents", json!(["s1", {"since": 4}]))
        .await
        .unwrap();
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    assert_eq!(rest["more"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_events_arrive_as_binary_frames() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let vm = open(&host, json!(["bin"]), Some(0)).await;
    let mut rx = vm.on("testBytes");
    vm.call(
        "emit",
        json!([{"name": "testBytes", "bytes": "AAEC/w==", "id": 3}]),
    )
    .await
    .unwrap();
    let got = collect(&mut rx, 1, Duration::from_secs(10)).await;
    match &got[..] {
        [ensemble_client::Event::Bytes { header, payload }] => {
            assert!(header.seq > 1, "after joining and taking control");
            assert_eq!(header.id, 3);
            assert_eq!(&payload[..], &[0u8, 1, 2, 255]);
        }
        other => panic!("expected one binary event, got {other:?}"),
    }
}

#[test]
fn a_missing_data_dir_is_created_and_a_corrupt_one_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    let host = HostProcess::start(&nested);
    assert!(nested.join("ensemble.db").exists());
    drop(host);

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("ensemble.db"), vec![0x42u8; 8192]).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a usable Ensemble database"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_vm_log_is_an_error_for_that_key_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let host = HostProcess::start(dir.path());
        let vm = open(&host, json!(["broken"]), None).await;
        vm.call("emit", json!([{"data": 1}])).await.unwrap();
    }
    let vm_dir = dir.path().join("vms/1");
    for f in ["log.db", "log.db-wal", "log.db-shm"] {
        let _ = std::fs::remove_file(vm_dir.join(f));
    }
    std::fs::write(vm_dir.join("log.db"), vec![0x13u8; 8192]).unwrap();
    let host = HostProcess::start(dir.path());
    let mut raw = Raw::connect(&host).await;
    let r = raw.hello(json!(["broken"])).await;
    assert_eq!(code(&r), "internal");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("log.db"),
        "{r}"
    );
    // The connection and other keys still work.
    let w = raw.hello(json!(["fine"])).await;
    assert_eq!(w["type"], "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_another_origin_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let url = format!("{}/v1/ws", host.url());
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("a foreign origin was not refused: {:?}", other.map(|_| ())),
    }
    let mut own = url.as_str().into_client_request().unwrap();
    own.headers_mut()
        .insert("Origin", format!("http://{}", host.addr).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(own)
        .await
        .expect("own origin");
    ws.send(Message::Text(
        json!({"type": "hello", "protocol": 1, "key": "k"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
}

/// Issue 12 (8): a text frame that is not UTF-8 closes the connection with
/// status 1007 (RFC 6455); the host and the VM live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    for opened in [false, true] {
        let mut raw = Raw::connect(&host).await;
        if opened {
            assert_eq!(raw.hello(json!(["utf8"])).await["type"], "welcome");
        }
        let bad = vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'];
        raw.ws
            .send(Message::Frame(Frame::message(
                bad,
                OpCode::Data(Data::Text),
                true,
            )))
            .await
            .unwrap();
        let mut close_code = None;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), raw.ws.next()).await
        {
            match msg {
                Ok(Message::Close(Some(frame))) => {
                    close_code = Some(u16::from(frame.code));
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        assert_eq!(close_code, Some(1007), "opened: {opened}");
    }
    let vm = open(&host, json!(["utf8"]), None).await;
    assert!(head(&vm).await >= 1);
}
