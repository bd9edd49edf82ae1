//! The LAN listeners: TLS (mutual, fingerprints) and, when the owner allows
//! it, plain HTTP for browsers. Each connection is served by the same router
//! as the loopback listener, with a [`LanConn`] in its request extensions
//! that says which certificate it presented and which Host names it may use,
//! and a stop token that ends it when sharing is switched off.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use ensemble_lan::Identity;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::access::TlsPeer;

/// What the LAN listener tells the endpoints about a connection.
#[derive(Clone)]
pub struct LanConn {
    /// The certificate presented (`None` over plain HTTP).
    pub tls: Option<TlsPeer>,
    /// Host names (without port) this listener answers to.
    pub allowed_hosts: Arc<Vec<String>>,
    /// Cancelled when sharing stops: the connection ends.
    pub stop: CancellationToken,
}

/// Connections being set up (TLS handshakes) at once; more wait in the
/// kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    identity: Identity,
    router: Router,
    allowed: Arc<Vec<String>>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "LAN accept failed");
                    continue;
                }
            },
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let (config, identity, router, allowed, stop) = (
            config.clone(),
            identity.clone(),
            router.clone(),
            allowed.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let accepted = ensemble_lan::tls::accept(config, &identity, tcp).await;
            drop(permit);
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "LAN TLS handshake failed");
                    return;
                }
            };
            let conn = LanConn {
                tls: Some(TlsPeer {
                    fingerprint: peer.fingerprint.hex(),
                    code: peer.code,
                }),
                allowed_hosts: allowed,
                stop,
            };
            serve_connection(stream, addr, router, conn).await;
        });
    }
}

pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    allowed: Arc<Vec<String>>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let conn = LanConn {
            tls: None,
            allowed_hosts: allowed.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(serve_connection(tcp, addr, router.clone(), conn));
    }
}

async fn serve_connection<S>(stream: S, addr: SocketAddr, router: Router, conn: LanConn)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stop = conn.stop.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(addr));
        request.extensions_mut().insert(conn.clone());
        router.clone().call(request)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::select! {
        _ = stop.cancelled() => {}
        result = served => {
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "LAN connection ended");
            }
        }
    }
}

/// Names a LAN listener bound at `bound` answers to: loopback names, the
/// machine's host name, and its addresses (all of them for an unspecified
/// bind address).
pub fn allowed_names(bound: SocketAddr, host_name: &str) -> Arc<Vec<String>> {
    let mut names: Vec<String> = crate::server::LOOPBACK_NAMES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    names.push(host_name.to_ascii_lowercase());
    names.push(format!("{}.local", host_name.to_ascii_lowercase()));
    for ip in ips(bound) {
        names.push(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    Arc::new(names)
}

/// Addresses teammates can use (non-loopback ones, IPv4 first). A listener
/// bound to a loopback address (tests, demos) reports that address, so the
/// port it got is still known.
pub fn reachable(bound: SocketAddr) -> Vec<SocketAddr> {
    if bound.ip().is_loopback() {
        return vec![bound];
    }
    let mut out: Vec<SocketAddr> = ips(bound)
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect();
    out.sort_by_key(|a| (a.is_ipv6(), *a));
    out
}

fn ips(bound: SocketAddr) -> Vec<IpAddr> {
    if bound.ip().is_unspecified() {
        ensemble_lan::join::local_addresses()
    } else {
        vec![bound.ip()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_bind_reports_its_own_address() {
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(reachable(bound), vec![bound]);
        let v6: SocketAddr = "[::1]:6421".parse().unwrap();
        assert_eq!(reachable(v6), vec![v6]);
    }
}
