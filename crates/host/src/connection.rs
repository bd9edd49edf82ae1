//! One WebSocket connection: frames in → messages → VM; log → frames out.
//!
//! The reading half parses what the client sends and runs actions. The
//! writing half owns the socket's sink and a cursor into the VM's log: it
//! takes live events from the log's broadcast while it keeps up, and reads
//! pages from the log itself when it is behind (a late subscriber, a resume,
//! or a slow client whose broadcast receiver lagged). So a slow client costs
//! the producer and the other clients nothing, and what it holds in memory is
//! bounded by one page plus the socket's write buffer.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use ensemble_protocol::{
    ClientMessage, ErrorBody, ErrorCode, Key, Limits, Participant, Role, ServerMessage,
    MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::access::{request_wire_id, Access, Admission, Admitted, Credential, Member, TlsPeer};
use crate::actions::{self, ActionContext, MAX_FILTER_NAMES};
use crate::log::{Frame, Log, LogError, LoggedEvent, NewEvent};
use crate::registry::Registry;
use crate::vm::Vm;

/// Messages waiting for the writing half (action results, errors). Bounded so
/// a client that sends actions but never reads cannot grow the host: the
/// reading half then waits, which stops reading the socket.
const OUT_QUEUE: usize = 256;

/// Actions one connection may have running at once; more wait (and the
/// socket is not read meanwhile).
const MAX_INFLIGHT_ACTIONS: usize = 64;

/// Events read from the log per catch-up page, at most.
const CATCH_UP_PAGE: u32 = 1024;

/// Bytes of frames read from the log per catch-up page (plus one event,
/// at most 64 KiB of output): a late joiner that does not read holds no
/// more than this page and the socket's write buffer, whatever the log
/// holds. The next page is read once this one is written.
pub const CATCH_UP_BYTES: usize = 1 << 20; // 1 MiB

/// Actions whose answer may be large (up to about `MAX_RESULT_BYTES` of
/// events): `MAX_LARGE_READS` at a time per connection run or wait to be
/// written, so a client that sends many and reads nothing holds one answer,
/// not 64 running plus 256 queued.
const LARGE_READS: &[&str] = &["getEvents", "getSequencedEvents"];
pub const MAX_LARGE_READS: usize = 1;

/// How long a closing connection's writer may take to send what is queued.
const WRITER_DRAIN: Duration = Duration::from_secs(1);

/// Live events sent before a flush.
const LIVE_BATCH: usize = 512;

/// Open connections one member (not the owner) may have at once: a UI
/// opens one per VM it shows, so this is many tabs' worth, and it bounds
/// what one member's connections can cost the host. As many as one address
/// may open: a teammate's host relays all of its owner's connections as
/// one member, from one address.
pub const MAX_MEMBER_CONNECTIONS: usize = 32;

/// Open WebSocket connections from one address other than the loopback
/// (where every local client, the owner's included, shares 127.0.0.1).
pub const MAX_ADDRESS_CONNECTIONS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKey {
    Member(u64),
    Address(IpAddr),
}

/// Counts of open connections per member and per address.
#[derive(Default)]
pub struct Slots(std::sync::Mutex<std::collections::HashMap<SlotKey, usize>>);

/// One counted connection; uncounted when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    key: SlotKey,
}

