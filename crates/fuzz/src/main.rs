//! `make fuzz`: runs every target for a fixed time and prints executions
//! and executions per second per target and in total. Inputs that crashed
//! are written to `target/fuzz-crashes/` and make the exit status 1.
//!
//! `ensemble-fuzz [--secs N] [--seed S] [--only TARGET]`: N seconds per
//! target (default 120, or `FUZZ_SECS`), S the RNG seed (default: the
//! time, printed so that a run can be repeated).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use ensemble_fuzz::{Report, TARGETS};

fn main() -> anyhow::Result<()> {
    let mut secs: u64 = match std::env::var("FUZZ_SECS") {
        Ok(s) => s.parse().context("FUZZ_SECS is a number of seconds")?,
        Err(_) => 120,
    };
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} takes a value"));
        match arg.as_str() {
            "--secs" => secs = value()?.parse().context("--secs is a number")?,
            "--seed" => seed = value()?.parse().context("--seed is a number")?,
            "--only" => only = Some(value()?),
            other => bail!("unknown argument {other:?}; usage: ensemble-fuzz [--secs N] [--seed S] [--only TARGET]"),
        }
    }
    if let Some(name) = only.as_deref() {
        if !TARGETS.iter().any(|t| t.name == name) {
            let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
            bail!("unknown target {name:?}; targets: {}", names.join(", "));
        }
    }
    println!("fuzz: {secs} s per target, seed {seed}");
    let mut reports: Vec<Report> = Vec::new();
    for target in TARGETS {
        if only.as_deref().is_some_and(|o| o != target.name) {
            continue;
        }
        // Each target its own stream, so that --only repeats a full run's.
        let report = (target.run)(seed ^ fnv(target.name), Duration::from_secs(secs));
        println!(
            "  {:<16} {:>12} execs  {:>10.0} execs/s  {} crashes",
            report.name,
            report.execs,
            report.per_sec(),
            report.crashes.len()
        );
        reports.push(report);
    }
    let execs: u64 = reports.iter().map(|r| r.execs).sum();
    let secs_spent: f64 = reports.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let crashes: usize = reports.iter().map(|r| r.crashes.len()).sum();
    println!(
        "  {:<16} {:>12} execs  {:>10.0} execs/s  {} crashes",
        "total",
        execs,
        execs as f64 / secs_spent.max(1e-9),
        crashes
    );
    if crashes > 0 {
        let dir = Path::new("target/fuzz-crashes");
        std::fs::create_dir_all(dir)?;
        for report in &reports {
            for (i, input) in report.crashes.iter().enumerate() {
                let path = dir.join(format!("{}-{seed}-{i}", report.name));
                std::fs::write(&path, input)?;
                println!("  crash input: {}", path.display());
            }
        }
        bail!("{crashes} crash(es)");
    }
    Ok(())
}

/// FNV-1a of a target's name: a fixed per-target offset of the seed.
fn fnv(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
