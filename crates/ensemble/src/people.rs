//! `ensemble who` (participants, roles, presence, who drives) and
//! `ensemble invite` (a join code and its link).

use anyhow::Context;
use serde_json::{json, Value};

use crate::remote::Remote;

#[derive(clap::Args)]
pub struct WhoArgs {
    #[command(flatten)]
    remote: Remote,
    /// Print the answer of `listParticipants` as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn who(args: WhoArgs) -> anyhow::Result<()> {
    let vm = args.remote.open().await?;
    let list = vm.call("listParticipants", json!([])).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let holder = &list["control"];
    let driving = match holder["kind"].as_str() {
        Some("person") => holder["participantId"].as_str().map(str::to_owned),
        _ => None,
    };
    for p in list["participants"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().unwrap_or_default();
        println!(
            "{:<4} {:<24} {:<13} {:<8} {}",
            id,
            p["name"].as_str().unwrap_or_default(),
            p["role"].as_str().unwrap_or_default(),
            if p["connected"] == true {
                "online"
            } else {
                "away"
            },
            if driving.as_deref() == Some(id) {
                "drives"
            } else {
                ""
            }
        );
    }
    println!("{}", control_line(holder, &list["participants"]));
    Ok(())
}

/// "Nobody drives", "Alice drives", "the agent drives (for Alice)".
pub fn control_line(holder: &Value, participants: &Value) -> String {
    let name = |id: &str| {
        participants
            .as_array()
            .and_then(|l| l.iter().find(|p| p["id"] == id))
            .and_then(|p| p["name"].as_str())
            .unwrap_or(id)
            .to_owned()
    };
    match holder["kind"].as_str() {
        Some("person") => format!(
            "{} drives",
            name(holder["participantId"].as_str().unwrap_or("?"))
        ),
        Some("agent") => format!(
            "the agent drives (handed over by {})",
            name(holder["supervisor"].as_str().unwrap_or("?"))
        ),
        _ => "Nobody drives".to_owned(),
    }
}

#[derive(clap::Args)]
pub struct VmsArgs {
    #[command(flatten)]
    remote: Remote,
    /// Print the answer of `listVms` as JSON.
    #[arg(long)]
    json: bool,
}

/// The VMs this credential may open (the owner: all of the host's).
pub async fn vms(args: VmsArgs) -> anyhow::Result<()> {
    let vm = args.remote.open().await?;
    let list = vm.call("listVms", json!([])).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for v in list.as_array().into_iter().flatten() {
        let key: Vec<&str> = v["key"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!("{:<6} {}", v["id"], key.join(" / "));
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct InviteArgs {
    #[command(flatten)]
    remote: Remote,
    /// The role the code gives: collaborator (may drive) or viewer.
    #[arg(long, default_value = "collaborator")]
    role: String,
    /// How long the code works, in hours (at most 168).
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
}

pub async fn invite(args: InviteArgs) -> anyhow::Result<()> {
    let vm = args.remote.open().await?;
    let secs = (args.hours * 3600.0).round();
    anyhow::ensure!(secs >= 1.0, "--hours must be positive");
    let code = vm
        .call(
            "createJoinCode",
            json!([{"role": args.role, "expiresInSecs": secs as u64}]),
        )
        .await?;
    let text = code["code"].as_str().context("no code in the answer")?;
    // A code opens the VM it was made in, and no other.
    let key = serde_json::to_string(&vm.info().key).unwrap_or_default();
    println!(
        "Join code: {text} ({}, {} h, for the VM {key} only)",
        args.role, args.hours
    );
    let lan = vm.call("getLan", json!([])).await.ok();
    match lan.as_ref().filter(|l| l["sharing"] == true) {
        Some(l) => {
            if let Some(addr) = l["addresses"][0].as_str() {
                println!(
                    "Link for the app or `ensemble join`: ensemble://{addr}/#fp={}&code={text}&key={}",
                    l["fingerprint"].as_str().unwrap_or_default(),
                    crate::lan_cli::link_key(&serde_json::to_value(&vm.info().key).unwrap_or_default())
                );
            }
        }
        None => println!(
            "On this machine: ensemble attach --key '{key}' --join {text}   (share on the LAN, `ensemble serve --lan`, for teammates)"
        ),
    }
    Ok(())
}
