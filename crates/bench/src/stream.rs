//! A throughput run: N clients following one output stream (a shell's
//! `shellData` or a process's stdout) that the first of them starts, each
//! to the stream's exit event, comparing every payload with the bytes the
//! stream must carry: one byte wrong, missing, extra or out of order fails
//! the run. The host's CPU, memory and log stages are taken around it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::client::{self, Incoming, Ws, SHELL_DATA};
use crate::host::{RssSampler, RssStats, Target};
use crate::stages::{LogStats, Stages};

/// The `processOutput` kind of a stdout frame (protocol.md, "Binary frames").
const PROCESS_STDOUT: u8 = 2;

/// Which stream: its binary kind, its events and the field that names it.
#[derive(Clone, Copy)]
pub struct Stream {
    kind: u8,
    /// The event of its output (what the clients subscribe to, with `exit`).
    data: &'static str,
    exit: &'static str,
    /// In the exit event's data and in the result of the action that
    /// started it (`openShell`, `spawn`).
    id_field: &'static str,
}

pub const SHELL: Stream = Stream {
    kind: SHELL_DATA,
    data: "shellData",
    exit: "shellExit",
    id_field: "shellId",
};

pub const PROCESS: Stream = Stream {
    kind: PROCESS_STDOUT,
    data: "processOutput",
    exit: "processExit",
    id_field: "pid",
};

/// What a run measured.
pub struct Followed {
    /// Seconds from the start action to the last byte at the slowest and
    /// at the fastest client.
    pub slowest_secs: f64,
    pub fastest_secs: f64,
    /// Frames per client.
    pub frames: u64,
    /// Cores the host and this bench used over the slowest client's time.
    pub host_cores: f64,
    pub bench_cores: f64,
    pub rss: RssStats,
    /// The log's stages in the run, when the host reports them.
    pub stages: Option<Stages>,
}

/// `clients` connections to VM `key` subscribe to `stream`; the first one
/// takes control, has `files` hard-linked into the VM's workspace (what a
/// sandboxed command can read) and sends action `start` (`openShell`,
/// `spawn`) with `args`; every client must receive exactly `expected`.
pub async fn run(
    host: &impl Target,
    key: &str,
    stream: Stream,
    expected: &Arc<Vec<u8>>,
    clients: usize,
    files: &[(&Path, &str)],
    start: (&str, Value),
) -> Result<Followed> {
    let url = host.ws_url();
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut ws = client::connect(&url).await?;
        let welcome = client::hello_welcome(&mut ws, key, host.token()).await?;
        if i == 0 {
            client::take_control(&mut ws).await?;
            let id = welcome["vm"]["id"]
                .as_u64()
                .context("welcome without vm.id")?;
            let workspace = host.data_dir().join(format!("vms/{id}/workspace"));
            for (from, name) in files {
                let to = workspace.join(name);
                if !to.exists() {
                    std::fs::hard_link(from, &to)
                        .or_else(|_| std::fs::copy(from, &to).map(|_| ()))
                        .with_context(|| format!("put {name} in {}", workspace.display()))?;
                }
            }
        }
        client::subscribe_to(&mut ws, &[stream.data, stream.exit]).await?;
        client::caught_up(&mut ws).await?;
        conns.push(ws);
    }
    let mut conns = conns.into_iter();
    let mut owner = conns.next().context("no client")?;
    let mut tasks: Vec<_> = conns
        .map(|ws| tokio::spawn(receive(ws, stream, expected.clone(), None)))
        .collect();
    let log0 = LogStats::read(host, key).await;
    let sampler = RssSampler::start(host.pid());
    let (host_cpu0, bench_cpu0) = (host.cpu_secs(), crate::bench_cpu_secs());
    let t0 = Instant::now();
    let (action, args) = start;
    client::action(&mut owner, 1, action, args).await?;
    tasks.insert(
        0,
        tokio::spawn(receive(owner, stream, expected.clone(), Some(1))),
    );
    let mut received = Vec::with_capacity(clients);
    for task in tasks {
        received.push(task.await.context("client task")??);
    }
    let (host_cpu, bench_cpu) = (
        host.cpu_secs() - host_cpu0,
        crate::bench_cpu_secs() - bench_cpu0,
    );
    let rss = sampler.finish()?;
    let log = match (log0, LogStats::read(host, key).await) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    let started = received[0]
        .started
        .with_context(|| format!("no {action} result"))?;
    if let Some(r) = received.iter().find(|r| r.id != started) {
        bail!(
            "a client followed {} {} but {action} started {started}",
            stream.id_field,
            r.id
        );
    }
    let secs_of = |r: &Received| r.last_byte_at.duration_since(t0).as_secs_f64();
    let slowest_secs = received.iter().map(secs_of).fold(0.0, f64::max);
    let fastest_secs = received.iter().map(secs_of).fold(f64::INFINITY, f64::min);
    let frames = received.iter().map(|r| r.frames).sum::<u64>() / clients as u64;
    crate::close_all(received.into_iter().map(|r| r.ws).collect()).await;
    Ok(Followed {
        slowest_secs,
        fastest_secs,
        frames,
        host_cores: host_cpu / slowest_secs,
        bench_cores: bench_cpu / slowest_secs,
        rss,
        stages: log.map(|log| Stages {
            log,
            secs: slowest_secs,
        }),
    })
}

