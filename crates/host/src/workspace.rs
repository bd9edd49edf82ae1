//! A VM's workspace: the directory its processes and shells run in, the
//! working directories allowed inside it, and the clean environment they get.
//! The host's own environment never reaches them.
//!
//! Paths have two sides: the host's (where the files are) and the VM's view
//! (what its sandboxed processes see: `/workspace/...`). Everything users
//! and agents see or send is in the VM's view; without a sandbox both are
//! the host's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::vm::VmError;

/// Most variables a caller may add.
const MAX_ENV_VARS: usize = 256;

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    /// The root as the VM's processes see it.
    view: PathBuf,
    /// `HOME` of the VM's processes, in their view.
    home: PathBuf,
}

impl Workspace {
    /// Creates the directory if missing. Until [`Workspace::set_view`], the
    /// VM's view is the host's and `HOME` is the workspace.
    pub fn open(root: PathBuf) -> std::io::Result<Workspace> {
        std::fs::create_dir_all(&root)?;
        let root = root.canonicalize()?;
        Ok(Workspace {
            view: root.clone(),
            home: root.clone(),
            root,
        })
    }

    /// Where the VM's processes see the workspace, and their `HOME`.
    pub fn set_view(&mut self, view: PathBuf, home: PathBuf) {
        self.view = view;
        self.home = home;
    }

    /// The host's path of the workspace.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The workspace as the VM sees it (`/workspace` in a sandbox).
    pub fn view(&self) -> &Path {
        &self.view
    }

    /// A host path inside the workspace, as the VM sees it.
    pub fn to_view(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.root) {
            Ok(rest) if rest.as_os_str().is_empty() => self.view.clone(),
            Ok(rest) => self.view.join(rest),
            Err(_) => host.to_owned(),
        }
    }

    /// A path a user or agent sent, on the host: relative ones are taken
    /// from the workspace root, absolute ones in the VM's view are mapped
    /// (host paths inside the workspace, from logs of older hosts or of
    /// runs without a sandbox, still work).
    fn to_host(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() && !p.starts_with(&self.root) {
            // The sandbox's view also when this host runs without one: a
            // session created sandboxed resumes after `--isolation none`.
            let views = [self.view.as_path(), Path::new(ensemble_sandbox::WORKSPACE)];
            for view in views {
                if let Ok(rest) = p.strip_prefix(view) {
                    return self.root.join(rest);
                }
            }
        }
        self.root.join(p)
    }

    /// Resolves a working directory: relative paths are taken from the
    /// workspace root; the result must exist, be a directory and lie inside
    /// the workspace (after following symlinks). Answers it in the VM's view.
    pub fn resolve_cwd(&self, cwd: Option<&str>) -> Result<PathBuf, VmError> {
        let Some(cwd) = cwd else {
            return Ok(self.view.clone());
        };
        let joined = self.to_host(cwd);
        let real = joined.canonicalize().map_err(|e| {
            VmError::InvalidArgs(format!("cwd {cwd:?} does not exist in the workspace ({e})"))
        })?;
        if !real.starts_with(&self.root) {
            return Err(VmError::InvalidArgs(format!(
                "cwd {cwd:?} is outside the VM's workspace"
            )));
        }
        if !real.is_dir() {
            return Err(VmError::InvalidArgs(format!(
                "cwd {cwd:?} is not a directory"
            )));
        }
        Ok(self.to_view(&real))
    }

    /// Resolves a file an agent reads or writes: absolute (in the VM's
    /// view), or relative to the workspace root; after following symlinks it
    /// must lie inside the workspace. A file to write may not exist yet, but
    /// its directory must. Answers the host's path.
    pub fn resolve_file(&self, path: &str, for_write: bool) -> Result<PathBuf, VmError> {
        let joined = self.to_host(path);
        let outside = || VmError::Forbidden(format!("{path:?} is outside the VM's workspace"));
        let real = match joined.canonicalize() {
            Ok(real) => real,
            // A dangling symlink would be followed by the write: refuse it.
            Err(_) if for_write && joined.symlink_metadata().is_err() => {
                let (Some(parent), Some(name)) = (joined.parent(), joined.file_name()) else {
                    return Err(outside());
                };
                let parent = parent.canonicalize().map_err(|e| {
                    VmError::InvalidArgs(format!("the directory of {path:?} does not exist ({e})"))
                })?;
                parent.join(name)
            }
            Err(e) => {
                return Err(VmError::InvalidArgs(format!("cannot read {path:?}: {e}")));
            }
        };
        if !real.starts_with(&self.root) {
            return Err(outside());
        }
        Ok(real)
    }

    /// The environment of a process or shell: a clean base plus `extra`.
    pub fn environment(&self, extra: &BTreeMap<String, String>) -> Result<Environment, VmError> {
        if extra.len() > MAX_ENV_VARS {
            return Err(VmError::InvalidArgs(format!(
                "env has more than {MAX_ENV_VARS} variables"
            )));
        }
        let mut vars = BTreeMap::new();
        vars.insert(
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        );
        vars.insert("HOME".to_owned(), self.home.display().to_string());
        vars.insert("TERM".to_owned(), "xterm-256color".to_owned());
        vars.insert("LANG".to_owned(), "C.UTF-8".to_owned());
        vars.insert("SHELL".to_owned(), "/bin/bash".to_owned());
        for (k, v) in extra {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(VmError::InvalidArgs(format!(
                    "env name {k:?} is not a valid variable name"
                )));
            }
            if v.contains('\0') {
                // The value may be a secret: name the variable only.
                return Err(VmError::InvalidArgs(format!(
                    "env value of {k} contains a NUL byte"
                )));
            }
            vars.insert(k.clone(), v.clone());
        }
        Ok(Environment { vars })
    }
}

