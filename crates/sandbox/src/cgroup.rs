//! Per-VM cgroups: limits for all of a VM's processes together, a way to
//! find (and kill) every one of them, and counters that say when a limit
//! was hit. cgroup v2 (unified) or v1 (pids, memory and cpu hierarchies);
//! a host's groups live under `ensemble-<tag>`, the tag naming its data
//! directory, so hosts never touch each other's VMs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::Limits;

const CGROUP_FS: &str = "/sys/fs/cgroup";

/// How long killing a group's processes may take before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Kind {
    /// One directory per controller: pids, memory, cpu.
    V1 {
        pids: PathBuf,
        memory: PathBuf,
        cpu: PathBuf,
    },
    /// One directory for all.
    V2 { base: PathBuf },
}

/// A host's cgroup directories, one per hierarchy.
#[derive(Debug)]
pub(crate) struct Root {
    kind: Kind,
    /// This host's (not one left by a host that is gone).
    own: bool,
}

/// A host's groups younger than this are never taken for a dead host's:
/// it may not have joined its base yet.
const DEAD_HOST_AGE: Duration = Duration::from_secs(60);

/// Counters that grow each time a limit is hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub oom_kills: u64,
    pub pids_max: u64,
}

/// One VM's group.
#[derive(Debug)]
pub(crate) struct VmGroup {
    /// One directory per hierarchy (one for v2).
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: PathBuf,
    v2: bool,
}

impl Root {
    /// Finds writable cgroups: v2 if /sys/fs/cgroup is unified with the
    /// pids and memory controllers, else the v1 hierarchies. Only root
    /// manages them here (a delegated v2 subtree for a normal user is not
    /// used yet: such a host falls back to rlimits).
    pub(crate) fn detect(tag: &str, root: bool) -> Option<Root> {
        if !root {
            return None;
        }
        let name = format!("ensemble-{tag}");
        let unified = Path::new(CGROUP_FS);
        if let Ok(controllers) = std::fs::read_to_string(unified.join("cgroup.controllers")) {
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if !(has("pids") && has("memory")) {
                return None;
            }
            let base = unified.join(&name);
            let wanted: Vec<&str> = ["pids", "memory", "cpu"]
                .into_iter()
                .filter(|c| has(c))
                .collect();
            let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
            std::fs::create_dir_all(&base).ok()?;
            // Both the root and our base must hand the controllers down.
            for dir in [unified, base.as_path()] {
                if let Err(e) =
                    std::fs::write(dir.join("cgroup.subtree_control"), enable.trim_end())
                {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot enable cgroup controllers");
                    return None;
                }
            }
            return Some(Root {
                kind: Kind::V2 { base },
                own: true,
            });
        }
        let v1 = |ctrl: &str| {
            let dir = unified.join(ctrl);
            dir.join("cgroup.procs").exists().then(|| dir.join(&name))
        };
        let (Some(pids), Some(memory), Some(cpu)) = (v1("pids"), v1("memory"), v1("cpu")) else {
            return None;
        };
        for dir in [&pids, &memory, &cpu] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create a cgroup");
                return None;
            }
        }
        // The host joins its pids base (no limit there): a base with no
        // process of its own belongs to a host that is gone, and any host
        // may clean it up (a host killed by SIGKILL cannot remove its groups).
        if let Err(e) = std::fs::write(pids.join("cgroup.procs"), "0") {
            tracing::debug!(error = %e, "cannot join the host's own cgroup");
        }
        let root = Root {
            kind: Kind::V1 { pids, memory, cpu },
            own: true,
        };
        root.clean_dead_hosts(&name);
        Some(root)
    }

    /// Removes the groups of hosts that are gone (v1: their pids base holds
    /// no process), killing anything still in them.
    fn clean_dead_hosts(&self, own: &str) {
        let hierarchy = Path::new(CGROUP_FS);
        let Ok(entries) = std::fs::read_dir(hierarchy.join("pids")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("ensemble-") || name == own {
                continue;
            }
            let base = entry.path();
            let old = std::fs::metadata(&base)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > DEAD_HOST_AGE);
            let empty = std::fs::read_to_string(base.join("cgroup.procs"))
                .is_ok_and(|procs| procs.trim().is_empty());
            if old && empty {
                let dead = Root {
                    kind: Kind::V1 {
                        pids: base,
                        memory: hierarchy.join("memory").join(&name),
                        cpu: hierarchy.join("cpu").join(&name),
                    },
                    own: false,
                };
                let killed = dead.clean_leftovers();
                if killed > 0 {
                    tracing::warn!(
                        killed,
                        group = name,
                        "killed processes left by a host that is gone"
                    );
                }
            }
        }
    }

    pub(crate) fn version(&self) -> &'static str {
        match self.kind {
            Kind::V1 { .. } => "cgroup v1",
            Kind::V2 { .. } => "cgroup v2",
        }
    }

    fn bases(&self) -> Vec<&Path> {
        match &self.kind {
            Kind::V1 { pids, memory, cpu } => vec![pids, memory, cpu],
            Kind::V2 { base } => vec![base],
        }
    }

    /// Kills whatever is left in VM groups of a previous run and removes
    /// them; returns how many processes it killed.
    pub(crate) fn clean_leftovers(&self) -> usize {
        let mut killed = 0;
        let mut names = std::collections::BTreeSet::new();
        for base in self.bases() {
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("vm-") && entry.path().is_dir() {
                    names.insert(name);
                }
            }
        }
        for name in names {
            let group = self.group(&name);
            killed += group.kill_all();
            group.remove();
        }
        killed
    }

    fn group(&self, name: &str) -> VmGroup {
        match &self.kind {
            Kind::V1 { pids, memory, cpu } => VmGroup {
                dirs: vec![pids.join(name), memory.join(name), cpu.join(name)],
                memory: memory.join(name),
                pids: pids.join(name),
                v2: false,
            },
            Kind::V2 { base } => VmGroup {
                dirs: vec![base.join(name)],
                memory: base.join(name),
                pids: base.join(name),
                v2: true,
            },
        }
    }

    /// Creates (or reuses) VM `id`'s group with `limits`.
    pub(crate) fn create(&self, id: u64, limits: &Limits) -> std::io::Result<VmGroup> {
        let group = self.group(&format!("vm-{id}"));
        // A group left by an earlier open of this VM may still hold processes.
        group.kill_all();
        for dir in &group.dirs {
            std::fs::create_dir_all(dir)?;
        }
        let weight = limits.cpu_weight.clamp(1, 10_000);
        if group.v2 {
            let dir = &group.dirs[0];
            std::fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
            // No swap either: a hog must hit the limit, not the disk.
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            std::fs::write(dir.join("pids.max"), limits.pids.to_string())?;
            let _ = std::fs::write(dir.join("cpu.weight"), weight.to_string());
        } else {
            std::fs::write(
                group.memory.join("memory.limit_in_bytes"),
                limits.memory_bytes.to_string(),
            )?;
            let _ = std::fs::write(
                group.memory.join("memory.memsw.limit_in_bytes"),
                limits.memory_bytes.to_string(),
            );
            std::fs::write(group.pids.join("pids.max"), limits.pids.to_string())?;
            let shares = (u64::from(weight) * 1024 / 100).max(2);
            std::fs::write(group.dirs[2].join("cpu.shares"), shares.to_string())?;
        }
        Ok(group)
    }
}

