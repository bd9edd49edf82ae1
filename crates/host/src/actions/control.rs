//! Control and access actions: the control lock (take, request, grant, deny,
//! release, hand to the agent), participants, and the owner's tools (roles,
//! removal, join requests and codes).

use std::time::Duration;

use ensemble_protocol::people::{parse_participant_id, participant_id};
use ensemble_protocol::{Args, ErrorBody, ErrorCode, Role};
use serde::Deserialize;
use serde_json::json;

use super::{invalid, ok_null, to_json, ActionContext};
use crate::access::{parse_code_id, parse_request_id, DEFAULT_CODE_TTL, MAX_CODE_TTL};
use crate::control::{holder_json, Effects};
use crate::session::SessionCommand;

/// Bytes of one shell's recent output that a hand-back prompt may carry.
const CONTEXT_BYTES_PER_SHELL: usize = 64 << 10; // 64 KiB before rendering
/// Characters of rendered context per shell, and in all.
const CONTEXT_CHARS_PER_SHELL: usize = 4000;
const CONTEXT_CHARS: usize = 8000;
/// Output events read back for the context, newest first.
const CONTEXT_EVENTS: u32 = 2048;

fn participant_arg(args: &Args, at: usize) -> Result<u64, ErrorBody> {
    let id: String = args.required(at, "participantId").map_err(invalid)?;
    parse_participant_id(&id)
        .ok_or_else(|| invalid(format!("{id:?} is not a participant id (p1, p2, ...)")))
}

/// Carries out what a change of holder asks for, then answers the holder.
async fn settle(ctx: &ActionContext<'_>, effects: Effects) -> Result<String, ErrorBody> {
    if let Some(session_id) = effects.cancel_session {
        // The turn's end hands nothing back: the lock already moved.
        let commands = ctx
            .vm
            .with(move |s| s.sessions.commands(&session_id))
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(commands) = commands {
            let _ = commands.send(SessionCommand::cancel()).await;
        }
    }
    to_json(&holder_json(&ctx.vm.control().lock()))
}

pub async fn take(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("takeControl", 0).map_err(invalid)?;
    let effects = ctx.vm.control().take(ctx.me.clone()).await?;
    settle(ctx, effects).await
}

pub async fn request(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("requestControl", 0).map_err(invalid)?;
    let effects = ctx.vm.control().request(ctx.me.clone()).await?;
    settle(ctx, effects).await
}

pub async fn grant(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("grantControl", 1).map_err(invalid)?;
    let to = participant_arg(&args, 0)?;
    let effects = ctx.vm.control().grant(ctx.me.clone(), to).await?;
    settle(ctx, effects).await
}

pub async fn deny(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("denyControl", 1).map_err(invalid)?;
    let to = participant_arg(&args, 0)?;
    let effects = ctx.vm.control().deny(ctx.me.clone(), to).await?;
    settle(ctx, effects).await
}

pub async fn release(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("releaseControl", 0).map_err(invalid)?;
    let effects = ctx.vm.control().release(ctx.me.clone()).await?;
    settle(ctx, effects).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HandOptions {
    /// Prefix the prompt with what the caller did in the shells since they
    /// took over from this agent.
    #[serde(default)]
    shell_context: bool,
}

/// `handToAgent(sessionId, prompt, {shellContext})`: the agent holds control
/// for one turn, supervised by the caller, who gets it back when the turn
/// ends. Answers like `sendPrompt` once the turn is over.
pub async fn hand_to_agent(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("handToAgent", 3).map_err(invalid)?;
    let session_id: String = args.required(0, "sessionId").map_err(invalid)?;
    let prompt: String = args.required(1, "prompt").map_err(invalid)?;
    let opts: HandOptions = args
        .optional(2, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    let (commands, info) = ctx
        .vm
        .with({
            let id = session_id.clone();
            move |s| Ok::<_, crate::vm::VmError>((s.sessions.commands(&id)?, s.sessions.info(&id)?))
        })
        .await
        .and_then(|r| r)
        .map_err(|e| e.to_body())?;
    if info.state != "ready" {
        return Err(ErrorBody::new(
            ErrorCode::Busy,
            format!(
                "session {session_id} is {}; hand it a turn once it is ready",
                info.state
            ),
        ));
    }
    let control = ctx.vm.control();
    let since = control
        .hand_to_agent(ctx.me.clone(), session_id.clone())
        .await?;
    let context = match since.filter(|_| opts.shell_context) {
        Some(since) => shell_context(ctx, since).await,
        None => None,
    };
    let origin = crate::session::PromptOrigin {
        participant_id: ctx.me.wire_id(),
        name: ctx.me.name.clone(),
        color: ctx.me.color.clone(),
        text: prompt.clone(),
        shell_context: context.is_some(),
        handed: true,
    };
    let text = match context {
        Some(context) => format!("{context}\n\n{prompt}"),
        None => prompt,
    };
    let (command, reply) = SessionCommand::prompt(text, origin);
    let result = match commands.send(command).await {
        Ok(()) => reply.await.map_err(|_| {
            ErrorBody::new(
                ErrorCode::AgentFailed,
                format!("session {session_id} ended during the turn"),
            )
        }),
        Err(_) => Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!("session {session_id} has ended"),
        )),
    };
    control.turn_ended(session_id).await;
    let result = result?.map_err(|e| e.to_body())?;
    to_json(&result)
}

