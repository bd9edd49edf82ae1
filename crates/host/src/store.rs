//! The data directory: the registry of VM keys (`ensemble.db`) and where each
//! VM keeps its files (`vms/<id>/`). A key always maps to the same VM id, also
//! across restarts.

use std::path::{Path, PathBuf};

use ensemble_protocol::Key;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a usable Ensemble database ({source}); move it away or pass another --data-dir"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("registry storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the registry holds a key that no longer parses: {0}")]
    BadKey(String),
}

/// Where a host keeps its data unless told otherwise, shared by `ensemble
/// serve` and the desktop app so both open the same VMs:
/// `$XDG_DATA_HOME/ensemble`, usually `~/.local/share/ensemble`. `None` when
/// the user has no known data directory.
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("ensemble"))
}

pub struct Store {
    dir: PathBuf,
    conn: Connection,
}

impl Store {
    /// Opens the data directory, creating it (and the registry) if missing.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir.join("vms")).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("ensemble.db");
        let corrupt = |source| StoreError::Corrupt {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(corrupt)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS vms(
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 key TEXT NOT NULL UNIQUE,
                 created_ms INTEGER NOT NULL);",
        )
        .map_err(corrupt)?;
        Ok(Store {
            dir: dir.to_owned(),
            conn,
        })
    }

    /// The VM id of `key`, if the key is registered.
    pub fn vm_id(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM vms WHERE key = ?1",
                [&key.canonical()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The VM id of `key`, registering the key on first use.
    pub fn vm_for_key(&self, key: &Key) -> Result<u64, StoreError> {
        let canonical = key.canonical();
        if let Some(id) = self.vm_id(key)? {
            return Ok(id);
        }
        self.conn.execute(
            "INSERT INTO vms(key, created_ms) VALUES (?1, ?2)",
            params![canonical, crate::log::now_ms() as i64],
        )?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Every registered VM.
    pub fn all_vms(&self) -> Result<Vec<(u64, Key)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, key FROM vms ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            let key = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| Key::from_value(&v).ok())
                .ok_or_else(|| StoreError::BadKey(text.clone()))?;
            out.push((id, key));
        }
        Ok(out)
    }

    /// The directory of VM `id`, created if missing.
    pub fn vm_dir(&self, id: u64) -> Result<PathBuf, StoreError> {
        let path = self.dir.join("vms").join(id.to_string());
        std::fs::create_dir_all(&path).map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_ids_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = Key::new(vec!["a".into()]).unwrap();
        let b = Key::new(vec!["b".into(), "c".into()]).unwrap();
        let (ia, ib) = {
            let store = Store::open(dir.path()).unwrap();
            (store.vm_for_key(&a).unwrap(), store.vm_for_key(&b).unwrap())
        };
        assert_ne!(ia, ib);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.vm_for_key(&b).unwrap(), ib);
        assert_eq!(store.vm_for_key(&a).unwrap(), ia);
        assert_eq!(store.all_vms().unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_registry_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ensemble.db"), vec![0x42u8; 8192]).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("corrupt file accepted");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("--data-dir"));
    }
}
