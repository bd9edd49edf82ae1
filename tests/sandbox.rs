//! VMs are sandboxes: with the real host, real bubblewrap and real
//! processes, a collaborator in control of a VM cannot read the host's
//! secrets by any route, sees and signals only the VM's processes, cannot
//! outlive the host, cannot take it down with a fork bomb or a memory hog,
//! and cannot reach the network when it is cut off.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use ensemble_client::{Event, VmClient};
use serde_json::{json, Value};
use tokio::sync::mpsc::Receiver;

/// A host with the sandbox on, whatever ENSEMBLE_TEST_ISOLATION says.
fn start(dir: &Path, extra: &[&str]) -> HostProcess {
    start_with(
        dir,
        HostOptions {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..HostOptions::default()
        },
    )
}

fn start_with(dir: &Path, mut opts: HostOptions) -> HostProcess {
    if !opts.extra.iter().any(|a| a == "--isolation") {
        opts.extra
            .extend(["--isolation".to_owned(), "bwrap".to_owned()]);
    }
    HostProcess::start_with(dir, opts)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Every event of the VM's log as text, binary payloads decoded: what an
/// export of the log would hold.
async fn log_text(vm: &VmClient) -> String {
    let mut out = String::new();
    let mut since = 0;
    loop {
        let page = vm
            .call("getEvents", json!([{"since": since, "limit": 1000}]))
            .await
            .expect("getEvents");
        for e in page["events"].as_array().expect("events") {
            out.push_str(&e.to_string());
            if let Some(data) = e["data"]["data"].as_str() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap_or_default();
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
            out.push('\n');
        }
        if page["more"] != true {
            return out;
        }
        since = page["next"].as_u64().expect("next");
    }
}

/// Appends shellData bytes of `shell` until `needle` shows up.
async fn shell_until(rx: &mut Receiver<Event>, shell: u64, out: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("waiting for {needle:?}; have {out:?}"))
            .expect("open");
        if let Event::Bytes { header, payload } = e {
            if u64::from(header.id) == shell {
                out.push_str(&String::from_utf8_lossy(&payload));
            }
        }
    }
}

async fn open_bash(vm: &VmClient) -> u64 {
    vm.call(
        "openShell",
        json!([{"command": "/bin/bash", "args": ["--norc", "--noprofile"], "env": {"PS1": "$ "}}]),
    )
    .await
    .expect("openShell")["shellId"]
        .as_u64()
        .expect("shellId")
}

async fn exec(vm: &VmClient, script: &str) -> Value {
    vm.call("exec", json!(["bash", {"args": ["-c", script]}]))
        .await
        .expect("exec")
}

/// A file in the test user's home (the host user's home) holding a secret;
/// removed on drop.
struct HomeSecret(PathBuf);

impl HomeSecret {
    fn new(secret: &str) -> HomeSecret {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or("/root".into());
        let path = home.join(format!(".ensemble-sandbox-test-{}", std::process::id()));
        std::fs::write(&path, secret).expect("write a secret in HOME");
        HomeSecret(path)
    }
}

