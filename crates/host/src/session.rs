//! Agent sessions over ACP: the host is the ACP client of an agent process it
//! starts with a clean environment. Each session is one task that owns the
//! connection; the agent's `session/update` notifications become
//! `sessionEvent`s in the log, its permission requests wait for a person,
//! and its file reads and writes stay inside the VM's workspace. A session
//! whose agent has gone (host restart, crash, close) is resumed by starting
//! the agent again and sending ACP `session/load`, if the agent supports it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, CreateTerminalRequest,
    CreateTerminalResponse, FileSystemCapabilities, Implementation, InitializeRequest,
    KillTerminalRequest, KillTerminalResponse, LoadSessionRequest, NewSessionRequest,
    PromptRequest, ReadTextFileRequest, ReadTextFileResponse, ReleaseTerminalRequest,
    ReleaseTerminalResponse, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome, SessionNotification, SessionUpdate,
    SetSessionModeRequest, TerminalExitStatus, TerminalOutputRequest, TerminalOutputResponse,
    TextContent, WaitForTerminalExitRequest, WaitForTerminalExitResponse, WriteTextFileRequest,
    WriteTextFileResponse,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, ByteStreams, Client, Error};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use nix::sys::signal::Signal;

use crate::agents::AgentCommand;
use crate::log::{Log, NewEvent};
use crate::process::{signal_group, ExitInfo, Tap};
use crate::vm::VmError;
use crate::vm::WeakVm;
use crate::workspace::{Environment, Workspace};
use ensemble_sandbox::VmSandbox;

/// How long an agent has to answer `initialize` and `session/new`, unless
/// the host is configured otherwise.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a permission request waits for a person before it is answered
/// `cancelled`.
pub const PERMISSION_TIMEOUT: Duration = Duration::from_secs(300);

/// Commands waiting for a session's task.
const SESSION_QUEUE: usize = 32;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub agent_type: String,
    /// The agent's own id of the session (what `session/load` takes).
    pub agent_session_id: String,
    pub agent_info: Value,
    pub capabilities: Value,
    /// `ready`, `prompting` or `ended`.
    pub state: String,
}

/// What a finished turn answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnResult {
    pub stop_reason: Value,
    pub text: String,
}

/// Who sent a prompt and how, for the `prompt` event.
#[derive(Debug, Clone)]
pub struct PromptOrigin {
    /// The author's participant id (`p1`), name and colour as of the prompt.
    pub participant_id: String,
    pub name: String,
    pub color: String,
    /// What the person wrote; the agent may get more (the shell context).
    pub text: String,
    /// The shell context was put before the person's text.
    pub shell_context: bool,
    /// Sent with `handToAgent` (the agent holds control for the turn).
    pub handed: bool,
}

/// What a session's task is asked to do.
pub enum SessionCommand {
    Prompt {
        text: String,
        origin: PromptOrigin,
        reply: oneshot::Sender<Result<TurnResult, VmError>>,
    },
    Cancel,
    Close,
    SetMode {
        mode: String,
        reply: oneshot::Sender<Result<(), VmError>>,
    },
}

type Pending = Arc<Mutex<HashMap<String, Responder<RequestPermissionResponse>>>>;

/// A live session as the VM actor sees it.
struct Entry {
    info: Arc<Mutex<SessionInfo>>,
    commands: mpsc::Sender<SessionCommand>,
    pending: Pending,
}

/// The sessions of one VM; owned by the VM actor.
#[derive(Default)]
pub struct Sessions {
    entries: HashMap<String, Entry>,
    /// Sessions being resumed: a second resume of one is refused meanwhile.
    resuming: std::collections::HashSet<String>,
}

