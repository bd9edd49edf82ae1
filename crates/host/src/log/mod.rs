//! The per-VM event log, the source of truth: one writer assigns each event
//! the next gap-free `seq`, encodes its wire frame once, commits a batch of
//! events in one SQLite transaction and only then publishes them. The
//! broadcast that follows is a wake-up with the frames attached; a reader that
//! falls behind it reads the same frames back from the database.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ensemble_protocol::frame::{encode_event_frame, BinaryHeader, BinaryKind};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc, oneshot};

mod writer;

pub use writer::Counters;
use writer::Writer;

/// Most events one transaction commits. Bigger batches amortise the commit
/// (an fsync-free WAL append with `synchronous=NORMAL`) but delay the first
/// delivery of the batch; at 1024 small events a commit takes about a
/// millisecond here.
const MAX_BATCH: usize = 1024;

/// Appends waiting for the writer. When the disk is slower than producers,
/// producers wait here: nothing is published before it is durable.
const APPEND_QUEUE: usize = 8192;

/// The largest append (bytes of event data) committed on the appending task
/// rather than the writer thread: a keystroke's echo or a control event, not
/// a build log.
const INLINE_MAX: usize = 4 << 10;

/// How long the log must have been without a commit for an append to be
/// committed on the appending task. A burst of appends is left to the writer
/// thread, which batches it and runs beside the tasks; a keystroke's echo
/// comes alone.
const INLINE_IDLE: Duration = Duration::from_micros(200);

/// How long a write waits for another connection's write (a hook's position)
/// to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Logged events the broadcast keeps for subscribers. A subscriber more than
/// this many events behind reads from the database instead (it gets `Lagged`).
/// The ring keeps its events alive, so this also bounds its memory: at most
/// 1024 output chunks of 64 KiB, 64 MiB, under a flood of shell output. At
/// 20k small events/s it is about 50 ms of slack.
const BROADCAST_CAPACITY: usize = 1024;

/// Reads of any log (catch-up pages, history, snapshots) running at once,
/// host-wide: on two cores more would only wait for a CPU, holding a thread
/// and its memory meanwhile.
static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Idle read-only connections kept per VM for catch-up and history reads.
const MAX_IDLE_READERS: usize = 4;

/// One event, logged: what every subscriber receives.
#[derive(Debug)]
pub struct LoggedEvent {
    pub seq: u64,
    pub ts: u64,
    pub name: String,
    pub frame: Frame,
}

/// An encoded wire frame. `Bytes` clones share one buffer.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A JSON event frame (UTF-8).
    Text(Bytes),
    /// A binary frame: header then payload.
    Binary(Bytes),
}

impl Frame {
    /// Its size on the wire.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An event to append. Data is already serialized JSON so that the writer
/// thread only concatenates.
#[derive(Debug)]
pub enum NewEvent {
    Json {
        name: String,
        data: String,
    },
    /// An ACP notification of a session; the writer adds the per-session
    /// `sequenceNumber` (agentOS compatible).
    Session {
        session_id: String,
        event: String,
    },
    Bytes {
        kind: BinaryKind,
        id: u32,
        payload: Bytes,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("event log storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the event log writer: {0}")]
    Thread(std::io::Error),
    #[error("the event log is closed")]
    Closed,
}

/// Events appended together get consecutive seqs.
struct Append {
    events: Vec<NewEvent>,
    reply: Reply,
}

/// Answered with the seq of the last event of the append once it is durable.
type Reply = Option<oneshot::Sender<Result<u64, Arc<LogError>>>>;

/// A handle on one VM's log; cheap to clone.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Queue,
    writer: Arc<Mutex<Writer>>,
    /// Whether small appends may commit on the appending task: not when each
    /// commit waits for an fsync.
    inline: bool,
    events_tx: broadcast::Sender<Arc<LoggedEvent>>,
    head: Arc<AtomicU64>,
    first: u64,
    output_from: Arc<AtomicU64>,
    pins: Pins,
    held_back: Arc<AtomicBool>,
    readers: ReaderPool,
    /// Bytes of output the log keeps (pruning starts beyond).
    output_budget: u64,
    counters: Arc<Counters>,
}

