//! `ensemble prompt`: sends a prompt to a VM's agent session and streams
//! the agent's answer to stdout as it comes, taking control if nobody holds
//! it (or saying who does). `--hand-off` hands control to the agent for the
//! turn, as the UI's "Hand to agent" does.

use std::io::Write;

use anyhow::{bail, Context};
use ensemble_client::Event;
use serde_json::{json, Value};

use crate::people::control_line;

/// After the turn's answer, how long its last events may take to arrive.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);
use crate::remote::Remote;

#[derive(clap::Args)]
pub struct PromptArgs {
    #[command(flatten)]
    remote: Remote,
    /// The session (default: the newest one that is ready).
    #[arg(long, conflicts_with = "agent")]
    session: Option<String>,
    /// Start a new session with this agent type (for example `scripted`,
    /// `claude`) instead.
    #[arg(long)]
    agent: Option<String>,
    /// Hand control to the agent for the turn (you answer its permission
    /// requests; control comes back when the turn ends).
    #[arg(long)]
    hand_off: bool,
    /// The prompt.
    #[arg(required = true)]
    text: Vec<String>,
}

pub async fn run(args: PromptArgs) -> anyhow::Result<()> {
    let (vm, mut events) = args.remote.open_with_events(None).await?;
    let text = args.text.join(" ");
    // Input needs control: take it when free, else say who has it.
    let people = vm.call("listParticipants", json!([])).await?;
    let holder = &people["control"];
    let mine = holder["kind"] == "person" && holder["participantId"] == vm.you().id.as_str();
    if !mine {
        if let Err(e) = vm.call("takeControl", json!([])).await {
            bail!(
                "{} ({}); ask them for control (`ensemble attach`, Ctrl-] c) and try again",
                control_line(holder, &people["participants"]),
                e.body().map(|b| b.message.as_str()).unwrap_or("refused")
            );
        }
    }
    let session = match (&args.session, &args.agent) {
        (Some(s), _) => s.clone(),
        (None, Some(agent)) => vm
            .call("createSession", json!([agent]))
            .await
            .with_context(|| format!("cannot start a {agent} session"))?["sessionId"]
            .as_str()
            .context("createSession answered no sessionId")?
            .to_owned(),
        (None, None) => newest_ready(&vm.call("listSessions", json!([])).await?).context(
            "no session is ready in this VM; start one with --agent scripted (or claude, ...)",
        )?,
    };
    let (action, call_args) = if args.hand_off {
        ("handToAgent", json!([session, text]))
    } else {
        ("sendPrompt", json!([session, text]))
    };
    let turn = vm.call(action, call_args);
    tokio::pin!(turn);
    let mut out = std::io::stdout().lock();
    let mut print = |e: Option<Event>| {
        if let Some(Event::Json(f)) = e {
            if f.name == "sessionEvent" && f.data["sessionId"] == session.as_str() {
                if let Some(chunk) = message_chunk(&f.data["event"]) {
                    let _ = out.write_all(chunk.as_bytes());
                    let _ = out.flush();
                }
            }
        }
    };
    let result = loop {
        tokio::select! {
            r = &mut turn => break r,
            e = events.recv() => print(e),
        }
    };
    // The answer can overtake the turn's last events on their way here
    // (the host logs them before it answers): read up to the log's head.
    if result.is_ok() {
        if let Some(head) = vm
            .call("getEvents", json!([{"limit": 1}]))
            .await
            .ok()
            .and_then(|page| page["head"].as_u64())
        {
            let caught_up = tokio::time::timeout(CATCH_UP, vm.wait_seq(head));
            tokio::pin!(caught_up);
            loop {
                tokio::select! {
                    _ = &mut caught_up => break,
                    e = events.recv() => print(e),
                }
            }
            while let Ok(e) = events.try_recv() {
                print(Some(e));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let result = result.map_err(|e| {
        anyhow::anyhow!(e
            .body()
            .map(|b| b.message.clone())
            .unwrap_or_else(|| e.to_string()))
    })?;
    let _ = writeln!(out);
    let _ = out.flush();
    eprintln!(
        "[turn ended: {}]",
        result["stopReason"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// The newest session that is ready for a prompt.
fn newest_ready(list: &Value) -> Option<String> {
    list.as_array()?
        .iter()
        .rev()
        .find(|s| s["state"] == "ready")
        .and_then(|s| s["sessionId"].as_str())
        .map(str::to_owned)
}

/// The text of an agent message chunk (`session/update`).
fn message_chunk(notification: &Value) -> Option<&str> {
    let update = &notification["params"]["update"];
    (update["sessionUpdate"] == "agent_message_chunk")
        .then(|| update["content"]["text"].as_str())
        .flatten()
}
