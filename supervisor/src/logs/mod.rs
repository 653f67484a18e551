//! The log store (SPEC §7): every captured line in SQLite with FTS5 for search, written off the
//! hot path.
//!
//! [`LogStore::record`] never blocks: it queues the line on a channel bounded by counters (at
//! most `queue` lines and `queue_bytes` bytes waiting, [`QUEUE_BYTES`] by default; the
//! channel's memory grows and shrinks with what waits, nothing is reserved up front) and
//! counts a line as dropped when the queue is full. One writer thread owns the write
//! connection, commits batches (up to `batch` lines, `batch_bytes` bytes or `flush_every`) in
//! one short transaction each, publishes committed lines to [`LogStore::subscribe`]rs, says
//! how many lines were dropped (a `ten` line, at most every `drop_report_every`), and applies
//! retention by age, row count and message bytes in bounded chunks. Queries use a separate
//! read connection.

mod query;
mod search;
mod store;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tokio::sync::broadcast;

use tenement_conf::InstanceName;

use crate::child::{LogSink, Stream, CUT_MARK, DEFAULT_MAX_LINE};

pub use query::{literal_search, DEFAULT_LIMIT, MAX_LIMIT};
pub use search::{fts_query, LiveSearch};
pub use store::rfc3339_ms;

use writer::{Msg, Pending, Writer};

/// Lines a subscriber may fall behind before it gets `Lagged`.
const SUBSCRIBE_CAPACITY: usize = 4096;

/// The most bytes of lines waiting for the writer (messages and names, plus
/// [`LINE_OVERHEAD`] each): 64 MiB. Past it lines are dropped and counted.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// The most message bytes committed in one transaction: 1 MiB. Keeps each write lock on the
/// shared `tenement.db` short (the state store's weight writes wait for it).
pub const BATCH_BYTES: usize = 1024 * 1024;

/// What a queued line costs besides its text (the channel slot and three string headers).
pub const LINE_OVERHEAD: usize = 128;

/// Log store errors.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("bad search {query:?}: {reason}")]
    BadSearch { query: String, reason: String },
    #[error("log store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("log store: {0}")]
    Io(String),
}

/// Tuning for [`LogStore::open`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Lines older than this are deleted (`[settings] log_retention`); zero keeps them forever.
    pub retention: Duration,
    /// The newest this many lines are kept (`[settings] log_max_rows`); zero means no limit.
    pub max_rows: u64,
    /// The most message bytes kept (`[settings] log_max_bytes`), oldest deleted first; zero
    /// means no limit.
    pub max_bytes: u64,
    /// The longest line kept, bytes (`[settings] log_max_line`): the capture cuts longer lines
    /// there and marks them with [`CUT_MARK`]; `record` cuts any other line the same way.
    pub max_line: usize,
    /// Lines that may wait for the writer before `record` starts dropping them.
    pub queue: usize,
    /// Bytes that may wait for the writer (see [`QUEUE_BYTES`]); at least 4 × `max_line`.
    pub queue_bytes: usize,
    /// The most lines committed in one transaction.
    pub batch: usize,
    /// The most message bytes committed in one transaction (a batch holds at least one line).
    pub batch_bytes: usize,
    /// The longest a line waits for its batch to fill.
    pub flush_every: Duration,
    /// How often, at most, the writer logs "N lines dropped" (process `ten`, instance `logs`).
    pub drop_report_every: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_rows: 1_000_000,
            max_bytes: 1_000_000_000,
            max_line: DEFAULT_MAX_LINE,
            queue: 65_536,
            queue_bytes: QUEUE_BYTES,
            batch: 2048,
            batch_bytes: BATCH_BYTES,
            flush_every: Duration::from_millis(50),
            drop_report_every: Duration::from_secs(10),
        }
    }
}

impl LogOptions {
    /// The defaults with the `[settings]` that tune the store: `log_retention`,
    /// `log_max_rows`, `log_max_bytes`, `log_max_line`.
    pub fn from_settings(s: &tenement_conf::Settings) -> Self {
        LogOptions {
            retention: s.log_retention,
            max_rows: s.log_max_rows,
            max_bytes: s.log_max_bytes,
            max_line: usize::try_from(s.log_max_line).unwrap_or(usize::MAX),
            ..LogOptions::default()
        }
    }
}

