//! The host under test: starts the release `ensemble` binary on
//! 127.0.0.1:0 with a temporary data directory and `--test-actions`, finds
//! its address from the first stdout line, reads its memory and CPU time
//! from /proc (once, or sampled through a run), and stops it.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// A running host process; killed when dropped so that a failed run leaves
/// nothing behind.
pub struct HostProcess {
    child: Child,
    pub addr: SocketAddr,
    token: String,
    // Held for its Drop: the data directory goes away with the host.
    _data_dir: TempDir,
}

/// Memory of the host process, from /proc/PID/status.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident now.
    pub rss_kib: u64,
    /// Peak resident so far.
    pub hwm_kib: u64,
    /// Threads of the process now.
    pub threads: u64,
}

/// Where the shell benches connect, and which process serves them: a host,
/// or a paired host's VM through another host's relay.
pub trait Target {
    fn ws_url(&self) -> String;
    fn token(&self) -> &str;
    /// The process whose memory and CPU time are sampled.
    fn pid(&self) -> u32;
    /// The data directory of the host whose VMs this reaches (files a shell
    /// should see go into a VM's workspace there).
    fn data_dir(&self) -> &Path;
    /// The VM a run opens, given the one it would choose: a member reached
    /// through a relay may open only the VM it was invited to.
    fn key<'a>(&'a self, own: &'a str) -> &'a str {
        own
    }
    fn cpu_secs(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.pid()))
    }
}

impl Target for HostProcess {
    fn ws_url(&self) -> String {
        HostProcess::ws_url(self)
    }
    fn token(&self) -> &str {
        HostProcess::token(self)
    }
    fn pid(&self) -> u32 {
        HostProcess::pid(self)
    }
    fn data_dir(&self) -> &Path {
        HostProcess::data_dir(self)
    }
}

impl HostProcess {
    pub fn start(bin: &Path) -> Result<HostProcess> {
        HostProcess::start_with(bin, &[])
    }

    /// Starts the host with `extra` arguments after the usual ones.
    pub fn start_with(bin: &Path, extra: &[&str]) -> Result<HostProcess> {
        let data_dir = tempfile::Builder::new()
            .prefix("ensemble-bench-")
            .tempdir()
            .context("create the host's data directory")?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--test-actions")
            .args(extra)
            // Info logs would cost the host time per connection; warnings
            // still show up on our stderr.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("host stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        if let Err(e) = reader.read_line(&mut line) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("read the host's listening line");
        }
        // Keep reading stdout so that a host that prints more never blocks
        // on a full pipe in the middle of a measurement.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        // "Ensemble host listening on ws://127.0.0.1:PORT/v1/ws (data in ...)"
        let addr: Option<SocketAddr> = line
            .split("ws://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the host did not report its address; first stdout line: {line:?}");
        };
        // Written before the host listens.
        let token = match std::fs::read_to_string(data_dir.path().join("owner-token")) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context("read the host's owner token");
            }
        };
        let host = HostProcess {
            child,
            addr,
            token,
            _data_dir: data_dir,
        };
        // The bench must never reach past loopback.
        if addr.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            bail!("the host listens on {addr}, not on 127.0.0.1");
        }
        Ok(host)
    }

    /// The host's data directory.
    pub fn data_dir(&self) -> &Path {
        self._data_dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The owner's token: the bench's clients are the owner.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn memory(&self) -> Result<Memory> {
        memory_of(self.pid())
    }

    /// Bytes under the data directory: the logs, as the host keeps them.
    pub fn data_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
                    _ => 0,
                })
                .sum()
        }
        walk(self._data_dir.path())
    }

    /// CPU seconds (user + system) the host has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.pid()))
    }

    /// Waits until the host uses under 5% of a core over 200 ms (work a
    /// run left behind, such as a terminal model still parsing, must not
    /// land in the next run) or `limit` passes; returns how long it took.
    pub async fn settle(&self, limit: Duration) -> Duration {
        const EVERY: Duration = Duration::from_millis(200);
        let t0 = Instant::now();
        loop {
            let cpu0 = self.cpu_secs();
            tokio::time::sleep(EVERY).await;
            // /proc ticks are 10 ms: at most one tick in 200 ms is "idle".
            if self.cpu_secs() - cpu0 <= 0.01 || t0.elapsed() >= limit {
                return t0.elapsed().saturating_sub(EVERY);
            }
        }
    }

    /// SIGTERM, then SIGKILL if the host has not exited within 10 s.
    pub fn stop(mut self) -> Result<()> {
        // `kill` the command: the crate forbids unsafe code, so no libc.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the host did not exit within 10 s of SIGTERM");
    }
}

impl HostProcess {
    /// SIGKILL, as a crash: the host gets no chance to say goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Memory of process `pid`, from /proc/PID/status.
pub fn memory_of(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
    })
}

/// VmRSS of a process sampled every [`RssSampler::EVERY`] on a thread of
/// its own, so that the peak of a run is seen, not only its end. A thread
/// rather than a task: the async workers are busy being the clients.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Memory>>,
}

/// What a sampler saw.
#[derive(Debug, Clone, Copy)]
pub struct RssStats {
    pub peak_kib: u64,
    pub mean_kib: u64,
    pub peak_threads: u64,
}

impl RssSampler {
    pub const EVERY: Duration = Duration::from_millis(20);

    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(m) = memory_of(pid) {
                    samples.push(m);
                }
                std::thread::sleep(Self::EVERY);
            }
            samples
        });
        RssSampler { stop, thread }
    }

    pub fn finish(self) -> Result<RssStats> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
        if samples.is_empty() {
            bail!("no memory sample of the host");
        }
        Ok(RssStats {
            peak_kib: samples.iter().map(|m| m.rss_kib).max().unwrap_or(0),
            mean_kib: samples.iter().map(|m| m.rss_kib).sum::<u64>() / samples.len() as u64,
            peak_threads: samples.iter().map(|m| m.threads).max().unwrap_or(0),
        })
    }
}

/// CPU seconds of the process whose `stat` file is at `path` (0 if
/// unreadable). Ticks are USER_HZ, which is 100 on every Linux we run on.
pub fn cpu_secs(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; fields after its ')' are
    // fixed: utime and stime are the 12th and 13th after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}
