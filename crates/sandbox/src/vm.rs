//! One VM's sandbox: its directories, its uid, its cgroup, and the command
//! lines of the processes it runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::bwrap;
use crate::cgroup::{Counters, VmGroup};
use crate::{Isolation, Limiter, SandboxError, Shared};

/// What [`crate::Sandboxes::open_vm`] needs to know about a VM.
pub struct VmSpec<'a> {
    pub id: u64,
    /// Its name (the hostname inside, sanitized).
    pub name: &'a str,
    /// Its directory in the data dir: `home/`, `agents/` and `sandbox/` are
    /// created there.
    pub dir: &'a Path,
    /// Its workspace (an existing directory).
    pub workspace: &'a Path,
}

/// Why a command cannot start in the sandbox (checked before starting it:
/// bwrap itself would start and only then fail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command not found")]
    NotFound,
    #[error("permission denied")]
    PermissionDenied,
}

/// A limit the VM ran into since the last [`VmSandbox::poll_limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitHit {
    /// The kernel killed `kills` processes for memory (out of memory in
    /// the VM's group).
    Memory { max_bytes: u64, kills: u64 },
    /// A fork failed at the process limit; the sandbox with the most
    /// processes was killed: `pid` is its host pid (the process or shell
    /// the host started), `processes` how many it had.
    Pids {
        max: u64,
        pid: Option<u32>,
        processes: usize,
    },
}

/// A VM's sandbox. Dropping it kills whatever is left in its cgroup.
pub struct VmSandbox {
    shared: Arc<Shared>,
    hostname: String,
    workspace: PathBuf,
    home: PathBuf,
    agents: PathBuf,
    passwd: PathBuf,
    group: PathBuf,
    /// The uid the VM's processes run as: the host uid when the host is
    /// root, else the uid inside the user namespace.
    uid: u32,
    cgroup: Option<VmGroup>,
    seen: Mutex<Counters>,
    /// The host's data directory: never shown to the VM, whatever an agent
    /// command names.
    data_dir: PathBuf,
}

/// What an agent's command needs besides the system: host paths to show
/// read-only (at the same place), and a directory to put first on PATH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentPaths {
    pub read_only: Vec<PathBuf>,
    pub bin_dir: Option<PathBuf>,
}

impl std::fmt::Debug for VmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmSandbox")
            .field("hostname", &self.hostname)
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

fn setup_err(what: &str, path: &Path, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup(format!("{what} {}: {e}", path.display()))
}

