//! Rivet agentOS side by side (section `agentos`, off by default): the same
//! workload on both in one run, one after the other since both serve on
//! 127.0.0.1:6420 by default. One process prints `head -c 16 MiB <
//! /dev/zero | base64` (22,663,962 bytes) and 1, 3 and 10 clients follow
//! its output: per-client MB/s, bytes delivered against bytes produced, and
//! the server's peak RSS.
//!
//! agentOS runs from `../shared/bench/agentos` (its README): installed once
//! from the npm registry into `target/agentos` (~600 MB, ~3 minutes), its
//! server started with `a/start-server.sh`, measured by its own `bench.mjs`,
//! and stopped with `a/stop-server.sh`, also when a run fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::host::HostProcess;
use crate::kib;
use crate::process::{self, Run, Workload};

/// agentOS's default command (a/bench.mjs); a shell redirect, since its WASM
/// `head` cannot open files.
const COMMAND: &str = "head -c 16777216 < /dev/zero | base64";

const CLIENTS: [usize; 3] = [1, 3, 10];

/// Targets of issue "Performance", with 10 clients: each gets every byte at
/// this many times agentOS's one-client rate, with this share of its memory.
const TARGET_SPEEDUP: f64 = 10.0;
const TARGET_MEMORY_SHARE: f64 = 0.1;

/// The port agentOS's server binds (its start script waits for it).
const AGENTOS_PORT: u16 = 6420;

/// What agentOS's bench.mjs reported for one client count.
pub struct AgentOsRun {
    pub clients: usize,
    pub expected: u64,
    /// Bytes each client received.
    pub delivered: Vec<u64>,
    pub min_mb_s: f64,
    pub median_mb_s: f64,
    /// Peak RSS of the server tree (node, rivet-engine, rivet-services), MiB
    /// (bench.mjs's `peakMB` is kB / 1024).
    pub peak_mb: f64,
}

pub struct AgentOsFigures {
    pub workload: Workload,
    pub ensemble: Vec<Run>,
    pub agentos: Result<Vec<AgentOsRun>>,
}

/// The repository's root, where `target/` and the sibling `shared/` are.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub async fn measure(opts: &crate::Options) -> Result<AgentOsFigures> {
    println!("\n== agentOS side by side: `{COMMAND}` followed by {CLIENTS:?} client(s), Ensemble then agentOS");
    let scratch = tempfile::tempdir().context("create a scratch folder")?;
    let workload = Workload::measure_pipe(
        vec!["sh".into(), "-c".into(), COMMAND.into()],
        scratch.path(),
        opts.runs,
    )?;
    println!(
        "  raw pipe: {} bytes at {:.1} MB/s",
        crate::int(workload.expected.len() as f64),
        workload.pipe_median()
    );
    let host = HostProcess::start(&opts.host_bin)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ensemble = Vec::new();
    for clients in CLIENTS {
        let mut runs = Vec::new();
        for _ in 0..opts.runs {
            let r = process::run(&host, &workload, clients, &[]).await?;
            process::print_run(&r);
            runs.push(r);
            host.settle(Duration::from_secs(60)).await;
        }
        runs.sort_by(|a, b| a.slowest_mb_s.total_cmp(&b.slowest_mb_s));
        let mid = runs.len() / 2;
        ensemble.push(runs.swap_remove(mid));
    }
    host.stop()?;
    let agentos = run_agentos(opts.runs);
    if let Err(e) = &agentos {
        println!("  agentOS not measured: {e:#}");
    }
    Ok(AgentOsFigures {
        workload,
        ensemble,
        agentos,
    })
}

/// Installs agentOS if needed, starts its server, runs its bench for each
/// client count (`runs` times, the median by slowest client kept), stops it.
fn run_agentos(runs: usize) -> Result<Vec<AgentOsRun>> {
    let source = repo_root().join("../shared/bench/agentos");
    if !source.join("a/bench.mjs").exists() {
        bail!(
            "{} not found: the agentOS reference lives next to the repository",
            source.display()
        );
    }
    let dir = match std::env::var_os("ENSEMBLE_AGENTOS_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("target/agentos"),
    };
    install(&source, &dir)?;
    if std::net::TcpListener::bind(("127.0.0.1", AGENTOS_PORT)).is_err() {
        bail!("127.0.0.1:{AGENTOS_PORT} is in use; agentOS's server needs it (stop `ensemble serve` or the desktop app)");
    }
    let server = Server::start(&dir)?;
    let mut out = Vec::new();
    for clients in CLIENTS {
        let mut all = Vec::new();
        for _ in 0..runs.max(1) {
            let r = bench_once(&server.dir, clients)?;
            println!(
                "  agentOS {clients:>2} client(s): per client min {:.1} MB/s, median {:.1} MB/s; delivered {:?} of {} bytes each; server tree peak RSS {:.0} MiB",
                r.min_mb_s,
                r.median_mb_s,
                r.delivered,
                r.expected,
                r.peak_mb
            );
            all.push(r);
        }
        all.sort_by(|a, b| a.min_mb_s.total_cmp(&b.min_mb_s));
        let mid = all.len() / 2;
        out.push(all.swap_remove(mid));
    }
    server.stop();
    Ok(out)
}