impl Drop for HomeSecret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collaborator_cannot_read_the_hosts_secrets_by_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let data = dir.path().canonicalize().unwrap();

    // Another VM with a secret in its workspace and in its log.
    let other = open_driving(&host, json!(["other"])).await;
    let other_secret = "other-vm-secret-5f1d";
    exec(
        &other,
        &format!("echo {other_secret} > secret.txt; echo {other_secret}"),
    )
    .await;
    let other_id = other.info().id;
    let home = HomeSecret::new("home-secret-93ab");

    // The owner opens the VM and invites a collaborator, who takes control.
    let owner = open(&host, json!(["alpha"]), None).await;
    let token = member_token(&host, &owner, json!(["alpha"]), "collaborator", "Mallory").await;
    let vm = open_as(&host, &token, json!(["alpha"]), None).await;
    vm.call("takeControl", json!([]))
        .await
        .expect("takeControl");
    let alpha_id = vm.info().id;

    let other_dir = data.join(format!("vms/{other_id}"));
    let targets: Vec<PathBuf> = vec![
        data.join("owner-token"),
        data.join("access.db"),
        data.join("ensemble.db"),
        other_dir.join("workspace/secret.txt"),
        other_dir.join("log.db"),
        home.0.clone(),
    ];
    let relative = ["../../../owner-token", "../../../access.db", "../log.db"];
    let secrets = [host.owner_token.as_str(), other_secret, "home-secret-93ab"];

    // By exec: absolute host paths and the old ../../../owner-token trick.
    for target in targets
        .iter()
        .map(|p| p.display().to_string())
        .chain(relative.iter().map(|s| s.to_string()))
    {
        let r = vm
            .call("exec", json!(["cat", {"args": [target]}]))
            .await
            .expect("exec answers");
        assert_ne!(r["exitCode"], 0, "cat {target} succeeded: {r}");
        for s in secrets {
            assert!(
                !r["stdout"].as_str().unwrap_or_default().contains(s),
                "{target}: {r}"
            );
        }
    }
    // The VM's own directory in the data dir is not there either.
    let r = exec(
        &vm,
        "ls / /home; ls /workspace/..; cat /proc/1/environ; echo end",
    )
    .await;
    let listing = r["stdout"].as_str().unwrap_or_default();
    assert!(
        !listing.contains("log.db") && !listing.contains("owner-token"),
        "{listing}"
    );
    assert!(!listing.contains(&data.display().to_string()), "{listing}");

    // By a shell.
    let mut rx = vm.on("*");
    let shell = open_bash(&vm).await;
    let mut out = String::new();
    for target in &targets {
        vm.call(
            "writeShell",
            json!([shell, format!("cat {}\n", target.display())]),
        )
        .await
        .unwrap();
    }
    vm.call(
        "writeShell",
        json!([
            shell,
            "cat ../../../owner-token; echo shell-done-$((6*7))\n"
        ]),
    )
    .await
    .unwrap();
    shell_until(&mut rx, shell, &mut out, "shell-done-42").await;
    assert!(out.contains("No such file or directory"), "{out}");

    // By an agent: fs/read_text_file (refused by the host) and a terminal
    // (in the sandbox, where the files do not exist).
    let session = scripted(&vm, json!({})).await;
    for target in targets
        .iter()
        .map(|p| p.display().to_string())
        .chain(relative.iter().map(|s| s.to_string()))
    {
        let r = vm
            .call("sendPrompt", json!([session, format!("read {target}")]))
            .await
            .expect("the turn ends");
        let text = r["text"].as_str().unwrap_or_default();
        assert!(text.contains("read failed"), "read {target}: {text}");
        let r = vm
            .call("sendPrompt", json!([session, format!("run cat {target}")]))
            .await
            .expect("the turn ends");
        let text = r["text"].as_str().unwrap_or_default();
        assert!(text.contains("exit 1"), "run cat {target}: {text}");
    }
    // Inside the workspace both still work, with /workspace paths.
    exec(&vm, "echo mine > mine.txt").await;
    let r = vm
        .call("sendPrompt", json!([session, "read /workspace/mine.txt"]))
        .await
        .unwrap();
    assert!(
        r["text"].as_str().unwrap_or_default().contains("mine"),
        "{r}"
    );

    // Nothing of any secret reached the log.
    let text = log_text(&vm).await;
    for s in secrets {
        assert!(!text.contains(s), "a secret reached VM {alpha_id}'s log");
    }
    // Paths users see are in the VM's view.
    let list = vm.call("listProcesses", json!([])).await.unwrap();
    for p in list.as_array().unwrap() {
        assert!(p["cwd"].as_str().unwrap().starts_with("/workspace"), "{p}");
    }
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let name = e["name"].as_str().unwrap_or("");
        if ["processStarted", "shellOpened", "sessionCreated"].contains(&name) {
            let cwd = e["data"]["cwd"].as_str().unwrap_or_default();
            assert!(cwd.starts_with("/workspace"), "a host path in {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_sees_and_signals_only_its_own_processes() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let a = open_driving(&host, json!(["Team A"])).await;
    let b = open_driving(&host, json!(["team-b"])).await;
    // A host process and another VM's process.
    let mut host_sleep = std::process::Command::new("sleep")
        .arg("7771")
        .spawn()
        .unwrap();
    let b_pid = b.call("spawn", json!(["sleep", ["7772"]])).await.unwrap()["pid"]
        .as_u64()
        .unwrap();
    a.call("spawn", json!(["sleep", ["7773"]])).await.unwrap();

    let r = exec(&a, "hostname; id -u; ps -eo pid,args").await;
    let out = r["stdout"].as_str().unwrap().to_owned();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("team-a"), "hostname: {out}");
    let uid: u32 = lines.next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "a VM process runs as root");
    // Only this exec's own sandbox: not the host's sleep, not VM B's, and
    // not even the VM's other processes (one PID namespace per process).
    assert!(
        !out.contains("7771") && !out.contains("7772") && !out.contains("7773"),
        "{out}"
    );
    assert!(out.lines().count() < 8, "ps sees too much: {out}");
    let r = exec(&a, "ls /proc | grep -c '^[0-9]'").await;
    let visible: u32 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(visible <= 5, "{visible} pids visible in /proc");

    // Signals by host pid reach nothing outside.
    for pid in [u64::from(host_sleep.id()), b_pid] {
        let r = exec(&a, &format!("kill -9 {pid}")).await;
        assert_ne!(r["exitCode"], 0, "kill {pid}: {r}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        host_sleep.try_wait().unwrap().is_none(),
        "the host's sleep was killed"
    );
    let info = b.call("getProcess", json!([b_pid])).await.unwrap();
    assert_eq!(info["running"], true, "VM B's sleep was killed: {info}");
    let _ = host_sleep.kill();
    let _ = host_sleep.wait();

    // The host still signals what it started.
    b.call("killProcess", json!([b_pid])).await.unwrap();
    let exit = b.call("waitProcess", json!([b_pid])).await.unwrap();
    assert_eq!(exit["signal"], 9);

    // Network is on by default: the host's own port answers.
    let port = host.addr.port();
    let r = exec(
        &a,
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
    )
    .await;
    assert_eq!(r["stdout"], "connected\n", "{r}");
}

