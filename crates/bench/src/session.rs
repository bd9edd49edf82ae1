//! The session figures of issue 4: the scripted agent's `stream` command
//! sends 100,000 message chunks in one turn; the host logs each as a
//! `sessionEvent` and delivers it to 10 subscribed clients. Measured: events
//! logged per second, deliveries per second, every client holding every
//! chunk in order (consecutive `sequenceNumber`s, chunk numbers 1..N), and
//! the latency from the agent's write (its timestamp in the chunk) to a
//! client's receipt.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Incoming, Ws};
use crate::host::HostProcess;
use crate::shell::pct;
use crate::{int, Table};

/// The subscribers: the issue's 10.
pub const CLIENTS: usize = 10;

/// The chunks of the turn: the issue's 100,000.
pub const CHUNKS: u64 = 100_000;

/// The VM the section works in, apart from the other sections' keys.
const KEY: &str = "bench-session";

/// Longest silence tolerated from the host while chunks are still owed.
const STALL: Duration = Duration::from_secs(30);

/// Longest wait for the whole turn's `sendPrompt` result.
const TURN_LIMIT: Duration = Duration::from_secs(600);

pub struct SessionFigures {
    pub clients: usize,
    pub chunks: u64,
    /// Chunks logged per second, from the first chunk's event `ts` to the
    /// last one's (milliseconds, so a run of seconds is resolved to 0.1%).
    pub events_per_s: f64,
    /// Chunks × clients over the time from sending the prompt until the
    /// last client holds the last chunk.
    pub deliveries_per_s: f64,
    /// From sending `sendPrompt` to its result (the turn, end to end).
    pub turn_secs: f64,
    /// Agent timestamp → receipt, µs: every chunk at every client.
    pub all_us: Vec<f64>,
    /// The same at the first client only.
    pub one_us: Vec<f64>,
    pub host_cores: f64,
    pub bench_cores: f64,
}

/// What one subscriber saw.
struct Received {
    last_at: Instant,
    first_ts: u64,
    last_ts: u64,
    latencies_us: Vec<f64>,
}

/// One chunk's fields, read from its event frame.
#[derive(Debug, PartialEq, Eq)]
struct Chunk {
    seq: u64,
    ts: u64,
    sequence_number: u64,
    /// `None` for a session event that is not a `stream` chunk.
    stream: Option<(u64, u64)>,
}

