//! The host inside the desktop app: started on 127.0.0.1 with a free port,
//! the URL that opens its UI as the owner, and a clean stop when the app
//! exits (connections closed, VM processes killed, logs committed).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ensemble_host::{Host, HostConfig};
use tauri::Url;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a stopping host may take to kill its processes and commit its
/// logs before the app gives up waiting and exits anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the host writes the owner's token (mode 0600), for the local UI.
const OWNER_TOKEN_FILE: &str = "owner-token";

pub struct EmbeddedHost {
    addr: SocketAddr,
    data_dir: PathBuf,
    stop: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
}

impl EmbeddedHost {
    /// Opens the data directory and starts serving. Loopback only: the
    /// window is the only client it expects (sharing over the LAN is
    /// `ensemble serve --bind`'s job).
    pub async fn start(data_dir: PathBuf) -> anyhow::Result<EmbeddedHost> {
        let host = Host::start(HostConfig::new(&data_dir))
            .await
            .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let served = tokio::spawn(host.serve(listener, stop.clone().cancelled_owned()));
        tracing::info!(%addr, data_dir = %data_dir.display(), "embedded host started");
        Ok(EmbeddedHost {
            addr,
            data_dir,
            stop,
            served,
        })
    }

    /// The URL the window opens, with the owner's token if the host wrote one.
    pub fn owner_url(&self) -> anyhow::Result<Url> {
        let token = read_owner_token(&self.data_dir)?;
        Ok(owner_url(self.addr, token.as_deref()))
    }

    /// Stops the host and waits until it has shut down.
    pub async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, self.served).await {
            Ok(Ok(Ok(()))) => tracing::info!("embedded host stopped; logs committed"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "embedded host failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "embedded host task panicked"),
            Err(_) => {
                tracing::error!(timeout = ?STOP_TIMEOUT, "embedded host did not stop in time")
            }
        }
    }
}

/// The host's UI, signed in as the owner. The token travels in the fragment,
/// which the webview never sends to a server or writes to a request log; the
/// UI reads it from there.
pub fn owner_url(addr: SocketAddr, owner_token: Option<&str>) -> Url {
    let mut url =
        Url::parse(&format!("http://{addr}/")).expect("a socket address makes a valid URL");
    if let Some(token) = owner_token {
        url.set_fragment(Some(&format!("token={token}")));
    }
    url
}

/// The owner token in `data_dir`, or `None` when the host has not written
/// one (hosts before access control) or it is empty.
fn read_owner_token(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(OWNER_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            Ok((!token.is_empty()).then(|| token.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_url_names_the_host_and_carries_the_token_in_the_fragment() {
        let addr: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(owner_url(addr, None).as_str(), "http://127.0.0.1:41234/");
        let url = owner_url(addr, Some("tok en\"<>"));
        assert_eq!(url.path(), "/");
        assert_eq!(url.query(), None);
        assert_eq!(url.fragment(), Some("token=tok%20en%22%3C%3E"));
    }

    #[test]
    fn the_owner_token_is_read_trimmed_and_a_missing_or_empty_file_means_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_owner_token(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(OWNER_TOKEN_FILE), "\n").unwrap();
        assert_eq!(read_owner_token(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(OWNER_TOKEN_FILE), "abc123\n").unwrap();
        assert_eq!(
            read_owner_token(dir.path()).unwrap().as_deref(),
            Some("abc123")
        );
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::create_dir(dir.path().join("sub").join(OWNER_TOKEN_FILE)).unwrap();
        assert!(read_owner_token(&dir.path().join("sub")).is_err());
    }
}