impl Slots {
    /// A slot for `key` unless `cap` are taken.
    pub fn take(self: &Arc<Self>, key: SlotKey, cap: usize) -> Option<Slot> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .slots
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What every connection shares.
pub struct Shared {
    /// Open connections per member and per address.
    pub slots: Arc<Slots>,
    pub registry: Registry,
    pub access: Access,
    pub agents: crate::agents::AgentRegistry,
    pub agent_init_timeout: Duration,
    /// Numbers connections, for ownership of what they open.
    pub next_conn_id: std::sync::atomic::AtomicU64,
    pub test_actions: bool,
    /// A client whose socket accepts nothing for this long is disconnected
    /// (it can reconnect and resume from its last seq).
    pub stall_timeout: Duration,
    pub shutdown: CancellationToken,
    pub server: String,
    /// `bwrap` or `none` (`--isolation none`), told to every participant.
    pub isolation: &'static str,
    /// LAN sharing, nearby hosts, joins and peers.
    pub lan: crate::lan::Lan,
}

enum Out {
    Text(String),
    /// A large answer: the permit it holds is returned once it is written.
    Held(String, OwnedSemaphorePermit),
    /// Close the connection with this WebSocket status.
    Close(u16, &'static str),
    Subscribe {
        log: Log,
        since: Option<u64>,
        filter: Option<HashSet<String>>,
    },
    Filter(Option<HashSet<String>>),
}

/// Serves one upgraded WebSocket from `peer` (with the certificate it
/// presented, over the LAN's TLS) until either side closes it.
///
/// `stop` ends it (the host's shutdown, or sharing switched off for a LAN
/// connection).
pub async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    peer: IpAddr,
    tls: Option<TlsPeer>,
    stop: CancellationToken,
) {
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let done = stop.child_token();
    let mut writer = tokio::spawn(write_half(sink, out_rx, shared.stall_timeout, done.clone()));
    let state = read_half(stream, out_tx, shared, done.clone(), peer, tls).await;
    if let (Some(vm), Some(me)) = (&state.vm, &state.me) {
        let id = me.borrow().as_ref().map(|m| m.id);
        if let Some(id) = id {
            vm.control().disconnect(id).await;
        }
    }
    // The reading half dropped its sender: the writer sends what is queued
    // (a close frame, say) and ends; one that cannot is stopped.
    if tokio::time::timeout(WRITER_DRAIN, &mut writer)
        .await
        .is_err()
    {
        done.cancel();
        let _ = writer.await;
    }
}

struct ReadState {
    conn_id: u64,
    peer: IpAddr,
    tls: Option<TlsPeer>,
    vm: Option<Vm>,
    /// Who this connection is, kept current by the access thread (`None`
    /// once removed). Set together with `vm`: no VM, no events.
    me: Option<watch::Receiver<Option<Member>>>,
    subscribed: bool,
    /// Counts this connection against its member's cap while it is open.
    slot: Option<Slot>,
}

async fn read_half(
    mut stream: SplitStream<WebSocket>,
    out_tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    done: CancellationToken,
    peer: IpAddr,
    tls: Option<TlsPeer>,
) -> ReadState {
    let permits = Arc::new(Semaphore::new(MAX_INFLIGHT_ACTIONS));
    let large = Arc::new(Semaphore::new(MAX_LARGE_READS));
    let mut state = ReadState {
        conn_id: shared
            .next_conn_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        peer,
        tls,
        vm: None,
        me: None,
        subscribed: false,
        slot: None,
    };
    loop {
        let removed = async {
            if let Some(me) = &mut state.me {
                // Ok once the member is removed; an error only means the
                // host is stopping, which `done` covers.
                if me.wait_for(Option::is_none).await.is_ok() {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        let msg = tokio::select! {
            _ = done.cancelled() => return state,
            _ = removed => {
                let _ = out_tx.send(Out::Text(error_text(None, ErrorBody::new(
                    ErrorCode::Unauthorized,
                    "the owner removed you from this host",
                )))).await;
                let _ = out_tx.send(Out::Close(1008, "removed by the owner")).await;
                return state;
            }
            msg = stream.next() => msg,
        };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                // Over the hard limit the WebSocket layer refuses to buffer
                // the message; say so with the standard status before closing.
                if is_capacity_error(&e) {
                    let _ = out_tx
                        .send(Out::Close(1009, "message over the hard size limit"))
                        .await;
                } else if is_utf8_error(&e) {
                    // RFC 6455 8.1: a text frame that is not UTF-8 fails the
                    // connection with 1007 (invalid frame payload data).
                    let _ = out_tx
                        .send(Out::Close(1007, "a text frame that is not UTF-8"))
                        .await;
                }
                tracing::debug!(error = %e, "connection read failed");
                return state;
            }
            None => return state,
        };
        let reply = match msg {
            Message::Text(text) if text.len() > MAX_MESSAGE_BYTES => Some(too_large(text.len())),
            Message::Text(text) => match parse(text.as_str()) {
                Ok(ClientMessage::Hello {
                    protocol,
                    key,
                    name,
                    token,
                    join_code,
                    login_code,
                    request_join,
                }) => {
                    let credential = match (token, join_code, login_code) {
                        (Some(t), _, _) => Credential::Token(t),
                        (None, Some(c), _) => Credential::JoinCode(c),
                        (None, None, Some(c)) => Credential::LoginCode(c),
                        (None, None, None) if request_join => Credential::RequestJoin,
                        (None, None, None) => Credential::None,
                    };
                    let hello = Hello {
                        protocol,
                        key,
                        name,
                        credential,
                    };
                    match hello_with_join(hello, &mut state, &shared, &out_tx, &mut stream, &done)
                        .await
                    {
                        Some(reply) => reply,
                        None => return state,
                    }
                }
                Ok(m) => {
                    let raw_data = raw_emit_data(text.as_str(), &m);
                    handle(m, raw_data, &mut state, &shared, &out_tx, &permits, &large).await
                }
                Err((id, body)) => Some(error_text(id, body)),
            },
            Message::Binary(b) if b.len() > MAX_MESSAGE_BYTES => Some(too_large(b.len())),
            Message::Binary(_) => Some(error_text(
                None,
                ErrorBody::new(
                    ErrorCode::UnsupportedFrame,
                    "protocol 1 takes no binary frames from clients",
                ),
            )),
            Message::Close(_) => return state,
            Message::Ping(_) | Message::Pong(_) => None,
        };
        if let Some(text) = reply {
            if out_tx.send(Out::Text(text)).await.is_err() {
                return state;
            }
        }
    }
}

struct Hello {
    protocol: u32,
    key: Value,
    name: Option<String>,
    credential: Credential,
}

/// `hello`, including the wait for the owner when it is a join request.
/// Answers the reply to send, or `None` if the connection should end.
async fn hello_with_join(
    hello: Hello,
    state: &mut ReadState,
    shared: &Arc<Shared>,
    out_tx: &mpsc::Sender<Out>,
    stream: &mut SplitStream<WebSocket>,
    done: &CancellationToken,
) -> Option<Option<String>> {
    let (request_id, decision, vm) = match open_hello(hello, state, shared).await {
        Opened::Reply(reply) => return Some(Some(reply)),
        Opened::Pending {
            request_id,
            decision,
            vm,
        } => (request_id, decision, vm),
    };
    let wire_id = request_wire_id(request_id);
    let pending = ServerMessage::JoinPending {
        request_id: wire_id.clone(),
    };
    let text = serde_json::to_string(&pending).unwrap_or_default();
    if out_tx.send(Out::Text(text)).await.is_err() {
        shared.access.withdraw(request_id).await;
        return None;
    }
    let mut decision = std::pin::pin!(decision);
    let outcome = loop {
        tokio::select! {
            _ = done.cancelled() => break None,
            d = &mut decision => break Some(d.unwrap_or_else(|_| Err(ErrorBody::new(
                ErrorCode::Unavailable,
                "the host is shutting down",
            )))),
            msg = stream.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(msg)) => {
                    // An action keeps its id, so a client matching answers
                    // by id is not left waiting.
                    let id = match &msg {
                        Message::Text(t) => serde_json::from_str::<Value>(t.as_str())
                            .ok()
                            .and_then(|v| v.get("id").and_then(Value::as_u64)),
                        _ => None,
                    };
                    let text = error_text(id, ErrorBody::new(
                        ErrorCode::NotOpen,
                        "your join request waits for the owner; nothing else can be done until they answer",
                    ));
                    if out_tx.send(Out::Text(text)).await.is_err() {
                        break None;
                    }
                }
            },
        }
    };
    let resolved = |approved: bool, participant: Option<String>, reason: &str| NewEvent::Json {
        name: "joinResolved".to_owned(),
        data: json!({
            "requestId": wire_id,
            "approved": approved,
            "participantId": participant,
            "reason": reason,
        })
        .to_string(),
    };
    match outcome {
        None => {
            shared.access.withdraw(request_id).await;
            let _ = vm
                .log()
                .append(vec![resolved(false, None, "withdrawn")])
                .await;
            None
        }
        Some(Ok(admitted)) => {
            // A new member: its first connection counts against its cap.
            state.slot = shared
                .slots
                .take(SlotKey::Member(admitted.member.id), MAX_MEMBER_CONNECTIONS);
            let _ = vm
                .log()
                .append(vec![resolved(
                    true,
                    Some(admitted.member.wire_id()),
                    "approved",
                )])
                .await;
            Some(Some(welcome(admitted, vm, state, shared).await))
        }
        Some(Err(e)) => {
            let _ = vm.log().append(vec![resolved(false, None, "denied")]).await;
            Some(Some(error_text(None, e)))
        }
    }
}

