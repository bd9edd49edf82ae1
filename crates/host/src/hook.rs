//! Server-side hooks: code that runs once per logged event, however many
//! clients are connected. A hook is either a Rust closure (for embedders) or
//! a long-lived command fed JSON Lines (for app users). Each hook reads the
//! log itself from its own persisted position, so a crash or restart resumes
//! where it stopped; delivery is at least once, with at most the last
//! unconfirmed page repeated after a crash (every event carries its `seq`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ensemble_protocol::VmInfo;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::log::LoggedEvent;
use crate::vm::Vm;

/// Events a hook takes from the log per read; its position is persisted after
/// each page.
const HOOK_PAGE: u32 = 512;

/// Lines waiting for the hook command. Each VM's runner waits for its line to
/// be written, so this only needs room for one line per VM.
const COMMAND_QUEUE: usize = 64;

/// Pause before restarting a hook command that exited.
const COMMAND_RESTART_DELAY: Duration = Duration::from_secs(1);

/// One event as a hook sees it.
#[derive(Debug, Clone)]
pub struct HookEvent {
    pub vm: VmInfo,
    pub seq: u64,
    pub ts: u64,
    pub name: String,
    /// The event's data; a byte-stream event's bytes are base64 in `data.data`.
    pub data: Value,
}

/// A `sessionEvent`, unpacked (agentOS `onSessionEvent(c, sessionId, event)`).
#[derive(Debug, Clone)]
pub struct SessionHookEvent {
    pub vm: VmInfo,
    pub seq: u64,
    pub session_id: String,
    pub sequence_number: u64,
    /// The ACP notification as the agent sent it.
    pub event: Value,
}

type HookFn = Arc<dyn Fn(HookEvent) -> BoxFuture<'static, ()> + Send + Sync>;

/// A hook, named: the name keys its persisted position, so keep it stable.
#[derive(Clone)]
pub struct Hook {
    name: String,
    names: Option<Vec<String>>,
    target: Target,
}

#[derive(Clone)]
enum Target {
    Closure(HookFn),
    Command(mpsc::Sender<Line>, Option<Acks>),
}

struct Line {
    text: String,
    /// Answered with the generation of the command (how many times it was
    /// started) that the line was written to.
    written: oneshot::Sender<u64>,
}

/// What a command with acknowledgements has confirmed: per VM id, the
/// highest `seq` it acknowledged (`ack VMID SEQ` on its stdout), and the
/// generation of the command now running (a restart may have lost lines
/// written but not acknowledged).
#[derive(Clone)]
struct Acks {
    acked: Arc<std::sync::Mutex<std::collections::HashMap<u64, watch::Sender<u64>>>>,
    generation: watch::Receiver<u64>,
}

impl Acks {
    /// The acknowledged seq of VM `vm`, starting at `from` (its stored
    /// position) if the command has acknowledged nothing of it yet.
    fn of(&self, vm: u64, from: u64) -> watch::Receiver<u64> {
        let mut map = self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = map.entry(vm).or_insert_with(|| watch::channel(from).0);
        tx.send_if_modified(|v| {
            let raise = *v < from;
            if raise {
                *v = from;
            }
            raise
        });
        tx.subscribe()
    }

    fn ack(&self, vm: u64, seq: u64) {
        let map = self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = map.get(&vm) {
            tx.send_if_modified(|v| {
                let raise = *v < seq;
                if raise {
                    *v = seq;
                }
                raise
            });
        }
    }
}

/// Reads `ack VMID SEQ` lines from a hook command's stdout; other lines go
/// to the host's stdout, as they would without acknowledgements.
async fn read_acks(stdout: tokio::process::ChildStdout, acks: Acks) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("ack"), Some(vm), Some(seq), None) => vm.parse().ok().zip(seq.parse().ok()),
            _ => None,
        };
        match parsed {
            Some((vm, seq)) => acks.ack(vm, seq),
            None => println!("{line}"),
        }
    }
}

impl Hook {
    /// Runs `f` for every event of every VM, in log order.
    pub fn on_event<F, Fut>(name: impl Into<String>, f: F) -> Hook
    where
        F: Fn(HookEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Hook {
            name: name.into(),
            names: None,
            target: Target::Closure(Arc::new(move |e| f(e).boxed())),
        }
    }

