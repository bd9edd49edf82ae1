//! How the client commands (`attach`, `events`, `who`, `invite`) reach a
//! host and prove who they are: `--url` (default the local host), `--key`,
//! and a credential from `--token`, `--join CODE`, a token stored by an
//! earlier `--join`, or the owner token file of the local data directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use ensemble_client::{Client, OpenOptions, VmClient};
use serde_json::Value;

/// Tokens earlier `--join`s were given, by host URL (mode 0600).
const TOKENS_FILE: &str = "client-tokens.json";

#[derive(clap::Args, Clone)]
pub struct Remote {
    /// The host: `ws://HOST:PORT` (default: the host on this machine).
    #[arg(long, env = "ENSEMBLE_URL", default_value = "ws://127.0.0.1:6420")]
    url: String,
    /// The VM, a name or a JSON array of names.
    #[arg(long, short, default_value = "default")]
    key: String,
    /// A paired host's VM, through the local host's relay (see `getLan`).
    #[arg(long, value_name = "PEER_ID")]
    peer: Option<String>,
    /// A token (the owner's, or a member token).
    // Tokens are URL-safe base64: one may begin with `-`.
    #[arg(
        long,
        env = "ENSEMBLE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Option<String>,
    /// A join code from the owner; the token it yields is stored for next time.
    #[arg(long = "join", value_name = "CODE")]
    join_code: Option<String>,
    /// Where the local host keeps its data (its owner-token file) and where
    /// tokens from --join are stored.
    #[arg(long, env = "ENSEMBLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Your name, as others see it.
    #[arg(long, env = "USER")]
    name: Option<String>,
}

impl Remote {
    pub fn key(&self) -> Value {
        serde_json::from_str::<Value>(&self.key)
            .ok()
            .filter(Value::is_array)
            .unwrap_or_else(|| Value::String(self.key.clone()))
    }

    fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir
            .clone()
            .or_else(ensemble_host::store::default_data_dir)
    }

    /// Where a token from `--join` is kept: per host and VM, since a
    /// member token opens only the VM its code was made in.
    fn stored_name(&self) -> String {
        format!("{} {}", self.url, self.key())
    }

    fn stored(&self) -> BTreeMap<String, String> {
        self.data_dir()
            .and_then(|d| std::fs::read(d.join(TOKENS_FILE)).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn store(&self, token: &str) -> anyhow::Result<PathBuf> {
        let dir = self
            .data_dir()
            .context("no data directory; pass --data-dir")?;
        std::fs::create_dir_all(&dir)?;
        let mut tokens = self.stored();
        tokens.insert(self.stored_name(), token.to_owned());
        let path = dir.join(TOKENS_FILE);
        ensemble_lan::write_private(&path, &serde_json::to_vec_pretty(&tokens)?)?;
        Ok(path)
    }

    /// The token to present, if any (a join code is used otherwise).
    fn credential(&self) -> Option<String> {
        if let Some(t) = &self.token {
            return Some(t.clone());
        }
        if self.join_code.is_some() {
            return None;
        }
        if let Some(t) = self.stored().get(&self.stored_name()) {
            return Some(t.clone());
        }
        let file = self.data_dir()?.join("owner-token");
        std::fs::read_to_string(file)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    /// Opens the VM, reconnecting and resuming when the connection drops.
    pub async fn open(&self) -> anyhow::Result<VmClient> {
        Ok(self.open_inner(None, false).await?.0)
    }

    /// Opens the VM and receives every event after `since` (`None`: from
    /// now), resuming across disconnects.
    pub async fn open_with_events(
        &self,
        since: Option<u64>,
    ) -> anyhow::Result<(
        VmClient,
        tokio::sync::mpsc::Receiver<ensemble_client::Event>,
    )> {
        let (vm, rx) = self.open_inner(since, true).await?;
        Ok((vm, rx.context("no event receiver")?))
    }

    async fn open_inner(
        &self,
        since: Option<u64>,
        listen: bool,
    ) -> anyhow::Result<(
        VmClient,
        Option<tokio::sync::mpsc::Receiver<ensemble_client::Event>>,
    )> {
        let mut client = Client::new(self.url.trim_end_matches('/'));
        if let Some(peer) = &self.peer {
            client = client.with_path(format!("/v1/peers/{peer}/ws"));
        }
        match (self.credential(), &self.join_code) {
            (Some(token), _) => client = client.with_token(token),
            (None, Some(code)) => client = client.with_join_code(code.clone()),
            (None, None) => bail!(
                "no credential for {}: pass --token, --join CODE (ask the owner for a join code), \
                 or run on the host's machine (its owner-token file is read from --data-dir)",
                self.url
            ),
        }
        let options = OpenOptions {
            since,
            reconnect: true,
            name: self.name.clone(),
        };
        let opened = if listen {
            client
                .open_with_events(self.key(), options)
                .await
                .map(|(vm, rx)| (vm, Some(rx)))
        } else {
            client.open(self.key(), options).await.map(|vm| (vm, None))
        };
        let (vm, rx) =
            opened.with_context(|| format!("cannot open {} on {}", self.key, self.url))?;
        if self.join_code.is_some() && self.token.is_none() {
            if let Some(token) = vm.token() {
                let path = self.store(token)?;
                eprintln!(
                    "Joined; your token is stored in {} for next time.",
                    path.display()
                );
            }
        }
        Ok((vm, rx))
    }
}
