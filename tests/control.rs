//! Control handoff, participants and access, end to end: the real host,
//! real WebSocket clients as different participants, the scripted agent.

mod common;

use std::time::Duration;

use common::*;
use ensemble_client::{Event, VmClient};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Who holds control now, as `listParticipants` says.
async fn holder(vm: &VmClient) -> Value {
    vm.call("listParticipants", json!([])).await.unwrap()["control"].clone()
}

fn person(id: &str) -> Value {
    json!({"kind": "person", "participantId": id})
}

/// Waits until nothing is appended to the log for a while (processes and
/// shells log their exit a moment after the action that started them).
async fn quiet(vm: &VmClient) -> u64 {
    let mut last = head(vm).await;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = head(vm).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

struct People {
    owner: VmClient,
    collaborator: VmClient,
    collaborator_token: String,
    viewer: VmClient,
}

async fn people(host: &HostProcess, key: &str) -> People {
    let owner = open(host, json!([key]), None).await;
    let c = member_token(host, &owner, json!([key]), "collaborator", "Cleo").await;
    let v = member_token(host, &owner, json!([key]), "viewer", "Vic").await;
    let p = People {
        collaborator: open_as(host, &c, json!([key]), None).await,
        collaborator_token: c,
        viewer: open_as(host, &v, json!([key]), None).await,
        owner,
    };
    // Subscribed from the head: what anyone does from now on reaches them.
    for vm in [&p.owner, &p.collaborator, &p.viewer] {
        vm.caught_up().await.unwrap();
    }
    p
}

/// Gated actions with arguments that pass once the gate lets them through:
/// either they work or they fail for a reason of their own (an unknown id).
fn gated_calls(shell: u64) -> Vec<(&'static str, Value)> {
    vec![
        ("writeShell", json!([shell, "x"])),
        ("resizeShell", json!([shell, 90, 30])),
        ("openShell", json!([{"command": "/bin/true"}])),
        ("closeShell", json!([99999])),
        ("spawn", json!(["true", []])),
        ("exec", json!(["true"])),
        ("writeProcessStdin", json!([99999, "x"])),
        ("closeProcessStdin", json!([99999])),
        ("stopProcess", json!([99999])),
        ("killProcess", json!([99999])),
        ("createSession", json!(["no-such-agent"])),
        ("resumeSession", json!(["no-such-session"])),
        ("sendPrompt", json!(["no-such-session", "say hi"])),
        ("cancelPrompt", json!(["no-such-session"])),
        ("setMode", json!(["no-such-session", "m"])),
        ("closeSession", json!(["no-such-session"])),
        ("respondPermission", json!(["no-such-session", "p", "o"])),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Nobody,
    Owner,
    /// The owner holds control and the collaborator asked for it.
    Requested,
    Collaborator,
    /// The agent runs a turn the collaborator handed it.
    Agent,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gated_action_by_role_and_control_state() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let p = people(&host, "gates").await;
    let owner_id = p.owner.you().id.clone();
    let collab_id = p.collaborator.you().id.clone();

    // A quiet shell (no echo, no output) and a session, made by the owner.
    drive(&p.owner).await;
    let shell = p
        .owner
        .call(
            "openShell",
            json!([{"command": "/bin/sh", "args": ["-c", "stty -echo; exec sleep 100000"]}]),
        )
        .await
        .unwrap()["shellId"]
        .as_u64()
        .unwrap();
    let session = scripted(&p.owner, json!({})).await;
    let calls = gated_calls(shell);
    let mut checked = 0;

    for state in [
        State::Nobody,
        State::Owner,
        State::Requested,
        State::Collaborator,
        State::Agent,
    ] {
        // Set the state up.
        let mut turn = None;
        match state {
            State::Nobody => {
                p.owner.call("releaseControl", json!([])).await.unwrap();
            }
            State::Owner => {
                p.owner.call("takeControl", json!([])).await.unwrap();
            }
            State::Requested => {
                p.collaborator
                    .call("requestControl", json!([]))
                    .await
                    .unwrap();
                let listed = p.owner.call("listParticipants", json!([])).await.unwrap();
                assert_eq!(listed["requests"], json!([collab_id]));
                // A newcomer's welcome says who is waiting, too.
                let mut raw = Raw::connect(&host).await;
                let welcome = raw.hello(json!(["gates"])).await;
                assert_eq!(welcome["controlRequests"], json!([collab_id]));
            }
            State::Collaborator => {
                p.owner
                    .call("grantControl", json!([collab_id]))
                    .await
                    .unwrap();
            }
            State::Agent => {
                // The collaborator (holding control) hands the turn over,
                // from a connection of its own that waits for the turn.
                let hands = open_as(&host, &p.collaborator_token, json!(["gates"]), None).await;
                let session = session.clone();
                turn = Some(tokio::spawn(async move {
                    hands.call("handToAgent", json!([session, "wait"])).await
                }));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while holder(&p.owner).await["kind"] != "agent" {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "agent never held control"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let held = holder(&p.owner).await;
        for (role, vm, me) in [
            ("owner", &p.owner, owner_id.as_str()),
            ("collaborator", &p.collaborator, collab_id.as_str()),
            ("viewer", &p.viewer, p.viewer.you().id.as_str()),
        ] {
            for (action, args) in &calls {
                let allowed = match state {
                    _ if role == "viewer" => false,
                    State::Nobody => false,
                    State::Owner | State::Requested => role == "owner",
                    State::Collaborator => role == "collaborator",
                    State::Agent => {
                        role == "collaborator"
                            && ["respondPermission", "cancelPrompt"].contains(action)
                    }
                };
                let before = head(&p.owner).await;
                let result = vm.call(action, args.clone()).await;
                let code = result
                    .as_ref()
                    .err()
                    .and_then(|e| e.body())
                    .map(|b| b.code.as_str());
                if allowed {
                    assert!(
                        !matches!(code, Some("not_in_control" | "forbidden")),
                        "{role} {action} in {state:?} was refused: {result:?}"
                    );
                    if ["openShell", "spawn", "exec"].contains(action) {
                        // Their exits are logged a moment later.
                        quiet(&p.owner).await;
                    }
                } else {
                    let expected = if role == "viewer" {
                        "forbidden"
                    } else {
                        "not_in_control"
                    };
                    assert_eq!(
                        code,
                        Some(expected),
                        "{role} {action} in {state:?} ({me}): {result:?}"
                    );
                    if expected == "not_in_control" {
                        let body = result.unwrap_err();
                        assert_eq!(body.body().unwrap().data.as_ref().unwrap()["holder"], held);
                    }
                    assert_eq!(
                        head(&p.owner).await,
                        before,
                        "{role} {action} in {state:?} changed the log"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(
            holder(&p.owner).await,
            held,
            "checking {state:?} moved control"
        );
        if let Some(turn) = turn {
            // The supervisor takes over: the turn ends cancelled.
            p.collaborator.call("takeControl", json!([])).await.unwrap();
            let r = turn.await.unwrap().unwrap();
            assert_eq!(r["stopReason"], "cancelled");
        }
    }
    assert_eq!(checked, 5 * 3 * calls.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_to_agent_take_over_and_hand_back_with_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let p = people(&host, "hand").await;
    let me = p.collaborator.you().id.clone();
    let mut changes = p.viewer.on("controlChanged");
    let mut permissions = p.viewer.on("permissionRequest");
    p.collaborator.call("takeControl", json!([])).await.unwrap();
    assert_eq!(
        next_named(&mut changes, "controlChanged").await["reason"],
        "taken"
    );
    let session = scripted(&p.collaborator, json!({})).await;

    // A whole turn: the agent holds control, then it comes back.
    let r = p
        .collaborator
        .call(
            "handToAgent",
            json!([session, "say hello there\nplan look; answer"]),
        )
        .await
        .unwrap();
    assert!(r["text"].as_str().unwrap().contains("hello there"), "{r}");
    let handed = next_named(&mut changes, "controlChanged").await;
    assert_eq!(handed["reason"], "handedToAgent");
    assert_eq!(
        handed["holder"],
        json!({"kind": "agent", "sessionId": session, "supervisor": me})
    );
    assert_eq!(handed["by"], me.as_str());
    let back = next_named(&mut changes, "controlChanged").await;
    assert_eq!(back["reason"], "turnEnded");
    assert_eq!(back["holder"], person(&me));
    assert_eq!(holder(&p.owner).await, person(&me));

    // Mid-turn, waiting for a permission: only the supervisor may answer;
    // taking over cancels the turn and the pending request.
    let hands = open_as(&host, &p.collaborator_token, json!(["hand"]), None).await;
    let turn = tokio::spawn({
        let session = session.clone();
        async move {
            hands
                .call("handToAgent", json!([session, "write never.txt nope"]))
                .await
        }
    });
    let request = next_named(&mut permissions, "permissionRequest").await;
    assert_eq!(
        next_named(&mut changes, "controlChanged").await["reason"],
        "handedToAgent"
    );
    let answer = json!([session, request["permissionId"], "allow"]);
    for other in [&p.owner, &p.viewer] {
        let err = other
            .call("respondPermission", answer.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(error_code(err).as_str(), "not_in_control" | "forbidden"),
            "only the supervisor answers"
        );
    }
    let err = p
        .collaborator
        .call("writeShell", json!([1, "x"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "not_in_control", "the agent is driving");
    p.collaborator.call("takeControl", json!([])).await.unwrap();
    let r = turn.await.unwrap().unwrap();
    assert_eq!(r["stopReason"], "cancelled");
    let took = next_named(&mut changes, "controlChanged").await;
    assert_eq!(took["reason"], "takenFromAgent");
    assert_eq!(took["holder"], person(&me));
    let err = p
        .collaborator
        .call("respondPermission", answer)
        .await
        .unwrap_err();
    assert_eq!(
        error_code(err),
        "not_found",
        "the request was answered cancelled"
    );
    assert!(!dir.path().join("vms/1/workspace/never.txt").exists());
    // The turn's end does not move control away from the person again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(holder(&p.owner).await, person(&me));

    // The person works in a shell, then hands back with what they did.
    let mut shell_rx = p.viewer.on("shellData");
    let shell = p
        .collaborator
        .call("openShell", json!([{"command": "/bin/sh"}]))
        .await
        .unwrap()["shellId"]
        .as_u64()
        .unwrap();
    p.collaborator
        .call("writeShell", json!([shell, "echo did-by-hand-$((6*7))\n"]))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("did-by-hand-42") {
        let e = tokio::time::timeout_at(deadline, shell_rx.recv())
            .await
            .expect("the shell answers")
            .unwrap();
        if let Event::Bytes { payload, .. } = e {
            seen.extend_from_slice(&payload);
        }
    }
    let r = p
        .collaborator
        .call(
            "handToAgent",
            json!([session, "say ok", {"shellContext": true}]),
        )
        .await
        .unwrap();
    let text = r["text"].as_str().unwrap();
    // The scripted agent reads every line of its prompt; it reports the
    // context's lines as unknown commands, so its answer quotes them.
    assert!(text.contains("did-by-hand-42"), "{text}");
    assert!(text.contains("Cleo"), "{text}");
    assert!(text.ends_with("ok"), "{text}");
    // Once handed back, the next turn carries no context.
    let r = p
        .collaborator
        .call(
            "handToAgent",
            json!([session, "say plain", {"shellContext": true}]),
        )
        .await
        .unwrap();
    assert_eq!(r["text"], "plain");
    // The log says who handed what, and whether the context went with it:
    // the person's text, not the context.
    let page = p
        .collaborator
        .call("getEvents", json!([{"since": 0, "names": ["prompt"]}]))
        .await
        .unwrap();
    let prompts: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["data"])
        .collect();
    let handed: Vec<(&Value, &Value, &Value)> = prompts
        .iter()
        .filter(|d| d["handed"] == true)
        .map(|d| (&d["text"], &d["shellContext"], &d["name"]))
        .collect();
    assert_eq!(
        handed[handed.len() - 2..],
        [
            (&json!("say ok"), &json!(true), &json!("Cleo")),
            (&json!("say plain"), &json!(false), &json!("Cleo")),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_holder_keeps_control_for_the_grace_period_only() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start_with(
        dir.path(),
        HostOptions {
            extra: vec!["--control-grace".into(), "2".into()],
            ..HostOptions::default()
        },
    );
    let owner = open(&host, json!(["grace"]), None).await;
    owner.caught_up().await.unwrap();
    let token = member_token(&host, &owner, json!(["grace"]), "collaborator", "Gus").await;
    let mut changes = owner.on("controlChanged");
    let mut left = owner.on("participantLeft");
    let gus = open_as(&host, &token, json!(["grace"]), None).await;
    let id = gus.you().id.clone();
    gus.call("takeControl", json!([])).await.unwrap();
    assert_eq!(
        next_named(&mut changes, "controlChanged").await["reason"],
        "taken"
    );

    // Drops and comes back within the grace period: still the holder.
    drop(gus);
    assert_eq!(
        next_named(&mut left, "participantLeft").await["participantId"],
        id.as_str()
    );
    let gus = open_as(&host, &token, json!(["grace"]), None).await;
    assert_eq!(holder(&owner).await, person(&id));
    gus.call("writeShell", json!([99, "x"]))
        .await
        .map_err(error_code)
        .expect_err("no shell 99");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(holder(&owner).await, person(&id), "reconnected in time");

    // Gone for longer: released, and the event says why.
    drop(gus);
    let released = next_named(&mut changes, "controlChanged").await;
    assert_eq!(released["reason"], "disconnected");
    assert_eq!(released["holder"], Value::Null);
    assert_eq!(released["previous"], person(&id));
}

/// Sends `hello` on a raw connection without a token and answers the reply.
async fn raw_hello(host: &HostProcess, extra: Value) -> (Raw, Value) {
    let mut raw = Raw::connect(host).await;
    raw.token = None;
    let mut hello = json!({"type": "hello", "protocol": 1, "key": ["door"]});
    if let (Some(h), Some(e)) = (hello.as_object_mut(), extra.as_object()) {
        h.extend(e.clone());
    }
    raw.send_json(hello).await;
    let reply = raw.next_reply().await;
    (raw, reply)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_by_request_and_code_and_what_the_owner_can_change() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let owner = open(&host, json!(["door"]), None).await;
    owner.caught_up().await.unwrap();
    let mut requests = owner.on("joinRequested");
    let mut resolved = owner.on("joinResolved");

    // No credential, a forged token: refused, and no event reaches them.
    let (mut stranger, reply) = raw_hello(&host, json!({})).await;
    assert_eq!(code(&reply), "unauthorized");
    stranger
        .send_json(json!({"type": "subscribe", "since": 0}))
        .await;
    assert_eq!(code(&stranger.next_reply().await), "not_open");
    let (_, reply) = raw_hello(&host, json!({"token": "forged"})).await;
    assert_eq!(code(&reply), "unauthorized");
    owner
        .call("emit", json!([{"data": "secret"}]))
        .await
        .unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), stranger.ws.next()).await;
    assert!(
        nothing.is_err(),
        "an unauthenticated connection got {nothing:?}"
    );

    // A join request, approved as a viewer.
    let (mut dee, reply) = raw_hello(&host, json!({"requestJoin": true, "name": "Dee"})).await;
    assert_eq!(reply["type"], "joinPending", "{reply}");
    // An action while waiting is refused with its own id.
    dee.send_json(json!({"type": "action", "id": 77, "name": "listProcesses", "args": []}))
        .await;
    let refused = dee.next_reply().await;
    assert_eq!(code(&refused), "not_open", "{refused}");
    assert_eq!(refused["id"], 77, "{refused}");
    let request_id = reply["requestId"].as_str().unwrap().to_owned();
    let asked = next_named(&mut requests, "joinRequested").await;
    assert_eq!(asked, json!({"requestId": request_id, "name": "Dee"}));
    let listed = owner.call("listJoinRequests", json!([])).await.unwrap();
    assert_eq!(listed[0]["requestId"], request_id.as_str());
    owner
        .call("approveJoin", json!([request_id, {"role": "viewer"}]))
        .await
        .unwrap();
    let welcome = dee.next_reply().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["you"]["role"], "viewer");
    assert_eq!(welcome["you"]["name"], "Dee");
    let dee_token = welcome["token"].as_str().unwrap().to_owned();
    assert_eq!(
        next_named(&mut resolved, "joinResolved").await["approved"],
        true
    );
    let dee_again = open_as(&host, &dee_token, json!(["door"]), None).await;
    let err = dee_again.call("takeControl", json!([])).await.unwrap_err();
    assert_eq!(error_code(err), "forbidden", "viewers never hold control");

    // A join request, denied.
    let (mut eve, reply) = raw_hello(&host, json!({"requestJoin": true, "name": "Eve"})).await;
    assert_eq!(reply["type"], "joinPending");
    owner
        .call("denyJoin", json!([reply["requestId"]]))
        .await
        .unwrap();
    assert_eq!(code(&eve.next_reply().await), "join_denied");
    assert_eq!(
        next_named(&mut resolved, "joinResolved").await["reason"],
        "denied"
    );
    let err = dee_again
        .call("listJoinRequests", json!([]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "forbidden", "owner only");

    // Join codes: accepted (in any case, without dashes), expired, revoked.
    let made = owner
        .call(
            "createJoinCode",
            json!([{"role": "collaborator", "expiresInSecs": 600}]),
        )
        .await
        .unwrap();
    let code_text = made["code"].as_str().unwrap().to_owned();
    let typed = code_text.replace('-', "").to_lowercase();
    let (_, welcome) = raw_hello(&host, json!({"joinCode": typed, "name": "Fay"})).await;
    assert_eq!(welcome["you"]["role"], "collaborator", "{welcome}");
    let fay_token = welcome["token"].as_str().unwrap().to_owned();
    let listed = owner.call("listJoinCodes", json!([])).await.unwrap();
    assert_eq!(listed[0]["uses"], 1);
    assert!(listed[0].get("code").is_none(), "codes are not shown again");
    owner
        .call("revokeJoinCode", json!([made["codeId"]]))
        .await
        .unwrap();
    let (_, reply) = raw_hello(&host, json!({"joinCode": code_text})).await;
    assert_eq!(code(&reply), "unauthorized", "revoked");
    let expired = owner
        .call(
            "createJoinCode",
            json!([{"role": "viewer", "expiresInSecs": 0}]),
        )
        .await
        .unwrap();
    let (_, reply) = raw_hello(&host, json!({"joinCode": expired["code"]})).await;
    assert_eq!(code(&reply), "unauthorized", "expired");

    // A role change takes effect on an open connection, and a holder made a
    // viewer loses control.
    let fay = open_as(&host, &fay_token, json!(["door"]), None).await;
    let fay_id = fay.you().id.clone();
    fay.call("takeControl", json!([])).await.unwrap();
    fay.call("exec", json!(["true"])).await.unwrap();
    let mut changes = owner.on("controlChanged");
    owner
        .call("setRole", json!([fay_id, "viewer"]))
        .await
        .unwrap();
    let err = fay.call("exec", json!(["true"])).await.unwrap_err();
    assert_eq!(error_code(err), "forbidden");
    let released = next_named(&mut changes, "controlChanged").await;
    assert_eq!(released["reason"], "roleChanged");
    assert_eq!(released["holder"], Value::Null);
    let err = dee_again
        .call("setRole", json!([fay_id, "collaborator"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "forbidden");
    let err = owner
        .call("setRole", json!([owner.you().id, "viewer"]))
        .await
        .unwrap_err();
    assert_eq!(error_code(err), "forbidden", "the owner stays the owner");

    // Removed: the open connection is closed, the token no longer works.
    let mut fay_raw = Raw::connect(&host).await;
    fay_raw.token = Some(fay_token.clone());
    assert_eq!(fay_raw.hello(json!(["door"])).await["type"], "welcome");
    owner
        .call("removeParticipant", json!([fay_id]))
        .await
        .unwrap();
    assert_eq!(code(&fay_raw.next_reply().await), "unauthorized");
    let (_, reply) = raw_hello(&host, json!({"token": fay_token})).await;
    assert_eq!(code(&reply), "unauthorized", "a removed member's token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_credentials_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    for _ in 0..10 {
        let (_, reply) = raw_hello(&host, json!({"joinCode": "AAAA-BBBB-CCCC"})).await;
        assert_eq!(code(&reply), "unauthorized");
    }
    // More guesses wait now...
    let (_, reply) = raw_hello(&host, json!({"joinCode": "AAAA-BBBB-CCCC"})).await;
    assert_eq!(code(&reply), "rate_limited", "{reply}");
    let (_, reply) = raw_hello(&host, json!({"token": "forged"})).await;
    assert_eq!(code(&reply), "rate_limited", "{reply}");
    // ...but the owner, on the same address, is never locked out.
    let (_, reply) = raw_hello(&host, json!({"token": host.owner_token})).await;
    assert_eq!(reply["type"], "welcome", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_taking_control_at_once_get_one_holder() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let owner = open(&host, json!(["race"]), None).await;
    let a_token = member_token(&host, &owner, json!(["race"]), "collaborator", "Ann").await;
    let b_token = member_token(&host, &owner, json!(["race"]), "collaborator", "Ben").await;
    let a = open_as(&host, &a_token, json!(["race"]), None).await;
    let b = open_as(&host, &b_token, json!(["race"]), None).await;
    for round in 0..10 {
        let before = head(&owner).await;
        let (ra, rb) = tokio::join!(
            a.call("takeControl", json!([])),
            b.call("takeControl", json!([]))
        );
        let winners: Vec<&VmClient> = [(&a, ra.is_ok()), (&b, rb.is_ok())]
            .into_iter()
            .filter_map(|(vm, ok)| ok.then_some(vm))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {ra:?} {rb:?}");
        let loser = if ra.is_ok() { rb } else { ra };
        assert_eq!(error_code(loser.unwrap_err()), "not_in_control");
        let page = owner
            .call(
                "getEvents",
                json!([{"since": before, "names": ["controlChanged"]}]),
            )
            .await
            .unwrap();
        assert_eq!(page["events"].as_array().unwrap().len(), 1, "one change");
        assert_eq!(holder(&owner).await, person(&winners[0].you().id));
        winners[0].call("releaseControl", json!([])).await.unwrap();
    }
}

/// Issue 12 (3): a member token opens only the VMs the owner invited its
/// member to; only the owner creates VMs; `listVms` shows each their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_scoped_per_vm() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let owner_a = open(&host, json!(["vm-a"]), None).await;
    let owner_b = open(&host, json!(["vm-b"]), None).await;
    let token = member_token(&host, &owner_a, json!(["vm-a"]), "collaborator", "Ida").await;

    // Invited to vm-a: it opens; vm-b (exists) and vm-new (does not) are
    // refused, and vm-new is not created.
    let ida = open_as(&host, &token, json!(["vm-a"]), None).await;
    for key in [json!(["vm-b"]), json!(["vm-new"])] {
        let mut raw = Raw::connect(&host).await;
        raw.token = Some(token.clone());
        let reply = raw.hello(key.clone()).await;
        assert_eq!(code(&reply), "forbidden", "{key}: {reply}");
        assert!(reply.get("id").is_none(), "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("only the owner creates VMs"),
            "{reply}"
        );
        // The connection stays open: the right key still works on it.
        assert_eq!(raw.hello(json!(["vm-a"])).await["type"], "welcome");
    }
    let keys = |list: &Value| -> Vec<Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|v| v["key"].clone())
            .collect()
    };
    let mine = ida.call("listVms", json!([])).await.unwrap();
    assert_eq!(keys(&mine), vec![json!(["vm-a"])], "{mine}");
    assert_eq!(mine[0]["id"], owner_a.info().id, "{mine}");
    let all = owner_b.call("listVms", json!([])).await.unwrap();
    assert_eq!(keys(&all), vec![json!(["vm-a"]), json!(["vm-b"])], "{all}");

    // A code made in vm-b does not open vm-a, and is not used up by trying.
    let made = owner_b
        .call("createJoinCode", json!([{"role": "viewer"}]))
        .await
        .unwrap();
    assert_eq!(made["key"], json!(["vm-b"]));
    let mut raw = Raw::connect(&host).await;
    raw.token = None;
    raw.send_json(
        json!({"type": "hello", "protocol": 1, "key": ["vm-a"], "joinCode": made["code"]}),
    )
    .await;
    let reply = raw.next_reply().await;
    assert_eq!(code(&reply), "forbidden", "{reply}");
    raw.send_json(
        json!({"type": "hello", "protocol": 1, "key": ["vm-b"], "joinCode": made["code"]}),
    )
    .await;
    let welcome = raw.next_reply().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let viewer = open_as(
        &host,
        welcome["token"].as_str().unwrap(),
        json!(["vm-b"]),
        None,
    )
    .await;
    let theirs = viewer.call("listVms", json!([])).await.unwrap();
    assert_eq!(keys(&theirs), vec![json!(["vm-b"])]);

    // A join request names an existing VM; approval invites to that one.
    let mut raw = Raw::connect(&host).await;
    raw.token = None;
    raw.send_json(json!({"type": "hello", "protocol": 1, "key": ["nowhere"], "requestJoin": true, "name": "Pat"}))
        .await;
    assert_eq!(code(&raw.next_reply().await), "forbidden");
    raw.send_json(json!({"type": "hello", "protocol": 1, "key": ["vm-b"], "requestJoin": true, "name": "Pat"}))
        .await;
    let pending = raw.next_reply().await;
    assert_eq!(pending["type"], "joinPending", "{pending}");
    owner_a
        .call("approveJoin", json!([pending["requestId"]]))
        .await
        .unwrap();
    let welcome = raw.next_reply().await;
    let pat = welcome["token"].as_str().unwrap().to_owned();
    let mut raw = Raw::connect(&host).await;
    raw.token = Some(pat.clone());
    assert_eq!(code(&raw.hello(json!(["vm-a"])).await), "forbidden");
    assert_eq!(raw.hello(json!(["vm-b"])).await["type"], "welcome");

    // The owner still creates VMs; nobody else made one.
    let all = owner_a.call("listVms", json!([])).await.unwrap();
    assert_eq!(keys(&all), vec![json!(["vm-a"]), json!(["vm-b"])], "{all}");
    open(&host, json!(["vm-c"]), None).await;
    let all = owner_a.call("listVms", json!([])).await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
}
