//! `ensemble-bench`: the performance figures of issues "Host core" and
//! "Processes and shared PTY shells", measured against the real release host
//! binary over loopback. This file owns the command line, the sections and
//! their order (fan-out to 1/10/50 clients, catch-up of a 1,000,000-event
//! log, host memory; shell throughput, keystroke echo, late join; session
//! event throughput; then the references) and the final table; `host` runs
//! the host process, `client` speaks the protocol, `shell` measures shells,
//! `session` measures an agent session's event stream, `reference` runs the
//! anchor script. docs/benchmarks.md records the figures.
#![forbid(unsafe_code)]

mod agentos;
mod client;
mod host;
mod lan;
mod process;
mod reference;
mod sandbox;
mod session;
mod shell;
mod soak;
mod stages;
mod stream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Ws;
use crate::host::{HostProcess, Memory};
use crate::reference::{TcpReference, TerminalReference};
use crate::session::SessionFigures;
use crate::shell::ShellFigures;

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

/// The sections, in the order they run; `--only` picks some.
const SECTIONS: [&str; 11] = [
    "fanout", "catchup", "tcp", "shell", "echo", "latejoin", "process", "session", "lan",
    "sandbox", "agentos",
];

/// Sections that run only when `--only` names them: agentOS installs
/// ~600 MB from the npm registry the first time.
const OPT_IN: [&str; 1] = ["agentos"];

const HELP: &str = "\
ensemble-bench: performance figures of the Ensemble host (fan-out, catch-up,
memory; shell throughput, keystroke echo, late join; session events) with
references

Starts target/release/ensemble (next to this binary) on 127.0.0.1:0 with a
temporary data directory and --test-actions, measures it, and prints a table.

Sections (all by default):
  fanout     events to 1/10/50 subscribers, host memory with 50
  catchup    a fresh subscriber reading a 1,000,000-event log
  tcp        reference: loopback TCP (anchors.py --quick --only tcp)
  shell      cat of a 256 MiB file in a shared shell to 1 and 20 clients, every
             byte checked; host memory; reference: raw PTY and tmux (anchors.py pty,tmux)
  echo       keystroke echo to 20 observers, p50/p99; reference: anchors.py lat
  latejoin   a fresh connection's snapshot after 1 GiB of shell output
  process    spawn of a cat of the 256 MiB file, its stdout to 1 and 20 clients,
             every byte checked; reference: the same cat into a pipe read by the bench
  lan        two hosts on 127.0.0.1, mDNS on lo: time to appear nearby, Join ->
             first relayed byte, removal after quit and kill -9; cat to 1 and 10
             clients and echo p50/p99, relayed against direct
  session    the scripted agent streams 100,000 message chunks to 10 subscribers:
             events/s logged, deliveries/s, order, agent write -> receipt p50/p99
  sandbox    without (--isolation none) and with the VM sandbox: cat of the
             256 MiB file to 20 clients, echo p99, `exec true` p50/p99
  agentos    (only with --only) one process printing 22.7 MB to 1, 3 and 10
             clients on Ensemble and on Rivet agentOS, one after the other: MB/s
             per client, bytes delivered, server RSS. Installs agentOS from the
             npm registry into target/agentos the first time (~600 MB, ~3 min;
             ENSEMBLE_AGENTOS_DIR moves it); needs 127.0.0.1:6420 free

