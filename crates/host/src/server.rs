//! The HTTP front: the WebSocket endpoint, the relay to paired hosts, a
//! health check and the web UI ([`crate::ui`]). Takes a bound listener and a
//! shutdown future, so tests bind port 0. Every request's Host header must
//! name this host (loopback names, or for LAN connections the LAN names), so
//! a web page whose domain resolves to 127.0.0.1 (DNS rebinding) is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use ensemble_protocol::{HARD_MAX_MESSAGE_BYTES, WS_PATH};

use crate::connection::{self, Shared};
use crate::lan::LanConn;

/// Host names the loopback listener answers to (without port).
pub const LOOPBACK_NAMES: &[&str] = &["127.0.0.1", "localhost", "[::1]"];

/// Bytes the WebSocket layer reads from the socket at a time (its default
/// is 128 KiB a connection). Clients send small messages; a bigger one
/// takes more reads.
const READ_BUFFER: usize = 16 << 10; // 16 KiB

/// Bytes the WebSocket layer buffers before it writes to the socket; a flush
/// writes whatever is there.
const WRITE_BUFFER: usize = 64 << 10; // 64 KiB

/// Hard cap on a connection's unwritten bytes. Sends wait once
/// `WRITE_BUFFER` is full, so in practice a connection holds that plus one
/// message; the cap must exceed the largest message (a `getEvents` page,
/// an `exec` answer), or sending it would fail the connection.
const MAX_WRITE_BUFFER: usize = 32 << 20; // 32 MiB

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(WS_PATH, get(upgrade))
        .route("/v1/peers/{peer}/ws", get(relay))
        .route("/health", get(|| async { "ok\n" }))
        .fallback(get(crate::ui::serve))
        .layer(axum::middleware::from_fn(check_host))
        .with_state(shared)
}

/// Refuses a request whose Host header names something this listener does
/// not serve.
async fn check_host(lan: Option<Extension<LanConn>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_without_port);
    let allowed = match (&host, &lan) {
        (None, _) => false,
        (Some(h), Some(Extension(lan))) => lan.allowed_hosts.iter().any(|a| a == h),
        (Some(h), None) => LOOPBACK_NAMES.contains(&h.as_str()),
    };
    if !allowed {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this host does not serve that name (Host header); use 127.0.0.1 or the address it printed\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// `example.com:80` → `example.com`, `[::1]:6420` → `[::1]`, lowercased.
fn host_without_port(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => host[..=end].to_owned(),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
        _ => host,
    }
}

async fn relay(
    ws: WebSocketUpgrade,
    Path(peer): Path<String>,
    headers: HeaderMap,
    lan: Option<Extension<LanConn>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    if lan.is_some() {
        return (
            StatusCode::FORBIDDEN,
            "the relay serves this machine's own UI only\n",
        )
            .into_response();
    }
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "WebSocket connections from pages of another origin are refused\n",
        )
            .into_response();
    }
    let (access, lan, stop) = (
        shared.access.clone(),
        shared.lan.clone(),
        shared.shutdown.clone(),
    );
    ws.max_message_size(HARD_MAX_MESSAGE_BYTES)
        .max_frame_size(HARD_MAX_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            crate::lan::relay::serve(socket, access, lan, peer, addr.ip(), stop)
        })
}

async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    lan: Option<Extension<LanConn>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "WebSocket connections from pages of another origin are refused\n",
        )
            .into_response();
    }
    // Counted from the upgrade to the connection's end; the loopback is
    // not capped, since every local client (the owner's UI too) shares it.
    let slot = if peer.ip().is_loopback() {
        None
    } else {
        match shared.slots.take(
            connection::SlotKey::Address(peer.ip()),
            connection::MAX_ADDRESS_CONNECTIONS,
        ) {
            Some(slot) => Some(slot),
            None => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address\n",
                )
                    .into_response()
            }
        }
    };
    ws.max_message_size(HARD_MAX_MESSAGE_BYTES)
        .max_frame_size(HARD_MAX_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            let (tls, stop) = match lan {
                Some(Extension(lan)) => (lan.tls, lan.stop),
                None => (None, shared.shutdown.clone()),
            };
            connection::serve(socket, shared, peer.ip(), tls, stop).await
        })
}

/// A browser sends `Origin`; it must name this host, so that a web page a
/// teammate happens to open cannot reach their host. Native clients send no
/// `Origin` and are let through (access control proper is token based).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_hosts_own_pages_may_connect() {
        assert!(same_origin(&headers(None, "127.0.0.1:6420")));
        assert!(same_origin(&headers(
            Some("http://127.0.0.1:6420"),
            "127.0.0.1:6420"
        )));
        assert!(!same_origin(&headers(
            Some("http://evil.example"),
            "127.0.0.1:6420"
        )));
        assert!(!same_origin(&headers(
            Some("http://127.0.0.1:9999"),
            "127.0.0.1:6420"
        )));
        assert!(!same_origin(&headers(Some("null"), "127.0.0.1:6420")));
    }

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_without_port("127.0.0.1:6420"), "127.0.0.1");
        assert_eq!(host_without_port("LocalHost"), "localhost");
        assert_eq!(host_without_port("[::1]:6420"), "[::1]");
        assert_eq!(host_without_port("rebind.example:80"), "rebind.example");
    }
}
