//! The one way `ten` opens `{data_dir}/tenement.db` (the supervisor's state and logs, the
//! fleet, the binary's API tokens and audit log): a connection with its pragmas, then the
//! component's numbered migrations applied in one transaction. A leaf crate (rusqlite only),
//! so the supervisor and the fleet share it without depending on each other.
//!
//! Schema versions. Several components share the file (instances, logs, fleet, API tokens,
//! audit), each owning its own tables and released on its own schedule, so one
//! `PRAGMA user_version` cannot say which of them is at which version. Instead:
//! - `PRAGMA user_version` is the **file format** ([`FILE_FORMAT`], 1): it changes only if the
//!   way versions are recorded changes. A file with 0 is one written before versions existed
//!   (or a new file): it becomes 1. A file newer than [`FILE_FORMAT`] is refused.
//! - The table `schema_version(component, version)` records each component's schema version:
//!   the number of its migrations applied. Migration N of a component is `migrations[N - 1]`.
//!   Migration 1 is the schema as it was before versions existed, written with
//!   `IF NOT EXISTS`, so on such a file it records version 1 without touching any table.
//! - A component whose recorded version is higher than the migrations this binary knows is
//!   refused with an error naming the component and both versions (a newer `ten` wrote it).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The file format recorded in `PRAGMA user_version` (see the module header).
pub const FILE_FORMAT: i64 = 1;

/// How long a statement waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The pragmas every component's connection uses today: WAL with `synchronous = NORMAL`.
pub const WAL: &[(&str, &str)] = &[("journal_mode", "WAL"), ("synchronous", "NORMAL")];

/// A component's tables: its name in `schema_version` and its migrations, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub component: &'static str,
    /// Migration N is `migrations[N - 1]`; each is a batch of SQL statements.
    pub migrations: &'static [&'static str],
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "{path}: file format {on_disk} is newer than this ten knows ({known}): run the newer ten that wrote it"
    )]
    FormatTooNew {
        path: String,
        on_disk: i64,
        known: i64,
    },
    #[error(
        "{path}: the {component} tables are at schema version {on_disk}, newer than this ten knows ({known}): run the newer ten that wrote them"
    )]
    TooNew {
        path: String,
        component: &'static str,
        on_disk: i64,
        known: i64,
    },
}

