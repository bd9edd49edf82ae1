//! Rust client of an Ensemble host.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ensemble_client::ClientError> {
//! let client = ensemble_client::Client::new("ws://127.0.0.1:6420");
//! let vm = client.get_or_create(["shared-agent"]).await?;
//! let mut events = vm.on("sessionEvent");
//! while let Some(event) = events.recv().await {
//!     println!("{} {}", event.seq(), event.name());
//! }
//! # Ok(()) }
//! ```
//!
//! One background task owns the WebSocket. It subscribes to every event and
//! remembers the last seq it received; when the connection drops it
//! reconnects and subscribes again from that seq, so listeners see each
//! event exactly once and in order. Calls in flight when a connection drops
//! fail with [`ClientError::Disconnected`]: they may or may not have run.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ensemble_protocol::{
    BinaryHeader, ClientMessage, ErrorBody, ErrorCode, EventFrame, FrameError, Participant,
    ServerMessage, VmInfo, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, WS_PATH,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

/// Events a listener may have unread before the client stops reading the
/// socket (the host then serves it from its log later: nothing is lost).
const LISTENER_QUEUE: usize = 1024;

/// Calls waiting for the connection task.
const CALL_QUEUE: usize = 256;

/// Reconnect delays grow from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the host refused: {0:?}")]
    Refused(ErrorBody),
    #[error("{}: {}", .0.code, .0.message)]
    Action(ErrorBody),
    #[error("the connection dropped before the answer came")]
    Disconnected,
    #[error("the client is closed")]
    Closed,
    #[error("the host sent something unreadable: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The host's error, for an action the host refused.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Action(b) | ClientError::Refused(b) => Some(b),
            _ => None,
        }
    }
}

/// One event from the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Json(EventFrame),
    Bytes {
        header: BinaryHeader,
        payload: Bytes,
    },
}

impl Event {
    /// Decodes a binary frame from the host; the payload shares the frame's
    /// buffer instead of being copied.
    pub fn from_binary(frame: Bytes) -> Result<Event, FrameError> {
        let (header, payload) = BinaryHeader::decode(&frame)?;
        let payload = frame.slice(frame.len() - payload.len()..);
        Ok(Event::Bytes { header, payload })
    }

    pub fn seq(&self) -> u64 {
        match self {
            Event::Json(f) => f.seq,
            Event::Bytes { header, .. } => header.seq,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Event::Json(f) => &f.name,
            Event::Bytes { header, .. } => header.kind.event_name(),
        }
    }
}

/// Where a host is.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    path: String,
    token: Option<String>,
    join_code: Option<String>,
}

/// How to open a VM.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Deliver events with `seq > since`; `None` starts at the head.
    pub since: Option<u64>,
    /// Reconnect (and resume) when the connection drops.
    pub reconnect: bool,
    /// Shown in the host's logs.
    pub name: Option<String>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            since: None,
            reconnect: true,
            name: None,
        }
    }
}

impl Client {
    /// `url` is the host's base, `ws://host:port`.
    pub fn new(url: impl Into<String>) -> Client {
        Client {
            url: url.into(),
            path: WS_PATH.to_owned(),
            token: None,
            join_code: None,
        }
    }

    /// Joins with a join code from the owner (when no token is set): the
    /// host issues a member token, which [`VmClient::token`] then holds and
    /// reconnects use.
    pub fn with_join_code(mut self, code: impl Into<String>) -> Client {
        self.join_code = Some(code.into());
        self
    }

    /// Opens VMs at another WebSocket path of the same host: for a paired
    /// host's VM through this host's relay, `/v1/peers/{peerId}/ws`.
    pub fn with_path(mut self, path: impl Into<String>) -> Client {
        self.path = path.into();
        self
    }

    /// Authenticates with `token` (the owner's, from `<data dir>/owner-token`,
    /// or a member token a join issued).
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// Opens the VM of `key` (string or parts), following events from now on.
    pub async fn get_or_create<K: Into<KeyArg>>(&self, key: K) -> Result<VmClient, ClientError> {
        self.open(key, OpenOptions::default()).await
    }

