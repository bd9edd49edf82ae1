//! `ensemble nearby` and `ensemble join`: the LAN from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ensemble_lan::discovery::Discovery;
use ensemble_lan::join::{JoinArgs as LanJoin, JoinError, JoinStep};
use ensemble_lan::peers::Peers;
use ensemble_lan::{Fingerprint, Identity};

#[derive(clap::Args)]
pub struct NearbyArgs {
    /// Print JSON (an array of hosts) instead of a table.
    #[arg(long)]
    json: bool,
    /// How long to listen for announcements.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    timeout: f64,
    /// This install's data directory (its own host is left out of the list).
    #[arg(long, env = "ENSEMBLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    mdns: ensemble::settings::MdnsArgs,
}

#[derive(clap::Args)]
pub struct JoinArgs {
    /// The host: an address (`192.168.1.20` or `192.168.1.20:6421`) or a
    /// join link (`ensemble://ADDR/#fp=FINGERPRINT&code=JOINCODE`).
    host: String,
    /// The certificate fingerprint the host must present (a join link
    /// carries it). Without it, compare the code shown with the owner's.
    #[arg(long, value_name = "HEX")]
    fingerprint: Option<String>,
    /// A join code from the owner: no approval needed.
    #[arg(long, value_name = "CODE")]
    join_code: Option<String>,
    /// Your name, as the owner will see it.
    #[arg(long, env = "USER")]
    name: Option<String>,
    /// The VM to ask for (a string, or JSON array of strings).
    #[arg(long, default_value = "default")]
    key: String,
    /// This install's data directory (its identity, and where the pairing
    /// is stored).
    #[arg(long, env = "ENSEMBLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Give up if the owner has not answered after this long.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    timeout: f64,
}

fn data_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => Ok(d),
        None => ensemble_host::store::default_data_dir()
            .context("no data directory known for this user; pass --data-dir"),
    }
}

pub async fn nearby(args: NearbyArgs) -> anyhow::Result<()> {
    let own = match data_dir(args.data_dir) {
        Ok(dir) if dir.exists() => Identity::load_or_create(&dir).ok().map(|i| i.fingerprint()),
        _ => None,
    };
    let discovery = Discovery::new(&args.mdns.interfaces()).context("cannot start mDNS")?;
    let found = discovery.browse(own).context("cannot browse")?;
    let wait = Duration::try_from_secs_f64(args.timeout).context("--timeout takes seconds")?;
    tokio::time::sleep(wait).await;
    let list = found.list();
    drop(found);
    tokio::task::spawn_blocking(move || discovery.shutdown())
        .await
        .ok();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        eprintln!(
            "No Ensemble host found in {:.1} s. The owner must switch on sharing \
             (ensemble serve --lan); if it is on, mDNS may be blocked (firewall: UDP 5353; \
             Wi-Fi client isolation): join by address instead (ensemble join ADDRESS).",
            args.timeout
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<24} {:<24} FINGERPRINT (announced)",
        "NAME", "HOST", "ADDRESS"
    );
    for h in list {
        let addr = h
            .socket_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let fp: Option<Fingerprint> = h.fingerprint.parse().ok();
        println!(
            "{:<24} {:<24} {:<24} {}",
            h.display_name,
            h.host_name,
            addr,
            fp.map(|f| f.short()).unwrap_or_default()
        );
    }
    Ok(())
}

/// What a join link or address says.
#[derive(Debug, PartialEq)]
struct Target {
    addr: SocketAddr,
    fingerprint: Option<String>,
    join_code: Option<String>,
    /// The VM the link's code was made in (`key=`, a JSON array, URL-encoded).
    key: Option<String>,
}

