//! Sharing on the LAN, as the host sees it: the switch that starts and
//! stops the TLS listener and the mDNS announcement, the list of hosts
//! nearby, joins this host makes to others, the peers it paired with, and
//! the relay that carries a peer's VM to the local UI. The parts that know
//! nothing of the host (identity, TLS, discovery, pairing) are in the
//! `ensemble-lan` crate.
//!
//! One task owns all of it; actions and the relay talk to it by message.

mod listener;
pub mod relay;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use ensemble_lan::discovery::{Announced, Announcement, Discovery, Interfaces, Nearby, NearbyHost};
use ensemble_lan::join::{JoinArgs, JoinError, JoinStep};
use ensemble_lan::peers::{Peer, Peers};
use ensemble_lan::{Fingerprint, Identity};
use ensemble_protocol::{ErrorBody, ErrorCode, PROTOCOL_VERSION};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use listener::LanConn;

/// The port a host listens on for the LAN (TLS) by default.
pub const DEFAULT_LAN_PORT: u16 = 6421;

/// How LAN sharing is set up.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// Where the TLS listener binds while sharing is on.
    pub bind: SocketAddr,
    /// Which interfaces mDNS announces and browses on.
    pub interfaces: Interfaces,
    /// Also serve plain HTTP on the LAN (port + 1) for browsers, which
    /// cannot pin a self-signed certificate.
    pub insecure_http: bool,
    /// The name announced (default: the owner's name).
    pub display_name: Option<String>,
    /// Start with sharing on (`ensemble serve --lan`).
    pub share: bool,
}

impl Default for LanConfig {
    fn default() -> LanConfig {
        LanConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], DEFAULT_LAN_PORT)),
            interfaces: Interfaces::Default,
            insecure_http: false,
            display_name: None,
            share: false,
        }
    }
}

/// A peer's entry as clients see it (never its token).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub peer_id: String,
    pub display_name: String,
    pub host_name: String,
    pub address: SocketAddr,
    pub fingerprint: String,
    pub role: String,
    pub paired_ms: u64,
}

impl From<&Peer> for PeerView {
    fn from(p: &Peer) -> PeerView {
        PeerView {
            peer_id: p.id.clone(),
            display_name: p.display_name.clone(),
            host_name: p.host_name.clone(),
            address: p.address,
            fingerprint: p.fingerprint.clone(),
            role: p.role.clone(),
            paired_ms: p.paired_ms,
        }
    }
}

/// An outgoing join, as `getLan` reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinView {
    pub join_id: u64,
    pub address: SocketAddr,
    /// `connecting`, `verifying` (TLS up, compare the code), `waiting` (the
    /// owner has the request), `approved`, `denied` or `failed`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A nearby host, with the pairing this install has with it, if any.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NearbyView {
    #[serde(flatten)]
    pub host: NearbyHost,
    pub peer_id: Option<String>,
}

/// What `getLan` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LanStatus {
    pub sharing: bool,
    /// Where teammates reach this host while sharing (TLS).
    pub addresses: Vec<SocketAddr>,
    /// The plain-HTTP address for browsers, when the owner allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_http: Option<SocketAddr>,
    pub fingerprint: String,
    pub display_name: String,
    pub host_name: String,
    pub browsing: bool,
    pub nearby: Vec<NearbyView>,
    pub peers: Vec<PeerView>,
    pub joins: Vec<JoinView>,
    /// Why sharing could not start or stopped, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a relay needs to reach a peer.
#[derive(Debug, Clone)]
pub struct PeerRoute {
    pub identity: Identity,
    pub address: SocketAddr,
    pub pin: Fingerprint,
    pub token: String,
}

enum Cmd {
    Attach(Router),
    Status {
        browse: bool,
        reply: oneshot::Sender<LanStatus>,
    },
    Share {
        on: bool,
        reply: oneshot::Sender<Result<LanStatus, ErrorBody>>,
    },
    Join {
        args: JoinRequest,
        reply: oneshot::Sender<Result<u64, ErrorBody>>,
    },
    JoinStep(u64, JoinUpdate),
    Forget {
        peer_id: String,
        reply: oneshot::Sender<Result<bool, ErrorBody>>,
    },
    Route {
        peer_id: String,
        reply: oneshot::Sender<Result<PeerRoute, ErrorBody>>,
    },
    Stop(oneshot::Sender<()>),
}

/// `joinPeer`'s arguments.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub address: SocketAddr,
    pub fingerprint: Option<Fingerprint>,
    pub key: Value,
    pub name: Option<String>,
    pub join_code: Option<String>,
    pub host_name: Option<String>,
}

