//! Reading lines back: filters combined in SQL with bound parameters, newest first.

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode};

use super::search::fts_query;
use super::store::{millis, rfc3339_ms};
use super::{LogError, LogLine, LogQuery};

/// Lines returned when the query does not say (`limit: 0`).
pub const DEFAULT_LIMIT: usize = 100;
/// The most lines one query returns.
pub const MAX_LIMIT: usize = 10_000;

const COLUMNS: &str = "l.id, l.ts, l.process, l.instance, l.stream, l.message";

/// Builds the statement for `q`. With a search, the full-text index drives the loop
/// (`CROSS JOIN` fixes the order) and walks its matches newest first, so a common word with
/// `LIMIT 100` stops after 100 rows instead of collecting every match.
fn build(q: &LogQuery) -> (String, Vec<Value>) {
    let mut conds: Vec<&'static str> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let search = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let (from, id_col) = match search {
        Some(s) => {
            conds.push("logs_fts MATCH ?");
            args.push(Value::Text(fts_query(s)));
            (
                "logs_fts CROSS JOIN logs l ON l.id = logs_fts.rowid",
                "logs_fts.rowid",
            )
        }
        None => ("logs l", "l.id"),
    };
    if let Some(p) = &q.process {
        // Without an instance the (process, instance, id) index cannot give id order: SQLite
        // would collect and sort every line of the process. Walking ids newest first and
        // filtering stops after `limit` lines, hence the unary `+` (no index on this term).
        conds.push(if q.instance.is_some() {
            "l.process = ?"
        } else {
            "+l.process = ?"
        });
        args.push(Value::Text(p.clone()));
    }
    if let Some(i) = &q.instance {
        conds.push("l.instance = ?");
        args.push(Value::Text(i.clone()));
    }
    if let Some(s) = q.stream {
        conds.push("l.stream = ?");
        args.push(Value::Text(s.as_str().to_owned()));
    }
    if let Some(t) = q.since {
        // Timestamps only roughly follow ids, so `ts >= since` alone cannot stop an id-ordered
        // walk early; the smallest id at or after `since` (from the ts index) bounds it exactly.
        conds.push("l.ts >= ?");
        args.push(Value::Integer(millis(t)));
        conds.push(if search.is_some() {
            "logs_fts.rowid >= (SELECT min(id) FROM logs INDEXED BY logs_ts WHERE ts >= ?)"
        } else {
            "l.id >= (SELECT min(id) FROM logs INDEXED BY logs_ts WHERE ts >= ?)"
        });
        args.push(Value::Integer(millis(t)));
    }
    if let Some(b) = q.before_id {
        conds.push(if search.is_some() {
            "logs_fts.rowid < ?"
        } else {
            "l.id < ?"
        });
        args.push(Value::Integer(b));
    }
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(100)));
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (
        format!("SELECT {COLUMNS} FROM {from}{filter} ORDER BY {id_col} DESC LIMIT ?"),
        args,
    )
}

/// An FTS5 query matching `text` literally (as one phrase of whole words), for callers that
/// search for what the user typed rather than FTS5 syntax: `user=alice` becomes `"user=alice"`.
pub fn literal_search(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

pub(crate) fn run(conn: &Connection, q: &LogQuery) -> Result<Vec<LogLine>, LogError> {
    let (sql, args) = build(q);
    let searching = q.search.as_deref().is_some_and(|s| !s.trim().is_empty());
    let result = (|| {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(LogLine {
                id: r.get(0)?,
                timestamp: rfc3339_ms(r.get(1)?),
                process: r.get(2)?,
                instance: r.get(3)?,
                stream: r.get(4)?,
                message: r.get(5)?,
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })();
    result.map_err(|e| match e {
        // Our SQL is fixed; with a search the only thing that can be malformed is the search
        // expression (FTS5 reports syntax errors, unknown columns, bad `*` as SQLITE_ERROR).
        rusqlite::Error::SqliteFailure(f, msg) if searching && f.code == ErrorCode::Unknown => {
            let mut reason = msg.unwrap_or_else(|| f.to_string());
            if reason.contains("syntax error") {
                reason
                    .push_str(" (put text with punctuation in double quotes, e.g. \"user=alice\")");
            }
            LogError::BadSearch {
                query: q.search.clone().unwrap_or_default(),
                reason,
            }
        }
        e => LogError::Sqlite(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_input_is_bound_never_interpolated() {
        let q = LogQuery {
            process: Some("x' OR 1=1 --".into()),
            search: Some("evil'".into()),
            ..LogQuery::default()
        };
        let (sql, args) = build(&q);
        assert!(!sql.contains("evil") && !sql.contains("OR 1=1"), "{sql}");
        assert_eq!(args.len(), 3);
    }

    #[test]
    fn limit_defaults_and_caps() {
        let (_, args) = build(&LogQuery {
            limit: 0,
            ..LogQuery::default()
        });
        assert_eq!(args.last(), Some(&Value::Integer(100)));
        let (_, args) = build(&LogQuery {
            limit: 1_000_000,
            ..LogQuery::default()
        });
        assert_eq!(args.last(), Some(&Value::Integer(10_000)));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod plans {
    use super::*;
    use crate::Stream;
    use std::time::SystemTime;

    /// SQLite's plan for `q`, one step per line.
    fn plan(q: &LogQuery) -> String {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::logs::store::open_writer(&dir.path().join("t.db")).unwrap();
        let (sql, args) = build(q);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    fn q() -> LogQuery {
        LogQuery::default()
    }

    /// Every query walks ids newest first and stops at the limit: no sort of all matches.
    #[test]
    fn no_query_sorts_its_matches() {
        let s = |v: &str| Some(v.to_string());
        let cases = [
            q(),
            LogQuery {
                search: s("GET"),
                ..q()
            },
            LogQuery {
                search: s("GET"),
                process: s("api"),
                instance: s("1"),
                ..q()
            },
            LogQuery {
                search: s("GET"),
                since: Some(SystemTime::now()),
                ..q()
            },
            LogQuery {
                process: s("api"),
                ..q()
            },
            LogQuery {
                process: s("api"),
                stream: Some(Stream::Stderr),
                ..q()
            },
            LogQuery {
                process: s("api"),
                instance: s("1"),
                before_id: Some(9),
                ..q()
            },
            LogQuery {
                since: Some(SystemTime::now()),
                ..q()
            },
        ];
        for case in cases {
            let plan = plan(&case);
            assert!(!plan.contains("TEMP B-TREE"), "{case:?}\n{plan}");
        }
    }

    #[test]
    fn search_is_driven_by_the_fts_index() {
        let plan = plan(&LogQuery {
            search: Some("GET".into()),
            process: Some("api".into()),
            ..q()
        });
        assert!(plan.starts_with("SCAN logs_fts VIRTUAL TABLE"), "{plan}");
        assert!(
            plan.contains("USING INTEGER PRIMARY KEY (rowid=?)"),
            "{plan}"
        );
    }

    #[test]
    fn instance_filter_uses_its_index_and_since_bounds_the_walk() {
        let plan = plan(&LogQuery {
            process: Some("api".into()),
            instance: Some("1".into()),
            since: Some(SystemTime::now()),
            ..q()
        });
        assert!(
            plan.contains("INDEX logs_process_instance (process=? AND instance=? AND id>?)"),
            "{plan}"
        );
        assert!(plan.contains("INDEX logs_ts (ts>?)"), "{plan}");
    }
}