Options:
  --only LIST         comma-separated sections to run (default: all but agentos)
  --host PATH         the ensemble binary to measure (default: next to this one)
  --emit-count N      events per emit call in the fan-out runs (1..10000, default 10000);
                      above 1000, a 50-client run with calls of 1000 is added
  --inflight N        emit calls kept outstanding by a producer (default 4)
  --runs N            runs of each fan-out, catch-up and echo; the table shows medians (default 3)
  --events N          events per fan-out run with 10 and 50 clients (default 200000)
  --catch-up N        events in the catch-up log (default 1000000)
  --shell-lines N     lines of the cat file (default 2657777: 256 MiB, anchors.py's size)
  --keystrokes N      timed keystrokes per echo run (default 2000)
  --late-join-bytes N random bytes base64-encoded through the late-join shell
                      (default 805306368: 1 GiB of output)
  --anchors PATH      the reference script (default ../shared/bench/anchors.py from
                      the repository's root)
  --quick-reference   run the terminal references (pty, tmux, lat) with --quick
  --no-reference      skip every reference
  -h, --help          this text

ensemble-bench soak [--secs N] ...: the soak run instead (`make soak`; soak --help)
";

struct Options {
    host_bin: PathBuf,
    emit_count: u32,
    inflight: usize,
    runs: usize,
    events: u64,
    catch_up_events: u64,
    anchors: Option<PathBuf>,
    quick_reference: bool,
    sections: Vec<String>,
    shell_lines: u64,
    keystrokes: usize,
    late_join_bytes: u64,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
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
        anchors: Some(reference::default_anchors()),
        quick_reference: false,
        sections: SECTIONS
            .iter()
            .filter(|s| !OPT_IN.contains(s))
            .map(|s| s.to_string())
            .collect(),
        shell_lines: shell::FILE_LINES,
        keystrokes: 2000,
        late_join_bytes: 805_306_368,
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
            "--quick-reference" => opts.quick_reference = true,
            "--shell-lines" => opts.shell_lines = value("--shell-lines")?.parse()?,
            "--keystrokes" => opts.keystrokes = value("--keystrokes")?.parse()?,
            "--late-join-bytes" => opts.late_join_bytes = value("--late-join-bytes")?.parse()?,
            "--only" => {
                let list = value("--only")?;
                opts.sections = Vec::new();
                for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !SECTIONS.contains(&s) {
                        bail!("unknown section {s:?}; sections: {}", SECTIONS.join(","));
                    }
                    opts.sections.push(s.to_owned());
                }
            }
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
    if opts.shell_lines == 0 || opts.keystrokes == 0 || opts.late_join_bytes == 0 {
        bail!("--shell-lines, --keystrokes and --late-join-bytes must be at least 1");
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
    // `ensemble-bench soak ...` is the soak run (`make soak`), apart from
    // the sections: it takes an hour by default and checks, not measures.
    if std::env::args().nth(1).as_deref() == Some("soak") {
        let exe = std::env::current_exe().context("find this binary")?;
        let opts = soak::parse_args(exe.with_file_name("ensemble"), std::env::args().skip(2))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?;
        return runtime.block_on(soak::run(&opts));
    }
    let opts = parse_args()?;
    println!("# ensemble-bench: {}", machine());
    // Two cores are shared with whatever else runs: say so when the figures
    // are taken on a machine that is already busy.
    println!(
        "# machine busy {:.0}% over 1 s before the start (anything running, ours or not)",
        machine_busy(Duration::from_secs(1))
    );
    println!("# host binary: {}", opts.host_bin.display());
    println!("# sections: {}", opts.sections.join(","));
    if opts.runs("fanout") || opts.runs("catchup") {
        println!(
            "# emit calls of {} events, {} outstanding; event data {EVENT_DATA}",
            opts.emit_count, opts.inflight
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let started = Instant::now();
    let host_figures = if opts.runs("fanout") || opts.runs("catchup") {
        Some(runtime.block_on(measure_host(&opts))?)
    } else {
        None
    };
    let (tput, echo, late_join) = (opts.runs("shell"), opts.runs("echo"), opts.runs("latejoin"));
    let shell_figures = if tput || echo || late_join {
        Some(runtime.block_on(shell::measure(&opts, tput, echo, late_join))?)
    } else {
        None
    };
    let process_figures = if opts.runs("process") {
        Some(runtime.block_on(process::measure(&opts))?)
    } else {
        None
    };
    let session_figures = if opts.runs("session") {
        Some(runtime.block_on(session::measure(&opts.host_bin))?)
    } else {
        None
    };
    let lan_figures = if opts.runs("lan") {
        Some(runtime.block_on(lan::measure(&opts))?)
    } else {
        None
    };
    let sandbox_figures = if opts.runs("sandbox") {
        Some(runtime.block_on(sandbox::measure(&opts))?)
    } else {
        None
    };
    let agentos_figures = if opts.runs("agentos") {
        Some(runtime.block_on(agentos::measure(&opts))?)
    } else {
        None
    };
    drop(runtime);
    // After every host has stopped, so that the two never share the CPUs.
    let tcp = if opts.runs("tcp") {
        match reference_of("loopback TCP", &opts, "tcp", true).map(|a| TcpReference::from(&a)) {
            Some(Ok(tcp)) => Some(tcp),
            Some(Err(e)) => {
                println!("  reference unusable: {e:#}");
                None
            }
            None => None,
        }
    } else {
        None
    };
    let terminal_sections: Vec<&str> = [("pty", tput), ("tmux", tput), ("lat", echo)]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(s, _)| *s)
        .collect();
    let terminal = if terminal_sections.is_empty() {
        None
    } else {
        reference_of(
            "raw PTY and tmux",
            &opts,
            &terminal_sections.join(","),
            opts.quick_reference,
        )
        .map(|a| TerminalReference::from(&a))
    };
    print_table(
        host_figures.as_ref(),
        shell_figures.as_ref(),
        session_figures.as_ref(),
        sandbox_figures.as_ref(),
        tcp.as_ref(),
        terminal.as_ref(),
    );
    if let Some(f) = &process_figures {
        process::summary(f, tcp.as_ref());
    }
    if let Some(f) = &lan_figures {
        lan::summary(f);
    }
    if let Some(f) = &agentos_figures {
        agentos::summary(f);
    }
    println!("\n# total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the anchor script's `sections`; a missing or failing script skips
/// the reference with a note instead of failing the bench.
fn reference_of(
    what: &str,
    opts: &Options,
    sections: &str,
    quick: bool,
) -> Option<reference::Anchors> {
    let script = opts.anchors.as_ref()?;
    println!(
        "\n== reference: {what} (python3 {} --only {sections}{})",
        script.display(),
        if quick { " --quick" } else { "" }
    );
    match reference::run(script, sections, quick) {
        Ok(a) => Some(a),
        Err(e) => {
            println!("  reference skipped: {e:#}");
            None
        }
    }
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

/// The host-core sections; empty or `None` for a section not run.
struct HostFigures {
    fan_outs: Vec<FanOutRuns>,
    catch_up: Option<CatchUp>,
    idle: Memory,
    with_50: Option<Memory>,
    after_catch_up: Option<Memory>,
}

/// The fan-out and catch-up sections against one host process.
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
    if !opts.runs("fanout") {
        configs.clear();
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

    let (mut catch_up_figures, mut after_catch_up) = (None, None);
    if opts.runs("catchup") {
        println!(
            "\n== catch-up: {} events, {} run(s)",
            opts.catch_up_events, opts.runs
        );
        let (figures, reader) = catch_up(&host, opts).await?;
        let mem = host.memory()?;
        println!(
            "  host RSS after the catch-up: {} (peak {})",
            kib(mem.rss_kib),
            kib(mem.hwm_kib)
        );
        close_all(vec![reader]).await;
        catch_up_figures = Some(figures);
        after_catch_up = Some(mem);
    }
    host.stop()?;
    Ok(HostFigures {
        fan_outs,
        catch_up: catch_up_figures,
        idle,
        with_50,
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
    let token = host.token();
    let mut subscribers = Vec::with_capacity(clients);
    let mut start = None;
    for _ in 0..clients {
        let mut ws = client::connect(&url).await?;
        client::hello(&mut ws, KEY, token).await?;
        client::subscribe(&mut ws, None).await?;
        let at = client::caught_up(&mut ws).await?;
        if *start.get_or_insert(at) != at {
            bail!("subscribers started at different seqs: nothing else should emit");
        }
        subscribers.push(ws);
    }
    let mut producer = client::connect(&url).await?;
    let head = client::hello(&mut producer, KEY, token).await?;
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
    let token = host.token();
    let mut producer = client::connect(&url).await?;
    // Joining is the log's first event.
    let base = client::hello(&mut producer, KEY, token).await?;
    if base > 1 {
        bail!("the catch-up key is not empty");
    }
    let t0 = Instant::now();
    // Batches of the largest emit: logging speed is not what is timed here.
    let produced = client::produce(producer, total, MAX_EMIT_COUNT, opts.inflight, EVENT_DATA)
        .await
        .context("catch-up producer")?;
    let log_events_per_s = total as f64 / produced.done_at.duration_since(t0).as_secs_f64();
    // Kept open until the end: the owner leaving and joining again would
    // add events between runs.
    let producer = produced.ws;
    let expected = base + total;
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
        let head = client::hello(&mut reader, KEY, token).await?;
        if head != expected {
            bail!("the catch-up log ends at {head}, expected {expected}");
        }
        let (host_cpu0, bench_cpu0) = (host.cpu_secs(), bench_cpu_secs());
        let t0 = Instant::now();
        client::subscribe(&mut reader, Some(0)).await?;
        let followed = client::follow(reader, 0, expected, true)
            .await
            .context("catch-up reader")?;
        let s = followed.last_at.duration_since(t0).as_secs_f64();
        let caught_up = followed
            .caught_up_at
            .map_or(s, |at| at.duration_since(t0).as_secs_f64());
        let (host_cpu, bench_cpu) = (host.cpu_secs() - host_cpu0, bench_cpu_secs() - bench_cpu0);
        if followed.events != expected {
            bail!(
                "caught up on {} events, expected {expected}",
                followed.events
            );
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
    close_all(vec![producer]).await;
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

/// The summary table: figure, value, reference, target, and the ratio that
/// says how far the value is from the target (>= 1.00 meets it).
struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    fn row(
        &mut self,
        name: String,
        value: String,
        reference: Option<String>,
        target: Option<(String, f64)>,
    ) {
        let (target, ratio) =
            target.map_or(("-".into(), "-".into()), |(t, r)| (t, format!("{r:.2}")));
        self.rows.push([
            name,
            value,
            reference.unwrap_or_else(|| "-".into()),
            target,
            ratio,
        ]);
    }

    fn print(&self) {
        let width = |i: usize, min: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .fold(min, usize::max)
        };
        let (w0, w1, w2, w3) = (width(0, 6), width(1, 5), width(2, 9), width(3, 6));
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:>6}",
            "figure", "value", "reference", "target", "ratio"
        );
        println!("{}", "-".repeat(w0 + w1 + w2 + w3 + 6 + 8));
        for [name, value, reference, target, ratio] in &self.rows {
            println!("{name:<w0$}  {value:>w1$}  {reference:>w2$}  {target:>w3$}  {ratio:>6}");
        }
    }
}

fn print_table(
    h: Option<&HostFigures>,
    sh: Option<&ShellFigures>,
    se: Option<&SessionFigures>,
    sb: Option<&sandbox::SandboxFigures>,
    tcp: Option<&TcpReference>,
    term: Option<&TerminalReference>,
) {
    let mut t = Table { rows: Vec::new() };
    if let Some(h) = h {
        host_rows(&mut t, h, tcp);
    } else if let Some(tcp) = tcp {
        tcp_rows(&mut t, tcp, None);
    }
    if let Some(sh) = sh {
        shell::table_rows(&mut t, sh, term);
    }
    if let Some(se) = se {
        session::table_rows(&mut t, se);
    }
    if let Some(sb) = sb {
        sandbox::table_rows(&mut t, sb);
    }
    // Sections with a summary of their own (process, lan, agentos) add no rows.
    if !t.rows.is_empty() {
        println!(
            "\n== summary: medians of the runs (ratio: how far from the target, >= 1.00 meets it)"
        );
        t.print();
    }
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut targets: Vec<String> = Vec::new();
    if let Some(h) = h {
        host_notes(h, tcp);
        let target_run = h.fan_outs.iter().find(|f| f.config.clients == 50);
        if let Some(f) = target_run {
            targets.push(format!(
                "50-client fan-out {}",
                met(f.median().deliveries_per_s >= TARGET_DELIVERIES_50)
            ));
        }
        if let Some(c) = &h.catch_up {
            targets.push(format!(
                "catch-up {}",
                met(c.median_secs() < TARGET_CATCH_UP_SECS)
            ));
        }
    }
    if let Some(sh) = sh {
        shell_notes(sh, term);
        for (name, ok) in shell::targets(sh, term) {
            targets.push(match ok {
                Some(ok) => format!("{name} {}", met(ok)),
                None => format!("{name} not judged (no reference)"),
            });
        }
    }
    if let Some(se) = se {
        session::notes(se);
    }
    if let Some(sb) = sb {
        for (name, ok) in sandbox::targets(sb) {
            targets.push(format!("{name} {}", met(ok)));
        }
    }
    if let Some(tcp) = tcp {
        println!("# reference machine: {}", tcp.machine);
    } else if let Some(term) = term {
        println!("# reference machine: {}", term.machine);
    }
    if !targets.is_empty() {
        println!("# targets: {}", targets.join(", "));
    }
}

fn host_rows(t: &mut Table, h: &HostFigures, tcp: Option<&TcpReference>) {
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
        t.row(format!("{name}: events/s"), int(m.events_per_s), None, None);
        let target = target_run.filter(|t| std::ptr::eq(*t, f)).map(|_| {
            (
                format!(">= {}", int(TARGET_DELIVERIES_50)),
                m.deliveries_per_s / TARGET_DELIVERIES_50,
            )
        });
        t.row(
            format!("{name}: deliveries/s"),
            int(m.deliveries_per_s),
            None,
            target,
        );
    }
    if let Some(c) = &h.catch_up {
        let catch_up_secs = c.median_secs();
        t.row(
            "logging, no subscriber: events/s".into(),
            int(c.log_events_per_s),
            None,
            None,
        );
        t.row(
            format!("catch-up of {} events: s", int(c.events as f64)),
            format!("{catch_up_secs:.3}"),
            None,
            Some((
                format!("< {TARGET_CATCH_UP_SECS:.1}"),
                TARGET_CATCH_UP_SECS / catch_up_secs,
            )),
        );
        t.row(
            "catch-up: events/s".into(),
            int(c.events as f64 / catch_up_secs),
            None,
            None,
        );
    }
    t.row("host RSS idle".into(), kib(h.idle.rss_kib), None, None);
    if let Some(m) = h.with_50 {
        t.row(
            "host RSS, 50 clients subscribed".into(),
            kib(m.rss_kib),
            None,
            None,
        );
    }
    if let Some(m) = h.after_catch_up {
        t.row(
            "host RSS after the catch-up".into(),
            kib(m.rss_kib),
            None,
            None,
        );
        t.row("host peak RSS (VmHWM)".into(), kib(m.hwm_kib), None, None);
    }
    for f in h.fan_outs.iter().filter(|f| f.config.clients == 50) {
        let m = f.median();
        let wire = wire_bytes(m.frame_bytes);
        let mb_s = m.deliveries_per_s * wire / 1e6;
        t.row(
            format!(
                "fan-out 50, emit {:>5}: MB/s on the wire ({wire:.0} B/frame)",
                f.config.emit_count
            ),
            format!("{mb_s:.1}"),
            None,
            None,
        );
        if let Some(tcp) = tcp {
            t.row(
                format!(
                    "fan-out 50, emit {:>5}: share of TCP fan-out ceiling",
                    f.config.emit_count
                ),
                format!("{:.1} %", 100.0 * mb_s / tcp.fanout20_aggregate_mb_s),
                None,
                None,
            );
        }
    }
    if let Some(tcp) = tcp {
        tcp_rows(t, tcp, target_run.map(|f| f.median().frame_bytes));
    }
}

fn tcp_rows(t: &mut Table, tcp: &TcpReference, frame_bytes: Option<f64>) {
    t.row(
        "ref: loopback TCP, 1 stream: MB/s".into(),
        format!("{:.0}", tcp.one_stream_mb_s),
        None,
        None,
    );
    t.row(
        "ref: loopback TCP fan-out 1->20: MB/s".into(),
        format!("{:.0}", tcp.fanout20_aggregate_mb_s),
        None,
        None,
    );
    if let Some(frame) = frame_bytes {
        t.row(
            "ref: same, as deliveries/s of these frames".into(),
            int(tcp.fanout20_aggregate_mb_s * 1e6 / wire_bytes(frame)),
            None,
            None,
        );
    }
}

/// The spread and CPU lines under the table, host-core sections.
fn host_notes(h: &HostFigures, tcp: Option<&TcpReference>) {
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
    if let Some(c) = &h.catch_up {
        println!(
            "# catch-up seconds over {} run(s): {}",
            c.secs.len(),
            c.secs
                .iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "# catch-up median run: caughtUp at {:.3} s; host {:.2} cores, bench {:.2} cores",
            c.caught_up_secs, c.host_cores, c.bench_cores
        );
    }
    if let Some(tcp) = tcp {
        println!(
            "# TCP fan-out 1->20 per receiver: {:.0} MB/s",
            tcp.fanout20_per_receiver_mb_s
        );
    }
}

/// The spread and CPU lines under the table, shell sections.
fn shell_notes(sh: &ShellFigures, term: Option<&TerminalReference>) {
    if let Some(tp) = &sh.tput {
        for c in &tp.configs {
            let m = c.median();
            println!(
                "# shell cat {} cl: slowest-client MB/s over {} run(s): {}; median run: host {:.2} cores, bench {:.2} cores, {} frames/client of {:.0} B",
                c.clients,
                c.runs.len(),
                c.runs
                    .iter()
                    .map(|r| format!("{:.1}", r.slowest_mb_s))
                    .collect::<Vec<_>>()
                    .join(" "),
                m.host_cores,
                m.bench_cores,
                m.frames,
                m.frame_bytes
            );
        }
        println!(
            "# shell cat: {} file bytes, {} through the PTY; MB/s = file bytes / time, as anchors.py counts",
            int(tp.file_bytes as f64),
            int(tp.stream_bytes as f64)
        );
    }
    for e in &sh.echo {
        println!(
            "# echo {}: {} keystrokes, {} timeouts; one observer p50/p90/p99/max {:.0}/{:.0}/{:.0}/{:.0} us; all 20 p50/p99 {:.0}/{:.0} us; host {:.2} cores",
            e.name,
            e.keystrokes(),
            e.timeouts,
            e.one(50.0),
            e.one(90.0),
            e.one(99.0),
            e.one(100.0),
            e.all(50.0),
            e.all(99.0),
            e.host_cores
        );
    }
    if let Some(l) = &sh.late_join {
        println!(
            "# late join: subscribe -> screen {:.2} ms right after the output, then host idle {:.1} s later, then over {} joins: {} ms",
            l.first.subscribe_ms,
            l.settled_secs,
            l.joins.len(),
            l.joins
                .iter()
                .map(|j| format!("{:.2}", j.subscribe_ms))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if let Some(term) = term {
        for line in &term.load {
            println!("# reference {line}");
        }
    }
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
