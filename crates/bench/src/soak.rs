//! `ensemble-bench soak`: a long run of clients joining, resuming, stalling
//! and leaving while two shells print and a scripted agent session streams,
//! against the real release host (its WebSocket server, SQLite log, PTYs
//! and a real `ensemble-scripted-agent` process). Samples the host's RSS,
//! open fds and threads, checks that every client's stream is gap-free and
//! without duplicates across its resumes, and fails if a stream breaks or
//! if the host grows after warm-up beyond the tolerances below.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::client::{self, BinaryFrame, Ws};
use crate::host::{memory_of, HostProcess};

/// The VM the soak works in.
const KEY: &str = "soak";

/// The host disconnects a client that reads nothing for this long; short,
/// so that a stalling client is disconnected (and resumes) within a run.
const STALL_TIMEOUT_SECS: u64 = 3;

/// How often the host's figures are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Growth allowed from warm-up to the end. RSS: allocator and SQLite cache
/// settle within a few MiB; 25 % or 16 MiB, whichever is larger, is well
/// below a leak of one connection's buffers per cycle over a run. Fds and
/// threads: connections come and go (one fd each, at most one per client
/// at a time) and tokio's blocking pool keeps idle threads for 10 s, so the
/// tolerance is the number of clients plus a small margin.
const RSS_GROWTH: f64 = 0.25;
const RSS_GROWTH_MIN_KIB: u64 = 16 << 10;
const FD_MARGIN: u64 = 4;
const THREAD_MARGIN: u64 = 8;

/// Each shell prints a numbered line every 50 ms: steady `shellData`.
const SHELL_SCRIPT: &str =
    "i=0; while :; do i=$((i+1)); echo \"soak $i $(date +%s%N)\"; sleep 0.05; done";

/// Each turn of the scripted agent: a burst of chunks, then a pause.
const TURN_SCRIPT: &str = "stream 500\nsleep 1000";

pub struct SoakOptions {
    pub host_bin: PathBuf,
    pub secs: u64,
    pub clients: usize,
    pub seed: u64,
}

const HELP: &str = "ensemble-bench soak [--secs N] [--clients N] [--seed S] [--host PATH]
  --secs N     how long (default 3600, or SOAK_SECS)
  --clients N  clients joining, resuming, stalling and leaving (default 8)
  --seed S     the clients' choices (default 1)
  --host PATH  the ensemble binary (default: next to this one)
";

pub fn parse_args(host_bin: PathBuf, args: impl Iterator<Item = String>) -> Result<SoakOptions> {
    let secs = match std::env::var("SOAK_SECS") {
        Ok(s) if !s.is_empty() => s.parse().context("SOAK_SECS is a number of seconds")?,
        _ => 3600,
    };
    let mut opts = SoakOptions {
        host_bin,
        secs,
        clients: 8,
        seed: 1,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--secs" => opts.secs = value()?.parse().context("--secs")?,
            "--clients" => opts.clients = value()?.parse().context("--clients")?,
            "--seed" => opts.seed = value()?.parse().context("--seed")?,
            "--host" => opts.host_bin = PathBuf::from(value()?),
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{HELP}"),
        }
    }
    if opts.secs < 20 || opts.clients == 0 {
        bail!("--secs is at least 20 (warm-up and end are compared) and --clients at least 1");
    }
    Ok(opts)
}

/// One sample of the host process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn sample(pid: u32, at: Duration) -> Result<Sample> {
    let memory = memory_of(pid)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("list the host's fds")?
        .count() as u64;
    Ok(Sample {
        at,
        rss_kib: memory.rss_kib,
        fds,
        threads: memory.threads,
    })
}

/// What the clients did, summed over all of them.
#[derive(Default)]
struct Counters {
    events: AtomicU64,
    connections: AtomicU64,
    resumes: AtomicU64,
    joins: AtomicU64,
    stalls: AtomicU64,
    stall_disconnects: AtomicU64,
    drops: AtomicU64,
}

/// SplitMix64, for the clients' choices (repeatable from `--seed`).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