pub async fn measure(host_bin: &std::path::Path) -> Result<SessionFigures> {
    let host = HostProcess::start(host_bin)?;
    println!("\n== session: {CLIENTS} clients, `stream {CHUNKS}` from the scripted agent");
    println!("# host pid {} listening on {}", host.pid(), host.ws_url());
    let url = host.ws_url();
    let token = host.token();

    // Not subscribed: it reads only its action results.
    let mut driver = client::connect(&url).await?;
    client::hello(&mut driver, KEY, token).await?;
    client::take_control(&mut driver).await?;
    client::action(&mut driver, 1, "createSession", json!(["scripted"])).await?;
    let created = client::result(&mut driver, 1)
        .await
        .context("createSession scripted (is ensemble-scripted-agent built next to ensemble?)")?;
    let session_id = created["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow!("createSession without a sessionId: {created}"))?
        .to_owned();

    let mut subscribers = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut ws = client::connect(&url).await?;
        client::hello(&mut ws, KEY, token).await?;
        client::subscribe_to(&mut ws, &["sessionEvent"]).await?;
        client::caught_up(&mut ws).await?;
        subscribers.push(ws);
    }

    let (host_cpu0, bench_cpu0) = (host.cpu_secs(), crate::bench_cpu_secs());
    let t0 = Instant::now();
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|ws| tokio::spawn(receive(ws, session_id.clone())))
        .collect();
    client::action(
        &mut driver,
        2,
        "sendPrompt",
        json!([session_id, format!("stream {CHUNKS}")]),
    )
    .await?;
    let answer = match client::recv_within(&mut driver, TURN_LIMIT).await? {
        Some(Incoming::Text(v)) if v["type"] == "result" && v["id"] == 2 => v,
        Some(Incoming::Text(v)) => bail!("expected the sendPrompt result, got {v}"),
        Some(Incoming::Binary(_)) => bail!("unexpected binary frame on the driver"),
        None => bail!("the turn did not end within {TURN_LIMIT:?}"),
    };
    let turn_secs = t0.elapsed().as_secs_f64();
    if answer["value"]["stopReason"] != "end_turn" {
        bail!("the turn ended {}", answer["value"]["stopReason"]);
    }
    let mut received = Vec::with_capacity(CLIENTS);
    for (i, reader) in readers.into_iter().enumerate() {
        received.push(
            reader
                .await
                .context("subscriber task")?
                .with_context(|| format!("subscriber {i}"))?,
        );
    }
    let (host_cpu, bench_cpu) = (
        host.cpu_secs() - host_cpu0,
        crate::bench_cpu_secs() - bench_cpu0,
    );
    let last_at = received
        .iter()
        .map(|r| r.last_at)
        .max()
        .context("no subscriber")?;
    let wall = last_at.duration_since(t0).as_secs_f64();
    let (first_ts, last_ts) = (received[0].first_ts, received[0].last_ts);
    let logged_ms = last_ts.saturating_sub(first_ts).max(1) as f64;
    let one_us = received[0].latencies_us.clone();
    let all_us: Vec<f64> = received.into_iter().flat_map(|r| r.latencies_us).collect();
    host.stop()?;
    let figures = SessionFigures {
        clients: CLIENTS,
        chunks: CHUNKS,
        events_per_s: CHUNKS as f64 * 1000.0 / logged_ms,
        deliveries_per_s: (CHUNKS * CLIENTS as u64) as f64 / wall,
        turn_secs,
        all_us,
        one_us,
        host_cores: host_cpu / wall,
        bench_cores: bench_cpu / wall,
    };
    println!(
        "  turn {turn_secs:.2} s; last client done at {wall:.2} s; {} events/s logged, {} deliveries/s; host {:.2} cores, bench {:.2} cores",
        int(figures.events_per_s),
        int(figures.deliveries_per_s),
        figures.host_cores,
        figures.bench_cores
    );
    Ok(figures)
}

