//! Process, shell and session actions (agentOS names): arguments in, the VM
//! actor does the bookkeeping, waiting and logging happen here.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use ensemble_protocol::{Args, ErrorBody};
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{invalid, ok_null, to_json, ActionContext};
use crate::log::NewEvent;
use crate::process::StdinOp;
use crate::session::SessionCommand;
use crate::shell::ShellOptions;
use crate::vm::{Vm, VmError};

/// Longest `exec` may run when the caller gives no `timeoutMs`.
const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long `closeShell` waits for the shell to be gone before answering.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

fn err(e: VmError) -> ErrorBody {
    e.to_body()
}

/// `vm.with` for closures that fail with `VmError` themselves.
async fn on_vm<R, F>(vm: &Vm, f: F) -> Result<R, ErrorBody>
where
    R: Send + 'static,
    F: FnOnce(&mut crate::vm::VmState) -> Result<R, VmError> + Send + 'static,
{
    vm.with(f).await.and_then(|r| r).map_err(err)
}

async fn log_json(vm: &Vm, name: &str, data: Value) -> Result<u64, ErrorBody> {
    vm.log()
        .append(vec![NewEvent::Json {
            name: name.to_owned(),
            data: data.to_string(),
        }])
        .await
        .map_err(|e| err(e.into()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExecOptions {
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SpawnOptions {
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Starts a process and logs `processStarted` before its output.
async fn start_process(
    vm: &Vm,
    command: String,
    args: Vec<String>,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    capture: bool,
) -> Result<crate::process::Spawned, ErrorBody> {
    if command.is_empty() {
        return Err(invalid("command is empty"));
    }
    // In the VM's view (/workspace/...), which is also what is logged.
    let cwd = vm.workspace().resolve_cwd(cwd.as_deref()).map_err(err)?;
    let env = vm.workspace().environment(&env).map_err(err)?;
    let (cmd, a) = (command.clone(), args.clone());
    let display_cwd = cwd.display().to_string();
    let spawned = on_vm(vm, move |s| {
        s.processes.spawn(&cmd, &a, &cwd, &env, capture, None)
    })
    .await?;
    log_json(
        vm,
        "processStarted",
        json!({"pid": spawned.pid, "command": command, "args": args, "cwd": display_cwd}),
    )
    .await?;
    Ok(spawned)
}

/// `exec(command, {args, cwd, env, timeoutMs})` →
/// `{pid, stdout, stderr, exitCode, signal, timedOut, truncated}`.
pub async fn exec(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("exec", 2).map_err(invalid)?;
    let command: String = args.required(0, "command").map_err(invalid)?;
    let opts: ExecOptions = args
        .optional(1, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    let limit = opts
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(EXEC_DEFAULT_TIMEOUT);
    let mut spawned = start_process(ctx.vm, command, opts.args, opts.cwd, opts.env, true).await?;
    let pid = spawned.pid;
    spawned.start.start();
    let timed_out = tokio::time::timeout(limit, spawned.exit.wait_for(Option::is_some))
        .await
        .is_err();
    if timed_out {
        ensemble_sandbox::kill_sandbox(pid);
        let _ = spawned.exit.wait_for(Option::is_some).await;
    }
    let exit = (*spawned.exit.borrow()).unwrap_or(crate::process::ExitInfo {
        exit_code: None,
        signal: None,
    });
    let captured = match spawned.captured {
        Some(rx) => rx.await.unwrap_or_default(),
        None => Default::default(),
    };
    to_json(&json!({
        "pid": pid,
        "stdout": String::from_utf8_lossy(&captured.stdout),
        "stderr": String::from_utf8_lossy(&captured.stderr),
        "exitCode": exit.exit_code,
        "signal": exit.signal,
        "timedOut": timed_out,
        "truncated": captured.truncated,
    }))
}

/// `spawn(command, args, {cwd, env})` → `{pid}`.
pub async fn spawn(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("spawn", 3).map_err(invalid)?;
    let command: String = args.required(0, "command").map_err(invalid)?;
    let argv: Vec<String> = args
        .optional(1, "args")
        .map_err(invalid)?
        .unwrap_or_default();
    let opts: SpawnOptions = args
        .optional(2, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    let spawned = start_process(ctx.vm, command, argv, opts.cwd, opts.env, false).await?;
    let pid = spawned.pid;
    spawned.start.start();
    to_json(&json!({ "pid": pid }))
}

/// `writeProcessStdin(pid, data)`: data is a string, written as UTF-8.
pub async fn write_stdin(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("writeProcessStdin", 2).map_err(invalid)?;
    let pid: u32 = args.required(0, "pid").map_err(invalid)?;
    let data: String = args.required(1, "data").map_err(invalid)?;
    let tx = on_vm(ctx.vm, move |s| s.processes.stdin(pid)).await?;
    tx.send(StdinOp::Data(Bytes::from(data)))
        .await
        .map_err(|_| err(VmError::Exited(format!("process {pid}"))))?;
    ok_null()
}

/// `closeProcessStdin(pid)`.
pub async fn close_stdin(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("closeProcessStdin", 1).map_err(invalid)?;
    let pid: u32 = args.required(0, "pid").map_err(invalid)?;
    let tx = on_vm(ctx.vm, move |s| s.processes.close_stdin(pid)).await?;
    let _ = tx.send(StdinOp::Close).await;
    ok_null()
}

/// `waitProcess(pid)` → `{exitCode, signal}` once it has exited.
pub async fn wait(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("waitProcess", 1).map_err(invalid)?;
    let pid: u32 = args.required(0, "pid").map_err(invalid)?;
    let mut exit = on_vm(ctx.vm, move |s| s.processes.exit(pid)).await?;
    let info = exit
        .wait_for(Option::is_some)
        .await
        .map_err(|_| err(VmError::Closed))?
        .unwrap_or(crate::process::ExitInfo {
            exit_code: None,
            signal: None,
        });
    to_json(&info)
}

/// `stopProcess(pid)` (SIGTERM) and `killProcess(pid)` (SIGKILL), to its group.
pub async fn signal(ctx: &ActionContext<'_>, args: Args, kill: bool) -> Result<String, ErrorBody> {
    let name = if kill { "killProcess" } else { "stopProcess" };
    args.at_most(name, 1).map_err(invalid)?;
    let pid: u32 = args.required(0, "pid").map_err(invalid)?;
    let sig = if kill {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    on_vm(ctx.vm, move |s| s.processes.signal(pid, sig)).await?;
    ok_null()
}

pub async fn list_processes(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listProcesses", 0).map_err(invalid)?;
    let list = ctx.vm.with(|s| s.processes.list()).await.map_err(err)?;
    to_json(&list)
}

pub async fn get_process(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("getProcess", 1).map_err(invalid)?;
    let pid: u32 = args.required(0, "pid").map_err(invalid)?;
    let info = on_vm(ctx.vm, move |s| s.processes.info(pid)).await?;
    to_json(&info)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OpenShellOptions {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cols: Option<u16>,
    rows: Option<u16>,
}

/// `openShell({command, args, cwd, env, cols, rows})` → `{shellId}`; the
/// default program is an interactive bash, 80x24.
pub async fn open_shell(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("openShell", 1).map_err(invalid)?;
    let opts: OpenShellOptions = args
        .optional(0, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    let vm = ctx.vm;
    let command = opts.command.unwrap_or_else(|| "/bin/bash".to_owned());
    if command.is_empty() {
        return Err(invalid("command is empty"));
    }
    let shell_opts = ShellOptions {
        command,
        args: opts.args,
        cwd: vm
            .workspace()
            .resolve_cwd(opts.cwd.as_deref())
            .map_err(err)?,
        env: vm.workspace().environment(&opts.env).map_err(err)?,
        cols: opts.cols.unwrap_or(80),
        rows: opts.rows.unwrap_or(24),
    };
    let (info, start) = on_vm(vm, move |s| s.shells.open(shell_opts)).await?;
    let seq = log_json(
        vm,
        "shellOpened",
        serde_json::to_value(&info).unwrap_or(Value::Null),
    )
    .await?;
    start.start(seq);
    to_json(&json!({ "shellId": info.shell_id }))
}

/// `writeShell(shellId, data)`: keystrokes as a string.
pub async fn write_shell(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("writeShell", 2).map_err(invalid)?;
    let id: u32 = args.required(0, "shellId").map_err(invalid)?;
    let data: String = args.required(1, "data").map_err(invalid)?;
    let tx = on_vm(ctx.vm, move |s| s.shells.input(id)).await?;
    tx.send(Bytes::from(data))
        .await
        .map_err(|_| err(VmError::Exited(format!("shell {id}"))))?;
    ok_null()
}

/// `resizeShell(shellId, cols, rows)`: only the shell's owner; logged as
/// `shellResized` before the PTY changes, so output after it is at the new size.
pub async fn resize_shell(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("resizeShell", 3).map_err(invalid)?;
    let id: u32 = args.required(0, "shellId").map_err(invalid)?;
    let cols: u16 = args.required(1, "cols").map_err(invalid)?;
    let rows: u16 = args.required(2, "rows").map_err(invalid)?;
    on_vm(ctx.vm, move |s| s.shells.check_resize(id, cols, rows)).await?;
    log_json(
        ctx.vm,
        "shellResized",
        json!({"shellId": id, "cols": cols, "rows": rows}),
    )
    .await?;
    on_vm(ctx.vm, move |s| s.shells.resize(id, cols, rows)).await?;
    ok_null()
}

/// `closeShell(shellId)`: hangs up; answers once the shell has exited (or
/// after a few seconds).
pub async fn close_shell(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("closeShell", 1).map_err(invalid)?;
    let id: u32 = args.required(0, "shellId").map_err(invalid)?;
    let mut exit = on_vm(ctx.vm, move |s| s.shells.close(id)).await?;
    let _ = tokio::time::timeout(CLOSE_WAIT, exit.wait_for(Option::is_some)).await;
    ok_null()
}

pub async fn list_shells(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listShells", 0).map_err(invalid)?;
    let list = ctx.vm.with(|s| s.shells.list()).await.map_err(err)?;
    to_json(&list)
}

/// `getShellSnapshot(shellId)` → `{shellId, seq, cols, rows, data}`: `data`
/// (base64) draws the screen as of `seq`; apply `shellData` after `seq`.
pub async fn shell_snapshot(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("getShellSnapshot", 1).map_err(invalid)?;
    let id: u32 = args.required(0, "shellId").map_err(invalid)?;
    let model = on_vm(ctx.vm, move |s| s.shells.model(id)).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    model.send(tx).await.map_err(|_| err(VmError::Closed))?;
    let snapshot = rx.await.map_err(|_| err(VmError::Closed))?.map_err(err)?;
    to_json(&json!({
        "shellId": id,
        "seq": snapshot.seq,
        "cols": snapshot.cols,
        "rows": snapshot.rows,
        "data": base64::engine::general_purpose::STANDARD.encode(&snapshot.data),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SessionOptions {
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Accepted for agentOS compatibility; sessions run in the VM workspace.
    cwd: Option<String>,
    /// Accepted for agentOS compatibility; not passed to agents yet.
    #[serde(default)]
    mcp_servers: Vec<Value>,
    /// Owner only: put the agent type's key saved in the OS keyring into
    /// `env` under its variable.
    #[serde(default)]
    use_saved_key: bool,
}

/// `createSession(agentType, {env, cwd, mcpServers})` →
/// `{sessionId, agentType, capabilities, agentInfo}`. `env` reaches only the
/// agent process; it is never logged or returned.
pub async fn create_session(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("createSession", 2).map_err(invalid)?;
    let agent_type: String = args.required(0, "agentType").map_err(invalid)?;
    let mut opts: SessionOptions = args
        .optional(1, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    if opts.use_saved_key {
        super::keys::use_saved_key(ctx, &agent_type, &mut opts.env).await?;
    }
    if let Some(cwd) = &opts.cwd {
        ctx.vm.workspace().resolve_cwd(Some(cwd)).map_err(err)?;
    }
    let _ = opts.mcp_servers;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let session_id = format!(
        "s{}-{}",
        crate::log::now_ms(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let cwd = ctx.vm.workspace().view().to_owned();
    let start = session_start(ctx, session_id, agent_type, &opts.env, cwd.clone(), None)?;
    let started = crate::session::start(start).await.map_err(err)?;
    let info = started.info.clone();
    // What a resume needs, never the env (it may hold secrets).
    log_json(
        ctx.vm,
        "sessionCreated",
        json!({
            "sessionId": info.session_id, "agentType": info.agent_type,
            "agentInfo": info.agent_info, "capabilities": info.capabilities,
            "agentSessionId": info.agent_session_id, "cwd": cwd.display().to_string(),
        }),
    )
    .await?;
    ctx.vm
        .with(move |s| s.sessions.insert(started))
        .await
        .map_err(err)?;
    session_answer(&info)
}

/// What `createSession` and `resumeSession` answer.
fn session_answer(info: &crate::session::SessionInfo) -> Result<String, ErrorBody> {
    to_json(&json!({
        "sessionId": info.session_id,
        "agentType": info.agent_type,
        "capabilities": info.capabilities,
        "agentInfo": info.agent_info,
    }))
}

/// Everything to start `agent_type`'s agent for a session; `load` is the
/// agent's session id when resuming.
fn session_start(
    ctx: &ActionContext<'_>,
    session_id: String,
    agent_type: String,
    env: &BTreeMap<String, String>,
    cwd: std::path::PathBuf,
    load: Option<String>,
) -> Result<crate::session::SessionStart, ErrorBody> {
    let Some(agent) = ctx.agents.get(&agent_type) else {
        let known: Vec<&str> = ctx.agents.names().collect();
        return Err(invalid(format!(
            "unknown agent type {agent_type:?}; known: {}",
            known.join(", ")
        )));
    };
    let sandbox = ctx.vm.sandbox().clone();
    let agent = agent
        .for_vm(&agent_type, |name| {
            sandbox
                .agent_state(name)
                .map_err(|e| VmError::Internal(e.to_string()))
        })
        .map_err(err)?;
    Ok(crate::session::SessionStart {
        session_id,
        agent_type,
        agent,
        sandbox,
        env: ctx.vm.workspace().environment(env).map_err(err)?,
        workspace: ctx.vm.workspace().clone(),
        log: ctx.vm.log().clone(),
        vm: ctx.vm.downgrade(),
        init_timeout: ctx.agent_init_timeout,
        cwd,
        load,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResumeOptions {
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// As in `createSession`.
    #[serde(default, rename = "useSavedKey")]
    use_saved_key: bool,
}

/// `resumeSession(sessionId, {env})` → `{sessionId, agentType, capabilities,
/// agentInfo}`: a session whose agent has gone (the host restarted, the agent
/// exited or was closed) is taken up again by a new agent process that loads
/// it with ACP `session/load`. Same sessionId; its `sequenceNumber`s go on.
pub async fn resume_session(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("resumeSession", 2).map_err(invalid)?;
    let id: String = args.required(0, "sessionId").map_err(invalid)?;
    let mut opts: ResumeOptions = args
        .optional(1, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    let created = session_history(ctx)
        .await?
        .into_iter()
        .find(|data| data["sessionId"] == id.as_str())
        .ok_or_else(|| err(VmError::NoSuchSession(id.clone())))?;
    let (Some(agent_type), Some(agent_session), Some(cwd)) = (
        created["agentType"].as_str(),
        created["agentSessionId"].as_str(),
        created["cwd"].as_str(),
    ) else {
        return Err(err(VmError::CannotResume(format!(
            "session {id} was created by a host that did not record the agent's session id"
        ))));
    };
    let cwd = ctx.vm.workspace().resolve_cwd(Some(cwd)).map_err(|e| {
        err(VmError::CannotResume(format!(
            "its working directory is gone: {e}"
        )))
    })?;
    if opts.use_saved_key {
        super::keys::use_saved_key(ctx, agent_type, &mut opts.env).await?;
    }
    let start = session_start(
        ctx,
        id.clone(),
        agent_type.to_owned(),
        &opts.env,
        cwd,
        Some(agent_session.to_owned()),
    )?;
    on_vm(ctx.vm, {
        let id = id.clone();
        move |s| s.sessions.reserve(&id)
    })
    .await?;
    let started = match crate::session::start(start).await {
        Ok(started) => started,
        Err(e) => {
            let _ = ctx.vm.with(move |s| s.sessions.release(&id)).await;
            return Err(err(e));
        }
    };
    let info = started.info.clone();
    let logged = log_json(
        ctx.vm,
        "sessionResumed",
        json!({
            "sessionId": info.session_id, "agentType": info.agent_type,
            "agentSessionId": info.agent_session_id,
        }),
    )
    .await;
    // Inserted even if the log failed: the agent runs and must be closable.
    ctx.vm
        .with(move |s| s.sessions.insert(started))
        .await
        .map_err(err)?;
    logged?;
    session_answer(&info)
}

/// The `data` of every `sessionCreated` in the log, oldest first.
async fn session_history(ctx: &ActionContext<'_>) -> Result<Vec<Value>, ErrorBody> {
    let head = ctx.vm.log().head();
    let mut out = Vec::new();
    let mut since = 0;
    while since < head {
        let (page, reached) = ctx
            .vm
            .log()
            .scan(since, head, 1000, Some(vec!["sessionCreated".to_owned()]))
            .await
            .map_err(|e| err(VmError::Internal(e.to_string())))?;
        since = reached;
        for event in page {
            let Ok(frame) = event.json() else { continue };
            if let Ok(mut v) = serde_json::from_str::<Value>(&frame) {
                out.push(v["data"].take());
            }
        }
    }
    Ok(out)
}

/// `listSessions()`: live sessions, and ended ones from the log's history.
pub async fn list_sessions(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listSessions", 0).map_err(invalid)?;
    let live = ctx.vm.with(|s| s.sessions.list()).await.map_err(err)?;
    let out: Vec<Value> = session_history(ctx)
        .await?
        .into_iter()
        .map(|data| {
            let id = data["sessionId"].as_str().unwrap_or_default();
            match live.iter().find(|s| s.session_id == id) {
                Some(info) => serde_json::to_value(info).unwrap_or(Value::Null),
                None => json!({
                    "sessionId": id,
                    "agentType": data["agentType"],
                    "agentSessionId": data["agentSessionId"],
                    "agentInfo": data["agentInfo"],
                    "capabilities": data["capabilities"],
                    "state": "ended",
                }),
            }
        })
        .collect();
    to_json(&out)
}

pub async fn get_session(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("getSession", 1).map_err(invalid)?;
    let id: String = args.required(0, "sessionId").map_err(invalid)?;
    let info = on_vm(ctx.vm, move |s| s.sessions.info(&id)).await?;
    to_json(&info)
}

/// `sendPrompt(sessionId, text)` → `{stopReason, text}` when the turn ends.
pub async fn send_prompt(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("sendPrompt", 2).map_err(invalid)?;
    let id: String = args.required(0, "sessionId").map_err(invalid)?;
    let text: String = args.required(1, "text").map_err(invalid)?;
    let origin = crate::session::PromptOrigin {
        participant_id: ctx.me.wire_id(),
        name: ctx.me.name.clone(),
        color: ctx.me.color.clone(),
        text: text.clone(),
        shell_context: false,
        handed: false,
    };
    let (command, reply) = SessionCommand::prompt(text, origin);
    send_to_session(ctx, &id, command).await?;
    let result = reply.await.map_err(|_| session_gone(&id))?.map_err(err)?;
    to_json(&result)
}

/// `setMode(sessionId, modeId)`: ACP `session/set_mode`.
pub async fn set_mode(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("setMode", 2).map_err(invalid)?;
    let id: String = args.required(0, "sessionId").map_err(invalid)?;
    let mode: String = args.required(1, "modeId").map_err(invalid)?;
    let (command, reply) = SessionCommand::set_mode(mode);
    send_to_session(ctx, &id, command).await?;
    reply.await.map_err(|_| session_gone(&id))?.map_err(err)?;
    ok_null()
}

/// `cancelPrompt(sessionId)`: ACP `session/cancel`; pending permission
/// requests are answered `cancelled`.
pub async fn cancel_prompt(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    session_command(ctx, args, "cancelPrompt", SessionCommand::cancel()).await
}

/// `closeSession(sessionId)`: stops the agent; `sessionEnded` follows.
pub async fn close_session(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    session_command(ctx, args, "closeSession", SessionCommand::close()).await
}

async fn session_command(
    ctx: &ActionContext<'_>,
    args: Args,
    name: &str,
    command: SessionCommand,
) -> Result<String, ErrorBody> {
    args.at_most(name, 1).map_err(invalid)?;
    let id: String = args.required(0, "sessionId").map_err(invalid)?;
    send_to_session(ctx, &id, command).await?;
    ok_null()
}

/// Hands a command to a session's task.
async fn send_to_session(
    ctx: &ActionContext<'_>,
    id: &str,
    command: SessionCommand,
) -> Result<(), ErrorBody> {
    let commands = on_vm(ctx.vm, {
        let id = id.to_owned();
        move |s| s.sessions.commands(&id)
    })
    .await?;
    commands.send(command).await.map_err(|_| session_gone(id))
}

/// A session whose task has ended (its agent exited or it was closed).
fn session_gone(id: &str) -> ErrorBody {
    err(VmError::Exited(format!("session {id}")))
}

/// `respondPermission(sessionId, permissionId, optionId)`; the first answer wins.
pub async fn respond_permission(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("respondPermission", 3).map_err(invalid)?;
    let id: String = args.required(0, "sessionId").map_err(invalid)?;
    let permission: String = args.required(1, "permissionId").map_err(invalid)?;
    let option: String = args.required(2, "optionId").map_err(invalid)?;
    on_vm(ctx.vm, move |s| {
        s.sessions.respond(&id, &permission, &option)
    })
    .await?;
    ok_null()
}
