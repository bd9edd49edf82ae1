//! The relay: a local client (this machine's UI) opens a paired peer's VM
//! through its own host, at `/v1/peers/{peerId}/ws`. The first message is
//! the client's usual `hello`, with the owner's credential for *this* host;
//! the relay checks it, connects to the peer over pinned TLS, sends the same
//! `hello` with the member token the peer issued to this install, and from
//! then on passes frames through as they are, in both directions: events
//! are encoded once, upstream. When either side goes, the other is closed;
//! a client resumes as it would with any host (`subscribe {since}`), so
//! nothing is lost or repeated across a dropped link.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use ensemble_lan::join::JoinError;
use ensemble_lan::tls::TlsError;
use ensemble_protocol::{ClientMessage, ErrorBody, ErrorCode, Role, ServerMessage};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Up;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, Admission, Credential};
use crate::lan::Lan;

/// How long the client has to send its `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames passed on before a flush when more are ready.
const BATCH: usize = 256;

/// Serves one relayed connection until either side closes it.
pub async fn serve(
    mut socket: WebSocket,
    access: Access,
    lan: Lan,
    peer_id: String,
    ip: IpAddr,
    stop: CancellationToken,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        _ => return,
    };
    let (protocol, key, name, credential) =
        match serde_json::from_str::<ClientMessage>(hello.as_str()) {
            Ok(ClientMessage::Hello {
                protocol,
                key,
                name,
                token,
                login_code,
                ..
            }) => {
                let credential = match (token, login_code) {
                    (Some(t), _) => Credential::Token(t),
                    (None, Some(c)) => Credential::LoginCode(c),
                    (None, None) => Credential::None,
                };
                (protocol, key, name, credential)
            }
            _ => {
                refuse(
                    &mut socket,
                    ErrorBody::new(
                        ErrorCode::NotOpen,
                        "the first message through a relay must be hello",
                    ),
                )
                .await;
                return;
            }
        };
    match access.admit(credential, name.clone(), ip, None, None).await {
        Ok(Admission::Admitted(a)) if a.member.role == Role::Owner => {}
        Ok(_) => {
            let body = ErrorBody::new(
                ErrorCode::Forbidden,
                "only this host's owner can open a paired host's VMs through it",
            );
            refuse(&mut socket, body).await;
            return;
        }
        Err(e) => {
            refuse(&mut socket, e).await;
            return;
        }
    }
    let route = match lan.route(peer_id.clone()).await {
        Ok(r) => r,
        Err(e) => {
            refuse(&mut socket, e).await;
            return;
        }
    };
    let upstream = ensemble_lan::join::connect(&route.identity, route.address, Some(route.pin));
    let upstream = tokio::select! {
        _ = stop.cancelled() => return,
        u = upstream => u,
    };
    let mut upstream = match upstream {
        Ok((ws, _)) => ws,
        Err(e) => {
            let code = match &e {
                JoinError::Tls(TlsError::FingerprintMismatch { .. }) => {
                    ErrorCode::FingerprintMismatch
                }
                _ => ErrorCode::PeerUnavailable,
            };
            tracing::warn!(peer = %peer_id, error = %e, "relay cannot reach the peer");
            refuse(&mut socket, ErrorBody::new(code, e.to_string())).await;
            return;
        }
    };
    let hello = ClientMessage::Hello {
        protocol,
        key,
        name,
        token: Some(route.token),
        join_code: None,
        login_code: None,
        request_join: false,
    };
    let Ok(text) = serde_json::to_string(&hello) else {
        return;
    };
    if upstream.send(Up::text(text)).await.is_err() {
        refuse(
            &mut socket,
            ErrorBody::new(
                ErrorCode::PeerUnavailable,
                "the peer host closed the connection",
            ),
        )
        .await;
        return;
    }
    splice(socket, upstream, stop).await;
}

async fn splice(
    socket: WebSocket,
    upstream: ensemble_lan::join::PeerSocket,
    stop: CancellationToken,
) {
    let (mut down_tx, mut down_rx) = socket.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    let closing = loop {
        tokio::select! {
            _ = stop.cancelled() => break Some((1001, "the host is stopping")),
            m = down_rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if up_tx.send(Up::text(t.as_str())).await.is_err() {
                        break Some((1011, "the peer host went away; reconnect to resume"));
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if up_tx.send(Up::binary(b)).await.is_err() {
                        break Some((1011, "the peer host went away; reconnect to resume"));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    let _ = up_tx.close().await;
                    break None;
                }
            },
            m = up_rx.next() => {
                let mut next = m;
                let mut sent = 0;
                let mut failed = false;
                // Pass on what is ready, then flush once.
                loop {
                    match next {
                        // The peer closed: pass its close on, and stop.
                        Some(Ok(Up::Close(frame))) => {
                            let close = downstream(Up::Close(frame));
                            if let Some(close) = close {
                                let _ = down_tx.send(close).await;
                            }
                            return;
                        }
                        Some(Ok(frame)) => {
                            if let Some(out) = downstream(frame) {
                                if down_tx.feed(out).await.is_err() {
                                    failed = true;
                                    break;
                                }
                            }
                        }
                        Some(Err(_)) | None => {
                            failed = true;
                            break;
                        }
                    }
                    sent += 1;
                    if sent >= BATCH {
                        break;
                    }
                    match up_rx.next().now_or_never() {
                        Some(m) => next = m,
                        None => break,
                    }
                }
                if down_tx.flush().await.is_err() {
                    break None;
                }
                if failed {
                    break Some((1011, "the peer host went away; reconnect to resume"));
                }
            }
        }
    };
    if let Some((code, reason)) = closing {
        let _ = down_tx
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
    }
}

/// An upstream frame as the local client gets it.
fn downstream(frame: Up) -> Option<Message> {
    match frame {
        Up::Text(t) => Some(Message::Text(Utf8Bytes::from(t.as_str()))),
        Up::Binary(b) => Some(Message::Binary(b)),
        Up::Close(frame) => Some(Message::Close(frame.map(|f| CloseFrame {
            code: f.code.into(),
            reason: Utf8Bytes::from(f.reason.as_str()),
        }))),
        _ => None,
    }
}

/// Tells the client why, then closes.
async fn refuse(socket: &mut WebSocket, error: ErrorBody) {
    let msg = ServerMessage::Error { id: None, error };
    if let Ok(text) = serde_json::to_string(&msg) {
        let _ = socket.send(Message::Text(text.into())).await;
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: Utf8Bytes::from_static("refused by the relay"),
        })))
        .await;
}