    /// Opens the VM of `key` with options.
    pub async fn open<K: Into<KeyArg>>(
        &self,
        key: K,
        options: OpenOptions,
    ) -> Result<VmClient, ClientError> {
        self.open_listening(key, options, Vec::new()).await
    }

    /// Opens the VM of `key` and receives every event from the first one
    /// after `options.since`: unlike [`VmClient::on`] called after opening,
    /// nothing of the catch-up can pass before the receiver exists.
    pub async fn open_with_events<K: Into<KeyArg>>(
        &self,
        key: K,
        options: OpenOptions,
    ) -> Result<(VmClient, mpsc::Receiver<Event>), ClientError> {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        let vm = self
            .open_listening(key, options, vec![Listener { name: None, tx }])
            .await?;
        Ok((vm, rx))
    }

    async fn open_listening<K: Into<KeyArg>>(
        &self,
        key: K,
        options: OpenOptions,
        listeners: Vec<Listener>,
    ) -> Result<VmClient, ClientError> {
        let url = format!("{}{}", self.url.trim_end_matches('/'), self.path);
        let key = key.into().0;
        let shared = Arc::new(Shared {
            listeners: Mutex::new(listeners),
        });
        let (last_tx, last_rx) = watch::channel(options.since.unwrap_or(0));
        let (caught_up_tx, caught_up_rx) = watch::channel(None);
        let (call_tx, call_rx) = mpsc::channel(CALL_QUEUE);
        let mut conn = Conn {
            url,
            token: self.token.clone(),
            join_code: self.join_code.clone(),
            key,
            options,
            shared: shared.clone(),
            last_tx,
            caught_up_tx,
            pending: HashMap::new(),
            next_id: 1,
        };
        let (ws, info, you) = conn.connect().await?;
        let token = conn.token.clone();
        tokio::spawn(conn.run(ws, call_rx));
        Ok(VmClient {
            info,
            you,
            token,
            call_tx,
            shared,
            last_rx,
            caught_up_rx,
        })
    }
}

/// A key argument: `"name"`, `["a", "b"]`, or a `Vec<String>`.
pub struct KeyArg(Value);

impl From<&str> for KeyArg {
    fn from(s: &str) -> Self {
        KeyArg(Value::from(s))
    }
}

impl<const N: usize> From<[&str; N]> for KeyArg {
    fn from(parts: [&str; N]) -> Self {
        KeyArg(Value::from(parts.to_vec()))
    }
}

impl From<Vec<String>> for KeyArg {
    fn from(parts: Vec<String>) -> Self {
        KeyArg(Value::from(parts))
    }
}

impl From<Value> for KeyArg {
    fn from(v: Value) -> Self {
        KeyArg(v)
    }
}

struct Shared {
    listeners: Mutex<Vec<Listener>>,
}

struct Listener {
    /// `None` listens to every event.
    name: Option<String>,
    tx: mpsc::Sender<Event>,
}

/// An open VM. Dropping every clone of the handle stops the connection.
pub struct VmClient {
    info: VmInfo,
    you: Participant,
    token: Option<String>,
    call_tx: mpsc::Sender<Call>,
    shared: Arc<Shared>,
    last_rx: watch::Receiver<u64>,
    caught_up_rx: watch::Receiver<Option<u64>>,
}

struct Call {
    name: String,
    args: Value,
    reply: oneshot::Sender<Result<Value, ClientError>>,
}

impl VmClient {
    /// The participant this client is (as of its first `welcome`).
    pub fn you(&self) -> &Participant {
        &self.you
    }

