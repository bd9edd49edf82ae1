//! Agents and their API keys: `listAgents` (what is installed, which key an
//! agent needs), `saveAgentKey`/`forgetAgentKey` and `createSession` with
//! `useSavedKey`. The host runs with a D-Bus session address that leads
//! nowhere, so the no-keyring path is what is tested here, as on CI (which
//! has no Secret Service); no key ever reaches the log, the data directory
//! or the host's own log (run at `trace`).
//!
//! With `ENSEMBLE_TEST_KEYRING=1` the test `saved_key_reaches_the_agent`
//! uses the session's real keyring instead (`scripts/keyring-test.sh` runs
//! it inside `dbus-run-session` with an unlocked gnome-keyring).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "sk-ant-test-key-never-logged-7731";

/// A host whose log (at `trace`) goes to `<dir>/host.log`; with
/// `no_keyring`, its D-Bus session bus address leads nowhere.
fn start_host(dir: &Path, no_keyring: bool, extra: &[&str]) -> HostProcess {
    let data_dir = dir.join("data");
    let log = std::fs::File::create(dir.join("host.log")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--test-actions")
        .args(extra)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(log);
    if no_keyring {
        cmd.env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", dir.join("no-bus").display()),
        )
        .env_remove("DISPLAY");
    }
    let mut child = cmd.spawn().expect("start ensemble");
    let addr = listening_addr(child.stdout.take().unwrap());
    let owner_token = std::fs::read_to_string(data_dir.join("owner-token"))
        .unwrap()
        .trim()
        .to_owned();
    HostProcess {
        child,
        addr,
        data_dir,
        owner_token,
    }
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// No file under `dir` (the data directory and the host's log) holds `KEY`.
fn key_appears_nowhere(dir: &Path) {
    for file in files(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "{} holds the key",
            file.display()
        );
    }
}

