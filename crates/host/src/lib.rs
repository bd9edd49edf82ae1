//! The Ensemble host, headless.
//!
//! Layout (data flows down):
//! * [`server`]: HTTP and the WebSocket endpoint; [`ui`]: the web UI it serves.
//! * [`lan`]: sharing on the LAN (TLS listener, mDNS), joins to other
//!   hosts and the relay to their VMs.
//! * [`connection`]: one client: parses frames, runs actions, streams the log.
//! * [`access`]: who may connect (owner, members, join codes and requests).
//! * [`actions`]: each action's arguments and effect.
//! * [`registry`]: key → open VM (`getOrCreate`), one actor.
//! * [`vm`]: an agent VM and the actor that owns its processes and shells.
//! * [`control`]: a VM's participants and its control lock.
//! * [`process`], [`shell`]: processes on pipes and shells on PTYs, their
//!   output chunked by [`output`] into the log; [`workspace`]: where they run
//!   and their clean environment; all of them started in the VM's sandbox
//!   (the `ensemble-sandbox` crate), whose limits [`limits`] watches.
//! * [`terminal`]: a shell's screen model, for late joiners' snapshots.
//! * [`log`]: the per-VM sequenced, durable event log and its fan-out.
//! * [`hook`]: server-side hooks that see each event once.
//! * [`store`]: the data directory and the key registry.
#![forbid(unsafe_code)]

/// Log filter directives the host's binaries add to any `RUST_LOG`: the
/// WebSocket library logs every message at `trace` (and frames at `debug`),
/// and messages carry API keys (`saveAgentKey`, a session's `env`), which
/// are never logged.
pub const QUIET_LOG_TARGETS: &[&str] = &["tungstenite=info", "tokio_tungstenite=info"];

pub mod access;
pub mod actions;
pub mod agents;
pub mod connection;
pub mod control;
pub mod hook;
pub mod keys;
pub mod lan;
pub mod limits;
pub mod log;
pub mod output;
pub mod process;
pub mod registry;
pub mod server;
pub mod session;
pub mod shell;
pub mod store;
pub mod terminal;
pub mod ui;
pub mod vm;
pub mod workspace;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ensemble_protocol::{ErrorBody, ErrorCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use ensemble_sandbox as sandbox;
pub use hook::{Hook, HookEvent, SessionHookEvent};

use crate::access::Access;
use crate::connection::Shared;
use crate::hook::Hooks;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// The runtime a host runs on: one worker thread fewer than the machine has
/// cores, at least one (`TOKIO_WORKER_THREADS` overrides). The rest of a
/// host's work runs on threads of its own (each VM's log writer, each
/// shell's PTY reader and writer and its terminal model, log reads) or in
/// the kernel (a PTY's line discipline, the programs in the VMs); a worker
/// on every core made a keystroke's echo wait on wake-ups between workers
/// and with those threads (docs/benchmarks.md, "Echo and the runtime").
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
}

/// Default output kept per VM.
pub const DEFAULT_OUTPUT_BUDGET: u64 = 256 << 20; // 256 MiB

/// How a host is set up.
pub struct HostConfig {
    pub data_dir: PathBuf,
    /// Enables the test action `emit`.
    pub test_actions: bool,
    /// A command fed every event as JSON Lines.
    pub hook_command: Option<String>,
    /// The hook command acknowledges lines (`ack VMID SEQ` on its stdout);
    /// its position advances only with them.
    pub hook_ack: bool,
    /// Rust hooks (embedders).
    pub hooks: Vec<Hook>,
    /// A client that accepts no bytes for this long is disconnected.
    pub stall_timeout: Duration,
    /// Bytes of shell and process output each VM's log keeps; older output
    /// is pruned (late joiners still get the screen from the snapshot).
    pub output_budget: u64,
    /// A TOML file adding or overriding agent types.
    pub agents_file: Option<PathBuf>,
    /// How long a new agent has to answer `initialize` and `session/new`.
    pub agent_init_timeout: Duration,
    /// How long a holder who disconnects keeps control.
    pub control_grace: Duration,
    /// How VMs are sandboxed (bubblewrap by default) and their limits.
    pub sandbox: ensemble_sandbox::Config,
    /// Sharing on the LAN.
    pub lan: lan::LanConfig,
    /// How hard each commit of a VM's log is made durable.
    pub durability: log::Durability,
}

