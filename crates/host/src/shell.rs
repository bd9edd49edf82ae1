//! Shared shells: a program on a real PTY (portable-pty) in the VM's
//! workspace. Its output goes to the log as `shellData`; keystrokes go to it
//! through a writer thread; a terminal model on a thread of its own, fed
//! from the log, answers late joiners with a snapshot of the screen as of a
//! seq.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ensemble_protocol::frame::{BinaryHeader, BinaryKind};
use nix::sys::signal::Signal;
use portable_pty::{CommandBuilder, MasterPty, PtySize};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::log::{Frame, Log, LoggedEvent, NewEvent, Pin};
use crate::output::{Merger, MAX_CHUNK, READ_QUEUE};
use crate::process::{signal_group, ExitInfo};
use crate::terminal::TerminalModel;
use crate::vm::VmError;
use crate::workspace::Environment;
use ensemble_sandbox::VmSandbox;

/// Largest terminal accepted, in columns and rows.
pub const MAX_COLS: u16 = 1000;
pub const MAX_ROWS: u16 = 500;

/// Lines of scrollback the model keeps above the screen.
const MODEL_SCROLLBACK: usize = 2000;

/// Lines of scrollback a snapshot carries.
const SNAPSHOT_SCROLLBACK: usize = 1000;

/// Keystroke writes waiting for the PTY.
const INPUT_QUEUE: usize = 256;

/// After the program exits, how long the PTY may take to drain before
/// `shellExit` is logged anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// After SIGHUP on close, how long the shell's session has before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShellInfo {
    pub shell_id: u32,
    pub pid: u32,
    pub command: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub cols: u16,
    pub rows: u16,
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

/// A late joiner's view: the bytes that draw the screen as of `seq`.
pub struct Snapshot {
    pub seq: u64,
    pub rows: u16,
    pub cols: u16,
    pub data: Vec<u8>,
}

struct Entry {
    info: ShellInfo,
    /// Kept to resize; dropping it hangs up the PTY.
    master: Box<dyn MasterPty + Send>,
    input: mpsc::Sender<Bytes>,
    exit: watch::Receiver<Option<ExitInfo>>,
    model: mpsc::Sender<oneshot::Sender<Result<Snapshot, VmError>>>,
}

/// The shells of one VM; owned by the VM actor.
pub struct Shells {
    log: Log,
    sandbox: Arc<VmSandbox>,
    /// Fired when the VM closes: output pumps stop even if the PTY stays open.
    cancel: CancellationToken,
    entries: HashMap<u32, Entry>,
    next_id: u32,
}

pub struct ShellOptions {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Environment,
    pub cols: u16,
    pub rows: u16,
}

/// A shell spawned but not yet streaming: [`ShellStart::start`] runs once
/// `shellOpened` is logged, so that its output follows it in the log.
pub struct ShellStart {
    shell_id: u32,
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    input_rx: mpsc::Receiver<Bytes>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    model_rx: mpsc::Receiver<oneshot::Sender<Result<Snapshot, VmError>>>,
    log: Log,
    cancel: CancellationToken,
    rows: u16,
    cols: u16,
}

pub fn check_size(cols: u16, rows: u16) -> Result<(), VmError> {
    if cols == 0 || rows == 0 || cols > MAX_COLS || rows > MAX_ROWS {
        return Err(VmError::InvalidArgs(format!(
            "terminal size {cols}x{rows} is outside 1x1 to {MAX_COLS}x{MAX_ROWS}"
        )));
    }
    Ok(())
}

impl Shells {
    /// `first_id` continues the ids of shells in the log, so an id is never
    /// reused across restarts.
    pub fn new(
        log: Log,
        first_id: u32,
        cancel: CancellationToken,
        sandbox: Arc<VmSandbox>,
    ) -> Shells {
        Shells {
            log,
            sandbox,
            cancel,
            entries: HashMap::new(),
            next_id: first_id.max(1),
        }
    }

