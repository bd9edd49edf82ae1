//! Rust hooks for embedders: `on_session_event` runs once per event with
//! several clients connected, and its position survives a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ensemble_client::Client;
use ensemble_host::{Hook, Host, HostConfig, SessionHookEvent};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

type Seen = Arc<Mutex<Vec<SessionHookEvent>>>;

/// Starts a host on 127.0.0.1:0 with a session hook recording into `seen`;
/// answers an owner's client.
async fn start(
    dir: &std::path::Path,
    seen: Seen,
) -> (Client, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut config = HostConfig::new(dir);
    config.test_actions = true;
    config
        .hooks
        .push(Hook::on_session_event("recorder", move |e| {
            let seen = seen.clone();
            async move { seen.lock().unwrap().push(e) }
        }));
    let host = Host::start(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(format!("ws://{}", listener.local_addr().unwrap()))
        .with_token(host.owner_token());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        host.serve(listener, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    (client, stop_tx, task)
}

async fn wait_len(seen: &Seen, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hook saw {} of {n}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_hook_runs_once_per_event_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let (client, stop, task) = start(dir.path(), seen.clone()).await;
    let mut vms = Vec::new();
    for _ in 0..4 {
        vms.push(client.get_or_create(["hooked"]).await.unwrap());
    }
    for i in 0..30 {
        vms[i % 4]
            .call(
                "emit",
                json!([{"name": "sessionEvent", "sessionId": "s1", "data": {"i": i}}]),
            )
            .await
            .unwrap();
        // Other events are not session events: the hook does not see them.
        vms[0].call("emit", json!([{"data": i}])).await.unwrap();
    }
    wait_len(&seen, 30).await;
    {
        let seen = seen.lock().unwrap();
        let numbers: Vec<u64> = seen.iter().map(|e| e.sequence_number).collect();
        assert_eq!(numbers, (1..=30).collect::<Vec<_>>());
        assert!(seen.iter().all(|e| e.session_id == "s1"));
        assert_eq!(seen[4].event, json!({"i": 4}));
        assert_eq!(seen[4].vm.key.parts(), ["hooked"]);
    }
    drop(vms);
    stop.send(()).unwrap();
    task.await.unwrap();

    // A new host on the same data: the hook starts where it stopped.
    let seen_again: Seen = Arc::default();
    let (client, stop, task) = start(dir.path(), seen_again.clone()).await;
    let vm = client.get_or_create(["hooked"]).await.unwrap();
    vm.call(
        "emit",
        json!([{"name": "sessionEvent", "sessionId": "s1", "data": {"i": 30}}]),
    )
    .await
    .unwrap();
    wait_len(&seen_again, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let numbers: Vec<u64> = seen_again
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.sequence_number)
        .collect();
    assert_eq!(numbers, vec![31], "only the new event, nothing repeated");
    drop(vm);
    stop.send(()).unwrap();
    task.await.unwrap();
}
