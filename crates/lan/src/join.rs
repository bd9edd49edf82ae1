//! Joining a peer host: the pinned TLS connection, a WebSocket over it, and
//! the `hello` that asks the owner to let this install in (or presents a
//! join code). The result is a [`Peer`] to remember: the fingerprint seen,
//! and the member token the owner issued, bound on their side to this
//! install's certificate.

use std::net::SocketAddr;

use ensemble_protocol::{
    ClientMessage, ErrorCode, Role, ServerMessage, HARD_MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
    WS_PATH,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::identity::{Fingerprint, Identity};
use crate::peers::Peer;
use crate::tls::{self, ClientStream, PeerTls, TlsError};

pub type PeerSocket = WebSocketStream<ClientStream>;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("WebSocket to {addr}: {message}")]
    WebSocket { addr: SocketAddr, message: String },
    #[error("the owner of {0} turned the request down")]
    Denied(SocketAddr),
    #[error("{addr} refused: {message}")]
    Refused {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("{0} closed the connection before answering")]
    Closed(SocketAddr),
}

/// Opens a WebSocket to a peer's `/v1/ws` over pinned TLS. Frames are
/// passed through as they are, so the limits are the protocol's hard ones.
pub async fn connect(
    identity: &Identity,
    addr: SocketAddr,
    pin: Option<Fingerprint>,
) -> Result<(PeerSocket, PeerTls), JoinError> {
    let (stream, peer) = tls::connect(identity, addr, pin).await?;
    let url = format!("wss://{addr}{WS_PATH}");
    let config = WebSocketConfig::default()
        .max_message_size(Some(HARD_MAX_MESSAGE_BYTES))
        .max_frame_size(Some(HARD_MAX_MESSAGE_BYTES));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| JoinError::WebSocket {
            addr,
            message: e.to_string(),
        })?;
    Ok((ws, peer))
}

/// What to ask for.
#[derive(Debug, Clone)]
pub struct JoinArgs {
    pub addr: SocketAddr,
    /// The fingerprint expected: from a join link (trusted) or an mDNS
    /// announcement (a hint that makes a wrong host fail early).
    pub pin: Option<Fingerprint>,
    /// The VM to open first (the owner sees the request there).
    pub key: Value,
    /// This person's display name.
    pub name: String,
    pub join_code: Option<String>,
    /// What the peer calls itself (from mDNS), kept with the pairing.
    pub host_name: Option<String>,
    /// The name the peer announces (from mDNS); without it, the name of
    /// its owner as a participant.
    pub display_name: Option<String>,
}

/// Steps a join goes through, for progress display.
#[derive(Debug, Clone)]
pub enum JoinStep {
    /// TLS is up: both screens now show this code.
    Verifying(PeerTls),
    /// The owner has the request.
    Waiting,
}

/// Runs a join to its end: `Ok` once the owner approved (or the join code
/// was taken), with the peer to store.
pub async fn join(
    identity: &Identity,
    args: JoinArgs,
    mut progress: impl FnMut(JoinStep),
) -> Result<Peer, JoinError> {
    let addr = args.addr;
    let (mut ws, peer_tls) = connect(identity, addr, args.pin).await?;
    progress(JoinStep::Verifying(peer_tls.clone()));
    let hello = ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        key: args.key.clone(),
        name: Some(args.name.clone()),
        token: None,
        join_code: args.join_code.clone(),
        login_code: None,
        request_join: args.join_code.is_none(),
    };
    let text = serde_json::to_string(&hello).map_err(|e| JoinError::WebSocket {
        addr,
        message: e.to_string(),
    })?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| JoinError::WebSocket {
            addr,
            message: e.to_string(),
        })?;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| JoinError::WebSocket {
            addr,
            message: e.to_string(),
        })?;
        let Message::Text(text) = msg else { continue };
        let Ok(message) = serde_json::from_str::<ServerMessage>(text.as_str()) else {
            continue;
        };
        match message {
            ServerMessage::JoinPending { .. } => progress(JoinStep::Waiting),
            ServerMessage::Welcome {
                token,
                you,
                participants,
                ..
            } => {
                let _ = ws.close(None).await;
                let token = token.ok_or_else(|| JoinError::Refused {
                    addr,
                    code: ErrorCode::Internal,
                    message: "the host let this install in without issuing a token".into(),
                })?;
                let owner = args.display_name.clone().unwrap_or_else(|| {
                    participants
                        .iter()
                        .find(|p| p.role == Role::Owner)
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| "Ensemble".to_owned())
                });
                return Ok(Peer {
                    id: Peer::id_for(&peer_tls.fingerprint),
                    fingerprint: peer_tls.fingerprint.hex(),
                    display_name: owner,
                    host_name: args
                        .host_name
                        .clone()
                        .unwrap_or_else(|| addr.ip().to_string()),
                    address: addr,
                    token,
                    role: you.role.as_str().to_owned(),
                    paired_ms: now_ms(),
                });
            }
            ServerMessage::Error { error, .. } if error.code == ErrorCode::JoinDenied => {
                return Err(JoinError::Denied(addr));
            }
            ServerMessage::Error { error, .. } => {
                return Err(JoinError::Refused {
                    addr,
                    code: error.code,
                    message: error.message,
                });
            }
            _ => {}
        }
    }
    Err(JoinError::Closed(addr))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The addresses of this machine's interfaces that are up, loopback
/// included: the names a LAN listener answers to (its Host header check).
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}
