//! `ensemble-bench`: the performance figures of issue "Host core", measured
//! against the real release host binary over loopback. This file owns the
//! command line, the order of the phases (fan-out to 1/10/50 clients,
//! catch-up of a 1,000,000-event log, host memory, loopback TCP reference)
//! and the final table; `host` runs the host process, `client` speaks the
//! protocol, `reference` runs the TCP anchor. docs/benchmarks.md records the
//! figures.
#![forbid(unsafe_code)]

mod client;
mod host;
mod reference;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Ws;
use crate::host::{HostProcess, Memory};
use crate::reference::TcpReference;

/// The small JSON event every producer emits; its frame is about 90 bytes.
const EVENT_DATA: &str = r#"{"x":"0123456789"}"#;

/// Most events one `emit` call may produce (the host's `MAX_EMIT_COUNT`).
const MAX_EMIT_COUNT: u32 = 10_000;

/// Emit size of the extra 50-client run: fits the host's live broadcast.
const SMALL_EMIT_COUNT: u32 = 1_000;

/// Target of issue "Host core": deliveries per second to 50 clients.
const TARGET_DELIVERIES_50: f64 = 1_000_000.0;

/// Target of issue "Host core": seconds to catch up on 1,000,000 events.
const TARGET_CATCH_UP_SECS: f64 = 2.0;

const HELP: &str = "\
ensemble-bench: fan-out, catch-up and memory figures of the Ensemble host

Starts target/release/ensemble (next to this binary) on 127.0.0.1:0 with a
temporary data directory and --test-actions, measures it, and prints a table.

Options:
  --host PATH         the ensemble binary to measure (default: next to this one)
  --emit-count N      events per emit call in the fan-out runs (1..10000, default 10000);
                      above 1000, a 50-client run with calls of 1000 is added
  --inflight N        emit calls kept outstanding by a producer (default 4)
  --runs N            runs of each fan-out and catch-up; the table shows medians (default 3)
  --events N          events per fan-out run with 10 and 50 clients (default 200000)
  --catch-up N        events in the catch-up log (default 1000000)
  --anchors PATH      the loopback TCP anchor script (default /work/shared/bench/anchors.py)
  --no-reference      skip the loopback TCP reference
  -h, --help          this text
";

struct Options {
    host_bin: PathBuf,
    emit_count: u32,
    inflight: usize,
    runs: usize,
    events: u64,
    catch_up_events: u64,
    anchors: Option<PathBuf>,
}