/// What to read back; every filter is optional. Results are newest first.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub process: Option<String>,
    pub instance: Option<String>,
    pub stream: Option<Stream>,
    /// An FTS5 query: words, `"phrases"`, `prefix*`, `AND`/`OR`/`NOT`. A bare word is a prefix
    /// (`crash` finds `crashed`, [`fts_query`]); a quoted one is the exact word. Blank means no
    /// search.
    pub search: Option<String>,
    /// Only lines at or after this time.
    pub since: Option<SystemTime>,
    /// Only lines with a smaller id (paging: pass the last id of the previous page).
    pub before_id: Option<i64>,
    /// At most this many lines ([`DEFAULT_LIMIT`] if 0, capped at [`MAX_LIMIT`]).
    pub limit: usize,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            process: None,
            instance: None,
            stream: None,
            search: None,
            since: None,
            before_id: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub id: i64,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T11:20:49.540Z`.
    pub timestamp: String,
    pub process: String,
    pub instance: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub message: String,
}

/// Counters shared with the writer thread.
#[derive(Default)]
pub(crate) struct Shared {
    pub dropped: AtomicU64,
    pub written: AtomicU64,
    /// Lines queued and not yet committed (or counted as dropped) by the writer.
    pub queued: AtomicUsize,
    /// Their bytes ([`Pending::cost`]).
    pub queued_bytes: AtomicUsize,
    /// The most message bytes committed in one transaction so far (tests).
    #[cfg(test)]
    pub largest_batch: AtomicUsize,
}

struct Inner {
    tx: Sender<Msg>,
    /// At most this many lines wait for the writer.
    queue: usize,
    /// At most this many bytes wait for the writer.
    queue_bytes: usize,
    /// Longer messages are cut.
    max_line: usize,
    shared: Arc<Shared>,
    /// Accepted lines per process, then per instance (two lookups, no allocation on a hit).
    accepted: Mutex<HashMap<String, HashMap<String, u64>>>,
    events: broadcast::Sender<Arc<LogLine>>,
    reader: Mutex<Connection>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

/// The log store handle (cheap to clone). Dropping the last handle stops the writer after it
/// commits what was queued.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// A poisoned lock is still usable here: every update under these locks is a single insert,
/// increment or `take`.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    /// Opens (or creates) the store in `db_path`, creating only its own tables, and starts the
    /// writer thread. Lines from earlier runs are kept.
    pub fn open(db_path: &Path, opts: LogOptions) -> Result<LogStore, LogError> {
        let max_line = opts.max_line.max(CUT_MARK.len());
        let opts = LogOptions {
            queue: opts.queue.max(1),
            queue_bytes: opts.queue_bytes.max(max_line.saturating_mul(4)),
            batch: opts.batch.max(1),
            max_line,
            ..opts
        };
        let conn = store::open_writer(db_path)?;
        let reader = store::open_reader(db_path)?;
        // Unbounded channel, bounded by `Shared::queued`: a preallocated `sync_channel` of
        // 65,536 slots would hold ~6 MB of memory for as long as ten runs.
        let (tx, rx) = mpsc::channel();
        let (queue, queue_bytes) = (opts.queue, opts.queue_bytes);
        let (events, _) = broadcast::channel(SUBSCRIBE_CAPACITY);
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            conn,
            rx,
            opts,
            shared: shared.clone(),
            events: events.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("ten-logs".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::Io(format!("cannot start the log writer thread: {e}")))?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                tx,
                queue,
                queue_bytes,
                max_line,
                shared,
                accepted: Mutex::new(HashMap::new()),
                events,
                reader: Mutex::new(reader),
                writer: Mutex::new(Some(handle)),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Queues one line, stamped now. Never blocks: when the queue is full (in lines or bytes)
    /// or the store is closed, the line is counted in [`LogStore::dropped`] instead. A message
    /// longer than `max_line` bytes is cut there and marked with [`CUT_MARK`].
    pub fn record(&self, process: &str, instance: &str, stream: Stream, message: &str) {
        self.enqueue(
            store::millis(SystemTime::now()),
            process,
            instance,
            stream,
            message,
        );
    }

    fn enqueue(&self, ts_ms: i64, process: &str, instance: &str, stream: Stream, message: &str) {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message = cut(message, inner.max_line);
        let cost = message.len() + process.len() + instance.len() + LINE_OVERHEAD;
        if inner.shared.queued.fetch_add(1, Ordering::AcqRel) >= inner.queue {
            inner.shared.queued.fetch_sub(1, Ordering::AcqRel);
            inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let bytes = inner.shared.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if bytes.saturating_add(cost) > inner.queue_bytes {
            inner.shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            inner.shared.queued.fetch_sub(1, Ordering::AcqRel);
            inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let line = Pending {
            ts_ms,
            process: process.to_owned(),
            instance: instance.to_owned(),
            stream,
            message: message.into_owned(),
            cost,
        };
        match inner.tx.send(Msg::Line(line)) {
            Ok(()) => {
                let mut accepted = lock(&inner.accepted);
                if let Some(n) = accepted.get_mut(process).and_then(|m| m.get_mut(instance)) {
                    *n += 1;
                } else {
                    *accepted
                        .entry(process.to_owned())
                        .or_default()
                        .entry(instance.to_owned())
                        .or_default() += 1;
                }
            }
            Err(_) => {
                // The writer is gone.
                inner.shared.queued.fetch_sub(1, Ordering::AcqRel);
                inner.shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
                inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines matching `q`, newest first. A malformed `search` is [`LogError::BadSearch`].
    pub fn query(&self, q: &LogQuery) -> Result<Vec<LogLine>, LogError> {
        query::run(&lock(&self.inner.reader), q)
    }

    /// Lines as they are committed, with their ids. A receiver that falls more than 4096 lines
    /// behind gets `RecvError::Lagged(n)`: report it (SSE `lagged` event), never hide it.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.inner.events.subscribe()
    }

    /// Blocks until every line recorded before the call is committed (or the store is closed).
    /// From async code, call it inside `spawn_blocking`.
    pub fn flush(&self) {
        self.send_and_wait(Msg::Flush);
    }

    fn send_and_wait(&self, msg: impl FnOnce(mpsc::Sender<()>) -> Msg) {
        if self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        let (reply, done) = mpsc::channel();
        // Control messages are not counted against the queue: never dropped.
        if self.inner.tx.send(msg(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// New retention limits (`ten reload`: `log_retention`, `log_max_rows`, `log_max_bytes`;
    /// zero: no limit of that kind): the writer applies them in its next pass, at once.
    pub fn set_limits(&self, retention: Duration, max_rows: u64, max_bytes: u64) {
        if self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        let _ = self.inner.tx.send(Msg::Limits(writer::Limits {
            retention,
            max_rows,
            max_bytes,
        }));
    }

    /// Runs retention now, until nothing is due (tests).
    #[cfg(test)]
    fn retain_now(&self) {
        self.send_and_wait(Msg::Retain);
    }

    /// Lines dropped because the queue was full (lines or bytes), the store was closed, or a
    /// batch failed to commit (that last case is also logged).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// Recorded lines committed to the database by this handle's writer (the writer's own
    /// "lines dropped" reports are not counted).
    pub fn written(&self) -> u64 {
        self.inner.shared.written.load(Ordering::Relaxed)
    }

    /// Lines accepted per (process, instance), sorted, for `tenement_log_lines_total`.
    pub fn lines_by_instance(&self) -> Vec<((String, String), u64)> {
        let accepted = lock(&self.inner.accepted);
        let mut out: Vec<_> = accepted
            .iter()
            .flat_map(|(p, m)| m.iter().map(|(i, n)| ((p.clone(), i.clone()), *n)))
            .collect();
        out.sort();
        out
    }

    /// Commits what is queued and stops the writer thread. Idempotent; later lines are dropped.
    pub fn close(&self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let Some(handle) = lock(&self.writer).take() else {
            return;
        };
        // If the writer is gone already the send fails and join returns at once.
        let _ = self.tx.send(Msg::Stop);
        if handle.join().is_err() {
            tracing::error!("log store: the writer thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl LogSink for LogStore {
    fn line(&self, instance: &InstanceName, stream: Stream, line: &str) {
        self.record(&instance.process, &instance.id, stream, line);
    }

    fn max_line(&self) -> usize {
        self.inner.max_line
    }
}

/// `message` if it has at most `max` bytes plus the length of [`CUT_MARK`] (a line the capture
/// already cut and marked), else its first `max` bytes (never half a character) and the mark.
fn cut(message: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if message.len() <= max.saturating_add(CUT_MARK.len()) {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{CUT_MARK}", &message[..end]))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_writer;