pub async fn run(opts: &SoakOptions) -> Result<()> {
    let host = HostProcess::start_with(
        &opts.host_bin,
        &["--stall-timeout", &STALL_TIMEOUT_SECS.to_string()],
    )?;
    let pid = host.pid();
    let secs = opts.secs;
    // Warm-up: the first fifth of the run (at most two minutes); figures are
    // the medians of the tenth after warm-up and of the last tenth.
    let warmup = Duration::from_secs((secs / 5).min(120));
    let window = Duration::from_secs((secs / 10).max(5));
    println!(
        "== soak: {secs} s, {} clients, 2 shells and a scripted session; host pid {pid} on {}",
        opts.clients,
        host.ws_url()
    );
    println!(
        "# warm-up {} s, windows of {} s; host --stall-timeout {STALL_TIMEOUT_SECS}",
        warmup.as_secs(),
        window.as_secs()
    );
    let url = host.ws_url();
    let token = host.token().to_owned();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());

    let mut driver = client::connect(&url).await?;
    client::hello(&mut driver, KEY, &token).await?;
    client::take_control(&mut driver).await?;
    for id in 1..=2 {
        client::action(
            &mut driver,
            id,
            "openShell",
            json!([{"command": "bash", "args": ["-c", SHELL_SCRIPT]}]),
        )
        .await?;
        client::result(&mut driver, id).await.context("openShell")?;
    }
    client::action(&mut driver, 3, "createSession", json!(["scripted"])).await?;
    let created = client::result(&mut driver, 3)
        .await
        .context("createSession scripted (is ensemble-scripted-agent built next to ensemble?)")?;
    let session_id = created["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow!("createSession without a sessionId: {created}"))?
        .to_owned();
    let turns = tokio::spawn(prompt_turns(driver, session_id, stop.clone()));

    let clients: Vec<_> = (0..opts.clients)
        .map(|i| {
            let rng = Rng(opts.seed.wrapping_mul(1000).wrapping_add(i as u64));
            tokio::spawn(client_loop(
                url.clone(),
                host.addr,
                token.clone(),
                rng,
                stop.clone(),
                counters.clone(),
            ))
        })
        .collect();

    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut printed = Duration::ZERO;
    let print_every = Duration::from_secs((secs / 10).clamp(10, 300));
    while Instant::now() < deadline {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let at = t0.elapsed();
        let s = sample(pid, at)?;
        if at >= printed + print_every {
            printed = at;
            println!(
                "  {:>5} s  rss {:>7.1} MiB  fds {:>3}  threads {:>3}  events {:>10}  connections {}",
                at.as_secs(),
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads,
                counters.events.load(Ordering::Relaxed),
                counters.connections.load(Ordering::Relaxed),
            );
        }
        samples.push(s);
        // A client that found a gap ends its task with the error at once.
        if clients.iter().any(|c| c.is_finished()) || turns.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("client {i}: {e:#}")),
            Err(e) => failures.push(format!("client {i}: {e}")),
        }
    }
    match turns.await {
        Ok(Ok(n)) => println!("# {n} agent turns streamed"),
        Ok(Err(e)) => failures.push(format!("agent turns: {e:#}")),
        Err(e) => failures.push(format!("agent turns: {e}")),
    }
    host.stop()?;
    let elapsed = t0.elapsed();
    println!(
        "# {:.0} s; {} events checked over {} connections: {} fresh joins, {} resumes, {} stalls ({} disconnected by the host), {} abrupt drops",
        elapsed.as_secs_f64(),
        counters.events.load(Ordering::Relaxed),
        counters.connections.load(Ordering::Relaxed),
        counters.joins.load(Ordering::Relaxed),
        counters.resumes.load(Ordering::Relaxed),
        counters.stalls.load(Ordering::Relaxed),
        counters.stall_disconnects.load(Ordering::Relaxed),
        counters.drops.load(Ordering::Relaxed),
    );
    failures.extend(growth(&samples, warmup, window, opts.clients as u64));
    if failures.is_empty() {
        println!("soak: ok (every stream gap-free, no growth beyond tolerance)");
        Ok(())
    } else {
        for f in &failures {
            println!("FAIL {f}");
        }
        bail!("soak failed: {} problem(s)", failures.len())
    }
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Compares the window after warm-up with the last window; prints both and
/// returns what grew beyond tolerance.
fn growth(samples: &[Sample], warmup: Duration, window: Duration, clients: u64) -> Vec<String> {
    let Some(end_at) = samples.last().map(|s| s.at) else {
        return vec!["no sample of the host".to_owned()];
    };
    let early: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= warmup && s.at < warmup + window)
        .collect();
    let late: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at + window > end_at && s.at >= warmup + window)
        .collect();
    if early.is_empty() || late.is_empty() {
        return vec!["the run ended before warm-up and end could be compared".to_owned()];
    }
    let med = |set: &[&Sample], f: fn(&Sample) -> u64| {
        median(&mut set.iter().map(|s| f(s)).collect::<Vec<_>>())
    };
    let (rss0, rss1) = (med(&early, |s| s.rss_kib), med(&late, |s| s.rss_kib));
    let (fd0, fd1) = (med(&early, |s| s.fds), med(&late, |s| s.fds));
    let (th0, th1) = (med(&early, |s| s.threads), med(&late, |s| s.threads));
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "# host after warm-up (median of {} samples): rss {:.1} MiB, fds {fd0}, threads {th0}",
        early.len(),
        rss0 as f64 / 1024.0
    );
    println!(
        "# host at the end    (median of {} samples): rss {:.1} MiB, fds {fd1}, threads {th1}; peak rss {:.1} MiB",
        late.len(),
        rss1 as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let rss_limit = rss0 + ((rss0 as f64 * RSS_GROWTH) as u64).max(RSS_GROWTH_MIN_KIB);
    let mut out = Vec::new();
    if rss1 > rss_limit {
        out.push(format!(
            "host RSS grew from {rss0} KiB to {rss1} KiB (limit {rss_limit} KiB)"
        ));
    }
    if fd1 > fd0 + clients + FD_MARGIN {
        out.push(format!(
            "host fds grew from {fd0} to {fd1} (limit {})",
            fd0 + clients + FD_MARGIN
        ));
    }
    if th1 > th0 + THREAD_MARGIN {
        out.push(format!(
            "host threads grew from {th0} to {th1} (limit {})",
            th0 + THREAD_MARGIN
        ));
    }
    out
}

