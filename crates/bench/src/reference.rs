//! The reference ceiling: loopback TCP throughput on this machine, measured
//! in the same run by the shared anchor script
//! (`anchors.py --quick --only tcp`). Only its TCP section is used: it needs
//! neither a terminal nor a tmux session, and takes seconds.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where the anchor script lives unless `--anchors PATH` says otherwise.
pub const DEFAULT_ANCHORS: &str = "/work/shared/bench/anchors.py";

/// Median loopback TCP figures, decimal MB/s.
#[derive(Debug, Clone)]
pub struct TcpReference {
    /// One stream, 1 MiB `sendall`s, one sender and one receiver process.
    pub one_stream_mb_s: f64,
    /// One sender to 20 receiver processes, all bytes received per second.
    pub fanout20_aggregate_mb_s: f64,
    /// The same, per receiver.
    pub fanout20_per_receiver_mb_s: f64,
    /// The script's machine line (`# nproc=... cpu=...`).
    pub machine: String,
    /// Its raw figure lines, for the record.
    pub lines: Vec<String>,
}

pub fn measure(script: &Path) -> Result<TcpReference> {
    if !script.exists() {
        bail!("{} not found", script.display());
    }
    let out = Command::new("python3")
        .arg(script)
        .arg("--quick")
        .arg("--only")
        .arg("tcp")
        .output()
        .with_context(|| format!("run python3 {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Figure lines: "<name>  min median max  MB/s  n=.. (...)"; the name
    // holds spaces, so the median is found from the unit backwards.
    let median = |name: &str| -> Result<f64> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name:?} line in the anchor output:\n{stdout}"))?;
        let words: Vec<&str> = line[name.len()..].split_whitespace().collect();
        let unit = words
            .iter()
            .position(|w| *w == "MB/s")
            .with_context(|| format!("no MB/s in {line:?}"))?;
        if unit < 3 {
            bail!("cannot read min/median/max from {line:?}");
        }
        words[unit - 2]
            .parse()
            .with_context(|| format!("median of {line:?}"))
    };
    Ok(TcpReference {
        one_stream_mb_s: median("tcp 127.0.0.1, 1 stream")?,
        fanout20_aggregate_mb_s: median("tcp fan-out 1->20, aggregate")?,
        fanout20_per_receiver_mb_s: median("tcp fan-out 1->20, per receiver")?,
        machine: stdout
            .lines()
            .find(|l| l.starts_with("# nproc="))
            .map(|l| l.trim_start_matches("# ").to_owned())
            .unwrap_or_default(),
        lines: stdout
            .lines()
            .filter(|l| {
                l.starts_with("tcp ") || l.starts_with("# before") || l.starts_with("# after")
            })
            .map(str::to_owned)
            .collect(),
    })
}
