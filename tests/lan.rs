//! Sharing on the LAN, with every host on 127.0.0.1 and mDNS on `lo` only:
//! discovery, the verification code both sides see, approval, the relay of a
//! paired host's shell and agent session, pinned certificates, tokens bound
//! to the joining install, sharing switched off, and the Host header check.
//! tests/lan_netns.rs runs the same across network namespaces.

mod common;

use std::time::Duration;

use common::lan::*;
use common::*;
use ensemble_client::{Client, Event, OpenOptions, VmClient};
use serde_json::{json, Value};

const KEY: &str = "default";

fn alice(dir: &std::path::Path) -> HostProcess {
    HostProcess::start_with(
        dir,
        HostOptions {
            extra: sharing_on_lo("Alice"),
            ..HostOptions::default()
        },
    )
}

fn bea(dir: &std::path::Path) -> HostProcess {
    HostProcess::start_with(
        dir,
        HostOptions {
            extra: browsing_on_lo(),
            ..HostOptions::default()
        },
    )
}

/// The address Alice's host shares on.
async fn shared_at(vm: &VmClient) -> String {
    let (state, _) = wait_lan(vm, "sharing", Duration::from_secs(10), |s| {
        s["sharing"] == true && s["addresses"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    state["addresses"][0].as_str().unwrap().to_owned()
}

/// Bea's host asks Alice's to let it in; answers (join id, code seen by Bea).
async fn request(b: &VmClient, address: &str, fingerprint: Option<&str>) -> (u64, String) {
    let mut opts = json!({"address": address, "name": "Bea"});
    if let Some(fp) = fingerprint {
        opts["fingerprint"] = json!(fp);
    }
    let id = b.call("joinPeer", json!([opts])).await.unwrap()["joinId"]
        .as_u64()
        .unwrap();
    let (state, _) = wait_lan(
        b,
        "the join to wait for the owner",
        Duration::from_secs(20),
        |s| join(s, id)["state"] == "waiting",
    )
    .await;
    (id, join(&state, id)["code"].as_str().unwrap().to_owned())
}

/// Appends the bytes of `shell` until `needle` is among them.
async fn read_shell(
    rx: &mut tokio::sync::mpsc::Receiver<Event>,
    shell: u64,
    needle: &str,
) -> Vec<u64> {
    let mut out = Vec::new();
    let mut seqs = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        let e = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&out)))
            .expect("open");
        seqs.push(e.seq());
        if let Event::Bytes { header, payload } = e {
            if u64::from(header.id) == shell {
                out.extend_from_slice(&payload);
            }
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teammate_finds_joins_and_follows_a_shared_vm_through_the_relay() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_host = alice(da.path());
    let b_host = bea(db.path());
    let a = open(&a_host, json!(KEY), Some(0)).await;
    let b = open(&b_host, json!(KEY), Some(0)).await;
    let address = shared_at(&a).await;
    let a_fp = fingerprint_of(da.path());

    // Nearby: Alice's host with its fingerprint; Bea's own host is not
    // listed even once it shares too.
    let (state, took) = wait_lan(&b, "Alice nearby", Duration::from_secs(10), |s| {
        nearby(s, &a_fp).is_some()
    })
    .await;
    let entry = nearby(&state, &a_fp).unwrap();
    assert_eq!(entry["displayName"], "Alice");
    assert_eq!(
        entry["port"].as_u64().unwrap().to_string(),
        address.rsplit(':').next().unwrap()
    );
    eprintln!("discovered in {took:?}");
    let alice_own = lan(&a, true).await;
    assert!(nearby(&alice_own, &a_fp).is_none(), "a host lists itself");

    // Join: both screens show the same code; Alice approves.
    let (join_id, code) = request(&b, &address, Some(&a_fp)).await;
    let requests = a.call("listJoinRequests", json!([])).await.unwrap();
    let req = requests
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "Bea")
        .cloned()
        .expect("Bea's request");
    assert_eq!(req["code"], code, "both sides see the same code");
    let b_fp = fingerprint_of(db.path());
    assert_eq!(req["fingerprint"], b_fp);
    a.call(
        "approveJoin",
        json!([req["requestId"], {"role": "collaborator"}]),
    )
    .await
    .unwrap();
    let (state, _) = wait_lan(&b, "approval", Duration::from_secs(20), |s| {
        join(s, join_id)["state"] == "approved"
    })
    .await;
    let peer_id = join(&state, join_id)["peerId"].as_str().unwrap().to_owned();
    let peer = state["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peerId"] == peer_id)
        .cloned()
        .unwrap();
    assert_eq!(peer["fingerprint"], a_fp);
    assert_eq!(peer["displayName"], "Alice", "the announced name is kept");
    assert_eq!(peer["role"], "collaborator");
    assert!(peer.get("token").is_none(), "getLan shows no token");
    let stored = std::fs::read_to_string(db.path().join("peers.json")).unwrap();
    let token = serde_json::from_str::<Value>(&stored).unwrap()[0]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The relay: Bea's own host carries Alice's VM to Bea's client.
    let relayed = Client::new(b_host.url())
        .with_token(&b_host.owner_token)
        .with_path(format!("/v1/peers/{peer_id}/ws"))
        .open(
            json!(KEY),
            OpenOptions {
                since: Some(0),
                ..OpenOptions::default()
            },
        )
        .await
        .expect("open Alice's VM through the relay");
    assert_eq!(relayed.you().name, "Bea");
    assert_eq!(relayed.you().role, ensemble_protocol::Role::Collaborator);
    let mut seen = relayed.on("*");
    drive(&a).await;
    let shell = a
        .call(
            "openShell",
            json!([{"command": "/bin/sh", "cols": 80, "rows": 24}]),
        )
        .await
        .unwrap()["shellId"]
        .as_u64()
        .unwrap();
    a.call("writeShell", json!([shell, "echo relayed-$((6*7))\n"]))
        .await
        .unwrap();
    let seqs = read_shell(&mut seen, shell, "relayed-42").await;
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or repeat: {seqs:?}"
    );
    // An agent session's events arrive too.
    let session = scripted(&a, json!({})).await;
    a.call("sendPrompt", json!([session, "hello"]))
        .await
        .unwrap();
    let events = collect(&mut seen, 400, Duration::from_secs(5)).await;
    assert!(
        events.iter().any(|e| e.name() == "sessionEvent"),
        "no sessionEvent through the relay"
    );
    // Control through the relay: Bea asks, Alice grants, Bea drives.
    relayed.call("requestControl", json!([])).await.unwrap();
    let bea_id = relayed.you().id.clone();
    a.call("grantControl", json!([bea_id])).await.unwrap();
    relayed
        .call("writeShell", json!([shell, "echo from-bea\n"]))
        .await
        .expect("Bea drives Alice's shell through the relay");

    // The token works only with Bea's certificate: not over plain loopback.
    let stolen = Client::new(a_host.url())
        .with_token(&token)
        .get_or_create(json!(KEY))
        .await;
    assert_eq!(
        error_code(stolen.err().expect("a copied token is refused")),
        "unauthorized"
    );
    // Only Bea's host's owner can use the relay.
    let intruder = Client::new(b_host.url())
        .with_token("not-a-token")
        .with_path(format!("/v1/peers/{peer_id}/ws"))
        .get_or_create(json!(KEY))
        .await;
    assert!(intruder.is_err());

    // Sharing off: the LAN listener closes and open LAN connections end.
    let off = a.call("setLanSharing", json!([false])).await.unwrap();
    assert_eq!(off["sharing"], false);
    let connect = tokio::net::TcpStream::connect(address.as_str()).await;
    assert!(connect.is_err(), "the LAN port still accepts connections");
    let refused = Client::new(b_host.url())
        .with_token(&b_host.owner_token)
        .with_path(format!("/v1/peers/{peer_id}/ws"))
        .get_or_create(json!(KEY))
        .await;
    assert_eq!(
        error_code(refused.err().expect("relay to a host that stopped sharing")),
        "peer_unavailable"
    );
    drop(a_host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_certificate_at_a_paired_address_is_a_hard_stop() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b_host = bea(db.path());
    let b = open(&b_host, json!(KEY), Some(0)).await;
    let mut a_host = alice(da.path());
    let a = open(&a_host, json!(KEY), Some(0)).await;
    let address = shared_at(&a).await;

    // A forged announcement: the fingerprint Bea pins is not the host's.
    let forged = "ab".repeat(32);
    let id = b
        .call(
            "joinPeer",
            json!([{"address": address, "fingerprint": forged}]),
        )
        .await
        .unwrap()["joinId"]
        .as_u64()
        .unwrap();
    let (state, _) = wait_lan(
        &b,
        "the forged join to fail",
        Duration::from_secs(20),
        |s| join(s, id)["state"] == "failed",
    )
    .await;
    let error = join(&state, id)["error"].as_str().unwrap().to_owned();
    assert!(error.contains("different certificate"), "{error}");
    assert!(
        join(&state, id).get("code").is_none(),
        "no code without a handshake"
    );
    assert!(
        a.call("listJoinRequests", json!([]))
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty(),
        "the host got a request although the handshake failed"
    );

    // Pair for real, then another install answers at the same address.
    let (join_id, _) = request(&b, &address, None).await;
    let req = a.call("listJoinRequests", json!([])).await.unwrap()[0].clone();
    a.call("approveJoin", json!([req["requestId"]]))
        .await
        .unwrap();
    let (state, _) = wait_lan(&b, "approval", Duration::from_secs(20), |s| {
        join(s, join_id)["state"] == "approved"
    })
    .await;
    let peer_id = join(&state, join_id)["peerId"].as_str().unwrap().to_owned();
    drop(a);
    a_host.stop();
    let impostor_dir = tempfile::tempdir().unwrap();
    let mut extra = sharing_on_lo("Alice");
    extra[2] = address.clone();
    let _impostor = HostProcess::start_with(
        impostor_dir.path(),
        HostOptions {
            extra,
            ..HostOptions::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = Client::new(b_host.url())
        .with_token(&b_host.owner_token)
        .with_path(format!("/v1/peers/{peer_id}/ws"))
        .get_or_create(json!(KEY))
        .await;
    assert_eq!(
        error_code(refused.err().expect("relay to an impostor")),
        "fingerprint_mismatch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_names_the_host_does_not_serve_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path());
    let get = |host_header: &str| {
        let addr = host.addr;
        let host_header = host_header.to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(
                format!("GET /health HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out.lines().next().unwrap_or_default().to_owned()
        }
    };
    assert!(get(&host.addr.to_string()).await.contains("200"));
    assert!(get(&format!("localhost:{}", host.addr.port()))
        .await
        .contains("200"));
    let rebound = get(&format!("rebind.example:{}", host.addr.port())).await;
    assert!(rebound.contains("421"), "{rebound}");
    // The WebSocket endpoint too: a page on rebind.example cannot connect.
    let url = format!("ws://{}/v1/ws", host.addr);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("host", "rebind.example".parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "http://rebind.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_join_prints_the_code_and_stores_the_pairing_or_exits_2_when_denied() {
    use std::io::{BufRead, BufReader};
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_host = alice(da.path());
    let a = open(&a_host, json!(KEY), Some(0)).await;
    let address = shared_at(&a).await;
    let run = |name: &str| {
        std::process::Command::new(BIN)
            .args([
                "join",
                &address,
                "--name",
                name,
                "--timeout",
                "30",
                "--data-dir",
            ])
            .arg(db.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ensemble join")
    };
    // Reads the code the command prints.
    let code_of = |child: &mut std::process::Child| {
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let code = loop {
            let line = lines.next().expect("a line").expect("stdout");
            if let Some(code) = line.strip_prefix("Verification code: ") {
                break code.to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        code
    };
    for (name, approve) in [("Cy", false), ("Dee", true)] {
        let mut child = run(name);
        let code = tokio::task::block_in_place(|| code_of(&mut child));
        let request = loop {
            let list = a.call("listJoinRequests", json!([])).await.unwrap();
            if let Some(r) = list.as_array().unwrap().iter().find(|r| r["name"] == name) {
                break r.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(request["code"], code);
        if approve {
            a.call("approveJoin", json!([request["requestId"]]))
                .await
                .unwrap();
        } else {
            a.call("denyJoin", json!([request["requestId"]]))
                .await
                .unwrap();
        }
        let status = tokio::task::block_in_place(|| child.wait()).unwrap();
        assert_eq!(status.code(), Some(if approve { 0 } else { 2 }), "{name}");
    }
    let peers: Value =
        serde_json::from_str(&std::fs::read_to_string(db.path().join("peers.json")).unwrap())
            .unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 1);
    assert_eq!(peers[0]["fingerprint"], fingerprint_of(da.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_the_lan_get_plain_http_only_when_the_owner_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = sharing_on_lo("Alice");
    extra.push("--lan-insecure-http".into());
    let host = HostProcess::start_with(
        dir.path(),
        HostOptions {
            extra,
            ..HostOptions::default()
        },
    );
    let a = open(&host, json!(KEY), Some(0)).await;
    let (state, _) = wait_lan(&a, "plain HTTP", Duration::from_secs(10), |s| {
        s["insecureHttp"].is_string()
    })
    .await;
    let plain = state["insecureHttp"].as_str().unwrap().to_owned();
    let vm = Client::new(format!("ws://{plain}"))
        .with_token(&host.owner_token)
        .get_or_create(json!(KEY))
        .await
        .expect("a client over the plain LAN listener");
    assert_eq!(vm.you().role, ensemble_protocol::Role::Owner);
    // Without the flag there is no such listener.
    let other = tempfile::tempdir().unwrap();
    let host2 = alice(other.path());
    let b = open(&host2, json!(KEY), Some(0)).await;
    shared_at(&b).await;
    assert!(lan(&b, false).await["insecureHttp"].is_null());
}