/// Copies the reference's scripts into `dir` and runs its setup.sh there,
/// once: a finished install has rivetkit in `a/node_modules`.
fn install(source: &Path, dir: &Path) -> Result<()> {
    if dir.join("a/node_modules/rivetkit/package.json").exists() {
        return Ok(());
    }
    println!(
        "  installing agentOS into {} from the npm registry (once; ~600 MB, ~3 minutes; log: setup.log there)",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let status = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", source.display()))
        .arg(dir)
        .status()
        .context("copy the agentOS scripts")?;
    if !status.success() {
        bail!("copying {} failed", source.display());
    }
    let log = std::fs::File::create(dir.join("setup.log")).context("create setup.log")?;
    let status = Command::new(dir.join("setup.sh"))
        .env("RIVET_TRY", dir)
        .stdout(log.try_clone().context("setup.log")?)
        .stderr(log)
        .status()
        .context("run agentOS's setup.sh")?;
    if !status.success() {
        bail!(
            "agentOS's setup.sh failed; see {}",
            dir.join("setup.log").display()
        );
    }
    Ok(())
}

/// agentOS's server; stopped when dropped so that a failed run leaves
/// nothing on port 6420.
struct Server {
    dir: PathBuf,
    stopped: bool,
}

impl Server {
    fn start(dir: &Path) -> Result<Server> {
        let out = Command::new(dir.join("a/start-server.sh"))
            .env("RIVET_TRY", dir)
            .stderr(Stdio::inherit())
            .output()
            .context("run agentOS's start-server.sh")?;
        let server = Server {
            dir: dir.to_path_buf(),
            stopped: false,
        };
        if !out.status.success()
            || std::net::TcpStream::connect(("127.0.0.1", AGENTOS_PORT)).is_err()
        {
            bail!(
                "agentOS's server did not start; see {}",
                dir.join("a/server.log").display()
            );
        }
        println!("  agentOS {}", String::from_utf8_lossy(&out.stdout).trim());
        Ok(server)
    }

    fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if !self.stopped {
            self.stopped = true;
            let _ = Command::new(self.dir.join("a/stop-server.sh"))
                .stdout(Stdio::null())
                .status();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// One `bench.mjs N --json` run; its result is the stdout line that starts
/// with `BENCH_RESULT ` (rivetkit logs to stdout too).
fn bench_once(dir: &Path, clients: usize) -> Result<AgentOsRun> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#". "$RIVET_TRY/env.sh" && node "$RIVET_TRY/bench.mjs" "$1" --json --quiet"#)
        .arg("bench")
        .arg(clients.to_string())
        .env("RIVET_TRY", dir)
        .stderr(Stdio::null())
        .output()
        .context("run agentOS's bench.mjs")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_RESULT "))
        .with_context(|| format!("bench.mjs printed no result ({})", out.status))?;
    let v: Value = serde_json::from_str(line).context("bench.mjs's result is not JSON")?;
    let summary = &v["summary"];
    let delivered = v["rows"]
        .as_array()
        .context("no rows in bench.mjs's result")?
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap_or(0))
        .collect();
    let peak_mb = v["mem"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["pid"] == "total"))
        .and_then(|e| e["peakMB"].as_f64())
        .unwrap_or(0.0);
    Ok(AgentOsRun {
        clients,
        expected: summary["expectBytesPerClient"].as_u64().unwrap_or(0),
        delivered,
        min_mb_s: summary["perClientMBps"]["min"].as_f64().unwrap_or(0.0),
        median_mb_s: summary["perClientMBps"]["median"].as_f64().unwrap_or(0.0),
        peak_mb,
    })
}

pub fn summary(f: &AgentOsFigures) {
    println!(
        "\n## agentOS side by side (issue 15): `{COMMAND}`, {} bytes",
        crate::int(f.workload.expected.len() as f64)
    );
    println!("  clients | Ensemble MB/s per client (slowest) | delivered | host RSS peak | agentOS MB/s per client (min / median) | delivered (min of clients) | server tree RSS peak");
    let agentos = f.agentos.as_ref().ok();
    for r in &f.ensemble {
        let a = agentos.and_then(|a| a.iter().find(|x| x.clients == r.clients));
        let theirs = match a {
            Some(a) => format!(
                "{:.1} / {:.1} | {:.0} % | {:.0} MiB",
                a.min_mb_s,
                a.median_mb_s,
                100.0 * a.delivered.iter().copied().min().unwrap_or(0) as f64
                    / a.expected.max(1) as f64,
                a.peak_mb
            ),
            None => "not measured".into(),
        };
        println!(
            "  {:>7} | {:>8.1} | 100 % | {} | {theirs}",
            r.clients,
            r.slowest_mb_s,
            kib(r.rss.peak_kib)
        );
    }
    let (Some(ours), Some(one)) = (
        f.ensemble.iter().find(|r| r.clients == 10),
        agentos.and_then(|a| a.iter().find(|x| x.clients == 1)),
    ) else {
        return;
    };
    let ten = agentos.and_then(|a| a.iter().find(|x| x.clients == 10));
    let speedup = ours.slowest_mb_s / one.median_mb_s.max(f64::MIN_POSITIVE);
    let memory = ten.map(|t| ours.rss.peak_kib as f64 / 1024.0 / t.peak_mb.max(f64::MIN_POSITIVE));
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "  10 clients: every byte to each at {:.1}x agentOS's one-client rate (target >= {TARGET_SPEEDUP}x: {})",
        speedup,
        met(speedup >= TARGET_SPEEDUP)
    );
    if let Some(m) = memory {
        println!(
            "  10 clients: host RSS {:.3} of agentOS's server tree (target < {TARGET_MEMORY_SHARE}: {})",
            m,
            met(m < TARGET_MEMORY_SHARE)
        );
    }
}
