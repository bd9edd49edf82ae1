//! Actions: a name and positional arguments in, a JSON value or a typed error
//! out. Each action parses its own arguments and talks to the VM; the log
//! and test actions are here, processes and shells in [`workload`].

mod control;
mod keys;
mod lan;
mod workload;

use base64::Engine;
use bytes::Bytes;
use ensemble_protocol::frame::BinaryKind;
use ensemble_protocol::{
    Args, ErrorBody, ErrorCode, Role, DEFAULT_PAGE_LIMIT, INPUT_ACTIONS, MAX_PAGE_LIMIT,
    OWNER_ACTIONS,
};
use serde::Deserialize;
use serde_json::Value;

use crate::log::{read_session_page, NewEvent};
use crate::vm::Vm;

/// Most events one `emit` call may produce.
pub const MAX_EMIT_COUNT: u32 = 10_000;

/// A `getEvents` page stops growing past this many bytes (and says `more`),
/// so that one answer stays well within a connection's write buffer.
pub const MAX_RESULT_BYTES: usize = 4 << 20; // 4 MiB

/// Most names a `names` filter may list.
pub const MAX_FILTER_NAMES: usize = 64;

pub struct ActionContext<'a> {
    pub vm: &'a Vm,
    /// The calling connection, for logs.
    pub conn_id: u64,
    /// The caller, as of this action.
    pub me: crate::access::Member,
    pub access: &'a crate::access::Access,
    /// The host's VMs (`listVms`).
    pub registry: &'a crate::registry::Registry,
    /// LAN sharing and peers (the owner's LAN actions).
    pub lan: &'a crate::lan::Lan,
    /// Which command starts an agent of a given type.
    pub agents: &'a crate::agents::AgentRegistry,
    /// How long a new agent has to answer `initialize`.
    pub agent_init_timeout: std::time::Duration,
    /// `emit` is refused unless the host was started with test actions.
    pub test_actions: bool,
    /// `emit`'s `data` as the client wrote it, so numbers come back exactly.
    pub raw_data: Option<String>,
}

/// Runs one action; the result is JSON text.
pub async fn call(ctx: &ActionContext<'_>, name: &str, args: Value) -> Result<String, ErrorBody> {
    if INPUT_ACTIONS.contains(&name) {
        ctx.vm.control().check_input(&ctx.me, name)?;
    }
    if OWNER_ACTIONS.contains(&name) && ctx.me.role != Role::Owner {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!("{name} is for the host's owner"),
        ));
    }
    let args = Args::from_value(args).map_err(invalid)?;
    match name {
        "getEvents" => get_events(ctx.vm, args).await,
        "getSequencedEvents" => get_sequenced_events(ctx.vm, args).await,
        "exec" => workload::exec(ctx, args).await,
        "spawn" => workload::spawn(ctx, args).await,
        "writeProcessStdin" => workload::write_stdin(ctx, args).await,
        "closeProcessStdin" => workload::close_stdin(ctx, args).await,
        "waitProcess" => workload::wait(ctx, args).await,
        "stopProcess" => workload::signal(ctx, args, false).await,
        "killProcess" => workload::signal(ctx, args, true).await,
        "listProcesses" => workload::list_processes(ctx, args).await,
        "getProcess" => workload::get_process(ctx, args).await,
        "openShell" => workload::open_shell(ctx, args).await,
        "writeShell" => workload::write_shell(ctx, args).await,
        "resizeShell" => workload::resize_shell(ctx, args).await,
        "closeShell" => workload::close_shell(ctx, args).await,
        "listShells" => workload::list_shells(ctx, args).await,
        "getShellSnapshot" => workload::shell_snapshot(ctx, args).await,
        "createSession" => workload::create_session(ctx, args).await,
        "resumeSession" => workload::resume_session(ctx, args).await,
        "listSessions" => workload::list_sessions(ctx, args).await,
        "getSession" => workload::get_session(ctx, args).await,
        "sendPrompt" => workload::send_prompt(ctx, args).await,
        "cancelPrompt" => workload::cancel_prompt(ctx, args).await,
        "setMode" => workload::set_mode(ctx, args).await,
        "closeSession" => workload::close_session(ctx, args).await,
        "respondPermission" => workload::respond_permission(ctx, args).await,
        "listAgents" => keys::list(ctx, args).await,
        "saveAgentKey" => keys::save(ctx, args).await,
        "forgetAgentKey" => keys::forget(ctx, args).await,
        "takeControl" => control::take(ctx, args).await,
        "requestControl" => control::request(ctx, args).await,
        "grantControl" => control::grant(ctx, args).await,
        "denyControl" => control::deny(ctx, args).await,
        "releaseControl" => control::release(ctx, args).await,
        "handToAgent" => control::hand_to_agent(ctx, args).await,
        "listParticipants" => control::list_participants(ctx, args).await,
        "listVms" => control::list_vms(ctx, args).await,
        "updateParticipant" => control::update_participant(ctx, args).await,
        "setRole" => control::set_role(ctx, args).await,
        "removeParticipant" => control::remove_participant(ctx, args).await,
        "listJoinRequests" => control::list_join_requests(ctx, args).await,
        "approveJoin" => control::approve_join(ctx, args).await,
        "denyJoin" => control::deny_join(ctx, args).await,
        "createJoinCode" => control::create_join_code(ctx, args).await,
        "listJoinCodes" => control::list_join_codes(ctx, args).await,
        "revokeJoinCode" => control::revoke_join_code(ctx, args).await,
        "getLan" => lan::get(ctx, args).await,
        "setLanSharing" => lan::set_sharing(ctx, args).await,
        "joinPeer" => lan::join(ctx, args).await,
        "forgetPeer" => lan::forget(ctx, args).await,
        "emit" if ctx.test_actions => emit(ctx.vm, args, ctx.raw_data.clone()).await,
        "emit" => Err(ErrorBody::new(
            ErrorCode::Disabled,
            "emit is a test action; start the host with --test-actions to use it",
        )),
        "getLogStats" if ctx.test_actions => log_stats(ctx.vm, args),
        "getLogStats" => Err(ErrorBody::new(
            ErrorCode::Disabled,
            "getLogStats is a test action; start the host with --test-actions to use it",
        )),
        other => Err(ErrorBody::new(
            ErrorCode::UnknownAction,
            format!("unknown action {other:?}"),
        )),
    }
}

