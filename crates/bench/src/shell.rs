//! The shell figures of issue "Processes and shared PTY shells", measured
//! against the real host over loopback:
//! * throughput: `cat` of a 256 MiB file in a shared shell to 1 and 20
//!   clients, every client comparing every byte it receives with the bytes
//!   the PTY must produce, and the host's memory during the 20-client run;
//! * keystroke echo: one byte written with `writeShell`, timed until
//!   `shellData` frames carrying its echo reach 20 observers;
//! * late join: after 1 GiB of output, a fresh connection's `subscribe` and
//!   `getShellSnapshot`, its screen checked against the end of the output.
//!
//! The raw PTY and tmux figures they are compared with come from
//! `reference` (anchors.py, same run, after the host has stopped).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::client::{self, Incoming, Ws, SHELL_DATA};
use crate::host::{HostProcess, Memory, RssSampler, RssStats, Target};
use crate::reference::TerminalReference;
use crate::stages::Stages;
use crate::stream;
use crate::{int, kib, Table};

/// The file anchors.py `cat`s: lines of 100 base64 characters and `\n`,
/// 2,657,777 of them (268,435,477 bytes). The bench writes its own file of
/// the same shape, so that the host and the references move the same bytes.
pub const FILE_LINES: u64 = 2_657_777;
const LINE_CHARS: usize = 100;
/// The cat file's name in the VM's workspace.
const CAT_NAME: &str = "bench-cat.txt";

/// The clients of the throughput runs: the 1 and 20.
const TPUT_CLIENTS: [usize; 2] = [1, 20];

/// anchors.py sizes every PTY and tmux client 120x40; the throughput shell
/// has the same size, so that tmux redraws the same screen. 100-column lines
/// do not wrap at either size.
const TPUT_COLS: u16 = 120;
const TPUT_ROWS: u16 = 40;

/// The size of the interactive shells (echo, late join).
const COLS: u16 = 200;
const ROWS: u16 = 50;

/// Observers of the echo runs.
pub(crate) const ECHO_OBSERVERS: usize = 20;

/// Observer counts of the extra raw-cat echo runs (20 is the main run).
const ECHO_SWEEP: [usize; 2] = [1, 50];

/// Untimed keystrokes before the timed ones (anchors.py skips 50 too).
const ECHO_WARMUP: usize = 50;

/// A keystroke whose echo has not reached every observer by then is
/// counted as a timeout and left out of the percentiles.
const ECHO_TIMEOUT: Duration = Duration::from_secs(2);

/// Fresh connections timed in the late-join section once the host is idle
/// (one more joins as soon as the output stops).
const LATE_JOINS: usize = 5;

/// Scrollback of the parser a late joiner draws the snapshot into: the
/// snapshot carries at most 1000 lines (protocol.md, `getShellSnapshot`).
const JOIN_SCROLLBACK: usize = 1000;

/// The end of the late-join output kept to check the joiner's screen: 50
/// rows and 1000 lines of scrollback of 200 columns are about 210 KiB.
const TAIL: usize = 1 << 20;

/// After the end marker, output must stop for this long (the prompt is
/// drawn) before a joiner comes.
const QUIET: Duration = Duration::from_millis(500);

/// Longest wait for the host to go idle between runs.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Targets of issue "Processes and shared PTY shells".
const TARGET_ECHO_P99_US: f64 = 2000.0;
const TARGET_LATE_JOIN_MS: f64 = 50.0;

/// The bench's copy of the cat file and the exact bytes a client must
/// receive: the PTY's ONLCR turns every `\n` into `\r\n`.
pub struct CatFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pub file_bytes: u64,
    expected: Arc<Vec<u8>>,
}