fn parse_args() -> Result<Options> {
    let exe = std::env::current_exe().context("find this binary")?;
    let mut opts = Options {
        // `make bench` builds both into target/release.
        host_bin: exe.with_file_name("ensemble"),
        emit_count: MAX_EMIT_COUNT,
        inflight: 4,
        runs: 3,
        events: 200_000,
        catch_up_events: 1_000_000,
        anchors: Some(PathBuf::from(reference::DEFAULT_ANCHORS)),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--host" => opts.host_bin = PathBuf::from(value("--host")?),
            "--emit-count" => opts.emit_count = value("--emit-count")?.parse()?,
            "--inflight" => opts.inflight = value("--inflight")?.parse()?,
            "--runs" => opts.runs = value("--runs")?.parse()?,
            "--events" => opts.events = value("--events")?.parse()?,
            "--catch-up" => opts.catch_up_events = value("--catch-up")?.parse()?,
            "--anchors" => opts.anchors = Some(PathBuf::from(value("--anchors")?)),
            "--no-reference" => opts.anchors = None,
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{HELP}"),
        }
    }
    if opts.emit_count == 0 || opts.emit_count > MAX_EMIT_COUNT {
        bail!("--emit-count is 1 to {MAX_EMIT_COUNT}");
    }
    if opts.inflight == 0 || opts.runs == 0 || opts.events == 0 || opts.catch_up_events == 0 {
        bail!("--inflight, --runs, --events and --catch-up must be at least 1");
    }
    if !opts.host_bin.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p ensemble` (or run `make bench`)",
            opts.host_bin.display()
        );
    }
    Ok(opts)
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    println!("# ensemble-bench: {}", machine());
    // Two cores are shared with whatever else runs: say so when the figures
    // are taken on a machine that is already busy.
    println!(
        "# machine busy {:.0}% over 1 s before the start (anything running, ours or not)",
        machine_busy(Duration::from_secs(1))
    );
    println!("# host binary: {}", opts.host_bin.display());
    println!(
        "# emit calls of {} events, {} outstanding; event data {EVENT_DATA}",
        opts.emit_count, opts.inflight
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let started = Instant::now();
    let host_figures = runtime.block_on(measure_host(&opts))?;
    drop(runtime);
    // After the host has stopped, so that the two never share the CPUs.
    let tcp = match &opts.anchors {
        None => None,
        Some(script) => {
            println!("\n== reference: loopback TCP ({})", script.display());
            match reference::measure(script) {
                Ok(tcp) => {
                    for line in &tcp.lines {
                        println!("  {line}");
                    }
                    Some(tcp)
                }
                Err(e) => {
                    println!("  reference skipped: {e:#}");
                    None
                }
            }
        }
    };
    print_table(&host_figures, tcp.as_ref());
    println!("\n# total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `nproc`, CPU model, kernel and load: what the figures depend on.
fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "nproc={nproc} cpu=\"{model}\" kernel={} loadavg {}",
        kernel.trim(),
        load.join(" ")
    )
}

/// Whole-machine CPU busy percentage over `over`, from /proc/stat.
fn machine_busy(over: Duration) -> f64 {
    fn snap() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // idle + iowait count as not busy.
        Some((v.iter().sum(), v.get(3)? + v.get(4)?))
    }
    let first = snap();
    std::thread::sleep(over);
    let (Some((t1, i1)), Some((t2, i2))) = (first, snap()) else {
        return f64::NAN;
    };
    let total = (t2 - t1).max(1) as f64;
    100.0 * (total - (i2 - i1) as f64) / total
}

/// One fan-out configuration.
#[derive(Clone, Copy)]
struct FanOutConfig {
    clients: usize,
    events: u64,
    emit_count: u32,
}

struct FanOut {
    /// Events logged per second (all emit results back).
    events_per_s: f64,
    /// Events × clients received per second (last client has the last event).
    deliveries_per_s: f64,
    /// Mean event frame, bytes of payload.
    frame_bytes: f64,
    /// CPU cores the host and the bench used over the run.
    host_cores: f64,
    bench_cores: f64,
}

/// Repeated runs of one configuration; the table shows the median run.
struct FanOutRuns {
    config: FanOutConfig,
    runs: Vec<FanOut>,
}

impl FanOutRuns {
    /// The run with the median deliveries/s.
    fn median(&self) -> &FanOut {
        let mut order: Vec<&FanOut> = self.runs.iter().collect();
        order.sort_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
        order[order.len() / 2]
    }

    fn range(&self) -> (f64, f64) {
        let d = self.runs.iter().map(|r| r.deliveries_per_s);
        (
            d.clone().fold(f64::INFINITY, f64::min),
            d.fold(0.0, f64::max),
        )
    }
}

struct CatchUp {
    events: u64,
    /// Logging rate with no subscriber, events/s.
    log_events_per_s: f64,
    /// From sending `subscribe` to holding the last event, one per run.
    secs: Vec<f64>,
    /// From sending `subscribe` to `caughtUp`, of the median run.
    caught_up_secs: f64,
    host_cores: f64,
    bench_cores: f64,
}

impl CatchUp {
    fn median_secs(&self) -> f64 {
        let mut s = self.secs.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    }
}

struct HostFigures {
    fan_outs: Vec<FanOutRuns>,
    catch_up: CatchUp,
    idle: Memory,
    with_50: Memory,
    after_catch_up: Memory,
}

/// Every phase against one host process.
async fn measure_host(opts: &Options) -> Result<HostFigures> {
    let host = HostProcess::start(&opts.host_bin)?;
    println!("# host pid {} listening on {}", host.pid(), host.ws_url());
    // Let the runtime's threads settle before calling it idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = host.memory()?;
    println!("host RSS idle: {}", kib(idle.rss_kib));

    let cfg = |clients, events: u64, emit_count| FanOutConfig {
        clients,
        events: events.max(1),
        emit_count,
    };
    // One client needs fewer events for a stable figure; keeps the run short.
    let mut configs = vec![
        cfg(1, opts.events / 2, opts.emit_count),
        cfg(10, opts.events, opts.emit_count),
        cfg(50, opts.events, opts.emit_count),
    ];
    // An emit bigger than the host's live broadcast (4096 events) makes every
    // subscriber fall behind and read the batch back from SQLite; the same
    // 50-client run with calls that fit shows what the live path alone does.
    if opts.emit_count > SMALL_EMIT_COUNT {
        configs.push(cfg(50, opts.events, SMALL_EMIT_COUNT));
    }
    let mut fan_outs = Vec::new();
    let mut with_50 = None;
    for (i, config) in configs.into_iter().enumerate() {
        println!(
            "\n== fan-out: {} client(s), {} events, emit calls of {}, {} run(s)",
            config.clients, config.events, config.emit_count, opts.runs
        );
        let mut runs = Vec::new();
        for run in 0..opts.runs {
            let (figure, subscribers) = fan_out(&host, opts, config).await?;
            println!(
                "  produced {:>9} events/s, delivered {:>10} deliveries/s ({:.0} B frames); host {:.2} cores, bench {:.2} cores",
                int(figure.events_per_s),
                int(figure.deliveries_per_s),
                figure.frame_bytes,
                figure.host_cores,
                figure.bench_cores
            );
            // The first 50-client configuration, with every client still
            // connected and subscribed after its last run.
            if i == 2 && run + 1 == opts.runs {
                let mem = host.memory()?;
                println!(
                    "  host RSS with 50 subscribed clients: {}",
                    kib(mem.rss_kib)
                );
                with_50 = Some(mem);
            }
            close_all(subscribers).await;
            runs.push(figure);
        }
        fan_outs.push(FanOutRuns { config, runs });
    }

    println!(
        "\n== catch-up: {} events, {} run(s)",
        opts.catch_up_events, opts.runs
    );
    let (catch_up, reader) = catch_up(&host, opts).await?;
    let after_catch_up = host.memory()?;
    println!(
        "  host RSS after the catch-up: {} (peak {})",
        kib(after_catch_up.rss_kib),
        kib(after_catch_up.hwm_kib)
    );
    close_all(vec![reader]).await;
    host.stop()?;
    Ok(HostFigures {
        fan_outs,
        catch_up,
        idle,
        with_50: with_50.context("no 50-client run")?,
        after_catch_up,
    })
}

/// Connects `clients` subscribers at the head of key `bench`, produces
/// `events` from a separate connection and waits until every subscriber holds
/// every event in order. Returns the subscribers still connected.
async fn fan_out(
    host: &HostProcess,
    opts: &Options,
    config: FanOutConfig,
) -> Result<(FanOut, Vec<Ws>)> {
    const KEY: &str = "bench";
    let FanOutConfig {
        clients,
        events,
        emit_count,
    } = config;
    let url = host.ws_url();
    let mut subscribers = Vec::with_capacity(clients);
    let mut start = None;
    for _ in 0..clients {
        let mut ws = client::connect(&url).await?;
        client::hello(&mut ws, KEY).await?;
        client::subscribe(&mut ws, None).await?;
        let at = client::caught_up(&mut ws).await?;
        if *start.get_or_insert(at) != at {
            bail!("subscribers started at different seqs: nothing else should emit");
        }
        subscribers.push(ws);
    }
    let mut producer = client::connect(&url).await?;
    let head = client::hello(&mut producer, KEY).await?;
    if start.is_some_and(|s| s != head) {
        bail!("the head moved from {start:?} to {head} before the run");
    }
    let target = head + events;
    let followers: Vec<_> = subscribers
        .into_iter()
        .map(|ws| tokio::spawn(client::follow(ws, head, target, false)))
        .collect();

    let (host_cpu0, bench_cpu0) = (host.cpu_secs(), bench_cpu_secs());
    let t0 = Instant::now();
    let produced = client::produce(producer, events, emit_count, opts.inflight, EVENT_DATA)
        .await
        .context("producer")?;
    if produced.first != head + 1 || produced.last != target {
        bail!(
            "emitted {}..={}, expected {}..={target}",
            produced.first,
            produced.last,
            head + 1
        );
    }
    let mut last_at = produced.done_at;
    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut open = Vec::with_capacity(clients);
    for follower in followers {
        let followed = follower.await.context("follower task")??;
        last_at = last_at.max(followed.last_at);
        received += followed.events;
        bytes += followed.bytes;
        open.push(followed.ws);
    }
    let wall = last_at.duration_since(t0).as_secs_f64();
    let (host_cpu, bench_cpu) = (host.cpu_secs() - host_cpu0, bench_cpu_secs() - bench_cpu0);
    if received != events * clients as u64 {
        bail!(
            "received {received} deliveries, expected {}",
            events * clients as u64
        );
    }
    close_all(vec![produced.ws]).await;
    Ok((
        FanOut {
            events_per_s: events as f64 / produced.done_at.duration_since(t0).as_secs_f64(),
            deliveries_per_s: received as f64 / wall,
            frame_bytes: bytes as f64 / received.max(1) as f64,
            host_cores: host_cpu / wall,
            bench_cores: bench_cpu / wall,
        },
        open,
    ))
}

/// Logs `--catch-up` events on a key of their own, then times fresh
/// connections that subscribe with `since: 0` until each holds the last one.
/// Returns the last reader still connected.
async fn catch_up(host: &HostProcess, opts: &Options) -> Result<(CatchUp, Ws)> {
    const KEY: &str = "bench-catchup";
    let total = opts.catch_up_events;
    let url = host.ws_url();
    let mut producer = client::connect(&url).await?;
    if client::hello(&mut producer, KEY).await? != 0 {
        bail!("the catch-up key is not empty");
    }
    let t0 = Instant::now();
    // Batches of the largest emit: logging speed is not what is timed here.
    let produced = client::produce(producer, total, MAX_EMIT_COUNT, opts.inflight, EVENT_DATA)
        .await
        .context("catch-up producer")?;
    let log_events_per_s = total as f64 / produced.done_at.duration_since(t0).as_secs_f64();
    close_all(vec![produced.ws]).await;
    println!(
        "  logged {} events/s with no subscriber",
        int(log_events_per_s)
    );

    let mut secs = Vec::new();
    let mut runs = Vec::new();
    let mut last_reader = None;
    for _ in 0..opts.runs {
        if let Some(ws) = last_reader.take() {
            close_all(vec![ws]).await;
        }
        let mut reader = client::connect(&url).await?;
        let head = client::hello(&mut reader, KEY).await?;
        if head != total {
            bail!("the catch-up log ends at {head}, expected {total}");
        }
        let (host_cpu0, bench_cpu0) = (host.cpu_secs(), bench_cpu_secs());
        let t0 = Instant::now();
        client::subscribe(&mut reader, Some(0)).await?;
        let followed = client::follow(reader, 0, total, true)
            .await
            .context("catch-up reader")?;
        let s = followed.last_at.duration_since(t0).as_secs_f64();
        let caught_up = followed
            .caught_up_at
            .map_or(s, |at| at.duration_since(t0).as_secs_f64());
        let (host_cpu, bench_cpu) = (host.cpu_secs() - host_cpu0, bench_cpu_secs() - bench_cpu0);
        if followed.events != total {
            bail!("caught up on {} events, expected {total}", followed.events);
        }
        println!(
            "  caught up in {s:.3} s (caughtUp at {caught_up:.3} s), {} events/s; host {:.2} cores, bench {:.2} cores",
            int(total as f64 / s),
            host_cpu / caught_up,
            bench_cpu / caught_up
        );
        secs.push(s);
        runs.push((s, caught_up, host_cpu / caught_up, bench_cpu / caught_up));
        last_reader = Some(followed.ws);
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (_, caught_up_secs, host_cores, bench_cores) = runs[runs.len() / 2];
    Ok((
        CatchUp {
            events: total,
            log_events_per_s,
            secs,
            caught_up_secs,
            host_cores,
            bench_cores,
        },
        last_reader.context("no catch-up run")?,
    ))
}

async fn close_all(sockets: Vec<Ws>) {
    for mut ws in sockets {
        // A polite close; a host that is slow to answer is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    }
}

fn bench_cpu_secs() -> f64 {
    host::cpu_secs("/proc/self/stat")
}

/// WebSocket bytes on the wire for a server frame of `payload` bytes: the
/// header is 2 bytes up to 125, 4 up to 65535 (server frames are unmasked).
fn wire_bytes(payload: f64) -> f64 {
    if payload <= 125.0 {
        payload + 2.0
    } else {
        payload + 4.0
    }
}

fn print_table(h: &HostFigures, tcp: Option<&TcpReference>) {
    // (figure, value, target, how far from the target: >= 1.00 meets it)
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut row = |name: String, value: String, target: Option<(String, f64)>| {
        let (target, ratio) =
            target.map_or(("-".into(), "-".into()), |(t, r)| (t, format!("{r:.2}")));
        rows.push([name, value, target, ratio]);
    };
    // The configuration the target is judged on: 50 clients, emit calls as
    // given on the command line (the first 50-client configuration).
    let target_run = h.fan_outs.iter().find(|f| f.config.clients == 50);
    for f in &h.fan_outs {
        let c = f.config;
        let m = f.median();
        let name = format!(
            "fan-out {:>2} cl, {}k ev, emit {:>5}",
            c.clients,
            c.events / 1000,
            c.emit_count
        );
        row(format!("{name}: events/s"), int(m.events_per_s), None);
        let target = target_run.filter(|t| std::ptr::eq(*t, f)).map(|_| {
            (
                format!(">= {}", int(TARGET_DELIVERIES_50)),
                m.deliveries_per_s / TARGET_DELIVERIES_50,
            )
        });
        row(
            format!("{name}: deliveries/s"),
            int(m.deliveries_per_s),
            target,
        );
    }
    let c = &h.catch_up;
    let catch_up_secs = c.median_secs();
    row(
        "logging, no subscriber: events/s".into(),
        int(c.log_events_per_s),
        None,
    );
    row(
        format!("catch-up of {} events: s", int(c.events as f64)),
        format!("{catch_up_secs:.3}"),
        Some((
            format!("< {TARGET_CATCH_UP_SECS:.1}"),
            TARGET_CATCH_UP_SECS / catch_up_secs,
        )),
    );
    row(
        "catch-up: events/s".into(),
        int(c.events as f64 / catch_up_secs),
        None,
    );
    row("host RSS idle".into(), kib(h.idle.rss_kib), None);
    row(
        "host RSS, 50 clients subscribed".into(),
        kib(h.with_50.rss_kib),
        None,
    );
    row(
        "host RSS after the catch-up".into(),
        kib(h.after_catch_up.rss_kib),
        None,
    );
    row(
        "host peak RSS (VmHWM)".into(),
        kib(h.after_catch_up.hwm_kib),
        None,
    );
    for f in h.fan_outs.iter().filter(|f| f.config.clients == 50) {
        let m = f.median();
        let wire = wire_bytes(m.frame_bytes);
        let mb_s = m.deliveries_per_s * wire / 1e6;
        row(
            format!(
                "fan-out 50, emit {:>5}: MB/s on the wire ({wire:.0} B/frame)",
                f.config.emit_count
            ),
            format!("{mb_s:.1}"),
            None,
        );
        if let Some(tcp) = tcp {
            row(
                format!(
                    "fan-out 50, emit {:>5}: share of TCP fan-out ceiling",
                    f.config.emit_count
                ),
                format!("{:.1} %", 100.0 * mb_s / tcp.fanout20_aggregate_mb_s),
                None,
            );
        }
    }
    if let (Some(tcp), Some(f50)) = (tcp, target_run) {
        row(
            "ref: loopback TCP, 1 stream: MB/s".into(),
            format!("{:.0}", tcp.one_stream_mb_s),
            None,
        );
        row(
            "ref: loopback TCP fan-out 1->20: MB/s".into(),
            format!("{:.0}", tcp.fanout20_aggregate_mb_s),
            None,
        );
        row(
            "ref: same, as deliveries/s of these frames".into(),
            int(tcp.fanout20_aggregate_mb_s * 1e6 / wire_bytes(f50.median().frame_bytes)),
            None,
        );
    }
    println!(
        "\n== summary: medians of the runs (ratio: how far from the target, >= 1.00 meets it)"
    );
    let w = rows.iter().map(|r| r[0].len()).max().unwrap_or(10);
    println!(
        "{:<w$}  {:>14}  {:>14}  {:>6}",
        "figure", "value", "target", "ratio"
    );
    println!("{}", "-".repeat(w + 2 + 14 + 2 + 14 + 2 + 6));
    for [name, value, target, ratio] in rows {
        println!("{name:<w$}  {value:>14}  {target:>14}  {ratio:>6}");
    }
    for f in &h.fan_outs {
        let (lo, hi) = f.range();
        let m = f.median();
        println!(
            "# fan-out {} cl, emit {}: deliveries/s over {} run(s) {} .. {}; median run: host {:.2} cores, bench {:.2} cores",
            f.config.clients,
            f.config.emit_count,
            f.runs.len(),
            int(lo),
            int(hi),
            m.host_cores,
            m.bench_cores
        );
    }
    let secs = &h.catch_up.secs;
    println!(
        "# catch-up seconds over {} run(s): {}",
        secs.len(),
        secs.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "# catch-up median run: caughtUp at {:.3} s; host {:.2} cores, bench {:.2} cores",
        h.catch_up.caught_up_secs, h.catch_up.host_cores, h.catch_up.bench_cores
    );
    if let Some(tcp) = tcp {
        println!("# reference machine: {}", tcp.machine);
        println!(
            "# TCP fan-out 1->20 per receiver: {:.0} MB/s",
            tcp.fanout20_per_receiver_mb_s
        );
    }
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "# targets: 50-client fan-out {}, catch-up {}",
        met(target_run.is_some_and(|f| f.median().deliveries_per_s >= TARGET_DELIVERIES_50)),
        met(catch_up_secs < TARGET_CATCH_UP_SECS)
    );
}

/// An integer with thousands separators: 1,234,567.
fn int(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn kib(v: u64) -> String {
    format!("{:.1} MiB", v as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::int;

    #[test]
    fn thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(1000.0), "1,000");
        assert_eq!(int(1234567.4), "1,234,567");
    }
}
