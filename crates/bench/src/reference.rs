//! The reference figures of the same run, from the shared anchor script
//! `anchors.py`: loopback TCP (section `tcp`, next to the fan-out), the raw
//! PTY and tmux with 1 and 20 attached clients (`pty`, `tmux`, next to the
//! shell throughput) and keystroke echo on a raw PTY and through tmux
//! (`lat`, next to the shell echo). The script runs after the host has
//! stopped, so that the two never share the CPUs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where the anchor script lives unless `--anchors PATH` says otherwise:
/// `../shared/bench/anchors.py` from the repository's root, whichever
/// checkout this bench was built in.
pub fn default_anchors() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/anchors.py")
}

/// One figure line of the script: `<name>  min median max  unit  n=.. (..)`.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The name with runs of spaces folded to one ("tmux 20cl ...").
    pub name: String,
    pub median: f64,
    /// The rest of the line after the unit: sample counts, CPU, checks.
    pub extra: String,
}

/// Everything one run of the script printed.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    pub figures: Vec<Figure>,
    /// The script's machine line (`nproc=... cpu=... tmux 3.3a ...`).
    pub machine: String,
    /// Its `# before` / `# after` load lines, for the record.
    pub load: Vec<String>,
}

impl Anchors {
    /// The figure whose name starts with `name` (names are unique
    /// prefixes in the script's output).
    pub fn get(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name.starts_with(name))
    }

    pub fn median(&self, name: &str) -> Result<f64> {
        self.get(name)
            .map(|f| f.median)
            .with_context(|| format!("no {name:?} figure in the anchor output"))
    }
}

/// Runs `python3 SCRIPT --only SECTIONS [--quick]`, echoing its lines as
/// they come (the terminal sections take minutes), and parses them.
pub fn run(script: &Path, sections: &str, quick: bool) -> Result<Anchors> {
    if !script.exists() {
        bail!("{} not found", script.display());
    }
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--only").arg(sections);
    if quick {
        cmd.arg("--quick");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its progress notes ("generating ...") and errors go to ours.
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("run python3 {}", script.display()))?;
    let stdout = child.stdout.take().context("anchor stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read the anchor output")?;
        println!("  {line}");
        lines.push(line);
    }
    let status = child.wait().context("wait for the anchor script")?;
    if !status.success() {
        bail!("{} --only {sections} failed ({status})", script.display());
    }
    Ok(parse(&lines))
}

fn parse(lines: &[String]) -> Anchors {
    let mut out = Anchors::default();
    for line in lines {
        if let Some(rest) = line.strip_prefix("# nproc=") {
            out.machine = format!("nproc={rest}");
        } else if line.starts_with("# before") || line.starts_with("# after") {
            out.load.push(line.trim_start_matches("# ").to_owned());
        } else if let Some(f) = parse_figure(line) {
            out.figures.push(f);
        }
    }
    out
}

