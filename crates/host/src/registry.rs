//! The registry actor: maps a key to its open VM (`getOrCreate`). One task owns
//! the map and the data directory; connections ask it by message.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ensemble_protocol::Key;
use tokio::sync::{mpsc, oneshot};

use crate::access::Access;
use crate::control::Control;
use crate::hook::Hooks;
use crate::log::{self, Log};
use crate::store::{Store, StoreError};
use crate::vm::{Vm, VmParts};
use crate::workspace::Workspace;
use crate::HostError;
use ensemble_sandbox::{Sandboxes, VmSandbox, VmSpec};

/// Opens waiting for the registry. Opens are rare (one per connection), so a
/// small queue is plenty; callers wait when it is full.
const REGISTRY_QUEUE: usize = 64;

/// How long closing all VMs may take before the host stops regardless.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

enum Msg {
    Open {
        key: Key,
        reply: oneshot::Sender<Result<Vm, HostError>>,
    },
    /// The id of `key`'s VM if the host has one (opened or not).
    Lookup {
        key: Key,
        reply: oneshot::Sender<Result<Option<u64>, HostError>>,
    },
    /// Every VM the host has, by id.
    List {
        reply: oneshot::Sender<Result<Vec<(u64, Key)>, HostError>>,
    },
    /// Drops every VM and answers once each log writer has exited.
    Close { reply: oneshot::Sender<()> },
}

#[derive(Clone)]
pub struct Registry {
    tx: mpsc::Sender<Msg>,
}

impl Registry {
    /// `output_budget`: bytes of shell and process output each VM's log
    /// keeps; `grace`: how long a disconnected holder keeps control.
    pub fn start(
        store: Store,
        hooks: Hooks,
        output_budget: u64,
        durability: log::Durability,
        access: Access,
        grace: Duration,
        sandboxes: Sandboxes,
    ) -> Registry {
        let (tx, rx) = mpsc::channel(REGISTRY_QUEUE);
        let settings = Settings {
            output_budget,
            durability,
            access,
            grace,
            sandboxes,
        };
        tokio::spawn(run(Arc::new(Mutex::new(store)), hooks, settings, rx));
        Registry { tx }
    }

    /// The VM of `key`, opened (and created) if needed.
    pub async fn open(&self, key: Key) -> Result<Vm, HostError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Open { key, reply })
            .await
            .map_err(|_| HostError::ShuttingDown)?;
        rx.await.map_err(|_| HostError::ShuttingDown)?
    }

    /// The id of `key`'s VM, if the host has one; creates nothing.
    pub async fn lookup(&self, key: Key) -> Result<Option<u64>, HostError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Lookup { key, reply })
            .await
            .map_err(|_| HostError::ShuttingDown)?;
        rx.await.map_err(|_| HostError::ShuttingDown)?
    }

    /// Every VM the host has (opened or not), by id.
    pub async fn list(&self) -> Result<Vec<(u64, Key)>, HostError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::List { reply })
            .await
            .map_err(|_| HostError::ShuttingDown)?;
        rx.await.map_err(|_| HostError::ShuttingDown)?
    }

    /// Closes every VM: their logs commit what they hold and stop.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Settings {
    output_budget: u64,
    durability: log::Durability,
    access: Access,
    grace: Duration,
    sandboxes: Sandboxes,
}

