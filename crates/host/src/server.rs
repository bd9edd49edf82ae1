//! The HTTP front: the WebSocket endpoint, a health check and the web UI
//! ([`crate::ui`]). Takes a bound listener and a shutdown future, so tests
//! bind port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ensemble_protocol::{HARD_MAX_MESSAGE_BYTES, WS_PATH};

use crate::connection::{self, Shared};

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
        .route("/health", get(|| async { "ok\n" }))
        .fallback(get(crate::ui::serve))
        .with_state(shared)
}

async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
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
    ws.max_message_size(HARD_MAX_MESSAGE_BYTES)
        .max_frame_size(HARD_MAX_MESSAGE_BYTES)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| connection::serve(socket, shared, peer.ip()))
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
}
