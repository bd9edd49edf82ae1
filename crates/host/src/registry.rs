//! The registry actor: maps a key to its open VM (`getOrCreate`). One task owns
//! the map and the data directory; connections ask it by message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ensemble_protocol::Key;
use tokio::sync::{mpsc, oneshot};

use crate::hook::Hooks;
use crate::log;
use crate::store::{Store, StoreError};
use crate::vm::Vm;
use crate::HostError;

/// Opens waiting for the registry. Opens are rare (one per connection), so a
/// small queue is plenty; callers wait when it is full.
const REGISTRY_QUEUE: usize = 64;

enum Msg {
    Open {
        key: Key,
        reply: oneshot::Sender<Result<Vm, HostError>>,
    },
    /// Drops every VM and answers once each log writer has exited.
    Close { reply: oneshot::Sender<()> },
}

#[derive(Clone)]
pub struct Registry {
    tx: mpsc::Sender<Msg>,
}

impl Registry {
    pub fn start(store: Store, hooks: Hooks) -> Registry {
        let (tx, rx) = mpsc::channel(REGISTRY_QUEUE);
        tokio::spawn(run(Arc::new(Mutex::new(store)), hooks, rx));
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

    /// Closes every VM: their logs commit what they hold and stop.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(store: Arc<Mutex<Store>>, hooks: Hooks, mut rx: mpsc::Receiver<Msg>) {
    let mut vms: HashMap<Key, Vm> = HashMap::new();
    let mut writers: Vec<oneshot::Receiver<()>> = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Open { key, reply } => {
                if let Some(vm) = vms.get(&key) {
                    let _ = reply.send(Ok(vm.clone()));
                    continue;
                }
                let store = store.clone();
                let opened = tokio::task::spawn_blocking({
                    let key = key.clone();
                    move || open_vm(&store, key)
                })
                .await
                .map_err(|_| HostError::ShuttingDown)
                .and_then(|r| r);
                let result = match opened {
                    Ok((vm, done)) => {
                        writers.push(done);
                        hooks.attach(&vm);
                        vms.insert(key, vm.clone());
                        Ok(vm)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Msg::Close { reply } => {
                vms.clear();
                hooks.detach_all();
                for done in writers.drain(..) {
                    let _ = done.await;
                }
                let _ = reply.send(());
                return;
            }
        }
    }
}

fn open_vm(store: &Mutex<Store>, key: Key) -> Result<(Vm, oneshot::Receiver<()>), HostError> {
    let (id, dir) = {
        let store = store.lock().map_err(|_| HostError::ShuttingDown)?;
        let id = store.vm_for_key(&key)?;
        (id, store.vm_dir(id)?)
    };
    let (log, done) = log::open(&dir.join("log.db"))?;
    tracing::info!(vm = id, %key, head = log.head(), "VM opened");
    Ok((Vm::new(id, key, dir, log), done))
}

impl From<StoreError> for HostError {
    fn from(e: StoreError) -> Self {
        HostError::Store(e)
    }
}