/// `%XX` escapes decoded (what `encodeURIComponent` and the links `ensemble
/// invite` prints produce); anything malformed is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=` of a join link: the canonical key, percent-encoded.
pub fn link_key(key: &serde_json::Value) -> String {
    let text = serde_json::to_string(key).unwrap_or_default();
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_target(text: &str) -> anyhow::Result<Target> {
    let text = text.trim();
    let (rest, fragment) = match text.strip_prefix("ensemble://") {
        Some(rest) => match rest.split_once('#') {
            Some((a, f)) => (a.trim_end_matches('/'), Some(f)),
            None => (rest.trim_end_matches('/'), None),
        },
        None => (text, None),
    };
    let addr = match rest.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match rest.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, ensemble_host::lan::DEFAULT_LAN_PORT),
            Err(_) => bail!(
                "{rest:?} is not an address; give an IP address with an optional port, \
                 such as 192.168.1.20:{} (see `ensemble nearby`)",
                ensemble_host::lan::DEFAULT_LAN_PORT
            ),
        },
    };
    let mut target = Target {
        addr,
        fingerprint: None,
        join_code: None,
        key: None,
    };
    for pair in fragment.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("fp", v)) => target.fingerprint = Some(v.to_owned()),
            Some(("code", v)) => target.join_code = Some(v.to_owned()),
            Some(("key", v)) => target.key = Some(percent_decode(v)),
            _ => {}
        }
    }
    Ok(target)
}

pub async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let dir = data_dir(args.data_dir)?;
    let identity = Identity::load_or_create(&dir)?;
    let target = parse_target(&args.host)?;
    let fingerprint = args.fingerprint.or(target.fingerprint);
    let pin: Option<Fingerprint> = fingerprint
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--fingerprint")?;
    let peers = Peers::load(&dir)?;
    let known = peers
        .list()
        .iter()
        .find(|p| p.address == target.addr)
        .cloned();
    // A join code opens only the VM it was made in: a link says which.
    let key_text = target.key.clone().unwrap_or_else(|| args.key.clone());
    let key =
        serde_json::from_str(&key_text).unwrap_or(serde_json::Value::String(key_text.clone()));
    let join_code = args.join_code.or(target.join_code);
    let approval = join_code.is_none();
    let request = LanJoin {
        addr: target.addr,
        // A host paired before keeps its certificate: a new one is refused.
        pin: pin.or_else(|| known.as_ref().and_then(|p| p.pin())),
        key,
        name: args.name.unwrap_or_else(|| "Guest".into()),
        join_code,
        host_name: None,
        display_name: None,
    };
    println!("This install: {}", identity.fingerprint().short());
    let progress = move |step: JoinStep| match step {
        JoinStep::Verifying(peer) => {
            println!(
                "Connected to {} (certificate {}).",
                target.addr,
                peer.fingerprint.short()
            );
            if approval {
                println!("Verification code: {}", peer.code);
                println!("Check that the owner's screen shows the same code before they approve.");
            }
        }
        JoinStep::Waiting => println!("Waiting for the owner to answer…"),
    };
    let wait = Duration::try_from_secs_f64(args.timeout).context("--timeout takes seconds")?;
    let result =
        tokio::time::timeout(wait, ensemble_lan::join::join(&identity, request, progress)).await;
    let peer = match result {
        Err(_) => bail!("the owner did not answer within {:.0} s", args.timeout),
        Ok(Err(JoinError::Denied(addr))) => {
            eprintln!("The owner of {addr} turned the request down.");
            std::process::exit(2);
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(peer)) => peer,
    };
    let mut peers = Peers::load(&dir)?;
    peers.upsert(peer.clone())?;
    println!(
        "Joined {} as {} (peer {}); pairing stored in {}.",
        peer.display_name,
        peer.role,
        peer.id,
        dir.join("peers.json").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_targets_read_addresses_and_links() {
        assert_eq!(
            parse_target("10.77.0.1").unwrap().addr,
            "10.77.0.1:6421".parse().unwrap()
        );
        let link = parse_target("ensemble://10.77.0.1:7000/#fp=abc&code=XYZ").unwrap();
        assert_eq!(
            link,
            Target {
                addr: "10.77.0.1:7000".parse().unwrap(),
                fingerprint: Some("abc".into()),
                join_code: Some("XYZ".into()),
                key: None,
            }
        );
        // A link names the VM its code was made in; it reads back.
        let key = serde_json::json!(["team", "a b"]);
        let with_key = parse_target(&format!(
            "ensemble://10.77.0.1/#code=XYZ&key={}",
            link_key(&key)
        ))
        .unwrap();
        assert_eq!(with_key.key.as_deref(), Some(r#"["team","a b"]"#));
        assert!(parse_target("alice.local").is_err());
    }
}
