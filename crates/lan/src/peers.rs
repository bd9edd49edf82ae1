//! The hosts this install has paired with: for each, the fingerprint it
//! pinned, where it was last reached and the member token its owner issued.
//! Kept in `<data dir>/peers.json` (mode 0600: it holds tokens). One writer
//! at a time: the host owns it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::Fingerprint;

const FILE: &str = "peers.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// `h` + the first 12 hex digits of the fingerprint: how a local client
    /// names this peer.
    pub id: String,
    /// The pinned certificate fingerprint (64 hex digits).
    pub fingerprint: String,
    pub display_name: String,
    pub host_name: String,
    /// Where it was last reached.
    pub address: SocketAddr,
    /// The member token its owner issued to this install.
    pub token: String,
    /// The role it was given (`collaborator`, `viewer`).
    pub role: String,
    /// Unix ms of the pairing.
    pub paired_ms: u64,
}

impl Peer {
    pub fn id_for(fp: &Fingerprint) -> String {
        format!("h{}", &fp.hex()[..12])
    }

    pub fn pin(&self) -> Option<Fingerprint> {
        self.fingerprint.parse().ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid peer list ({source}); move it away to start over")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The peer list of one data directory.
#[derive(Debug)]
pub struct Peers {
    path: PathBuf,
    peers: Vec<Peer>,
}

impl Peers {
    pub fn load(dir: &Path) -> Result<Peers, PeersError> {
        let path = dir.join(FILE);
        let peers = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| PeersError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(PeersError::Io { path, source }),
        };
        Ok(Peers { path, peers })
    }

    pub fn list(&self) -> &[Peer] {
        &self.peers
    }

    pub fn get(&self, id: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    pub fn by_fingerprint(&self, fp: &Fingerprint) -> Option<&Peer> {
        let hex = fp.hex();
        self.peers.iter().find(|p| p.fingerprint == hex)
    }

    /// Adds or replaces (by fingerprint) a peer, and saves.
    pub fn upsert(&mut self, peer: Peer) -> Result<(), PeersError> {
        self.peers.retain(|p| p.fingerprint != peer.fingerprint);
        self.peers.push(peer);
        self.save()
    }

    /// Forgets a peer; answers whether it was known.
    pub fn forget(&mut self, id: &str) -> Result<bool, PeersError> {
        let before = self.peers.len();
        self.peers.retain(|p| p.id != id);
        if self.peers.len() == before {
            return Ok(false);
        }
        self.save().map(|()| true)
    }

    fn save(&self) -> Result<(), PeersError> {
        let bytes = serde_json::to_vec_pretty(&self.peers).map_err(|source| PeersError::Parse {
            path: self.path.clone(),
            source,
        })?;
        crate::write_private(&self.path, &bytes).map_err(|source| PeersError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_survive_a_reload_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let fp = Fingerprint::of(b"alice");
        let mut peers = Peers::load(dir.path()).unwrap();
        assert!(peers.list().is_empty());
        peers
            .upsert(Peer {
                id: Peer::id_for(&fp),
                fingerprint: fp.hex(),
                display_name: "Alice".into(),
                host_name: "alice-laptop".into(),
                address: "10.77.0.1:6421".parse().unwrap(),
                token: "t".into(),
                role: "collaborator".into(),
                paired_ms: 1,
            })
            .unwrap();
        let again = Peers::load(dir.path()).unwrap();
        assert_eq!(again.by_fingerprint(&fp).unwrap().display_name, "Alice");
        assert_eq!(again.get(&Peer::id_for(&fp)).unwrap().pin(), Some(fp));
        let mut again = again;
        assert!(again.forget(&Peer::id_for(&fp)).unwrap());
        assert!(!again.forget("nope").unwrap());
        assert!(Peers::load(dir.path()).unwrap().list().is_empty());
    }
}
