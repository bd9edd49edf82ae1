//! Processes of a VM: spawn one in the VM's sandbox and workspace with a
//! clean environment and its own process group, pump its stdout and stderr into
//! the log as `processOutput`, write its stdin, report its exit as
//! `processExit` once its output is logged, and signal its whole group.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ensemble_protocol::frame::BinaryKind;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::log::{Log, NewEvent};
use crate::output::{Merger, READ_QUEUE};
use crate::vm::VmError;
use crate::workspace::Environment;
use ensemble_sandbox::VmSandbox;

/// Writes waiting for a process's stdin. A writer waits when the process
/// does not read; the VM does not.
const STDIN_QUEUE: usize = 64;

/// After a process exits, how long its pipes may take to reach end of file
/// before `processExit` is logged anyway (a background child may hold them;
/// its later output is still logged). Output read by then is logged before
/// `processExit`, however long that takes.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Most output `exec` returns per stream; the log keeps all of it. JSON
/// escaping can grow it sixfold, and the answer is one WebSocket message.
pub const EXEC_CAPTURE_LIMIT: usize = 1 << 20; // 1 MiB

/// Exited processes kept for `listProcesses` / `getProcess` / `waitProcess`.
const KEEP_EXITED: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// The exit code, when the process exited by itself.
    pub exit_code: Option<i32>,
    /// The signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    fn from_status(status: std::process::ExitStatus) -> ExitInfo {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            exit_code: status.code(),
            signal: status.signal(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub pid: u32,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

/// What `exec` returns.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

pub enum StdinOp {
    Data(Bytes),
    Close,
}

struct Entry {
    info: ProcessInfo,
    stdin: Option<mpsc::Sender<StdinOp>>,
    exit: watch::Receiver<Option<ExitInfo>>,
}

/// The processes of one VM; owned by the VM actor.
pub struct Processes {
    log: Log,
    sandbox: Arc<VmSandbox>,
    /// Fired when the VM closes: output pumps stop even if a pipe stays open.
    cancel: CancellationToken,
    entries: HashMap<u32, Entry>,
    exited_order: Vec<u32>,
}

pub struct Spawned {
    pub pid: u32,
    pub captured: Option<oneshot::Receiver<Captured>>,
    pub exit: watch::Receiver<Option<ExitInfo>>,
    /// Starts the pumps; called once `processStarted` is logged, so that the
    /// process's output follows it in the log.
    pub start: ProcessStart,
}

pub struct ProcessStart {
    child: tokio::process::Child,
    pid: u32,
    log: Log,
    cancel: CancellationToken,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    stdin: Option<tokio::process::ChildStdin>,
    stdin_rx: mpsc::Receiver<StdinOp>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    captured_tx: Option<oneshot::Sender<Captured>>,
    tap: Option<Tap>,
}

impl ProcessStart {
    pub fn start(self) {
        if let Some(stdin) = self.stdin {
            tokio::spawn(write_stdin(stdin, self.stdin_rx));
        }
        let sink = OutputSink {
            log: self.log,
            cancel: self.cancel,
            tap: self.tap,
        };
        tokio::spawn(supervise(
            self.child,
            self.pid,
            sink,
            self.stdout,
            self.stderr,
            self.exit_tx,
            self.captured_tx,
        ));
    }
}

impl Processes {
    pub fn new(log: Log, cancel: CancellationToken, sandbox: Arc<VmSandbox>) -> Processes {
        Processes {
            log,
            sandbox,
            cancel,
            entries: HashMap::new(),
            exited_order: Vec::new(),
        }
    }

    /// Starts `command` with `args` in `cwd` (already resolved inside the
    /// workspace, in the VM's view), in the VM's sandbox. `capture` keeps
    /// the output for `exec`'s answer.
    pub fn spawn(
        &mut self,
        command: &str,
        args: &[String],
        cwd: &Path,
        env: &Environment,
        capture: bool,
        tap: Option<Tap>,
    ) -> Result<Spawned, VmError> {
        let failed = |reason: String| VmError::SpawnFailed {
            command: command.to_owned(),
            reason,
        };
        // bwrap would start and only then fail to find the command: look
        // first, as the sandbox sees the files, for a typed error.
        if self.sandbox.isolated() {
            self.sandbox
                .check_command(command, env.get("PATH"), cwd)
                .map_err(|e| failed(e.to_string()))?;
        }
        let launch = self.sandbox.launch(command, args, cwd, false, &[]);
        let mut cmd = tokio::process::Command::new(&launch.program);
        cmd.args(&launch.args)
            .current_dir(&launch.cwd)
            .env_clear()
            .envs(env.vars())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a signal reaches what it started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            failed(match e.kind() {
                std::io::ErrorKind::NotFound => "command not found".to_owned(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                _ => e.to_string(),
            })
        })?;
        let pid = child.id().ok_or_else(|| VmError::SpawnFailed {
            command: command.to_owned(),
            reason: "exited before it could be tracked".to_owned(),
        })?;
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let (exit_tx, exit_rx) = watch::channel(None);
        let (captured_tx, captured_rx) = if capture {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let start = ProcessStart {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            stdin: child.stdin.take(),
            child,
            pid,
            log: self.log.clone(),
            cancel: self.cancel.clone(),
            tap,
            stdin_rx,
            exit_tx,
            captured_tx,
        };
        self.entries.insert(
            pid,
            Entry {
                info: ProcessInfo {
                    pid,
                    command: command.to_owned(),
                    args: args.to_vec(),
                    cwd: cwd.display().to_string(),
                    running: true,
                    exit: None,
                },
                stdin: Some(stdin_tx),
                exit: exit_rx.clone(),
            },
        );
        self.forget_old_exited();
        Ok(Spawned {
            pid,
            captured: captured_rx,
            exit: exit_rx,
            start,
        })
    }

    fn entry(&self, pid: u32) -> Result<&Entry, VmError> {
        self.entries.get(&pid).ok_or(VmError::NoSuchProcess(pid))
    }

    fn refresh(&mut self, pid: u32) {
        if let Some(e) = self.entries.get_mut(&pid) {
            if e.info.running {
                if let Some(exit) = *e.exit.borrow() {
                    e.info.running = false;
                    e.info.exit = Some(exit);
                    e.stdin = None;
                    self.exited_order.push(pid);
                }
            }
        }
    }

    fn forget_old_exited(&mut self) {
        let pids: Vec<u32> = self.entries.keys().copied().collect();
        for pid in pids {
            self.refresh(pid);
        }
        while self.exited_order.len() > KEEP_EXITED {
            let pid = self.exited_order.remove(0);
            self.entries.remove(&pid);
        }
    }

    pub fn info(&mut self, pid: u32) -> Result<ProcessInfo, VmError> {
        self.refresh(pid);
        Ok(self.entry(pid)?.info.clone())
    }

    pub fn list(&mut self) -> Vec<ProcessInfo> {
        self.forget_old_exited();
        let mut list: Vec<ProcessInfo> = self.entries.values().map(|e| e.info.clone()).collect();
        list.sort_by_key(|p| p.pid);
        list
    }

    /// Where to send stdin writes; refused once the process exited or its
    /// stdin was closed.
    pub fn stdin(&mut self, pid: u32) -> Result<mpsc::Sender<StdinOp>, VmError> {
        self.refresh(pid);
        let entry = self.entry(pid)?;
        if !entry.info.running {
            return Err(VmError::Exited(format!("process {pid}")));
        }
        entry
            .stdin
            .clone()
            .ok_or_else(|| VmError::Exited(format!("stdin of process {pid}")))
    }

    /// Marks stdin closed; later writes are refused.
    pub fn close_stdin(&mut self, pid: u32) -> Result<mpsc::Sender<StdinOp>, VmError> {
        let tx = self.stdin(pid)?;
        if let Some(e) = self.entries.get_mut(&pid) {
            e.stdin = None;
        }
        Ok(tx)
    }

    pub fn exit(&mut self, pid: u32) -> Result<watch::Receiver<Option<ExitInfo>>, VmError> {
        Ok(self.entry(pid)?.exit.clone())
    }

    /// Sends `signal` to the process's group.
    pub fn signal(&mut self, pid: u32, signal: Signal) -> Result<(), VmError> {
        self.refresh(pid);
        if !self.entry(pid)?.info.running {
            return Err(VmError::Exited(format!("process {pid}")));
        }
        if self.sandbox.isolated() {
            // Its sandbox ends with it (whatever the signal): the bwrap gets
            // the signal, the namespace is killed too, in case the bwrap
            // was still setting it up.
            ensemble_sandbox::end_sandbox(pid, signal);
        } else {
            signal_group(pid, signal);
        }
        Ok(())
    }

    /// Kills every running process's sandbox (its group and everything in
    /// its PID namespace); used when the VM closes.
    pub fn kill_all(&mut self) -> Vec<watch::Receiver<Option<ExitInfo>>> {
        self.forget_old_exited();
        self.entries
            .values()
            .filter(|e| e.info.running)
            .map(|e| {
                ensemble_sandbox::kill_sandbox(e.info.pid);
                e.exit.clone()
            })
            .collect()
    }
}

/// Signals a process group; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        if let Err(e) = killpg(Pid::from_raw(pgid), signal) {
            if e != nix::errno::Errno::ESRCH {
                tracing::warn!(pgid, %signal, error = %e, "cannot signal process group");
            }
        }
    }
}

