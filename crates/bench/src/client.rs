//! Lean raw WebSocket clients of the bench: `hello`, `subscribe`, an
//! order-checking event follower, a pipelined `emit` producer, and the
//! pieces the shell benches build on (actions, binary `shellData` frames).
//! They speak protocol 1 directly over tokio-tungstenite instead of using
//! the Rust client crate, so that what the bench measures is the host, not a
//! client library's queues.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest silence tolerated while events are still owed: a host that stops
/// delivering fails the run instead of hanging it.
const STALL: Duration = Duration::from_secs(30);

/// The text every event frame starts with; the seq follows.
const EVENT_PREFIX: &[u8] = br#"{"type":"event","seq":"#;

pub async fn connect(url: &str) -> Result<Ws> {
    // TCP_NODELAY on the client side too: small frames must not wait for
    // Nagle's algorithm.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(ws)
}

/// Sends `hello` for `key` as the owner (`token`) and returns the log's
/// head from `welcome`.
pub async fn hello(ws: &mut Ws, key: &str, token: &str) -> Result<u64> {
    let welcome = hello_welcome(ws, key, token).await?;
    welcome["head"]
        .as_u64()
        .ok_or_else(|| anyhow!("welcome without a head: {welcome}"))
}

/// `hello`, answering the whole `welcome`.
pub async fn hello_welcome(ws: &mut Ws, key: &str, token: &str) -> Result<serde_json::Value> {
    let hello = serde_json::json!({"type": "hello", "protocol": 1, "key": [key], "token": token});
    send(ws, hello.to_string()).await?;
    let welcome = next_control(ws).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok(welcome)
}

/// `subscribe` at the head with an event filter: the shell benches take only
/// the events they check, not the rest of the VM's log.
pub async fn subscribe_to(ws: &mut Ws, events: &[&str]) -> Result<()> {
    let msg = serde_json::json!({"type": "subscribe", "events": events});
    send(ws, msg.to_string()).await
}

pub async fn subscribe(ws: &mut Ws, since: Option<u64>) -> Result<()> {
    let msg = match since {
        Some(since) => serde_json::json!({"type": "subscribe", "since": since}),
        None => serde_json::json!({"type": "subscribe"}),
    };
    send(ws, msg.to_string()).await
}

/// Waits for `caughtUp` after a subscribe at the head (no events may come
/// first: nothing is older than the head) and returns its seq.
pub async fn caught_up(ws: &mut Ws) -> Result<u64> {
    let msg = next_control(ws).await?;
    if msg["type"] != "caughtUp" {
        bail!("expected caughtUp, got {msg}");
    }
    msg["seq"]
        .as_u64()
        .ok_or_else(|| anyhow!("caughtUp without a seq: {msg}"))
}

async fn send(ws: &mut Ws, text: String) -> Result<()> {
    ws.send(Message::Text(text.into()))
        .await
        .context("send to the host")
}

/// Sends `action` `name` with positional `args` (a JSON array) and flushes.
pub async fn action(ws: &mut Ws, id: u64, name: &str, args: Value) -> Result<()> {
    let msg = serde_json::json!({"type": "action", "id": id, "name": name, "args": args});
    send(ws, msg.to_string()).await
}

/// Queues an action without flushing, so that several messages leave in
/// one write (see [`flush`]).
pub async fn feed_action(ws: &mut Ws, id: u64, name: &str, args: Value) -> Result<()> {
    let msg = serde_json::json!({"type": "action", "id": id, "name": name, "args": args});
    ws.feed(Message::Text(msg.to_string().into()))
        .await
        .context("send to the host")
}