enum Opened {
    Reply(String),
    Pending {
        request_id: u64,
        decision: tokio::sync::oneshot::Receiver<crate::access::Decision>,
        vm: Vm,
    },
}

async fn open_hello(hello: Hello, state: &mut ReadState, shared: &Arc<Shared>) -> Opened {
    let Hello {
        protocol,
        key,
        name,
        credential,
    } = hello;
    if state.vm.is_some() {
        return Opened::Reply(error_text(
            None,
            ErrorBody::new(
                ErrorCode::AlreadyOpen,
                "this connection already opened a VM; open another connection for another key",
            ),
        ));
    }
    if protocol != PROTOCOL_VERSION {
        return Opened::Reply(error_text(
            None,
            ErrorBody::new(
                ErrorCode::UnsupportedVersion,
                format!("this host speaks protocol {PROTOCOL_VERSION}, not {protocol}"),
            ),
        ));
    }
    let key = match Key::from_value(&key) {
        Ok(key) => key,
        Err(e) => {
            return Opened::Reply(error_text(
                None,
                ErrorBody::new(ErrorCode::InvalidKey, e.to_string()),
            ))
        }
    };
    // Whether the VM exists decides what a member may do: only the owner
    // creates VMs, and a join request is made in an existing one.
    let exists = match shared.registry.lookup(key.clone()).await {
        Ok(id) => id.is_some(),
        Err(e) => return Opened::Reply(error_text(None, e.to_body())),
    };
    let target = crate::access::Target {
        key: key.canonical(),
        exists,
    };
    let admission = match shared
        .access
        .admit(
            credential,
            name.clone(),
            state.peer,
            state.tls.clone(),
            Some(target),
        )
        .await
    {
        Ok(a) => a,
        Err(e) => return Opened::Reply(error_text(None, e)),
    };
    if let Admission::Admitted(a) = &admission {
        if a.member.role != Role::Owner {
            match shared
                .slots
                .take(SlotKey::Member(a.member.id), MAX_MEMBER_CONNECTIONS)
            {
                Some(slot) => state.slot = Some(slot),
                None => {
                    return Opened::Reply(error_text(
                        None,
                        ErrorBody::new(
                            ErrorCode::RateLimited,
                            format!("you have {MAX_MEMBER_CONNECTIONS} connections open to this host already; close one first"),
                        ),
                    ))
                }
            }
        }
    }
    let vm = match shared.registry.open(key).await {
        Ok(vm) => vm,
        Err(e) => {
            state.slot = None;
            return Opened::Reply(error_text(None, e.to_body()));
        }
    };
    match admission {
        Admission::Admitted(admitted) => {
            tracing::debug!(
                vm = vm.info().id,
                participant = admitted.member.id,
                client = name.as_deref().unwrap_or("-"),
                "client opened VM"
            );
            Opened::Reply(welcome(admitted, vm, state, shared).await)
        }
        Admission::Pending {
            request_id,
            decision,
        } => {
            let mut data = json!({
                "requestId": request_wire_id(request_id),
                "name": name.as_deref().map(str::trim).filter(|n| !n.is_empty()).unwrap_or("Guest"),
            });
            // A request from another host over TLS: what both people compare.
            if let Some(tls) = &state.tls {
                data["code"] = json!(tls.code);
                data["fingerprint"] = json!(tls.fingerprint);
            }
            let event = NewEvent::Json {
                name: "joinRequested".to_owned(),
                data: data.to_string(),
            };
            if let Err(e) = vm.log().append(vec![event]).await {
                shared.access.withdraw(request_id).await;
                return Opened::Reply(error_text(
                    None,
                    ErrorBody::new(ErrorCode::Internal, e.to_string()),
                ));
            }
            Opened::Pending {
                request_id,
                decision,
                vm,
            }
        }
    }
}