/// Prompts the scripted session turn after turn until the run stops;
/// returns the number of turns.
async fn prompt_turns(mut driver: Ws, session_id: String, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut turns = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = 100 + turns;
        client::action(
            &mut driver,
            id,
            "sendPrompt",
            json!([session_id, TURN_SCRIPT]),
        )
        .await?;
        let answer = client::result(&mut driver, id)
            .await
            .context("sendPrompt")?;
        if answer["stopReason"] != "end_turn" {
            bail!("turn {turns} ended {}", answer["stopReason"]);
        }
        turns += 1;
    }
    let _ = driver.close(None).await;
    Ok(turns)
}

/// Where a client's stream stands between its connections.
struct Cursor {
    /// The last seq delivered, once the client has one.
    last: Option<u64>,
}

impl Cursor {
    /// Takes one delivered seq: it must follow the last one exactly.
    fn take(&mut self, seq: u64) -> Result<()> {
        if let Some(last) = self.last {
            if seq == last {
                bail!("duplicate: seq {seq} delivered twice");
            }
            if seq != last + 1 {
                bail!("gap or reorder: seq {seq} after {last}");
            }
        }
        self.last = Some(seq);
        Ok(())
    }
}

/// Client side of a WebSocket with a small receive buffer. Loopback lets a
/// receive buffer grow to 32 MiB (`tcp_rmem`), which holds minutes of the
/// stream: a client that stalls would never be seen stalling by the host.
/// 64 KiB is what a slow reader behind a real link offers.
async fn connect(url: &str, addr: SocketAddr) -> Result<Ws> {
    let socket = tokio::net::TcpSocket::new_v4().context("a TCP socket")?;
    socket
        .set_recv_buffer_size(64 << 10)
        .context("set the receive buffer")?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// How a connection ended.
enum Ended {
    /// The run is over.
    Stopped,
    /// The host closed it (a stalled client is disconnected).
    ByHost,
    /// The client chose to go: [`client_loop`] decides how.
    ByClient,
}

/// One client: connects (fresh at the head, or resuming from its last
/// seq), reads for a while, then stalls, drops or leaves, over and over.
async fn client_loop(
    url: String,
    addr: SocketAddr,
    token: String,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Result<()> {
    let mut cursor = Cursor { last: None };
    while !stop.load(Ordering::SeqCst) {
        let mut ws = connect(&url, addr).await?;
        client::hello(&mut ws, KEY, &token).await?;
        counters.connections.fetch_add(1, Ordering::Relaxed);
        match cursor.last {
            Some(last) => {
                counters.resumes.fetch_add(1, Ordering::Relaxed);
                client::subscribe(&mut ws, Some(last)).await?;
            }
            None => {
                counters.joins.fetch_add(1, Ordering::Relaxed);
                client::subscribe(&mut ws, None).await?;
            }
        }
        let read_for = rng.millis(1_000, 8_000);
        let ended = read(&mut ws, &mut cursor, read_for, &stop, &counters).await?;
        match ended {
            Ended::Stopped => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            Ended::ByHost => continue,
            Ended::ByClient => {}
        }
        match rng.below(4) {
            // Stall: read nothing for a while, then read on; if the host
            // gave up on this connection, resume on a new one. Half of the
            // stalls are long: the host's own socket buffer (up to 4 MiB,
            // `tcp_wmem`) takes about a minute of the stream before its
            // writes block and its stall timeout starts.
            0 => {
                counters.stalls.fetch_add(1, Ordering::Relaxed);
                let stall = if rng.below(2) == 0 {
                    rng.millis(500, 5_000)
                } else {
                    rng.millis(30_000, 90_000)
                };
                pause(stall, &stop).await;
                let more = rng.millis(500, 2_000);
                if let Ended::ByHost = read(&mut ws, &mut cursor, more, &stop, &counters).await? {
                    counters.stall_disconnects.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = ws.close(None).await;
            }
            // Drop: the socket goes without a close frame.
            1 => {
                counters.drops.fetch_add(1, Ordering::Relaxed);
                drop(ws);
            }
            // Leave for good: the next connection joins fresh at the head.
            2 => {
                let _ = ws.close(None).await;
                cursor.last = None;
            }
            // Leave and come back: resume from the last seq.
            _ => {
                let _ = ws.close(None).await;
            }
        }
        pause(rng.millis(100, 2_000), &stop).await;
    }
    Ok(())
}

/// Sleeps for `d`, or until the run stops: a client in a long stall must
/// not hold the end of the run for a minute.
async fn pause(d: Duration, stop: &AtomicBool) {
    let until = tokio::time::Instant::now() + d;
    while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < until {
        tokio::time::sleep_until(
            until.min(tokio::time::Instant::now() + Duration::from_millis(200)),
        )
        .await;
    }
}

/// Reads events for `within`, checking each seq against the cursor. A fresh
/// subscription (no cursor) starts after the `caughtUp` seq.
async fn read(
    ws: &mut Ws,
    cursor: &mut Cursor,
    within: Duration,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<Ended> {
    let until = tokio::time::Instant::now() + within;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Ended::Stopped);
        }
        let msg = match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return Ok(Ended::ByClient),
            Ok(None) | Ok(Some(Err(_))) => return Ok(Ended::ByHost),
            Ok(Some(Ok(msg))) => msg,
        };
        let seq = match msg {
            Message::Binary(frame) => Some(BinaryFrame::parse(frame)?.seq),
            Message::Text(text) => match client::event_seq(text.as_bytes()) {
                Some(seq) => Some(seq),
                None => {
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("host sent text that is not JSON: {text}"))?;
                    match v["type"].as_str() {
                        // At the head, the stream starts after caughtUp's seq.
                        Some("caughtUp") if cursor.last.is_none() => {
                            cursor.last = v["seq"].as_u64();
                        }
                        Some("caughtUp") => {}
                        Some("error") => bail!("host error: {v}"),
                        _ => {}
                    }
                    None
                }
            },
            Message::Close(_) => return Ok(Ended::ByHost),
            _ => None,
        };
        if let Some(seq) = seq {
            cursor.take(seq)?;
            counters.events.fetch_add(1, Ordering::Relaxed);
        }
    }
}
