//! The client commands against the real host: `ensemble attach` in a real
//! PTY (the screen, typing while driving, refused keys while someone else
//! drives, detach leaving the shell running), `ensemble events` (the log as
//! JSON Lines, gap-free), `ensemble who`, `ensemble invite`, the `serve`
//! configuration file and the manual pages (`ensemble man`); `attach`
//! resuming across a connection cut by a proxy, with nothing lost.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use portable_pty::{CommandBuilder, PtySize};
use serde_json::{json, Value};

/// A program in a PTY of 100x30; its output arrives on a channel.
struct Attached {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    output: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Attached {
    /// `ensemble ARGS`.
    fn start(args: &[&str]) -> Attached {
        Attached::spawn(BIN, args)
    }

    fn spawn(program: &str, args: &[&str]) -> Attached {
        let pty = portable_pty::native_pty_system()
            .openpty(PtySize {
                rows: 30,
                cols: 100,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a PTY");
        let mut cmd = CommandBuilder::new(program);
        cmd.args(args);
        cmd.env("RUST_LOG", "warn");
        let child = pty.slave.spawn_command(cmd).expect("start ensemble attach");
        let mut reader = pty.master.try_clone_reader().expect("reader");
        let writer = pty.master.take_writer().expect("writer");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        std::mem::forget(pty.slave);
        std::mem::forget(pty.master);
        Attached {
            child,
            writer,
            output,
            seen: Vec::new(),
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.writer.write_all(keys).unwrap();
        self.writer.flush().unwrap();
    }

    /// Waits until the output (since the last wait) contains `needle`;
    /// answers that output.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "no {needle:?} on the attached terminal; it shows {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
        String::from_utf8_lossy(&std::mem::take(&mut self.seen)).into_owned()
    }

    fn wait(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.exit_code();
            }
            assert!(Instant::now() < deadline, "attach did not exit");
            while self.output.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn url(host: &HostProcess) -> String {
    host.url()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_shows_the_shell_sends_keys_only_while_driving_and_detaches() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let owner = open(&host, json!("att"), None).await;
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let host_url = url(&host);

    // The owner attaches with a new shell: it takes control, keys go in.
    let mut alice = tokio::task::block_in_place(|| {
        let mut a = Attached::start(&[
            "attach",
            "--url",
            &host_url,
            "--key",
            "att",
            "--new",
            "--data-dir",
            &data_dir,
        ]);
        a.expect("You drive");
        a.type_keys(b"echo attach-$((6*7))\r");
        a.expect("attach-42");
        a
    });
    let shells = owner.call("listShells", json!([])).await.unwrap();
    let shell = shells[0]["shellId"].as_u64().unwrap();
    assert_eq!(shells[0]["cols"], 100, "the driver's terminal size applies");

    // A collaborator attaches to the same shell: same screen; keys refused.
    let token = member_token(&host, &owner, json!("att"), "collaborator", "Bea").await;
    let shell_arg = shell.to_string();
    let mut bea = tokio::task::block_in_place(|| {
        let mut b = Attached::start(&[
            "attach", "--url", &host_url, "--key", "att", "--shell", &shell_arg, "--token", &token,
        ]);
        b.expect("attach-42");
        b.type_keys(b"echo from-bea\r");
        b.expect("drives");
        b
    });
    let (_, mut events) = ensemble_client::Client::new(host.url())
        .with_token(&host.owner_token)
        .open_with_events(
            json!("att"),
            ensemble_client::OpenOptions {
                since: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let all = collect(&mut events, 10_000, Duration::from_secs(2)).await;
    let typed: String = all
        .iter()
        .filter_map(|e| match e {
            ensemble_client::Event::Bytes { payload, .. } => {
                Some(String::from_utf8_lossy(payload).into_owned())
            }
            _ => None,
        })
        .collect();
    assert!(
        !typed.contains("from-bea"),
        "keys of a non-driver reached the shell"
    );

    // Both detach with Ctrl-] d; the shell goes on.
    tokio::task::block_in_place(|| {
        bea.type_keys(&[0x1d, b'd']);
        assert_eq!(bea.wait(), 0);
        alice.type_keys(&[0x1d, b'd']);
        assert_eq!(alice.wait(), 0);
    });
    let shells = owner.call("listShells", json!([])).await.unwrap();
    assert_eq!(shells[0]["running"], true, "detaching ended the shell");
}

/// A TCP proxy on 127.0.0.1 in front of the host, whose connections the
/// test can cut for real (the client sees its socket closed) and keep
/// refusing until it reopens: a dropped network, without touching one.
struct Proxy {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, l) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // While cut, a connection is accepted and closed at once.
                if !o.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut host) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut host).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        });
        Proxy { addr, open, links }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Closes every connection through the proxy and refuses new ones.
    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_resumes_after_a_dropped_connection_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let proxy = Proxy::start(host.addr).await;
    // The owner drives over a direct connection, and writes to the shell
    // while attach's connection is down.
    let owner = open_driving(&host, json!("drop")).await;
    let shell = owner
        .call("openShell", json!([{"cols": 100, "rows": 30}]))
        .await
        .unwrap()["shellId"]
        .as_u64()
        .unwrap();
    let shell_arg = shell.to_string();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let proxy_url = proxy.url();
    let mut attached = tokio::task::block_in_place(|| {
        let mut a = Attached::start(&[
            "attach",
            "--url",
            &proxy_url,
            "--key",
            "drop",
            "--shell",
            &shell_arg,
            "--data-dir",
            &data_dir,
        ]);
        a.expect("Ctrl-] d detaches");
        a
    });
    owner
        .call("writeShell", json!([shell, "echo before-$((6*7))\r"]))
        .await
        .unwrap();
    tokio::task::block_in_place(|| attached.expect("before-42"));