/// Joins the VM's participants and builds `welcome`.
async fn welcome(
    admitted: Admitted,
    vm: Vm,
    state: &mut ReadState,
    shared: &Arc<Shared>,
) -> String {
    let member = admitted.member;
    let snapshot = match vm.control().connect(member.clone()).await {
        Ok(snapshot) => snapshot,
        Err(e) => return error_text(None, e),
    };
    let participants = snapshot.participants;
    let you = participants
        .iter()
        .find(|p| p.id == member.wire_id())
        .cloned()
        .unwrap_or_else(|| Participant {
            id: member.wire_id(),
            name: member.name.clone(),
            color: member.color.clone(),
            role: member.role,
            connected: true,
            last_seen: crate::log::now_ms(),
        });
    // Listed after the head was read: a request made since is both listed
    // and delivered live (the UI keys them by id), one answered since is
    // neither.
    let join_requests = if member.role == Role::Owner {
        shared.access.list_requests().await.ok()
    } else {
        None
    };
    let welcome = ServerMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        server: shared.server.clone(),
        vm: vm.info().clone(),
        head: snapshot.head,
        first: vm.log().first(),
        output_from: vm.log().output_from(),
        limits: Limits::default(),
        isolation: shared.isolation.to_owned(),
        you,
        participants,
        control: snapshot.lock.to_wire(),
        control_requests: snapshot.requests,
        join_requests,
        token: admitted.issued,
    };
    state.vm = Some(vm);
    state.me = Some(admitted.watch);
    serde_json::to_string(&welcome).unwrap_or_default()
}