/// The writer thread's queue, with a count of what was ever sent to it.
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Append>,
    /// Appends sent (or being sent). Counted before the send, so that an
    /// append committed inline can tell, under the writer's lock, whether
    /// anything queued before it has yet to be committed.
    queued: Arc<AtomicU64>,
}

impl Queue {
    async fn send(&self, append: Append) -> Result<(), LogError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.send(append).await.map_err(|_| LogError::Closed)
    }

    /// An empty append: the writer commits nothing, then prunes or
    /// checkpoints if that is due. Dropped if the queue is full, when the
    /// writer has work anyway.
    fn nudge(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let empty = Append {
            events: Vec::new(),
            reply: None,
        };
        if self.tx.try_send(empty).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Readers that must not lose output they have not read yet (terminal
/// models): pruning stays below the lowest pinned seq.
type Pins = Arc<Mutex<BTreeMap<u64, u64>>>;

/// Holds back pruning of output after its seq; released when dropped.
pub struct Pin {
    pins: Pins,
    id: u64,
    /// Set by the writer when a pin stopped it short of the budget.
    held_back: Arc<AtomicBool>,
    /// To ask the writer to try again once the pin moved.
    queue: Queue,
}

impl Pin {
    /// Everything up to `seq` has been read: it may be pruned now.
    pub fn advance(&self, seq: u64) {
        if let Ok(mut pins) = self.pins.lock() {
            pins.insert(self.id, seq);
        }
        if self.held_back.swap(false, Ordering::AcqRel) {
            self.queue.nudge();
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Ok(mut pins) = self.pins.lock() {
            pins.remove(&self.id);
        }
    }
}

/// Opens (creating if needed) the log at `path` and starts its writer thread.
/// Byte-stream output (binary events) beyond `output_budget` bytes is pruned
/// oldest first; every other event is kept. The returned receiver resolves
/// when the writer thread has committed its last batch and exited, which
/// happens once every [`Log`] clone is dropped.
pub fn open(path: &Path, output_budget: u64) -> Result<(Log, oneshot::Receiver<()>), LogError> {
    open_with(path, output_budget, Durability::Normal)
}

/// How hard a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// SQLite `synchronous=NORMAL` in WAL mode: a commit survives a crash of
    /// the host; an OS crash or power loss may lose the latest commits.
    #[default]
    Normal,
    /// `synchronous=FULL`: each commit is synced to disk before it is
    /// published, so it survives a power loss too; costs an fsync per commit.
    Full,
}

/// [`open`] with a durability.
pub fn open_with(
    path: &Path,
    output_budget: u64,
    durability: Durability,
) -> Result<(Log, oneshot::Receiver<()>), LogError> {
    let open_err = |source| LogError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.execute_batch(
        "PRAGMA auto_vacuum=INCREMENTAL;
         PRAGMA journal_mode=WAL;
         PRAGMA journal_size_limit=8388608;
         PRAGMA synchronous=NORMAL;
         PRAGMA wal_autocheckpoint=0;
         CREATE TABLE IF NOT EXISTS events(
             seq INTEGER PRIMARY KEY,
             ts INTEGER NOT NULL,
             name TEXT NOT NULL,
             session_id TEXT,
             session_seq INTEGER,
             kind INTEGER NOT NULL,
             body BLOB NOT NULL);
         CREATE INDEX IF NOT EXISTS events_by_session
             ON events(session_id, session_seq) WHERE session_id IS NOT NULL;
         CREATE INDEX IF NOT EXISTS events_output ON events(seq) WHERE kind != 0;
         CREATE TABLE IF NOT EXISTS hook_positions(
             hook TEXT PRIMARY KEY,
             seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS meta(
             k TEXT PRIMARY KEY,
             v INTEGER NOT NULL);",
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    if durability == Durability::Full {
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(open_err)?;
    }
    let (head, first): (u64, u64) = conn
        .query_row(
            "SELECT COALESCE(MAX(seq), 0), COALESCE(MIN(seq), 1) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(open_err)?;
    let (output_bytes, output_from): (u64, u64) = conn
        .query_row(
            "SELECT (SELECT COALESCE(SUM(length(body)), 0) FROM events WHERE kind != 0),
                    (SELECT COALESCE(MAX(v), 1) FROM meta WHERE k = 'output_from')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(open_err)?;
    let output_from = Arc::new(AtomicU64::new(output_from));
    let pins: Pins = Arc::default();
    let held_back = Arc::new(AtomicBool::new(false));
    let mut session_seqs = HashMap::new();
    {
        let mut stmt = conn
            .prepare(
                "SELECT session_id, MAX(session_seq) FROM events
                 WHERE session_id IS NOT NULL GROUP BY session_id",
            )
            .map_err(open_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
            .map_err(open_err)?;
        for row in rows {
            let (id, n) = row.map_err(open_err)?;
            session_seqs.insert(id, n);
        }
    }

    let (append_tx, append_rx) = mpsc::channel(APPEND_QUEUE);
    let (events_tx, _) = broadcast::channel(BROADCAST_CAPACITY);
    let head = Arc::new(AtomicU64::new(head));
    let (done_tx, done_rx) = oneshot::channel();
    let counters = Arc::new(Counters::default());
    let writer = Arc::new(Mutex::new(Writer {
        conn,
        next_seq: head.load(Ordering::Relaxed) + 1,
        session_seqs,
        head: head.clone(),
        events_tx: events_tx.clone(),
        output_bytes,
        output_budget,
        output_from: output_from.clone(),
        pins: pins.clone(),
        held_back: held_back.clone(),
        counters: counters.clone(),
        unchecked: 0,
        taken: 0,
        last_commit: Instant::now(),
    }));
    let thread_writer = writer.clone();
    std::thread::Builder::new()
        .name("ensemble-log".into())
        .spawn(move || {
            // Returns once every sender is gone, with the last handle on
            // the writer (and so the database connection) dropped.
            writer::run(thread_writer, append_rx);
            let _ = done_tx.send(());
        })
        .map_err(LogError::Thread)?;
    let log = Log {
        inner: Arc::new(Inner {
            queue: Queue {
                tx: append_tx,
                queued: Arc::default(),
            },
            writer,
            inline: durability == Durability::Normal,
            events_tx,
            head,
            first,
            output_from,
            pins,
            held_back,
            readers: ReaderPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            },
            output_budget,
            counters,
        }),
    };
    Ok((log, done_rx))
}

impl Log {
    /// Appends events with consecutive seqs and waits until they are
    /// durable; returns the seq of the last one.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<u64, Arc<LogError>> {
        let events = match self.append_now(events) {
            Ok(committed) => return committed,
            Err(events) => events,
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        self.inner
            .queue
            .send(Append {
                events,
                reply: Some(reply_tx),
            })
            .await
            .map_err(Arc::new)?;
        reply_rx.await.map_err(|_| Arc::new(LogError::Closed))?
    }

    /// Commits a small append right here, on the appending task, when the
    /// log is idle: nothing queued before it is still uncommitted, the
    /// writer thread is not busy and no commit ended in the last
    /// [`INLINE_IDLE`]. A keystroke's echo then reaches its subscribers
    /// without two hand-overs to and from the writer thread, which on an
    /// idle core cost tens of microseconds each. The commit (a WAL append,
    /// no fsync) blocks the task's thread for about as long as a hand-over
    /// would have. Gives the events back when the writer thread must take
    /// them.
    fn append_now(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Result<u64, Arc<LogError>>, Vec<NewEvent>> {
        let inner = &self.inner;
        if !inner.inline || data_len(&events) > INLINE_MAX {
            return Err(events);
        }
        let Ok(mut writer) = inner.writer.try_lock() else {
            return Err(events);
        };
        if writer.taken != inner.queue.queued.load(Ordering::SeqCst)
            || writer.last_commit.elapsed() < INLINE_IDLE
        {
            return Err(events);
        }
        // Another connection writing (a hook's position) would make the
        // commit wait for it: the write lock is taken first, without waiting,
        // and the writer thread takes the append if it is not free.
        if writer.conn.busy_timeout(Duration::ZERO).is_err() {
            return Err(events);
        }
        let mut batch = vec![Append {
            events,
            reply: None,
        }];
        let committed = writer.commit(&mut batch, TransactionBehavior::Immediate);
        if let Err(e) = writer.conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(error = %e, "cannot restore the log's busy timeout");
        }
        if let Some(append) = batch.pop() {
            return Err(append.events);
        }
        let committed = committed.map(|()| writer.next_seq - 1);
        let due = writer.maintenance_due();
        drop(writer);
        if committed.is_ok() {
            inner
                .counters
                .inline_commits
                .fetch_add(1, Ordering::Relaxed);
        }
        if due {
            inner.queue.nudge();
        }
        Ok(committed)
    }

    /// Appends without waiting for durability (publication still waits for it).
    pub async fn append_nowait(&self, events: Vec<NewEvent>) -> Result<(), LogError> {
        self.inner
            .queue
            .send(Append {
                events,
                reply: None,
            })
            .await
    }

    /// What the log's writer spent its time on.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The last durable seq (0 for an empty log).
    pub fn head(&self) -> u64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// The oldest seq the log holds: history begins there.
    pub fn first(&self) -> u64 {
        self.inner.first
    }

    /// Output events (shell and process bytes) before this seq may have been
    /// pruned to keep the log within its output budget; all others remain.
    pub fn output_from(&self) -> u64 {
        self.inner.output_from.load(Ordering::Acquire)
    }

    /// Bytes of output the log keeps; older output is pruned.
    pub fn output_budget(&self) -> u64 {
        self.inner.output_budget
    }

    /// Bytes of output (binary events, all shells and processes) with
    /// `after < seq <= upto`: what a pin at `after` holds in the log.
    pub async fn output_bytes_between(&self, after: u64, upto: u64) -> Result<u64, LogError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(length(body)), 0) FROM events
                 WHERE seq > ?1 AND seq <= ?2 AND kind != 0",
                params![
                    after.min(i64::MAX as u64) as i64,
                    upto.min(i64::MAX as u64) as i64
                ],
                |r| r.get(0),
            )
        })
        .await
    }

    /// The seq after which the last `tail` bytes of shell `shell_id`'s
    /// output up to `upto` begin (at least `after`).
    pub async fn shell_tail_start(
        &self,
        shell_id: u32,
        after: u64,
        upto: u64,
        tail: u64,
    ) -> Result<u64, LogError> {
        self.read(move |conn| {
            // The binary header holds the shell id at bytes 18..22 (1-based).
            let mut stmt = conn.prepare_cached(
                "SELECT seq, length(body) FROM events
                 WHERE seq > ?1 AND seq <= ?2 AND name = 'shellData' AND substr(body, 18, 4) = ?3
                 ORDER BY seq DESC",
            )?;
            let mut rows = stmt.query(params![
                after.min(i64::MAX as u64) as i64,
                upto.min(i64::MAX as u64) as i64,
                shell_id.to_be_bytes().to_vec()
            ])?;
            let mut bytes = 0u64;
            while let Some(row) = rows.next()? {
                let seq: u64 = row.get(0)?;
                bytes += row.get::<_, u64>(1)?;
                if bytes >= tail {
                    return Ok(seq.saturating_sub(1).max(after));
                }
            }
            Ok(after)
        })
        .await
    }

    /// Keeps output after `seq` from being pruned until the pin advances or
    /// is dropped.
    pub fn pin(&self, seq: u64) -> Pin {
        static NEXT_PIN: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_PIN.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut pins) = self.inner.pins.lock() {
            pins.insert(id, seq);
        }
        Pin {
            pins: self.inner.pins.clone(),
            id,
            held_back: self.inner.held_back.clone(),
            queue: self.inner.queue.clone(),
        }
    }

    /// Live events from now on. Subscribe before reading the head so that
    /// nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedEvent>> {
        self.inner.events_tx.subscribe()
    }

    /// Runs `f` on a read-only connection, off the async threads.
    pub async fn read<R, F>(&self, f: F) -> Result<R, LogError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    {
        // Waits its turn (fairly, first come first served): many
        // subscribers catching up at once would otherwise each hold a
        // blocking thread, and glibc gives busy threads malloc arenas of
        // their own that keep their memory after the reads end.
        let _permit = READS.acquire().await.map_err(|_| LogError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Events with `after < seq <= upto`, in order, at most `limit`,
    /// optionally only those named in `names`.
    pub async fn page(
        &self,
        after: u64,
        upto: u64,
        limit: u32,
        names: Option<Vec<String>>,
    ) -> Result<Vec<LoggedEvent>, LogError> {
        self.read(move |conn| read_page(conn, after, upto, limit, names.as_deref()))
            .await
    }

    /// Like [`Log::page`], but stops once the frames read reach `max_bytes`
    /// (a page holds at least one event, so at most `max_bytes` plus one
    /// event): what a reader holds is bounded in bytes, however large the
    /// events. Also says whether it stopped for the bytes.
    pub async fn page_bytes(
        &self,
        after: u64,
        upto: u64,
        limit: u32,
        names: Option<Vec<String>>,
        max_bytes: usize,
    ) -> Result<(Vec<LoggedEvent>, bool), LogError> {
        self.read(move |conn| {
            read_page_bytes(conn, after, upto, limit, names.as_deref(), max_bytes)
        })
        .await
    }

    /// Like [`Log::page`], for readers that walk the log to `upto` with a name
    /// filter: also says how far the page reached (a short page means no
    /// further match up to `upto`), which is where the next page starts.
    pub async fn scan(
        &self,
        after: u64,
        upto: u64,
        limit: u32,
        names: Option<Vec<String>>,
    ) -> Result<(Vec<LoggedEvent>, u64), LogError> {
        let page = self.page(after, upto, limit, names).await?;
        let reached = if page.len() < limit as usize {
            upto
        } else {
            page.last().map_or(upto, |e| e.seq)
        };
        Ok((page, reached))
    }

    /// The hook position stored under `hook` (0 if none).
    pub async fn hook_position(&self, hook: String) -> Result<u64, LogError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT seq FROM hook_positions WHERE hook = ?1",
                [hook],
                |r| r.get(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0))
        })
        .await
    }

    /// Stores a hook position. Uses its own short write transaction: the
    /// writer thread is not involved, SQLite's busy timeout orders the two.
    pub async fn set_hook_position(&self, hook: String, seq: u64) -> Result<(), LogError> {
        let path = self.inner.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.execute(
                "INSERT INTO hook_positions(hook, seq) VALUES (?1, ?2)
                 ON CONFLICT(hook) DO UPDATE SET seq = excluded.seq",
                params![hook, seq],
            )?;
            Ok(())
        })
        .await
        .map_err(|_| LogError::Closed)?
    }
}