enum JoinUpdate {
    Verifying { code: String, fingerprint: String },
    Waiting,
    Done(Result<Peer, String>, bool),
}

/// A handle on the LAN task; cheap to clone.
#[derive(Clone)]
pub struct Lan {
    tx: mpsc::Sender<Cmd>,
}

fn unavailable() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "the host is shutting down")
}

impl Lan {
    /// Loads (or creates) this install's identity and starts the task.
    pub fn start(
        data_dir: PathBuf,
        config: LanConfig,
        owner_name: String,
        shutdown: CancellationToken,
    ) -> Result<Lan, ensemble_lan::identity::IdentityError> {
        let identity = Identity::load_or_create(&data_dir)?;
        let (tx, rx) = mpsc::channel(64);
        let host_name = host_name();
        let state = State {
            display_name: config.display_name.clone().unwrap_or(owner_name),
            config,
            identity,
            data_dir,
            host_name,
            router: None,
            discovery: None,
            nearby: None,
            sharing: None,
            joins: BTreeMap::new(),
            next_join: 1,
            error: None,
            tx: tx.downgrade(),
            shutdown,
        };
        tokio::spawn(state.run(rx));
        Ok(Lan { tx })
    }

    /// Hands the task the router LAN connections are served with (it serves
    /// the same endpoints as the loopback listener); starts sharing if the
    /// configuration says so.
    pub async fn attach(&self, router: Router) {
        let _ = self.tx.send(Cmd::Attach(router)).await;
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    pub async fn status(&self, browse: bool) -> Result<LanStatus, ErrorBody> {
        self.ask(|reply| Cmd::Status { browse, reply })
            .await
            .ok_or_else(unavailable)
    }

    pub async fn set_sharing(&self, on: bool) -> Result<LanStatus, ErrorBody> {
        self.ask(|reply| Cmd::Share { on, reply })
            .await
            .unwrap_or_else(|| Err(unavailable()))
    }

    /// Starts a join; its progress shows in [`Lan::status`].
    pub async fn join(&self, args: JoinRequest) -> Result<u64, ErrorBody> {
        self.ask(|reply| Cmd::Join { args, reply })
            .await
            .unwrap_or_else(|| Err(unavailable()))
    }

    pub async fn forget(&self, peer_id: String) -> Result<bool, ErrorBody> {
        self.ask(|reply| Cmd::Forget { peer_id, reply })
            .await
            .unwrap_or_else(|| Err(unavailable()))
    }

    /// Stops sharing (the goodbye packets are sent before this returns) and
    /// ends the task; the host calls it as it shuts down.
    pub async fn stop(&self) {
        let _ = self.ask(Cmd::Stop).await;
    }

    /// Where and how to reach a paired peer.
    pub async fn route(&self, peer_id: String) -> Result<PeerRoute, ErrorBody> {
        self.ask(|reply| Cmd::Route { peer_id, reply })
            .await
            .unwrap_or_else(|| Err(unavailable()))
    }
}

struct Sharing {
    stop: CancellationToken,
    addresses: Vec<SocketAddr>,
    insecure_http: Option<SocketAddr>,
    announced: Option<Announced>,
}

struct State {
    config: LanConfig,
    identity: Identity,
    data_dir: PathBuf,
    display_name: String,
    host_name: String,
    router: Option<Router>,
    discovery: Option<Discovery>,
    nearby: Option<Nearby>,
    sharing: Option<Sharing>,
    joins: BTreeMap<u64, JoinView>,
    next_join: u64,
    error: Option<String>,
    tx: mpsc::WeakSender<Cmd>,
    shutdown: CancellationToken,
}

/// Outgoing joins kept for `getLan` (the newest).
const KEEP_JOINS: usize = 16;

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut stopped = None;
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Stop(reply) => {
                    stopped = Some(reply);
                    break;
                }
                Cmd::Attach(router) => {
                    self.router = Some(router);
                    if self.config.share {
                        if let Err(e) = self.share(true).await {
                            tracing::error!(error = %e.message, "cannot share on the LAN");
                        }
                    }
                }
                Cmd::Status { browse, reply } => {
                    if browse {
                        self.browse();
                    }
                    let _ = reply.send(self.status());
                }
                Cmd::Share { on, reply } => {
                    let result = self.share(on).await.map(|()| self.status());
                    let _ = reply.send(result);
                }
                Cmd::Join { args, reply } => {
                    let _ = reply.send(self.start_join(args));
                }
                Cmd::JoinStep(id, update) => self.join_step(id, update),
                Cmd::Forget { peer_id, reply } => {
                    let result = Peers::load(&self.data_dir)
                        .and_then(|mut peers| peers.forget(&peer_id))
                        .map_err(internal);
                    let _ = reply.send(result);
                }
                Cmd::Route { peer_id, reply } => {
                    let _ = reply.send(self.route(&peer_id));
                }
            }
        }
        if let Some(sharing) = self.sharing.take() {
            sharing.stop.cancel();
            if let Some(a) = sharing.announced {
                let _ = tokio::task::spawn_blocking(move || a.withdraw()).await;
            }
        }
        self.nearby = None;
        if let Some(d) = self.discovery.take() {
            let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
        }
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    fn discovery(&mut self) -> Result<&Discovery, ErrorBody> {
        if self.discovery.is_none() {
            let d = Discovery::new(&self.config.interfaces).map_err(|e| {
                ErrorBody::new(ErrorCode::Unavailable, format!("mDNS cannot start: {e}"))
            })?;
            self.discovery = Some(d);
        }
        self.discovery
            .as_ref()
            .ok_or_else(|| ErrorBody::new(ErrorCode::Internal, "mDNS"))
    }

    fn browse(&mut self) {
        if self.nearby.is_some() {
            return;
        }
        let own = self.identity.fingerprint();
        match self.discovery().and_then(|d| {
            d.browse(Some(own))
                .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))
        }) {
            Ok(nearby) => self.nearby = Some(nearby),
            Err(e) => self.error = Some(e.message),
        }
    }

    async fn share(&mut self, on: bool) -> Result<(), ErrorBody> {
        if !on {
            self.stop_sharing();
            return Ok(());
        }
        if self.sharing.is_some() {
            return Ok(());
        }
        let router = self
            .router
            .clone()
            .ok_or_else(|| ErrorBody::new(ErrorCode::Unavailable, "the host is still starting"))?;
        let stop = self.shutdown.child_token();
        let tls = ensemble_lan::tls::server_config(&self.identity).map_err(internal)?;
        let listener = tokio::net::TcpListener::bind(self.config.bind)
            .await
            .map_err(|e| {
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!(
                        "cannot listen on {} for the LAN: {e}; is another host sharing? choose another port with --lan-bind",
                        self.config.bind
                    ),
                )
            })?;
        let bound = listener.local_addr().map_err(internal)?;
        let allowed = listener::allowed_names(bound, &self.host_name);
        let addresses = listener::reachable(bound);
        tokio::spawn(listener::serve_tls(
            listener,
            tls,
            self.identity.clone(),
            router.clone(),
            allowed.clone(),
            stop.clone(),
        ));
        let insecure_http = if self.config.insecure_http {
            let mut plain = bound;
            plain.set_port(bound.port().wrapping_add(1));
            match tokio::net::TcpListener::bind(plain).await {
                Ok(l) => {
                    let at = l.local_addr().unwrap_or(plain);
                    tracing::warn!(%at, "serving plain HTTP on the LAN (--lan-insecure-http): tokens and events cross the network unencrypted");
                    tokio::spawn(listener::serve_plain(l, router, allowed, stop.clone()));
                    Some(at)
                }
                Err(e) => {
                    tracing::error!(%plain, error = %e, "cannot listen for plain HTTP on the LAN");
                    None
                }
            }
        } else {
            None
        };
        let announcement = Announcement {
            display_name: self.display_name.clone(),
            host_name: self.host_name.clone(),
            port: bound.port(),
            fingerprint: self.identity.fingerprint(),
            protocol: PROTOCOL_VERSION,
        };
        let announced = match self.discovery().and_then(|d| {
            d.announce(&announcement)
                .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))
        }) {
            Ok(a) => Some(a),
            Err(e) => {
                // Teammates can still enter the address by hand.
                tracing::warn!(error = %e.message, "sharing without an mDNS announcement");
                self.error = Some(format!("not announced on the network: {}", e.message));
                None
            }
        };
        tracing::info!(addr = %bound, fingerprint = %self.identity.fingerprint().short(), "sharing on the LAN (TLS)");
        self.sharing = Some(Sharing {
            stop,
            addresses,
            insecure_http,
            announced,
        });
        Ok(())
    }

    fn stop_sharing(&mut self) {
        if let Some(sharing) = self.sharing.take() {
            sharing.stop.cancel();
            if let Some(a) = sharing.announced {
                // Goodbye packets; waiting for them must not hold the task.
                tokio::task::spawn_blocking(move || a.withdraw());
            }
            tracing::info!("stopped sharing on the LAN");
        }
    }

    fn status(&self) -> LanStatus {
        let peers = Peers::load(&self.data_dir)
            .map(|p| p.list().to_vec())
            .unwrap_or_default();
        let nearby = self
            .nearby
            .as_ref()
            .map(|n| n.list())
            .unwrap_or_default()
            .into_iter()
            .map(|host| NearbyView {
                peer_id: peers
                    .iter()
                    .find(|p| p.fingerprint == host.fingerprint)
                    .map(|p| p.id.clone()),
                host,
            })
            .collect();
        LanStatus {
            sharing: self.sharing.is_some(),
            addresses: self
                .sharing
                .as_ref()
                .map(|s| s.addresses.clone())
                .unwrap_or_default(),
            insecure_http: self.sharing.as_ref().and_then(|s| s.insecure_http),
            fingerprint: self.identity.fingerprint().hex(),
            display_name: self.display_name.clone(),
            host_name: self.host_name.clone(),
            browsing: self.nearby.is_some(),
            nearby,
            peers: peers.iter().map(PeerView::from).collect(),
            joins: self.joins.values().rev().cloned().collect(),
            error: self.error.clone(),
        }
    }

    fn start_join(&mut self, args: JoinRequest) -> Result<u64, ErrorBody> {
        let id = self.next_join;
        self.next_join += 1;
        self.joins.insert(
            id,
            JoinView {
                join_id: id,
                address: args.address,
                state: "connecting",
                code: None,
                fingerprint: None,
                peer_id: None,
                error: None,
            },
        );
        while self.joins.len() > KEEP_JOINS {
            self.joins.pop_first();
        }
        let Some(tx) = self.tx.upgrade() else {
            return Err(unavailable());
        };
        let identity = self.identity.clone();
        let data_dir = self.data_dir.clone();
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| self.display_name.clone());
        // The names the host announces, when it is in the nearby list.
        let announced = self.nearby.as_ref().and_then(|n| {
            n.list()
                .into_iter()
                .find(|h| h.port == args.address.port() && h.addresses.contains(&args.address.ip()))
        });
        let join_args = JoinArgs {
            addr: args.address,
            pin: args.fingerprint,
            key: args.key,
            name,
            join_code: args.join_code,
            host_name: args
                .host_name
                .or_else(|| announced.as_ref().map(|h| h.host_name.clone())),
            display_name: announced.map(|h| h.display_name),
        };
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let steps = tx.clone();
            let progress = move |step: JoinStep| {
                let update = match step {
                    JoinStep::Verifying(peer) => JoinUpdate::Verifying {
                        code: peer.code,
                        fingerprint: peer.fingerprint.hex(),
                    },
                    JoinStep::Waiting => JoinUpdate::Waiting,
                };
                let _ = steps.try_send(Cmd::JoinStep(id, update));
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = ensemble_lan::join::join(&identity, join_args, progress) => r,
            };
            let denied = matches!(result, Err(JoinError::Denied(_)));
            let result = match result {
                Ok(peer) => Peers::load(&data_dir)
                    .and_then(|mut peers| peers.upsert(peer.clone()))
                    .map(|()| peer)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx
                .send(Cmd::JoinStep(id, JoinUpdate::Done(result, denied)))
                .await;
        });
        Ok(id)
    }

    fn join_step(&mut self, id: u64, update: JoinUpdate) {
        let Some(view) = self.joins.get_mut(&id) else {
            return;
        };
        match update {
            JoinUpdate::Verifying { code, fingerprint } => {
                view.state = "verifying";
                view.code = Some(code);
                view.fingerprint = Some(fingerprint);
            }
            JoinUpdate::Waiting => view.state = "waiting",
            JoinUpdate::Done(Ok(peer), _) => {
                view.state = "approved";
                view.peer_id = Some(peer.id);
            }
            JoinUpdate::Done(Err(e), denied) => {
                view.state = if denied { "denied" } else { "failed" };
                view.error = Some(e);
            }
        }
    }

    fn route(&self, peer_id: &str) -> Result<PeerRoute, ErrorBody> {
        let peers = Peers::load(&self.data_dir).map_err(internal)?;
        let peer = peers.get(peer_id).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotFound,
                format!("no paired host {peer_id:?}; join it first (joinPeer)"),
            )
        })?;
        let pin = peer
            .pin()
            .ok_or_else(|| internal("a stored fingerprint is malformed"))?;
        Ok(PeerRoute {
            identity: self.identity.clone(),
            address: peer.address,
            pin,
            token: peer.token.clone(),
        })
    }
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

/// This machine's name, for the announcement and the Host check.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ensemble".to_owned())
}