impl CatFile {
    /// `lines` random base64 lines (a seeded xorshift, not /dev/urandom:
    /// generating 256 MiB should not take longer than the run).
    pub fn create(lines: u64) -> Result<CatFile> {
        let dir = tempfile::Builder::new()
            .prefix("ensemble-bench-shell-")
            .tempdir()
            .context("create a directory for the cat file")?;
        let path = dir.path().join("cat.txt");
        let file =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let lines_usize = usize::try_from(lines).context("--shell-lines")?;
        let mut expected = Vec::with_capacity(lines_usize * (LINE_CHARS + 2));
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut raw = [0u8; LINE_CHARS / 4 * 3];
        let mut line = [0u8; LINE_CHARS + 1];
        line[LINE_CHARS] = b'\n';
        for _ in 0..lines {
            for chunk in raw.chunks_mut(8) {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(raw, &mut line[..LINE_CHARS])
                .context("encode a line")?;
            if n != LINE_CHARS {
                bail!("a line encoded to {n} characters");
            }
            out.write_all(&line).context("write the cat file")?;
            expected.extend_from_slice(&line[..LINE_CHARS]);
            expected.extend_from_slice(b"\r\n");
        }
        out.flush().context("write the cat file")?;
        drop(out);
        // Read it once so that the runs read from the page cache, as the
        // references do.
        std::fs::read(&path).context("read the cat file back")?;
        Ok(CatFile {
            _dir: dir,
            path,
            file_bytes: lines * (LINE_CHARS as u64 + 1),
            expected: Arc::new(expected),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn stream_bytes(&self) -> u64 {
        self.expected.len() as u64
    }
}

/// One throughput run.
pub struct TputRun {
    /// From sending `openShell` to the last byte at the slowest client.
    pub secs: f64,
    /// File bytes per second (as anchors.py counts), slowest and fastest client.
    pub slowest_mb_s: f64,
    pub fastest_mb_s: f64,
    /// `shellData` frames per client, and their mean payload.
    pub frames: u64,
    pub frame_bytes: f64,
    pub host_cores: f64,
    pub bench_cores: f64,
    pub rss: RssStats,
    /// How long the host stayed busy after the last byte reached the
    /// slowest client (its terminal model finishing the output).
    pub busy_after_secs: f64,
    /// The log's stages in the run, when the host reports them.
    pub stages: Option<Stages>,
}

/// The runs of one client count; the table shows the median run.
pub struct Tput {
    pub clients: usize,
    pub runs: Vec<TputRun>,
}

impl Tput {
    pub fn median(&self) -> &TputRun {
        let mut order: Vec<&TputRun> = self.runs.iter().collect();
        order.sort_by(|a, b| a.slowest_mb_s.total_cmp(&b.slowest_mb_s));
        order[order.len() / 2]
    }
}

pub struct TputFigures {
    pub file_bytes: u64,
    pub stream_bytes: u64,
    pub idle: Memory,
    pub configs: Vec<Tput>,
    /// VmHWM of the host after the runs.
    pub hwm_kib: u64,
}

/// Keystroke echo of one kind of shell, one or more runs.
pub struct Echo {
    pub name: &'static str,
    /// Per run: microseconds from sending `writeShell` until observer 0 (a
    /// fixed one, like anchors.py's "other client") has the echo, and until
    /// all observers have it.
    pub one_us: Vec<Vec<f64>>,
    pub all_us: Vec<Vec<f64>>,
    pub timeouts: usize,
    /// The host's CPU use, the mean of the runs.
    pub host_cores: f64,
}

impl Echo {
    /// Percentile `q` of observer 0's times: of each run, then the median
    /// over the runs, which is anchors.py's statistic for its references.
    pub fn one(&self, q: f64) -> f64 {
        crate::process::median(&self.one_us.iter().map(|r| pct(r, q)).collect::<Vec<_>>())
    }

    /// [`Echo::one`] of the times until all observers have the echo.
    pub fn all(&self, q: f64) -> f64 {
        crate::process::median(&self.all_us.iter().map(|r| pct(r, q)).collect::<Vec<_>>())
    }

    /// Timed keystrokes that came back to every observer, over all runs.
    pub fn keystrokes(&self) -> usize {
        self.one_us.iter().map(Vec::len).sum()
    }

    /// The longest echo to all observers, over all runs.
    pub fn max_all(&self) -> f64 {
        self.all_us.iter().flatten().copied().fold(0.0, f64::max)
    }

    /// Runs of one kind, taken one after another, as one figure.
    fn merge(runs: Vec<Echo>) -> Option<Echo> {
        let n = runs.len() as f64;
        let mut runs = runs.into_iter();
        let mut all = runs.next()?;
        let mut cores = all.host_cores;
        for run in runs {
            all.one_us.extend(run.one_us);
            all.all_us.extend(run.all_us);
            all.timeouts += run.timeouts;
            cores += run.host_cores;
        }
        all.host_cores = cores / n;
        Some(all)
    }
}

pub struct Join {
    /// From sending `subscribe` (with `getShellSnapshot` right behind it)
    /// to the snapshot drawn into a vt100 parser.
    pub subscribe_ms: f64,
    /// From sending `subscribe` until the snapshot (and `caughtUp`) had
    /// arrived: the host's part, before the bench decodes and draws it.
    pub answered_ms: f64,
    /// The same from opening the TCP connection (WebSocket upgrade and
    /// `hello` included).
    pub connect_ms: f64,
    /// The terminal bytes of the snapshot, and the `data` field (base64).
    pub snapshot_bytes: usize,
    pub base64_bytes: usize,
}

pub struct LateJoin {
    /// `shellData` bytes the shell produced (the 1 GiB and the prompt).
    pub output_bytes: u64,
    /// The join right after the output stopped, and how long the host was
    /// busy after it.
    pub first: Join,
    pub settled_secs: f64,
    pub fill_secs: f64,
    pub fill_rss: RssStats,
    /// The data directory after the output: what the host kept of it.
    pub data_bytes: u64,
    /// The joins on an idle host.
    pub joins: Vec<Join>,
    /// Scrollback lines in the snapshot.
    pub scrollback_lines: usize,
}

impl LateJoin {
    /// The median join, by time from `subscribe`.
    pub fn median(&self) -> &Join {
        let mut order: Vec<&Join> = self.joins.iter().collect();
        order.sort_by(|a, b| a.subscribe_ms.total_cmp(&b.subscribe_ms));
        order[order.len() / 2]
    }

    pub fn max_ms(&self) -> f64 {
        self.joins
            .iter()
            .map(|j| j.subscribe_ms)
            .fold(0.0, f64::max)
    }
}

#[derive(Default)]
pub struct ShellFigures {
    pub tput: Option<TputFigures>,
    pub echo: Vec<Echo>,
    /// Raw cat echo with other observer counts: (observers, figures).
    pub echo_sweep: Vec<(usize, Echo)>,
    pub late_join: Option<LateJoin>,
}

/// The shell sections, each against a host of its own so that one's memory
/// and log do not weigh on the next.
pub async fn measure(
    opts: &crate::Options,
    tput: bool,
    echo: bool,
    late_join: bool,
) -> Result<ShellFigures> {
    let mut figures = ShellFigures::default();
    if tput {
        println!(
            "\n== shell throughput: cat of {} lines of {LINE_CHARS} base64 characters to {:?} client(s), {} run(s)",
            int(opts.shell_lines as f64),
            TPUT_CLIENTS,
            opts.runs
        );
        let file = CatFile::create(opts.shell_lines)?;
        println!(
            "  file {} ({} bytes; {} bytes through the PTY with \\r\\n)",
            file.path.display(),
            int(file.file_bytes as f64),
            int(file.stream_bytes() as f64)
        );
        let host = HostProcess::start(&opts.host_bin)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle = host.memory()?;
        println!("  host pid {}, RSS idle {}", host.pid(), kib(idle.rss_kib));
        let mut configs = Vec::new();
        for clients in TPUT_CLIENTS {
            let mut runs = Vec::new();
            for _ in 0..opts.runs {
                let mut run = tput_run(&host, &file, clients).await?;
                run.busy_after_secs = host.settle(SETTLE_LIMIT).await.as_secs_f64();
                println!(
                    "  {clients:>2} client(s): slowest {:.1} MB/s, fastest {:.1} MB/s ({:.2} s); {} frames of {:.0} B per client; host {:.2} cores, bench {:.2}; host RSS peak {} mean {} ({} threads); host busy {:.1} s after",
                    run.slowest_mb_s,
                    run.fastest_mb_s,
                    run.secs,
                    run.frames,
                    run.frame_bytes,
                    run.host_cores,
                    run.bench_cores,
                    kib(run.rss.peak_kib),
                    kib(run.rss.mean_kib),
                    run.rss.peak_threads,
                    run.busy_after_secs
                );
                if let Some(stages) = &run.stages {
                    println!("      {stages}");
                }
                runs.push(run);
            }
            configs.push(Tput { clients, runs });
        }
        let hwm_kib = host.memory()?.hwm_kib;
        host.stop()?;
        figures.tput = Some(TputFigures {
            file_bytes: file.file_bytes,
            stream_bytes: file.stream_bytes(),
            idle,
            configs,
            hwm_kib,
        });
    }
    if echo {
        println!(
            "\n== keystroke echo: {} keystrokes one at a time, {ECHO_OBSERVERS} observers",
            opts.keystrokes
        );
        // `--runs` runs of each, each on a fresh host: the table takes the
        // median of the runs' percentiles, as anchors.py does for tmux.
        let runs = opts.runs.max(1);
        for kind in [EchoKind::RawCat, EchoKind::Bash] {
            let mut each = Vec::new();
            for _ in 0..runs {
                let host = HostProcess::start(&opts.host_bin)?;
                println!("  {}: host pid {}", kind.name(), host.pid());
                let e = echo_run(&host, kind, opts.keystrokes, ECHO_OBSERVERS).await?;
                host.stop()?;
                println!(
                    "  {}: one observer p50 {:.0} us p99 {:.0} us; all {ECHO_OBSERVERS} p50 {:.0} us p99 {:.0} us; {} timeouts; host {:.2} cores",
                    e.name,
                    e.one(50.0),
                    e.one(99.0),
                    e.all(50.0),
                    e.all(99.0),
                    e.timeouts,
                    e.host_cores
                );
                each.push(e);
            }
            figures.echo.extend(Echo::merge(each));
        }
        // The raw cat pane with fewer and more observers: what each added
        // observer costs (the 1, 20 and 50).
        for observers in ECHO_SWEEP {
            let mut each = Vec::new();
            for _ in 0..runs {
                let host = HostProcess::start(&opts.host_bin)?;
                each.push(echo_run(&host, EchoKind::RawCat, opts.keystrokes, observers).await?);
                host.stop()?;
            }
            let Some(e) = Echo::merge(each) else { continue };
            println!(
                "  raw cat, {observers:>2} observer(s): all p50 {:.0} us p99 {:.0} us max {:.0} us; {} timeouts ({runs} runs, medians)",
                e.all(50.0),
                e.all(99.0),
                e.max_all(),
                e.timeouts
            );
            figures.echo_sweep.push((observers, e));
        }
    }
    if late_join {
        println!(
            "\n== late join: {} random bytes as base64 through a bash shell, then {LATE_JOINS} fresh connections",
            int(opts.late_join_bytes as f64)
        );
        let host = HostProcess::start(&opts.host_bin)?;
        println!("  host pid {}", host.pid());
        let l = late_join_run(&host, opts.late_join_bytes).await?;
        host.stop()?;
        figures.late_join = Some(l);
    }
    Ok(figures)
}

/// Subscribes `clients` connections to `shellData` and `shellExit`; the
/// first one opens a shell that `cat`s the file; each checks every byte.
/// With one client it is the only connection, as with tmux's one attached
/// client.
pub async fn tput_run(host: &impl Target, file: &CatFile, clients: usize) -> Result<TputRun> {
    let f = stream::run(
        host,
        host.key("bench-shell"),
        stream::SHELL,
        &file.expected,
        clients,
        &[(&file.path, CAT_NAME)],
        (
            "openShell",
            json!([{"command": "/bin/sh", "args": ["-c", format!("cat {CAT_NAME}")],
                    "cols": TPUT_COLS, "rows": TPUT_ROWS}]),
        ),
    )
    .await?;
    let mb = file.file_bytes as f64 / 1e6;
    Ok(TputRun {
        secs: f.slowest_secs,
        slowest_mb_s: mb / f.slowest_secs,
        fastest_mb_s: mb / f.fastest_secs,
        frames: f.frames,
        frame_bytes: file.stream_bytes() as f64 / f.frames.max(1) as f64,
        host_cores: f.host_cores,
        bench_cores: f.bench_cores,
        rss: f.rss,
        busy_after_secs: 0.0,
        stages: f.stages,
    })
}

#[derive(Clone, Copy)]
pub enum EchoKind {
    /// `stty raw -echo; exec cat`: the program echoes, no line discipline
    /// echo and no shell in the way; the same pane as anchors.py's tmux echo
    /// and its raw PTY echo.
    RawCat,
    /// bash --norc --noprofile: readline echoes the key, as a user typing at
    /// a prompt sees it.
    Bash,
}

impl EchoKind {
    fn name(self) -> &'static str {
        match self {
            EchoKind::RawCat => "raw cat",
            EchoKind::Bash => "bash",
        }
    }

    fn open_args(self) -> Value {
        let (command, args) = match self {
            EchoKind::RawCat => ("/bin/sh", vec!["-c", "stty raw -echo; exec cat"]),
            EchoKind::Bash => ("/bin/bash", vec!["--norc", "--noprofile"]),
        };
        json!([{"command": command, "args": args, "cols": COLS, "rows": ROWS}])
    }
}

/// A keystroke in flight: (token << 8) | key byte. Observers report the
/// first frame of their shell holding the key while the token is current.
type Probe = Arc<AtomicU32>;

/// One observer: reports (observer, token, when) for every probe it sees.
async fn observe(
    mut ws: Ws,
    idx: usize,
    shell_id: u32,
    probe: Probe,
    tx: mpsc::UnboundedSender<(usize, u32, Instant)>,
) -> Result<()> {
    let mut reported = 0u32;
    loop {
        let msg = client::recv(&mut ws).await?;
        let at = Instant::now();
        let Incoming::Binary(f) = msg else { continue };
        if f.kind != SHELL_DATA || f.id != shell_id {
            continue;
        }
        let p = probe.load(Ordering::Acquire);
        let (token, key) = (p >> 8, (p & 0xff) as u8);
        if token != 0 && token != reported && f.payload().contains(&key) {
            reported = token;
            if tx.send((idx, token, at)).is_err() {
                return Ok(());
            }
        }
    }
}

/// A driver connection opens the shell and types; `observers` (the
/// issue's 20 unless a sweep says otherwise) follow it.
///
/// The driver and every observer run on one thread of their own, like
/// anchors.py's tmux harness (one poll loop over all its clients): on two
/// cores, the bench's own wake-ups across a multi-threaded runtime would
/// otherwise be part of the figure, and of the host's competition.
pub async fn echo_run(
    host: &(impl Target + Sync),
    kind: EchoKind,
    keystrokes: usize,
    observers: usize,
) -> Result<Echo> {
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("start the echo harness's runtime")?
                        .block_on(echo_on_this_thread(host, kind, keystrokes, observers))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the echo harness's thread panicked"))?
        })
    })
}

