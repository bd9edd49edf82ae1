//! The log's writer: assigns seqs, encodes each event's wire frame once,
//! commits a batch in one transaction, publishes it, prunes old output past
//! the budget, and checkpoints the WAL every few MiB. It runs on the log's
//! writer thread, or for a small append into an idle log on the appending
//! task (see `Log::append`); a mutex keeps the two apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use ensemble_protocol::frame::{encode_event_frame, BinaryHeader};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{broadcast, mpsc};

use super::{now_ms, Append, Frame, LogError, LoggedEvent, NewEvent, Pins, Reply, MAX_BATCH};

/// WAL bytes between two checkpoints, as SQLite's own default (1000
/// pages of 4 KiB).
const CHECKPOINT_EVERY: u64 = 4 << 20;

/// What a commit adds to the WAL besides its frames: whole pages of the
/// table and its indexes (a commit of one small event writes two or three).
const COMMIT_PAGES: u64 = 3 * 4096;

/// What the writer spent its time on, for `getLogStats` (a test action) and
/// the bench: cumulative since the log was opened.
#[derive(Debug, Default)]
pub struct Counters {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub output_bytes: AtomicU64,
    /// Time in insert + commit.
    pub commit_us: AtomicU64,
    /// Commits made on the appending task instead of the writer thread
    /// (counted in `commits` too).
    pub inline_commits: AtomicU64,
    /// Checkpoints and their time, on the writer thread.
    pub checkpoints: AtomicU64,
    pub checkpoint_us: AtomicU64,
    /// Prunes (deletes past the budget) and their time, on the writer thread.
    pub prunes: AtomicU64,
    pub prune_us: AtomicU64,
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

pub(super) struct Writer {
    pub conn: Connection,
    pub next_seq: u64,
    pub session_seqs: HashMap<String, u64>,
    pub head: Arc<AtomicU64>,
    pub events_tx: broadcast::Sender<Arc<LoggedEvent>>,
    /// Bytes of binary events in the log, against `output_budget`.
    pub output_bytes: u64,
    pub output_budget: u64,
    pub output_from: Arc<AtomicU64>,
    pub pins: Pins,
    pub held_back: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    /// WAL bytes written since the last checkpoint, estimated.
    pub unchecked: u64,
    /// Appends taken from the queue so far: when it equals what was queued,
    /// nothing queued is waiting or in the writer thread's hands.
    pub taken: u64,
    /// When the last commit ended.
    pub last_commit: Instant,
}

/// The writer thread: commits what is queued, in batches, until every sender
/// is gone.
pub(super) fn run(writer: Arc<Mutex<Writer>>, mut append_rx: mpsc::Receiver<Append>) {
    let mut batch = Vec::new();
    while let Some(first) = append_rx.blocking_recv() {
        // Poisoned: a commit panicked; the log closes rather than guess.
        let Ok(mut w) = writer.lock() else { return };
        let mut events = first.events.len();
        batch.push(first);
        while events < MAX_BATCH {
            match append_rx.try_recv() {
                Ok(next) => {
                    events += next.events.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        w.taken += batch.len() as u64;
        if let Err(e) = w.commit(&mut batch, TransactionBehavior::Deferred) {
            // Not even begun: the batch is still whole (otherwise its
            // appenders already have the error).
            for reply in batch.drain(..).filter_map(|a| a.reply) {
                let _ = reply.send(Err(e.clone()));
            }
        }
        w.maintain();
    }
}

impl Writer {
    /// Whether [`Writer::maintain`] has work (pruning or a checkpoint),
    /// which is for the writer thread, never an appending task.
    pub(super) fn maintenance_due(&self) -> bool {
        self.output_bytes > self.output_budget || self.unchecked >= CHECKPOINT_EVERY
    }

    /// Prunes old output past the budget and checkpoints the WAL when due.
    fn maintain(&mut self) {
        if self.output_bytes > self.output_budget {
            let started = Instant::now();
            if let Err(e) = self.prune() {
                tracing::error!(error = %e, "pruning old output failed; the log grows past its budget");
            }
            self.counters.prunes.fetch_add(1, Ordering::Relaxed);
            self.counters
                .prune_us
                .fetch_add(micros(started), Ordering::Relaxed);
        }
        if self.unchecked >= CHECKPOINT_EVERY {
            self.unchecked = 0;
            self.checkpoint();
        }
    }

    /// Commits `batch` in one transaction begun with `begin` and publishes
    /// it; answers each append's reply. The same error also comes back here.
    /// If the transaction cannot even begin (the database is busy), the
    /// batch is left as it was, its replies unanswered.
    pub(super) fn commit(
        &mut self,
        batch: &mut Vec<Append>,
        begin: TransactionBehavior,
    ) -> Result<(), Arc<LogError>> {
        let tx = self
            .conn
            .transaction_with_behavior(begin)
            .map_err(|e| Arc::new(LogError::Sqlite(e)))?;
        let start_seq = self.next_seq;
        let saved_sessions: Vec<(String, Option<u64>)> = batch
            .iter()
            .flat_map(|a| a.events.iter())
            .filter_map(|e| match e {
                NewEvent::Session { session_id, .. } => Some((
                    session_id.clone(),
                    self.session_seqs.get(session_id).copied(),
                )),
                _ => None,
            })
            .collect();
        let mut logged = Vec::new();
        let mut replies: Vec<(Reply, u64)> = Vec::with_capacity(batch.len());
        let started = Instant::now();
        let mut bytes = 0u64;
        let result = (|| -> Result<(), rusqlite::Error> {
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events(seq, ts, name, session_id, session_seq, kind, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                let ts = now_ms();
                for append in batch.drain(..) {
                    for event in append.events {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        let (name, session, kind, frame) =
                            encode(&mut self.session_seqs, seq, ts, event);
                        bytes += frame.len() as u64;
                        let body: &[u8] = match &frame {
                            Frame::Text(b) => b,
                            Frame::Binary(b) => {
                                self.output_bytes += b.len() as u64;
                                b
                            }
                        };
                        insert.execute(params![
                            seq as i64,
                            ts as i64,
                            name,
                            session.as_ref().map(|s| s.0.as_str()),
                            session.as_ref().map(|s| s.1 as i64),
                            kind,
                            body
                        ])?;
                        logged.push(Arc::new(LoggedEvent {
                            seq,
                            ts,
                            name,
                            frame,
                        }));
                    }
                    replies.push((append.reply, self.next_seq - 1));
                }
            }
            tx.commit()
        })();
        match result {
            Ok(()) => {
                let c = &self.counters;
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.events
                    .fetch_add(self.next_seq - start_seq, Ordering::Relaxed);
                c.output_bytes.store(self.output_bytes, Ordering::Relaxed);
                c.commit_us.fetch_add(micros(started), Ordering::Relaxed);
                self.head.store(self.next_seq - 1, Ordering::Release);
                for event in logged {
                    // No subscriber is fine: the event is in the log.
                    let _ = self.events_tx.send(event);
                }
                for (reply, last) in replies {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(last));
                    }
                }
                self.unchecked += bytes + COMMIT_PAGES;
                self.last_commit = Instant::now();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "event log commit failed; the batch is refused");
                self.next_seq = start_seq;
                for (id, n) in saved_sessions {
                    match n {
                        Some(n) => self.session_seqs.insert(id, n),
                        None => self.session_seqs.remove(&id),
                    };
                }
                let e = Arc::new(LogError::Sqlite(e));
                let pending = replies.into_iter().map(|(r, _)| r);
                for reply in pending.chain(batch.drain(..).map(|a| a.reply)).flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
                self.last_commit = Instant::now();
                Err(e)
            }
        }
    }
}

impl Writer {
    /// Deletes the oldest output events until output is back under 90% of
    /// the budget (the slack keeps pruning from running on every commit).
    fn prune(&mut self) -> Result<(), rusqlite::Error> {
        let target = self.output_budget / 10 * 9;
        let excess = self.output_bytes.saturating_sub(target);
        // A pinned reader (a terminal model behind the head) keeps its output.
        let floor = self
            .pins
            .lock()
            .ok()
            .and_then(|pins| pins.values().min().copied())
            .unwrap_or(u64::MAX);
        let tx = self.conn.transaction()?;
        let (cutoff, freed) = {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, length(body) FROM events WHERE kind != 0 ORDER BY seq",
            )?;
            let mut rows = stmt.query([])?;
            let (mut cutoff, mut freed) = (0u64, 0u64);
            while freed < excess {
                let Some(row) = rows.next()? else { break };
                let seq: u64 = row.get(0)?;
                if seq > floor {
                    self.held_back.store(true, Ordering::Release);
                    break;
                }
                cutoff = seq;
                freed += row.get::<_, u64>(1)?;
            }
            (cutoff, freed)
        };
        if cutoff == 0 {
            return Ok(());
        }
        tx.execute(
            "DELETE FROM events WHERE kind != 0 AND seq <= ?1",
            [cutoff as i64],
        )?;
        tx.execute(
            "INSERT INTO meta(k, v) VALUES ('output_from', ?1)
             ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            [(cutoff + 1) as i64],
        )?;
        tx.commit()?;
        self.output_bytes -= freed.min(self.output_bytes);
        self.output_from.store(cutoff + 1, Ordering::Release);
        // Give the freed pages back to the file system.
        self.conn.execute_batch("PRAGMA incremental_vacuum;")?;
        tracing::debug!(cutoff, freed, "pruned old output");
        Ok(())
    }
}