    /// Runs `f` for every `sessionEvent`, in log order.
    pub fn on_session_event<F, Fut>(name: impl Into<String>, f: F) -> Hook
    where
        F: Fn(SessionHookEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        let wrapped = move |e: HookEvent| {
            let f = f.clone();
            async move {
                let unpacked = (|| {
                    Some(SessionHookEvent {
                        session_id: e.data.get("sessionId")?.as_str()?.to_owned(),
                        sequence_number: e.data.get("sequenceNumber")?.as_u64()?,
                        event: e.data.get("event")?.clone(),
                        vm: e.vm,
                        seq: e.seq,
                    })
                })();
                match unpacked {
                    Some(event) => f(event).await,
                    None => tracing::error!(seq = e.seq, "sessionEvent without its fields"),
                }
            }
            .boxed()
        };
        Hook {
            name: name.into(),
            names: Some(vec!["sessionEvent".to_owned()]),
            target: Target::Closure(Arc::new(wrapped)),
        }
    }

    /// Starts `command` (through `sh -c`) and feeds it one JSON line per event:
    /// `{"vm":{"id":..,"key":[..]},"event":{"seq":..,"ts":..,"name":..,"data":..}}`.
    /// The command is restarted if it exits; its position then resumes.
    pub fn command(command: impl Into<String>, cancel: CancellationToken) -> Hook {
        Hook::command_with(command, false, cancel)
    }

    /// [`Hook::command`]; with `ack`, the command acknowledges what it has
    /// processed by writing `ack VMID SEQ` lines to its stdout (every line
    /// of that VM up to `SEQ`), and the position advances only with them:
    /// lines written but not acknowledged are written again after the
    /// command is restarted or the host is.
    pub fn command_with(command: impl Into<String>, ack: bool, cancel: CancellationToken) -> Hook {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (generation_tx, generation) = watch::channel(0);
        let acks = ack.then(|| Acks {
            acked: Arc::default(),
            generation,
        });
        tokio::spawn(run_command(
            command.into(),
            rx,
            acks.clone(),
            generation_tx,
            cancel,
        ));
        Hook {
            name: "command".to_owned(),
            names: None,
            target: Target::Command(tx, acks),
        }
    }
}

/// The hooks of a host; attaches a runner per hook to every VM it opens.
#[derive(Clone)]
pub struct Hooks {
    list: Arc<Vec<Hook>>,
    cancel: CancellationToken,
}

