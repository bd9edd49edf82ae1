//! The sandbox every process of an Ensemble VM runs in.
//!
//! [`Sandboxes::start`] looks once per host at what this machine offers
//! (bubblewrap, root or not, writable cgroups) and cleans up what a previous
//! run of the host left behind. [`Sandboxes::open_vm`] prepares one VM (its
//! home, its cgroup, its uid) and [`VmSandbox::launch`] turns a command into
//! the command line that runs it inside the VM's sandbox: the host spawns
//! that instead, on pipes or on a PTY, with the environment it chose.
//!
//! The isolation itself is bubblewrap's (namespaces and mounts); this crate
//! only decides its arguments, the unprivileged uid and the limits. See
//! docs/sandbox.md for what is isolated and why it is built this way.
#![forbid(unsafe_code)]

mod bwrap;
mod cgroup;
mod vm;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use vm::{AgentPaths, CommandError, Launch, LimitHit, VmSandbox, VmSpec};

/// Where the VM's workspace is mounted in its sandbox.
pub const WORKSPACE: &str = "/workspace";
/// The VM's home directory in its sandbox (`HOME`).
pub const HOME: &str = "/home/ensemble";
/// Where agents' state directories (`{stateDir}`) are mounted.
pub const AGENT_STATE: &str = "/var/lib/ensemble/agents";
/// The user name the sandbox's passwd file gives the VM's uid.
pub const USER: &str = "ensemble";
/// The uid a VM's processes get when the host runs as root: this plus the
/// VM's id, so that no two VMs of a host share a uid and none is root.
pub const DEFAULT_UID_BASE: u32 = 1_800_000_000;

/// Whether VMs run in a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// bubblewrap: the default.
    Bwrap,
    /// No sandbox: processes run as the host's user, seeing what it sees.
    None,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Bwrap => "bwrap",
            Isolation::None => "none",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bwrap" => Ok(Isolation::Bwrap),
            "none" => Ok(Isolation::None),
            _ => Err(format!("isolation {s:?} is not one of: bwrap, none")),
        }
    }
}

/// What network a VM's processes have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network (agents must reach their APIs).
    Host,
    /// None at all, not even the host's loopback.
    None,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            _ => Err(format!("network {s:?} is not one of: host, none")),
        }
    }
}

/// Per-VM limits: all the VM's processes together (cgroups), or each
/// process (the rlimit fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (RAM, page cache and its /tmp included).
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// CPU weight against the host's other work, 1 to 10000; 100 is an
    /// equal share (cgroup v2 `cpu.weight`; v1 `cpu.shares` = weight × 1024 / 100).
    pub cpu_weight: u32,
}

/// Processes and threads a VM may have unless told otherwise: plenty for
/// builds and agents, few enough that a fork bomb stays small.
pub const DEFAULT_PIDS: u64 = 2048;

impl Default for Limits {
    /// Half the machine's memory, [`DEFAULT_PIDS`], an equal CPU share.
    fn default() -> Limits {
        Limits {
            memory_bytes: (total_memory().unwrap_or(4 << 30) / 2).max(256 << 20),
            pids: DEFAULT_PIDS,
            cpu_weight: 100,
        }
    }
}

/// MemTotal from /proc/meminfo.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How a host sandboxes its VMs.
#[derive(Debug, Clone)]
pub struct Config {
    pub isolation: Isolation,
    pub network: Network,
    pub limits: Limits,
    /// See [`DEFAULT_UID_BASE`].
    pub uid_base: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            isolation: Isolation::Bwrap,
            network: Network::Host,
            limits: Limits::default(),
            uid_base: DEFAULT_UID_BASE,
        }
    }
}

/// Why a VM's sandbox cannot be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "this host cannot start VMs: the sandbox tool bubblewrap (bwrap) is not installed. \
         Install it (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap) \
         and restart the host, or start it with --isolation none to run VMs without a sandbox"
    )]
    BwrapMissing,
    #[error(
        "this host runs as root but cannot find setpriv (util-linux) to drop to an unprivileged uid; \
         install util-linux (Debian/Ubuntu: sudo apt-get install util-linux)"
    )]
    SetprivMissing,
    #[error("cannot prepare the VM's sandbox: {0}")]
    Setup(String),
}