fn is_capacity_error(e: &axum::Error) -> bool {
    tungstenite_error(e)
        .is_some_and(|t| matches!(t, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

fn is_utf8_error(e: &axum::Error) -> bool {
    tungstenite_error(e)
        .is_some_and(|t| matches!(t, tokio_tungstenite::tungstenite::Error::Utf8(_)))
}

/// The WebSocket layer's own error behind axum's.
fn tungstenite_error(e: &axum::Error) -> Option<&tokio_tungstenite::tungstenite::Error> {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return Some(t);
        }
        source = s.source();
    }
    None
}

fn too_large(len: usize) -> String {
    error_text(
        None,
        ErrorBody::new(
            ErrorCode::MessageTooLarge,
            format!("message of {len} bytes is over the limit of {MAX_MESSAGE_BYTES}"),
        ),
    )
}

/// Parses a text frame. Tells apart JSON that is not JSON, an unknown `type`,
/// and a known type with bad fields; keeps the action id when there is one.
/// Public for the fuzzer (crates/fuzz), which feeds it arbitrary text.
pub fn parse(text: &str) -> Result<ClientMessage, (Option<u64>, ErrorBody)> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (None, ErrorBody::new(ErrorCode::InvalidJson, e.to_string())))?;
    let id = value.get("id").and_then(Value::as_u64);
    match value.get("type").and_then(Value::as_str) {
        Some("hello" | "subscribe" | "action") => {}
        Some(other) => {
            return Err((
                id,
                ErrorBody::new(
                    ErrorCode::UnknownType,
                    format!("unknown message type {other:?}; expected hello, subscribe or action"),
                ),
            ))
        }
        None => {
            return Err((
                id,
                ErrorBody::new(
                    ErrorCode::UnknownType,
                    "a message is an object with a string \"type\"",
                ),
            ))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| (id, ErrorBody::new(ErrorCode::InvalidArgs, e.to_string())))
}