/// Everything a new session needs, gathered by the action.
pub struct SessionStart {
    pub session_id: String,
    pub agent_type: String,
    pub agent: AgentCommand,
    /// The VM's sandbox, which the agent runs in.
    pub sandbox: Arc<VmSandbox>,
    pub env: Environment,
    pub workspace: Workspace,
    pub log: Log,
    /// For `terminal/*`: the agent's commands run as the VM's processes.
    pub vm: WeakVm,
    pub init_timeout: Duration,
    /// The session's working directory, as sent in `session/new` or
    /// `session/load` (in the VM's view: `/workspace` in a sandbox).
    pub cwd: PathBuf,
    /// Resume: the agent's session id to `session/load` instead of `session/new`.
    pub load: Option<String>,
}

impl Sessions {
    pub fn insert(&mut self, started: Started) {
        self.resuming.remove(&started.session_id);
        self.entries
            .insert(started.session_id.clone(), started.entry);
    }

    /// Claims `id` for a resume: refused while its task still runs or another
    /// resume of it is under way. Ends with [`Sessions::insert`] or
    /// [`Sessions::release`].
    pub fn reserve(&mut self, id: &str) -> Result<(), VmError> {
        // The channel closes when the task is over, after `sessionEnded`.
        let live = self
            .entries
            .get(id)
            .is_some_and(|e| !e.commands.is_closed());
        if live || !self.resuming.insert(id.to_owned()) {
            return Err(VmError::InvalidArgs(format!(
                "session {id} is live or being resumed; only an ended session can be resumed"
            )));
        }
        Ok(())
    }

    /// Gives up a [`Sessions::reserve`] whose resume failed.
    pub fn release(&mut self, id: &str) {
        self.resuming.remove(id);
    }

    fn entry(&self, id: &str) -> Result<&Entry, VmError> {
        self.entries
            .get(id)
            .ok_or_else(|| VmError::NoSuchSession(id.to_owned()))
    }

    pub fn info(&self, id: &str) -> Result<SessionInfo, VmError> {
        let entry = self.entry(id)?;
        Ok(entry
            .info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let mut ids: Vec<&String> = self.entries.keys().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| self.info(id).ok())
            .collect()
    }

    pub fn commands(&self, id: &str) -> Result<mpsc::Sender<SessionCommand>, VmError> {
        Ok(self.entry(id)?.commands.clone())
    }

    /// Answers a pending permission request; the first answer wins.
    pub fn respond(&self, id: &str, permission_id: &str, option_id: &str) -> Result<(), VmError> {
        let entry = self.entry(id)?;
        let responder = entry
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(permission_id))
            .ok_or_else(|| {
                VmError::NotPending(format!("permission {permission_id} of session {id}"))
            })?;
        let outcome = RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(
            option_id.to_owned(),
        ));
        responder
            .respond(RequestPermissionResponse::new(outcome))
            .map_err(|e| VmError::Internal(e.to_string()))
    }

    /// Closes every session; used when the VM closes.
    pub fn close_all(&mut self) {
        for entry in self.entries.values() {
            let _ = entry.commands.try_send(SessionCommand::Close);
        }
    }
}

impl SessionCommand {
    pub fn prompt(
        text: String,
        origin: PromptOrigin,
    ) -> (
        SessionCommand,
        oneshot::Receiver<Result<TurnResult, VmError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        (
            SessionCommand::Prompt {
                text,
                origin,
                reply,
            },
            rx,
        )
    }

    pub fn set_mode(mode: String) -> (SessionCommand, oneshot::Receiver<Result<(), VmError>>) {
        let (reply, rx) = oneshot::channel();
        (SessionCommand::SetMode { mode, reply }, rx)
    }

    pub fn cancel() -> SessionCommand {
        SessionCommand::Cancel
    }

    pub fn close() -> SessionCommand {
        SessionCommand::Close
    }
}

/// A session whose agent answered `initialize` and `session/new`.
pub struct Started {
    session_id: String,
    entry: Entry,
    pub info: SessionInfo,
}

/// The `data.event` of the `sessionEvent` an agent's `session/update`
/// becomes: the notification as ACP wrote it. Public for the fuzzer
/// (crates/fuzz), which checks that no notification the ACP layer accepts
/// fails to become an event.
pub fn session_event(notification: &SessionNotification) -> String {
    json!({
        "jsonrpc": "2.0",
        "method": "session/update",
        "params": notification,
    })
    .to_string()
}