impl VmSandbox {
    pub(crate) fn open(shared: Arc<Shared>, spec: VmSpec<'_>) -> Result<VmSandbox, SandboxError> {
        let sandboxed = shared.config.isolation == Isolation::Bwrap;
        let uid = if shared.root {
            let id = u32::try_from(spec.id).unwrap_or(u32::MAX);
            shared.config.uid_base.saturating_add(id)
        } else {
            1000
        };
        let home = spec.dir.join("home");
        let agents = spec.dir.join("agents");
        let meta = spec.dir.join("sandbox");
        for dir in [&home, &agents, &meta] {
            std::fs::create_dir_all(dir).map_err(|e| setup_err("cannot create", dir, e))?;
        }
        let passwd = meta.join("passwd");
        let group = meta.join("group");
        let mut cgroup = None;
        if sandboxed {
            // The sandbox's own user database: the VM's uid has a name and
            // a home, and nothing of the host's accounts shows.
            let user = format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n{u}:x:{uid}:{uid}:Ensemble VM:{h}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                u = crate::USER,
                h = crate::HOME,
            );
            let groups = format!(
                "root:x:0:\n{u}:x:{uid}:\nnogroup:x:65534:\n",
                u = crate::USER
            );
            std::fs::write(&passwd, user).map_err(|e| setup_err("cannot write", &passwd, e))?;
            std::fs::write(&group, groups).map_err(|e| setup_err("cannot write", &group, e))?;
            if shared.root {
                for dir in [spec.workspace, home.as_path(), agents.as_path()] {
                    own_tree(dir, uid).map_err(|e| setup_err("cannot hand over", dir, e))?;
                }
            }
            if let Limiter::Cgroups(root) = &shared.limiter {
                let created = root.create(spec.id, &shared.config.limits).map_err(|e| {
                    SandboxError::Setup(format!("cannot create the VM's cgroup: {e}"))
                })?;
                cgroup = Some(created);
            }
        }
        let seen = Mutex::new(cgroup.as_ref().map(VmGroup::counters).unwrap_or_default());
        let data_dir = spec
            .dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(spec.dir)
            .to_owned();
        Ok(VmSandbox {
            data_dir,
            hostname: crate::hostname(spec.name),
            workspace: spec.workspace.to_owned(),
            home,
            agents,
            passwd,
            group,
            uid,
            cgroup,
            seen,
            shared,
        })
    }

    /// Whether processes run sandboxed (false with `--isolation none`).
    pub fn isolated(&self) -> bool {
        self.shared.config.isolation == Isolation::Bwrap
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The workspace as processes see it: `/workspace`, or its host path
    /// without a sandbox.
    pub fn workspace_view(&self) -> &Path {
        if self.isolated() {
            Path::new(crate::WORKSPACE)
        } else {
            &self.workspace
        }
    }

    /// `HOME` of the VM's processes: the VM's own home in the sandbox; the
    /// workspace without one (as before sandboxes existed).
    pub fn home_view(&self) -> &Path {
        if self.isolated() {
            Path::new(crate::HOME)
        } else {
            &self.workspace
        }
    }

    /// The state directory of agent type `name` (a plain name): created on
    /// the host, answered as processes see it.
    pub fn agent_state(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let host = self.agents.join(name);
        std::fs::create_dir_all(&host).map_err(|e| setup_err("cannot create", &host, e))?;
        self.own(&host);
        Ok(if self.isolated() {
            Path::new(crate::AGENT_STATE).join(name)
        } else {
            host
        })
    }

    /// The files an agent's command needs (see [`AgentPaths`]): a program
    /// found on the host's PATH outside the system directories (Node from
    /// nvm, say) brings its install prefix; an absolute path among the
    /// command and its arguments brings itself, or the whole `node_modules`
    /// tree it lies in. Nothing in or above the data directory.
    pub fn agent_paths(&self, command: &str, args: &[String]) -> AgentPaths {
        let mut out = AgentPaths::default();
        if !self.isolated() {
            return out;
        }
        let layout = &self.shared.layout;
        let add = |path: PathBuf, out: &mut AgentPaths| {
            let safe = path != Path::new("/")
                && !path.starts_with(&self.data_dir)
                && !self.data_dir.starts_with(&path)
                && !layout.shows(&path);
            if safe && !out.read_only.contains(&path) {
                out.read_only.push(path);
            }
        };
        if !command.contains('/') {
            if let Some(found) = crate::find_program(command) {
                if let Some(bin) = found.parent().filter(|b| !layout.shows(b)) {
                    let prefix = match bin.file_name() {
                        Some(name) if name == "bin" => bin.parent().unwrap_or(bin),
                        _ => bin,
                    };
                    add(prefix.to_owned(), &mut out);
                    out.bin_dir = Some(bin.to_owned());
                }
            }
        }
        let paths = std::iter::once(command).chain(args.iter().map(String::as_str));
        for arg in paths {
            let path = Path::new(arg);
            if path.is_absolute() && path.exists() {
                add(package_root(path), &mut out);
            }
        }
        out
    }

    /// Hands a file the host created for the VM (an agent's
    /// `fs/write_text_file`) to the VM's uid, so its processes can change it.
    pub fn own(&self, path: &Path) {
        if self.isolated() && self.shared.root {
            if let Err(e) = std::os::unix::fs::lchown(path, Some(self.uid), Some(self.uid)) {
                tracing::debug!(path = %path.display(), error = %e, "cannot hand a file to the VM");
            }
        }
    }

    /// Whether `command` would start: looked up on `path_var` (the
    /// process's PATH) when it has no slash, resolved against `cwd`
    /// otherwise; as the sandbox sees the file system.
    pub fn check_command(
        &self,
        command: &str,
        path_var: Option<&str>,
        cwd: &Path,
    ) -> Result<(), CommandError> {
        let candidates: Vec<PathBuf> = if command.contains('/') {
            vec![cwd.join(command)]
        } else {
            path_var
                .unwrap_or("/usr/bin:/bin")
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cwd.join(d).join(command))
                .collect()
        };
        let mut denied = false;
        for view in candidates {
            let view = normalize(&view);
            let Some((host, within)) = self.to_host(&view) else {
                continue;
            };
            let Ok(real) = std::fs::canonicalize(&host) else {
                continue;
            };
            // A symlink that leads elsewhere: the sandbox may resolve it
            // differently; let it decide rather than look at the host's file.
            if !real.starts_with(&within) && !self.shared.layout.shows(&real) {
                return Ok(());
            }
            match std::fs::metadata(&real) {
                Ok(m) if m.is_file() => {
                    use std::os::unix::fs::PermissionsExt;
                    if m.permissions().mode() & 0o111 != 0 {
                        return Ok(());
                    }
                    denied = true;
                }
                Ok(_) => denied |= command.contains('/'),
                Err(_) => {}
            }
        }
        if denied {
            Err(CommandError::PermissionDenied)
        } else {
            Err(CommandError::NotFound)
        }
    }

    /// Where a path the sandbox sees (normalized) lies on the host, if the
    /// sandbox shows host files there (not /tmp, /proc or /dev), with the
    /// host directory it must stay in.
    fn to_host(&self, view: &Path) -> Option<(PathBuf, PathBuf)> {
        if !self.isolated() {
            return Some((view.to_owned(), PathBuf::from("/")));
        }
        let mounts = [
            (Path::new(crate::WORKSPACE), self.workspace.as_path()),
            (Path::new(crate::HOME), self.home.as_path()),
            (Path::new(crate::AGENT_STATE), self.agents.as_path()),
        ];
        for (at, host) in mounts {
            if let Ok(rest) = view.strip_prefix(at) {
                let host = host.canonicalize().unwrap_or_else(|_| host.to_owned());
                return Some((host.join(rest), host));
            }
        }
        self.shared
            .layout
            .shows(view)
            .then(|| (view.to_owned(), view.to_owned()))
    }

    /// The command line that runs `command args` in this VM's sandbox,
    /// in `cwd` (as the sandbox sees it). `terminal`: on a PTY, whose
    /// session the spawner already set up. `read_only`: host paths the
    /// command needs besides the system (an agent's own files), shown at
    /// the same place.
    pub fn launch(
        &self,
        command: &str,
        args: &[String],
        cwd: &Path,
        terminal: bool,
        read_only: &[PathBuf],
    ) -> Launch {
        if !self.isolated() {
            return Launch {
                program: command.into(),
                args: args.iter().map(OsString::from).collect(),
                cwd: cwd.to_owned(),
            };
        }
        let shared = &self.shared;
        let mut argv: Vec<OsString> = Vec::with_capacity(96);
        match (&shared.limiter, &self.cgroup) {
            (Limiter::Cgroups(_), Some(group)) => {
                // Joins the VM's group before bwrap can fork, so nothing of
                // the VM ever runs outside it. dash exports PWD: unset it,
                // the environment stays what the host chose.
                let mut script = String::new();
                for file in group.procs_files() {
                    script.push_str(&format!("echo 0 > '{}' && ", file.display()));
                }
                script.push_str("unset PWD && exec \"$@\"");
                argv.extend(["/bin/sh".into(), "-c".into(), script.into(), "sh".into()]);
            }
            (Limiter::Rlimits(prlimit), _) => {
                let l = &shared.config.limits;
                argv.push(prlimit.into());
                argv.push(format!("--nproc={0}:{0}", l.pids).into());
                argv.push(format!("--data={0}:{0}", l.memory_bytes).into());
                argv.push("--".into());
            }
            _ => {}
        }
        if let Some(bwrap) = &shared.bwrap {
            argv.push(bwrap.into());
        }
        argv.extend(
            bwrap::Args {
                layout: &shared.layout,
                hostname: &self.hostname,
                workspace: &self.workspace,
                home: &self.home,
                agent_state: &self.agents,
                passwd: &self.passwd,
                group: &self.group,
                read_only,
                cwd,
                network: shared.config.network == crate::Network::Host,
                new_session: !terminal,
                root: shared.root,
                uid: self.uid,
                setpriv: shared.setpriv.as_deref(),
                env: shared.env.as_deref(),
            }
            .build(),
        );
        argv.push(command.into());
        argv.extend(args.iter().map(OsString::from));
        let mut argv = argv.into_iter();
        Launch {
            program: argv.next().unwrap_or_default(),
            args: argv.collect(),
            // The launcher's own directory: nothing of the host's.
            cwd: PathBuf::from("/"),
        }
    }

    /// Limits hit since the last call; a sandbox that ran into the process
    /// limit is killed here. Cheap (reads two small files): call it a few
    /// times a second while the VM runs.
    pub fn poll_limits(&self) -> Vec<LimitHit> {
        let Some(group) = &self.cgroup else {
            return Vec::new();
        };
        let now = group.counters();
        let Ok(mut seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut hits = Vec::new();
        let limits = &self.shared.config.limits;
        if now.oom_kills > seen.oom_kills {
            hits.push(LimitHit::Memory {
                max_bytes: limits.memory_bytes,
                kills: now.oom_kills - seen.oom_kills,
            });
        }
        if now.pids_max > seen.pids_max {
            let killed = group.kill_largest_sandbox();
            hits.push(LimitHit::Pids {
                max: limits.pids,
                pid: killed.map(|(pid, _)| pid).filter(|p| *p > 0),
                processes: killed.map(|(_, n)| n).unwrap_or(0),
            });
        }
        *seen = now;
        hits
    }

    /// Kills every process left in the VM's cgroup and removes it; also
    /// done on drop.
    pub fn close(&mut self) {
        if let Some(group) = self.cgroup.take() {
            let killed = group.kill_all();
            if killed > 0 {
                tracing::debug!(killed, "killed processes left in a closing VM's cgroup");
            }
            group.remove();
        }
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        self.close();
    }
}