fn invalid(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidArgs, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

/// An action's answer as JSON text.
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, ErrorBody> {
    serde_json::to_string(v).map_err(internal)
}

fn ok_null() -> Result<String, ErrorBody> {
    Ok("null".to_owned())
}

fn page_limit(limit: Option<u32>) -> Result<u32, ErrorBody> {
    match limit.unwrap_or(DEFAULT_PAGE_LIMIT) {
        0 => Err(invalid("limit must be at least 1")),
        n if n > MAX_PAGE_LIMIT => Err(invalid(format!(
            "limit {n} is over the maximum page of {MAX_PAGE_LIMIT}"
        ))),
        n => Ok(n),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetEventsOptions {
    since: Option<u64>,
    limit: Option<u32>,
    names: Option<Vec<String>>,
}

/// `getEvents({since, limit, names})` → `{events, more, next, head, first}`.
async fn get_events(vm: &Vm, args: Args) -> Result<String, ErrorBody> {
    args.at_most("getEvents", 1).map_err(invalid)?;
    let opts: GetEventsOptions = args
        .optional(0, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    let limit = page_limit(opts.limit)?;
    if let Some(names) = &opts.names {
        if names.is_empty() || names.len() > MAX_FILTER_NAMES {
            return Err(invalid(format!(
                "names lists 1 to {MAX_FILTER_NAMES} event names"
            )));
        }
    }
    let log = vm.log();
    let head = log.head();
    let since = opts.since.unwrap_or(0);
    if since > head {
        return Err(ErrorBody::new(
            ErrorCode::SinceBeyondHead,
            format!("since {since} is beyond the head of the log ({head})"),
        ));
    }
    // Read before the page: pruning commits, then raises `outputFrom`, so
    // no output event in the page is older than this value.
    let output_from = log.output_from();
    // Read no more than one answer's worth (binary events grow by 4/3 as
    // base64): a page of 10000 events of 64 KiB would otherwise be read
    // whole (640 MiB) to send 4 MiB of it.
    let (page, full) = log
        .page_bytes(since, head, limit, opts.names, MAX_RESULT_BYTES / 4 * 3)
        .await
        .map_err(internal)?;
    let mut out = String::from(r#"{"events":["#);
    let mut taken = 0;
    for (i, event) in page.iter().enumerate() {
        if out.len() > MAX_RESULT_BYTES {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&event.json().map_err(internal)?);
        taken += 1;
    }
    let cut = taken < page.len() || full;
    let more =
        (cut || page.len() == limit as usize) && page[..taken].last().is_some_and(|e| e.seq < head);
    let next = if more {
        page[..taken].last().map_or(head, |e| e.seq)
    } else {
        head
    };
    out.push_str(&format!(
        r#"],"more":{more},"next":{next},"head":{head},"first":{},"outputFrom":{output_from}}}"#,
        log.first()
    ));
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SequencedOptions {
    since: Option<u64>,
    limit: Option<u32>,
}

/// `getSequencedEvents(sessionId, {since, limit})` →
/// `{events: [{sequenceNumber, notification}], more, next}` (agentOS shape per event).
async fn get_sequenced_events(vm: &Vm, args: Args) -> Result<String, ErrorBody> {
    args.at_most("getSequencedEvents", 2).map_err(invalid)?;
    let session_id: String = args.required(0, "sessionId").map_err(invalid)?;
    let opts: SequencedOptions = args
        .optional(1, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    let limit = page_limit(opts.limit)?;
    let since = opts.since.unwrap_or(0);
    let (page, session_head) = vm
        .log()
        .read(move |conn| {
            // One read transaction: the head and the page see the same log.
            let tx = conn.unchecked_transaction()?;
            let head: u64 = tx.query_row(
                "SELECT COALESCE(MAX(session_seq), 0) FROM events WHERE session_id = ?1",
                [&session_id],
                |r| r.get(0),
            )?;
            let page = read_session_page(&tx, &session_id, since, limit, MAX_RESULT_BYTES)?;
            Ok((page, head))
        })
        .await
        .map_err(internal)?;
    if since > session_head {
        return Err(ErrorBody::new(
            ErrorCode::SinceBeyondHead,
            format!("since {since} is beyond the session's last sequenceNumber ({session_head})"),
        ));
    }
    let (page, full) = page;
    let more = (page.len() == limit as usize || full)
        && page.last().is_some_and(|(n, _)| *n < session_head);
    let next = page.last().map_or(since, |(n, _)| *n);
    let mut out = String::from(r#"{"events":["#);
    for (i, (n, notification)) in page.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"sequenceNumber":{n},"notification":{}}}"#,
            notification.get()
        ));
    }
    out.push_str(&format!(r#"],"more":{more},"next":{next}}}"#));
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitOptions {
    #[serde(default = "default_emit_name")]
    name: String,
    #[serde(default)]
    data: Value,
    #[serde(default = "one")]
    count: u32,
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
    /// For `testBytes`: the payload, base64.
    bytes: Option<String>,
    #[serde(default)]
    id: u32,
}

fn default_emit_name() -> String {
    "testEvent".to_owned()
}

fn one() -> u32 {
    1
}

/// Test action `getLogStats()`: what the VM's log writer spent its time on
/// (commits, checkpoints, pruning) since the log was opened.
fn log_stats(vm: &Vm, args: Args) -> Result<String, ErrorBody> {
    args.at_most("getLogStats", 0).map_err(invalid)?;
    let c = vm.log().counters();
    let get = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
    Ok(serde_json::json!({
        "commits": get(&c.commits),
        "events": get(&c.events),
        "outputBytes": get(&c.output_bytes),
        "commitUs": get(&c.commit_us),
        "inlineCommits": get(&c.inline_commits),
        "checkpoints": get(&c.checkpoints),
        "checkpointUs": get(&c.checkpoint_us),
        "prunes": get(&c.prunes),
        "pruneUs": get(&c.prune_us),
    })
    .to_string())
}

/// Test action `emit({name, data, count, sessionId, bytes, id})`: appends
/// `count` events and answers `{first, last}` once they are durable.
async fn emit(vm: &Vm, args: Args, raw_data: Option<String>) -> Result<String, ErrorBody> {
    args.at_most("emit", 1).map_err(invalid)?;
    let opts: EmitOptions = args.required(0, "options").map_err(invalid)?;
    // The data as given when the message had it; else the parsed value.
    let data_text = raw_data.unwrap_or_else(|| opts.data.to_string());
    if opts.count == 0 || opts.count > MAX_EMIT_COUNT {
        return Err(invalid(format!("count is 1 to {MAX_EMIT_COUNT}")));
    }
    let make: Box<dyn Fn() -> NewEvent + Send> = match opts.name.as_str() {
        "testEvent" => {
            let data = data_text;
            Box::new(move || NewEvent::Json {
                name: "testEvent".to_owned(),
                data: data.clone(),
            })
        }
        "sessionEvent" => {
            let session_id = opts
                .session_id
                .ok_or_else(|| invalid("a sessionEvent needs sessionId"))?;
            let event = data_text;
            Box::new(move || NewEvent::Session {
                session_id: session_id.clone(),
                event: event.clone(),
            })
        }
        "testBytes" => {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(opts.bytes.as_deref().unwrap_or(""))
                .map_err(|e| invalid(format!("bytes is not base64: {e}")))?;
            let payload = Bytes::from(payload);
            let id = opts.id;
            Box::new(move || NewEvent::Bytes {
                kind: BinaryKind::TestBytes,
                id,
                payload: payload.clone(),
            })
        }
        other => {
            return Err(invalid(format!(
                "emit makes testEvent, sessionEvent or testBytes, not {other:?}"
            )))
        }
    };
    let events: Vec<NewEvent> = (0..opts.count).map(|_| make()).collect();
    let last = vm.log().append(events).await.map_err(internal)?;
    let first = last + 1 - u64::from(opts.count);
    Ok(format!(r#"{{"first":{first},"last":{last}}}"#))
}