    pub fn open(&mut self, opts: ShellOptions) -> Result<(ShellInfo, ShellStart), VmError> {
        check_size(opts.cols, opts.rows)?;
        let pty = portable_pty::native_pty_system()
            .openpty(PtySize {
                rows: opts.rows,
                cols: opts.cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| VmError::Pty(format!("cannot open a PTY: {e}")))?;
        if self.sandbox.isolated() {
            self.sandbox
                .check_command(&opts.command, opts.env.get("PATH"), &opts.cwd)
                .map_err(|e| VmError::SpawnFailed {
                    command: opts.command.clone(),
                    reason: e.to_string(),
                })?;
        }
        // portable-pty makes the program a session leader with the PTY as
        // its terminal; the sandbox keeps that session.
        let launch = self
            .sandbox
            .launch(&opts.command, &opts.args, &opts.cwd, true, &[]);
        let mut cmd = CommandBuilder::new(&launch.program);
        cmd.args(&launch.args);
        cmd.cwd(&launch.cwd);
        cmd.env_clear();
        for (k, v) in opts.env.vars() {
            cmd.env(k, v);
        }
        let child = pty
            .slave
            .spawn_command(cmd)
            .map_err(|e| VmError::SpawnFailed {
                command: opts.command.clone(),
                reason: e.to_string(),
            })?;
        // Only the child holds the slave now: the master reads EOF once it
        // and everything it started are gone.
        drop(pty.slave);
        let pid = child.process_id().unwrap_or(0);
        let reader = pty
            .master
            .try_clone_reader()
            .map_err(|e| VmError::Pty(e.to_string()))?;
        let writer = pty
            .master
            .take_writer()
            .map_err(|e| VmError::Pty(e.to_string()))?;
        let shell_id = self.next_id;
        self.next_id += 1;
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
        let (exit_tx, exit_rx) = watch::channel(None);
        let (model_tx, model_rx) = mpsc::channel(16);
        let info = ShellInfo {
            shell_id,
            pid,
            command: opts.command,
            args: opts.args,
            cwd: opts.cwd.display().to_string(),
            cols: opts.cols,
            rows: opts.rows,
            running: true,
            exit: None,
        };
        self.entries.insert(
            shell_id,
            Entry {
                info: info.clone(),
                master: pty.master,
                input: input_tx,
                exit: exit_rx,
                model: model_tx,
            },
        );
        let start = ShellStart {
            shell_id,
            reader,
            writer,
            input_rx,
            child,
            exit_tx,
            model_rx,
            log: self.log.clone(),
            cancel: self.cancel.clone(),
            rows: opts.rows,
            cols: opts.cols,
        };
        Ok((info, start))
    }

    fn entry(&mut self, shell_id: u32) -> Result<&mut Entry, VmError> {
        let entry = self
            .entries
            .get_mut(&shell_id)
            .ok_or(VmError::NoSuchShell(shell_id))?;
        if entry.info.running {
            if let Some(exit) = *entry.exit.borrow() {
                entry.info.running = false;
                entry.info.exit = Some(exit);
            }
        }
        Ok(entry)
    }

    pub fn info(&mut self, shell_id: u32) -> Result<ShellInfo, VmError> {
        Ok(self.entry(shell_id)?.info.clone())
    }

    pub fn list(&mut self) -> Vec<ShellInfo> {
        let ids: Vec<u32> = self.entries.keys().copied().collect();
        let mut list: Vec<ShellInfo> = ids
            .into_iter()
            .filter_map(|id| self.info(id).ok())
            .collect();
        list.sort_by_key(|s| s.shell_id);
        list
    }

    /// Where keystrokes for the shell go.
    pub fn input(&mut self, shell_id: u32) -> Result<mpsc::Sender<Bytes>, VmError> {
        let entry = self.entry(shell_id)?;
        if !entry.info.running {
            return Err(VmError::Exited(format!("shell {shell_id}")));
        }
        Ok(entry.input.clone())
    }

    /// Whether the shell can be resized to `cols`x`rows`. Who may resize is
    /// the control lock's business: only the holder's size applies.
    pub fn check_resize(&mut self, shell_id: u32, cols: u16, rows: u16) -> Result<(), VmError> {
        check_size(cols, rows)?;
        let entry = self.entry(shell_id)?;
        if !entry.info.running {
            return Err(VmError::Exited(format!("shell {shell_id}")));
        }
        Ok(())
    }

    /// Resizes the PTY, after [`Shells::check_resize`].
    pub fn resize(&mut self, shell_id: u32, cols: u16, rows: u16) -> Result<(), VmError> {
        self.check_resize(shell_id, cols, rows)?;
        let entry = self.entry(shell_id)?;
        entry
            .master
            .resize(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| VmError::Pty(format!("resize failed: {e}")))?;
        entry.info.cols = cols;
        entry.info.rows = rows;
        Ok(())
    }

    /// Hangs up the shell's session; `shellExit` follows when it is gone.
    pub fn close(&mut self, shell_id: u32) -> Result<watch::Receiver<Option<ExitInfo>>, VmError> {
        let entry = self.entry(shell_id)?;
        if !entry.info.running {
            return Err(VmError::Exited(format!("shell {shell_id}")));
        }
        hang_up(entry.info.pid);
        Ok(entry.exit.clone())
    }

    pub fn model(
        &mut self,
        shell_id: u32,
    ) -> Result<mpsc::Sender<oneshot::Sender<Result<Snapshot, VmError>>>, VmError> {
        Ok(self.entry(shell_id)?.model.clone())
    }

    /// Kills every running shell's sandbox (its session and everything in
    /// its PID namespace); used when the VM closes, when a hang-up's grace
    /// period could outlast the host.
    pub fn close_all(&mut self) -> Vec<watch::Receiver<Option<ExitInfo>>> {
        let ids: Vec<u32> = self.entries.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| {
                let entry = self.entry(id).ok()?;
                if !entry.info.running || entry.info.pid == 0 {
                    return None;
                }
                crate::process::signal_session(entry.info.pid, Signal::SIGKILL);
                ensemble_sandbox::kill_sandbox(entry.info.pid);
                Some(entry.exit.clone())
            })
            .collect()
    }
}