async fn echo_on_this_thread(
    host: &impl Target,
    kind: EchoKind,
    keystrokes: usize,
    observers: usize,
) -> Result<Echo> {
    let observer_count = observers;
    const KEY: &str = "bench-echo";
    let key = host.key(KEY);
    let url = host.ws_url();
    let token = host.token();
    let mut driver = client::connect(&url).await?;
    client::hello(&mut driver, key, token).await?;
    client::take_control(&mut driver).await?;
    let mut observers = Vec::with_capacity(observer_count);
    for _ in 0..observer_count {
        let mut ws = client::connect(&url).await?;
        client::hello(&mut ws, key, token).await?;
        client::subscribe_to(&mut ws, &["shellData"]).await?;
        client::caught_up(&mut ws).await?;
        observers.push(ws);
    }
    client::action(&mut driver, 1, "openShell", kind.open_args()).await?;
    let shell_id = client::result(&mut driver, 1).await?["shellId"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .context("openShell result without a shellId")?;
    let probe: Probe = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = observers
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(observe(ws, i, shell_id, probe.clone(), tx.clone())))
        .collect();
    drop(tx);
    // Let the program start (stty has run, bash has drawn its prompt).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut next_id = 1u64;
    let mut token = 0u32;
    // Types `key`; returns when each observer saw `echo` (None: timed out).
    let mut type_key = async |key: u8, echo: u8| -> Result<(Instant, Vec<Option<Instant>>)> {
        token += 1;
        next_id += 1;
        probe.store((token << 8) | u32::from(echo), Ordering::Release);
        let data = String::from(char::from(key));
        let t0 = Instant::now();
        client::action(&mut driver, next_id, "writeShell", json!([shell_id, data])).await?;
        let mut seen = vec![None; observer_count];
        let mut left = observer_count;
        let deadline = tokio::time::Instant::now() + ECHO_TIMEOUT;
        while left > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((idx, t, at))) if t == token => {
                    if let Some(slot @ None) = seen.get_mut(idx) {
                        *slot = Some(at);
                        left -= 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("every observer has stopped"),
                Err(_) => break,
            }
        }
        // The driver is not subscribed: its only messages are results.
        client::result(&mut driver, next_id).await?;
        Ok((t0, seen))
    };

    let (host_cpu0, t_start) = (host.cpu_secs(), Instant::now());
    let keys = b"xyzw";
    let mut one_us = Vec::with_capacity(keystrokes);
    let mut all_us = Vec::with_capacity(keystrokes);
    let mut timeouts = 0usize;
    for i in 0..ECHO_WARMUP + keystrokes {
        let key = keys[i % keys.len()];
        let (t0, seen) = type_key(key, key).await?;
        let done: Option<Vec<Instant>> = seen.iter().copied().collect();
        match done {
            Some(at) if i >= ECHO_WARMUP => {
                let us = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e6;
                one_us.push(us(at[0]));
                all_us.push(at.iter().map(|t| us(*t)).fold(0.0, f64::max));
            }
            Some(_) => {}
            None => timeouts += 1,
        }
        if let EchoKind::Bash = kind {
            // Rub the key out again (readline echoes "\b" and an erase), so
            // that the line stays empty and no redraw can carry old keys.
            type_key(0x7f, 0x08).await?;
        }
    }
    let host_cores = (host.cpu_secs() - host_cpu0) / t_start.elapsed().as_secs_f64();
    for task in tasks {
        if task.is_finished() {
            task.await.context("observer task")??;
        } else {
            task.abort();
        }
    }
    crate::close_all(vec![driver]).await;
    if one_us.is_empty() {
        bail!("no keystroke came back to every observer");
    }
    Ok(Echo {
        name: kind.name(),
        one_us: vec![one_us],
        all_us: vec![all_us],
        timeouts,
        host_cores,
    })
}