/// Pids of live (not zombie) processes whose command line holds `marker`.
/// Whether `ancestor` is `pid`'s parent, grandparent, ... (from /proc).
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        let stat = std::fs::read_to_string(format!("/proc/{at}/stat")).unwrap_or_default();
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if ppid == ancestor {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        at = ppid;
    }
    false
}

fn alive_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_none_or(|(_, r)| r.trim_start().starts_with('Z'));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !zombie && String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// The `cgroup.procs` of the pids (v1) or unified (v2) group of `pid`.
fn cgroup_procs(pid: u64) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if path.contains("ensemble-") {
            let base = match ctrl {
                "pids" => Path::new("/sys/fs/cgroup/pids"),
                "" => Path::new("/sys/fs/cgroup"),
                _ => continue,
            };
            return Some(base.join(path.trim_start_matches('/')).join("cgroup.procs"));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_vm_outlives_a_killed_host_and_a_restart_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = start(dir.path(), &[]);
    let vm = open_driving(&host, json!(["orphans"])).await;
    let pid = vm
        .call("spawn", json!(["sleep", ["986001"]]))
        .await
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    vm.call(
        "spawn",
        json!(["sh", ["-c", "setsid sleep 986002 & sleep 986003"]]),
    )
    .await
    .unwrap();
    let shell = open_bash(&vm).await;
    vm.call("writeShell", json!([shell, "sleep 986004 &\n"]))
        .await
        .unwrap();
    let session = scripted(&vm, json!({})).await;
    let _ = session;
    let markers = ["986001", "986002", "986003", "986004", "--journal-dir"];
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive_with("986004").is_empty() || alive_with("986002").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the VM's processes did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let procs = cgroup_procs(pid);
    // This host's agents: other hosts on the machine run scripted agents
    // with the same command line (the journal dir is the same path inside
    // every sandbox), so tell ours by ancestry while the host is alive.
    let host_pid = host.child.id();
    let agents: Vec<u32> = alive_with("--journal-dir")
        .into_iter()
        .filter(|p| descends_from(*p, host_pid))
        .collect();
    assert!(!agents.is_empty(), "the scripted agent is not running");

    host.kill9();
    let killed = Instant::now();
    loop {
        let left: Vec<u32> = markers
            .iter()
            .flat_map(|m| alive_with(m).into_iter())
            .filter(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                !String::from_utf8_lossy(&cmd).contains("--journal-dir") || agents.contains(p)
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "processes of the VM outlived the host by 1 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A leftover (as a crash at the wrong moment could leave one) in the
    // VM's cgroup: the next start kills it.
    if let Some(procs) = procs.filter(|p| p.exists()) {
        let mut stray = std::process::Command::new("sleep")
            .arg("986005")
            .spawn()
            .unwrap();
        std::fs::write(&procs, stray.id().to_string()).unwrap();
        let host = start(dir.path(), &[]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while stray.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the restarted host left the stray"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let vm = open_driving(&host, json!(["orphans"])).await;
        let r = exec(&vm, "echo again").await;
        assert_eq!(r["stdout"], "again\n");
    } else {
        println!("no VM cgroup (not root?): the restart cleanup is not exercised");
    }
}

/// The data of the next `name` event with `limit`, within `within`.
async fn next_limit(rx: &mut Receiver<Event>, limit: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no sandboxLimit {limit} in time"))
            .expect("open");
        let d = data(&e);
        if e.name() == "sandboxLimit" && d["limit"] == limit {
            return d;
        }
    }
}

/// Round trip of one echo through VM `vm`'s shell.
async fn echo_time(vm: &VmClient, rx: &mut Receiver<Event>, shell: u64, n: u32) -> Duration {
    let started = Instant::now();
    vm.call(
        "writeShell",
        json!([shell, format!("echo pong-$((1000+{n}))\n")]),
    )
    .await
    .unwrap();
    let mut out = String::new();
    shell_until(rx, shell, &mut out, &format!("pong-{}", 1000 + n)).await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_and_a_memory_hog_are_stopped_and_others_stay_responsive() {
    if !is_root() {
        println!("skipped: per-VM cgroups need root here (rlimits apply per user)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = start_with(
        dir.path(),
        HostOptions {
            extra: vec![
                "--vm-pids".into(),
                "64".into(),
                "--vm-memory".into(),
                "64".into(),
            ],
            ..HostOptions::default()
        },
    );
    let bad = open_driving(&host, json!(["bad"])).await;
    let good = open_driving(&host, json!(["good"])).await;
    let mut bad_rx = bad.on("*");
    let mut good_rx = good.on("*");
    let good_shell = open_bash(&good).await;
    echo_time(&good, &mut good_rx, good_shell, 0).await;

    // A fork bomb in a shell.
    let bomb_shell = open_bash(&bad).await;
    bad.call("writeShell", json!([bomb_shell, "b() { b | b & }; b\n"]))
        .await
        .unwrap();
    let mut worst = Duration::ZERO;
    for n in 1..=10 {
        worst = worst.max(echo_time(&good, &mut good_rx, good_shell, n).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hit = next_limit(&mut bad_rx, "pids", Duration::from_secs(10)).await;
    assert_eq!(hit["max"], 64);
    let shells = bad.call("listShells", json!([])).await.unwrap();
    let bomb_pid = shells
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shellId"] == bomb_shell)
        .unwrap()["pid"]
        .clone();
    assert_eq!(hit["pid"], bomb_pid, "{hit}");
    assert!(hit["killed"].as_u64().unwrap() > 1, "{hit}");
    // The bomb's shell is gone, and with it the bomb.
    let exit = next_named(&mut bad_rx, "shellExit").await;
    assert_eq!(exit["shellId"], bomb_shell);
    assert!(
        worst < Duration::from_secs(2),
        "another VM's echo took {worst:?}"
    );
    println!("worst echo in another VM during the fork bomb: {worst:?}");

    // A memory hog: tail keeps a line that never ends.
    let r = bad
        .call("exec", json!(["sh", {"args": ["-c", "head -c 300000000 /dev/zero | tail | wc -c"], "timeoutMs": 30000}]))
        .await
        .unwrap();
    assert_eq!(r["timedOut"], false);
    assert_ne!(r["stdout"], "300000000\n", "the hog got its memory: {r}");
    let hit = next_limit(&mut bad_rx, "memory", Duration::from_secs(10)).await;
    assert_eq!(hit["max"], 64u64 << 20);
    assert!(hit["killed"].as_u64().unwrap() >= 1, "{hit}");
    // The VM itself lives on, and so does the other one.
    assert_eq!(
        exec(&bad, "echo still-here").await["stdout"],
        "still-here\n"
    );
    assert!(echo_time(&good, &mut good_rx, good_shell, 99).await < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_network_a_vm_cannot_reach_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_with(
        dir.path(),
        HostOptions {
            extra: vec!["--vm-network".into(), "none".into()],
            ..HostOptions::default()
        },
    );
    let vm = open_driving(&host, json!(["offline"])).await;
    let port = host.addr.port();
    let r = exec(
        &vm,
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
    )
    .await;
    assert_ne!(r["exitCode"], 0, "{r}");
    assert_eq!(r["stdout"], "");
    // The rest works as usual.
    assert_eq!(exec(&vm, "echo ok").await["stdout"], "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_isolation_everyone_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_with(
        dir.path(),
        HostOptions {
            extra: vec!["--isolation".into(), "none".into()],
            ..HostOptions::default()
        },
    );
    let mut raw = Raw::connect(&host).await;
    let welcome = raw.hello(json!(["bare"])).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["isolation"], "none");
    // Processes run as before sandboxes: in the workspace's host path.
    let vm = open_driving(&host, json!(["bare"])).await;
    let r = exec(&vm, "pwd").await;
    let ws = dir.path().canonicalize().unwrap().join("vms/1/workspace");
    assert_eq!(r["stdout"], format!("{}\n", ws.display()));

    // A sandboxing host says so.
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let mut raw = Raw::connect(&host).await;
    let welcome = raw.hello(json!(["boxed"])).await;
    assert_eq!(welcome["isolation"], "bwrap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_bubblewrap_refuses_vms_and_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_with(
        dir.path(),
        HostOptions {
            env: vec![("ENSEMBLE_BWRAP".into(), "/nonexistent/bwrap".into())],
            ..HostOptions::default()
        },
    );
    let mut raw = Raw::connect(&host).await;
    let reply = raw.hello(json!(["any"])).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["error"]["code"], "sandbox_unavailable");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("apt-get install bubblewrap"), "{message}");
}
