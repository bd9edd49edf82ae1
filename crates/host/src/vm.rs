//! An agent VM: its key, its workspace, its event log, and the actor that
//! owns its processes and shells. Callers send the actor closures that run
//! on its state one at a time; anything slow (waiting for a process, logging)
//! happens outside, with what the closure handed back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ensemble_protocol::{ErrorBody, ErrorCode, Key, VmInfo};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::log::{Log, LogError};
use crate::process::Processes;
use crate::session::Sessions;
use crate::shell::Shells;
use crate::workspace::Workspace;
use ensemble_sandbox::VmSandbox;

/// Closures waiting for the VM actor. Each is short (no I/O waits), so a
/// small queue keeps callers honest without stalling them.
const VM_QUEUE: usize = 256;

/// On close, how long processes and shells have to exit after SIGKILL/SIGHUP.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What a VM action can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VmError {
    #[error("no process with pid {0} in this VM")]
    NoSuchProcess(u32),
    #[error("no shell with id {0} in this VM")]
    NoSuchShell(u32),
    #[error("{0} has exited")]
    Exited(String),
    #[error("cannot start {command:?}: {reason}")]
    SpawnFailed { command: String, reason: String },
    #[error("{0}")]
    InvalidArgs(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("PTY: {0}")]
    Pty(String),
    #[error("{0}")]
    Internal(String),
    #[error("the VM is closed")]
    Closed,
    #[error("no session {0:?} in this VM")]
    NoSuchSession(String),
    #[error("{0} is not waiting for an answer")]
    NotPending(String),
    #[error("session {0} is already running a turn; wait for it or cancel it")]
    Busy(String),
    #[error("{0}")]
    AgentFailed(String),
    #[error("cannot resume: {0}")]
    CannotResume(String),
}

impl VmError {
    pub fn to_body(&self) -> ErrorBody {
        let code = match self {
            VmError::NoSuchProcess(_)
            | VmError::NoSuchShell(_)
            | VmError::NoSuchSession(_)
            | VmError::NotPending(_) => ErrorCode::NotFound,
            VmError::Busy(_) => ErrorCode::Busy,
            VmError::AgentFailed(_) => ErrorCode::AgentFailed,
            VmError::CannotResume(_) => ErrorCode::CannotResume,
            VmError::Exited(_) => ErrorCode::Exited,
            VmError::SpawnFailed { .. } => ErrorCode::SpawnFailed,
            VmError::InvalidArgs(_) => ErrorCode::InvalidArgs,
            VmError::Forbidden(_) => ErrorCode::Forbidden,
            VmError::Pty(_) | VmError::Internal(_) => ErrorCode::Internal,
            VmError::Closed => ErrorCode::Unavailable,
        };
        ErrorBody::new(code, self.to_string())
    }
}

impl From<Arc<LogError>> for VmError {
    fn from(e: Arc<LogError>) -> Self {
        VmError::Internal(e.to_string())
    }
}

/// What the actor owns.
pub struct VmState {
    pub processes: Processes,
    pub shells: Shells,
    pub sessions: Sessions,
}

type Job = Box<dyn FnOnce(&mut VmState) + Send>;

/// A handle on one open VM; cheap to clone. The VM closes (its processes
/// and shells are killed) when the last handle is dropped.
#[derive(Clone)]
pub struct Vm {
    inner: Arc<VmInner>,
}

struct VmInner {
    info: VmInfo,
    dir: PathBuf,
    workspace: Workspace,
    sandbox: Arc<VmSandbox>,
    log: Log,
    control: Control,
    jobs: mpsc::Sender<Job>,
    /// Closes the VM now, whoever still holds a handle (the host stops).
    closing: CancellationToken,
}

/// What a VM is made of, as the registry opened it.
pub(crate) struct VmParts {
    pub id: u64,
    pub key: Key,
    pub dir: PathBuf,
    pub workspace: Workspace,
    pub log: Log,
    pub first_shell_id: u32,
    pub control: Control,
    pub sandbox: Arc<VmSandbox>,
}

