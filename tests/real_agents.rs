//! Real ACP agents from npm, end to end: the real host starts the
//! `claude-agent-acp` package that scripts/setup.sh installed in
//! tests/agents/ (pinned by its package-lock.json), so nothing is downloaded
//! during the test. With no API key the agent must answer `initialize` and
//! then refuse the prompt with a clear, typed error: never hang, never take
//! the host or the VM down.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A generous bound: the agent answers in about a second here, but the
/// machine is shared and a hang must fail the test, not stall it.
const TURN_BOUND: Duration = Duration::from_secs(120);

/// The package's entry point, as its `.bin` link names it.
fn claude_agent_script() -> PathBuf {
    let link = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/agents/node_modules/.bin/claude-agent-acp");
    std::fs::canonicalize(&link).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run scripts/setup.sh (make test does)",
            link.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_agent_without_a_key_refuses_the_prompt_with_a_typed_error() {
    let script = claude_agent_script();
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &agents,
        format!(
            "[agents.claude]\ncommand = \"node\"\nargs = [{:?}]\n",
            script.display().to_string()
        ),
    )
    .unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let host = HostProcess::start_with(
        &dir.path().join("data"),
        HostOptions {
            extra: vec!["--agents".into(), agents.display().to_string()],
            ..HostOptions::default()
        },
    );
    let vm = open(&host, json!(["claude"]), Some(0)).await;
    drive(&vm).await;
    let mut events = vm.on("sessionEvent");

    // No key, and everything the agent sends on its own switched off; the
    // proxy is a closed local port, so whatever it still tries goes nowhere
    // but 127.0.0.1.
    let env = json!({
        "HOME": home.display().to_string(),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    });
    let started = Instant::now();
    let created = tokio::time::timeout(
        TURN_BOUND,
        vm.call("createSession", json!(["claude", {"env": env}])),
    )
    .await
    .expect("createSession answers in time");
    println!(
        "createSession after {:.1}s: {created:?}",
        started.elapsed().as_secs_f32()
    );
    let session = match created {
        Ok(r) => {
            // initialize and session/new were answered: the agent ran.
            assert_eq!(r["agentType"], "claude");
            assert_eq!(
                r["agentInfo"]["name"], "@agentclientprotocol/claude-agent-acp",
                "{r}"
            );
            r["sessionId"].as_str().expect("sessionId").to_owned()
        }
        Err(e) => {
            let message = e.to_string();
            assert_eq!(error_code(e), "agent_failed", "{message}");
            panic!("the agent did not open a session: {message}");
        }
    };

    let started = Instant::now();
    let turn = tokio::time::timeout(
        TURN_BOUND,
        vm.call("sendPrompt", json!([session, "say hi"])),
    )
    .await
    .unwrap_or_else(|_| panic!("sendPrompt hung for {}s", TURN_BOUND.as_secs()));
    println!(
        "sendPrompt after {:.1}s: {turn:?}",
        started.elapsed().as_secs_f32()
    );
    match turn {
        Err(e) => {
            let message = e.to_string();
            assert_eq!(error_code(e), "agent_failed", "{message}");
            assert!(
                message.to_lowercase().contains("auth"),
                "the error says why: {message}"
            );
        }
        // An agent may instead end the turn and say it needs a login.
        Ok(r) => {
            let said = r.to_string().to_lowercase();
            assert!(
                said.contains("auth") || said.contains("log in") || said.contains("login"),
                "the turn says a login is needed: {r}"
            );
        }
    }
    for e in collect(&mut events, 1000, Duration::from_millis(200)).await {
        let update = &data(&e)["event"]["params"]["update"];
        println!("sessionEvent: {}", update["sessionUpdate"]);
    }

    // The session is still there and can be closed; the VM goes on.
    let info = vm.call("getSession", json!([session])).await.unwrap();
    println!("getSession: state {}", info["state"]);
    assert_eq!(info["state"], "ready", "{info}");
    vm.call("closeSession", json!([session])).await.unwrap();
    let scripted = vm
        .call("createSession", json!(["scripted"]))
        .await
        .expect("a scripted session still starts");
    let r = vm
        .call(
            "sendPrompt",
            json!([scripted["sessionId"], "say still fine"]),
        )
        .await
        .unwrap();
    assert_eq!(r["text"], "still fine");
    let list = vm.call("listSessions", json!([])).await.unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
}