/// What enforces the limits on this host.
#[derive(Debug)]
enum Limiter {
    /// Per-VM cgroups (root): all processes of a VM together.
    Cgroups(cgroup::Root),
    /// Per-process rlimits set by prlimit (no writable cgroup).
    Rlimits(PathBuf),
    /// Nothing (no sandbox, or not even prlimit).
    Off,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    bwrap: Option<PathBuf>,
    setpriv: Option<PathBuf>,
    env: Option<PathBuf>,
    /// The host runs as root: bwrap runs privileged and the command drops
    /// to the VM's uid with setpriv inside.
    root: bool,
    limiter: Limiter,
    layout: bwrap::HostLayout,
}

/// The sandboxing of one host; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sandboxes {
    shared: Arc<Shared>,
}

impl Sandboxes {
    /// Detects what the machine offers and kills what a previous run of a
    /// host with the same data directory left running (found by cgroup).
    /// Never fails: a host without bwrap starts, but [`Sandboxes::open_vm`]
    /// refuses with [`SandboxError::BwrapMissing`].
    pub fn start(config: Config, data_dir: &Path) -> Sandboxes {
        let root = nix::unistd::geteuid().is_root();
        let sandboxed = config.isolation == Isolation::Bwrap;
        // ENSEMBLE_BWRAP names another bwrap (an unusual install; tests use
        // a missing one to see the refusal).
        let bwrap = match std::env::var_os("ENSEMBLE_BWRAP") {
            Some(path) if sandboxed => Some(PathBuf::from(path)).filter(|p| is_executable(p)),
            _ => sandboxed.then(|| find_program("bwrap")).flatten(),
        };
        let setpriv = (sandboxed && root)
            .then(|| find_program("setpriv"))
            .flatten();
        let limiter = if !sandboxed {
            Limiter::Off
        } else {
            let tag = data_dir_tag(data_dir);
            match cgroup::Root::detect(&tag, root) {
                Some(cgroups) => {
                    let killed = cgroups.clean_leftovers();
                    if killed > 0 {
                        tracing::warn!(
                            killed,
                            "killed processes a previous run of this host left in its VM cgroups"
                        );
                    }
                    Limiter::Cgroups(cgroups)
                }
                None => match find_program("prlimit") {
                    Some(prlimit) => Limiter::Rlimits(prlimit),
                    None => Limiter::Off,
                },
            }
        };
        let sandboxes = Sandboxes {
            shared: Arc::new(Shared {
                layout: bwrap::HostLayout::detect(),
                config,
                env: sandboxed.then(|| find_program("env")).flatten(),
                bwrap,
                setpriv,
                root,
                limiter,
            }),
        };
        sandboxes.log_summary();
        sandboxes
    }

    pub fn isolation(&self) -> Isolation {
        self.shared.config.isolation
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Which mechanism enforces the limits: `cgroup v1`, `cgroup v2`,
    /// `rlimits` or `none`.
    pub fn limiter(&self) -> &'static str {
        match &self.shared.limiter {
            Limiter::Cgroups(root) => root.version(),
            Limiter::Rlimits(_) => "rlimits",
            Limiter::Off => "none",
        }
    }

    /// Whether VMs can be opened: the error they would get, if not.
    pub fn check(&self) -> Result<(), SandboxError> {
        if self.shared.config.isolation == Isolation::None {
            return Ok(());
        }
        if self.shared.bwrap.is_none() {
            return Err(SandboxError::BwrapMissing);
        }
        if self.shared.root && self.shared.setpriv.is_none() {
            return Err(SandboxError::SetprivMissing);
        }
        Ok(())
    }