async fn run(
    store: Arc<Mutex<Store>>,
    hooks: Hooks,
    settings: Settings,
    mut rx: mpsc::Receiver<Msg>,
) {
    let output_budget = settings.output_budget;
    let durability = settings.durability;
    let mut vms: HashMap<Key, Vm> = HashMap::new();
    // Resolve when each VM's processes are gone, then when its log is committed.
    let mut actors: Vec<oneshot::Receiver<()>> = Vec::new();
    let mut writers: Vec<oneshot::Receiver<()>> = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Open { key, reply } => {
                if let Some(vm) = vms.get(&key) {
                    let _ = reply.send(Ok(vm.clone()));
                    continue;
                }
                let store = store.clone();
                let sandboxes = settings.sandboxes.clone();
                let opened = tokio::task::spawn_blocking({
                    let key = key.clone();
                    move || open_vm(&store, key, output_budget, durability, &sandboxes)
                })
                .await
                .map_err(|_| HostError::ShuttingDown)
                .and_then(|r| r);
                let result = match opened {
                    Ok(opened) => {
                        let first_shell_id = match next_shell_id(&opened.log).await {
                            Ok(id) => id,
                            Err(e) => {
                                let _ = reply.send(Err(e.into()));
                                continue;
                            }
                        };
                        let control = Control::start(
                            opened.log.clone(),
                            settings.access.changes(),
                            settings.grace,
                        );
                        let (vm, actor_done) = Vm::start(VmParts {
                            id: opened.id,
                            key: key.clone(),
                            dir: opened.dir,
                            workspace: opened.workspace,
                            log: opened.log,
                            first_shell_id,
                            control,
                            sandbox: opened.sandbox,
                        });
                        writers.push(opened.writer_done);
                        actors.push(actor_done);
                        hooks.attach(&vm);
                        vms.insert(key, vm.clone());
                        Ok(vm)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Msg::Lookup { key, reply } => {
                if let Some(vm) = vms.get(&key) {
                    let _ = reply.send(Ok(Some(vm.info().id)));
                    continue;
                }
                // Answered off the actor's task: a slow disk delays only
                // this caller's reply, never other opens.
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    let found = store
                        .lock()
                        .map_err(|_| HostError::ShuttingDown)
                        .and_then(|s| s.vm_id(&key).map_err(HostError::from));
                    let _ = reply.send(found);
                });
            }
            Msg::List { reply } => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    let all = store
                        .lock()
                        .map_err(|_| HostError::ShuttingDown)
                        .and_then(|s| s.all_vms().map_err(HostError::from));
                    let _ = reply.send(all);
                });
            }
            Msg::Close { reply } => {
                // Closed actively: a VM whose handle some task still holds
                // would otherwise stay open until that task ends.
                for vm in vms.values() {
                    vm.close();
                }
                vms.clear();
                hooks.detach_all();
                // Bounded: a stuck VM must not keep the host from stopping.
                let all = async {
                    for done in actors.drain(..) {
                        let _ = done.await;
                    }
                    for done in writers.drain(..) {
                        let _ = done.await;
                    }
                };
                if tokio::time::timeout(CLOSE_TIMEOUT, all).await.is_err() {
                    tracing::warn!("VMs did not close in time; stopping anyway");
                }
                let _ = reply.send(());
                return;
            }
        }
    }
}

struct Opened {
    id: u64,
    dir: PathBuf,
    workspace: Workspace,
    log: Log,
    writer_done: oneshot::Receiver<()>,
    sandbox: Arc<VmSandbox>,
}

/// The blocking part of opening a VM: registry row, directories, sandbox,
/// log. Refused when VMs cannot be sandboxed (bubblewrap missing).
fn open_vm(
    store: &Mutex<Store>,
    key: Key,
    output_budget: u64,
    durability: log::Durability,
    sandboxes: &Sandboxes,
) -> Result<Opened, HostError> {
    sandboxes.check()?;
    let (id, dir) = {
        let store = store.lock().map_err(|_| HostError::ShuttingDown)?;
        let id = store.vm_for_key(&key)?;
        (id, store.vm_dir(id)?)
    };
    let mut workspace = Workspace::open(dir.join("workspace")).map_err(|source| {
        HostError::Store(StoreError::CreateDir {
            path: dir.join("workspace"),
            source,
        })
    })?;
    let name = key.parts().join("-");
    let sandbox = sandboxes.open_vm(VmSpec {
        id,
        name: &name,
        dir: &dir,
        workspace: workspace.root(),
    })?;
    workspace.set_view(
        sandbox.workspace_view().to_owned(),
        sandbox.home_view().to_owned(),
    );
    let (log, writer_done) = log::open_with(&dir.join("log.db"), output_budget, durability)?;
    tracing::info!(vm = id, %key, head = log.head(), hostname = sandbox.hostname(), "VM opened");
    Ok(Opened {
        id,
        dir,
        workspace,
        log,
        writer_done,
        sandbox: Arc::new(sandbox),
    })
}

/// Shell ids continue after the highest one in the log, so an id names one
/// shell in the whole history.
async fn next_shell_id(log: &Log) -> Result<u32, log::LogError> {
    let max: u64 = log
        .read(|conn| {
            conn.query_row(
                "SELECT COALESCE(MAX(CAST(json_extract(CAST(body AS TEXT), '$.data.shellId') AS INTEGER)), 0)
                 FROM events WHERE name = 'shellOpened'",
                [],
                |r| r.get(0),
            )
        })
        .await?;
    Ok(u32::try_from(max).unwrap_or(u32::MAX - 1) + 1)
}

impl From<StoreError> for HostError {
    fn from(e: StoreError) -> Self {
        HostError::Store(e)
    }
}
