//! Desired state in SQLite (`{data_dir}/tenement.db`, table `instances`): which instances
//! should run, their weights, and the process group each one last ran in (so that a restart
//! after `kill -9` of `ten serve` can kill what it left behind). Opened through [`crate::db`]
//! as component `state`.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
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
    ],
};

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
        let conn = self.conn();
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM instances WHERE process = ?1 AND id = ?2",
                params![name.process, name.id],
                |r| r.get(0),
            )
            .optional()?;
        match seq {
            Some(_) => conn.execute(
                "UPDATE instances SET weight = ?3 WHERE process = ?1 AND id = ?2",
                params![name.process, name.id, weight],
            )?,
            None => conn.execute(
                "INSERT INTO instances (process, id, weight, seq)
                 VALUES (?1, ?2, ?3, COALESCE((SELECT MAX(seq) FROM instances), 0) + 1)",
                params![name.process, name.id, weight],
            )?,
        };
        Ok(seq.is_none())
    }

    /// Set several weights in one transaction.
    pub fn set_weights(&self, weights: &[(InstanceName, u32)]) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (name, w) in weights {
            tx.execute(
                "UPDATE instances SET weight = ?3 WHERE process = ?1 AND id = ?2",
                params![name.process, name.id, w],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn set_pgid(&self, name: &InstanceName, pgid: Option<u32>) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE instances SET pgid = ?3 WHERE process = ?1 AND id = ?2",
            params![name.process, name.id, pgid],
        )?;
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
        self.conn().execute(
            "INSERT INTO external_weights (process, id, weight) VALUES (?1, ?2, ?3)
             ON CONFLICT (process, id) DO UPDATE SET weight = excluded.weight",
            params![name.process, name.id, weight],
        )?;
        Ok(())
    }

    pub fn remove(&self, name: &InstanceName) -> Result<(), StateError> {
        self.conn().execute(
            "DELETE FROM instances WHERE process = ?1 AND id = ?2",
            params![name.process, name.id],
        )?;
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
        assert_eq!(version, 1);
        drop(s);
        // Re-open: a no-op.
        assert_eq!(StateStore::open(&db).unwrap().load().unwrap().len(), 1);
    }
}
