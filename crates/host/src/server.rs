//! The HTTP front: the WebSocket endpoint and a health check. Takes a bound
//! listener and a shutdown future, so tests bind port 0.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ensemble_protocol::{HARD_MAX_MESSAGE_BYTES, WS_PATH};

use crate::connection::{self, Shared};

/// Bytes the WebSocket layer buffers before it writes to the socket; a flush
/// writes whatever is there.
const WRITE_BUFFER: usize = 64 << 10; // 64 KiB

/// Bytes a connection may hold unwritten before sends wait: with the kernel's
/// socket buffer this bounds a stalled client's memory.
const MAX_WRITE_BUFFER: usize = 4 << 20; // 4 MiB

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(WS_PATH, get(upgrade))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(shared)
}

async fn upgrade(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ws.max_message_size(HARD_MAX_MESSAGE_BYTES)
        .max_frame_size(HARD_MAX_MESSAGE_BYTES)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| connection::serve(socket, shared))
}
