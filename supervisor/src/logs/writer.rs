//! The writer thread: the only owner of the write connection. It drains the channel, commits
//! batches in one short transaction each (bounded in lines and bytes), publishes committed
//! lines, reports dropped lines, and applies retention.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use tokio::sync::broadcast;

use super::store::{self, duration_ms, millis, rfc3339_ms, RETENTION_CHUNK};
use super::{LogLine, LogOptions, Shared, Stream};

/// How often retention runs while rows come in (fewer than [`RETENTION_ROWS`] of them). With
/// no new rows, only the age limit can be due: retention then runs when the oldest row expires
/// (and at most every [`IDLE_WAKE`] otherwise), so an idle server's writer does no SQL.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// The longest the writer sleeps with nothing to do (a backstop; it does nothing when it wakes
/// unless something is due).
const IDLE_WAKE: Duration = Duration::from_secs(60);
/// Retention also runs after this many inserted rows.
const RETENTION_ROWS: u64 = 50_000;

/// A line waiting to be written.
pub(crate) struct Pending {
    pub ts_ms: i64,
    pub process: String,
    pub instance: String,
    pub stream: Stream,
    pub message: String,
    /// What it counts against the queue's bytes (0: the writer's own line, never queued).
    pub cost: usize,
}

impl Pending {
    fn queued(&self) -> bool {
        self.cost > 0
    }
}

pub(crate) enum Msg {
    Line(Pending),
    /// Answered once every message sent before it is committed.
    Flush(Sender<()>),
    /// Commit what is queued, then exit.
    Stop,
    /// New retention limits (a reload): the next pass applies them.
    Limits(Limits),
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

/// The limits a reload may change (`[settings] log_retention`, `log_max_rows`,
/// `log_max_bytes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub retention: Duration,
    pub max_rows: u64,
    pub max_bytes: u64,
}

/// What ended a batch besides it being full.
enum After {
    Nothing,
    Limits(Limits),
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
        let mut drops = Drops {
            reported: 0,
            at: Instant::now(),
        };
        // When the age limit next deletes a row (the oldest row's expiry); None: not known to
        // be due (no rows, or no age limit) until rows come in.
        let mut age_due = self.age_due();
        loop {
            let now = Instant::now();
            let wait = if backlog {
                Duration::ZERO
            } else {
                let mut due = now + IDLE_WAKE;
                if since_retention > 0 {
                    due = due.min(last_retention + RETENTION_EVERY);
                }
                if let Some(at) = age_due {
                    due = due.min(at);
                }
                if self.shared.dropped.load(Ordering::Relaxed) > drops.reported {
                    due = due.min(drops.at + self.opts.drop_report_every);
                }
                due.saturating_duration_since(now)
            };
            let after = match self.rx.recv_timeout(wait) {
                Ok(Msg::Line(p)) => {
                    batch.push(p);
                    self.fill(&mut batch)
                }
                Ok(Msg::Flush(reply)) => After::Reply(reply),
                Ok(Msg::Limits(l)) => After::Limits(l),
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
                After::Limits(l) => {
                    self.opts.retention = l.retention;
                    self.opts.max_rows = l.max_rows;
                    self.opts.max_bytes = l.max_bytes;
                    age_due = self.age_due();
                    // A retention pass now, and more while it deletes (as a backlog).
                    backlog = true;
                }
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
                || (since_retention > 0 && last_retention.elapsed() >= RETENTION_EVERY)
                || age_due.is_some_and(|at| Instant::now() >= at)
            {
                backlog = self.retain(&mut rows);
                last_retention = Instant::now();
                since_retention = 0;
                if !backlog {
                    age_due = self.age_due();
                }
            }
            if drops.at.elapsed() >= self.opts.drop_report_every {
                rows += self.report_drops(&mut drops, &mut batch);
            }
        }
    }

    /// Writes "N lines dropped" (process `ten`, instance `logs`, stderr) when lines were
    /// dropped since the last report. Returns the rows written.
    fn report_drops(&mut self, drops: &mut Drops, batch: &mut Vec<Pending>) -> u64 {
        let now = self.shared.dropped.load(Ordering::Relaxed);
        let new = now.saturating_sub(drops.reported);
        let secs = drops.at.elapsed().as_secs();
        drops.at = Instant::now();
        if new == 0 {
            return 0;
        }
        drops.reported = now;
        let message = format!(
            "{new} log lines dropped in the last {secs}s (the log queue was full: more than \
             {} lines or {} bytes waiting); {now} since start",
            self.opts.queue, self.opts.queue_bytes
        );
        tracing::warn!("log store: {message}");
        batch.push(Pending {
            ts_ms: millis(SystemTime::now()),
            process: "ten".into(),
            instance: "logs".into(),
            stream: Stream::Stderr,
            message,
            cost: 0,
        });
        self.commit(batch)
    }