    // The connection drops; meanwhile the shell prints 200 numbered lines,
    // committed to the log before attach can reconnect.
    proxy.cut();
    // (The VM client holds the connection: kept until the end.)
    let (_watcher, mut events) = host
        .client()
        .open_with_events(json!("drop"), ensemble_client::OpenOptions::default())
        .await
        .unwrap();
    owner
        .call("writeShell", json!([shell, "seq -f 'away-%g' 1 200\r"]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut printed = String::new();
    while !printed.contains("away-200\r\n") {
        assert!(
            Instant::now() < deadline,
            "the shell never printed away-200: {printed:?}"
        );
        if let Ok(Some(ensemble_client::Event::Bytes { payload, .. })) =
            tokio::time::timeout(Duration::from_secs(1), events.recv()).await
        {
            printed.push_str(&String::from_utf8_lossy(&payload));
        }
    }
    // Still cut off: nothing of it can have reached attach yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early: Vec<u8> = tokio::task::block_in_place(|| {
        std::iter::from_fn(|| attached.output.try_recv().ok())
            .flatten()
            .collect()
    });
    assert!(
        !String::from_utf8_lossy(&early).contains("away-1\r\n"),
        "output reached attach through a cut connection"
    );
    attached.seen.extend_from_slice(&early);

