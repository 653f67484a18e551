//! The SQLite side of the log store: connections, schema, the insert and retention statements,
//! and timestamps (integer milliseconds in the table, RFC 3339 on the way out).
//!
//! The database file is shared with other components (`{data_dir}/tenement.db`): everything
//! here creates or touches only `logs`, `logs_fts` and their indexes and triggers (plus the
//! `logs` row of `schema_version`, through [`crate::db`]).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::LogError;
use crate::db::{self, DbError, Schema};

/// Rows removed per retention statement, so the writer never stalls for long.
pub(crate) const RETENTION_CHUNK: u64 = 5_000;

/// `id` uses AUTOINCREMENT so ids are never reused, even after retention empties the table:
/// a client paging with `before_id` or resuming a stream never sees an old id come back.
///
/// Deletes reach the FTS index through a trigger. Inserts do not: the writer indexes each
/// batch with one `INSERT ... SELECT` ([`INDEX_BATCH`]) in the batch's transaction. A per-row
/// trigger opens a statement savepoint per line, and FTS5 flushes its pending terms to a new
/// segment at every savepoint: that made ingest 2.6x slower (44k vs 117k lines/s at 100k rows).
pub(crate) const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS logs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       INTEGER NOT NULL,
    process  TEXT NOT NULL,
    instance TEXT NOT NULL,
    stream   TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts);
CREATE INDEX IF NOT EXISTS logs_process_instance ON logs (process, instance, id);
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5 (
    message, content = 'logs', content_rowid = 'id'
);
CREATE TRIGGER IF NOT EXISTS logs_fts_delete AFTER DELETE ON logs BEGIN
    INSERT INTO logs_fts (logs_fts, rowid, message) VALUES ('delete', old.id, old.message);
END;
";

/// 2: the running total of message bytes (`log_max_bytes`), one row. Deletes keep it by
/// trigger (any delete, by any path); inserts by one `UPDATE` per batch ([`ADD_BYTES`], in the
/// batch's transaction: a per-row insert trigger would cost a statement per line). The
/// migration sums what an older store holds, once.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS logs_size (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL
);
INSERT OR REPLACE INTO logs_size (id, bytes)
    SELECT 1, COALESCE(SUM(octet_length(message)), 0) FROM logs;
CREATE TRIGGER IF NOT EXISTS logs_size_delete AFTER DELETE ON logs BEGIN
    UPDATE logs_size SET bytes = bytes - octet_length(old.message) WHERE id = 1;
END;
";

/// The log tables (component `logs` in `schema_version`). 1: the schema from before versions;
/// 2: `logs_size`.
const SCHEMA: Schema = Schema {
    component: "logs",
    migrations: &[SCHEMA_V1, SCHEMA_V2],
};

pub(crate) const INSERT: &str =
    "INSERT INTO logs (ts, process, instance, stream, message) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Indexes a committed batch's ids `?1..=?2`, in the batch's transaction.
pub(crate) const INDEX_BATCH: &str =
    "INSERT INTO logs_fts (rowid, message) SELECT id, message FROM logs WHERE id BETWEEN ?1 AND ?2";

/// Adds a committed batch's message bytes to the running total, in the batch's transaction.
pub(crate) const ADD_BYTES: &str = "UPDATE logs_size SET bytes = bytes + ?1 WHERE id = 1";

/// The oldest rows with their message sizes (`octet_length` does not read the text itself).
const OLDEST_SIZES: &str = "SELECT id, octet_length(message) FROM logs ORDER BY id LIMIT ?1";

/// Oldest-first by age: the `ts` index finds them.
const DELETE_OLDER: &str =
    "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE ts < ?1 ORDER BY ts LIMIT ?2)";

/// Oldest-first by id (rowid order, no index needed).
const DELETE_OLDEST: &str =
    "DELETE FROM logs WHERE id IN (SELECT id FROM logs ORDER BY id LIMIT ?1)";

impl From<DbError> for LogError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlite(e) => LogError::Sqlite(e),
            // "cannot open {path}: {e}", and the schema refusals, as plain text.
            other => LogError::Io(other.to_string()),
        }
    }
}

/// The writer's connection: creates the parent directory and our tables if needed.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, LogError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            LogError::Io(format!(
                "cannot create the log directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(db::open(path, db::WAL, Some(&SCHEMA))?)
}

/// The readers' connection (opened after the writer created the schema).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, LogError> {
    let pragmas = [db::WAL, &[("query_only", "ON")]].concat();
    Ok(db::open(path, &pragmas, None)?)
}

pub(crate) fn count_rows(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM logs", [], |r| r.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
}

/// The oldest stored row's time (ms since the epoch), None when the store is empty (one index
/// lookup).
pub(crate) fn oldest_ts(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT min(ts) FROM logs", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
}

/// Deletes at most `limit` rows older than `cutoff_ms`; returns how many went.
pub(crate) fn delete_older_than(
    conn: &Connection,
    cutoff_ms: i64,
    limit: u64,
) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached(DELETE_OLDER)?
        .execute(rusqlite::params![cutoff_ms, to_i64(limit)])?;
    Ok(n as u64)
}

/// Deletes the `limit` oldest rows (by id); returns how many went.
pub(crate) fn delete_oldest(conn: &Connection, limit: u64) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached(DELETE_OLDEST)?
        .execute([to_i64(limit)])?;
    Ok(n as u64)
}

/// The message bytes the store holds (the running total in `logs_size`).
pub(crate) fn stored_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT bytes FROM logs_size WHERE id = 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| u64::try_from(n).unwrap_or(0))
}

/// Deletes the oldest rows whose messages add up to at least `excess` bytes, at most `limit`
/// rows; returns how many went.
pub(crate) fn delete_oldest_bytes(
    conn: &Connection,
    excess: u64,
    limit: u64,
) -> rusqlite::Result<u64> {
    let mut last = None;
    let mut sum = 0u64;
    {
        let mut stmt = conn.prepare_cached(OLDEST_SIZES)?;
        let mut rows = stmt.query([to_i64(limit)])?;
        while let Some(r) = rows.next()? {
            last = Some(r.get::<_, i64>(0)?);
            sum = sum.saturating_add(u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0));
            if sum >= excess {
                break;
            }
        }
    }
    let Some(last) = last else { return Ok(0) };
    let n = conn
        .prepare_cached("DELETE FROM logs WHERE id <= ?1")?
        .execute([last])?;
    Ok(n as u64)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch (negative before it).
pub(crate) fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Milliseconds in a duration, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub use tenement_conf::rfc3339_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trips_around_the_epoch() {
        assert_eq!(millis(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(millis(UNIX_EPOCH - Duration::from_millis(5)), -5);
    }
}