/// What one client saw.
struct Received {
    ws: Ws,
    /// The id in the frames it followed.
    id: u32,
    /// The id in the start action's result, for the client that sent it.
    started: Option<u32>,
    last_byte_at: Instant,
    frames: u64,
}

/// Reads `stream`'s frames until its exit event (exit code 0), checking
/// each against `expected`. `result_id` is the start action this client
/// sent, if it did.
async fn receive(
    mut ws: Ws,
    stream: Stream,
    expected: Arc<Vec<u8>>,
    result_id: Option<u64>,
) -> Result<Received> {
    let mut pos = 0usize;
    let mut prev_seq = 0u64;
    let mut id = None;
    let mut started = None;
    let mut last_byte_at = None;
    let mut frames = 0u64;
    let mut exited = false;
    while !exited || (result_id.is_some() && started.is_none()) {
        let msg = client::recv(&mut ws)
            .await
            .with_context(|| format!("at byte {pos} of {}", expected.len()))?;
        match msg {
            Incoming::Binary(f) => {
                if f.kind != stream.kind {
                    bail!(
                        "binary frame of kind {} (only {} subscribed)",
                        f.kind,
                        stream.kind
                    );
                }
                if f.seq <= prev_seq {
                    bail!("ORDER VIOLATION: seq {} after {prev_seq}", f.seq);
                }
                prev_seq = f.seq;
                if *id.get_or_insert(f.id) != f.id {
                    bail!(
                        "output of {} {} while following {id:?}",
                        stream.id_field,
                        f.id
                    );
                }
                let payload = f.payload();
                let end = pos + payload.len();
                let Some(want) = expected.get(pos..end) else {
                    bail!(
                        "{end} bytes of output, more than the {} expected",
                        expected.len()
                    );
                };
                if want != payload {
                    let at = want
                        .iter()
                        .zip(payload)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    bail!(
                        "BYTES DIFFER at byte {} of the output (seq {}): got {:?}, expected {:?}",
                        pos + at,
                        f.seq,
                        String::from_utf8_lossy(&payload[at..(at + 16).min(payload.len())]),
                        String::from_utf8_lossy(&want[at..(at + 16).min(want.len())])
                    );
                }
                pos = end;
                frames += 1;
                if pos == expected.len() {
                    last_byte_at = Some(Instant::now());
                }
            }
            Incoming::Text(v) => match (v["type"].as_str(), v["name"].as_str()) {
                (Some("event"), Some(name)) if name == stream.exit => {
                    if v["seq"].as_u64().is_none_or(|s| s <= prev_seq) {
                        bail!("{name} out of order: {v}");
                    }
                    let of = v["data"][stream.id_field].as_u64();
                    if id.is_some_and(|id| of != Some(id.into())) {
                        continue; // another one of the VM
                    }
                    if pos != expected.len() {
                        bail!(
                            "{name} after {pos} bytes of {}: output missing",
                            expected.len()
                        );
                    }
                    if v["data"]["exitCode"].as_i64() != Some(0) {
                        bail!("the command did not exit with 0: {v}");
                    }
                    exited = true;
                }
                (Some("result"), _) if v["id"].as_u64() == result_id => {
                    let value = v["value"][stream.id_field]
                        .as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .ok_or_else(|| anyhow!("a result without {}: {v}", stream.id_field))?;
                    started = Some(value);
                }
                _ => bail!("unexpected message at byte {pos}: {v}"),
            },
        }
    }
    Ok(Received {
        ws,
        id: id.context("no output at all")?,
        started,
        last_byte_at: last_byte_at.context("no output at all")?,
        frames,
    })
}