/// Bytes of event data in an append.
fn data_len(events: &[NewEvent]) -> usize {
    events
        .iter()
        .map(|e| match e {
            NewEvent::Json { name, data } => name.len() + data.len(),
            NewEvent::Session { session_id, event } => session_id.len() + event.len(),
            NewEvent::Bytes { payload, .. } => payload.len(),
        })
        .sum()
}

/// Reads one page. Rows are already wire frames: nothing is re-encoded.
pub fn read_page(
    conn: &Connection,
    after: u64,
    upto: u64,
    limit: u32,
    names: Option<&[String]>,
) -> Result<Vec<LoggedEvent>, rusqlite::Error> {
    read_page_bytes(conn, after, upto, limit, names, usize::MAX).map(|(page, _)| page)
}

/// [`read_page`] that stops once `max_bytes` of frames are read; rows are
/// read one at a time, so no more than that (plus one event) is held.
pub fn read_page_bytes(
    conn: &Connection,
    after: u64,
    upto: u64,
    limit: u32,
    names: Option<&[String]>,
    max_bytes: usize,
) -> Result<(Vec<LoggedEvent>, bool), rusqlite::Error> {
    let mut sql =
        String::from("SELECT seq, ts, name, kind, body FROM events WHERE seq > ?1 AND seq <= ?2");
    let mut values: Vec<rusqlite::types::Value> = vec![
        (after.min(i64::MAX as u64) as i64).into(),
        (upto.min(i64::MAX as u64) as i64).into(),
        i64::from(limit).into(),
    ];
    if let Some(names) = names {
        sql.push_str(" AND name IN (");
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("?{}", i + 4));
            values.push(name.clone().into());
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY seq LIMIT ?3");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| {
        let kind: u8 = r.get(3)?;
        let body: Vec<u8> = r.get(4)?;
        Ok(LoggedEvent {
            seq: r.get(0)?,
            ts: r.get(1)?,
            name: r.get(2)?,
            frame: if kind == 0 {
                Frame::Text(Bytes::from(body))
            } else {
                Frame::Binary(Bytes::from(body))
            },
        })
    })?;
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let event = row?;
        bytes = bytes.saturating_add(event.frame.len());
        page.push(event);
        if bytes >= max_bytes {
            return Ok((page, true));
        }
    }
    Ok((page, false))
}

