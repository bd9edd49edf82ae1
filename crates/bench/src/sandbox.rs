//! The sandbox figures of issue 11: what running every process of a VM in
//! its bubblewrap sandbox costs. The same measurements against a host with
//! `--isolation none` and one with the default sandbox, in one run: shell
//! `cat` of the 256 MiB file to 20 clients, keystroke echo p99, and the
//! latency of `exec true` (start, run and exit of a sandboxed process).

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::client;
use crate::host::HostProcess;
use crate::shell::{pct, CatFile, EchoKind};

/// Clients of the throughput comparison.
const CLIENTS: usize = 20;

/// `exec true` calls timed per mode, in rounds that alternate the modes
/// (each round after a few warm-up calls).
const EXECS: usize = 300;
const EXEC_ROUNDS: usize = 6;
const EXEC_WARMUP: usize = 5;

/// Sandboxed throughput and echo p99 may be this much worse than without.
const TARGET_RATIO: f64 = 0.05;
/// Target of issue 11: `exec true` p50 in the sandbox.
const TARGET_EXEC_P50_MS: f64 = 10.0;

/// One mode's figures.
pub struct Mode {
    pub name: &'static str,
    /// Slowest client's MB/s, median of the runs.
    pub tput_mb_s: f64,
    pub echo_p50_us: f64,
    pub echo_p99_us: f64,
    pub exec_p50_ms: f64,
    pub exec_p99_ms: f64,
}

pub struct SandboxFigures {
    pub none: Mode,
    pub bwrap: Mode,
}

pub async fn measure(opts: &crate::Options) -> Result<SandboxFigures> {
    println!(
        "\n== sandbox: the same shell cat to {CLIENTS} clients, echo and `exec true` without (--isolation none) and with the sandbox, runs alternating"
    );
    let file = CatFile::create(opts.shell_lines)?;
    // Both hosts at once, their runs alternating (none first, then bwrap
    // first, ...): what else runs on the machine weighs on both alike.
    let hosts = [
        (
            "none",
            HostProcess::start_with(&opts.host_bin, &["--isolation", "none"])?,
        ),
        (
            "bwrap",
            HostProcess::start_with(&opts.host_bin, &["--isolation", "bwrap"])?,
        ),
    ];
    let mut tput: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for run in 0..opts.runs {
        for k in 0..2 {
            let i = (run + k) % 2;
            let (name, host) = &hosts[i];
            let r = crate::shell::tput_run(host, &file, CLIENTS).await?;
            host.settle(std::time::Duration::from_secs(60)).await;
            println!(
                "  run {}: isolation {name:<5} cat to {CLIENTS} clients {:.1} MB/s",
                run + 1,
                r.slowest_mb_s
            );
            tput[i].push(r.slowest_mb_s);
        }
    }
    let mut echo = Vec::new();
    for (_, host) in &hosts {
        echo.push(
            crate::shell::echo_run(
                host,
                EchoKind::RawCat,
                opts.keystrokes,
                crate::shell::ECHO_OBSERVERS,
            )
            .await?,
        );
    }
    let mut exec_ms: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..EXEC_ROUNDS {
        for k in 0..2 {
            let i = (round + k) % 2;
            exec_ms[i].extend(exec_latency(&hosts[i].1, EXECS / EXEC_ROUNDS).await?);
        }
    }
    let mut modes = Vec::new();
    for (i, (name, host)) in hosts.into_iter().enumerate() {
        host.stop()?;
        let mut runs = std::mem::take(&mut tput[i]);
        runs.sort_by(f64::total_cmp);
        let m = Mode {
            name,
            tput_mb_s: runs[runs.len() / 2],
            echo_p50_us: echo[i].one(50.0),
            echo_p99_us: echo[i].all(99.0),
            exec_p50_ms: pct(&exec_ms[i], 50.0),
            exec_p99_ms: pct(&exec_ms[i], 99.0),
        };
        println!(
            "  isolation {:<5}: cat to {CLIENTS} clients {:.1} MB/s (slowest client, median of {}); echo p50 {:.0} us, p99 (all {} observers) {:.0} us; exec true p50 {:.2} ms p99 {:.2} ms",
            m.name,
            m.tput_mb_s,
            runs.len(),
            m.echo_p50_us,
            crate::shell::ECHO_OBSERVERS,
            m.echo_p99_us,
            m.exec_p50_ms,
            m.exec_p99_ms
        );
        modes.push(m);
    }
    let bwrap = modes.pop().context("two modes")?;
    let none = modes.pop().context("two modes")?;
    Ok(SandboxFigures { none, bwrap })
}

