//! bubblewrap's command line for one process of a VM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The system directories of this host as the sandbox mirrors them: /usr
/// and /etc read-only, and /bin, /lib... as the symlinks or directories
/// they are here (merged /usr or not).
#[derive(Debug, Clone)]
pub(crate) struct HostLayout {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    Symlink { target: PathBuf, at: PathBuf },
    ReadOnly(PathBuf),
}

/// Top-level directories that hold programs and libraries.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

impl HostLayout {
    pub(crate) fn detect() -> HostLayout {
        let mut entries = vec![
            Entry::ReadOnly("/usr".into()),
            Entry::ReadOnly("/etc".into()),
        ];
        for dir in SYSTEM_DIRS {
            let Ok(meta) = std::fs::symlink_metadata(dir) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                if let Ok(target) = std::fs::read_link(dir) {
                    entries.push(Entry::Symlink {
                        target,
                        at: (*dir).into(),
                    });
                }
            } else if meta.is_dir() {
                entries.push(Entry::ReadOnly((*dir).into()));
            }
        }
        // DNS: /etc/resolv.conf often points into /run, which the sandbox
        // does not have; bind the file it points to, at its place.
        if let Ok(real) = std::fs::canonicalize("/etc/resolv.conf") {
            if !real.starts_with("/etc") && !real.starts_with("/usr") {
                entries.push(Entry::ReadOnly(real));
            }
        }
        HostLayout { entries }
    }

    /// Whether `path` (absolute, as the sandbox sees it) is a system path
    /// the sandbox shows as the host has it.
    pub(crate) fn shows(&self, path: &Path) -> bool {
        self.entries.iter().any(|e| match e {
            Entry::ReadOnly(dir) => path.starts_with(dir),
            Entry::Symlink { at, .. } => path.starts_with(at),
        })
    }
}

/// One process's sandbox.
pub(crate) struct Args<'a> {
    pub layout: &'a HostLayout,
    pub hostname: &'a str,
    pub workspace: &'a Path,
    pub home: &'a Path,
    pub agent_state: &'a Path,
    pub passwd: &'a Path,
    pub group: &'a Path,
    /// Extra host paths shown read-only at the same place (an agent's files).
    pub read_only: &'a [PathBuf],
    /// The working directory, as the sandbox sees it.
    pub cwd: &'a Path,
    pub network: bool,
    /// On pipes (not a PTY): a session of its own, so that nothing in the
    /// sandbox can push input into the host's terminal (TIOCSTI).
    pub new_session: bool,
    /// Root host: bwrap runs privileged and setpriv drops to `uid` inside.
    /// Otherwise: a user namespace maps the host's user to `uid`.
    pub root: bool,
    pub uid: u32,
    pub setpriv: Option<&'a Path>,
    /// `env`, to drop the PWD bwrap sets: the command gets exactly the
    /// environment the host chose.
    pub env: Option<&'a Path>,
}

fn push(out: &mut Vec<OsString>, items: &[&str]) {
    out.extend(items.iter().map(OsString::from));
}

/// Creates `dest`'s missing parents as world-readable directories first:
/// bwrap would make them 0700 (owned by root when it runs as root), which
/// the VM's uid could not enter.
fn parents(out: &mut Vec<OsString>, made: &mut Vec<PathBuf>, dest: &Path) {
    let mut missing: Vec<&Path> = dest
        .ancestors()
        .skip(1)
        .filter(|a| a.parent().is_some() && !made.iter().any(|m| m == a))
        .collect();
    missing.reverse();
    for dir in missing {
        push(out, &["--perms", "0755", "--dir"]);
        out.push(dir.into());
        made.push(dir.to_owned());
    }
}

fn push_paths(out: &mut Vec<OsString>, flag: &str, src: &Path, dest: &Path) {
    out.push(flag.into());
    out.push(src.into());
    out.push(dest.into());
}

impl Args<'_> {
    /// bwrap's arguments, up to and including `--`; the command follows.
    pub(crate) fn build(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(64);
        push(
            &mut a,
            &[
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup-try",
                // The sandbox goes when its parent (the host) goes, even on
                // SIGKILL; its PID namespace takes every process with it.
                "--die-with-parent",
            ],
        );
        if !self.network {
            a.push("--unshare-net".into());
        }
        if self.new_session {
            a.push("--new-session".into());
        }
        let id = self.uid.to_string();
        if !self.root {
            push(&mut a, &["--unshare-user", "--uid", &id, "--gid", &id]);
        }
        push(&mut a, &["--hostname", self.hostname]);
        for entry in &self.layout.entries {
            match entry {
                Entry::ReadOnly(dir) => push_paths(&mut a, "--ro-bind-try", dir, dir),
                Entry::Symlink { target, at } => push_paths(&mut a, "--symlink", target, at),
            }
        }
        push_paths(&mut a, "--ro-bind", self.passwd, Path::new("/etc/passwd"));
        push_paths(&mut a, "--ro-bind", self.group, Path::new("/etc/group"));
        push(&mut a, &["--proc", "/proc", "--dev", "/dev"]);
        push(&mut a, &["--perms", "1777", "--tmpfs", "/tmp"]);
        push(&mut a, &["--perms", "1777", "--tmpfs", "/var/tmp"]);
        // Directories the system binds above made already.
        let mut made: Vec<PathBuf> = vec!["/usr".into(), "/etc".into(), "/var/tmp".into()];
        let own = [
            (self.workspace, Path::new(crate::WORKSPACE)),
            (self.home, Path::new(crate::HOME)),
            (self.agent_state, Path::new(crate::AGENT_STATE)),
        ];
        for (src, dest) in own {
            parents(&mut a, &mut made, dest);
            push_paths(&mut a, "--bind", src, dest);
        }
        for path in self.read_only {
            if !path.is_absolute() || self.layout.shows(path) {
                continue;
            }
            parents(&mut a, &mut made, path);
            push_paths(&mut a, "--ro-bind-try", path, path);
        }
        a.push("--chdir".into());
        a.push(self.cwd.into());
        if self.root {
            // Only what setpriv needs to drop to the VM's uid; it clears
            // them all (and the bounding set) before the command runs.
            push(
                &mut a,
                &[
                    "--cap-add",
                    "CAP_SETUID",
                    "--cap-add",
                    "CAP_SETGID",
                    "--cap-add",
                    "CAP_SETPCAP",
                ],
            );
        }
        a.push("--".into());
        if let (true, Some(setpriv)) = (self.root, self.setpriv) {
            a.push(setpriv.into());
            push(
                &mut a,
                &[
                    &format!("--reuid={id}"),
                    &format!("--regid={id}"),
                    "--clear-groups",
                    "--bounding-set=-all",
                    "--inh-caps=-all",
                    "--no-new-privs",
                    "--",
                ],
            );
        }
        if let Some(env) = self.env {
            a.push(env.into());
            push(&mut a, &["-u", "PWD", "--"]);
        }
        a
    }
}
