//! The hook command sees every event exactly once however many clients are
//! connected, and resumes after a restart or a crash without skipping.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// seq → how many times the hook saw it.
fn hook_seen(file: &Path) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let v: Value = serde_json::from_str(line).expect("hook line is JSON");
        assert_eq!(v["vm"]["key"], json!(["hooked"]));
        *seen.entry(v["event"]["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

async fn wait_for_seq(file: &Path, seq: u64) -> BTreeMap<u64, u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = hook_seen(file);
        if seen.contains_key(&seq) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hook never saw seq {seq}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hooked(dir: &Path, out: &Path, bind: &str) -> HostProcess {
    HostProcess::start_with(
        dir,
        HostOptions {
            bind,
            // Whole lines only: a host killed mid-line leaves a partial
            // last line in the pipe, which `read` drops at end of input.
            hook_command: Some(format!(
                r#"while IFS= read -r l; do printf '%s\n' "$l"; done >> '{}'"#,
                out.display()
            )),
            ..HostOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_sees_each_event_once_across_clients_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.jsonl");
    let data = dir.path().join("data");
    let mut host = hooked(&data, &out, "127.0.0.1:0");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(open(&host, json!(["hooked"]), Some(0)).await);
    }
    // Joining is logged too: count to the last emitted seq.
    let mut last = 0;
    for _ in 0..5 {
        last = clients[0]
            .call("emit", json!([{"count": 100, "data": "x"}]))
            .await
            .unwrap()["last"]
            .as_u64()
            .unwrap();
    }
    let seen = wait_for_seq(&out, last).await;
    assert!(seen.values().all(|&n| n == 1), "each event exactly once");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );

    // A clean stop and restart: the hook goes on from its position.
    drop(clients);
    host.stop();
    let host = hooked(&data, &out, "127.0.0.1:0");
    let vm = open(&host, json!(["hooked"]), None).await;
    let last = vm
        .call("emit", json!([{"count": 300, "data": "y"}]))
        .await
        .unwrap()["last"]
        .as_u64()
        .unwrap();
    let seen = wait_for_seq(&out, last).await;
    assert!(
        seen.values().all(|&n| n == 1),
        "no repeat after a clean restart"
    );
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_hook_resumes_without_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.jsonl");
    let data = dir.path().join("data");
    let mut host = hooked(&data, &out, "127.0.0.1:0");
    let vm = open(&host, json!(["hooked"]), None).await;
    let mut emitted = 0;
    for _ in 0..20 {
        emitted = vm
            .call("emit", json!([{"count": 500, "data": "z"}]))
            .await
            .unwrap()["last"]
            .as_u64()
            .unwrap();
    }
    // Killed while the hook is most likely still working through the log.
    host.kill9();
    drop(vm);
    let before = hook_seen(&out).len();

    // The VM is opened at start because hooks are configured: no client needed.
    let host = hooked(&data, &out, "127.0.0.1:0");
    let seen = wait_for_seq(&out, emitted).await;
    let vm = open(&host, json!(["hooked"]), None).await;
    let last = vm.call("emit", json!([{"data": "after"}])).await.unwrap()["last"]
        .as_u64()
        .unwrap();
    let seen_after = wait_for_seq(&out, last).await;
    assert_eq!(
        seen_after.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "nothing skipped (the hook had {before} events before the crash)"
    );
    // At least once: only the page in flight at the crash may repeat.
    let repeated = seen.values().filter(|&&n| n > 1).count();
    assert!(repeated <= 512, "{repeated} events repeated");
}

/// A hook command that acknowledges each line after it has stored it, and
/// crashes once, after `crash_at` stored lines, on a line it has read but
/// not stored (what the pipe held then is lost with it).
fn acking_hook(dir: &Path, out: &Path, crash_at: usize, bind: &str) -> HostProcess {
    let marker = dir.join("crashed");
    let script = format!(
        r#"n=$(wc -l < '{out}' 2>/dev/null || echo 0)
while IFS= read -r l; do
  if [ ! -e '{marker}' ] && [ "$n" -ge {crash_at} ]; then touch '{marker}'; exit 3; fi
  printf '%s\n' "$l" >> '{out}'
  n=$((n + 1))
  vm=${{l#*\"id\":}}; vm=${{vm%%[,\}}]*}}
  seq=${{l#*\"seq\":}}; seq=${{seq%%,*}}
  echo "ack $vm $seq"
done"#,
        out = out.display(),
        marker = marker.display(),
    );
    HostProcess::start_with(
        dir,
        HostOptions {
            bind,
            hook_command: Some(script),
            extra: vec!["--hook-ack".into()],
            ..HostOptions::default()
        },
    )
}

/// Issue 12 (10): with `--hook-ack`, the position advances only with the
/// command's acknowledgements: nothing is lost when the command crashes with
/// lines in its pipe, nor when the host is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_hooks_lose_nothing_across_a_hook_crash_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.jsonl");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut host = acking_hook(&data, &out, 150, "127.0.0.1:0");
    let vm = open(&host, json!(["hooked"]), None).await;
    let mut emitted = 0;
    for _ in 0..3 {
        emitted = vm
            .call("emit", json!([{"count": 200, "data": "z"}]))
            .await
            .unwrap()["last"]
            .as_u64()
            .unwrap();
    }
    // Through the crash (a page of lines was in its pipe) to the end.
    let seen = wait_for_seq(&out, emitted).await;
    assert!(data.join("crashed").exists(), "the hook never crashed");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=emitted).collect::<Vec<_>>(),
        "lines lost in the crashed hook's pipe were written again"
    );
    // Killed while the hook works; nothing it had not acknowledged is lost.
    let more = vm
        .call("emit", json!([{"count": 500, "data": "k"}]))
        .await
        .unwrap()["last"]
        .as_u64()
        .unwrap();
    host.kill9();
    drop(vm);
    let host = acking_hook(&data, &out, 150, "127.0.0.1:0");
    let seen = wait_for_seq(&out, more).await;
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=more).collect::<Vec<_>>(),
        "nothing skipped across the kill"
    );
    drop(host);
}
