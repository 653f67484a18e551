//! The writer thread: the only owner of the write connection. It drains the channel, commits
//! batches in one transaction each, publishes committed lines, and applies retention.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use tokio::sync::broadcast;

use super::store::{self, duration_ms, millis, rfc3339_ms, RETENTION_CHUNK};
use super::{LogLine, LogOptions, Shared, Stream};

/// How often retention runs when fewer than [`RETENTION_ROWS`] rows came in.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Retention also runs after this many inserted rows.
const RETENTION_ROWS: u64 = 50_000;

/// A line waiting to be written.
pub(crate) struct Pending {
    pub ts_ms: i64,
    pub process: String,
    pub instance: String,
    pub stream: Stream,
    pub message: String,
}

pub(crate) enum Msg {
    Line(Pending),
    /// Answered once every message sent before it is committed.
    Flush(Sender<()>),
    /// Commit what is queued, then exit.
    Stop,
    /// Run retention until nothing is left to delete, then answer.
    #[cfg(test)]
    Retain(Sender<()>),
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub rx: Receiver<Msg>,
    pub opts: LogOptions,
    pub shared: Arc<Shared>,
    pub events: broadcast::Sender<Arc<LogLine>>,
}

/// What ended a batch besides it being full.
enum After {
    Nothing,
    Reply(Sender<()>),
    Stop,
    #[cfg(test)]
    Retain(Sender<()>),
}

impl Writer {
    pub fn run(mut self) {
        let mut rows = match store::count_rows(&self.conn) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "log store: cannot count rows; retention by count starts from 0");
                0
            }
        };
        let mut batch: Vec<Pending> = Vec::with_capacity(self.opts.batch);
        let mut last_retention = Instant::now();
        let mut since_retention = 0u64;
        let mut backlog = false;
        loop {
            let wait = if backlog {
                Duration::ZERO
            } else {
                (last_retention + RETENTION_EVERY).saturating_duration_since(Instant::now())
            };
            let after = match self.rx.recv_timeout(wait) {
                Ok(Msg::Line(p)) => {
                    batch.push(p);
                    self.fill(&mut batch)
                }
                Ok(Msg::Flush(reply)) => After::Reply(reply),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => After::Stop,
                #[cfg(test)]
                Ok(Msg::Retain(reply)) => After::Retain(reply),
                Err(RecvTimeoutError::Timeout) => After::Nothing,
            };
            let n = self.commit(&mut batch);
            rows += n;
            since_retention += n;
            match after {
                After::Nothing => {}
                After::Reply(reply) => {
                    let _ = reply.send(());
                }
                After::Stop => {
                    self.drain(&mut batch);
                    return;
                }
                #[cfg(test)]
                After::Retain(reply) => {
                    while self.retain(&mut rows) {}
                    let _ = reply.send(());
                }
            }
            if backlog
                || since_retention >= RETENTION_ROWS
                || last_retention.elapsed() >= RETENTION_EVERY
            {
                backlog = self.retain(&mut rows);
                last_retention = Instant::now();
                since_retention = 0;
            }
        }
    }

    /// Adds lines to a started batch until it is full, `flush_every` has passed since its first
    /// line, or a control message arrives.
    fn fill(&self, batch: &mut Vec<Pending>) -> After {
        let deadline = Instant::now() + self.opts.flush_every;
        while batch.len() < self.opts.batch {
            let msg = match self.rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => return After::Stop,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return After::Nothing;
                    }
                    match self.rx.recv_timeout(left) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => return After::Nothing,
                        Err(RecvTimeoutError::Disconnected) => return After::Stop,
                    }
                }
            };
            match msg {
                Msg::Line(p) => batch.push(p),
                Msg::Flush(reply) => return After::Reply(reply),
                Msg::Stop => return After::Stop,
                #[cfg(test)]
                Msg::Retain(reply) => return After::Retain(reply),
            }
        }
        After::Nothing
    }

    /// On stop: commit whatever is still queued (it was accepted), answer flushes, exit.
    fn drain(&mut self, batch: &mut Vec<Pending>) {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Line(p)) => {
                    batch.push(p);
                    if batch.len() >= self.opts.batch {
                        self.commit(batch);
                    }
                }
                Ok(Msg::Flush(reply)) => {
                    self.commit(batch);
                    let _ = reply.send(());
                }
                #[cfg(test)]
                Ok(Msg::Retain(reply)) => {
                    let _ = reply.send(());
                }
                Ok(Msg::Stop) => {}
                Err(_) => break,
            }
        }
        self.commit(batch);
    }

    /// Writes the batch in one transaction, then publishes it. Returns the rows written; a
    /// failed batch is counted as dropped and logged, never lost silently.
    fn commit(&mut self, batch: &mut Vec<Pending>) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        // These lines leave the queue now (committed, or counted as dropped below).
        self.shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let mut ids = Vec::with_capacity(batch.len());
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(store::INSERT)?;
                for p in batch.iter() {
                    ids.push(stmt.insert(rusqlite::params![
                        p.ts_ms,
                        p.process,
                        p.instance,
                        p.stream.as_str(),
                        p.message
                    ])?);
                }
            }
            if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
                tx.prepare_cached(store::INDEX_BATCH)?
                    .execute([first, last])?;
            }
            tx.commit()
        })();
        let n = batch.len() as u64;
        if let Err(e) = result {
            tracing::warn!(error = %e, lines = n, "log store: a batch could not be written; its lines are counted as dropped");
            self.shared.dropped.fetch_add(n, Ordering::Relaxed);
            batch.clear();
            return 0;
        }
        self.shared.written.fetch_add(n, Ordering::Relaxed);
        if self.events.receiver_count() > 0 {
            for (p, id) in batch.drain(..).zip(ids) {
                let _ = self.events.send(Arc::new(LogLine {
                    id,
                    timestamp: rfc3339_ms(p.ts_ms),
                    process: p.process,
                    instance: p.instance,
                    stream: p.stream.as_str().to_owned(),
                    message: p.message,
                }));
            }
        }
        batch.clear();
        n
    }

    /// One bounded round of retention: at most one chunk by age and one by count, each in its
    /// own transaction. Returns true if more rows are due (run again soon).
    fn retain(&mut self, rows: &mut u64) -> bool {
        let mut more = false;
        if !self.opts.retention.is_zero() {
            let cutoff = millis(SystemTime::now()).saturating_sub(duration_ms(self.opts.retention));
            match store::delete_older_than(&self.conn, cutoff, RETENTION_CHUNK) {
                Ok(n) => {
                    *rows = rows.saturating_sub(n);
                    more |= n == RETENTION_CHUNK;
                }
                Err(e) => tracing::warn!(error = %e, "log store: retention by age failed"),
            }
        }
        if self.opts.max_rows > 0 && *rows > self.opts.max_rows {
            let excess = (*rows - self.opts.max_rows).min(RETENTION_CHUNK);
            match store::delete_oldest(&self.conn, excess) {
                Ok(n) => {
                    *rows = rows.saturating_sub(n);
                    more |= n > 0 && *rows > self.opts.max_rows;
                }
                Err(e) => tracing::warn!(error = %e, "log store: retention by count failed"),
            }
        }
        more
    }
}