fn agent<'a>(list: &'a Value, agent_type: &str) -> &'a Value {
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agentType"] == agent_type)
        .unwrap_or_else(|| panic!("{agent_type} missing from {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_agents_says_what_is_installed_and_which_key_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host(dir.path(), true, &[]);
    let owner = open(&host, json!(["agents"]), None).await;
    let list = owner.call("listAgents", json!([])).await.unwrap();
    let scripted = agent(&list, "scripted");
    assert_eq!(scripted["availability"], "installed", "{list}");
    assert_eq!(scripted["keyVariable"], Value::Null);
    assert_eq!(scripted["keySaved"], false);
    let claude = agent(&list, "claude");
    assert_eq!(claude["keyVariable"], "ANTHROPIC_API_KEY");
    // npx-based: "downloads on first use" where npx is, never a network probe.
    assert!(
        ["onFirstUse", "missing"].contains(&claude["availability"].as_str().unwrap()),
        "{list}"
    );
    assert_eq!(claude["keySaved"], false);
    assert_eq!(agent(&list, "gemini")["keyVariable"], "GEMINI_API_KEY");
    assert_eq!(agent(&list, "codex")["keyVariable"], "OPENAI_API_KEY");
    assert_eq!(list["keyring"]["available"], false, "{list}");
    let message = list["keyring"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("no OS keyring is available"),
        "{message}"
    );

    // A member sees availability and variables, nothing about saved keys.
    let token = member_token(&host, &owner, json!(["agents"]), "collaborator", "Bea").await;
    let bea = open_as(&host, &token, json!(["agents"]), None).await;
    let theirs = bea.call("listAgents", json!([])).await.unwrap();
    assert!(theirs.get("keyring").is_none(), "{theirs}");
    assert!(
        agent(&theirs, "claude").get("keySaved").is_none(),
        "{theirs}"
    );
    assert_eq!(agent(&theirs, "claude")["keyVariable"], "ANTHROPIC_API_KEY");
    let e = bea
        .call("saveAgentKey", json!(["claude", KEY]))
        .await
        .unwrap_err();
    assert_eq!(error_code(e), "forbidden");
    let e = bea
        .call("listAgents", json!([{"extra": 1}]))
        .await
        .unwrap_err();
    assert_eq!(error_code(e), "invalid_args");
    // Holding control lets Bea start sessions, never with the owner's key.
    drive(&owner).await;
    owner
        .call("grantControl", json!([bea.you().id]))
        .await
        .unwrap();
    let e = bea
        .call("createSession", json!(["claude", {"useSavedKey": true}]))
        .await
        .unwrap_err();
    assert_eq!(error_code(e), "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keyring_keys_fail_clearly_and_never_leak() {
    let dir = tempfile::tempdir().unwrap();

    let mut host = start_host(dir.path(), true, &[]);
    let owner = open(&host, json!(["nokeyring"]), Some(0)).await;
    drive(&owner).await;
    let e = owner
        .call("saveAgentKey", json!(["claude", KEY]))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(error_code(e), "no_keyring");
    assert!(text.contains("no OS keyring is available"), "{text}");
    assert!(text.contains("pass the key in the session's env"), "{text}");
    assert!(!text.contains(KEY));
    let e = owner
        .call("forgetAgentKey", json!(["claude"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(e), "no_keyring");
    // useSavedKey fails before any agent starts.
    let e = owner
        .call("createSession", json!(["claude", {"useSavedKey": true}]))
        .await
        .unwrap_err();
    assert_eq!(error_code(e), "no_keyring");
    // Agents without a key variable, and unknown ones, are refused first.
    for args in [
        json!(["scripted", KEY]),
        json!(["nope", KEY]),
        json!(["claude", 42]),
        json!(["claude", ""]),
    ] {
        let e = owner.call("saveAgentKey", args).await.unwrap_err();
        let text = e.to_string();
        assert_eq!(error_code(e), "invalid_args");
        assert!(!text.contains(KEY), "{text}");
    }
    let e = owner
        .call("createSession", json!(["scripted", {"useSavedKey": true}]))
        .await
        .unwrap_err();
    assert_eq!(error_code(e), "invalid_args");

    // A key passed in env reaches the agent and nothing else.
    let session = scripted(&owner, json!({"ANTHROPIC_API_KEY": KEY})).await;
    let r = owner
        .call("sendPrompt", json!([session, "env ANTHROPIC_API_KEY"]))
        .await
        .unwrap();
    assert_eq!(
        r["text"],
        format!("env ANTHROPIC_API_KEY is set ({} chars)", KEY.len())
    );
    let all = owner
        .call("getEvents", json!([{"limit": 10000}]))
        .await
        .unwrap();
    assert!(!all.to_string().contains(KEY));
    owner.call("closeSession", json!([session])).await.unwrap();
    host.stop();
    let log = std::fs::read_to_string(dir.path().join("host.log")).unwrap();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the host logged"
    );
    key_appears_nowhere(dir.path());
}

/// Save → `createSession` with `useSavedKey` → the scripted agent sees the
/// variable → forget. Needs a real Secret Service: skipped unless
/// `ENSEMBLE_TEST_KEYRING=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_key_reaches_the_agent() {
    if std::env::var_os("ENSEMBLE_TEST_KEYRING").is_none() {
        eprintln!("skipped: set ENSEMBLE_TEST_KEYRING=1 inside a D-Bus session with a keyring");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An agents file makes "claude" start the scripted agent, which then
    // gets the saved key as ANTHROPIC_API_KEY.
    let scripted = Path::new(BIN).with_file_name("ensemble-scripted-agent");
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &agents,
        format!(
            "[agents.claude]\ncommand = {:?}\nargs = [\"--journal-dir\", \"{{stateDir}}\"]\n",
            scripted.display().to_string()
        ),
    )
    .unwrap();
    let mut host = start_host(dir.path(), false, &["--agents", agents.to_str().unwrap()]);
    let owner = open(&host, json!(["keyring"]), Some(0)).await;
    drive(&owner).await;
    owner
        .call("saveAgentKey", json!(["claude", KEY]))
        .await
        .unwrap();
    let list = owner.call("listAgents", json!([])).await.unwrap();
    assert_eq!(list["keyring"]["available"], true, "{list}");
    assert_eq!(agent(&list, "claude")["keySaved"], true);
    assert!(!list.to_string().contains(KEY));
    let r = owner
        .call("createSession", json!(["claude", {"useSavedKey": true}]))
        .await
        .unwrap();
    let session = r["sessionId"].as_str().unwrap().to_owned();
    let r = owner
        .call("sendPrompt", json!([session, "env ANTHROPIC_API_KEY"]))
        .await
        .unwrap();
    assert_eq!(
        r["text"],
        format!("env ANTHROPIC_API_KEY is set ({} chars)", KEY.len())
    );
    owner.call("closeSession", json!([session])).await.unwrap();
    let r = owner
        .call("forgetAgentKey", json!(["claude"]))
        .await
        .unwrap();
    assert_eq!(r["forgotten"], true);
    let list = owner.call("listAgents", json!([])).await.unwrap();
    assert_eq!(agent(&list, "claude")["keySaved"], false);
    host.stop();
    key_appears_nowhere(dir.path());
}