/// Opens `path` with `busy_timeout` and `pragmas` (in order, outside any transaction), then
/// brings `schema` up to date when given (readers pass None). Does not create directories.
pub fn open(
    path: &Path,
    pragmas: &[(&str, &str)],
    schema: Option<&Schema>,
) -> Result<Connection, DbError> {
    let mut conn = Connection::open(path).map_err(|source| DbError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    for (name, value) in pragmas {
        // Some pragmas answer with a row (journal_mode), others not: step through either.
        let mut stmt = conn.prepare(&format!("PRAGMA {name} = {value}"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    if let Some(schema) = schema {
        migrate(&mut conn, path, schema)?;
    }
    Ok(conn)
}

/// Applies the migrations of `schema` that `conn`'s file lacks, in one `IMMEDIATE`
/// transaction (so two openers never run the same migration), and records the version.
/// Returns the version now on disk.
pub fn migrate(conn: &mut Connection, path: &Path, schema: &Schema) -> Result<i64, DbError> {
    let known = i64::try_from(schema.migrations.len()).unwrap_or(i64::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let format: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if format > FILE_FORMAT {
        return Err(DbError::FormatTooNew {
            path: path.display().to_string(),
            on_disk: format,
            known: FILE_FORMAT,
        });
    }
    if format < FILE_FORMAT {
        tx.execute_batch(&format!("PRAGMA user_version = {FILE_FORMAT}"))?;
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            component TEXT PRIMARY KEY,
            version   INTEGER NOT NULL
        );",
    )?;
    let on_disk: i64 = tx
        .query_row(
            "SELECT version FROM schema_version WHERE component = ?1",
            [schema.component],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    if on_disk > known {
        return Err(DbError::TooNew {
            path: path.display().to_string(),
            component: schema.component,
            on_disk,
            known,
        });
    }
    if on_disk == known {
        tx.commit()?;
        return Ok(on_disk);
    }
    let start = usize::try_from(on_disk).unwrap_or(0);
    for sql in &schema.migrations[start..] {
        tx.execute_batch(sql)?;
    }
    tx.execute(
        "INSERT INTO schema_version (component, version) VALUES (?1, ?2)
         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        rusqlite::params![schema.component, known],
    )?;
    tx.commit()?;
    Ok(known)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const V1: &str =
        "CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY, name TEXT NOT NULL);";
    const V2: &str = "ALTER TABLE things ADD COLUMN colour TEXT;";
    const ONE: Schema = Schema {
        component: "things",
        migrations: &[V1],
    };
    const TWO: Schema = Schema {
        component: "things",
        migrations: &[V1, V2],
    };

    fn version(conn: &Connection, component: &str) -> Option<i64> {
        conn.query_row(
            "SELECT version FROM schema_version WHERE component = ?1",
            [component],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    }

    fn user_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_fresh_file_gets_every_migration_and_the_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenement.db");
        let conn = open(&path, WAL, Some(&TWO)).unwrap();
        assert_eq!(version(&conn, "things"), Some(2));
        assert_eq!(user_version(&conn), FILE_FORMAT);
        conn.execute("INSERT INTO things (name, colour) VALUES ('a', 'red')", [])
            .unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn an_unversioned_file_from_before_keeps_its_rows_and_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenement.db");
        {
            // What the code wrote before versions existed: the table, no version anywhere.
            let old = Connection::open(&path).unwrap();
            old.execute_batch(V1).unwrap();
            old.execute("INSERT INTO things (name) VALUES ('kept')", [])
                .unwrap();
        }
        let conn = open(&path, &[], Some(&TWO)).unwrap();
        assert_eq!(version(&conn, "things"), Some(2));
        let row: (String, Option<String>) = conn
            .query_row("SELECT name, colour FROM things", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(row, ("kept".to_string(), None));
    }

    #[test]
    fn reopening_is_a_no_op_and_components_are_versioned_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenement.db");
        drop(open(&path, &[], Some(&TWO)).unwrap());
        // A second run of migration 2 (ALTER ... ADD COLUMN) would fail: it must not run.
        let mut conn = open(&path, &[], Some(&TWO)).unwrap();
        assert_eq!(migrate(&mut conn, &path, &TWO).unwrap(), 2);
        let other = Schema {
            component: "other",
            migrations: &["CREATE TABLE IF NOT EXISTS other (x INTEGER);"],
        };
        assert_eq!(migrate(&mut conn, &path, &other).unwrap(), 1);
        assert_eq!(version(&conn, "things"), Some(2));
        assert_eq!(version(&conn, "other"), Some(1));
    }

    #[test]
    fn a_newer_schema_or_file_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenement.db");
        drop(open(&path, &[], Some(&TWO)).unwrap());
        let e = open(&path, &[], Some(&ONE)).unwrap_err();
        assert!(matches!(
            e,
            DbError::TooNew {
                component: "things",
                on_disk: 2,
                known: 1,
                ..
            }
        ));
        let text = e.to_string();
        assert!(
            text.contains("things tables are at schema version 2, newer than this ten knows (1)"),
            "{text}"
        );
        // Nothing was changed by the refusal.
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn, "things"), Some(2));
        conn.execute_batch("PRAGMA user_version = 7").unwrap();
        drop(conn);
        let e = open(&path, &[], Some(&TWO)).unwrap_err();
        assert!(
            e.to_string()
                .contains("file format 7 is newer than this ten knows (1)"),
            "{e}"
        );
    }
}