    /// Adds lines to a started batch until it is full, `flush_every` has passed since its first
    /// line, or a control message arrives.
    fn fill(&self, batch: &mut Vec<Pending>) -> After {
        let deadline = Instant::now() + self.opts.flush_every;
        let mut bytes: usize = batch.iter().map(|p| p.message.len()).sum();
        while batch.len() < self.opts.batch && bytes < self.opts.batch_bytes {
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
                Msg::Line(p) => {
                    bytes += p.message.len();
                    batch.push(p);
                }
                Msg::Flush(reply) => return After::Reply(reply),
                Msg::Limits(l) => return After::Limits(l),
                Msg::Stop => return After::Stop,
                #[cfg(test)]
                Msg::Retain(reply) => return After::Retain(reply),
            }
        }
        After::Nothing
    }

    /// On stop: commit whatever is still queued (it was accepted), answer flushes, exit.
    fn drain(&mut self, batch: &mut Vec<Pending>) {
        let mut bytes = 0;
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Line(p)) => {
                    bytes += p.message.len();
                    batch.push(p);
                    if batch.len() >= self.opts.batch || bytes >= self.opts.batch_bytes {
                        self.commit(batch);
                        bytes = 0;
                    }
                }
                Ok(Msg::Flush(reply)) => {
                    self.commit(batch);
                    bytes = 0;
                    let _ = reply.send(());
                }
                #[cfg(test)]
                Ok(Msg::Retain(reply)) => {
                    let _ = reply.send(());
                }
                Ok(Msg::Stop | Msg::Limits(_)) => {}
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
        let (mut queued, mut cost, mut bytes) = (0usize, 0usize, 0usize);
        for p in batch.iter() {
            queued += usize::from(p.queued());
            cost += p.cost;
            bytes += p.message.len();
        }
        self.shared.queued.fetch_sub(queued, Ordering::AcqRel);
        self.shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
        #[cfg(test)]
        self.shared
            .largest_batch
            .fetch_max(bytes, Ordering::Relaxed);
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
            tx.prepare_cached(store::ADD_BYTES)?
                .execute([i64::try_from(bytes).unwrap_or(i64::MAX)])?;
            tx.commit()
        })();
        let n = batch.len() as u64;
        if let Err(e) = result {
            tracing::warn!(error = %e, lines = n, "log store: a batch could not be written; its lines are counted as dropped");
            self.shared
                .dropped
                .fetch_add(queued as u64, Ordering::Relaxed);
            batch.clear();
            return 0;
        }
        self.shared
            .written
            .fetch_add(queued as u64, Ordering::Relaxed);
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

    /// When the oldest stored row passes the age limit (None: no age limit, no rows, or the
    /// store cannot say; retention by age then waits for new rows).
    fn age_due(&self) -> Option<Instant> {
        if self.opts.retention.is_zero() {
            return None;
        }
        let oldest = match store::oldest_ts(&self.conn) {
            Ok(ts) => ts?,
            Err(e) => {
                tracing::warn!(error = %e, "log store: cannot read the oldest row's time");
                return None;
            }
        };
        let expires = oldest.saturating_add(duration_ms(self.opts.retention));
        let left = u64::try_from(expires.saturating_sub(millis(SystemTime::now()))).unwrap_or(0);
        // One millisecond past the expiry, so the row is older than the cutoff when it runs.
        Some(Instant::now() + Duration::from_millis(left.saturating_add(1)))
    }

    /// One bounded round of retention: at most one chunk by age, one by count and one by
    /// bytes, each in its own transaction. Returns true if more rows are due (run again soon).
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
        if self.opts.max_bytes > 0 {
            let bytes = store::stored_bytes(&self.conn);
            match bytes.and_then(|b| {
                if b <= self.opts.max_bytes {
                    return Ok((0, false));
                }
                let excess = b - self.opts.max_bytes;
                let n = store::delete_oldest_bytes(&self.conn, excess, RETENTION_CHUNK)?;
                Ok((n, store::stored_bytes(&self.conn)? > self.opts.max_bytes))
            }) {
                Ok((n, over)) => {
                    *rows = rows.saturating_sub(n);
                    more |= n > 0 && over;
                }
                Err(e) => tracing::warn!(error = %e, "log store: retention by bytes failed"),
            }
        }
        more
    }
}

/// The last "lines dropped" report: the count it covered, and when.
struct Drops {
    reported: u64,
    at: Instant,
}