    /// The token this client authenticated with: the one it was given, or
    /// the member token a join code was exchanged for.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// Events named `event` (`"*"` for all) from now on, in seq order.
    pub fn on(&self, event: &str) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        let name = (event != "*").then(|| event.to_owned());
        if let Ok(mut listeners) = self.shared.listeners.lock() {
            listeners.push(Listener { name, tx });
        }
        rx
    }

    /// Calls an action with positional arguments.
    pub async fn call(&self, action: &str, args: Value) -> Result<Value, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.call_tx
            .send(Call {
                name: action.to_owned(),
                args,
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// The seq of the last event received (what a resume starts after).
    pub fn last_seq(&self) -> u64 {
        *self.last_rx.borrow()
    }

    /// Waits until the backlog that existed when the (last) subscription
    /// started has been received; returns the seq it reached.
    pub async fn caught_up(&self) -> Result<u64, ClientError> {
        let mut rx = self.caught_up_rx.clone();
        let seq = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(seq.unwrap_or(0))
    }

    /// Waits until an event with at least this seq has been received.
    pub async fn wait_seq(&self, seq: u64) -> Result<(), ClientError> {
        let mut rx = self.last_rx.clone();
        rx.wait_for(|last| *last >= seq)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Closed)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Conn {
    url: String,
    token: Option<String>,
    join_code: Option<String>,
    key: Value,
    options: OpenOptions,
    shared: Arc<Shared>,
    last_tx: watch::Sender<u64>,
    caught_up_tx: watch::Sender<Option<u64>>,
    pending: HashMap<u64, oneshot::Sender<Result<Value, ClientError>>>,
    next_id: u64,
}

enum Ended {
    /// Every handle was dropped.
    Closed,
    /// The connection dropped; reconnect if wanted.
    Dropped,
}

impl Conn {
    /// Connects, says hello, subscribes from the last seq.
    async fn connect(&mut self) -> Result<(Ws, VmInfo, Participant), ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            url: self.url.clone(),
            reason,
        };
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&self.url, None, true)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let hello = ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            key: self.key.clone(),
            name: self.options.name.clone(),
            token: self.token.clone(),
            join_code: if self.token.is_none() {
                self.join_code.clone()
            } else {
                None
            },
            login_code: None,
            request_join: false,
        };
        send_json(&mut ws, &hello).await?;
        let (info, you) = loop {
            let msg = ws
                .next()
                .await
                .ok_or_else(|| connect_err("closed during hello".into()))?
                .map_err(|e| connect_err(e.to_string()))?;
            let Message::Text(text) = msg else { continue };
            match serde_json::from_str::<ServerMessage>(&text) {
                Ok(ServerMessage::Welcome { vm, you, token, .. }) => {
                    // A join code works once: reconnects use the token.
                    if let Some(token) = token {
                        self.token = Some(token);
                    }
                    break (vm, you);
                }
                Ok(ServerMessage::Error { error, .. }) => return Err(ClientError::Refused(error)),
                Ok(_) => continue,
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        };
        let resuming = *self.last_tx.borrow() > 0;
        let since = if resuming {
            Some(*self.last_tx.borrow())
        } else {
            self.options.since
        };
        self.caught_up_tx.send_replace(None);
        send_json(
            &mut ws,
            &ClientMessage::Subscribe {
                events: None,
                since,
            },
        )
        .await?;
        Ok((ws, info, you))
    }

    async fn run(mut self, mut ws: Ws, mut call_rx: mpsc::Receiver<Call>) {
        let mut delay = RECONNECT_FIRST;
        loop {
            let ended = self.pump(&mut ws, &mut call_rx).await;
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ClientError::Disconnected));
            }
            if matches!(ended, Ended::Closed) || !self.options.reconnect {
                let _ = ws.close(None).await;
                return;
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    call = call_rx.recv() => match call {
                        Some(call) => {
                            let _ = call.reply.send(Err(ClientError::Disconnected));
                            continue;
                        }
                        None => return,
                    },
                }
                match self.connect().await {
                    Ok((new_ws, _, _)) => {
                        ws = new_ws;
                        delay = RECONNECT_FIRST;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reconnect failed");
                        delay = (delay * 2).min(RECONNECT_MAX);
                    }
                }
            }
        }
    }

    async fn pump(&mut self, ws: &mut Ws, call_rx: &mut mpsc::Receiver<Call>) -> Ended {
        loop {
            tokio::select! {
                call = call_rx.recv() => {
                    let Some(call) = call else { return Ended::Closed };
                    let id = self.next_id;
                    self.next_id += 1;
                    let msg = ClientMessage::Action { id, name: call.name, args: call.args };
                    match send_json(ws, &msg).await {
                        Ok(()) => {}
                        Err(e @ ClientError::Action(_)) => {
                            let _ = call.reply.send(Err(e));
                            continue;
                        }
                        Err(_) => {
                            let _ = call.reply.send(Err(ClientError::Disconnected));
                            return Ended::Dropped;
                        }
                    }
                    self.pending.insert(id, call.reply);
                }
                msg = ws.next() => {
                    let msg = match msg {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "connection lost");
                            return Ended::Dropped;
                        }
                        None => return Ended::Dropped,
                    };
                    match msg {
                        Message::Text(text) => self.text(&text).await,
                        Message::Binary(bytes) => match Event::from_binary(bytes) {
                            Ok(event) => self.deliver(event).await,
                            Err(e) => tracing::warn!(error = %e, "unreadable binary frame"),
                        },
                        Message::Close(_) => return Ended::Dropped,
                        _ => {}
                    }
                }
            }
        }
    }

    async fn text(&mut self, text: &str) {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "host sent invalid JSON");
                return;
            }
        };
        if value.get("type").and_then(Value::as_str) == Some("event") {
            match serde_json::from_value::<EventFrame>(value) {
                Ok(frame) => self.deliver(Event::Json(frame)).await,
                Err(e) => tracing::warn!(error = %e, "unreadable event"),
            }
            return;
        }
        match serde_json::from_value::<ServerMessage>(value) {
            Ok(ServerMessage::Result { id, value }) => {
                if let Some(reply) = self.pending.remove(&id) {
                    let _ = reply.send(Ok(value));
                }
            }
            Ok(ServerMessage::Error {
                id: Some(id),
                error,
            }) => {
                if let Some(reply) = self.pending.remove(&id) {
                    let _ = reply.send(Err(ClientError::Action(error)));
                }
            }
            Ok(ServerMessage::Error { id: None, error }) => {
                tracing::warn!(code = %error.code, message = %error.message, "host error");
            }
            Ok(ServerMessage::CaughtUp { seq }) => {
                self.caught_up_tx.send_replace(Some(seq));
            }
            Ok(ServerMessage::Welcome { .. } | ServerMessage::JoinPending { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "unreadable message"),
        }
    }

    async fn deliver(&mut self, event: Event) {
        let seq = event.seq();
        let last = *self.last_tx.borrow();
        if seq <= last {
            // Already delivered before a reconnect; the host never repeats
            // within one subscription, this guards across them.
            return;
        }
        let targets: Vec<mpsc::Sender<Event>> = match self.shared.listeners.lock() {
            Ok(mut listeners) => {
                listeners.retain(|l| !l.tx.is_closed());
                listeners
                    .iter()
                    .filter(|l| l.name.as_deref().is_none_or(|n| n == event.name()))
                    .map(|l| l.tx.clone())
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for tx in targets {
            let _ = tx.send(event.clone()).await;
        }
        self.last_tx.send_replace(seq);
    }
}

async fn send_json(ws: &mut Ws, msg: &ClientMessage) -> Result<(), ClientError> {
    let text = serde_json::to_string(msg).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if text.len() > MAX_MESSAGE_BYTES {
        // The host would answer without the action id; refuse here instead.
        return Err(ClientError::Action(ErrorBody::new(
            ErrorCode::MessageTooLarge,
            format!(
                "message of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
                text.len()
            ),
        )));
    }
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|_| ClientError::Disconnected)
}
