//! The owner's LAN actions: sharing on or off, the nearby list and the
//! state of joins and pairings (`getLan`), joining a peer host, forgetting
//! one. They act on the host, not on the VM the connection opened.

use std::net::SocketAddr;

use ensemble_protocol::{Args, ErrorBody};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{invalid, to_json, ActionContext};
use crate::lan::JoinRequest;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatusOptions {
    #[serde(default)]
    browse: bool,
}

pub async fn get(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("getLan", 1).map_err(invalid)?;
    let opts: StatusOptions = args
        .optional(0, "options")
        .map_err(invalid)?
        .unwrap_or_default();
    to_json(&ctx.lan.status(opts.browse).await?)
}

pub async fn set_sharing(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("setLanSharing", 1).map_err(invalid)?;
    let on: bool = args.required(0, "on").map_err(invalid)?;
    to_json(&ctx.lan.set_sharing(on).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JoinOptions {
    address: String,
    fingerprint: Option<String>,
    key: Option<Value>,
    name: Option<String>,
    join_code: Option<String>,
    host_name: Option<String>,
}

pub async fn join(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("joinPeer", 1).map_err(invalid)?;
    let opts: JoinOptions = args.required(0, "options").map_err(invalid)?;
    let address = parse_address(&opts.address)?;
    let fingerprint = opts
        .fingerprint
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| invalid(format!("fingerprint: {e}")))?;
    let key = opts.key.unwrap_or_else(|| json!("default"));
    ensemble_protocol::Key::from_value(&key).map_err(|e| invalid(format!("key: {e}")))?;
    let join_id = ctx
        .lan
        .join(JoinRequest {
            address,
            fingerprint,
            key,
            name: opts.name.or_else(|| Some(ctx.me.name.clone())),
            join_code: opts.join_code,
            host_name: opts.host_name,
        })
        .await?;
    to_json(&json!({ "joinId": join_id }))
}

/// `10.0.0.5`, `10.0.0.5:6421`, `[fe80::1]:6421`: the port defaults to the
/// LAN port.
fn parse_address(text: &str) -> Result<SocketAddr, ErrorBody> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, crate::lan::DEFAULT_LAN_PORT));
    }
    Err(invalid(format!(
        "{text:?} is not an address; give an IP address with an optional port, such as 192.168.1.20:{}",
        crate::lan::DEFAULT_LAN_PORT
    )))
}

pub async fn forget(ctx: &ActionContext<'_>, args: Args) -> Result<String, ErrorBody> {
    args.at_most("forgetPeer", 1).map_err(invalid)?;
    let peer_id: String = args.required(0, "peerId").map_err(invalid)?;
    let forgotten = ctx.lan.forget(peer_id).await?;
    to_json(&json!({ "forgotten": forgotten }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_the_lan_port_by_default() {
        assert_eq!(
            parse_address("10.0.0.5").unwrap(),
            "10.0.0.5:6421".parse().unwrap()
        );
        assert_eq!(
            parse_address(" 10.0.0.5:7000 ").unwrap(),
            "10.0.0.5:7000".parse().unwrap()
        );
        assert_eq!(
            parse_address("[::1]").unwrap(),
            "[::1]:6421".parse().unwrap()
        );
        assert!(parse_address("alice.local").is_err());
    }
}