/// Handles one message; returns the text to answer with, if any.
async fn handle(
    msg: ClientMessage,
    raw_data: Option<String>,
    state: &mut ReadState,
    shared: &Arc<Shared>,
    out_tx: &mpsc::Sender<Out>,
    permits: &Arc<Semaphore>,
    large: &Arc<Semaphore>,
) -> Option<String> {
    match msg {
        // Handled by the reading loop, which owns the socket a join request waits on.
        ClientMessage::Hello { .. } => None,
        ClientMessage::Subscribe { events, since } => {
            let Some(vm) = &state.vm else {
                return Some(not_open(None));
            };
            let filter = match events {
                None => None,
                Some(names) if names.len() > MAX_FILTER_NAMES => {
                    return Some(error_text(
                        None,
                        ErrorBody::new(
                            ErrorCode::InvalidArgs,
                            format!("events lists at most {MAX_FILTER_NAMES} names"),
                        ),
                    ))
                }
                Some(names) if names.iter().any(|n| n == "*") => None,
                Some(names) => Some(names.into_iter().collect()),
            };
            let head = vm.log().head();
            if let Some(since) = since.filter(|s| *s > head) {
                return Some(error_text(
                    None,
                    ErrorBody::new(
                        ErrorCode::SinceBeyondHead,
                        format!("since {since} is beyond the head of the log ({head}); subscribe again with since <= {head}"),
                    ),
                ));
            }
            let out = if state.subscribed {
                if since.is_some() {
                    return Some(error_text(
                        None,
                        ErrorBody::new(ErrorCode::InvalidArgs, "since is only taken by the first subscribe of a connection; reconnect to move the cursor"),
                    ));
                }
                Out::Filter(filter)
            } else {
                Out::Subscribe {
                    log: vm.log().clone(),
                    since,
                    filter,
                }
            };
            if out_tx.send(out).await.is_ok() {
                state.subscribed = true;
            }
            None
        }
        ClientMessage::Action { id, name, args } => {
            let Some(vm) = state.vm.clone() else {
                return Some(not_open(Some(id)));
            };
            // The member as of now: a role change applies to the next action.
            let Some(me) = state.me.as_ref().and_then(|w| w.borrow().clone()) else {
                return Some(error_text(
                    Some(id),
                    ErrorBody::new(ErrorCode::Unauthorized, "you were removed from this host"),
                ));
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return None;
            };
            let out_tx = out_tx.clone();
            let large = LARGE_READS.contains(&name.as_str()).then(|| large.clone());
            let test_actions = shared.test_actions;
            let conn_id = state.conn_id;
            let shared = shared.clone();
            tokio::spawn(async move {
                let ctx = ActionContext {
                    vm: &vm,
                    conn_id,
                    me,
                    access: &shared.access,
                    registry: &shared.registry,
                    lan: &shared.lan,
                    agents: &shared.agents,
                    agent_init_timeout: shared.agent_init_timeout,
                    test_actions,
                    raw_data,
                };
                // When the host stops, running actions are dropped: one
                // that waits (for a turn, an agent starting, a process) must
                // not keep its VM, and so the host, from stopping.
                let call = async {
                    // Held from before the read until the answer is written.
                    let held = match large {
                        Some(large) => Some(large.acquire_owned().await.ok()?),
                        None => None,
                    };
                    Some((actions::call(&ctx, &name, args).await, held))
                };
                let called = tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    called = call => called,
                };
                let Some((called, held)) = called else { return };
                let text = match called {
                    Ok(value) => format!(r#"{{"type":"result","id":{id},"value":{value}}}"#),
                    Err(body) => error_text(Some(id), body),
                };
                let out = match held {
                    Some(permit) => Out::Held(text, permit),
                    None => Out::Text(text),
                };
                let _ = out_tx.send(out).await;
                drop(permit);
            });
            None
        }
    }
}

/// `emit`'s `data` exactly as the client wrote it (insignificant whitespace
/// removed): parsed into a `Value`, a number would come back as the nearest
/// double (2^64 as `1.8446744073709552e19`), not as given. Public for the
/// fuzzer (crates/fuzz).
pub fn raw_emit_data(text: &str, msg: &ClientMessage) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct RawAction<'a> {
        #[serde(borrow)]
        args: Option<Vec<&'a serde_json::value::RawValue>>,
    }
    #[derive(serde::Deserialize)]
    struct RawOptions<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let ClientMessage::Action { name, .. } = msg else {
        return None;
    };
    if name != "emit" {
        return None;
    }
    let action: RawAction = serde_json::from_str(text).ok()?;
    let options = action.args?.first()?.get();
    // Only an object names `data`: a derived struct also reads an array by
    // position, where `emit` and `RawOptions` disagree on which is `data`
    // (found by the fuzzer); the parsed value is used then.
    if !options.starts_with('{') {
        return None;
    }
    let options: RawOptions = serde_json::from_str(options).ok()?;
    Some(minify(options.data?.get()))
}

/// Valid JSON text without whitespace outside strings.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

fn not_open(id: Option<u64>) -> String {
    error_text(
        id,
        ErrorBody::new(ErrorCode::NotOpen, "send hello with a key first"),
    )
}