/// Fills a bash shell with `random_bytes` of base64, then times fresh
/// connections until they hold the screen.
async fn late_join_run(host: &HostProcess, random_bytes: u64) -> Result<LateJoin> {
    const KEY: &str = "bench-latejoin";
    // The typed line echoes `__LATE""JOIN__`; only the output has the marker.
    const MARKER: &[u8] = b"__LATEJOIN__";
    let url = host.ws_url();
    let token = host.token();
    let mut driver = client::connect(&url).await?;
    client::hello(&mut driver, KEY, token).await?;
    client::take_control(&mut driver).await?;
    client::subscribe_to(&mut driver, &["shellData"]).await?;
    client::caught_up(&mut driver).await?;
    client::action(
        &mut driver,
        1,
        "openShell",
        json!([{"command": "/bin/bash", "args": ["--norc", "--noprofile"],
                "cols": COLS, "rows": ROWS}]),
    )
    .await?;

    let mut stream = Stream::default();
    // The shell id, and its prompt.
    let mut opened = None;
    while opened.is_none() || stream.output == 0 {
        match client::recv(&mut driver).await? {
            Incoming::Binary(f) => {
                stream.take(f, MARKER)?;
            }
            Incoming::Text(v) if v["type"] == "result" && v["id"] == 1 => {
                opened = v["value"]["shellId"]
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok());
                if opened.is_none() {
                    bail!("openShell result without a shellId: {v}");
                }
            }
            Incoming::Text(v) => bail!("unexpected message: {v}"),
        }
    }
    let shell = opened.context("no shell")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let command =
        format!("head -c {random_bytes} /dev/urandom | base64 -w {COLS}; echo __LATE\"\"JOIN__\n");
    let sampler = RssSampler::start(host.pid());
    let t0 = Instant::now();
    client::action(&mut driver, 2, "writeShell", json!([shell, command])).await?;
    let mut filled_at = None;
    loop {
        let within = if filled_at.is_some() {
            QUIET
        } else {
            Duration::from_secs(30)
        };
        let Some(msg) = client::recv_within(&mut driver, within).await? else {
            if filled_at.is_some() {
                break;
            }
            bail!(
                "the output stopped before the end marker ({} bytes)",
                stream.output
            );
        };
        match msg {
            Incoming::Binary(f) => {
                if stream.take(f, MARKER)? && filled_at.is_none() {
                    filled_at = Some(Instant::now());
                }
            }
            Incoming::Text(v) if v["type"] == "result" && v["id"] == 2 => {}
            Incoming::Text(v) => bail!("unexpected message: {v}"),
        }
    }
    let fill_secs = filled_at
        .context("no end marker")?
        .duration_since(t0)
        .as_secs_f64();
    let fill_rss = sampler.finish()?;
    if stream.shell_id != Some(shell) {
        bail!("followed shell {:?}, opened {shell}", stream.shell_id);
    }
    let Stream {
        tail,
        output,
        prev_seq,
        ..
    } = stream;
    let data_bytes = host.data_bytes();
    println!(
        "  {} bytes of output in {fill_secs:.1} s ({:.1} MB/s, one subscriber); host RSS peak {} ({} threads), data directory {}",
        int(output as f64),
        output as f64 / fill_secs / 1e6,
        kib(fill_rss.peak_kib),
        fill_rss.peak_threads,
        kib(data_bytes / 1024)
    );

    // The screen the output must leave: the tail from a line start, fed to
    // a parser of the shell's size (the tail is over 5000 lines: the screen
    // and the scrollback a snapshot carries are all in it).
    let start = tail.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut want = parser(ROWS, COLS)?;
    want.process(&tail[start..]);

    // The first joiner comes as soon as the output has stopped (QUIET after
    // the marker); the others once the host is idle again.
    let mut joins = Vec::with_capacity(LATE_JOINS + 1);
    let mut scrollback_lines = 0;
    let mut settled_secs = 0.0;
    for run in 0..=LATE_JOINS {
        if run == 1 {
            settled_secs = host.settle(SETTLE_LIMIT).await.as_secs_f64();
            println!("  host idle {settled_secs:.1} s after the first join");
        }
        let (join, got) = join_once(&url, token, KEY, shell, prev_seq).await?;
        scrollback_lines = same_screen(want.screen(), got.screen())
            .with_context(|| format!("late joiner {run}: the snapshot is not the screen"))?;
        println!(
            "  join {run}{}: screen after {:.2} ms from subscribe (answered after {:.2} ms; {:.2} ms from connect); snapshot {} bytes ({} in base64), {scrollback_lines} lines of scrollback, screen checked",
            if run == 0 { " (output just stopped)" } else { " (host idle)" },
            join.subscribe_ms,
            join.answered_ms,
            join.connect_ms,
            int(join.snapshot_bytes as f64),
            int(join.base64_bytes as f64)
        );
        joins.push(join);
    }
    crate::close_all(vec![driver]).await;
    let first = joins.remove(0);
    Ok(LateJoin {
        output_bytes: output,
        fill_secs,
        fill_rss,
        data_bytes,
        first,
        settled_secs,
        joins,
        scrollback_lines,
    })
}