#[derive(Debug, Clone)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    pub fn vars(&self) -> impl Iterator<Item = (&String, &String)> {
        self.vars.iter()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Puts `dir` first on PATH (where an agent's own programs are).
    pub fn prepend_path(&mut self, dir: &Path) {
        let path = match self.vars.get("PATH") {
            Some(old) if !old.is_empty() => format!("{}:{old}", dir.display()),
            _ => dir.display().to_string(),
        };
        self.vars.insert("PATH".to_owned(), path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_must_stay_inside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path().join("ws")).unwrap();
        std::fs::create_dir(ws.root().join("sub")).unwrap();
        std::fs::write(ws.root().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/tmp", ws.root().join("escape")).unwrap();
        assert_eq!(ws.resolve_cwd(None).unwrap(), ws.root());
        assert_eq!(ws.resolve_cwd(Some("sub")).unwrap(), ws.root().join("sub"));
        for bad in ["..", "/etc", "missing", "file", "escape", "sub/../.."] {
            assert!(ws.resolve_cwd(Some(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn files_must_stay_inside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path().join("ws")).unwrap();
        std::fs::write(ws.root().join("a.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", ws.root().join("link")).unwrap();
        std::os::unix::fs::symlink("/tmp/ensemble-nowhere", ws.root().join("dangling")).unwrap();
        assert_eq!(
            ws.resolve_file("a.txt", false).unwrap(),
            ws.root().join("a.txt")
        );
        let abs = ws.root().join("a.txt").display().to_string();
        assert!(ws.resolve_file(&abs, false).is_ok());
        assert_eq!(
            ws.resolve_file("new.txt", true).unwrap(),
            ws.root().join("new.txt")
        );
        for (bad, write) in [
            ("/etc/passwd", false),
            ("/tmp/x", true),
            ("../x", true),
            ("link", false),
            ("link", true),
            ("missing/dir/x", true),
            ("missing", false),
            ("dangling", true),
        ] {
            assert!(ws.resolve_file(bad, write).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn paths_are_in_the_vms_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut ws = Workspace::open(dir.path().join("ws")).unwrap();
        ws.set_view("/workspace".into(), "/home/ensemble".into());
        std::fs::create_dir(ws.root().join("sub")).unwrap();
        std::fs::write(ws.root().join("sub/a.txt"), b"x").unwrap();
        assert_eq!(ws.resolve_cwd(None).unwrap(), Path::new("/workspace"));
        for cwd in ["sub", "/workspace/sub", "/workspace/sub/../sub"] {
            assert_eq!(
                ws.resolve_cwd(Some(cwd)).unwrap(),
                Path::new("/workspace/sub"),
                "{cwd}"
            );
        }
        assert_eq!(
            ws.resolve_file("/workspace/sub/a.txt", false).unwrap(),
            ws.root().join("sub/a.txt")
        );
        for bad in ["/workspace/..", "/etc", "/home/ensemble"] {
            assert!(ws.resolve_cwd(Some(bad)).is_err(), "{bad} accepted");
        }
        assert!(ws.resolve_file("/workspace/../log.db", false).is_err());
        let env = ws.environment(&BTreeMap::new()).unwrap();
        assert!(env
            .vars()
            .any(|(k, v)| k == "HOME" && v == "/home/ensemble"));
    }

    #[test]
    fn the_environment_is_clean_plus_what_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path().to_owned()).unwrap();
        let extra = BTreeMap::from([("API_KEY".to_owned(), "s3cret".to_owned())]);
        let env = ws.environment(&extra).unwrap();
        let names: Vec<&String> = env.vars().map(|(k, _)| k).collect();
        assert_eq!(names, ["API_KEY", "HOME", "LANG", "PATH", "SHELL", "TERM"]);
        let bad = BTreeMap::from([("A=B".to_owned(), "x".to_owned())]);
        assert!(ws.environment(&bad).is_err());
        let secret = BTreeMap::from([("K".to_owned(), "se\0cret".to_owned())]);
        let err = ws.environment(&secret).unwrap_err().to_string();
        assert!(!err.contains("cret"), "secret leaked into {err}");
    }
}