    // Back online: attach resumes from its last seq and shows every line.
    proxy.reopen();
    let shown = tokio::task::block_in_place(|| attached.expect("away-200\r\n"));
    for i in 1..=200 {
        assert!(
            shown.contains(&format!("away-{i}\r\n")),
            "away-{i} was lost across the reconnect: {shown:?}"
        );
    }
    // And it is live again: what comes next shows too.
    owner
        .call("writeShell", json!([shell, "echo after-$((6*7))\r"]))
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        attached.expect("after-42");
        attached.type_keys(&[0x1d, b'd']);
        assert_eq!(attached.wait(), 0);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_the_log_as_gap_free_json_lines_and_who_and_invite_work() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let owner = open(&host, json!("ev"), None).await;
    owner
        .call(
            "emit",
            json!([{"name": "testEvent", "data": {"n": 1}, "count": 50}]),
        )
        .await
        .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--url", &host.url(), "--key", "ev", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("run ensemble");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let lines = run(&["events"]);
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap: {seqs:?}");
    assert_eq!(
        events.iter().filter(|e| e["name"] == "testEvent").count(),
        50
    );
    let only = run(&["events", "--only", "testEvent", "--since", "10"]);
    assert!(only.lines().all(|l| l.contains("\"testEvent\"")));
    assert!(only
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).unwrap()["seq"]
            .as_u64()
            .unwrap()
            > 10));

    let vms = run(&["vms"]);
    assert!(vms.contains("ev"), "{vms}");
    let who = run(&["who"]);
    assert!(
        who.contains("owner") && who.contains("Nobody drives"),
        "{who}"
    );
    let invite = run(&["invite", "--role", "viewer", "--hours", "2"]);
    let code = invite.split_whitespace().nth(2).expect("a code").to_owned();
    // The code works once: `who --join` stores the token it yields.
    let joined_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "who",
            "--url",
            &host.url(),
            "--key",
            "ev",
            "--name",
            "Cy",
            "--join",
            &code,
            "--data-dir",
        ])
        .arg(joined_dir.path())
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Cy"));
    assert!(joined_dir.path().join("client-tokens.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_json_lines_and_an_asciicast_that_asciinema_plays() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let owner = open(&host, json!("rec"), None).await;
    drive(&owner).await;
    let shell = owner
        .call(
            "openShell",
            json!([{"command": "/bin/sh", "cols": 91, "rows": 27}]),
        )
        .await
        .unwrap()["shellId"]
        .as_u64()
        .unwrap();
    let mut events = owner.on("shellData");
    owner
        .call("writeShell", json!([shell, "echo rec-$((40+2)) é\n"]))
        .await
        .unwrap();
    owner
        .call("resizeShell", json!([shell, 100, 30]))
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("rec-42") {
        if let Some(ensemble_client::Event::Bytes { payload, .. }) =
            tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap()
        {
            seen.push_str(&String::from_utf8_lossy(&payload));
        }
    }
    let out = tempfile::tempdir().unwrap();
    let export = |args: &[&str]| {
        let status = std::process::Command::new(BIN)
            .arg("export")
            .args(args)
            .args(["--url", &host.url(), "--key", "rec", "--data-dir"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "export {args:?}");
    };
    let cast = out.path().join("shell.cast");
    let jsonl = out.path().join("log.jsonl");
    export(&[
        "--asciicast",
        "--shell",
        &shell.to_string(),
        "-o",
        cast.to_str().unwrap(),
    ]);
    export(&["--jsonl", "-o", jsonl.to_str().unwrap()]);

    let text = std::fs::read_to_string(&cast).unwrap();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            header["version"].as_u64(),
            header["width"].as_u64(),
            header["height"].as_u64()
        ),
        (Some(2), Some(91), Some(27))
    );
    assert!(text.contains("\"r\",\"100x30\""), "no resize event: {text}");
    // The real asciinema (it wants a terminal) reads it and prints what
    // the shell showed.
    tokio::task::block_in_place(|| {
        let mut played = Attached::spawn("asciinema", &["cat", cast.to_str().unwrap()]);
        played.expect("rec-42 é");
        assert_eq!(played.wait(), 0, "asciinema cat failed");
    });

    let log = std::fs::read_to_string(&jsonl).unwrap();
    let seqs: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_streams_the_agents_answer_and_says_who_drives_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let prompt = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("prompt")
            .args(["--url", &host.url(), "--key", "ask", "--data-dir"])
            .arg(dir.path());
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd.args(args).output().unwrap()
    };
    let out = prompt(&["--agent", "scripted", "say hello from the agent"], None);
    assert_ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from the agent"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("end_turn"));
    // The same session again, handing the turn to the agent.
    let out = prompt(&["--hand-off", "turn"], None);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "turn 2");
    // Someone else drives: a collaborator is told who.
    let owner = open(&host, json!("ask"), None).await;
    drive(&owner).await;
    let token = member_token(&host, &owner, json!("ask"), "collaborator", "Bea").await;
    let out = prompt(&["turn"], Some(&token));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(" drives ("), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_its_settings_from_the_config_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "lan = true\nlan-bind = \"127.0.0.1:0\"\nmdns-interfaces = \"lo\"\nlan-name = \"FromFile\"\ncontrol-grace = 0.5\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let host = HostProcess::start_with(
        &data,
        HostOptions {
            extra: vec![
                "--config".into(),
                file.display().to_string(),
                "--lan-name".into(),
                "FromFlag".into(),
            ],
            ..HostOptions::default()
        },
    );
    let vm = open(&host, json!("cfg"), None).await;
    let (state, _) =
        common::lan::wait_lan(&vm, "sharing from the file", Duration::from_secs(10), |s| {
            s["sharing"] == true
        })
        .await;
    assert_eq!(
        state["displayName"], "FromFlag",
        "the flag wins over the file"
    );

    let explained = std::process::Command::new(BIN)
        .args([
            "config",
            "--config",
            file.to_str().unwrap(),
            "--",
            "--lan-name",
            "X",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&explained.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("lan ").contains("config.toml"), "{text}");
    assert!(line("lan-name ").contains("command line"), "{text}");
    assert!(line("stall-timeout ").contains("default"), "{text}");

    std::fs::write(&file, "lan-bnd = \"127.0.0.1:0\"\n").unwrap();
    let bad = std::process::Command::new(BIN)
        .args(["serve", "--config", file.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("lan-bnd") && err.contains("config.toml"),
        "{err}"
    );
}

#[test]
fn man_writes_a_page_per_command_that_groff_renders() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_ok(&out);
    // The top page lists every command; each has a page of its own.
    let commands = [
        "serve",
        "config",
        "nearby",
        "join",
        "attach",
        "events",
        "export",
        "prompt",
        "vms",
        "who",
        "invite",
        "completions",
        "man",
    ];
    let render = |page: &std::path::Path| {
        // -ww: every warning, so that a malformed page shows up on stderr.
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(page)
            .output()
            .expect("groff (setup.sh installs groff-base)");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff on {}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // groff overstrikes bold and underlined text: keep the letters.
        let text = String::from_utf8_lossy(&out.stdout);
        let mut plain = String::new();
        for c in text.chars() {
            if c == '\u{8}' {
                plain.pop();
            } else {
                plain.push(c);
            }
        }
        plain
    };
    let top = render(&dir.path().join("ensemble.1"));
    for command in commands {
        assert!(
            top.contains(&format!("ensemble-{command}(1)")),
            "ensemble.1 lacks {command}: {top}"
        );
        let page = render(&dir.path().join(format!("ensemble-{command}.1")));
        assert!(page.contains(&format!("ensemble-{command}")), "{page}");
    }
    let serve = render(&dir.path().join("ensemble-serve.1"));
    assert!(serve.contains("--lan-bind"), "{serve}");

    // Without --dir the top page goes to stdout.
    let printed = std::process::Command::new(BIN).arg("man").output().unwrap();
    assert!(printed.status.success());
    assert_eq!(
        printed.stdout,
        std::fs::read(dir.path().join("ensemble.1")).unwrap()
    );
}

/// Fails the test with the command's stderr unless it exited with 0.
#[track_caller]
fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