impl Vm {
    /// Starts the VM's actor. `done` resolves once its processes and shells
    /// are gone after the last handle was dropped.
    pub(crate) fn start(parts: VmParts) -> (Vm, oneshot::Receiver<()>) {
        let VmParts {
            id,
            key,
            dir,
            workspace,
            log,
            first_shell_id,
            control,
            sandbox,
        } = parts;
        let (jobs_tx, jobs_rx) = mpsc::channel(VM_QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        let cancel = CancellationToken::new();
        let state = VmState {
            processes: Processes::new(log.clone(), cancel.clone(), sandbox.clone()),
            shells: Shells::new(log.clone(), first_shell_id, cancel.clone(), sandbox.clone()),
            sessions: Sessions::default(),
        };
        tokio::spawn(crate::limits::watch(
            sandbox.clone(),
            log.clone(),
            cancel.clone(),
        ));
        let closing = CancellationToken::new();
        tokio::spawn(run(state, jobs_rx, closing.clone(), cancel, done_tx));
        let vm = Vm {
            inner: Arc::new(VmInner {
                info: VmInfo { id, key },
                dir,
                workspace,
                sandbox,
                log,
                control,
                jobs: jobs_tx,
                closing,
            }),
        };
        (vm, done_rx)
    }

    /// Closes the VM at once (the host stops): its agents, processes and
    /// shells are stopped although handles remain (an action awaiting a
    /// turn, say), and from then on every call is `VmError::Closed`.
    pub(crate) fn close(&self) {
        self.inner.closing.cancel();
    }

    pub fn info(&self) -> &VmInfo {
        &self.inner.info
    }

    pub fn key(&self) -> &Key {
        &self.inner.info.key
    }

    /// The VM's own directory under the data dir.
    pub fn dir(&self) -> &PathBuf {
        &self.inner.dir
    }

    pub fn workspace(&self) -> &Workspace {
        &self.inner.workspace
    }

    /// The sandbox its processes run in.
    pub fn sandbox(&self) -> &Arc<VmSandbox> {
        &self.inner.sandbox
    }

    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// Presence and the control lock.
    pub fn control(&self) -> &Control {
        &self.inner.control
    }

    /// A handle that does not keep the VM open (for what the VM itself owns,
    /// such as a session's task).
    pub fn downgrade(&self) -> WeakVm {
        WeakVm(Arc::downgrade(&self.inner))
    }

    /// Runs `f` on the VM's state, in the actor, and returns its result.
    pub async fn with<R, F>(&self, f: F) -> Result<R, VmError>
    where
        R: Send + 'static,
        F: FnOnce(&mut VmState) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |state| {
            let _ = tx.send(f(state));
        });
        self.inner
            .jobs
            .send(job)
            .await
            .map_err(|_| VmError::Closed)?;
        rx.await.map_err(|_| VmError::Closed)
    }
}

/// See [`Vm::downgrade`].
#[derive(Clone)]
pub struct WeakVm(std::sync::Weak<VmInner>);

impl WeakVm {
    pub fn upgrade(&self) -> Option<Vm> {
        self.0.upgrade().map(|inner| Vm { inner })
    }
}

async fn run(
    mut state: VmState,
    mut jobs: mpsc::Receiver<Job>,
    closing: CancellationToken,
    cancel: CancellationToken,
    done: oneshot::Sender<()>,
) {
    // Until the last handle is gone, or the host closes the VM: waiting for
    // the last handle alone would let any task that holds one (an action
    // waiting for a turn that only the VM's closing would end) keep the
    // host from stopping.
    loop {
        tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            job = jobs.recv() => match job {
                Some(job) => job(&mut state),
                None => break,
            },
        }
    }
    // Callers waiting in the queue, and any later call, get `Closed`.
    jobs.close();
    while jobs.try_recv().is_ok() {}
    // Nothing may outlive the VM.
    state.sessions.close_all();
    let mut exits = state.processes.kill_all();
    exits.extend(state.shells.close_all());
    let wait_all = async {
        for mut exit in exits {
            let _ = exit.wait_for(Option::is_some).await;
        }
    };
    if tokio::time::timeout(CLOSE_GRACE, wait_all).await.is_err() {
        tracing::warn!("some processes of a closing VM did not exit in time");
    }
    // Whatever still holds a pipe or the PTY open is outside the VM now.
    cancel.cancel();
    drop(state);
    let _ = done.send(());
}