/// Queues a `subscribe` at the head without flushing.
pub async fn feed_subscribe(ws: &mut Ws) -> Result<()> {
    ws.feed(Message::Text(r#"{"type":"subscribe"}"#.into()))
        .await
        .context("send to the host")
}

pub async fn flush(ws: &mut Ws) -> Result<()> {
    ws.flush().await.context("send to the host")
}

/// Waits for the `result` of action `id` on a connection that receives
/// nothing else (not subscribed) and returns its value.
pub async fn result(ws: &mut Ws, id: u64) -> Result<Value> {
    let v = next_control(ws).await?;
    if v["type"] != "result" || v["id"].as_u64() != Some(id) {
        bail!("expected the result of action {id}, got {v}");
    }
    Ok(v["value"].clone())
}

/// Takes the VM's control lock, which input actions (shell keys, resizes,
/// opening shells) need. Call it before subscribing: the answer is read as
/// the next message.
pub async fn take_control(ws: &mut Ws) -> Result<()> {
    const ID: u64 = 0;
    action(ws, ID, "takeControl", serde_json::json!([])).await?;
    result(ws, ID).await.map(|_| ())
}

/// The `shellData` kind of a binary frame (protocol.md, "Binary frames").
pub const SHELL_DATA: u8 = 1;

/// Length of the binary frame header (the protocol's `BINARY_HEADER_LEN`).
const BINARY_HEADER_LEN: usize = 21;

/// One binary frame: the header fields the benches check, and the bytes.
pub struct BinaryFrame {
    pub kind: u8,
    pub seq: u64,
    pub id: u32,
    /// The whole frame; the payload starts at [`BinaryFrame::payload`].
    frame: Bytes,
}

impl BinaryFrame {
    pub fn parse(frame: Bytes) -> Result<BinaryFrame> {
        if frame.len() < BINARY_HEADER_LEN {
            bail!(
                "binary frame of {} bytes, shorter than its {BINARY_HEADER_LEN}-byte header",
                frame.len()
            );
        }
        let be64 = |at: usize| {
            frame[at..at + 8]
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b))
        };
        let id = frame[17..21]
            .iter()
            .fold(0u32, |n, b| (n << 8) | u32::from(*b));
        Ok(BinaryFrame {
            kind: frame[0],
            seq: be64(1),
            id,
            frame,
        })
    }

    pub fn payload(&self) -> &[u8] {
        &self.frame[BINARY_HEADER_LEN..]
    }
}

/// A message from the host to a connection that follows a shell.
pub enum Incoming {
    Binary(BinaryFrame),
    /// Any text message, parsed: event, `result`, `caughtUp`, ...; `error`
    /// is turned into a failure instead.
    Text(Value),
}

/// The next message, binary or text; fails on an `error`, a close, or
/// [`STALL`] without anything.
pub async fn recv(ws: &mut Ws) -> Result<Incoming> {
    match recv_within(ws, STALL).await? {
        Some(msg) => Ok(msg),
        None => bail!("nothing from the host within {STALL:?}"),
    }
}

/// Like [`recv`], but `None` after `within` without a message.
pub async fn recv_within(ws: &mut Ws, within: Duration) -> Result<Option<Incoming>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await else {
            return Ok(None);
        };
        let msg = msg
            .ok_or_else(|| anyhow!("the host closed the connection"))?
            .context("read from the host")?;
        match msg {
            Message::Binary(frame) => {
                return Ok(Some(Incoming::Binary(BinaryFrame::parse(frame)?)))
            }
            Message::Text(text) => {
                let v: Value = serde_json::from_str(&text)
                    .with_context(|| format!("host sent text that is not JSON: {text}"))?;
                if v["type"] == "error" {
                    bail!("host error: {v}");
                }
                return Ok(Some(Incoming::Text(v)));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Close(c) => bail!("the host closed the connection: {c:?}"),
        }
    }
}