/// The late-join driver's view of the output: its end, its length, its
/// order.
#[derive(Default)]
struct Stream {
    tail: Vec<u8>,
    output: u64,
    prev_seq: u64,
    shell_id: Option<u32>,
}

impl Stream {
    /// Takes one frame; true if `marker` is in it (or across its start).
    fn take(&mut self, f: client::BinaryFrame, marker: &[u8]) -> Result<bool> {
        if f.kind != SHELL_DATA || f.seq <= self.prev_seq {
            bail!(
                "unexpected frame kind {} seq {} after {}",
                f.kind,
                f.seq,
                self.prev_seq
            );
        }
        self.prev_seq = f.seq;
        if *self.shell_id.get_or_insert(f.id) != f.id {
            bail!("output of another shell, {}", f.id);
        }
        let payload = f.payload();
        self.output += payload.len() as u64;
        let from = self.tail.len().saturating_sub(marker.len() - 1);
        self.tail.extend_from_slice(payload);
        let found = self.tail[from..].windows(marker.len()).any(|w| w == marker);
        if self.tail.len() > 2 * TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
        Ok(found)
    }
}

fn parser(rows: u16, cols: u16) -> Result<vt100::Parser> {
    let (Some(rows), Some(cols)) = (
        std::num::NonZeroU16::new(rows),
        std::num::NonZeroU16::new(cols),
    ) else {
        bail!("terminal size {cols}x{rows}");
    };
    Ok(vt100::Parser::new(rows, cols, JOIN_SCROLLBACK))
}