/// Starts the agent, initializes it and opens its session. Fails (and kills
/// the agent) if it does not start or does not answer in time.
pub async fn start(start: SessionStart) -> Result<Started, VmError> {
    let SessionStart {
        session_id,
        agent_type,
        agent,
        sandbox,
        mut env,
        workspace,
        log,
        vm,
        init_timeout,
        cwd,
        load,
    } = start;
    // The agent's own files (its package, its Node) are shown read-only.
    let needs = sandbox.agent_paths(&agent.command, &agent.args);
    if let Some(bin) = &needs.bin_dir {
        env.prepend_path(bin);
    }
    let launch = sandbox.launch(
        &agent.command,
        &agent.args,
        workspace.view(),
        false,
        &needs.read_only,
    );
    let mut child = tokio::process::Command::new(&launch.program)
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(env.vars())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // An agent's diagnostics may echo its environment: never kept.
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            VmError::AgentFailed(format!(
                "cannot start agent {agent_type:?} ({}): {e}",
                agent.command
            ))
        })?;
    // The agent leads its own process group: whatever it started (`npx`
    // starts `npm exec`, which starts node) is killed with it.
    let group = child.id().map(GroupKill);
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(VmError::AgentFailed("agent has no pipes".to_owned()));
    };
    let transport = ByteStreams::new(stdin.compat_write(), stdout.compat());
    let info = Arc::new(Mutex::new(SessionInfo {
        session_id: session_id.clone(),
        agent_type: agent_type.clone(),
        agent_session_id: String::new(),
        agent_info: Value::Null,
        capabilities: Value::Null,
        state: "starting".to_owned(),
    }));
    let pending: Pending = Arc::default();
    let (commands_tx, commands_rx) = mpsc::channel(SESSION_QUEUE);
    let (ready_tx, ready_rx) = oneshot::channel();
    let turn_text: Arc<Mutex<String>> = Arc::default();
    // A resumed session numbers its turns on from the ones it logged.
    let turns = match &load {
        Some(_) => logged_turns(&log, &session_id).await,
        None => 0,
    };
    let task = SessionTask {
        session_id: session_id.clone(),
        log: log.clone(),
        workspace,
        sandbox,
        pending: pending.clone(),
        info: info.clone(),
        turn_text,
        turns,
        vm,
        terminals: Arc::default(),
        loading: Arc::default(),
    };
    let opening = Opening { cwd, load };
    let mut running = AbortOnDrop(Some(tokio::spawn(async move {
        let _group = group;
        task.run(child, transport, opening, commands_rx, ready_tx)
            .await
    })));
    match tokio::time::timeout(init_timeout, ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => {
            return Err(VmError::AgentFailed(format!(
                "agent {agent_type:?} exited during initialization"
            )))
        }
        Err(_) => {
            // The task waits on the agent's answer: stopping it (dropping
            // `running`) drops and so kills the agent and its group.
            return Err(VmError::AgentFailed(format!(
                "agent {agent_type:?} did not answer initialize within {}s",
                init_timeout.as_secs_f32()
            )));
        }
    }
    // Started: the session runs on its own from now on.
    running.0.take();
    let snapshot = info
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Started {
        session_id,
        info: snapshot,
        entry: Entry {
            info,
            commands: commands_tx,
            pending,
        },
    })
}

/// Kills an agent's process group when dropped: when its session ends,
/// when it fails to start, and when the task is aborted (the host stops
/// while the agent initializes). A group outlives its leader while any
/// member lives, so the id cannot have been reused meanwhile.
struct GroupKill(u32);

impl Drop for GroupKill {
    fn drop(&mut self) {
        signal_group(self.0, Signal::SIGKILL);
    }
}