/// Builds the wire frame of one event: name, session (id, sequenceNumber),
/// kind column, frame.
fn encode(
    session_seqs: &mut HashMap<String, u64>,
    seq: u64,
    ts: u64,
    event: NewEvent,
) -> (String, Option<(String, u64)>, u8, Frame) {
    match event {
        NewEvent::Json { name, data } => {
            let text = encode_event_frame(seq, ts, &name, &data);
            (name, None, 0, Frame::Text(Bytes::from(text)))
        }
        NewEvent::Session { session_id, event } => {
            let n = session_seqs.entry(session_id.clone()).or_insert(0);
            *n += 1;
            let data = format!(
                r#"{{"sessionId":{},"sequenceNumber":{},"event":{}}}"#,
                serde_json::Value::from(session_id.as_str()),
                n,
                event
            );
            let text = encode_event_frame(seq, ts, "sessionEvent", &data);
            let n = *n;
            (
                "sessionEvent".to_owned(),
                Some((session_id, n)),
                0,
                Frame::Text(Bytes::from(text)),
            )
        }
        NewEvent::Bytes { kind, id, payload } => {
            let frame = BinaryHeader { kind, seq, ts, id }.encode(&payload);
            (
                kind.event_name().to_owned(),
                None,
                kind as u8,
                Frame::Binary(frame),
            )
        }
    }
}

impl Writer {
    /// Copies the WAL into `log.db` (and fsyncs both). Here, between two
    /// commits, it always finishes, so the next commit starts the WAL over
    /// (truncated to `journal_size_limit`): the files stay bounded. A
    /// checkpoint on another thread would not hold up commits, but while
    /// commits keep coming it never finishes, and the WAL and `log.db` grow.
    fn checkpoint(&mut self) {
        let started = Instant::now();
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
        }
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters
            .checkpoint_us
            .fetch_add(micros(started), Ordering::Relaxed);
    }
}