/// The outermost `node_modules` directory `path` lies in (Node resolves a
/// package's dependencies up that tree), or `path` itself.
fn package_root(path: &Path) -> PathBuf {
    path.ancestors()
        .filter(|a| a.file_name().is_some_and(|n| n == "node_modules"))
        .last()
        .unwrap_or(path)
        .to_owned()
}

/// `path` without `.` and `..` components (lexically, as the kernel would
/// in a directory with no symlinks).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// A command line: run `program args` with the launcher in `cwd`.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
}

/// Gives `dir` and everything under it to `uid` (symlinks themselves, not
/// what they point to), unless `dir` belongs to it already: a workspace
/// made before sandboxes existed, or by the host as root.
fn own_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(dir)?.uid() == uid {
        return Ok(());
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Sandboxes};

    fn vm(config: Config) -> (tempfile::TempDir, VmSandbox) {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("vms/1/workspace");
        std::fs::create_dir_all(&ws).unwrap();
        let sandboxes = Sandboxes::start(config, dir.path());
        let vm = sandboxes
            .open_vm(VmSpec {
                id: 1,
                name: "Unit Test",
                dir: &dir.path().join("vms/1"),
                workspace: &ws,
            })
            .unwrap();
        (dir, vm)
    }

    #[test]
    fn commands_are_looked_up_as_the_sandbox_sees_them() {
        if crate::find_program("bwrap").is_none() {
            return;
        }
        let (dir, vm) = vm(Config::default());
        let ws = Path::new(crate::WORKSPACE);
        assert_eq!(vm.check_command("sh", Some("/usr/bin:/bin"), ws), Ok(()));
        assert_eq!(
            vm.check_command("no-such-command", Some("/usr/bin"), ws),
            Err(CommandError::NotFound)
        );
        std::fs::write(dir.path().join("vms/1/workspace/script"), "#!/bin/sh\n").unwrap();
        assert_eq!(
            vm.check_command("./script", None, ws),
            Err(CommandError::PermissionDenied)
        );
        // The data dir is not in the sandbox: its files are not found.
        let outside = dir.path().join("vms/1/home/../sandbox/passwd");
        assert!(vm
            .check_command(&outside.display().to_string(), None, ws)
            .is_err());
        let launch = vm.launch("ls", &[], ws, false, &[]);
        let argv: Vec<String> = launch
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(argv.iter().any(|a| a == "unit-test"), "{argv:?}");
        assert_eq!(argv.last().map(String::as_str), Some("ls"));
    }

    #[test]
    fn agents_bring_their_files_but_never_the_data_dir() {
        if crate::find_program("bwrap").is_none() {
            return;
        }
        let (dir, vm) = vm(Config::default());
        let elsewhere = tempfile::tempdir().unwrap();
        let pkg = elsewhere.path().join("agent-pkg/node_modules/@a/b/dist");
        let script = pkg.join("index.js");
        let data_file = dir.path().join("vms/1/sandbox/passwd");
        let paths = vm.agent_paths(
            "node",
            &[
                script.display().to_string(),
                data_file.display().to_string(),
                "/usr/bin/env".into(),
                "--flag".into(),
            ],
        );
        // Missing paths and system paths are not bound; the data dir never.
        assert!(paths.read_only.is_empty(), "{paths:?}");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(&script, "").unwrap();
        let paths = vm.agent_paths("node", &[script.display().to_string()]);
        assert_eq!(paths.read_only.len(), 1);
        assert!(paths.read_only[0].ends_with("agent-pkg/node_modules"));
        let inside = vm.agent_paths(&data_file.display().to_string(), &[]);
        assert!(inside.read_only.is_empty(), "{inside:?}");
    }

    #[test]
    fn without_isolation_commands_run_as_given() {
        let (_dir, vm) = vm(Config {
            isolation: Isolation::None,
            ..Config::default()
        });
        let launch = vm.launch("ls", &["-l".into()], Path::new("/x"), false, &[]);
        assert_eq!(launch.program, "ls");
        assert_eq!(launch.cwd, Path::new("/x"));
        assert!(!vm.isolated());
    }
}