/// Milliseconds from sending `exec("true")` to its answer, one at a time.
async fn exec_latency(host: &HostProcess, count: usize) -> Result<Vec<f64>> {
    let mut ws = client::connect(&host.ws_url()).await?;
    client::hello(&mut ws, "bench-exec", host.token()).await?;
    client::take_control(&mut ws).await?;
    let mut out = Vec::with_capacity(count);
    for i in 0..EXEC_WARMUP + count {
        let id = 100 + i as u64;
        let t0 = Instant::now();
        client::action(&mut ws, id, "exec", json!(["true"])).await?;
        let r = client::result(&mut ws, id).await?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if r["exitCode"] != 0 {
            anyhow::bail!("exec true answered {r}");
        }
        if i >= EXEC_WARMUP {
            out.push(ms);
        }
    }
    crate::close_all(vec![ws]).await;
    Ok(out)
}

/// Rows of the summary table.
pub fn table_rows(t: &mut crate::Table, f: &SandboxFigures) {
    let (n, b) = (&f.none, &f.bwrap);
    t.row(
        format!("sandbox: cat to {CLIENTS} clients, sandboxed / none"),
        format!("{:.1} / {:.1} MB/s", b.tput_mb_s, n.tput_mb_s),
        None,
        Some((
            format!(">= {:.0}% of none", (1.0 - TARGET_RATIO) * 100.0),
            b.tput_mb_s / (n.tput_mb_s * (1.0 - TARGET_RATIO)),
        )),
    );
    t.row(
        "sandbox: echo p99, sandboxed / none".into(),
        format!("{:.0} / {:.0} us", b.echo_p99_us, n.echo_p99_us),
        None,
        Some((
            format!("<= {:.0}% of none", (1.0 + TARGET_RATIO) * 100.0),
            n.echo_p99_us * (1.0 + TARGET_RATIO) / b.echo_p99_us.max(1.0),
        )),
    );
    t.row(
        "sandbox: exec true p50 / p99, sandboxed".into(),
        format!("{:.2} / {:.2} ms", b.exec_p50_ms, b.exec_p99_ms),
        None,
        Some((
            format!("p50 < {TARGET_EXEC_P50_MS:.0} ms"),
            TARGET_EXEC_P50_MS / b.exec_p50_ms.max(0.001),
        )),
    );
    t.row(
        "sandbox: exec true p50 / p99, none".into(),
        format!("{:.2} / {:.2} ms", n.exec_p50_ms, n.exec_p99_ms),
        None,
        None,
    );
}

/// Which targets were met.
pub fn targets(f: &SandboxFigures) -> Vec<(String, bool)> {
    let (n, b) = (&f.none, &f.bwrap);
    vec![
        (
            "sandboxed cat throughput".into(),
            b.tput_mb_s >= n.tput_mb_s * (1.0 - TARGET_RATIO),
        ),
        (
            "sandboxed echo p99".into(),
            b.echo_p99_us <= n.echo_p99_us * (1.0 + TARGET_RATIO),
        ),
        (
            "sandboxed exec p50".into(),
            b.exec_p50_ms < TARGET_EXEC_P50_MS,
        ),
    ]
}