/// SIGHUP to the shell's session (a PTY shell leads its own), SIGKILL to
/// whatever is left after a grace period, including jobs that moved to
/// other process groups of the session.
fn hang_up(pid: u32) {
    if pid == 0 {
        return;
    }
    signal_group(pid, Signal::SIGHUP);
    std::thread::spawn(move || {
        std::thread::sleep(HANGUP_GRACE);
        crate::process::signal_session(pid, Signal::SIGKILL);
    });
}

impl ShellStart {
    /// `opened_seq` is the seq of `shellOpened`: the model starts there.
    pub fn start(self, opened_seq: u64) {
        let ShellStart {
            shell_id,
            mut reader,
            mut writer,
            mut input_rx,
            mut child,
            exit_tx,
            model_rx,
            log,
            cancel,
            rows,
            cols,
        } = self;
        // Subscribed and pinned before any output is logged: the model reads
        // every byte, live or (when it lags) from the log, never pruned away.
        let live = log.subscribe();
        let pin = log.pin(opened_seq);
        let (read_tx, read_rx) = mpsc::channel::<Bytes>(READ_QUEUE);
        // PTY reads block: a thread each for reading and writing.
        let spawned = std::thread::Builder::new()
            .name(format!("shell-{shell_id}-read"))
            .spawn(move || {
                let mut buf = vec![0u8; MAX_CHUNK];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if read_tx
                                .blocking_send(Bytes::copy_from_slice(&buf[..n]))
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(shell_id, error = %e, "cannot start the shell reader");
        }
        let _ = std::thread::Builder::new()
            .name(format!("shell-{shell_id}-write"))
            .spawn(move || {
                while let Some(bytes) = input_rx.blocking_recv() {
                    if writer
                        .write_all(&bytes)
                        .and_then(|_| writer.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        let pump_log = log.clone();
        // Dropped when the pump ends: all of the shell's output is logged.
        let (pump_alive, pump_done) = watch::channel(());
        let exited = exit_tx.subscribe();
        let pump = tokio::spawn(async move {
            let _alive = pump_alive;
            let mut merger = Merger::new(read_rx, cancel);
            while let Some(chunk) = merger.next().await {
                // Waiting for durability batches: what piles up meanwhile
                // becomes the next chunk.
                if let Err(e) = pump_log
                    .append(vec![NewEvent::Bytes {
                        kind: BinaryKind::ShellData,
                        id: shell_id,
                        payload: chunk,
                    }])
                    .await
                {
                    tracing::error!(shell_id, error = %e, "shell output not logged");
                }
            }
        });
        let (waited_tx, waited_rx) = oneshot::channel();
        let _ = std::thread::Builder::new()
            .name(format!("shell-{shell_id}-wait"))
            .spawn(move || {
                let status = child.wait();
                let _ = waited_tx.send(status);
            });
        let exit_log = log.clone();
        tokio::spawn(async move {
            let exit = match waited_rx.await {
                Ok(Ok(status)) => exit_info(&status),
                _ => ExitInfo {
                    exit_code: None,
                    signal: None,
                },
            };
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, pump).await;
            // Marked exited before the event is logged: whoever sees
            // `shellExit` finds the shell refusing input.
            let _ = exit_tx.send(Some(exit));
            let data = serde_json::json!({
                "shellId": shell_id, "exitCode": exit.exit_code, "signal": exit.signal
            });
            if let Err(e) = exit_log
                .append(vec![NewEvent::Json {
                    name: "shellExit".to_owned(),
                    data: data.to_string(),
                }])
                .await
            {
                tracing::error!(shell_id, error = %e, "shellExit not logged");
            }
        });
        let feed = ModelFeed {
            log,
            live,
            pin,
            exited,
            pump_done,
        };
        tokio::spawn(run_model(feed, shell_id, opened_seq, rows, cols, model_rx));
    }
}

fn exit_info(status: &portable_pty::ExitStatus) -> ExitInfo {
    match status.signal() {
        Some(name) => ExitInfo {
            exit_code: None,
            signal: signal_number(name),
        },
        None => ExitInfo {
            exit_code: i32::try_from(status.exit_code()).ok(),
            signal: None,
        },
    }
}

/// portable-pty names the signal ("Hangup", "SIGKILL", ...); map the usual
/// ones back to their numbers.
fn signal_number(name: &str) -> Option<i32> {
    let name = name.trim_start_matches("SIG").to_ascii_lowercase();
    let signal = match name.as_str() {
        "hup" | "hangup" => Signal::SIGHUP,
        "int" | "interrupt" => Signal::SIGINT,
        "kill" | "killed" => Signal::SIGKILL,
        "term" | "terminated" => Signal::SIGTERM,
        "quit" => Signal::SIGQUIT,
        "segv" | "segmentation fault" => Signal::SIGSEGV,
        "abrt" | "aborted" => Signal::SIGABRT,
        "pipe" | "broken pipe" => Signal::SIGPIPE,
        _ => return None,
    };
    Some(signal as i32)
}

/// A terminal model's source: live events, the log when it lags, and the
/// pin that keeps its unread output from being pruned.
struct ModelFeed {
    log: Log,
    live: broadcast::Receiver<Arc<LoggedEvent>>,
    pin: Pin,
    /// The shell's exit, and the end of its output: once both are there the
    /// model keeps only its last screen (see [`retire`]).
    exited: watch::Receiver<Option<ExitInfo>>,
    pump_done: watch::Receiver<()>,
}

/// What the model thread is given, in seq order.
enum ModelInput {
    Output(Bytes),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// The output has paused: parse what is held back.
    Settle,
    /// Start over with an empty screen (the model skipped output it was too
    /// far behind to parse).
    Reset,
    /// Everything up to `seq` has been given: answer with the screen.
    Snapshot {
        seq: u64,
        reply: oneshot::Sender<Result<Snapshot, VmError>>,
    },
}

/// Output for the model thread in flight: 16 chunks of at most 64 KiB, so
/// that a snapshot request waits behind at most 1 MiB.
const MODEL_QUEUE: usize = 16;

/// After this long without output the model parses what it holds back, so
/// that a joiner does not wait for that.
const SETTLE_AFTER: Duration = Duration::from_millis(20);

/// Output is gathered in the model's task until this much, a pause
/// ([`SETTLE_AFTER`]), or anything else for the model: typing wakes the
/// model's thread once a pause instead of once a keystroke, in the same
/// instant as the echo's delivery that it would compete with.
const HAND_OVER_AT: usize = 16 << 10;

/// Gives the model `input` after what was gathered, gathering small output;
/// false once the model is gone.
async fn give(tx: &mpsc::Sender<ModelInput>, held: &mut BytesMut, input: ModelInput) -> bool {
    match input {
        // Bulk output goes as it is, without a copy.
        ModelInput::Output(bytes) if held.is_empty() && bytes.len() >= HAND_OVER_AT => {
            tx.send(ModelInput::Output(bytes)).await.is_ok()
        }
        ModelInput::Output(bytes) => {
            held.extend_from_slice(&bytes);
            held.len() < HAND_OVER_AT || hand_over(tx, held).await
        }
        other => hand_over(tx, held).await && tx.send(other).await.is_ok(),
    }
}

/// Gives the model what was gathered; false once the model is gone.
async fn hand_over(tx: &mpsc::Sender<ModelInput>, held: &mut BytesMut) -> bool {
    held.is_empty()
        || tx
            .send(ModelInput::Output(held.split().freeze()))
            .await
            .is_ok()
}

/// Follows the log for one shell, in seq order, and hands its output and
/// resizes to the model's thread; snapshot requests queue behind everything
/// up to the head at the time of the request. What it has handed over no
/// longer needs the log, so the pin follows it, not the parsing.
async fn run_model(
    feed: ModelFeed,
    shell_id: u32,
    opened_seq: u64,
    rows: u16,
    cols: u16,
    mut requests: mpsc::Receiver<oneshot::Sender<Result<Snapshot, VmError>>>,
) {
    let ModelFeed {
        log,
        mut live,
        pin,
        mut exited,
        mut pump_done,
    } = feed;
    let (tx, rx) = mpsc::channel(MODEL_QUEUE);
    let spawned = std::thread::Builder::new()
        .name(format!("shell-{shell_id}-model"))
        .spawn(move || model_thread(rx, rows, cols));
    if let Err(e) = spawned {
        tracing::error!(shell_id, error = %e, "cannot start the terminal model");
        return;
    }
    let mut cursor = opened_seq;
    let mut unsettled = false;
    // `None` while unknown; a watch whose sender went away without a value
    // never says (the model then lives as long as the VM).
    let mut has_exited = Some(false);
    let mut output_over = false;
    let mut held = BytesMut::new();
    loop {
        if has_exited == Some(true) && output_over {
            drop(live);
            if !hand_over(&tx, &mut held).await {
                return;
            }
            retire(log, tx, pin, shell_id, cursor, requests).await;
            return;
        }
        tokio::select! {
            known = async { exited.wait_for(Option::is_some).await.is_ok() },
                if has_exited == Some(false) => {
                has_exited = known.then_some(true);
            }
            _ = pump_done.changed(), if !output_over => {
                output_over = true;
            }
            request = requests.recv() => {
                let Some(reply) = request else { return };
                if !hand_over(&tx, &mut held).await {
                    return;
                }
                let upto = log.head();
                if let Err(e) = catch_up(&log, &tx, &pin, shell_id, &mut cursor, upto).await {
                    let _ = reply.send(Err(e));
                    continue;
                }
                pin.advance(cursor);
                if tx.send(ModelInput::Snapshot { seq: cursor, reply }).await.is_err() {
                    return;
                }
                unsettled = false;
            }
            event = live.recv() => {
                match event {
                    Ok(event) if event.seq <= cursor => continue,
                    Ok(event) if event.seq == cursor + 1 => {
                        cursor = event.seq;
                        if let Some(input) = model_input(shell_id, &event) {
                            if !give(&tx, &mut held, input).await {
                                return;
                            }
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !hand_over(&tx, &mut held).await {
                            return;
                        }
                        let head = log.head();
                        if let Err(e) = catch_up(&log, &tx, &pin, shell_id, &mut cursor, head).await {
                            tracing::error!(shell_id, error = %e, "terminal model cannot read the log");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                pin.advance(cursor);
                unsettled = true;
            }
            () = tokio::time::sleep(SETTLE_AFTER), if unsettled => {
                unsettled = false;
                if !hand_over(&tx, &mut held).await || tx.send(ModelInput::Settle).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// After the shell exited and its last output is logged: parses the rest,
/// keeps the final screen, and lets the model's thread, its screen and
/// scrollback, the pin and the VM's broadcast go. A host that opens many
/// short shells does not grow by a model for each. Snapshots are then that
/// screen, as of the head at the time of the request (nothing of the shell
/// comes after its output ended).
async fn retire(
    log: Log,
    tx: mpsc::Sender<ModelInput>,
    pin: Pin,
    shell_id: u32,
    mut cursor: u64,
    mut requests: mpsc::Receiver<oneshot::Sender<Result<Snapshot, VmError>>>,
) {
    let head = log.head();
    let last = match catch_up(&log, &tx, &pin, shell_id, &mut cursor, head).await {
        Ok(()) => {
            let (reply, answer) = oneshot::channel();
            let stopped = || VmError::Internal("the terminal model stopped".to_owned());
            if tx
                .send(ModelInput::Snapshot { seq: cursor, reply })
                .await
                .is_err()
            {
                Err(stopped())
            } else {
                answer.await.unwrap_or_else(|_| Err(stopped()))
            }
        }
        Err(e) => Err(e),
    };
    drop(tx);
    drop(pin);
    while let Some(reply) = requests.recv().await {
        let answer = match &last {
            Ok(s) => Ok(Snapshot {
                seq: log.head(),
                rows: s.rows,
                cols: s.cols,
                data: s.data.clone(),
            }),
            Err(e) => Err(e.clone()),
        };
        let _ = reply.send(answer);
    }
}

/// Parses the shell's output off the async threads, and draws snapshots.
fn model_thread(mut inputs: mpsc::Receiver<ModelInput>, rows: u16, cols: u16) {
    let mut model = TerminalModel::new(rows, cols, MODEL_SCROLLBACK);
    while let Some(input) = inputs.blocking_recv() {
        match input {
            ModelInput::Output(bytes) => model.feed(&bytes),
            ModelInput::Resize { rows, cols } => model.resize(rows, cols),
            ModelInput::Settle => model.settle(),
            ModelInput::Reset => {
                let (rows, cols) = model.size();
                model = TerminalModel::new(rows, cols, MODEL_SCROLLBACK);
            }
            ModelInput::Snapshot { seq, reply } => {
                let data = model.snapshot(SNAPSHOT_SCROLLBACK);
                let (rows, cols) = model.size();
                let _ = reply.send(Ok(Snapshot {
                    seq,
                    rows,
                    cols,
                    data,
                }));
            }
        }
    }
}

/// What a model that skipped ahead parses again: the last this many bytes
/// of its shell's output (half the output budget, if that is less), enough
/// to redraw a screen and its recent scrollback.
const SKIP_TAIL: u64 = 512 << 10;

/// Hands the model what the log holds after `cursor` up to `upto`, and
/// moves the pin with it. A model more than the output budget behind (a
/// flood faster than it parses) would pin the log without bound: it skips
/// to the shell's last `SKIP_TAIL` bytes instead, from an empty screen.
async fn catch_up(
    log: &Log,
    tx: &mpsc::Sender<ModelInput>,
    pin: &Pin,
    shell_id: u32,
    cursor: &mut u64,
    upto: u64,
) -> Result<(), VmError> {
    const PAGE: u32 = 1024;
    let internal = |e: crate::log::LogError| VmError::Internal(e.to_string());
    let stopped = || VmError::Internal("the terminal model stopped".to_owned());
    let names = Some(vec!["shellData".to_owned(), "shellResized".to_owned()]);
    let budget = log.output_budget();
    // Pages small against the budget, so the check below runs often enough.
    let page_bytes = usize::try_from(budget / 4)
        .unwrap_or(usize::MAX)
        .clamp(64 << 10, 4 << 20);
    let mut upto = upto;
    while *cursor < upto {
        // What the pin holds: everything after the cursor, to the head.
        let head = log.head();
        let behind = log
            .output_bytes_between(*cursor, head)
            .await
            .map_err(internal)?;
        if behind > budget {
            let tail = SKIP_TAIL.min(budget / 2);
            let from = log
                .shell_tail_start(shell_id, *cursor, head, tail)
                .await
                .map_err(internal)?;
            // The tail is parsed whatever `upto` was, so the screen is not
            // left empty.
            upto = upto.max(head);
            // Sizes set meanwhile still apply to what follows.
            let (resizes, _) = log
                .scan(
                    *cursor,
                    from,
                    u32::MAX,
                    Some(vec!["shellResized".to_owned()]),
                )
                .await
                .map_err(internal)?;
            log_skip(shell_id, behind, from - *cursor);
            tx.send(ModelInput::Reset).await.map_err(|_| stopped())?;
            for event in &resizes {
                if let Some(input) = model_input(shell_id, event) {
                    tx.send(input).await.map_err(|_| stopped())?;
                }
            }
            *cursor = from;
            pin.advance(*cursor);
        }
        let (page, full) = log
            .page_bytes(*cursor, upto, PAGE, names.clone(), page_bytes)
            .await
            .map_err(internal)?;
        // A short page that did not stop for its size reached `upto`.
        let reached = match page.last() {
            Some(last) if full || page.len() == PAGE as usize => last.seq,
            _ => upto,
        };
        for event in &page {
            if let Some(input) = model_input(shell_id, event) {
                tx.send(input).await.map_err(|_| stopped())?;
            }
        }
        *cursor = reached;
        pin.advance(*cursor);
    }
    Ok(())
}

/// Says that a model skipped output: a warning at most every 10 s (a flood
/// skips many times a second), the rest at debug level.
fn log_skip(shell_id: u32, behind: u64, skipped: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    let now = crate::log::now_ms();
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            shell_id,
            behind,
            skipped,
            "terminal model skips output it cannot keep up with (late joiners get the screen from the last output only)"
        );
    } else {
        tracing::debug!(shell_id, behind, skipped, "terminal model skips output");
    }
}

/// What `event` means to the model of shell `shell_id`, if anything.
fn model_input(shell_id: u32, event: &LoggedEvent) -> Option<ModelInput> {
    match (&event.frame, event.name.as_str()) {
        (Frame::Binary(bytes), "shellData") => {
            let (header, payload) = BinaryHeader::decode(bytes).ok()?;
            (header.id == shell_id)
                .then(|| ModelInput::Output(bytes.slice(bytes.len() - payload.len()..)))
        }
        (Frame::Text(text), "shellResized") => {
            let v = serde_json::from_slice::<serde_json::Value>(text).ok()?;
            let data = &v["data"];
            if data["shellId"].as_u64() != Some(u64::from(shell_id)) {
                return None;
            }
            let cols = data["cols"].as_u64().and_then(|c| u16::try_from(c).ok())?;
            let rows = data["rows"].as_u64().and_then(|r| u16::try_from(r).ok())?;
            Some(ModelInput::Resize { rows, cols })
        }
        _ => None,
    }
}
