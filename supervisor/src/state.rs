//! Desired state in SQLite (`{data_dir}/tenement.db`, table `instances`): which instances
//! should run, their weights, and the process group each one last ran in (so that a restart
//! after `kill -9` of `ten serve` can kill what it left behind). Opened through [`crate::db`]
//! as component `state`.
//!
//! The file is shared with the log store, whose writer takes the write lock many times a
//! second under a flood. Every write here waits for it (`busy_timeout`), and on
//! `SQLITE_BUSY`/`SQLITE_LOCKED` is tried again a few times with a growing pause
//! ([`BUSY_RETRIES`], [`BUSY_BACKOFF`]) before the error goes back to the caller.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use tenement_conf::InstanceName;

use crate::db::{self, DbError, Schema};

#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(#[from] DbError);

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError(DbError::Sqlite(e))
    }
}

/// The `instances` and `external_weights` tables (component `state` in `schema_version`).
pub(crate) const SCHEMA: Schema = Schema {
    component: "state",
    migrations: &[
        // 1: the schema from before versions existed.
        "CREATE TABLE IF NOT EXISTS instances (
            process TEXT NOT NULL,
            id      TEXT NOT NULL,
            weight  INTEGER NOT NULL,
            seq     INTEGER NOT NULL,
            pgid    INTEGER,
            PRIMARY KEY (process, id)
        );
        CREATE TABLE IF NOT EXISTS external_weights (
            process TEXT NOT NULL,
            id      TEXT NOT NULL,
            weight  INTEGER NOT NULL,
            PRIMARY KEY (process, id)
        );",
        // 2: `user = "dynamic"`: the uid each instance runs as (SPEC §12).
        "CREATE TABLE IF NOT EXISTS dynamic_users (
            process TEXT NOT NULL,
            id      TEXT NOT NULL,
            uid     INTEGER NOT NULL UNIQUE,
            PRIMARY KEY (process, id)
        );",
    ],
};

/// How many times a write that found the database busy is tried again (each try itself waits
/// up to [`crate::db::BUSY_TIMEOUT`] for the lock).
pub const BUSY_RETRIES: u32 = 5;
/// The pause before the first retry; it doubles each time, at most [`BUSY_BACKOFF_MAX`].
pub const BUSY_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two tries.
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether `e` says another connection holds the lock (worth trying again).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// One persisted instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Persisted {
    pub name: InstanceName,
    pub weight: u32,
    /// The process group of its last run, if it was running.
    pub pgid: Option<u32>,
}

pub struct StateStore {
    conn: Mutex<Connection>,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let conn = db::open(path, db::WAL, Some(&SCHEMA))?;
        Ok(StateStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the write `f`, again after a pause while the database is busy (at most
    /// [`BUSY_RETRIES`] more times); the last error is returned.
    fn write<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let mut pause = BUSY_BACKOFF;
        let mut tries = 0;
        loop {
            let result = f(&mut self.conn());
            match result {
                Err(e) if is_busy(&e) && tries < BUSY_RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "state store: busy, trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(BUSY_BACKOFF_MAX);
                }
                other => return other.map_err(StateError::from),
            }
        }
    }

    /// Every desired instance, in the order they were first spawned.
    pub fn load(&self) -> Result<Vec<Persisted>, StateError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT process, id, weight, pgid FROM instances ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(Persisted {
                name: InstanceName {
                    process: r.get(0)?,
                    id: r.get(1)?,
                },
                weight: r.get(2)?,
                pgid: r.get(3)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StateError::from)
    }