/// What the caller's shells printed since `since`, as plain text, for the
/// agent to read: the last screenful of each shell, bounded.
async fn shell_context(ctx: &ActionContext<'_>, since: u64) -> Option<String> {
    let rows = ctx
        .vm
        .log()
        .read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT body FROM events WHERE seq > ?1 AND name = 'shellData'
                 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                rusqlite::params![since.min(i64::MAX as u64) as i64, CONTEXT_EVENTS],
                |r| r.get::<_, Vec<u8>>(0),
            )?;
            rows.collect::<Result<Vec<_>, _>>()
        })
        .await
        .ok()?;
    // Newest first from the query: collect per shell up to the byte bound,
    // then render oldest first.
    let mut shells: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
    let mut sizes: std::collections::HashMap<u32, usize> = Default::default();
    for body in rows {
        let Ok((header, payload)) = ensemble_protocol::BinaryHeader::decode(&body) else {
            continue;
        };
        let size = sizes.entry(header.id).or_default();
        if *size >= CONTEXT_BYTES_PER_SHELL {
            continue;
        }
        *size += payload.len();
        shells.entry(header.id).or_default().push(payload.to_vec());
    }
    if shells.is_empty() {
        return None;
    }
    let who = &ctx.me.name;
    let mut out = format!(
        "[While you were paused, {who} took over and worked in the terminal. What the shells showed, oldest first:]"
    );
    for (shell_id, mut chunks) in shells {
        chunks.reverse();
        let text = render(&chunks.concat());
        let text = tail_chars(&text, CONTEXT_CHARS_PER_SHELL);
        if text.trim().is_empty() {
            continue;
        }
        out.push_str(&format!("\n--- shell {shell_id} ---\n{text}"));
        if out.chars().count() > CONTEXT_CHARS {
            break;
        }
    }
    out.push_str(&format!(
        "\n[End of what {who} did. Their request follows.]"
    ));
    Some(tail_chars(&out, CONTEXT_CHARS + 400).to_owned())
}

/// Terminal bytes as the text a person would have seen (escape sequences
/// applied, not shown).
fn render(bytes: &[u8]) -> String {
    let size = std::num::NonZeroU16::new(200).unwrap_or(std::num::NonZeroU16::MIN);
    let mut parser = vt100::Parser::new(size, size, 0);
    parser.process(bytes);
    let contents = parser.screen().contents();
    contents
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim_matches('\n')
        .to_owned()
}

fn tail_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let skip = count - n;
    let at = s.char_indices().nth(skip).map_or(s.len(), |(i, _)| i);
    &s[at..]
}

