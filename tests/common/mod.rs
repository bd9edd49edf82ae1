//! Test helpers: start the real `ensemble` binary on 127.0.0.1 with a
//! temporary data directory, talk to it with the real client or a raw
//! WebSocket.
#![allow(dead_code)]

pub mod lan;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ensemble_client::{Client, OpenOptions, VmClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_ensemble");

/// The address in a starting host's first stdout line, "Ensemble host
/// listening on ws://127.0.0.1:PORT/v1/ws (data in ...)".
pub fn listening_addr(stdout: std::process::ChildStdout) -> SocketAddr {
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    line.split("ws://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("host did not start: {line:?}"))
}

/// A running host process; killed when dropped.
pub struct HostProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// From `<data dir>/owner-token`, written before the host listens.
    pub owner_token: String,
}

pub struct HostOptions<'a> {
    pub bind: &'a str,
    pub test_actions: bool,
    pub hook_command: Option<String>,
    pub extra: Vec<String>,
    /// Environment variables for the host process.
    pub env: Vec<(String, String)>,
}

impl Default for HostOptions<'_> {
    fn default() -> Self {
        HostOptions {
            bind: "127.0.0.1:0",
            test_actions: true,
            hook_command: None,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl HostProcess {
    pub fn start(data_dir: &Path) -> HostProcess {
        HostProcess::start_with(data_dir, HostOptions::default())
    }

    pub fn start_with(data_dir: &Path, opts: HostOptions) -> HostProcess {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--bind")
            .arg(opts.bind)
            .arg("--data-dir")
            .arg(data_dir)
            // ENSEMBLE_TEST_LOG=debug shows the host's log while debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("ENSEMBLE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if opts.test_actions {
            cmd.arg("--test-actions");
        }
        if let Some(hook) = &opts.hook_command {
            cmd.arg("--hook-command").arg(hook);
        }
        // ENSEMBLE_TEST_ISOLATION=none runs the whole suite without sandboxes.
        if let Ok(isolation) = std::env::var("ENSEMBLE_TEST_ISOLATION") {
            if !opts.extra.iter().any(|a| a == "--isolation") {
                cmd.arg("--isolation").arg(isolation);
            }
        }
        cmd.args(&opts.extra);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("start ensemble");
        let stdout = child.stdout.take().expect("stdout");
        let addr = listening_addr(stdout);
        let owner_token = std::fs::read_to_string(data_dir.join("owner-token"))
            .expect("the host wrote its owner token")
            .trim()
            .to_owned();
        HostProcess {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            owner_token,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// A client authenticated as the owner.
    pub fn client(&self) -> Client {
        Client::new(self.url()).with_token(&self.owner_token)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the host commits and exits.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Opens `key` as the owner.
pub async fn open(host: &HostProcess, key: Value, since: Option<u64>) -> VmClient {
    open_as(host, &host.owner_token, key, since).await
}

/// Opens `key` as the owner and takes control, so input actions work. (Add
/// listeners to a client opened with a `since` before taking control, or
/// the catch-up may pass before they are there: use [`open`] then [`drive`].)
pub async fn open_driving(host: &HostProcess, key: Value) -> VmClient {
    let vm = open(host, key, None).await;
    drive(&vm).await;
    vm
}

/// A member token for a new participant with `role`: the owner creates a
/// join code and a fresh connection to `key` joins with it, as `name`.
pub async fn member_token(
    host: &HostProcess,
    owner: &VmClient,
    key: Value,
    role: &str,
    name: &str,
) -> String {
    let code = owner
        .call("createJoinCode", json!([{"role": role}]))
        .await
        .expect("createJoinCode")["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let mut raw = Raw::connect(host).await;
    raw.token = None;
    raw.send_json(
        json!({"type": "hello", "protocol": 1, "key": key, "joinCode": code, "name": name}),
    )
    .await;
    let welcome = raw.next_reply().await;
    welcome["token"]
        .as_str()
        .unwrap_or_else(|| panic!("joining with a code gave {welcome}"))
        .to_owned()
}

/// Opens `key` with a token (the owner's, or a member's).
pub async fn open_as(host: &HostProcess, token: &str, key: Value, since: Option<u64>) -> VmClient {
    Client::new(host.url())
        .with_token(token)
        .open(
            key,
            OpenOptions {
                since,
                ..OpenOptions::default()
            },
        )
        .await
        .expect("open VM")
}

/// Takes control (the owner always may).
pub async fn drive(vm: &VmClient) {
    vm.call("takeControl", json!([]))
        .await
        .expect("the owner takes control");
}

/// The VM's last seq now (joining and control changes are events too, so
/// tests count from here rather than from 1).
pub async fn head(vm: &VmClient) -> u64 {
    vm.call("getEvents", json!([{"limit": 1}]))
        .await
        .expect("getEvents")["head"]
        .as_u64()
        .expect("head")
}

/// Emits `count` test events whose data is `{"n": n}` for n in `from..`.
pub async fn emit_numbered(vm: &VmClient, from: u64, count: u64) -> (u64, u64) {
    let mut first = 0;
    let mut last = 0;
    for n in from..from + count {
        let r = vm
            .call("emit", json!([{"data": {"n": n}}]))
            .await
            .expect("emit");
        if first == 0 {
            first = r["first"].as_u64().unwrap();
        }
        last = r["last"].as_u64().unwrap();
    }
    (first, last)
}

/// An event's JSON data (`null` for a binary event).
pub fn data(e: &ensemble_client::Event) -> Value {
    match e {
        ensemble_client::Event::Json(f) => f.data.clone(),
        ensemble_client::Event::Bytes { .. } => Value::Null,
    }
}

/// The data of the next event called `name` (others are skipped).
pub async fn next_named(
    rx: &mut tokio::sync::mpsc::Receiver<ensemble_client::Event>,
    name: &str,
) -> Value {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {name} in time"))
            .expect("open");
        if e.name() == name {
            return data(&e);
        }
    }
}

/// Creates a session with the scripted agent and `env`; answers its id.
pub async fn scripted(vm: &VmClient, env: Value) -> String {
    let r = vm
        .call("createSession", json!(["scripted", {"env": env}]))
        .await
        .unwrap();
    assert_eq!(r["agentType"], "scripted");
    assert_eq!(r["agentInfo"]["name"], "scripted");
    r["sessionId"].as_str().unwrap().to_owned()
}

/// The wire code of a refused call (or the client error, for a failed one).
pub fn error_code(e: ensemble_client::ClientError) -> String {
    e.body()
        .map(|b| b.code.as_str().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Receives until `n` events arrived or `timeout` passed.
pub async fn collect(
    rx: &mut tokio::sync::mpsc::Receiver<ensemble_client::Event>,
    n: usize,
    timeout: Duration,
) -> Vec<ensemble_client::Event> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => out.push(e),
            _ => break,
        }
    }
    out
}

/// A raw WebSocket, for feeding the host what the client library never sends.
pub struct Raw {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Sent by [`Raw::hello`].
    pub token: Option<String>,
}

impl Raw {
    pub async fn connect(host: &HostProcess) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}/v1/ws", host.url()))
            .await
            .expect("connect");
        Raw {
            ws,
            token: Some(host.owner_token.clone()),
        }
    }

    pub async fn send(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(v.to_string()).await;
    }

    /// The next text message that is not an event, as JSON.
    pub async fn next_reply(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("reply in time")
                .expect("open")
                .expect("ok");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] != "event" {
                    return v;
                }
            }
        }
    }

    /// Sends hello (with the token, if any) and returns the welcome (or error).
    pub async fn hello(&mut self, key: Value) -> Value {
        let mut hello = json!({"type": "hello", "protocol": 1, "key": key});
        if let Some(token) = &self.token {
            hello["token"] = json!(token);
        }
        self.send_json(hello).await;
        self.next_reply().await
    }

    /// Calls an action and returns its reply (`result` or `error`).
    pub async fn call(&mut self, id: u64, name: &str, args: Value) -> Value {
        self.send_json(json!({"type": "action", "id": id, "name": name, "args": args}))
            .await;
        loop {
            let reply = self.next_reply().await;
            if reply["id"] == id {
                return reply;
            }
        }
    }
}
