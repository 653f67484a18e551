//! The deploy audit log (`deploy_log` in tenement.db): every deploy, route, weight change and
//! stop, with its result. Shown by `ten deploy --history`.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use serde_json::{json, Value};
use tenement_supervisor::db::{self, Schema};

/// The `deploy_log` table (component `audit` in `schema_version`, see `tenement_supervisor::db`).
const SCHEMA: Schema = Schema {
    component: "audit",
    migrations: &[
        // 1: the schema from before versions existed.
        "CREATE TABLE IF NOT EXISTS deploy_log (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            action TEXT NOT NULL,
            process TEXT NOT NULL,
            instance TEXT NOT NULL,
            result TEXT NOT NULL
        );",
    ],
};

pub struct Audit {
    db: Mutex<Connection>,
}

impl Audit {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = db::open(path, &[], Some(&SCHEMA))?;
        Ok(Audit {
            db: Mutex::new(conn),
        })
    }

    /// Record one action; a failure to record is logged, never fatal.
    pub fn record(&self, action: &str, process: &str, instance: &str, result: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // The insert may wait for an fsync: off the worker that also proxies.
        tenement_supervisor::blocking(|| {
            let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = db.execute(
                "INSERT INTO deploy_log (ts_ms, action, process, instance, result) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now, action, process, instance, result],
            ) {
                tracing::error!("deploy_log: {e}");
            }
        });
    }

    /// The newest `limit` entries, newest first.
    pub fn history(&self, process: Option<&str>, limit: usize) -> anyhow::Result<Vec<Value>> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = db.prepare(
            "SELECT id, ts_ms, action, process, instance, result FROM deploy_log
             WHERE (?1 IS NULL OR process = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![process, limit as i64], |r| {
            Ok(json!({
                "id": r.get::<_, i64>(0)?,
                "time": tenement_supervisor::logs::rfc3339_ms(r.get::<_, i64>(1)?),
                "action": r.get::<_, String>(2)?,
                "process": r.get::<_, String>(3)?,
                "instance": r.get::<_, String>(4)?,
                "result": r.get::<_, String>(5)?,
            }))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