/// A fresh connection: `hello`, then `subscribe` and `getShellSnapshot` in
/// one write (the host reads them in order), until `caughtUp`, the snapshot
/// and its bytes drawn into a parser of the size it names.
async fn join_once(
    url: &str,
    token: &str,
    key: &str,
    shell: u32,
    last_seq: u64,
) -> Result<(Join, vt100::Parser)> {
    let t_connect = Instant::now();
    let mut ws = client::connect(url).await?;
    client::hello(&mut ws, key, token).await?;
    let t0 = Instant::now();
    client::feed_subscribe(&mut ws).await?;
    client::feed_action(&mut ws, 1, "getShellSnapshot", json!([shell])).await?;
    client::flush(&mut ws).await?;
    let mut caught_up = false;
    let mut snapshot = None;
    while !caught_up || snapshot.is_none() {
        match client::recv(&mut ws).await? {
            Incoming::Text(v) if v["type"] == "caughtUp" => caught_up = true,
            Incoming::Text(mut v) if v["type"] == "result" && v["id"] == 1 => {
                snapshot = Some(v["value"].take())
            }
            // Live output after the snapshot would be applied on top; the
            // shell is idle at its prompt, so there is none to apply.
            Incoming::Binary(_) => bail!("output while the shell should be idle"),
            Incoming::Text(v) => bail!("unexpected message: {v}"),
        }
    }
    let answered = Instant::now();
    let snapshot = snapshot.context("no snapshot")?;
    let data = snapshot["data"]
        .as_str()
        .with_context(|| format!("snapshot without data: {snapshot}"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .context("snapshot data is not base64")?;
    let size = |f: &str| {
        snapshot[f]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .with_context(|| format!("snapshot without {f}"))
    };
    let mut screen = parser(size("rows")?, size("cols")?)?;
    screen.process(&bytes);
    let done = Instant::now();
    if snapshot["seq"].as_u64().is_none_or(|s| s < last_seq) {
        bail!(
            "snapshot at seq {} but the output went on to {last_seq}",
            snapshot["seq"]
        );
    }
    crate::close_all(vec![ws]).await;
    Ok((
        Join {
            subscribe_ms: done.duration_since(t0).as_secs_f64() * 1e3,
            answered_ms: answered.duration_since(t0).as_secs_f64() * 1e3,
            connect_ms: done.duration_since(t_connect).as_secs_f64() * 1e3,
            snapshot_bytes: bytes.len(),
            base64_bytes: data.len(),
        },
        screen,
    ))
}

/// Checks the joiner's screen, cursor and scrollback against `want`;
/// returns the scrollback lines the snapshot carried.
fn same_screen(want: &vt100::Screen, got: &vt100::Screen) -> Result<usize> {
    if want.size() != got.size() {
        bail!("size {:?}, expected {:?}", got.size(), want.size());
    }
    if want.contents() != got.contents() {
        bail!(
            "screen differs:\n--- expected\n{}\n--- got\n{}",
            want.contents(),
            got.contents()
        );
    }
    if want.cursor_position() != got.cursor_position() {
        bail!(
            "cursor at {:?}, expected {:?}",
            got.cursor_position(),
            want.cursor_position()
        );
    }
    // Scroll the joiner to the top of what it got; the same rows must sit
    // that far up in the expected scrollback.
    let (mut got, mut want) = (got.clone(), want.clone());
    got.set_scrollback(usize::MAX);
    let lines = got.scrollback();
    want.set_scrollback(lines);
    if want.scrollback() != lines || want.contents() != got.contents() {
        bail!("the {lines} lines of scrollback differ from the output's");
    }
    Ok(lines)
}

/// Nearest-rank percentile, as anchors.py computes it.
pub fn pct(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

/// The shell rows of the summary table.
pub fn table_rows(t: &mut Table, f: &ShellFigures, refs: Option<&TerminalReference>) {
    if let Some(tp) = &f.tput {
        let pty = refs.and_then(|r| r.pty_cooked_mb_s);
        for (i, c) in tp.configs.iter().enumerate() {
            let m = c.median();
            let tmux = refs.and_then(|r| r.tmux_best(i.min(1)));
            let name = format!(
                "shell cat {} MiB, {:>2} cl: MB/s, slowest client",
                tp.file_bytes >> 20,
                c.clients
            );
            let reference = match (tmux, pty) {
                (Some(t), Some(p)) => Some(format!("tmux {t:.1}, pty {p:.1}")),
                (Some(t), None) => Some(format!("tmux {t:.1}")),
                (None, Some(p)) => Some(format!("pty {p:.1}")),
                (None, None) => None,
            };
            if c.clients == 20 {
                t.row(
                    format!("{name} (vs tmux)"),
                    format!("{:.1}", m.slowest_mb_s),
                    reference,
                    tmux.map(|v| (format!(">= {v:.1} (tmux)"), m.slowest_mb_s / v)),
                );
                t.row(
                    format!("{name} (vs PTY/2)"),
                    format!("{:.1}", m.slowest_mb_s),
                    None,
                    pty.map(|p| {
                        (
                            format!(">= {:.1} (PTY/2)", p / 2.0),
                            m.slowest_mb_s / (p / 2.0),
                        )
                    }),
                );
            } else {
                t.row(name, format!("{:.1}", m.slowest_mb_s), reference, None);
            }
            if let Some(p) = pty {
                t.row(
                    format!("shell cat, {:>2} cl: share of raw PTY", c.clients),
                    format!("{:.0} %", 100.0 * m.slowest_mb_s / p),
                    None,
                    None,
                );
            }
        }
        if let Some(c20) = tp.configs.iter().find(|c| c.clients == 20) {
            let m = c20.median();
            let peak = c20.runs.iter().map(|r| r.rss.peak_kib).max().unwrap_or(0);
            t.row(
                "host RSS idle (shell host)".into(),
                kib(tp.idle.rss_kib),
                None,
                None,
            );
            t.row(
                "host RSS during shell cat to 20 cl: peak".into(),
                kib(peak),
                None,
                None,
            );
            t.row(
                "host RSS during shell cat to 20 cl: mean".into(),
                kib(m.rss.mean_kib),
                None,
                None,
            );
            t.row(
                "host peak RSS (VmHWM), shell host".into(),
                kib(tp.hwm_kib),
                None,
                None,
            );
        }
        if let Some(r) = refs {
            if let Some(p) = r.pty_cooked_mb_s {
                t.row(
                    "ref: raw PTY, cat FILE, C reader: MB/s".into(),
                    format!("{p:.1}"),
                    r.pty_raw_mb_s.map(|raw| format!("raw mode {raw:.1}")),
                    None,
                );
            }
            for (i, n) in [1, 20].iter().enumerate() {
                if let (Some(a), Some(b)) = (r.tmux_per_client[i], r.tmux_poll[i]) {
                    t.row(
                        format!("ref: tmux {n:>2} cl (reader/client, poll): MB/s"),
                        format!("{a:.1} / {b:.1}"),
                        r.tmux_reached[i].as_ref().map(|m| format!("{m}/client")),
                        None,
                    );
                }
            }
        }
    }
    for e in &f.echo {
        let (p50, p99) = (e.one(50.0), e.one(99.0));
        let reference = refs.and_then(|r| match e.name {
            "raw cat" => r.echo_tmux20_one.map(|(_, p)| format!("tmux {p:.0}")),
            _ => None,
        });
        t.row(
            format!("echo {}, 20 observers: p50 us, one", e.name),
            format!("{p50:.0}"),
            refs.and_then(|r| r.echo_tmux20_one)
                .filter(|_| e.name == "raw cat")
                .map(|(p, _)| format!("tmux {p:.0}")),
            None,
        );
        t.row(
            format!("echo {}, 20 observers: p99 us, one", e.name),
            format!("{p99:.0}"),
            reference,
            Some((
                format!("< {TARGET_ECHO_P99_US:.0}"),
                TARGET_ECHO_P99_US / p99,
            )),
        );
        t.row(
            format!("echo {}, 20 observers: p99 us, all", e.name),
            format!("{:.0}", e.all(99.0)),
            refs.and_then(|r| r.echo_tmux20_all)
                .filter(|_| e.name == "raw cat")
                .map(|(_, p)| format!("tmux {p:.0}")),
            None,
        );
    }
    if !f.echo.is_empty() {
        if let Some((p50, p99)) = refs.and_then(|r| r.echo_pty_raw) {
            t.row(
                "ref: echo raw PTY cat, C: p50 / p99 us".into(),
                format!("{p50:.0} / {p99:.0}"),
                refs.and_then(|r| r.echo_pty_cooked)
                    .map(|(a, b)| format!("kernel echo {a:.0} / {b:.0}")),
                None,
            );
        }
        if let Some((p50, p99)) = refs.and_then(|r| r.echo_tmux20_one) {
            t.row(
                "ref: echo tmux 20 cl, other client: p50 / p99 us".into(),
                format!("{p50:.0} / {p99:.0}"),
                None,
                None,
            );
        }
    }
    if let Some(l) = &f.late_join {
        let m = l.median();
        t.row(
            format!(
                "late join after {:.2} GB, idle host: subscribe -> screen, ms",
                l.output_bytes as f64 / 1e9
            ),
            format!("{:.2}", m.subscribe_ms),
            None,
            Some((
                format!("< {TARGET_LATE_JOIN_MS:.0}"),
                TARGET_LATE_JOIN_MS / m.subscribe_ms,
            )),
        );
        t.row(
            format!(
                "late join: slowest of {} on an idle host, ms",
                l.joins.len()
            ),
            format!("{:.2}", l.max_ms()),
            None,
            None,
        );
        t.row(
            "late join 0.5 s after the output stopped, ms".into(),
            format!("{:.2}", l.first.subscribe_ms),
            None,
            Some((
                format!("< {TARGET_LATE_JOIN_MS:.0}"),
                TARGET_LATE_JOIN_MS / l.first.subscribe_ms,
            )),
        );
        t.row(
            "late join: output end -> host idle, s".into(),
            format!(
                "{:.1}",
                QUIET.as_secs_f64() + l.first.subscribe_ms / 1e3 + l.settled_secs
            ),
            None,
            None,
        );
        t.row(
            "late join: subscribe -> snapshot answered, ms".into(),
            format!("{:.2}", m.answered_ms),
            None,
            None,
        );
        t.row(
            "late join: connect -> screen, ms".into(),
            format!("{:.2}", m.connect_ms),
            None,
            None,
        );
        t.row(
            "late join: snapshot size (base64)".into(),
            format!(
                "{} B ({} B)",
                int(m.snapshot_bytes as f64),
                int(m.base64_bytes as f64)
            ),
            Some(format!("{} lines scrollback", l.scrollback_lines)),
            None,
        );
        t.row(
            "late join: output through the shell, MB/s".into(),
            format!("{:.1}", l.output_bytes as f64 / l.fill_secs / 1e6),
            None,
            None,
        );
        t.row(
            "late join: host RSS peak while filling".into(),
            kib(l.fill_rss.peak_kib),
            None,
            None,
        );
        t.row(
            "late join: data directory after the output".into(),
            kib(l.data_bytes / 1024),
            None,
            None,
        );
    }
}

/// Whether the shell targets are met, for the closing line: `None` when a
/// figure or its reference is missing.
pub fn targets(f: &ShellFigures, refs: Option<&TerminalReference>) -> Vec<(String, Option<bool>)> {
    let mut out = Vec::new();
    if let Some(tp) = &f.tput {
        if let Some(c20) = tp.configs.iter().find(|c| c.clients == 20) {
            let v = c20.median().slowest_mb_s;
            let pty = refs.and_then(|r| r.pty_cooked_mb_s);
            let tmux = refs.and_then(|r| r.tmux_best(1));
            out.push(("shell 20 cl >= PTY/2".into(), pty.map(|p| v >= p / 2.0)));
            out.push(("shell 20 cl >= tmux 20 cl".into(), tmux.map(|t| v >= t)));
        }
    }
    for e in &f.echo {
        out.push((
            format!("echo {} p99 < 2 ms", e.name),
            Some(e.one(99.0) < TARGET_ECHO_P99_US),
        ));
    }
    if let Some(l) = &f.late_join {
        out.push((
            "late join (idle host) < 50 ms".into(),
            Some(l.median().subscribe_ms < TARGET_LATE_JOIN_MS),
        ));
        out.push((
            "late join right after the output < 50 ms".into(),
            Some(l.first.subscribe_ms < TARGET_LATE_JOIN_MS),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&xs, 50.0), 51.0);
        assert_eq!(pct(&xs, 99.0), 99.0);
        assert_eq!(pct(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn the_cat_file_has_the_anchor_shape() {
        let f = CatFile::create(1000).unwrap();
        assert_eq!(f.file_bytes, 101_000);
        let on_disk = std::fs::read(&f.path).unwrap();
        assert_eq!(on_disk.len(), 101_000);
        let with_cr: Vec<u8> = on_disk
            .iter()
            .flat_map(|b| {
                if *b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![*b]
                }
            })
            .collect();
        assert_eq!(&with_cr, f.expected.as_ref());
        assert!(on_disk[..100]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/'));
    }

    #[test]
    fn a_screen_is_compared_with_its_scrollback() {
        let mut want = parser(5, 20).unwrap();
        let mut text = Vec::new();
        for i in 0..40 {
            text.extend_from_slice(format!("line {i}\r\n").as_bytes());
        }
        want.process(&text);
        // The second half, from a line start, as the bench cuts its tail.
        let half = (20..40)
            .map(|i| format!("line {i}\r\n"))
            .collect::<String>();
        let mut got = parser(5, 20).unwrap();
        got.process(half.as_bytes());
        assert_eq!(same_screen(want.screen(), got.screen()).unwrap(), 16);
        let mut other = parser(5, 20).unwrap();
        other.process(b"line 0\r\n");
        assert!(same_screen(want.screen(), other.screen()).is_err());
    }
}
