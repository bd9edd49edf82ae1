//! An agent VM: its key, its directory and its event log. Everything a VM
//! produces goes through [`Vm::log`]; processes, shells and sessions will hang
//! off this type.

use std::path::PathBuf;
use std::sync::Arc;

use ensemble_protocol::{Key, VmInfo};

use crate::log::Log;

/// A handle on one open VM; cheap to clone.
#[derive(Clone)]
pub struct Vm {
    inner: Arc<VmInner>,
}

struct VmInner {
    info: VmInfo,
    dir: PathBuf,
    log: Log,
}

impl Vm {
    pub(crate) fn new(id: u64, key: Key, dir: PathBuf, log: Log) -> Vm {
        Vm {
            inner: Arc::new(VmInner {
                info: VmInfo { id, key },
                dir,
                log,
            }),
        }
    }

    pub fn info(&self) -> &VmInfo {
        &self.inner.info
    }

    pub fn key(&self) -> &Key {
        &self.inner.info.key
    }

    /// The VM's own directory under the data dir.
    pub fn dir(&self) -> &PathBuf {
        &self.inner.dir
    }

    pub fn log(&self) -> &Log {
        &self.inner.log
    }
}