/// Aborts a task when dropped unless taken out: a `createSession` that is
/// dropped (the host stops) must not leave its agent starting.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct SessionTask {
    session_id: String,
    log: Log,
    workspace: Workspace,
    /// To hand files the agent writes to the VM's uid.
    sandbox: Arc<VmSandbox>,
    pending: Pending,
    info: Arc<Mutex<SessionInfo>>,
    /// The agent's message text of the current turn.
    turn_text: Arc<Mutex<String>>,
    /// Turns started before this task (a resumed session's).
    turns: u64,
    vm: WeakVm,
    /// The agent's terminals: VM processes everyone can watch.
    terminals: Arc<Mutex<HashMap<String, Terminal>>>,
    /// True while `session/load` runs: the transcript the agent replays is
    /// already in the log, so its updates are not logged again.
    loading: Arc<AtomicBool>,
}

/// How many `prompt` events the log holds for `session_id`.
async fn logged_turns(log: &Log, session_id: &str) -> u64 {
    let id = session_id.to_owned();
    log.read(move |conn| {
        conn.query_row(
            "SELECT count(*) FROM events WHERE name = 'prompt'
             AND json_extract(CAST(body AS TEXT), '$.data.sessionId') = ?1",
            [id],
            |r| r.get::<_, u64>(0),
        )
    })
    .await
    .unwrap_or(0)
}

/// How the task opens its session: `session/new` in `cwd`, or `session/load`
/// of the agent's session `load`.
struct Opening {
    cwd: PathBuf,
    load: Option<String>,
}

#[derive(Clone)]
struct Terminal {
    pid: u32,
    tap: Tap,
    exit: watch::Receiver<Option<ExitInfo>>,
}

/// Kills an agent with everything it started: its sandbox's PID namespace
/// (without a sandbox: its children), then the process.
async fn end_agent(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        ensemble_sandbox::kill_sandbox(pid);
    }
    let _ = child.kill().await;
}

/// `terminal/output` keeps this much when the agent sets no limit.
const TERMINAL_OUTPUT_LIMIT: usize = 1 << 20; // 1 MiB

fn acp_exit(exit: &ExitInfo) -> TerminalExitStatus {
    let mut status = TerminalExitStatus::new();
    if let Some(code) = exit.exit_code.and_then(|c| u32::try_from(c).ok()) {
        status = status.exit_code(code);
    }
    if let Some(signal) = exit.signal {
        status = status.signal(format!("signal {signal}"));
    }
    status
}

impl SessionTask {
    fn set_state(&self, state: &str) {
        if let Ok(mut info) = self.info.lock() {
            info.state = state.to_owned();
        }
    }

    async fn log_json(&self, name: &str, data: Value) {
        let event = NewEvent::Json {
            name: name.to_owned(),
            data: data.to_string(),
        };
        if let Err(e) = self.log.append(vec![event]).await {
            tracing::error!(session = %self.session_id, error = %e, "{name} not logged");
        }
    }

    /// Answers every pending permission request `cancelled`, as ACP requires
    /// when a turn is cancelled.
    fn cancel_pending(&self) {
        let drained: Vec<_> = self
            .pending
            .lock()
            .map(|mut p| p.drain().collect())
            .unwrap_or_default();
        for (_, responder) in drained {
            let _ = responder.respond(RequestPermissionResponse::new(
                RequestPermissionOutcome::Cancelled,
            ));
        }
    }