pub async fn list_participants(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listParticipants", 0).map_err(invalid)?;
    let now = ctx.vm.control().list().await?;
    to_json(&json!({
        "participants": now.participants,
        "control": now.lock.to_wire(),
        "requests": now.requests,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    name: Option<String>,
    color: Option<String>,
}

/// `updateParticipant({name, color})`: the caller's own name and colour.
pub async fn update_participant(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("updateParticipant", 1).map_err(invalid)?;
    let profile: Profile = args.required(0, "profile").map_err(invalid)?;
    let member = ctx
        .access
        .update_profile(ctx.me.id, profile.name, profile.color)
        .await?;
    to_json(&json!({"id": member.wire_id(), "name": member.name, "color": member.color}))
}

fn role_arg(s: &str) -> Result<Role, ErrorBody> {
    Role::member(s).ok_or_else(|| invalid(format!("role is collaborator or viewer, not {s:?}")))
}

pub async fn set_role(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("setRole", 2).map_err(invalid)?;
    let id = participant_arg(&args, 0)?;
    let role: String = args.required(1, "role").map_err(invalid)?;
    let member = ctx.access.set_role(id, role_arg(&role)?).await?;
    to_json(&json!({"id": member.wire_id(), "role": member.role}))
}

pub async fn remove_participant(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("removeParticipant", 1).map_err(invalid)?;
    let id = participant_arg(&args, 0)?;
    ctx.access.remove(id).await?;
    ok_null()
}

pub async fn list_join_requests(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listJoinRequests", 0).map_err(invalid)?;
    let requests = ctx.access.list_requests().await?;
    to_json(&requests)
}

fn request_arg(args: &Args) -> Result<u64, ErrorBody> {
    let id: String = args.required(0, "requestId").map_err(invalid)?;
    parse_request_id(&id).ok_or_else(|| invalid(format!("{id:?} is not a join request id")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    role: String,
}

pub async fn approve_join(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("approveJoin", 2).map_err(invalid)?;
    let id = request_arg(&args)?;
    let role = match args.optional::<Approval>(1, "options").map_err(invalid)? {
        Some(a) => role_arg(&a.role)?,
        None => Role::Collaborator,
    };
    let member = ctx.access.decide(id, Some(role)).await?;
    to_json(&json!({ "participantId": member.map(|m| participant_id(m.id)) }))
}

pub async fn deny_join(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("denyJoin", 1).map_err(invalid)?;
    let id = request_arg(&args)?;
    ctx.access.decide(id, None).await?;
    ok_null()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CodeOptions {
    role: String,
    expires_in_secs: Option<u64>,
}

pub async fn create_join_code(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("createJoinCode", 1).map_err(invalid)?;
    let opts: CodeOptions = args.required(0, "options").map_err(invalid)?;
    let role = role_arg(&opts.role)?;
    let ttl = opts
        .expires_in_secs
        .map_or(DEFAULT_CODE_TTL, Duration::from_secs);
    if ttl > MAX_CODE_TTL {
        return Err(invalid(format!(
            "expiresInSecs is at most {} (7 days)",
            MAX_CODE_TTL.as_secs()
        )));
    }
    // The code invites to the VM it is made in, and to no other.
    let vm = ctx.vm.info().key.canonical();
    let info = ctx.access.create_code(role, ttl, vm).await?;
    to_json(&info)
}

pub async fn list_join_codes(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listJoinCodes", 0).map_err(invalid)?;
    let codes = ctx.access.list_codes().await?;
    to_json(&codes)
}

pub async fn revoke_join_code(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("revokeJoinCode", 1).map_err(invalid)?;
    let id: String = args.required(0, "codeId").map_err(invalid)?;
    let id = parse_code_id(&id).ok_or_else(|| invalid(format!("{id:?} is not a join code id")))?;
    ctx.access.revoke_code(id).await?;
    ok_null()
}

/// `listVms()` → `[{"id", "key"}]` by id: every VM of the host for the
/// owner; for a member, the VMs they were invited to.
pub async fn list_vms(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listVms", 0).map_err(invalid)?;
    let all = ctx.registry.list().await.map_err(|e| e.to_body())?;
    let invited: Option<std::collections::HashSet<String>> = if ctx.me.role == Role::Owner {
        None
    } else {
        Some(
            ctx.access
                .member_vms(ctx.me.id)
                .await?
                .into_iter()
                .collect(),
        )
    };
    let vms: Vec<ensemble_protocol::VmInfo> = all
        .into_iter()
        .filter(|(_, key)| {
            invited
                .as_ref()
                .is_none_or(|i| i.contains(&key.canonical()))
        })
        .map(|(id, key)| ensemble_protocol::VmInfo { id, key })
        .collect();
    to_json(&vms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_what_the_screen_showed() {
        let text = render(b"$ ls\r\n\x1b[1;32mfile.txt\x1b[0m\r\n$ ");
        assert_eq!(text, "$ ls\nfile.txt\n$");
        assert_eq!(tail_chars("héllo", 3), "llo");
        assert_eq!(tail_chars("hi", 3), "hi");
    }
}