    /// Record that `name` should run with `weight` (keeps its place in the order). Returns
    /// whether the row is new.
    pub fn upsert(&self, name: &InstanceName, weight: u32) -> Result<bool, StateError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seq: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM instances WHERE process = ?1 AND id = ?2",
                    params![name.process, name.id],
                    |r| r.get(0),
                )
                .optional()?;
            match seq {
                Some(_) => tx.execute(
                    "UPDATE instances SET weight = ?3 WHERE process = ?1 AND id = ?2",
                    params![name.process, name.id, weight],
                )?,
                None => tx.execute(
                    "INSERT INTO instances (process, id, weight, seq)
                     VALUES (?1, ?2, ?3, COALESCE((SELECT MAX(seq) FROM instances), 0) + 1)",
                    params![name.process, name.id, weight],
                )?,
            };
            tx.commit()?;
            Ok(seq.is_none())
        })
    }

    /// Set several weights in one transaction.
    pub fn set_weights(&self, weights: &[(InstanceName, u32)]) -> Result<(), StateError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (name, w) in weights {
                tx.execute(
                    "UPDATE instances SET weight = ?3 WHERE process = ?1 AND id = ?2",
                    params![name.process, name.id, w],
                )?;
            }
            tx.commit()
        })
    }

    pub fn set_pgid(&self, name: &InstanceName, pgid: Option<u32>) -> Result<(), StateError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE instances SET pgid = ?3 WHERE process = ?1 AND id = ?2",
                params![name.process, name.id, pgid],
            )
        })?;
        Ok(())
    }

    /// Weights set on external upstreams (`legacy:0`).
    pub fn external_weights(&self) -> Result<Vec<(InstanceName, u32)>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT process, id, weight FROM external_weights")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                InstanceName {
                    process: r.get(0)?,
                    id: r.get(1)?,
                },
                r.get(2)?,
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StateError::from)
    }

    pub fn set_external_weight(&self, name: &InstanceName, weight: u32) -> Result<(), StateError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO external_weights (process, id, weight) VALUES (?1, ?2, ?3)
                 ON CONFLICT (process, id) DO UPDATE SET weight = excluded.weight",
                params![name.process, name.id, weight],
            )
        })?;
        Ok(())
    }

    /// The uid of `name` under `user = "dynamic"`: the one it had, else the lowest of
    /// `range` held by no other instance and for which `taken` says no (a uid the system
    /// already gives a user). Recorded, so it is stable across restarts of `ten serve`.
    pub fn dynamic_uid(
        &self,
        name: &InstanceName,
        range: std::ops::RangeInclusive<u32>,
        taken: &dyn Fn(u32) -> bool,
    ) -> Result<Option<u32>, StateError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let had: Option<u32> = tx
                .query_row(
                    "SELECT uid FROM dynamic_users WHERE process = ?1 AND id = ?2",
                    params![name.process, name.id],
                    |r| r.get(0),
                )
                .optional()?;
            if had.is_some() {
                return Ok(had);
            }
            let held: std::collections::HashSet<u32> = tx
                .prepare("SELECT uid FROM dynamic_users")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let Some(uid) = range.clone().find(|u| !held.contains(u) && !taken(*u)) else {
                return Ok(None);
            };
            tx.execute(
                "INSERT INTO dynamic_users (process, id, uid) VALUES (?1, ?2, ?3)",
                params![name.process, name.id, uid],
            )?;
            tx.commit()?;
            Ok(Some(uid))
        })
    }

    /// `name` no longer holds its dynamic uid (its DATA_DIR is gone with it).
    pub fn release_uid(&self, name: &InstanceName) -> Result<(), StateError> {
        self.write(|conn| {
            conn.execute(
                "DELETE FROM dynamic_users WHERE process = ?1 AND id = ?2",
                params![name.process, name.id],
            )
        })?;
        Ok(())
    }

    pub fn remove(&self, name: &InstanceName) -> Result<(), StateError> {
        self.write(|conn| {
            conn.execute(
                "DELETE FROM instances WHERE process = ?1 AND id = ?2",
                params![name.process, name.id],
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name(p: &str, id: &str) -> InstanceName {
        InstanceName {
            process: p.into(),
            id: id.into(),
        }
    }

    #[test]
    fn round_trips_order_weights_and_pgids() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tenement.db");
        {
            let s = StateStore::open(&db).unwrap();
            s.upsert(&name("api", "v1"), 100).unwrap();
            s.upsert(&name("api", "v2"), 0).unwrap();
            s.upsert(&name("web", "a"), 100).unwrap();
            s.set_weights(&[(name("api", "v1"), 0), (name("api", "v2"), 100)])
                .unwrap();
            s.set_pgid(&name("web", "a"), Some(4242)).unwrap();
            s.upsert(&name("api", "v1"), 10).unwrap(); // keeps its place
            s.remove(&name("api", "v2")).unwrap();
        }
        let s = StateStore::open(&db).unwrap();
        let got = s.load().unwrap();
        assert_eq!(
            got,
            vec![
                Persisted {
                    name: name("api", "v1"),
                    weight: 10,
                    pgid: None
                },
                Persisted {
                    name: name("web", "a"),
                    weight: 100,
                    pgid: Some(4242)
                },
            ]
        );
    }

    /// Review S3: another connection (the log writer) holding the write lock longer than
    /// `busy_timeout` made a weight write fail with "database is locked". It is tried again.
    #[test]
    fn a_write_waits_out_a_lock_held_longer_than_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tenement.db");
        let s = StateStore::open(&db).unwrap();
        s.upsert(&name("api", "v1"), 100).unwrap();
        s.conn().busy_timeout(Duration::from_millis(10)).unwrap();
        let holder = Connection::open(&db).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let release = std::thread::spawn(move || {
            held_tx.send(()).unwrap();
            // Far longer than busy_timeout, shorter than the retries' pauses together.
            std::thread::sleep(Duration::from_millis(150));
            holder.execute_batch("COMMIT").unwrap();
        });
        held_rx.recv().unwrap();
        s.set_weights(&[(name("api", "v1"), 7)]).unwrap();
        release.join().unwrap();
        assert_eq!(s.load().unwrap()[0].weight, 7);
    }

    #[test]
    fn a_lock_never_released_is_an_error_after_the_retries() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tenement.db");
        let s = StateStore::open(&db).unwrap();
        s.upsert(&name("api", "v1"), 100).unwrap();
        s.conn().busy_timeout(Duration::from_millis(1)).unwrap();
        let holder = Connection::open(&db).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let e = s.set_weights(&[(name("api", "v1"), 7)]).unwrap_err();
        assert!(e.to_string().contains("locked"), "{e}");
        holder.execute_batch("ROLLBACK").unwrap();
        assert_eq!(s.load().unwrap()[0].weight, 100);
    }

    #[test]
    fn dynamic_uids_are_stable_lowest_free_and_never_shared() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tenement.db");
        let none = |_: u32| false;
        {
            let s = StateStore::open(&db).unwrap();
            // 100 is taken by a user of the system: skipped.
            let taken = |u: u32| u == 100;
            assert_eq!(
                s.dynamic_uid(&name("a", "1"), 99..=103, &taken).unwrap(),
                Some(99)
            );
            assert_eq!(
                s.dynamic_uid(&name("a", "2"), 99..=103, &taken).unwrap(),
                Some(101)
            );
            assert_eq!(
                s.dynamic_uid(&name("a", "1"), 99..=103, &taken).unwrap(),
                Some(99)
            );
            assert_eq!(
                s.dynamic_uid(&name("b", "1"), 99..=103, &taken).unwrap(),
                Some(102)
            );
            s.release_uid(&name("a", "1")).unwrap();
        }
        // After a restart: the same uids; the released one is the lowest free again.
        let s = StateStore::open(&db).unwrap();
        assert_eq!(
            s.dynamic_uid(&name("a", "2"), 99..=103, &none).unwrap(),
            Some(101)
        );
        assert_eq!(
            s.dynamic_uid(&name("c", "1"), 99..=103, &none).unwrap(),
            Some(99)
        );
        assert_eq!(
            s.dynamic_uid(&name("c", "2"), 99..=103, &none).unwrap(),
            Some(100)
        );
        assert_eq!(
            s.dynamic_uid(&name("c", "3"), 99..=103, &none).unwrap(),
            Some(103)
        );
        // The range is used up: none, never a uid held by another instance.
        assert_eq!(
            s.dynamic_uid(&name("c", "4"), 99..=103, &none).unwrap(),
            None
        );
    }

    #[test]
    fn a_database_from_before_versions_opens_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tenement.db");
        {
            // What the code before schema versions created (migration 1 is that text).
            let old = Connection::open(&db).unwrap();
            old.execute_batch(SCHEMA.migrations[0]).unwrap();
            old.execute(
                "INSERT INTO instances (process, id, weight, seq) VALUES ('api', 'v1', 7, 1)",
                [],
            )
            .unwrap();
        }
        let s = StateStore::open(&db).unwrap();
        assert_eq!(s.load().unwrap()[0].weight, 7);
        let version: i64 = s
            .conn()
            .query_row(
                "SELECT version FROM schema_version WHERE component = 'state'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 2);
        drop(s);
        // Re-open: a no-op.
        assert_eq!(StateStore::open(&db).unwrap().load().unwrap().len(), 1);
    }
}