    async fn run(
        self,
        mut child: tokio::process::Child,
        transport: ByteStreams<
            tokio_util::compat::Compat<tokio::process::ChildStdin>,
            tokio_util::compat::Compat<tokio::process::ChildStdout>,
        >,
        opening: Opening,
        mut commands: mpsc::Receiver<SessionCommand>,
        ready: oneshot::Sender<Result<(), VmError>>,
    ) {
        let on_update = self.clone();
        let on_permission = self.clone();
        let on_read = self.clone();
        let on_write = self.clone();
        let foreground = self.clone();
        let mut ready = Some(ready);
        // Why the session did not open, when it is not the agent's fault.
        let mut refused: Option<VmError> = None;
        let result = Client
            .v1()
            .name("ensemble-host")
            .on_receive_notification(
                async move |n: SessionNotification, _cx| {
                    on_update.update(n).await;
                    Ok(())
                },
                agent_client_protocol::on_receive_notification!(),
            )
            .on_receive_request(
                async move |request: RequestPermissionRequest,
                            responder,
                            _cx: ConnectionTo<Agent>| {
                    on_permission.permission(request, responder).await;
                    Ok(())
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: ReadTextFileRequest,
                            responder: Responder<ReadTextFileResponse>,
                            _cx| {
                    let path = request.path.display().to_string();
                    match on_read.workspace.resolve_file(&path, false) {
                        Ok(real) => match tokio::fs::read_to_string(&real).await {
                            Ok(text) => responder.respond(ReadTextFileResponse::new(text)),
                            Err(e) => responder
                                .respond_with_error(Error::internal_error().data(e.to_string())),
                        },
                        Err(e) => responder
                            .respond_with_error(Error::invalid_params().data(e.to_string())),
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                async move |request: WriteTextFileRequest,
                            responder: Responder<WriteTextFileResponse>,
                            _cx| {
                    let path = request.path.display().to_string();
                    match on_write.workspace.resolve_file(&path, true) {
                        Ok(real) => match tokio::fs::write(&real, request.content.as_bytes()).await
                        {
                            Ok(()) => {
                                on_write.sandbox.own(&real);
                                responder.respond(WriteTextFileResponse::new())
                            }
                            Err(e) => responder
                                .respond_with_error(Error::internal_error().data(e.to_string())),
                        },
                        Err(e) => responder
                            .respond_with_error(Error::invalid_params().data(e.to_string())),
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                {
                    let task = self.clone();
                    async move |request: CreateTerminalRequest,
                                responder: Responder<CreateTerminalResponse>,
                                cx: ConnectionTo<Agent>| {
                        let task = task.clone();
                        cx.spawn(async move {
                            match task.create_terminal(request).await {
                                Ok(r) => responder.respond(r),
                                Err(e) => responder.respond_with_error(e),
                            }
                        })
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                {
                    let task = self.clone();
                    async move |request: TerminalOutputRequest,
                                responder: Responder<TerminalOutputResponse>,
                                _cx| {
                        match task.terminal(&request.terminal_id.0) {
                            Ok(t) => {
                                let (output, truncated) = t.tap.read();
                                let exit = *t.exit.borrow();
                                let mut response = TerminalOutputResponse::new(output, truncated);
                                if let Some(exit) = exit {
                                    response = response.exit_status(acp_exit(&exit));
                                }
                                responder.respond(response)
                            }
                            Err(e) => responder.respond_with_error(e),
                        }
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                {
                    let task = self.clone();
                    async move |request: WaitForTerminalExitRequest,
                                responder: Responder<WaitForTerminalExitResponse>,
                                cx: ConnectionTo<Agent>| {
                        let terminal = task.terminal(&request.terminal_id.0);
                        cx.spawn(async move {
                            let mut t = match terminal {
                                Ok(t) => t,
                                Err(e) => return responder.respond_with_error(e),
                            };
                            let waited = t.exit.wait_for(Option::is_some).await.map(|e| *e);
                            match waited {
                                Ok(exit) => {
                                    let status = exit.as_ref().map(acp_exit).unwrap_or_default();
                                    responder.respond(WaitForTerminalExitResponse::new(status))
                                }
                                Err(_) => responder.respond_with_error(
                                    Error::internal_error().data("the VM closed"),
                                ),
                            }
                        })
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                {
                    let task = self.clone();
                    async move |request: KillTerminalRequest,
                                responder: Responder<KillTerminalResponse>,
                                _cx| {
                        match task.terminal(&request.terminal_id.0) {
                            Ok(t) => {
                                ensemble_sandbox::kill_sandbox(t.pid);
                                responder.respond(KillTerminalResponse::new())
                            }
                            Err(e) => responder.respond_with_error(e),
                        }
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .on_receive_request(
                {
                    let task = self.clone();
                    async move |request: ReleaseTerminalRequest,
                                responder: Responder<ReleaseTerminalResponse>,
                                _cx| {
                        // Released, the command is stopped if still running; it
                        // stays in the VM's process list and log for everyone.
                        let released = task
                            .terminals
                            .lock()
                            .ok()
                            .and_then(|mut t| t.remove(&*request.terminal_id.0));
                        match released {
                            Some(t) => {
                                if t.exit.borrow().is_none() {
                                    ensemble_sandbox::kill_sandbox(t.pid);
                                }
                                responder.respond(ReleaseTerminalResponse::new())
                            }
                            None => responder.respond_with_error(
                                Error::invalid_params().data("no such terminal"),
                            ),
                        }
                    }
                },
                agent_client_protocol::on_receive_request!(),
            )
            .connect_with(transport, async |cx: ConnectionTo<Agent>| {
                let init = cx
                    .send_request(
                        InitializeRequest::new(ProtocolVersion::V1)
                            .client_capabilities(
                                ClientCapabilities::new()
                                    .fs(FileSystemCapabilities::new()
                                        .read_text_file(true)
                                        .write_text_file(true))
                                    .terminal(true),
                            )
                            .client_info(Implementation::new(
                                "ensemble",
                                env!("CARGO_PKG_VERSION"),
                            )),
                    )
                    .block_task()
                    .await?;
                let Opening { cwd, load } = opening;
                let agent_session = match load {
                    None => {
                        cx.send_request(NewSessionRequest::new(cwd))
                            .block_task()
                            .await?
                            .session_id
                    }
                    Some(id) => {
                        if !init.agent_capabilities.load_session {
                            refused = Some(VmError::CannotResume(
                                "the agent does not support session/load (its initialize answer has loadSession false)".to_owned(),
                            ));
                            return Ok(());
                        }
                        foreground.loading.store(true, Ordering::SeqCst);
                        // The dispatch loop handles the replayed notifications
                        // before it routes the answer, so all are dropped.
                        let loaded = cx
                            .send_request(LoadSessionRequest::new(id.clone(), cwd))
                            .block_task()
                            .await;
                        foreground.loading.store(false, Ordering::SeqCst);
                        if let Err(e) = loaded {
                            refused = Some(VmError::CannotResume(format!(
                                "the agent could not load its session {id:?}: {e}"
                            )));
                            return Ok(());
                        }
                        id.into()
                    }
                };
                if let Ok(mut info) = foreground.info.lock() {
                    info.agent_session_id = agent_session.0.to_string();
                    info.agent_info = serde_json::to_value(&init.agent_info).unwrap_or(Value::Null);
                    info.capabilities =
                        serde_json::to_value(&init.agent_capabilities).unwrap_or(Value::Null);
                    info.state = "ready".to_owned();
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                foreground.serve(&cx, agent_session, &mut commands).await
            })
            .await;
        // Closed before `sessionEnded` is logged, so that whoever sees the
        // event finds the session over (and may resume it).
        drop(commands);
        let status = child.try_wait().ok().flatten();
        let (reason, exit_code) = match (&result, status) {
            (Ok(()), _) => ("closed", None),
            (Err(_), Some(status)) => ("agent exited", status.code()),
            (Err(_), None) => ("agent failed", None),
        };
        if let Some(ready) = ready.take() {
            let error = refused.unwrap_or_else(|| {
                VmError::AgentFailed(match &result {
                    Err(e) => format!("agent did not start a session: {e}"),
                    Ok(()) => "agent closed before its session started".to_owned(),
                })
            });
            let _ = ready.send(Err(error));
            end_agent(&mut child).await;
            return;
        }
        self.cancel_pending();
        self.set_state("ended");
        end_agent(&mut child).await;
        let exit_code =
            exit_code.or_else(|| child.try_wait().ok().flatten().and_then(|s| s.code()));
        self.log_json(
            "sessionEnded",
            json!({"sessionId": self.session_id, "reason": reason, "exitCode": exit_code}),
        )
        .await;
    }

    /// Serves the session's commands until it is closed or the agent goes.
    async fn serve(
        &self,
        cx: &ConnectionTo<Agent>,
        agent_session: agent_client_protocol::v1::schema::SessionId,
        commands: &mut mpsc::Receiver<SessionCommand>,
    ) -> Result<(), Error> {
        let mut turn: Option<oneshot::Sender<Result<TurnResult, VmError>>> = None;
        let mut turns = self.turns;
        let (done_tx, mut done_rx) = mpsc::channel(1);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(SessionCommand::Close) => return Ok(()),
                    Some(SessionCommand::SetMode { mode, reply }) => {
                        let sent = cx.send_request(SetSessionModeRequest::new(agent_session.clone(), mode));
                        cx.spawn(async move {
                            let result = sent
                                .block_task()
                                .await
                                .map(|_| ())
                                .map_err(|e| VmError::InvalidArgs(format!("the agent refused the mode: {e}")));
                            let _ = reply.send(result);
                            Ok(())
                        })?;
                    }
                    Some(SessionCommand::Cancel) => {
                        self.cancel_pending();
                        cx.send_notification(CancelNotification::new(agent_session.clone()))?;
                    }
                    Some(SessionCommand::Prompt { text, origin, reply }) => {
                        if turn.is_some() {
                            let _ = reply.send(Err(VmError::Busy(self.session_id.clone())));
                            continue;
                        }
                        turns += 1;
                        self.log_json("prompt", json!({
                            "sessionId": self.session_id, "turn": turns,
                            "participantId": origin.participant_id, "name": origin.name,
                            "color": origin.color, "text": origin.text,
                            "shellContext": origin.shell_context, "handed": origin.handed,
                        })).await;
                        if let Ok(mut t) = self.turn_text.lock() {
                            t.clear();
                        }
                        self.set_state("prompting");
                        turn = Some(reply);
                        let request = PromptRequest::new(
                            agent_session.clone(),
                            vec![ContentBlock::Text(TextContent::new(text))],
                        );
                        let sent = cx.send_request(request);
                        let done_tx = done_tx.clone();
                        cx.spawn(async move {
                            let _ = done_tx.send(sent.block_task().await).await;
                            Ok(())
                        })?;
                    }
                },
                finished = done_rx.recv() => {
                    let Some(finished) = finished else { continue };
                    // Everything the turn logged is durable and delivered
                    // before its answer: an empty append waits for the
                    // writer to pass it.
                    if let Err(e) = self.log.append(Vec::new()).await {
                        tracing::error!(session = %self.session_id, error = %e, "the turn's events were not logged");
                    }
                    let (stop_reason, error) = match &finished {
                        Ok(r) => (serde_json::to_value(r.stop_reason).unwrap_or(Value::Null), None),
                        Err(e) => (Value::Null, Some(e.to_string())),
                    };
                    self.log_json("turnEnded", json!({
                        "sessionId": self.session_id, "turn": turns,
                        "stopReason": stop_reason, "error": error,
                    })).await;
                    self.set_state("ready");
                    let text = self.turn_text.lock().map(|t| t.clone()).unwrap_or_default();
                    let result = finished
                        .map(|r| TurnResult {
                            stop_reason: serde_json::to_value(r.stop_reason).unwrap_or(Value::Null),
                            text,
                        })
                        .map_err(|e| VmError::AgentFailed(format!("the turn failed: {e}")));
                    if let Some(reply) = turn.take() {
                        let _ = reply.send(result);
                    }
                }
                _ = cx.incoming_closed() => {
                    if let Some(reply) = turn.take() {
                        let _ = reply.send(Err(VmError::AgentFailed("the agent exited mid-turn".to_owned())));
                    }
                    return Err(Error::internal_error().data("agent closed its output"));
                }
            }
        }
    }

    fn terminal(&self, id: &str) -> Result<Terminal, Error> {
        self.terminals
            .lock()
            .ok()
            .and_then(|t| t.get(id).cloned())
            .ok_or_else(|| Error::invalid_params().data(format!("no terminal {id}")))
    }

    /// `terminal/create`: the command runs as a VM process (logged with this
    /// session's id), in the VM's sandbox and workspace, with the clean
    /// environment; `cwd` is in the VM's view.
    async fn create_terminal(
        &self,
        request: CreateTerminalRequest,
    ) -> Result<CreateTerminalResponse, Error> {
        let vm = self
            .vm
            .upgrade()
            .ok_or_else(|| Error::internal_error().data("the VM is closed"))?;
        let cwd = request.cwd.as_ref().map(|p| p.display().to_string());
        let cwd = vm
            .workspace()
            .resolve_cwd(cwd.as_deref())
            .map_err(|e| Error::invalid_params().data(e.to_string()))?;
        let env: std::collections::BTreeMap<String, String> = request
            .env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        let env = vm
            .workspace()
            .environment(&env)
            .map_err(|e| Error::invalid_params().data(e.to_string()))?;
        let limit = request
            .output_byte_limit
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(TERMINAL_OUTPUT_LIMIT);
        let tap = Tap::new(limit);
        let (command, args, display_cwd) = (
            request.command.clone(),
            request.args.clone(),
            cwd.display().to_string(),
        );
        let process_tap = tap.clone();
        let spawned = vm
            .with(move |s| {
                s.processes
                    .spawn(&command, &args, &cwd, &env, false, Some(process_tap))
            })
            .await
            .and_then(|r| r)
            .map_err(|e| Error::internal_error().data(e.to_string()))?;
        let terminal_id = format!("term-{}", spawned.pid);
        self.log_json(
            "processStarted",
            json!({
                "pid": spawned.pid, "command": request.command, "args": request.args,
                "cwd": display_cwd, "sessionId": self.session_id, "terminalId": terminal_id,
            }),
        )
        .await;
        if let Ok(mut terminals) = self.terminals.lock() {
            terminals.insert(
                terminal_id.clone(),
                Terminal {
                    pid: spawned.pid,
                    tap,
                    exit: spawned.exit.clone(),
                },
            );
        }
        spawned.start.start();
        Ok(CreateTerminalResponse::new(terminal_id))
    }

    async fn update(&self, notification: SessionNotification) {
        if self.loading.load(Ordering::SeqCst) {
            return;
        }
        if let SessionUpdate::AgentMessageChunk(chunk) = &notification.update {
            if let ContentBlock::Text(text) = &chunk.content {
                if let Ok(mut t) = self.turn_text.lock() {
                    t.push_str(&text.text);
                }
            }
        }
        // Not waiting for each commit: the writer keeps order and batches
        // a stream of chunks into few commits (waiting held the agent to
        // one commit per chunk). The turn's answer waits for them instead.
        let appended = self
            .log
            .append_nowait(vec![NewEvent::Session {
                session_id: self.session_id.clone(),
                event: session_event(&notification),
            }])
            .await;
        if let Err(e) = appended {
            tracing::error!(session = %self.session_id, error = %e, "sessionEvent not logged");
        }
    }

    async fn permission(
        &self,
        request: RequestPermissionRequest,
        responder: Responder<RequestPermissionResponse>,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let permission_id = format!(
            "perm-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(permission_id.clone(), responder);
        }
        self.log_json(
            "permissionRequest",
            json!({
                "sessionId": self.session_id,
                "permissionId": permission_id,
                "toolCall": request.tool_call,
                "options": request.options,
            }),
        )
        .await;
        // Unanswered requests time out with a clear event.
        let task = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PERMISSION_TIMEOUT).await;
            let expired = task
                .pending
                .lock()
                .ok()
                .and_then(|mut p| p.remove(&permission_id));
            if let Some(responder) = expired {
                let _ = responder.respond(RequestPermissionResponse::new(
                    RequestPermissionOutcome::Cancelled,
                ));
                task.log_json(
                    "permissionTimeout",
                    json!({"sessionId": task.session_id, "permissionId": permission_id}),
                )
                .await;
            }
        });
    }
}