async fn write_stdin(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<StdinOp>) {
    while let Some(op) = rx.recv().await {
        match op {
            StdinOp::Data(bytes) => {
                if stdin.write_all(&bytes).await.is_err() {
                    return;
                }
                let _ = stdin.flush().await;
            }
            StdinOp::Close => return,
        }
    }
}

/// Where a process's output goes, and when to stop pumping it.
#[derive(Clone)]
struct OutputSink {
    log: Log,
    cancel: CancellationToken,
    /// Also keeps the recent output, for an agent's `terminal/output`.
    tap: Option<Tap>,
}

/// The last output of a process (stdout and stderr together), at most
/// `limit` bytes, cut at a character boundary: what ACP's `terminal/output`
/// returns.
#[derive(Clone)]
pub struct Tap {
    inner: std::sync::Arc<std::sync::Mutex<TapBuffer>>,
}

struct TapBuffer {
    data: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Tap {
    pub fn new(limit: usize) -> Tap {
        Tap {
            inner: std::sync::Arc::new(std::sync::Mutex::new(TapBuffer {
                data: Vec::new(),
                limit,
                truncated: false,
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let Ok(mut b) = self.inner.lock() else { return };
        b.data.extend_from_slice(bytes);
        if b.data.len() > b.limit {
            let mut cut = b.data.len() - b.limit;
            // Never start inside a UTF-8 character.
            while cut < b.data.len() && (b.data[cut] & 0b1100_0000) == 0b1000_0000 {
                cut += 1;
            }
            b.data.drain(..cut);
            b.truncated = true;
        }
    }

    /// The output so far, and whether older output was dropped.
    pub fn read(&self) -> (String, bool) {
        match self.inner.lock() {
            Ok(b) => (String::from_utf8_lossy(&b.data).into_owned(), b.truncated),
            Err(_) => (String::new(), false),
        }
    }
}

async fn supervise(
    mut child: tokio::process::Child,
    pid: u32,
    sink: OutputSink,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    captured_tx: Option<oneshot::Sender<Captured>>,
) {
    let capture = captured_tx.is_some();
    let (out_eof, out_at_eof) = oneshot::channel();
    let (err_eof, err_at_eof) = oneshot::channel();
    let out = tokio::spawn(pump(
        stdout,
        pid,
        BinaryKind::ProcessStdout,
        sink.clone(),
        capture,
        out_eof,
    ));
    let err = tokio::spawn(pump(
        stderr,
        pid,
        BinaryKind::ProcessStderr,
        sink.clone(),
        capture,
        err_eof,
    ));
    let status = child.wait().await;
    let exit = match status {
        Ok(status) => ExitInfo::from_status(status),
        Err(e) => {
            tracing::error!(pid, error = %e, "cannot wait for process");
            ExitInfo {
                exit_code: None,
                signal: None,
            }
        }
    };
    // Output first, then the exit: a reader sees everything the process
    // printed before it learns that it ended. Waiting is bounded for end
    // of file only; what was read is logged first, even when the log is slow.
    let at_eof = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        let _ = out_at_eof.await;
        let _ = err_at_eof.await;
    })
    .await;
    let drained = match at_eof {
        Ok(()) => Ok((out.await.unwrap_or_default(), err.await.unwrap_or_default())),
        Err(e) => Err(e),
    };
    let data = serde_json::json!({"pid": pid, "exitCode": exit.exit_code, "signal": exit.signal});
    if let Err(e) = sink
        .log
        .append(vec![NewEvent::Json {
            name: "processExit".to_owned(),
            data: data.to_string(),
        }])
        .await
    {
        tracing::error!(pid, error = %e, "processExit not logged");
    }
    let _ = exit_tx.send(Some(exit));
    if let Some(tx) = captured_tx {
        let captured = match drained {
            Ok((a, b)) => Captured {
                truncated: a.truncated || b.truncated,
                stdout: a.stdout,
                stderr: b.stdout,
            },
            Err(_) => Captured {
                truncated: true,
                ..Captured::default()
            },
        };
        let _ = tx.send(captured);
    }
}

/// Reads one stream to its end, logging chunks; returns what it captured
/// (in `stdout`, whichever stream it is).
async fn pump<R: AsyncRead + Unpin + Send + 'static>(
    stream: Option<R>,
    pid: u32,
    kind: BinaryKind,
    sink: OutputSink,
    capture: bool,
    eof: oneshot::Sender<()>,
) -> Captured {
    let OutputSink { log, cancel, tap } = sink;
    let mut captured = Captured::default();
    let Some(mut stream) = stream else {
        return captured;
    };
    let (tx, rx) = mpsc::channel(READ_QUEUE);
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(crate::output::MAX_CHUNK);
        loop {
            buf.reserve(crate::output::MAX_CHUNK);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = eof.send(());
                    return;
                }
                Ok(_) => {
                    if tx.send(buf.split().freeze()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut merger = Merger::new(rx, cancel);
    let id = pid;
    while let Some(chunk) = merger.next().await {
        if let Some(tap) = &tap {
            tap.push(&chunk);
        }
        if capture {
            let room = EXEC_CAPTURE_LIMIT.saturating_sub(captured.stdout.len());
            captured.truncated |= chunk.len() > room;
            captured
                .stdout
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        // Waiting for durability is what batches output: reads that pile
        // up meanwhile become the next, bigger chunk.
        if let Err(e) = log
            .append(vec![NewEvent::Bytes {
                kind,
                id,
                payload: chunk,
            }])
            .await
        {
            tracing::error!(pid, error = %e, "process output not logged");
        }
    }
    // At end of file the reader has ended already; on cancel it may still
    // wait on a pipe something outside the VM holds open.
    reader.abort();
    let _ = reader.await;
    captured
}

/// Signals every process of a session: a PTY shell leads its own, and its
/// jobs may sit in other process groups of it. Reads /proc.
pub fn signal_session(sid: u32, signal: Signal) {
    for (pid, fields) in ensemble_sandbox::proc_stats() {
        // state, ppid, pgrp, session, ...
        if fields.get(3).and_then(|s| s.parse::<u32>().ok()) == Some(sid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }
}
