//! The agent picker's actions: `listAgents` (any member; saved keys only for
//! the owner), `saveAgentKey` and `forgetAgentKey` (owner only). Keys live
//! in the OS keyring ([`crate::keys`]); none is ever returned or logged.

use std::collections::BTreeMap;

use ensemble_protocol::{Args, ErrorBody, Role};
use serde_json::{json, Value};

use super::{invalid, ok_null, to_json, ActionContext};
use crate::keys;

/// The `PATH` agents start with: where their commands are looked up.
fn agents_path(ctx: &ActionContext<'_>) -> String {
    ctx.vm
        .workspace()
        .environment(&BTreeMap::new())
        .ok()
        .and_then(|env| {
            env.vars()
                .find(|(k, _)| k.as_str() == "PATH")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_default()
}

/// `listAgents()` → `{agents: [{agentType, availability, keyVariable,
/// keySaved?}], keyring?: {available, message?}}`; `keySaved` and `keyring`
/// for the owner only.
pub async fn list(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("listAgents", 0).map_err(invalid)?;
    let path = agents_path(ctx);
    let owner = ctx.me.role == Role::Owner;
    let mut agents: Vec<Value> = ctx
        .agents
        .names()
        .map(|name| {
            let command = ctx.agents.get(name).expect("a listed agent type");
            json!({
                "agentType": name,
                "availability": keys::availability(command, &path).as_str(),
                "keyVariable": keys::key_variable(name),
            })
        })
        .collect();
    if !owner {
        return to_json(&json!({ "agents": agents }));
    }
    let needing: Vec<String> = ctx
        .agents
        .names()
        .filter(|n| keys::key_variable(n).is_some())
        .map(str::to_owned)
        .collect();
    let keyring = match keys::saved(needing.clone()).await {
        Ok(saved) => {
            for agent in &mut agents {
                let name = agent["agentType"].as_str().unwrap_or_default();
                let i = needing.iter().position(|n| n == name);
                agent["keySaved"] = json!(i.is_some_and(|i| saved[i]));
            }
            json!({"available": true})
        }
        Err(e) => {
            for agent in &mut agents {
                agent["keySaved"] = json!(false);
            }
            json!({"available": false, "message": e.to_string()})
        }
    };
    to_json(&json!({ "agents": agents, "keyring": keyring }))
}

/// The agent type named at `args[0]`, which must need a key.
fn key_agent(ctx: &ActionContext<'_>, args: &Args, action: &str) -> Result<String, ErrorBody> {
    let agent_type: String = args.required(0, "agentType").map_err(invalid)?;
    if ctx.agents.get(&agent_type).is_none() {
        let known: Vec<&str> = ctx.agents.names().collect();
        return Err(invalid(format!(
            "unknown agent type {agent_type:?}; known: {}",
            known.join(", ")
        )));
    }
    if keys::key_variable(&agent_type).is_none() {
        return Err(invalid(format!(
            "{action}: agent type {agent_type:?} takes no API key"
        )));
    }
    Ok(agent_type)
}

/// `saveAgentKey(agentType, key)` → `null`: saves (or replaces) the key in
/// the OS keyring.
pub async fn save(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("saveAgentKey", 2).map_err(invalid)?;
    let agent_type = key_agent(ctx, &args, "saveAgentKey")?;
    // Read as a string here, so that a mistyped argument's error cannot
    // quote the key.
    let key = match args.required::<Value>(1, "key") {
        Ok(Value::String(key)) => key,
        _ => return Err(invalid("saveAgentKey: key is a string")),
    };
    keys::save(&agent_type, &key)
        .await
        .map_err(|e| e.to_body())?;
    tracing::info!(conn = ctx.conn_id, agent_type, "agent key saved");
    ok_null()
}

/// `forgetAgentKey(agentType)` → `{forgotten}`: deletes the saved key;
/// `forgotten` is false if there was none.
pub async fn forget(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("forgetAgentKey", 1).map_err(invalid)?;
    let agent_type = key_agent(ctx, &args, "forgetAgentKey")?;
    let forgotten = keys::forget(&agent_type).await.map_err(|e| e.to_body())?;
    tracing::info!(
        conn = ctx.conn_id,
        agent_type,
        forgotten,
        "agent key forgotten"
    );
    to_json(&json!({ "forgotten": forgotten }))
}

/// For `createSession`/`resumeSession` with `useSavedKey`: puts the saved
/// key of `agent_type` into `env` under its variable (a variable `env`
/// already sets wins). Owner only.
pub async fn use_saved_key(
    ctx: &ActionContext<'_>,
    agent_type: &str,
    env: &mut BTreeMap<String, String>,
) -> Result<(), ErrorBody> {
    if ctx.me.role != Role::Owner {
        return Err(ErrorBody::new(
            ensemble_protocol::ErrorCode::Forbidden,
            "useSavedKey is for the host's owner",
        ));
    }
    let Some(variable) = keys::key_variable(agent_type) else {
        return Err(invalid(format!(
            "useSavedKey: agent type {agent_type:?} takes no API key"
        )));
    };
    if env.contains_key(variable) {
        return Ok(());
    }
    match keys::load(agent_type).await.map_err(|e| e.to_body())? {
        Some(key) => {
            env.insert(variable.to_owned(), key);
            Ok(())
        }
        None => Err(invalid(format!(
            "no key is saved for {agent_type}: save one with saveAgentKey or pass {variable} in env"
        ))),
    }
}