impl Hooks {
    pub fn new(list: Vec<Hook>, cancel: CancellationToken) -> Hooks {
        Hooks {
            list: Arc::new(list),
            cancel,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn attach(&self, vm: &Vm) {
        for hook in self.list.iter() {
            tokio::spawn(run_hook(vm.clone(), hook.clone(), self.cancel.clone()));
        }
    }

    pub fn detach_all(&self) {
        self.cancel.cancel();
    }
}

async fn run_hook(vm: Vm, hook: Hook, cancel: CancellationToken) {
    let log = vm.log().clone();
    // Subscribed before the first read: the channel is only a wake-up.
    let mut wake = log.subscribe();
    let position_key = format!("hook:{}", hook.name);
    let mut position: u64 = match log.hook_position(position_key.clone()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(hook = %hook.name, vm = vm.info().id, error = %e, "hook cannot read its position; it stays stopped");
            return;
        }
    };
    // The position as stored (for a command with acks: acknowledged).
    let mut stored = position;
    // Registered before any line is written, so no acknowledgement is missed.
    let mut acked = match &hook.target {
        Target::Command(_, Some(acks)) => Some(acks.of(vm.info().id, position)),
        _ => None,
    };
    loop {
        let head = log.head();
        if position < head {
            let (page, reached) = match log
                .scan(position, head, HOOK_PAGE, hook.names.clone())
                .await
            {
                Ok(scanned) => scanned,
                Err(e) => {
                    tracing::error!(hook = %hook.name, error = %e, "hook cannot read the log; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // The generation each line went to, for a command with acks.
            let mut generations = std::collections::BTreeSet::new();
            for event in &page {
                let delivered = tokio::select! {
                    _ = cancel.cancelled() => None,
                    written = deliver(&vm, &hook, event) => written,
                };
                let Some(generation) = delivered else {
                    return;
                };
                generations.insert(generation);
                position = event.seq;
            }
            position = position.max(reached);
            if let (Target::Command(_, Some(acks)), Some(acked), Some(&first)) =
                (&hook.target, acked.as_mut(), generations.first())
            {
                // Wait until the command acknowledged the page; if it was
                // restarted meanwhile, what it had not acknowledged may be
                // lost: write it again from the last acknowledged seq.
                let last_written = page.last().map_or(position, |e| e.seq);
                let mut generation = acks.generation.clone();
                let restarted = generations.len() > 1 || *generation.borrow_and_update() != first;
                let confirmed = !restarted
                    && tokio::select! {
                        _ = cancel.cancelled() => return,
                        a = acked.wait_for(|a| *a >= last_written) => a.is_ok(),
                        _ = generation.wait_for(|g| *g != first) => false,
                    };
                if !confirmed {
                    position = (*acked.borrow()).max(stored);
                    tracing::warn!(hook = %hook.name, vm = vm.info().id, from = position, "hook command restarted before acknowledging; writing again");
                    continue;
                }
            }
            stored = position;
            if let Err(e) = log.set_hook_position(position_key.clone(), position).await {
                tracing::error!(hook = %hook.name, error = %e, "hook position not saved; events may repeat after a restart");
            }
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = wake.recv() => match r {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Delivers one event: for a command, the generation it was written to
/// (0 for a closure); `None` if the hook can no longer take events.
async fn deliver(vm: &Vm, hook: &Hook, event: &LoggedEvent) -> Option<u64> {
    let json = match event.json() {
        Ok(json) => json,
        Err(e) => {
            tracing::error!(hook = %hook.name, error = %e, "event skipped by hook: unreadable");
            return Some(0);
        }
    };
    match &hook.target {
        Target::Closure(f) => {
            let data = serde_json::from_str::<Value>(&json)
                .ok()
                .and_then(|mut v| v.get_mut("data").map(Value::take))
                .unwrap_or(Value::Null);
            let call = f(HookEvent {
                vm: vm.info().clone(),
                seq: event.seq,
                ts: event.ts,
                name: event.name.clone(),
                data,
            });
            if AssertUnwindSafe(call).catch_unwind().await.is_err() {
                tracing::error!(hook = %hook.name, seq = event.seq, "hook panicked on an event; going on");
            }
            Some(0)
        }
        Target::Command(tx, _) => {
            // One write per line, newline included.
            let text = format!(
                "{{\"vm\":{},\"event\":{}}}\n",
                serde_json::to_string(vm.info()).unwrap_or_else(|_| "null".into()),
                json
            );
            let (written, generation) = oneshot::channel();
            tx.send(Line { text, written }).await.ok()?;
            generation.await.ok()
        }
    }
}

async fn run_command(
    command: String,
    mut rx: mpsc::Receiver<Line>,
    acks: Option<Acks>,
    generation: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut child: Option<(tokio::process::Child, tokio::process::ChildStdin)> = None;
    loop {
        let exited = async {
            match child.as_mut() {
                Some((proc_, _)) => proc_.wait().await,
                None => std::future::pending().await,
            }
        };
        let line = tokio::select! {
            _ = cancel.cancelled() => break,
            line = rx.recv() => match line { Some(l) => l, None => break },
            status = exited => {
                // Noticed now, not at the next write: with acks, the lines
                // it had not acknowledged are to be written again, and a
                // new generation says so.
                tracing::warn!(%command, ?status, "hook command exited; restarting it");
                child = None;
                generation.send_modify(|g| *g += 1);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(COMMAND_RESTART_DELAY) => continue,
                }
            }
        };
        loop {
            if child.is_none() {
                match spawn_command(&command, acks.clone()) {
                    Ok(c) => {
                        child = Some(c);
                        generation.send_modify(|g| *g += 1);
                    }
                    Err(e) => {
                        tracing::error!(%command, error = %e, "hook command does not start; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(COMMAND_RESTART_DELAY) => continue,
                        }
                    }
                }
            }
            let Some((proc_, stdin)) = child.as_mut() else {
                continue;
            };
            let write = async {
                stdin.write_all(line.text.as_bytes()).await?;
                stdin.flush().await
            };
            match write.await {
                Ok(()) => {
                    let _ = line.written.send(*generation.borrow());
                    break;
                }
                Err(e) => {
                    let status = proc_.wait().await;
                    tracing::warn!(%command, error = %e, ?status, "hook command exited; restarting it");
                    child = None;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(COMMAND_RESTART_DELAY) => {}
                    }
                }
            }
        }
    }
    if let Some((mut proc_, stdin)) = child {
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(5), proc_.wait())
            .await
            .is_err()
        {
            let _ = proc_.kill().await;
        }
    }
}

fn spawn_command(
    command: &str,
    acks: Option<Acks>,
) -> std::io::Result<(tokio::process::Child, tokio::process::ChildStdin)> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .kill_on_drop(true);
    if acks.is_some() {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("hook command has no stdin"))?;
    if let (Some(acks), Some(stdout)) = (acks, child.stdout.take()) {
        tokio::spawn(read_acks(stdout, acks));
    }
    Ok((child, stdin))
}
