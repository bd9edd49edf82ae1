//! Per-session journals, kept only when the agent is started with
//! `--journal-dir DIR`: each session's transcript is appended to
//! `DIR/<sessionId>.jsonl` as it happens, so that `session/load` can replay
//! it and restore the session after the agent restarts.
//!
//! One JSON object per line, tagged by `record`:
//! `{"record":"prompt","text":...}` (a prompt's script),
//! `{"record":"update","update":<SessionUpdate>}` (a `session/update` sent),
//! `{"record":"mode","modeId":...}` (a `session/set_mode`). Each record is
//! written with one unbuffered append, so an agent that is killed keeps what
//! it had sent.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use agent_client_protocol::v1::schema::{SessionId, SessionModeId, SessionUpdate};
use agent_client_protocol::Error;
use serde::{Deserialize, Serialize};

/// Prefix of every session id; what follows it is a decimal number.
pub(crate) const SESSION_PREFIX: &str = "scripted-";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "camelCase")]
pub(crate) enum Record {
    Prompt {
        text: String,
    },
    Update {
        update: Box<SessionUpdate>,
    },
    #[serde(rename_all = "camelCase")]
    Mode {
        mode_id: SessionModeId,
    },
}

/// The directory of journals.
pub(crate) struct Journals {
    dir: PathBuf,
}

/// One session's journal, open for appending.
pub(crate) struct Journal {
    file: Mutex<File>,
}

impl Journals {
    /// Creates `dir` if needed.
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// A new session: the first `scripted-<n>` from `from` on that has no
    /// journal yet (sessions of earlier runs keep theirs), and its empty
    /// journal. Returns the number taken.
    pub(crate) fn create(&self, from: u64) -> io::Result<(u64, Journal)> {
        let mut number = from;
        loop {
            let path = self.path(&format!("{SESSION_PREFIX}{number}"));
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => return Ok((number, Journal::new(file))),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => number += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// An existing session's records, in order, and its journal to append to.
    /// An id that is not one of ours, or has no journal, is "session not found".
    pub(crate) fn load(&self, session_id: &SessionId) -> Result<(Vec<Record>, Journal), Error> {
        let id = &*session_id.0;
        let ours = id
            .strip_prefix(SESSION_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !ours {
            return Err(session_not_found(session_id));
        }
        let path = self.path(id);
        let file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(session_not_found(session_id)),
            Err(e) => return Err(journal_error(&path, e)),
        };
        let mut records = Vec::new();
        for (number, line) in BufReader::new(&file).lines().enumerate() {
            let line = line.map_err(|e| journal_error(&path, e))?;
            let record = serde_json::from_str(&line).map_err(|e| {
                Error::internal_error().data(format!(
                    "journal {} line {}: {e}",
                    path.display(),
                    number + 1
                ))
            })?;
            records.push(record);
        }
        Ok((records, Journal::new(file)))
    }

    fn path(&self, session_id: &str) -> PathBuf {
        self.dir.join(format!("{session_id}.jsonl"))
    }
}

impl Journal {
    fn new(file: File) -> Self {
        Self {
            file: Mutex::new(file),
        }
    }

    /// Appends one record as one line, in a single write.
    pub(crate) fn append(&self, record: &Record) -> Result<(), Error> {
        let mut line = serde_json::to_vec(record).map_err(Error::into_internal_error)?;
        line.push(b'\n');
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(&line)
            .map_err(|e| Error::internal_error().data(format!("journal: {e}")))
    }
}

fn session_not_found(session_id: &SessionId) -> Error {
    agent_client_protocol::v1::schema::Error::session_not_found(session_id.clone()).into()
}

fn journal_error(path: &std::path::Path, e: io::Error) -> Error {
    Error::internal_error().data(format!("journal {}: {e}", path.display()))
}