impl LoggedEvent {
    /// The event as JSON text, the shape `getEvents` and hooks use. A binary
    /// event's bytes become base64 in `data.data`.
    pub fn json(&self) -> Result<String, String> {
        match &self.frame {
            Frame::Text(b) => std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|e| format!("event {} is not UTF-8: {e}", self.seq)),
            Frame::Binary(b) => {
                let (header, payload) =
                    BinaryHeader::decode(b).map_err(|e| format!("event {}: {e}", self.seq))?;
                let view = header.json_data(payload);
                Ok(encode_event_frame(
                    self.seq,
                    self.ts,
                    header.kind.event_name(),
                    &view.to_string(),
                ))
            }
        }
    }
}

/// For `getSequencedEvents`: `(sequenceNumber, notification)` pairs of one
/// session after `since`, at most `limit`.
/// Notifications of a session with their `sequenceNumber`, and whether the
/// page stopped for its size.
pub type SessionPage = (Vec<(u64, Box<RawValue>)>, bool);

/// The notifications of a session after `since`, at most `limit`, stopping
/// once `max_bytes` of them are read (then the flag is true).
pub fn read_session_page(
    conn: &Connection,
    session_id: &str,
    since: u64,
    limit: u32,
    max_bytes: usize,
) -> Result<SessionPage, rusqlite::Error> {
    #[derive(serde::Deserialize)]
    struct FrameData {
        data: SessionData,
    }
    #[derive(serde::Deserialize)]
    struct SessionData {
        event: Box<RawValue>,
    }
    let mut stmt = conn.prepare_cached(
        "SELECT session_seq, body FROM events
         WHERE session_id = ?1 AND session_seq > ?2 ORDER BY session_seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![session_id, since.min(i64::MAX as u64) as i64, limit],
        |r| Ok((r.get::<_, u64>(0)?, r.get::<_, Vec<u8>>(1)?)),
    )?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let (n, body) = row?;
        let frame: FrameData = serde_json::from_slice(&body).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Blob, Box::new(e))
        })?;
        bytes = bytes.saturating_add(frame.data.event.get().len());
        out.push((n, frame.data.event));
        if bytes >= max_bytes {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, rusqlite::Error>,
    ) -> Result<R, LogError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn
            }
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        Ok(result?)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(name: &str) -> NewEvent {
        NewEvent::Json {
            name: name.to_owned(),
            data: "{}".to_owned(),
        }
    }

    fn inline_commits(log: &Log) -> u64 {
        log.counters().inline_commits.load(Ordering::Relaxed)
    }

    async fn names(log: &Log) -> Vec<String> {
        let page = log.page(0, log.head(), 100, None).await.unwrap();
        page.into_iter().map(|e| e.name).collect()
    }

    #[tokio::test]
    async fn a_small_append_into_an_idle_log_commits_inline_and_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _done) = open(&dir.path().join("log.db"), 1 << 20).unwrap();
        let mut live = log.subscribe();
        tokio::time::sleep(INLINE_IDLE * 2).await;
        assert_eq!(log.append(vec![json("a")]).await.unwrap(), 1);
        // Right after a commit the log is not idle: the writer thread takes it.
        assert_eq!(log.append(vec![json("b")]).await.unwrap(), 2);
        assert_eq!(inline_commits(&log), 1);
        assert_eq!(log.head(), 2);
        assert_eq!(live.recv().await.unwrap().seq, 1);
        assert_eq!(live.recv().await.unwrap().seq, 2);
        // Durable: a reader on its own connection finds them.
        assert_eq!(names(&log).await, ["a", "b"]);
        // Big appends always go to the writer thread.
        tokio::time::sleep(INLINE_IDLE * 2).await;
        let big = NewEvent::Bytes {
            kind: BinaryKind::ProcessStdout,
            id: 1,
            payload: Bytes::from(vec![b'x'; INLINE_MAX + 1]),
        };
        assert_eq!(log.append(vec![big]).await.unwrap(), 3);
        assert_eq!(inline_commits(&log), 1);
    }

    #[tokio::test]
    async fn an_inline_append_never_overtakes_one_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _done) = open(&dir.path().join("log.db"), 1 << 20).unwrap();
        for round in 0..50 {
            tokio::time::sleep(INLINE_IDLE * 2).await;
            let queued = format!("queued{round}");
            let after = format!("after{round}");
            log.append_nowait(vec![json(&queued)]).await.unwrap();
            log.append(vec![json(&after)]).await.unwrap();
            let names = names(&log).await;
            assert_eq!(names[names.len() - 2..], [queued, after]);
        }
    }

    #[tokio::test]
    async fn an_inline_append_never_waits_for_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let (log, _done) = open(&path, 1 << 20).unwrap();
        // Another connection holds the write lock for a while, as a hook
        // storing its position does for a moment.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            other.execute_batch("COMMIT").unwrap();
        });
        tokio::time::sleep(INLINE_IDLE * 2).await;
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        assert_eq!(log.append(vec![json("a")]).await.unwrap(), 1);
        // The test's runtime has one thread: the other task ran only if the
        // append let go of it rather than wait there for the lock.
        assert!(ran.load(Ordering::SeqCst), "the append blocked its thread");
        assert_eq!(inline_commits(&log), 0);
        release.join().unwrap();
    }

    #[tokio::test]
    async fn with_full_durability_every_append_goes_to_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _done) =
            open_with(&dir.path().join("log.db"), 1 << 20, Durability::Full).unwrap();
        tokio::time::sleep(INLINE_IDLE * 2).await;
        assert_eq!(log.append(vec![json("a")]).await.unwrap(), 1);
        assert_eq!(inline_commits(&log), 0);
    }
}