impl HostConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> HostConfig {
        HostConfig {
            data_dir: data_dir.into(),
            test_actions: false,
            hook_command: None,
            hook_ack: false,
            hooks: Vec::new(),
            stall_timeout: Duration::from_secs(30),
            output_budget: DEFAULT_OUTPUT_BUDGET,
            agents_file: None,
            agent_init_timeout: session::DEFAULT_INIT_TIMEOUT,
            control_grace: control::DEFAULT_GRACE,
            sandbox: ensemble_sandbox::Config::default(),
            lan: lan::LanConfig::default(),
            durability: log::Durability::Normal,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error("the host is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Agents(#[from] agents::AgentRegistryError),
    #[error(transparent)]
    Access(#[from] access::AccessError),
    #[error(transparent)]
    Sandbox(#[from] ensemble_sandbox::SandboxError),
    #[error(transparent)]
    Identity(#[from] ensemble_lan::identity::IdentityError),
}

impl HostError {
    /// The typed error a client receives.
    pub fn to_body(&self) -> ErrorBody {
        match self {
            HostError::ShuttingDown => ErrorBody::new(ErrorCode::Unavailable, self.to_string()),
            HostError::Sandbox(
                ensemble_sandbox::SandboxError::BwrapMissing
                | ensemble_sandbox::SandboxError::SetprivMissing,
            ) => ErrorBody::new(ErrorCode::SandboxUnavailable, self.to_string()),
            _ => ErrorBody::new(ErrorCode::Internal, self.to_string()),
        }
    }
}

/// Resolves on SIGINT or SIGTERM: how a host run as a program is asked to
/// stop (`ensemble serve`, the desktop app).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A started host: its data directory is open and hooks are running.
pub struct Host {
    shared: Arc<Shared>,
}

impl Host {
    /// Opens the data directory (creating it if missing). With hooks, every
    /// known VM is opened at once so that hooks catch up without waiting for
    /// a client.
    pub async fn start(config: HostConfig) -> Result<Host, HostError> {
        let shutdown = CancellationToken::new();
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await
            .map_err(|_| HostError::ShuttingDown)??;
        let known = store.all_vms()?;
        let access_dir = config.data_dir.clone();
        let access = tokio::task::spawn_blocking(move || Access::open(&access_dir))
            .await
            .map_err(|_| HostError::ShuttingDown)??;
        let agents = agents::AgentRegistry::load(config.agents_file.as_deref())?;
        // Detecting may kill what a previous run left in its cgroups: blocking.
        let sandbox_dir = config.data_dir.clone();
        let sandbox_config = config.sandbox.clone();
        let sandboxes = tokio::task::spawn_blocking(move || {
            ensemble_sandbox::Sandboxes::start(sandbox_config, &sandbox_dir)
        })
        .await
        .map_err(|_| HostError::ShuttingDown)?;
        let isolation = sandboxes.isolation().as_str();
        // Without a usable sandbox no VM opens (each `hello` gets the
        // reason); the host itself still starts.
        let can_open = sandboxes.check().is_ok();
        let mut hooks = config.hooks;
        if let Some(command) = config.hook_command {
            hooks.push(Hook::command_with(
                command,
                config.hook_ack,
                shutdown.child_token(),
            ));
        }
        let hooks = Hooks::new(hooks, shutdown.child_token());
        let lan = lan::Lan::start(
            config.data_dir.clone(),
            config.lan,
            access.owner_name().to_owned(),
            shutdown.child_token(),
        )?;
        let wake_all = !hooks.is_empty() && can_open;
        let registry = Registry::start(
            store,
            hooks,
            config.output_budget,
            config.durability,
            access.clone(),
            config.control_grace,
            sandboxes,
        );
        if wake_all {
            for (_, key) in known {
                registry.open(key).await?;
            }
        }
        Ok(Host {
            shared: Arc::new(Shared {
                slots: Arc::default(),
                registry,
                access,
                agents,
                agent_init_timeout: config.agent_init_timeout,
                next_conn_id: std::sync::atomic::AtomicU64::new(1),
                test_actions: config.test_actions,
                stall_timeout: config.stall_timeout,
                shutdown,
                server: format!("ensemble/{}", env!("CARGO_PKG_VERSION")),
                isolation,
                lan,
            }),
        })
    }

    /// The owner's token (also in `<data dir>/owner-token`), for a UI the
    /// owner starts locally, such as the desktop app.
    pub fn owner_token(&self) -> &str {
        self.shared.access.owner_token()
    }

    /// The LAN side of this host: sharing, nearby hosts, peers.
    pub fn lan(&self) -> &lan::Lan {
        &self.shared.lan
    }

    /// A code that logs a browser in as the owner once (`/#login=CODE`).
    pub fn login_code(&self) -> &str {
        self.shared.access.login_code()
    }

    /// Serves clients on `listener` until `shutdown` resolves, then closes
    /// every connection and VM; returns once the logs are committed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let token = self.shared.shutdown.clone();
        let app = server::router(self.shared.clone());
        self.shared.lan.attach(app.clone()).await;
        let stop = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        // Events are small and latency matters more than packet count: the
        // writer already batches frames between flushes.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(token.clone().cancelled_owned())
            .await;
        token.cancel();
        self.shared.lan.stop().await;
        self.shared.registry.close().await;
        served
    }
}
