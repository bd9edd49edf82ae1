//! Process output, measured against the real host over loopback: a command
//! started with `spawn` whose stdout reaches N clients as `processOutput`,
//! every client comparing every byte with what the command prints. Beside
//! it, in the same run, the raw pipe: the same command's stdout read by
//! this bench directly, which is what a process's output costs before any
//! host is in the way.
//!
//! Two workloads: `cat` of the shell section's 256 MiB file to 1 and 20
//! clients (section `process`), and agentOS's `head -c 16 MiB < /dev/zero |
//! base64` to 1, 3 and 10 clients, which `agentos` also runs on Rivet
//! agentOS.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::host::{HostProcess, RssStats, Target};
use crate::stages::Stages;
use crate::stream;
use crate::{int, kib};

/// The clients of the `process` section: the 1 and 20.
const CLIENTS: [usize; 2] = [1, 20];

/// Target of issue "Performance": 20 clients get at least this share of
/// the raw pipe's throughput.
const TARGET_PIPE_SHARE_20: f64 = 0.5;

/// A command, what it prints, and how fast a bare pipe carries it.
pub struct Workload {
    /// argv; run in the VM's workspace by the host, in `dir` by the pipe.
    pub argv: Vec<String>,
    pub expected: Arc<Vec<u8>>,
    /// The raw pipe, every run: MB/s of the command's stdout read here.
    pub pipe_mb_s: Vec<f64>,
}

impl Workload {
    /// Runs `argv` in `dir` `runs` times with its stdout on a pipe that this
    /// bench reads in 64 KiB chunks (a `cmd | pv` of our own): the first run
    /// also keeps the bytes, which every client must then receive.
    pub fn measure_pipe(argv: Vec<String>, dir: &std::path::Path, runs: usize) -> Result<Workload> {
        let mut expected = Vec::new();
        let mut pipe_mb_s = Vec::with_capacity(runs);
        for run in 0..runs.max(1) {
            let (program, args) = argv.split_first().context("an empty command")?;
            let t0 = Instant::now();
            let mut child = Command::new(program)
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("start {argv:?}"))?;
            let mut out = child.stdout.take().context("no stdout pipe")?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = out.read(&mut buf).context("read the pipe")?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if run == 0 {
                    expected.extend_from_slice(&buf[..n]);
                }
            }
            let status = child.wait().context("wait for the command")?;
            let secs = t0.elapsed().as_secs_f64();
            if !status.success() {
                bail!("{argv:?} failed: {status}");
            }
            pipe_mb_s.push(total as f64 / 1e6 / secs);
        }
        Ok(Workload {
            argv,
            expected: Arc::new(expected),
            pipe_mb_s,
        })
    }

    pub fn pipe_median(&self) -> f64 {
        median(&self.pipe_mb_s)
    }
}

/// One run: `clients` connections following one spawned command.
pub struct Run {
    pub clients: usize,
    /// Output bytes per second, slowest and fastest client, from sending
    /// `spawn` to each client's last byte.
    pub slowest_mb_s: f64,
    pub fastest_mb_s: f64,
    /// Bytes every client received (checked equal to the expected bytes).
    pub delivered: u64,
    pub frames: u64,
    pub host_cores: f64,
    pub rss: RssStats,
    /// The log's stages in the run, when the host reports them.
    pub stages: Option<Stages>,
}

/// Starts `workload` with `spawn` from the first of `clients` connections
/// following `processOutput`; each checks every byte. `files` are
/// hard-linked into the VM's workspace first (the command may read only
/// what its sandbox shows).
pub async fn run(
    host: &impl Target,
    workload: &Workload,
    clients: usize,
    files: &[(&std::path::Path, &str)],
) -> Result<Run> {
    let (program, args) = workload.argv.split_first().context("an empty command")?;
    let f = stream::run(
        host,
        host.key("bench-process"),
        stream::PROCESS,
        &workload.expected,
        clients,
        files,
        ("spawn", json!([program, args])),
    )
    .await?;
    let mb = workload.expected.len() as f64 / 1e6;
    Ok(Run {
        clients,
        slowest_mb_s: mb / f.slowest_secs,
        fastest_mb_s: mb / f.fastest_secs,
        delivered: workload.expected.len() as u64,
        frames: f.frames,
        host_cores: f.host_cores,
        rss: f.rss,
        stages: f.stages,
    })
}