/// The next text message, as JSON; an event or an error here is a failure.
async fn next_control(ws: &mut Ws) -> Result<Value> {
    loop {
        let msg = tokio::time::timeout(STALL, ws.next())
            .await
            .map_err(|_| anyhow!("no answer from the host within {STALL:?}"))?
            .ok_or_else(|| anyhow!("the host closed the connection"))?
            .context("read from the host")?;
        match msg {
            Message::Text(text) => {
                if event_seq(text.as_bytes()).is_some() {
                    bail!("unexpected event before the stream started: {text}");
                }
                let v: Value = serde_json::from_str(&text)
                    .with_context(|| format!("host sent text that is not JSON: {text}"))?;
                if v["type"] == "error" {
                    bail!("host error: {v}");
                }
                return Ok(v);
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Binary(_) => bail!("unexpected binary frame"),
            Message::Close(c) => bail!("the host closed the connection: {c:?}"),
        }
    }
}

/// The seq of an event frame, read from its fixed prefix without parsing
/// the JSON: at a million deliveries a second a full parse per frame would
/// make the bench, not the host, the bottleneck. `None` if not an event.
pub fn event_seq(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(EVENT_PREFIX)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || rest.get(digits) != Some(&b',') {
        return None;
    }
    Some(
        rest[..digits]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// What one follower saw.
pub struct Followed {
    /// Still open, so that the host keeps the connection (memory figures).
    pub ws: Ws,
    pub events: u64,
    /// Bytes of event frames (payload, without the WebSocket header).
    pub bytes: u64,
    /// When the event with the target seq arrived.
    pub last_at: Instant,
    /// When `caughtUp` arrived, if it was awaited.
    pub caught_up_at: Option<Instant>,
}

/// Reads events until seq `target`, checking that each one is exactly the
/// one after `prev`; a gap, a repeat or a reorder fails the run. With
/// `want_caught_up`, also waits for the `caughtUp` that ends a catch-up.
pub async fn follow(
    mut ws: Ws,
    mut prev: u64,
    target: u64,
    want_caught_up: bool,
) -> Result<Followed> {
    let mut events = 0u64;
    let mut bytes = 0u64;
    let mut last_at = None;
    let mut caught_up_at = None;
    while prev < target || (want_caught_up && caught_up_at.is_none()) {
        let msg = tokio::time::timeout(STALL, ws.next())
            .await
            .map_err(|_| anyhow!("stalled at seq {prev} of {target}: nothing for {STALL:?}"))?
            .ok_or_else(|| anyhow!("the host closed the connection at seq {prev} of {target}"))?
            .with_context(|| format!("read at seq {prev} of {target}"))?;
        let text = match msg {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Binary(_) => bail!("unexpected binary frame at seq {prev}"),
            Message::Close(c) => bail!("the host closed the connection at seq {prev}: {c:?}"),
        };
        if let Some(seq) = event_seq(text.as_bytes()) {
            if seq != prev + 1 {
                bail!(
                    "ORDER VIOLATION: expected seq {}, got {seq} (gap of {})",
                    prev + 1,
                    seq as i128 - prev as i128 - 1
                );
            }
            if seq > target {
                bail!("event {seq} beyond the last one produced ({target})");
            }
            prev = seq;
            events += 1;
            bytes += text.len() as u64;
            if seq == target {
                last_at = Some(Instant::now());
            }
            continue;
        }
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("host sent text that is not JSON: {text}"))?;
        match v["type"].as_str() {
            Some("caughtUp") => {
                if want_caught_up {
                    if v["seq"].as_u64() != Some(target) {
                        bail!("caughtUp at {} but the log ends at {target}", v["seq"]);
                    }
                    if prev != target {
                        bail!("caughtUp arrived at seq {prev}, before {target}");
                    }
                    caught_up_at = Some(Instant::now());
                }
            }
            _ => bail!("unexpected message at seq {prev}: {v}"),
        }
    }
    Ok(Followed {
        ws,
        events,
        bytes,
        last_at: last_at.unwrap_or_else(Instant::now),
        caught_up_at,
    })
}

/// What a producer logged.
pub struct Produced {
    pub ws: Ws,
    pub first: u64,
    pub last: u64,
    /// When the last `emit` result arrived (the events are durable).
    pub done_at: Instant,
}

/// Emits `total` test events with `data` through `emit` calls of `count`
/// events, keeping `inflight` calls outstanding so that the host never waits
/// for the bench. Checks that the results cover one gap-free seq range.
pub async fn produce(
    mut ws: Ws,
    total: u64,
    count: u32,
    inflight: usize,
    data: &str,
) -> Result<Produced> {
    let mut next_id = 0u64;
    let mut sent = 0u64;
    let mut outstanding = 0usize;
    let mut logged = 0u64;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    while logged < total {
        if outstanding < inflight && sent < total {
            while outstanding < inflight && sent < total {
                let n = u64::from(count).min(total - sent);
                next_id += 1;
                let action = format!(
                    r#"{{"type":"action","id":{next_id},"name":"emit","args":[{{"count":{n},"data":{data}}}]}}"#
                );
                ws.feed(Message::Text(action.into()))
                    .await
                    .context("send emit")?;
                sent += n;
                outstanding += 1;
            }
            // One flush for the whole window: one write, not one per call.
            ws.flush().await.context("send emit")?;
        }
        let v = next_control(&mut ws).await?;
        if v["type"] != "result" {
            bail!("expected an emit result, got {v}");
        }
        let (Some(first), Some(last)) = (v["value"]["first"].as_u64(), v["value"]["last"].as_u64())
        else {
            bail!("emit result without first/last: {v}");
        };
        ranges.push((first, last));
        logged += last + 1 - first;
        outstanding -= 1;
    }
    let done_at = Instant::now();
    // Calls may be answered out of order; together they must tile one range.
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if pair[1].0 != pair[0].1 + 1 {
            bail!(
                "emit results are not contiguous: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    let first = ranges.first().map_or(0, |r| r.0);
    let last = ranges.last().map_or(0, |r| r.1);
    if last + 1 - first != total {
        bail!("emitted {} events, wanted {total}", last + 1 - first);
    }
    Ok(Produced {
        ws,
        first,
        last,
        done_at,
    })
}

#[cfg(test)]
mod tests {
    use super::event_seq;

    #[test]
    fn seq_is_read_from_the_prefix() {
        assert_eq!(
            event_seq(br#"{"type":"event","seq":42,"ts":1,"name":"testEvent","data":{}}"#),
            Some(42)
        );
        assert_eq!(event_seq(br#"{"type":"caughtUp","seq":4}"#), None);
        assert_eq!(event_seq(br#"{"type":"event","seq":,"ts":1}"#), None);
        assert_eq!(event_seq(br#"{"type":"event","seq":12"#), None);
    }
}