fn error_text(id: Option<u64>, error: ErrorBody) -> String {
    serde_json::to_string(&ServerMessage::Error { id, error }).unwrap_or_default()
}

/// The writing half's position in the log.
struct Feed {
    log: Log,
    live: broadcast::Receiver<Arc<LoggedEvent>>,
    /// Last seq handled (sent, or skipped by the filter).
    cursor: u64,
    filter: Option<HashSet<String>>,
    /// The cursor is behind what the broadcast holds: read from the log.
    behind: bool,
    /// `caughtUp` is owed once the cursor reaches this seq.
    caught_up_at: Option<u64>,
}

impl Feed {
    fn wants(&self, event: &LoggedEvent) -> bool {
        self.filter.as_ref().is_none_or(|f| f.contains(&event.name))
    }
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("socket: {0}")]
    Socket(#[from] axum::Error),
    #[error("client read nothing for {0:?}")]
    Stalled(Duration),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("the VM stopped")]
    VmGone,
    #[error("closed by the host")]
    Closed,
}

struct Writer {
    sink: SplitSink<WebSocket, Message>,
}

/// Runs one unit of writing (a page, a live batch, a reply) under the stall
/// timeout: one timer per batch, not one per frame.
async fn within(
    limit: Duration,
    work: impl std::future::Future<Output = Result<(), WriteError>>,
) -> Result<(), WriteError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| WriteError::Stalled(limit))?
}

impl Writer {
    async fn feed(&mut self, msg: Message) -> Result<(), WriteError> {
        Ok(self.sink.feed(msg).await?)
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        Ok(self.sink.flush().await?)
    }

    async fn event(&mut self, event: &LoggedEvent) -> Result<(), WriteError> {
        let msg = match &event.frame {
            Frame::Text(bytes) => match Utf8Bytes::try_from(bytes.clone()) {
                Ok(text) => Message::Text(text),
                Err(e) => {
                    tracing::error!(seq = event.seq, error = %e, "logged frame is not UTF-8; skipped");
                    return Ok(());
                }
            },
            Frame::Binary(bytes) => Message::Binary(bytes.clone()),
        };
        self.feed(msg).await
    }
}

