//! The host inside the desktop app: started on 127.0.0.1 with a free port,
//! the URL that opens its UI as the owner, and a clean stop when the app
//! exits (connections closed, VM processes killed, logs committed).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use ensemble_host::{Host, HostConfig};
use tauri::Url;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a stopping host may take to kill its processes and commit its
/// logs before the app gives up waiting and exits anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct EmbeddedHost {
    addr: SocketAddr,
    owner_token: String,
    stop: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
}

impl EmbeddedHost {
    /// Opens the data directory and starts serving on loopback, for the
    /// window, with `config` (the settings `ensemble serve` would take from
    /// the same file: docs/desktop.md). Sharing on the LAN stays off until
    /// the owner switches it on in the UI, unless the file says `lan = true`.
    pub async fn start(config: HostConfig) -> anyhow::Result<EmbeddedHost> {
        let data_dir = config.data_dir.clone();
        let host = Host::start(config)
            .await
            .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
        let listener = stable_listener(&data_dir).await?;
        let addr = listener.local_addr()?;
        let owner_token = host.owner_token().to_owned();
        let stop = CancellationToken::new();
        let served = tokio::spawn(host.serve(listener, stop.clone().cancelled_owned()));
        tracing::info!(%addr, data_dir = %data_dir.display(), "embedded host started");
        Ok(EmbeddedHost {
            addr,
            owner_token,
            stop,
            served,
        })
    }

    /// The URL the window opens: the host's UI, signed in as the owner.
    pub fn owner_url(&self) -> Url {
        owner_url(self.addr, &self.owner_token)
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

/// Where the port of the last launch is remembered.
const PORT_FILE: &str = "desktop-port";

/// Ports tried after the remembered one: the usual host port, then a few
/// next to it (the LAN port 6421 left out).
const PORTS: [u16; 9] = [6420, 6422, 6423, 6424, 6425, 6426, 6427, 6428, 6429];

/// A listener on 127.0.0.1 at a port that stays the same from one launch to
/// the next (the page's origin, and so its stored state, with it): the
/// remembered port, else 6420 or the next free one, else any.
async fn stable_listener(data_dir: &std::path::Path) -> anyhow::Result<tokio::net::TcpListener> {
    let remembered = std::fs::read_to_string(data_dir.join(PORT_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok());
    for port in remembered.into_iter().chain(PORTS) {
        if let Ok(listener) = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            if remembered != Some(port) {
                let _ = std::fs::write(data_dir.join(PORT_FILE), port.to_string());
            }
            return Ok(listener);
        }
    }
    tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot listen on 127.0.0.1")
}

/// The host's UI at `addr`, signed in with `owner_token`. The token travels
/// in the fragment, which the webview never sends to a server or writes to a
/// request log; the UI takes it from there and then hides it.
pub fn owner_url(addr: SocketAddr, owner_token: &str) -> Url {
    let mut url =
        Url::parse(&format!("http://{addr}/")).expect("a socket address makes a valid URL");
    url.set_fragment(Some(&format!("token={owner_token}")));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_url_names_the_host_and_carries_the_token_in_the_fragment() {
        let addr: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let url = owner_url(addr, "tok en\"<>");
        assert_eq!(url.origin().ascii_serialization(), "http://127.0.0.1:41234");
        assert_eq!(url.path(), "/");
        assert_eq!(url.query(), None);
        assert_eq!(url.fragment(), Some("token=tok%20en%22%3C%3E"));
    }
}