impl Drop for Root {
    /// The host's base groups go with it (VM groups are gone by then; a
    /// base that still has some stays for the next start to clean).
    fn drop(&mut self) {
        if let (true, Kind::V1 { .. }) = (self.own, &self.kind) {
            // Out of the pids base, so that it can go.
            let _ = std::fs::write(Path::new(CGROUP_FS).join("pids/cgroup.procs"), "0");
        }
        for base in self.bases() {
            let _ = std::fs::remove_dir(base);
        }
    }
}

impl VmGroup {
    /// The `cgroup.procs` files a process writes `0` to, to join the VM's
    /// group itself before it starts anything.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    pub(crate) fn counters(&self) -> Counters {
        let field = |path: PathBuf, name: &str| -> u64 {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| {
                    text.lines().find_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        (k == name).then(|| v.trim().parse().ok()).flatten()
                    })
                })
                .unwrap_or(0)
        };
        let oom_file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        Counters {
            oom_kills: field(self.memory.join(oom_file), "oom_kill"),
            pids_max: field(self.pids.join("pids.events"), "max"),
        }
    }

    /// Every process in the group (the pids hierarchy has them all).
    pub(crate) fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.pids.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the group until it is empty (or a
    /// timeout); returns how many it signalled.
    pub(crate) fn kill_all(&self) -> usize {
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut signalled = std::collections::HashSet::new();
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return signalled.len();
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                signalled.insert(pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the (empty) group's directories.
    pub(crate) fn remove(&self) {
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(dir = %dir.display(), error = %e, "cgroup not removed");
                }
            }
        }
    }

    /// Kills the sandbox (PID namespace) of this group that has the most
    /// processes: the one that ran into the pids limit. Answers the host
    /// pid of its bwrap (what the host tracks) and how many processes the
    /// namespace had.
    pub(crate) fn kill_largest_sandbox(&self) -> Option<(u32, usize)> {
        let own = std::fs::read_link("/proc/self/ns/pid").ok();
        let mut by_ns: std::collections::HashMap<PathBuf, Vec<i32>> = Default::default();
        for pid in self.pids() {
            let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
                continue;
            };
            // The host's namespace holds the outer bwraps, not a sandbox.
            if Some(&ns) != own.as_ref() {
                by_ns.entry(ns).or_default().push(pid);
            }
        }
        let (_, members) = by_ns.into_iter().max_by_key(|(_, m)| m.len())?;
        let count = members.len();
        // Its init (pid 1 inside): killing it ends the whole namespace.
        let init = members.iter().copied().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("NSpid:"))
                        .and_then(|l| l.split_whitespace().last().map(|v| v == "1"))
                })
                .unwrap_or(false)
        })?;
        let outer = std::fs::read_to_string(format!("/proc/{init}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("PPid:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0);
        let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
        Some((outer, count))
    }
}