    fn log_summary(&self) {
        let s = &self.shared;
        if s.config.isolation == Isolation::None {
            tracing::warn!(
                "!!! --isolation none: VMs run WITHOUT a sandbox. Every process, shell and agent \
                 of every VM runs as this host's user and can read its data directory (the owner \
                 token, every VM's log) and everything else that user can. Anyone in control of \
                 a VM can take over the host. Every participant is warned."
            );
            return;
        }
        if let Err(e) = self.check() {
            tracing::error!("{e}");
            return;
        }
        let l = &s.config.limits;
        tracing::info!(
            bwrap = %s.bwrap.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            uid = if s.root { "a uid per VM (host is root)" } else { "the host's user, mapped in a user namespace" },
            network = s.config.network.as_str(),
            limits = self.limiter(),
            memory_mib = l.memory_bytes >> 20,
            pids = l.pids,
            cpu_weight = l.cpu_weight,
            "VMs run sandboxed (bubblewrap)"
        );
        if matches!(s.limiter, Limiter::Off) {
            tracing::warn!(
                "no cgroup is writable and prlimit is missing: VM limits are not enforced"
            );
        } else if matches!(s.limiter, Limiter::Rlimits(_)) {
            tracing::warn!(
                "no writable cgroup: VM limits are per-process rlimits (memory per process, \
                 processes per user); no CPU share"
            );
        }
    }

    /// Prepares VM `spec.id`'s sandbox: its home, state and passwd files,
    /// its cgroup, file ownership.
    pub fn open_vm(&self, spec: VmSpec<'_>) -> Result<VmSandbox, SandboxError> {
        self.check()?;
        VmSandbox::open(self.shared.clone(), spec)
    }
}

/// SIGKILLs a sandbox by the host pid of its bwrap (what the host
/// spawned): see [`end_sandbox`].
pub fn kill_sandbox(pid: u32) {
    end_sandbox(pid, nix::sys::signal::Signal::SIGKILL);
}

/// Ends the sandbox whose bwrap has host pid `pid`: `signal` to the
/// bwrap's process group (what the exit then reports), then SIGKILL to the
/// sandbox's first process (the bwrap's child, pid 1 of its namespace),
/// which takes every process of the namespace with it. bwrap gives that
/// process a parent-death signal only once the sandbox is set up, so a
/// bwrap ended in its first milliseconds would otherwise leave it running.
/// The child is looked up before the signal, while it is still the
/// bwrap's. Without a sandbox, `pid`'s children go the same way.
pub fn end_sandbox(pid: u32, signal: nix::sys::signal::Signal) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    let children = children_of(pid);
    if let Err(e) = killpg(Pid::from_raw(pid), signal) {
        if e == nix::errno::Errno::ESRCH {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
    for child in children {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
}

/// Every process of the machine with the fields of its /proc stat after the
/// command name (which is in parentheses and may hold spaces): state, ppid,
/// pgrp, session, ...
pub fn proc_stats() -> Vec<(i32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((_, rest)) = stat.rsplit_once(')') {
            out.push((pid, rest.split_whitespace().map(str::to_owned).collect()));
        }
    }
    out
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    proc_stats()
        .into_iter()
        .filter(|(_, f)| f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(pid))
        .map(|(child, _)| child)
        .collect()
}

/// A short name for a data directory, so that two hosts with different
/// data directories never touch each other's cgroups.
fn data_dir_tag(data_dir: &Path) -> String {
    use sha2::Digest;
    let path = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_owned());
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// `name` on the host's PATH (or the usual system directories).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A VM's name as a hostname: lowercase letters, digits and dashes, at most
/// 63 characters; `vm` if nothing is left.
pub fn hostname(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.trim_end_matches('-').chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "vm".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(hostname("My Project/main"), "my-project-main");
        assert_eq!(hostname("--"), "vm");
        assert_eq!(hostname("ünï"), "n");
        assert_eq!(hostname(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn settings_parse() {
        assert_eq!("none".parse::<Isolation>(), Ok(Isolation::None));
        assert!("docker".parse::<Isolation>().is_err());
        assert_eq!("none".parse::<Network>(), Ok(Network::None));
        assert!(Limits::default().memory_bytes >= 256 << 20);
    }
}