/// Reads `sessionEvent`s of `session_id` until chunk [`CHUNKS`], checking
/// that seqs rise, `sequenceNumber`s are consecutive and chunks come
/// numbered 1, 2, 3, ...; times each chunk against the agent's timestamp.
async fn receive(mut ws: Ws, session_id: String) -> Result<Received> {
    let mut latencies_us = Vec::with_capacity(CHUNKS as usize);
    let (mut prev_seq, mut prev_number) = (0u64, None::<u64>);
    let mut first_ts = None;
    let mut next_chunk = 1u64;
    loop {
        let msg = tokio::time::timeout(STALL, ws.next())
            .await
            .map_err(|_| anyhow!("stalled before chunk {next_chunk}: nothing for {STALL:?}"))?
            .ok_or_else(|| anyhow!("the host closed the connection before chunk {next_chunk}"))?
            .with_context(|| format!("read before chunk {next_chunk}"))?;
        let text = match msg {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Binary(_) => bail!("unexpected binary frame"),
            Message::Close(c) => bail!("the host closed the connection: {c:?}"),
        };
        let received_us = unix_micros();
        let chunk = parse_chunk(&text).ok_or_else(|| anyhow!("not a sessionEvent: {text}"))?;
        if !text.contains(&format!(r#""sessionId":"{session_id}""#)) {
            bail!("an event of another session: {text}");
        }
        if chunk.seq <= prev_seq {
            bail!("ORDER VIOLATION: seq {} after {prev_seq}", chunk.seq);
        }
        if let Some(prev) = prev_number {
            if chunk.sequence_number != prev + 1 {
                bail!(
                    "ORDER VIOLATION: sequenceNumber {} after {prev}",
                    chunk.sequence_number
                );
            }
        }
        (prev_seq, prev_number) = (chunk.seq, Some(chunk.sequence_number));
        let Some((index, sent_us)) = chunk.stream else {
            continue;
        };
        if index != next_chunk {
            bail!("ORDER VIOLATION: chunk {index}, expected {next_chunk}");
        }
        first_ts.get_or_insert(chunk.ts);
        latencies_us.push(received_us.saturating_sub(sent_us) as f64);
        if index == CHUNKS {
            return Ok(Received {
                last_at: Instant::now(),
                first_ts: first_ts.unwrap_or(chunk.ts),
                last_ts: chunk.ts,
                latencies_us,
            });
        }
        next_chunk += 1;
    }
}

/// The fields of a `sessionEvent` frame, found by their keys rather than by
/// a full parse: a million frames parsed whole would load the bench, and so
/// the CPUs the host shares, more than the host.
fn parse_chunk(frame: &str) -> Option<Chunk> {
    let seq = client::event_seq(frame.as_bytes())?;
    if !frame.contains(r#""name":"sessionEvent""#) {
        return None;
    }
    let number_after = |key: &str| -> Option<u64> {
        let at = frame.find(key)? + key.len();
        let digits: &str = &frame[at..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    };
    let stream = match (
        number_after(r#""text":"stream "#),
        frame
            .find(r#""text":"stream "#)
            .and_then(|at| frame[at..].find(" t=").map(|t| at + t))
            .and_then(|t| {
                let rest = &frame[t + 3..];
                let end = rest.find(|c: char| !c.is_ascii_digit())?;
                rest[..end].parse().ok()
            }),
    ) {
        (Some(index), Some(sent_us)) => Some((index, sent_us)),
        _ => None,
    };
    Some(Chunk {
        seq,
        ts: number_after(r#""ts":"#)?,
        sequence_number: number_after(r#""sequenceNumber":"#)?,
        stream,
    })
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The session rows of the summary table; no target is named for them.
pub fn table_rows(t: &mut Table, f: &SessionFigures) {
    let name = format!("session {} cl, {}k chunks", f.clients, f.chunks / 1000);
    t.row(
        format!("{name}: events/s logged"),
        int(f.events_per_s),
        None,
        None,
    );
    t.row(
        format!("{name}: deliveries/s"),
        int(f.deliveries_per_s),
        None,
        None,
    );
    for (label, xs) in [("all clients", &f.all_us), ("client 1", &f.one_us)] {
        for p in [50.0, 99.0] {
            t.row(
                format!("session agent write -> receipt, {label}: p{p:.0} ms"),
                format!("{:.2}", pct(xs, p) / 1000.0),
                None,
                None,
            );
        }
    }
}

/// The line under the table.
pub fn notes(f: &SessionFigures) {
    println!(
        "# session: turn {:.2} s end to end; {} latencies (all clients) p50/p90/p99/max {:.2}/{:.2}/{:.2}/{:.2} ms; host {:.2} cores, bench {:.2} cores",
        f.turn_secs,
        int(f.all_us.len() as f64),
        pct(&f.all_us, 50.0) / 1000.0,
        pct(&f.all_us, 90.0) / 1000.0,
        pct(&f.all_us, 99.0) / 1000.0,
        pct(&f.all_us, 100.0) / 1000.0,
        f.host_cores,
        f.bench_cores
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_fields_are_read_from_the_frame() {
        let frame = r#"{"type":"event","seq":12,"ts":1700000000001,"name":"sessionEvent","data":{"sessionId":"s1-1","sequenceNumber":3,"event":{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"scripted-1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"stream 3 t=1700000000000123\n"}}}}}}"#;
        assert_eq!(
            parse_chunk(frame),
            Some(Chunk {
                seq: 12,
                ts: 1_700_000_000_001,
                sequence_number: 3,
                stream: Some((3, 1_700_000_000_000_123)),
            })
        );
        let other = r#"{"type":"event","seq":13,"ts":1,"name":"sessionEvent","data":{"sessionId":"s1-1","sequenceNumber":4,"event":{"params":{"update":{"content":{"text":"hi"}}}}}}"#;
        assert_eq!(
            parse_chunk(other),
            Some(Chunk {
                seq: 13,
                ts: 1,
                sequence_number: 4,
                stream: None
            })
        );
        assert_eq!(
            parse_chunk(r#"{"type":"event","seq":1,"ts":1,"name":"testEvent","data":{}}"#),
            None
        );
    }
}