/// Names hold spaces, so the columns are found from the `n=` word
/// backwards: min, median, max, unit, `n=..`. Only the median is kept (the
/// lines themselves are echoed as they come).
fn parse_figure(line: &str) -> Option<Figure> {
    if line.starts_with('#') {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let n_at = words.iter().position(|w| w.starts_with("n="))?;
    if n_at < 5 {
        return None;
    }
    let number = |i: usize| words[i].parse::<f64>().ok();
    // min and max must be numbers too, or this is not a figure line.
    number(n_at - 4)?;
    number(n_at - 2)?;
    Some(Figure {
        name: words[..n_at - 4].join(" "),
        median: number(n_at - 3)?,
        extra: words[n_at..].join(" "),
    })
}

/// Median loopback TCP figures, decimal MB/s.
#[derive(Debug, Clone)]
pub struct TcpReference {
    /// One stream, 1 MiB `sendall`s, one sender and one receiver process.
    pub one_stream_mb_s: f64,
    /// One sender to 20 receiver processes, all bytes received per second.
    pub fanout20_aggregate_mb_s: f64,
    /// The same, per receiver.
    pub fanout20_per_receiver_mb_s: f64,
    /// The script's machine line (`nproc=... cpu=...`).
    pub machine: String,
}

impl TcpReference {
    pub fn from(a: &Anchors) -> Result<TcpReference> {
        Ok(TcpReference {
            one_stream_mb_s: a.median("tcp 127.0.0.1, 1 stream")?,
            fanout20_aggregate_mb_s: a.median("tcp fan-out 1->20, aggregate")?,
            fanout20_per_receiver_mb_s: a.median("tcp fan-out 1->20, per receiver")?,
            machine: a.machine.clone(),
        })
    }
}

/// The terminal figures: whichever of `pty`, `tmux` and `lat` ran. MB/s
/// are the script's: file bytes (268,435,477) over the time, decimal.
#[derive(Debug, Clone, Default)]
pub struct TerminalReference {
    /// `cat FILE` on a PTY in the kernel's default (cooked, ONLCR) mode,
    /// one C reader of the master: the ceiling of any terminal host.
    pub pty_cooked_mb_s: Option<f64>,
    /// The same with the PTY in raw mode (no `\r` added).
    pub pty_raw_mb_s: Option<f64>,
    /// tmux with 1 and 20 attached clients, until the end marker is on
    /// every client: one reader process per client, and one poll loop.
    pub tmux_per_client: [Option<f64>; 2],
    pub tmux_poll: [Option<f64>; 2],
    /// MB that reached each tmux client per run (tmux redraws the screen
    /// instead of forwarding every byte), 1 and 20 clients, reader per client.
    pub tmux_reached: [Option<String>; 2],
    /// Echo of one byte through `cat` on a raw PTY, C harness: p50, p99 (µs).
    pub echo_pty_raw: Option<(f64, f64)>,
    /// The kernel's own echo (cooked mode, no process involved).
    pub echo_pty_cooked: Option<(f64, f64)>,
    /// tmux, 20 clients, the pane running `stty raw -echo; exec cat`: to one
    /// other client, and to all of them.
    pub echo_tmux20_one: Option<(f64, f64)>,
    pub echo_tmux20_all: Option<(f64, f64)>,
    pub machine: String,
    pub load: Vec<String>,
}

impl TerminalReference {
    pub fn from(a: &Anchors) -> TerminalReference {
        let m = |name: &str| a.get(name).map(|f| f.median);
        let lat = |name: &str| Some((m(&format!("{name} p50"))?, m(&format!("{name} p99"))?));
        // "(median 19.5 MB reached each client per run, ...": keep the MB.
        let reached = |name: &str| {
            a.get(name).and_then(|f| {
                let at = f.extra.find("(median ")? + "(median ".len();
                let mb = f.extra[at..].split_whitespace().next()?;
                Some(format!("{mb} MB"))
            })
        };
        TerminalReference {
            pty_cooked_mb_s: m("pty cat FILE, C reader, cooked"),
            pty_raw_mb_s: m("pty cat FILE, C reader, raw"),
            tmux_per_client: [
                m("tmux 1cl reader per client, end seen by all"),
                m("tmux 20cl reader per client, end seen by all"),
            ],
            tmux_poll: [
                m("tmux 1cl one poll reader, end seen by all"),
                m("tmux 20cl one poll reader, end seen by all"),
            ],
            tmux_reached: [
                reached("tmux 1cl reader per client, end seen by all"),
                reached("tmux 20cl reader per client, end seen by all"),
            ],
            echo_pty_raw: lat("echo pty raw, C"),
            echo_pty_cooked: lat("echo pty cooked, C"),
            echo_tmux20_one: lat("echo tmux 20cl, other client"),
            echo_tmux20_all: lat("echo tmux 20cl, all clients"),
            machine: a.machine.clone(),
            load: a.load.clone(),
        }
    }

    /// The faster of the two tmux harnesses for `i` (0: 1 client, 1: 20):
    /// the stricter bar to compare against.
    pub fn tmux_best(&self, i: usize) -> Option<f64> {
        match (self.tmux_per_client[i], self.tmux_poll[i]) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_lines_are_read_from_the_n_column() {
        let lines: Vec<String> = [
            "# nproc=2 cpu=\"X\" kernel=6 python=3.11.7 tmux 3.3a",
            "# before: machine busy 0% (steal 0%) over 1 s with nothing of ours running; loadavg 1 1 1",
            "pty cat FILE, C reader, cooked                      68.5      70.5      72.5  MB/s     n=2 (271093254 read/run, bytes ok)",
            "tmux 20cl reader per client, end seen by all        11.2      11.2      11.2  MB/s     n=1 (median 19.5 MB reached each client per run, file 268 MB; CPU: tmux server 58%, readers 52%)",
            "tmux  1cl one poll reader, end seen by all          34.1      34.1      34.1  MB/s     n=1 (median 81.3 MB)",
            "echo tmux 20cl, other client p50                   407.0     407.0     407.0  us       n=1 (1 runs x 300 samples)",
            "echo tmux 20cl, other client p99                   544.7     544.7     544.7  us       n=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let a = parse(&lines);
        assert_eq!(
            a.machine,
            "nproc=2 cpu=\"X\" kernel=6 python=3.11.7 tmux 3.3a"
        );
        assert_eq!(a.load.len(), 1);
        let t = TerminalReference::from(&a);
        assert_eq!(t.pty_cooked_mb_s, Some(70.5));
        assert_eq!(t.tmux_per_client, [None, Some(11.2)]);
        assert_eq!(t.tmux_poll, [Some(34.1), None]);
        assert_eq!(t.tmux_reached[1].as_deref(), Some("19.5 MB"));
        assert_eq!(t.echo_tmux20_one, Some((407.0, 544.7)));
        assert_eq!(t.tmux_best(1), Some(11.2));
    }
}
