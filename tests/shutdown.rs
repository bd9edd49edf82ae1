//! Issue 12 (2): SIGTERM stops the host in under a second in every case,
//! with the log committed and nothing of the VM left running. Real host
//! process, real agents (the scripted agent and shell commands posing as
//! agents), real signals; the stop time is measured from SIGTERM to exit.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The longest a stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(1);

fn require_scripted_agent() {
    let path = std::path::Path::new(BIN).with_file_name("ensemble-scripted-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p ensemble-scripted-agent` (make test does)",
        path.display()
    );
}

/// SIGTERM, then the time until the process has exited (killed after 20 s
/// so that a hang fails the test rather than blocking it).
fn stop_time(host: &mut HostProcess) -> Duration {
    let pid = nix::unistd::Pid::from_raw(host.child.id() as i32);
    let start = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    loop {
        if host.child.try_wait().expect("wait").is_some() {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(20) {
            host.kill9();
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Processes whose command line mentions `marker` (what a VM started).
fn running_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // A zombie has no command line; the ones reaped by init are gone.
        if text.contains(marker) && !stat.contains(") Z ") {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn agents_file(dir: &std::path::Path, body: &str) -> Vec<String> {
    let path = dir.join("agents.toml");
    std::fs::write(&path, body).unwrap();
    vec!["--agents".into(), path.display().to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_stop_is_quick_and_commits_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = HostProcess::start(dir.path());
    let vm = open(&host, json!(["stop"]), None).await;
    drive(&vm).await;
    let (_, last) = emit_numbered(&vm, 0, 20).await;
    let took = stop_time(&mut host);
    eprintln!("normal stop: {took:?}");
    assert!(took < STOP_LIMIT, "stop took {took:?}");
    let host = HostProcess::start(dir.path());
    let vm = open(&host, json!(["stop"]), None).await;
    assert!(head(&vm).await > last);
}

/// An agent that fails to start and leaves a child behind (as `npx` with no
/// network left a defunct `npm exec`): here a shell that starts a
/// long-lived child holding the agent's stdout, then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_after_an_agent_failed_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("ensemble-stop-marker-{}", std::process::id());
    let extra = agents_file(
        dir.path(),
        &format!(
            "[agents.orphan]\ncommand = \"sh\"\nargs = [\"-c\", \"sh -c 'sleep 300; : {marker}' & exit 1\"]\n\
             [agents.zombie]\ncommand = \"sh\"\nargs = [\"-c\", \"true & exec sh -c 'sleep 301; : {marker}'\"]\n"
        ),
    );
    let mut extra = extra;
    extra.extend(["--agent-init-timeout".into(), "1".into()]);
    let mut host = HostProcess::start_with(
        dir.path(),
        HostOptions {
            extra,
            ..HostOptions::default()
        },
    );
    let vm = open_driving(&host, json!(["agents"])).await;
    for agent in ["orphan", "zombie"] {
        let err = vm.call("createSession", json!([agent])).await.unwrap_err();
        assert_eq!(error_code(err), "agent_failed", "{agent}");
    }
    let (_, last) = emit_numbered(&vm, 0, 3).await;
    let took = stop_time(&mut host);
    eprintln!("stop after failed agents: {took:?}");
    assert!(took < STOP_LIMIT, "stop took {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    let left = running_with(&marker);
    assert!(left.is_empty(), "left running: {left:?}");
    let host = HostProcess::start(dir.path());
    let vm = open(&host, json!(["agents"]), None).await;
    assert!(head(&vm).await >= last);
}

/// A turn whose fs and terminal requests the host refused (outside the
/// workspace), then SIGTERM while the session is idle, and again while a
/// turn waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_after_refused_fs_and_terminal_requests() {
    require_scripted_agent();
    for waiting in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut host = HostProcess::start(dir.path());
        let vm = open_driving(&host, json!(["refused"])).await;
        let session = scripted(&vm, json!({})).await;
        let r = vm
            .call(
                "sendPrompt",
                json!([
                    session,
                    "read /etc/hostname\nread ../../../access.db\nrun true"
                ]),
            )
            .await
            .unwrap();
        eprintln!("turn: {r}");
        let (_, last) = emit_numbered(&vm, 0, 3).await;
        if waiting {
            let vm2 = host.client().get_or_create(["refused"]).await.unwrap();
            let s = session.clone();
            tokio::spawn(async move { vm2.call("sendPrompt", json!([s, "wait"])).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let took = stop_time(&mut host);
        eprintln!("stop after refused requests (turn waiting: {waiting}): {took:?}");
        assert!(took < STOP_LIMIT, "stop took {took:?}");
        let left = running_with(&dir.path().display().to_string());
        assert!(left.is_empty(), "left running: {left:?}");
        let host = HostProcess::start(dir.path());
        let vm = open(&host, json!(["refused"]), None).await;
        assert!(head(&vm).await >= last);
    }
}

/// SIGTERM while actions wait: an agent that never answers `initialize`
/// (the default 20 s limit), an `exec` of a long command, a `waitProcess`,
/// and a shell that ignores SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_actions_wait() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("ensemble-wait-marker-{}", std::process::id());
    let extra = agents_file(
        dir.path(),
        &format!("[agents.silent]\ncommand = \"sh\"\nargs = [\"-c\", \"sh -c 'sleep 300; : {marker}' & exec sleep 302\"]\n"),
    );
    let mut host = HostProcess::start_with(
        dir.path(),
        HostOptions {
            extra,
            ..HostOptions::default()
        },
    );
    let vm = open_driving(&host, json!(["waits"])).await;
    let shell = vm
        .call(
            "openShell",
            json!([{"command": "sh", "args": ["-c", format!("trap '' HUP; sleep 303; : {marker}")]}]),
        )
        .await
        .unwrap();
    assert!(shell["shellId"].is_u64());
    let spawned = vm
        .call(
            "spawn",
            json!(["sh", ["-c", format!("sleep 304; : {marker}")]]),
        )
        .await
        .unwrap();
    let calls = [
        ("createSession", json!(["silent"])),
        (
            "exec",
            json!(["sh", {"args": ["-c", format!("sleep 305; : {marker}")]}]),
        ),
        ("waitProcess", json!([spawned["pid"]])),
    ];
    let vm = std::sync::Arc::new(vm);
    for (name, args) in calls {
        let vm = vm.clone();
        tokio::spawn(async move { vm.call(name, args).await });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running_with(&marker).is_empty(), "nothing started");
    let took = stop_time(&mut host);
    eprintln!("stop while actions wait: {took:?}");
    assert!(took < STOP_LIMIT, "stop took {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    let left = running_with(&marker);
    assert!(left.is_empty(), "left running: {left:?}");
}