/// The `process` section's figures.
pub struct ProcessFigures {
    pub workload: Workload,
    /// Per client count, every run.
    pub runs: Vec<Vec<Run>>,
    pub idle_rss_kib: u64,
}

/// `cat` of the 256 MiB file to 1 and 20 clients, `opts.runs` runs each,
/// and the raw pipe as many times, all in this run.
pub async fn measure(opts: &crate::Options) -> Result<ProcessFigures> {
    println!(
        "\n== process output: spawn `cat` of {} lines of base64 to {CLIENTS:?} client(s), {} run(s); reference: the same cat into a pipe read here",
        int(opts.shell_lines as f64),
        opts.runs
    );
    let file = crate::shell::CatFile::create(opts.shell_lines)?;
    let name = "bench-process.txt";
    let dir = file.path().parent().context("the cat file has no folder")?;
    let workload = Workload::measure_pipe(
        vec!["cat".into(), file.path().display().to_string()],
        dir,
        opts.runs,
    )?;
    // The host's command reads the workspace's link, by its name.
    let workload = Workload {
        argv: vec!["cat".into(), name.into()],
        ..workload
    };
    println!(
        "  raw pipe: {} bytes at {:.1} MB/s (median of {:?})",
        int(workload.expected.len() as f64),
        workload.pipe_median(),
        workload
            .pipe_mb_s
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
    );
    let host = HostProcess::start(&opts.host_bin)?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let idle_rss_kib = host.memory()?.rss_kib;
    let mut all = Vec::new();
    for clients in CLIENTS {
        let mut runs = Vec::new();
        for _ in 0..opts.runs {
            let r = run(&host, &workload, clients, &[(file.path(), name)]).await?;
            print_run(&r);
            runs.push(r);
            host.settle(std::time::Duration::from_secs(60)).await;
        }
        all.push(runs);
    }
    host.stop()?;
    Ok(ProcessFigures {
        workload,
        runs: all,
        idle_rss_kib,
    })
}

pub fn print_run(r: &Run) {
    println!(
        "  {:>2} client(s): slowest {:.1} MB/s, fastest {:.1} MB/s; {} bytes each in {} frames; host {:.2} cores, RSS peak {} ({} threads)",
        r.clients,
        r.slowest_mb_s,
        r.fastest_mb_s,
        int(r.delivered as f64),
        int(r.frames as f64),
        r.host_cores,
        kib(r.rss.peak_kib),
        r.rss.peak_threads
    );
    if let Some(stages) = &r.stages {
        println!("      {stages}");
    }
}

/// The median run by slowest client.
pub fn median_run(runs: &[Run]) -> Option<&Run> {
    let mut order: Vec<&Run> = runs.iter().collect();
    order.sort_by(|a, b| a.slowest_mb_s.total_cmp(&b.slowest_mb_s));
    order.get(order.len() / 2).copied()
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `tcp`, when that section ran, gives the ceiling of any 20-client figure
/// here: loopback TCP from one sender to 20 receivers, bytes discarded.
pub fn summary(f: &ProcessFigures, tcp: Option<&crate::reference::TcpReference>) {
    let pipe = f.workload.pipe_median();
    println!("\n## Process output (issue 15)");
    println!(
        "  raw pipe (cat | reader)          {pipe:>8.1} MB/s   host idle RSS {}",
        kib(f.idle_rss_kib)
    );
    for runs in &f.runs {
        let Some(m) = median_run(runs) else { continue };
        let share = m.slowest_mb_s / pipe;
        let target = if m.clients == 20 {
            if share >= TARGET_PIPE_SHARE_20 {
                " (target >= 50 % met)"
            } else {
                " (target >= 50 % MISSED)"
            }
        } else {
            ""
        };
        println!(
            "  spawn cat to {:>2} client(s)        {:>8.1} MB/s = {:.0} % of the pipe{target}; every byte to every client; host RSS peak {}",
            m.clients,
            m.slowest_mb_s,
            share * 100.0,
            kib(m.rss.peak_kib)
        );
        if let (20, Some(tcp)) = (m.clients, tcp) {
            println!(
                "  ceiling: loopback TCP 1 -> 20    {:>8.1} MB/s per receiver ({:.0} % of the pipe); spawn cat to 20 reaches {:.0} % of it",
                tcp.fanout20_per_receiver_mb_s,
                tcp.fanout20_per_receiver_mb_s / pipe * 100.0,
                m.slowest_mb_s / tcp.fanout20_per_receiver_mb_s * 100.0
            );
        }
    }
}
