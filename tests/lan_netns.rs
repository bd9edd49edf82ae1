//! LAN sharing across real network namespaces joined by a veth pair: two
//! `ensemble serve` processes, each in its own namespace, mDNS on the veths
//! only. Discovery (address, fingerprint, timing), the code both sides see,
//! approval, the relayed shell, a link unplugged and plugged back, sharing
//! switched off (nothing listens beyond loopback), removal from the list
//! after a clean quit and after `kill -9`, and an impostor at the paired
//! address refused in the handshake.
//!
//! Needs root (to create namespaces). Where they cannot be created the test
//! says so on stderr and returns without checking anything.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::lan::*;
use common::{drive, error_code, listening_addr, BIN};
use ensemble_client::{Client, Event, OpenOptions, VmClient};
use serde_json::{json, Value};

const KEY: &str = "default";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    assert!(ip(args), "ip {}", args.join(" "));
}

/// Two namespaces `a` and `b`, one veth between them, 10.77.N.1 and .2;
/// deleted (with the veth) when dropped.
struct Lab {
    a: String,
    b: String,
    va: String,
    vb: String,
    addr_a: String,
}

impl Lab {
    fn new() -> Option<Lab> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED lan_netns: network namespaces need root (run the tests as root to check LAN sharing across namespaces)");
            return None;
        }
        let id = std::process::id() % 100_000;
        let n = 20 + id % 200;
        let lab = Lab {
            a: format!("ens-a-{id}"),
            b: format!("ens-b-{id}"),
            va: format!("ensa{id}"),
            vb: format!("ensb{id}"),
            addr_a: format!("10.77.{n}.1"),
        };
        if !ip(&["netns", "add", &lab.a]) {
            eprintln!(
                "SKIPPED lan_netns: cannot create a network namespace here (`ip netns add` failed)"
            );
            return None;
        }
        must(&["netns", "add", &lab.b]);
        must(&[
            "link", "add", &lab.va, "type", "veth", "peer", "name", &lab.vb,
        ]);
        must(&["link", "set", &lab.va, "netns", &lab.a]);
        must(&["link", "set", &lab.vb, "netns", &lab.b]);
        must(&[
            "-n",
            &lab.a,
            "addr",
            "add",
            &format!("{}/24", lab.addr_a),
            "dev",
            &lab.va,
        ]);
        must(&[
            "-n",
            &lab.b,
            "addr",
            "add",
            &format!("10.77.{n}.2/24"),
            "dev",
            &lab.vb,
        ]);
        for (ns, dev) in [(&lab.a, &lab.va), (&lab.b, &lab.vb)] {
            must(&["-n", ns, "link", "set", "lo", "up"]);
            must(&["-n", ns, "link", "set", dev, "up"]);
        }
        Some(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and its peer.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// A host started inside a namespace; killed when dropped.
struct NsHost {
    child: Child,
    ns: String,
    addr: SocketAddr,
    owner_token: String,
}

impl NsHost {
    fn start(ns: &str, data_dir: &Path, extra: &[&str]) -> NsHost {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                BIN,
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("ENSEMBLE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ensemble in a namespace");
        let addr = listening_addr(child.stdout.take().expect("stdout"));
        let owner_token = std::fs::read_to_string(data_dir.join("owner-token"))
            .expect("owner token")
            .trim()
            .to_owned();
        NsHost {
            child,
            ns: ns.to_owned(),
            addr,
            owner_token,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn sigterm(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsHost {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `f` on a thread inside namespace `ns` (its sockets are made there),
/// with a runtime of its own, and answers its result.
fn in_ns<F, Fut, T>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).expect("namespace file");
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

async fn owner(host_url: String, token: String) -> VmClient {
    Client::new(host_url)
        .with_token(token)
        .get_or_create(json!(KEY))
        .await
        .expect("open as owner")
}

/// Calls one action as the host's owner, from inside its namespace.
fn call(host: &NsHost, action: &'static str, args: Value) -> Value {
    let (url, token) = (host.url(), host.owner_token.clone());
    in_ns(&host.ns, move || async move {
        owner(url, token)
            .await
            .call(action, args)
            .await
            .expect(action)
    })
}

/// Waits (inside the host's namespace) until its `getLan` satisfies `pred`.
fn wait_lan_in(
    host: &NsHost,
    what: &'static str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool + Send + 'static,
) -> (Value, Duration) {
    let (url, token) = (host.url(), host.owner_token.clone());
    in_ns(&host.ns, move || async move {
        let vm = owner(url, token).await;
        wait_lan(&vm, what, timeout, pred).await
    })
}

/// A relayed client in `host`'s namespace that records every event it gets
/// (seq, and the text of shell bytes) until stopped.
struct Observer {
    events: mpsc::Receiver<(u64, String)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    fn start(host: &NsHost, peer_id: &str) -> Observer {
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (url, token, path) = (
            host.url(),
            host.owner_token.clone(),
            format!("/v1/peers/{peer_id}/ws"),
        );
        let ns = format!("/var/run/netns/{}", host.ns);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let vm = Client::new(url)
                    .with_token(token)
                    .with_path(path)
                    .open(
                        json!(KEY),
                        OpenOptions {
                            since: Some(0),
                            reconnect: true,
                            ..OpenOptions::default()
                        },
                    )
                    .await
                    .expect("open through the relay");
                let mut rx = vm.on("*");
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(Some(e)) =
                        tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
                    {
                        let text = match &e {
                            Event::Bytes { payload, .. } => {
                                String::from_utf8_lossy(payload).into_owned()
                            }
                            Event::Json(_) => String::new(),
                        };
                        if tx.send((e.seq(), text)).is_err() {
                            return;
                        }
                    }
                }
            });
        });
        Observer {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// Collects events until their text contains `needle`; answers the seqs.
    fn until(&self, needle: &str, timeout: Duration, seqs: &mut Vec<u64>) {
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        while !text.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (seq, t) = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {needle:?} through the relay; got {text:?}"));
            seqs.push(seq);
            text.push_str(&t);
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Listening TCP sockets in namespace `ns` on anything but 127.0.0.1/::1.
fn non_loopback_listeners(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = Command::new("ip")
            .args(["netns", "exec", ns, "cat", file])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let host = local.split(':').next().unwrap_or_default();
            let loopback = host == "0100007F" || host == "00000000000000000000000001000000";
            if *state == "0A" && !loopback {
                out.push(format!("{file}: {local}"));
            }
        }
    }
    out
}

#[test]
fn two_hosts_in_two_namespaces_share_join_and_relay() {
    let Some(lab) = Lab::new() else { return };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lan_bind = format!("{}:6421", lab.addr_a);
    let alice_args = [
        "--lan",
        "--lan-bind",
        lan_bind.as_str(),
        "--mdns-interfaces",
        lab.va.as_str(),
        "--lan-name",
        "Alice",
        "--test-actions",
    ];
    let mut a = NsHost::start(&lab.a, da.path(), &alice_args);
    let b = NsHost::start(&lab.b, db.path(), &["--mdns-interfaces", &lab.vb]);
    let a_fp = fingerprint_of(da.path());
    // Let the announcement settle: "already up" means announced and probed.
    std::thread::sleep(Duration::from_millis(1500));

    // Discovery, host already up: right address and fingerprint, fast.
    let fp = a_fp.clone();
    let (state, took) = wait_lan_in(&b, "Alice nearby", Duration::from_secs(10), move |s| {
        nearby(s, &fp).is_some()
    });
    let entry = nearby(&state, &a_fp).unwrap().clone();
    eprintln!("discovered across namespaces in {took:?}");
    assert!(took < Duration::from_secs(2), "discovery took {took:?}");
    assert_eq!(entry["addresses"][0], lab.addr_a);
    assert_eq!(entry["port"], 6421);
    assert_eq!(entry["displayName"], "Alice");
    // The command line sees the same.
    let cli = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.b,
            BIN,
            "nearby",
            "--json",
            "--timeout",
            "1.5",
            "--mdns-interfaces",
            &lab.vb,
        ])
        .output()
        .expect("ensemble nearby");
    let listed: Value = serde_json::from_slice(&cli.stdout).expect("nearby --json");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["fingerprint"] == a_fp && h["addresses"][0] == lab.addr_a),
        "ensemble nearby: {listed:#}"
    );
    // While sharing, the LAN listener is the only non-loopback one.
    assert_eq!(
        non_loopback_listeners(&lab.a),
        vec![format!("/proc/net/tcp: {}", tcp_hex(&lan_bind))]
    );
    assert!(non_loopback_listeners(&lab.b).is_empty());

    // Alice has the VM open (as her window would): a join request is made
    // in an existing VM, since only the owner creates VMs.
    let vms = call(&a, "listVms", json!([]));
    assert_eq!(vms[0]["key"], json!([KEY]), "{vms}");
    // Join: both sides show the same code; Alice approves.
    let join_id = call(
        &b,
        "joinPeer",
        json!([{"address": lab.addr_a, "name": "Bea"}]),
    )["joinId"]
        .as_u64()
        .unwrap();
    let (state, _) = wait_lan_in(&b, "the join to wait", Duration::from_secs(20), move |s| {
        join(s, join_id)["state"] == "waiting"
    });
    let code = join(&state, join_id)["code"].clone();
    let requests = call(&a, "listJoinRequests", json!([]));
    assert_eq!(requests[0]["code"], code, "codes differ: {requests:#}");
    assert_eq!(requests[0]["fingerprint"], fingerprint_of(db.path()));
    call(
        &a,
        "approveJoin",
        json!([requests[0]["requestId"], {"role": "collaborator"}]),
    );
    let (state, _) = wait_lan_in(&b, "approval", Duration::from_secs(20), move |s| {
        join(s, join_id)["state"] == "approved"
    });
    let peer_id = join(&state, join_id)["peerId"].as_str().unwrap().to_owned();

    // The relay: Bea's client (in b) follows Alice's shell (in a).
    let observer = Observer::start(&b, &peer_id);
    let (url, token) = (a.url(), a.owner_token.clone());
    let shell = in_ns(&a.ns, move || async move {
        let vm = owner(url, token).await;
        drive(&vm).await;
        vm.call(
            "openShell",
            json!([{"command": "/bin/sh", "cols": 80, "rows": 24}]),
        )
        .await
        .unwrap()["shellId"]
            .as_u64()
            .unwrap()
    });
    let write = |text: &str| {
        call(&a, "writeShell", json!([shell, format!("{text}\n")]));
    };
    write("echo netns-$((6*7))");
    let mut seqs = Vec::new();
    observer.until("netns-42", Duration::from_secs(20), &mut seqs);

    // Unplug Bea's link for 3 s while Alice's shell goes on, then plug it
    // back: everything arrives, nothing twice.
    must(&["-n", &lab.b, "link", "set", &lab.vb, "down"]);
    for i in 0..3 {
        write(&format!("echo outage-{i}-$((1+1))"));
        std::thread::sleep(Duration::from_secs(1));
    }
    must(&["-n", &lab.b, "link", "set", &lab.vb, "up"]);
    write("echo back-$((2+2))");
    observer.until("back-4", Duration::from_secs(60), &mut seqs);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or repeat through the relay: {seqs:?}"
    );
    drop(observer);

    // Sharing off: goodbye (the entry leaves fast) and nothing listens
    // beyond loopback.
    call(&a, "setLanSharing", json!([false]));
    let fp = a_fp.clone();
    let (_, took) = wait_lan_in(
        &b,
        "Alice gone after sharing off",
        Duration::from_secs(10),
        move |s| nearby(s, &fp).is_none(),
    );
    eprintln!("left the list {took:?} after sharing was switched off");
    assert!(
        non_loopback_listeners(&lab.a).is_empty(),
        "{:?}",
        non_loopback_listeners(&lab.a)
    );
    call(&a, "setLanSharing", json!([true]));
    let fp = a_fp.clone();
    wait_lan_in(&b, "Alice back", Duration::from_secs(10), move |s| {
        nearby(s, &fp).is_some()
    });

    // A clean quit leaves the list within 2 s; `kill -9` within 5 s.
    let (url, token) = (b.url(), b.owner_token.clone());
    let fp = a_fp.clone();
    let watcher = std::thread::spawn({
        let ns = format!("/var/run/netns/{}", b.ns);
        move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let vm = owner(url, token).await;
                let gone = |s: &Value| nearby(s, &fp).is_none();
                wait_lan(&vm, "Alice present", Duration::from_secs(10), |s| !gone(s)).await;
                let started = Instant::now();
                wait_lan(&vm, "Alice gone", Duration::from_secs(10), gone).await;
                started.elapsed()
            })
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let quit = Instant::now();
    a.sigterm();
    let seen_gone = watcher.join().unwrap();
    let after_quit = quit.elapsed().min(seen_gone);
    eprintln!("left the list {after_quit:?} after a clean quit");
    assert!(after_quit <= Duration::from_secs(2), "{after_quit:?}");

    let mut a = NsHost::start(&lab.a, da.path(), &alice_args);
    let fp = a_fp.clone();
    wait_lan_in(
        &b,
        "Alice back after restart",
        Duration::from_secs(10),
        move |s| nearby(s, &fp).is_some(),
    );
    let killed = Instant::now();
    a.kill9();
    let fp = a_fp.clone();
    wait_lan_in(
        &b,
        "Alice gone after kill -9",
        Duration::from_secs(10),
        move |s| nearby(s, &fp).is_none(),
    );
    let after_kill = killed.elapsed();
    eprintln!("left the list {after_kill:?} after kill -9");
    assert!(after_kill <= Duration::from_secs(5), "{after_kill:?}");

    // An impostor answering at Alice's address is refused in the handshake.
    let impostor_dir = tempfile::tempdir().unwrap();
    let _impostor = NsHost::start(&lab.a, impostor_dir.path(), &alice_args);
    std::thread::sleep(Duration::from_millis(500));
    let (url, token, path) = (
        b.url(),
        b.owner_token.clone(),
        format!("/v1/peers/{peer_id}/ws"),
    );
    let refused = in_ns(&b.ns, move || async move {
        Client::new(url)
            .with_token(token)
            .with_path(path)
            .get_or_create(json!(KEY))
            .await
            .err()
    });
    assert_eq!(
        error_code(refused.expect("relay to an impostor")),
        "fingerprint_mismatch"
    );
}

/// `10.77.3.1:6421` as /proc/net/tcp writes a local address.
fn tcp_hex(addr: &str) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    let SocketAddr::V4(v4) = addr else {
        unreachable!()
    };
    let o = v4.ip().octets();
    format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3],
        o[2],
        o[1],
        o[0],
        v4.port()
    )
}
