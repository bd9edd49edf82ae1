//! Agent sessions over ACP, end to end: the real host, the real scripted
//! agent process over stdio, real WebSocket clients.

mod common;

use std::time::Duration;

use common::*;
use ensemble_client::{Event, VmClient};
use serde_json::{json, Value};

/// The scripted agent is a workspace binary; `make test` builds it.
fn require_scripted_agent() {
    let path = std::path::Path::new(BIN).with_file_name("ensemble-scripted-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p ensemble-scripted-agent` (make test does)",
        path.display()
    );
}

/// Sends a prompt from a connection of its own, so that this connection can
/// answer the permission requests the turn raises meanwhile.
fn prompt_in_background(
    host: &HostProcess,
    session: &str,
    text: &str,
) -> tokio::task::JoinHandle<Result<Value, ensemble_client::ClientError>> {
    let client = host.client();
    let args = json!([session, text]);
    tokio::spawn(async move {
        let vm = client.get_or_create(["perm"]).await?;
        vm.call("sendPrompt", args).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_watch_one_session_and_a_late_client_catches_up() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let a = open(&host, json!(["agent"]), Some(0)).await;
    drive(&a).await;
    let b = open(&host, json!(["agent"]), Some(0)).await;
    let mut a_rx = a.on("sessionEvent");
    let mut b_rx = b.on("sessionEvent");
    let session = scripted(&a, json!({})).await;
    let r = a
        .call(
            "sendPrompt",
            json!([session, "say hello brave new world\nplan read; write"]),
        )
        .await
        .unwrap();
    assert_eq!(r["stopReason"], "end_turn");
    assert_eq!(r["text"], "hello brave new world");
    // 3 message chunks + 1 + 2*2 plan updates.
    let a_events = collect(&mut a_rx, 8, Duration::from_secs(10)).await;
    let b_events = collect(&mut b_rx, 8, Duration::from_secs(10)).await;
    assert_eq!(a_events.len(), 8);
    assert_eq!(
        a_events, b_events,
        "both clients saw the same sessionEvents"
    );
    let numbers: Vec<u64> = a_events
        .iter()
        .map(|e| data(e)["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
    assert_eq!(data(&a_events[0])["event"]["method"], "session/update");
    assert_eq!(data(&a_events[0])["sessionId"], session.as_str());

    // A late client gets exactly what it missed.
    let late = a
        .call("getSequencedEvents", json!([session, {"since": 5}]))
        .await
        .unwrap();
    let late_numbers: Vec<u64> = late["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(late_numbers, [6, 7, 8]);
    assert_eq!(
        late["events"][0]["notification"],
        data(&a_events[5])["event"]
    );

    let list = b.call("listSessions", json!([])).await.unwrap();
    assert_eq!(list[0]["sessionId"], session.as_str());
    assert_eq!(list[0]["state"], "ready");
    a.call("closeSession", json!([session])).await.unwrap();
    let mut ended = b.on("sessionEnded");
    assert_eq!(
        next_named(&mut ended, "sessionEnded").await["sessionId"],
        session.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_round_trip_cancel_and_workspace_confinement() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let a = open(&host, json!(["perm"]), None).await;
    drive(&a).await;
    let b = open(&host, json!(["perm"]), None).await;
    let mut b_rx = b.on("permissionRequest");
    let session = scripted(&a, json!({})).await;

    // Allowed: the file is written inside the workspace.
    let prompt = prompt_in_background(&host, &session, "write notes.txt hello");
    let request = next_named(&mut b_rx, "permissionRequest").await;
    assert_eq!(request["sessionId"], session.as_str());
    let options: Vec<&str> = request["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["optionId"].as_str().unwrap())
        .collect();
    assert_eq!(options, ["allow", "reject"]);
    let permission = request["permissionId"].as_str().unwrap().to_owned();
    b.call("respondPermission", json!([session, permission, "allow"]))
        .await
        .unwrap();
    let err = a
        .call("respondPermission", json!([session, permission, "reject"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "not_found", "the first answer wins");
    let r = prompt.await.unwrap().unwrap();
    assert_eq!(r["text"], "wrote notes.txt");
    let written = std::fs::read_to_string(dir.path().join("vms/1/workspace/notes.txt")).unwrap();
    assert_eq!(written, "hello");

    // Outside the workspace: refused even when allowed.
    let outside = prompt_in_background(&host, &session, "write /tmp/ensemble-outside.txt x");
    let request = next_named(&mut b_rx, "permissionRequest").await;
    b.call(
        "respondPermission",
        json!([session, request["permissionId"], "allow"]),
    )
    .await
    .unwrap();
    let r = outside.await.unwrap().unwrap();
    assert!(
        r["text"].as_str().unwrap().starts_with("write failed"),
        "{r}"
    );
    assert!(!std::path::Path::new("/tmp/ensemble-outside.txt").exists());

    // Cancel while waiting for permission: the turn ends cancelled.
    let waiting = prompt_in_background(&host, &session, "write later.txt x");
    let request = next_named(&mut b_rx, "permissionRequest").await;
    // A second prompt while one runs is refused.
    let err = a
        .call("sendPrompt", json!([session, "say no"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "busy");
    a.call("cancelPrompt", json!([session])).await.unwrap();
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r["stopReason"], "cancelled");
    let err = b
        .call(
            "respondPermission",
            json!([session, request["permissionId"], "allow"]),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "not_found", "cancel answered the request");
    assert!(!dir.path().join("vms/1/workspace/later.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_faults_are_typed_errors_and_events() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &agents,
        "[agents.missing]\ncommand = \"/nonexistent/agent\"\n[agents.dies]\ncommand = \"sh\"\nargs = [\"-c\", \"exit 4\"]\n",
    )
    .unwrap();
    let host = HostProcess::start_with(
        &dir.path().join("data"),
        HostOptions {
            extra: vec!["--agents".into(), agents.display().to_string()],
            ..HostOptions::default()
        },
    );
    let vm = open(&host, json!(["faults"]), Some(0)).await;
    drive(&vm).await;
    let mut ended = vm.on("sessionEnded");
    for (agent, code) in [
        ("nope", "invalid_args"),
        ("missing", "agent_failed"),
        ("dies", "agent_failed"),
    ] {
        let err = vm.call("createSession", json!([agent])).await.unwrap_err();
        assert_eq!(error_code(err), code, "{agent}");
    }
    let err = vm
        .call("sendPrompt", json!(["no-such", "say x"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "not_found");

    // Garbage on the agent's stdout does not break the session.
    let session = scripted(&vm, json!({})).await;
    let r = vm
        .call("sendPrompt", json!([session, "garbage"]))
        .await
        .unwrap();
    assert_eq!(r["text"], "still here");

    // A crash mid-turn: the prompt fails, an event says so, the VM goes on.
    let err = vm
        .call("sendPrompt", json!([session, "crash"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "agent_failed");
    let end = next_named(&mut ended, "sessionEnded").await;
    assert_eq!(end["sessionId"], session.as_str());
    assert_eq!(end["exitCode"], 3);
    let err = vm
        .call("sendPrompt", json!([session, "say again"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "exited");
    let other = scripted(&vm, json!({})).await;
    let r = vm
        .call("sendPrompt", json!([other, "say fine"]))
        .await
        .unwrap();
    assert_eq!(r["text"], "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_env_appear_nowhere() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let vm = open(&host, json!(["secret"]), Some(0)).await;
    drive(&vm).await;
    const SECRET: &str = "sk-very-secret-value-4242";
    let session = scripted(&vm, json!({"API_KEY": SECRET})).await;
    let r = vm
        .call(
            "sendPrompt",
            json!([session, "env API_KEY\nenv HOME_SECRET"]),
        )
        .await
        .unwrap();
    assert_eq!(
        r["text"],
        format!(
            "env API_KEY is set ({} chars)env HOME_SECRET is not set",
            SECRET.len()
        )
    );
    let info = vm.call("getSession", json!([session])).await.unwrap();
    assert!(!info.to_string().contains(SECRET));
    let all = vm
        .call("getEvents", json!([{"limit": 10000}]))
        .await
        .unwrap();
    assert!(!all.to_string().contains(SECRET));
    vm.call("closeSession", json!([session])).await.unwrap();
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_terminal_is_a_vm_process_everyone_watches() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let a = open(&host, json!(["term"]), Some(0)).await;
    drive(&a).await;
    let b = open(&host, json!(["term"]), Some(0)).await;
    let mut b_rx = b.on("*");
    let session = scripted(&a, json!({})).await;
    let r = a
        .call(
            "sendPrompt",
            json!([session, "run echo from-the-agent; exit 5"]),
        )
        .await
        .unwrap();
    assert_eq!(r["text"], "exit 5");
    // The other client saw the process start (tagged with the session),
    // its output, and its exit.
    let started = next_named(&mut b_rx, "processStarted").await;
    assert_eq!(started["sessionId"], session.as_str());
    let pid = started["pid"].as_u64().unwrap();
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .expect("output in time")
            .unwrap();
        match e {
            Event::Bytes { header, payload } if u64::from(header.id) == pid => {
                out.extend_from_slice(&payload)
            }
            Event::Json(f) if f.name == "processExit" => {
                assert_eq!(f.data["exitCode"], 5);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(out, b"from-the-agent\n");
    // Released by the agent, still listed for everyone.
    let list = b.call("listProcesses", json!([])).await.unwrap();
    assert!(list.as_array().unwrap().iter().any(|p| p["pid"] == pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_initializes_times_out_and_modes_can_be_set() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents.toml");
    let agent_path = std::path::Path::new(BIN).with_file_name("ensemble-scripted-agent");
    std::fs::write(
        &agents,
        format!(
            "[agents.hang]\ncommand = \"{}\"\nargs = [\"--hang-initialize\", \"--log\", \"off\"]\n",
            agent_path.display()
        ),
    )
    .unwrap();
    let host = HostProcess::start_with(
        &dir.path().join("data"),
        HostOptions {
            extra: vec![
                "--agents".into(),
                agents.display().to_string(),
                "--agent-init-timeout".into(),
                "1".into(),
            ],
            ..HostOptions::default()
        },
    );
    let vm = open(&host, json!(["hang"]), None).await;
    drive(&vm).await;
    let started = std::time::Instant::now();
    let err = vm.call("createSession", json!(["hang"])).await.unwrap_err();
    assert!(
        err.to_string().contains("did not answer initialize"),
        "{err}"
    );
    assert_eq!(error_code(err), "agent_failed");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The agent that hung is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            !zombie
                && String::from_utf8_lossy(&cmdline).contains("--hang-initialize")
                && String::from_utf8_lossy(&cmdline).contains(&*agent_path.to_string_lossy())
        });
        if !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hung agent was left running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let session = scripted(&vm, json!({})).await;
    vm.call("setMode", json!([session, "plan"])).await.unwrap();
    let err = vm
        .call("setMode", json!([session, "bogus"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "invalid_args");
}

/// The `sequenceNumber`s and texts of a session's logged notifications.
/// The VM's events named `names`, in log order: (name, data).
async fn named_events(vm: &VmClient, names: &[&str]) -> Vec<(String, Value)> {
    let page = vm
        .call("getEvents", json!([{"since": 0, "names": names}]))
        .await
        .unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_turn_is_framed_by_a_prompt_and_a_turn_ended_event() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let vm = open(&host, json!(["turns"]), None).await;
    drive(&vm).await;
    let me = vm.call("listParticipants", json!([])).await.unwrap();
    let session = scripted(&vm, json!({})).await;
    vm.call("sendPrompt", json!([session, "say hello"]))
        .await
        .unwrap();
    vm.call("sendPrompt", json!([session, "say again"]))
        .await
        .unwrap();
    let events = named_events(&vm, &["prompt", "sessionEvent", "turnEnded"]).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let first_end = names.iter().position(|n| *n == "turnEnded").unwrap();
    assert_eq!(names[0], "prompt", "{names:?}");
    assert!(names[1..first_end].iter().all(|n| *n == "sessionEvent"));
    assert!(first_end > 1, "the turn's updates come between: {names:?}");
    assert_eq!(names[first_end + 1], "prompt", "{names:?}");
    assert_eq!(names.last(), Some(&"turnEnded"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "prompt").count(), 2);

    let (_, p1) = &events[0];
    assert_eq!(p1["sessionId"], session.as_str());
    assert_eq!(p1["turn"], 1);
    assert_eq!(p1["text"], "say hello");
    assert_eq!(p1["shellContext"], false);
    assert_eq!(p1["handed"], false);
    let owner = me["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "owner")
        .unwrap();
    assert_eq!(p1["participantId"], owner["id"]);
    assert_eq!(p1["name"], owner["name"]);
    assert_eq!(p1["color"], owner["color"]);
    let (_, end1) = &events[first_end];
    assert_eq!(end1["turn"], 1);
    assert_eq!(end1["stopReason"], "end_turn");
    assert_eq!(end1["error"], Value::Null);
    assert_eq!(events[first_end + 1].1["turn"], 2);
    assert_eq!(events.last().unwrap().1["turn"], 2);
}

async fn transcript(vm: &VmClient, session: &str) -> Vec<(u64, String)> {
    let page = vm
        .call("getSequencedEvents", json!([session, {"limit": 10000}]))
        .await
        .unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let update = &e["notification"]["params"]["update"];
            (
                e["sequenceNumber"].as_u64().unwrap(),
                format!(
                    "{}:{}",
                    update["sessionUpdate"].as_str().unwrap(),
                    update["content"]["text"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_resumed_after_a_host_restart_and_after_its_agent_exits() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    const SECRET: &str = "sk-resume-secret-value-9191";
    let mut host = HostProcess::start(&data_dir);
    let vm = open(&host, json!(["resume"]), None).await;
    drive(&vm).await;
    let session = scripted(&vm, json!({"API_KEY": SECRET})).await;
    let r = vm
        .call("sendPrompt", json!([session, "say one two three\nturn"]))
        .await
        .unwrap();
    assert_eq!(r["text"], "one two threeturn 1");
    let before = transcript(&vm, &session).await;
    assert_eq!(before.len(), 4);
    drop(vm);
    host.stop();

    let host = HostProcess::start(&data_dir);
    let vm = open(&host, json!(["resume"]), None).await;
    drive(&vm).await;
    let list = vm.call("listSessions", json!([])).await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["sessionId"], session.as_str());
    assert_eq!(list[0]["state"], "ended");
    assert_eq!(list[0]["agentType"], "scripted");
    assert_eq!(list[0]["capabilities"]["loadSession"], true);
    let err = vm
        .call("sendPrompt", json!([session, "turn"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "not_found", "ended until resumed");

    let mut resumed_rx = vm.on("sessionResumed");
    let r = vm
        .call(
            "resumeSession",
            json!([session, {"env": {"API_KEY": SECRET}}]),
        )
        .await
        .unwrap();
    assert_eq!(r["sessionId"], session.as_str());
    assert_eq!(r["agentInfo"]["name"], "scripted");
    assert_eq!(
        next_named(&mut resumed_rx, "sessionResumed").await["sessionId"],
        session.as_str()
    );
    assert_eq!(
        transcript(&vm, &session).await,
        before,
        "the agent's replay is not logged again"
    );
    let err = vm
        .call("resumeSession", json!([session]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "invalid_args", "a live session");
    let list = vm.call("listSessions", json!([])).await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["state"], "ready");

    // The agent remembers its earlier turn, and got the env again.
    let r = vm
        .call("sendPrompt", json!([session, "turn\nenv API_KEY"]))
        .await
        .unwrap();
    let prompts = named_events(&vm, &["prompt"]).await;
    let turns: Vec<u64> = prompts
        .iter()
        .map(|(_, d)| d["turn"].as_u64().unwrap())
        .collect();
    assert_eq!(turns, [1, 2], "a resumed session numbers its turns on");
    assert_eq!(
        r["text"],
        format!("turn 2env API_KEY is set ({} chars)", SECRET.len())
    );

    // Its agent crashes: resumed again in the same run of the host.
    let mut ended = vm.on("sessionEnded");
    let err = vm
        .call("sendPrompt", json!([session, "crash"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "agent_failed");
    assert_eq!(
        next_named(&mut ended, "sessionEnded").await["sessionId"],
        session.as_str()
    );
    vm.call("resumeSession", json!([session])).await.unwrap();
    let r = vm
        .call("sendPrompt", json!([session, "turn"]))
        .await
        .unwrap();
    assert_eq!(r["text"], "turn 4");

    let after = transcript(&vm, &session).await;
    let numbers: Vec<u64> = after.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(after[..4], before[..]);
    let texts: Vec<&str> = after[4..].iter().map(|(_, t)| t.as_str()).collect();
    let set = format!(
        "agent_message_chunk:env API_KEY is set ({} chars)",
        SECRET.len()
    );
    assert_eq!(
        texts,
        [
            "agent_message_chunk:turn 2",
            set.as_str(),
            "agent_message_chunk:crashing",
            "agent_message_chunk:turn 4",
        ]
    );

    let err = vm
        .call("resumeSession", json!(["s-no-such"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "not_found");
    vm.call("closeSession", json!([session])).await.unwrap();
    next_named(&mut ended, "sessionEnded").await;
    for entry in walk(&data_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            entry.display()
        );
    }
    // The agent's journals are in the VM's data dir, not its workspace.
    let vm_dir = data_dir.join("vms/1");
    let journals = walk(&vm_dir.join("agents/scripted"));
    assert_eq!(journals.len(), 1, "{journals:?}");
    assert!(!walk(&vm_dir.join("workspace"))
        .iter()
        .any(|p| p.to_string_lossy().contains("jsonl")));

    // An agent that cannot find the session refuses session/load.
    std::fs::remove_file(&journals[0]).unwrap();
    let err = vm
        .call("resumeSession", json!([session]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("could not load"), "{err}");
    assert_eq!(error_code(err), "cannot_resume");
    let list = vm.call("listSessions", json!([])).await.unwrap();
    assert_eq!(list[0]["state"], "ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_load_session_cannot_resume() {
    require_scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents.toml");
    let agent_path = std::path::Path::new(BIN).with_file_name("ensemble-scripted-agent");
    // The scripted agent without a journal advertises loadSession false.
    std::fs::write(
        &agents,
        format!(
            "[agents.forgetful]\ncommand = \"{}\"\n",
            agent_path.display()
        ),
    )
    .unwrap();
    let host = HostProcess::start_with(
        &dir.path().join("data"),
        HostOptions {
            extra: vec!["--agents".into(), agents.display().to_string()],
            ..HostOptions::default()
        },
    );
    let vm = open(&host, json!(["forgetful"]), None).await;
    drive(&vm).await;
    let r = vm
        .call("createSession", json!(["forgetful"]))
        .await
        .unwrap();
    assert_eq!(r["capabilities"]["loadSession"], false);
    let session = r["sessionId"].as_str().unwrap().to_owned();
    vm.call("sendPrompt", json!([session, "turn"]))
        .await
        .unwrap();
    let mut ended = vm.on("sessionEnded");
    vm.call("closeSession", json!([session])).await.unwrap();
    next_named(&mut ended, "sessionEnded").await;
    let err = vm
        .call("resumeSession", json!([session]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("session/load"), "{err}");
    assert_eq!(error_code(err), "cannot_resume");
    // Refused cleanly: the session can be asked again, and the VM goes on.
    let err = vm
        .call("resumeSession", json!([session]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "cannot_resume");
    let other = scripted(&vm, json!({})).await;
    let r = vm
        .call("sendPrompt", json!([other, "say fine"]))
        .await
        .unwrap();
    assert_eq!(r["text"], "fine");
}