async fn write_half(
    sink: SplitSink<WebSocket, Message>,
    mut out_rx: mpsc::Receiver<Out>,
    stall_timeout: Duration,
    done: CancellationToken,
) {
    let mut w = Writer { sink };
    let mut feed: Option<Feed> = None;
    let result = async {
        loop {
            if let Some(f) = feed.as_mut().filter(|f| f.behind) {
                within(stall_timeout, catch_up_page(&mut w, f)).await?;
                while let Ok(out) = out_rx.try_recv() {
                    within(stall_timeout, handle_out(&mut w, &mut feed, out)).await?;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = done.cancelled() => return Ok(()),
                out = out_rx.recv() => match out {
                    Some(out) => within(stall_timeout, handle_out(&mut w, &mut feed, out)).await?,
                    None => return Ok(()),
                },
                first = recv_live(&mut feed) => {
                    if let Some(f) = feed.as_mut() {
                        within(stall_timeout, live_batch(&mut w, f, first)).await?;
                    }
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => {
            let _ = w.sink.close().await;
        }
        Err(WriteError::VmGone) => {
            let text = error_text(
                None,
                ErrorBody::new(ErrorCode::Unavailable, "the VM stopped"),
            );
            let _ = within(stall_timeout, async {
                w.feed(Message::Text(text.into())).await?;
                w.flush().await
            })
            .await;
        }
        Err(e) => tracing::info!(error = %e, "connection closed by the host"),
    }
    done.cancel();
}

async fn recv_live(
    feed: &mut Option<Feed>,
) -> Result<Arc<LoggedEvent>, broadcast::error::RecvError> {
    match feed {
        Some(f) => f.live.recv().await,
        None => std::future::pending().await,
    }
}

async fn handle_out(w: &mut Writer, feed: &mut Option<Feed>, out: Out) -> Result<(), WriteError> {
    match out {
        Out::Text(text) => {
            w.feed(Message::Text(text.into())).await?;
            w.flush().await
        }
        Out::Held(text, permit) => {
            w.feed(Message::Text(text.into())).await?;
            w.flush().await?;
            drop(permit);
            Ok(())
        }
        Out::Subscribe { log, since, filter } => {
            // Subscribe before reading the head, so nothing falls between.
            // The reading half checked `since` against an earlier head, and
            // the head only grows.
            let live = log.subscribe();
            let head = log.head();
            let since = since.unwrap_or(head);
            let f = feed.insert(Feed {
                log,
                live,
                cursor: since,
                filter,
                behind: since < head,
                caught_up_at: Some(head),
            });
            send_caught_up(w, f).await
        }
        Out::Close(code, reason) => {
            let frame = axum::extract::ws::CloseFrame {
                code,
                reason: reason.into(),
            };
            w.feed(Message::Close(Some(frame))).await?;
            w.flush().await?;
            Err(WriteError::Closed)
        }
        Out::Filter(filter) => {
            if let Some(f) = feed.as_mut() {
                f.filter = filter;
            }
            Ok(())
        }
    }
}

async fn send_caught_up(w: &mut Writer, f: &mut Feed) -> Result<(), WriteError> {
    if let Some(at) = f.caught_up_at {
        if f.cursor >= at {
            f.caught_up_at = None;
            let text = serde_json::to_string(&ServerMessage::CaughtUp { seq: f.cursor })
                .unwrap_or_default();
            w.feed(Message::Text(text.into())).await?;
            w.flush().await?;
        }
    }
    Ok(())
}

/// Sends one page from the log; clears `behind` once the cursor is at the head.
async fn catch_up_page(w: &mut Writer, f: &mut Feed) -> Result<(), WriteError> {
    let head = f.log.head();
    if f.cursor < head {
        let (page, _) = f
            .log
            .page_bytes(f.cursor, head, CATCH_UP_PAGE, None, CATCH_UP_BYTES)
            .await?;
        // Seqs of pruned output (before `outputFrom`) are skipped here.
        for event in &page {
            f.cursor = event.seq;
            if f.wants(event) {
                w.event(event).await?;
            }
        }
        w.flush().await?;
        if page.is_empty() {
            f.cursor = head;
        }
    }
    if f.cursor >= f.log.head() {
        f.behind = false;
    }
    send_caught_up(w, f).await
}

/// Sends a live event and whatever else the broadcast already holds.
async fn live_batch(
    w: &mut Writer,
    f: &mut Feed,
    first: Result<Arc<LoggedEvent>, broadcast::error::RecvError>,
) -> Result<(), WriteError> {
    let mut next = Some(first);
    let mut sent = 0;
    while let Some(received) = next.take() {
        match received {
            Ok(event) if event.seq <= f.cursor => {}
            Ok(event) if event.seq == f.cursor + 1 => {
                f.cursor = event.seq;
                if f.wants(&event) {
                    w.event(&event).await?;
                    sent += 1;
                }
            }
            // A gap (the receiver started after the cursor) or a lag: the
            // log has everything, read it from there.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                f.behind = true;
                break;
            }
            Err(broadcast::error::RecvError::Closed) => return Err(WriteError::VmGone),
        }
        if sent < LIVE_BATCH {
            next = match f.live.try_recv() {
                Ok(event) => Some(Ok(event)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Some(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Some(Err(broadcast::error::RecvError::Closed))
                }
                Err(broadcast::error::TryRecvError::Empty) => None,
            };
        }
    }
    w.flush().await?;
    send_caught_up(w, f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Option<String> {
        let msg = parse(text).map_err(|(_, e)| e.message).unwrap();
        raw_emit_data(text, &msg)
    }

    #[test]
    fn emit_data_is_kept_as_written() {
        let text = r#"{"type":"action","id":1,"name":"emit","args":[{"data": {"x": 0.24744098492908506, "n": 18446744073709551616}}]}"#;
        assert_eq!(
            raw(text).as_deref(),
            Some(r#"{"x":0.24744098492908506,"n":18446744073709551616}"#)
        );
    }

    /// Found by the fuzzer: options given as an array were read by position,
    /// and the raw `data` was the first element while `emit` took the
    /// second, so the event logged the event's name as its data.
    #[test]
    fn emit_options_by_position_have_no_raw_data() {
        let text = r#"{"type":"action","id":1,"name":"emit","args":[["testEvent",{"a":1}]]}"#;
        assert_eq!(raw(text), None);
    }
}
