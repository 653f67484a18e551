#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tempfile::TempDir;
use tokio::sync::broadcast::error::TryRecvError;

use super::*;

fn temp() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("ten-logs-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("tenement.db");
    (dir, path)
}

fn open(path: &Path) -> LogStore {
    LogStore::open(path, LogOptions::default()).unwrap()
}

fn q() -> LogQuery {
    LogQuery::default()
}

fn messages(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.message.as_str()).collect()
}

fn rows(path: &Path) -> u64 {
    let c = Connection::open(path).unwrap();
    c.query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
        .unwrap()
}

/// `PRAGMA integrity_check` is ok and the FTS index matches the table.
fn assert_consistent(path: &Path) {
    let c = Connection::open(path).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    c.execute(
        "INSERT INTO logs_fts(logs_fts) VALUES('integrity-check')",
        [],
    )
    .unwrap();
}

/// Three processes' worth of lines, flushed.
fn sample(store: &LogStore) {
    store.record("api", "1", Stream::Stdout, "GET /users 200 user=alice");
    store.record("api", "2", Stream::Stderr, "error: connection refused");
    store.record("api", "1", Stream::Stderr, "warning: slow query 812ms");
    store.record("worker", "1", Stream::Stdout, "job 7 done");
    store.record("api", "2", Stream::Stdout, "GET /orders 500 errored");
    store.flush();
}

#[test]
fn fts5_is_compiled_in() {
    let (_d, path) = temp();
    let store = open(&path);
    let used: i64 = lock(&store.inner.reader)
        .query_row("SELECT sqlite_compileoption_used('ENABLE_FTS5')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(used, 1);
    let mode: String = lock(&store.inner.reader)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn record_flush_query_newest_first_with_all_fields() {
    let (_d, path) = temp();
    let store = open(&path);
    let before = SystemTime::now() - Duration::from_millis(1);
    sample(&store);
    let lines = store.query(&q()).unwrap();
    assert_eq!(
        messages(&lines),
        [
            "GET /orders 500 errored",
            "job 7 done",
            "warning: slow query 812ms",
            "error: connection refused",
            "GET /users 200 user=alice"
        ]
    );
    assert!(lines.windows(2).all(|w| w[0].id > w[1].id));
    let first = &lines[4];
    assert_eq!(
        (first.process.as_str(), first.instance.as_str()),
        ("api", "1")
    );
    assert_eq!(first.stream, "stdout");
    assert_eq!(lines[3].stream, "stderr");
    let ts = &first.timestamp;
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(
        ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "{ts}"
    );
    assert!(*ts >= rfc3339_ms(store::millis(before)), "{ts}");
    assert_eq!(store.written(), 5);
    assert_eq!(store.dropped(), 0);
    let json = serde_json::to_value(first).unwrap();
    assert_eq!(json["process"], "api");
    assert_eq!(json["stream"], "stdout");
    assert_eq!(json["timestamp"], first.timestamp.as_str());
    assert_eq!(json["id"], first.id);
}

#[test]
fn filters_combine() {
    let (_d, path) = temp();
    let store = open(&path);
    sample(&store);
    let by = |q: LogQuery| messages(&store.query(&q).unwrap()).join(" | ");
    assert_eq!(
        by(LogQuery {
            process: Some("worker".into()),
            ..q()
        }),
        "job 7 done"
    );
    assert_eq!(
        by(LogQuery {
            process: Some("api".into()),
            instance: Some("2".into()),
            ..q()
        }),
        "GET /orders 500 errored | error: connection refused"
    );
    assert_eq!(
        by(LogQuery {
            process: Some("api".into()),
            stream: Some(Stream::Stderr),
            ..q()
        }),
        "warning: slow query 812ms | error: connection refused"
    );
    assert_eq!(
        by(LogQuery { limit: 2, ..q() }),
        "GET /orders 500 errored | job 7 done"
    );
    let all = store.query(&q()).unwrap();
    assert_eq!(
        by(LogQuery {
            before_id: Some(all[1].id),
            limit: 2,
            ..q()
        }),
        "warning: slow query 812ms | error: connection refused"
    );
    assert_eq!(
        by(LogQuery {
            since: Some(SystemTime::now() + Duration::from_secs(60)),
            ..q()
        }),
        ""
    );
    assert_eq!(
        store
            .query(&LogQuery {
                since: Some(SystemTime::now() - Duration::from_secs(60)),
                ..q()
            })
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        by(LogQuery {
            process: Some("nope".into()),
            ..q()
        }),
        ""
    );
}

#[test]
fn old_lines_are_outside_since() {
    let (_d, path) = temp();
    let store = open(&path);
    let hour_ago = store::millis(SystemTime::now() - Duration::from_secs(3600));
    store.enqueue(hour_ago, "api", "1", Stream::Stdout, "old");
    store.record("api", "1", Stream::Stdout, "new");
    store.flush();
    let lines = store
        .query(&LogQuery {
            since: Some(SystemTime::now() - Duration::from_secs(60)),
            ..q()
        })
        .unwrap();
    assert_eq!(messages(&lines), ["new"]);
    let all = store.query(&q()).unwrap();
    assert_eq!(all[1].timestamp, rfc3339_ms(hour_ago));
}

#[test]
fn search_by_word_prefix_phrase_and_with_filters() {
    let (_d, path) = temp();
    let store = open(&path);
    sample(&store);
    let search = |s: &str, process: Option<&str>| {
        let lines = store
            .query(&LogQuery {
                search: Some(s.into()),
                process: process.map(Into::into),
                ..q()
            })
            .unwrap();
        messages(&lines).join(" | ")
    };
    assert_eq!(search("refused", None), "error: connection refused");
    assert_eq!(
        search("err*", None),
        "GET /orders 500 errored | error: connection refused"
    );
    assert_eq!(
        search("GET", None),
        "GET /orders 500 errored | GET /users 200 user=alice"
    );
    assert_eq!(search("\"slow query\"", None), "warning: slow query 812ms");
    assert_eq!(search("done", Some("api")), "");
    assert_eq!(search("done", Some("worker")), "job 7 done");
    assert_eq!(search("GET NOT orders", None), "GET /users 200 user=alice");
    // Blank search is no search.
    assert_eq!(
        store
            .query(&LogQuery {
                search: Some("  ".into()),
                ..q()
            })
            .unwrap()
            .len(),
        5
    );
    // Paging through search results.
    let first = store
        .query(&LogQuery {
            search: Some("GET".into()),
            limit: 1,
            ..q()
        })
        .unwrap();
    let next = store
        .query(&LogQuery {
            search: Some("GET".into()),
            before_id: Some(first[0].id),
            ..q()
        })
        .unwrap();
    assert_eq!(messages(&next), ["GET /users 200 user=alice"]);
}

#[test]
fn bad_search_is_bad_search() {
    let (_d, path) = temp();
    let store = open(&path);
    sample(&store);
    for bad in ["\"unterminated", "AND AND", "nosuchcolumn:foo", "(", "*"] {
        match store.query(&LogQuery {
            search: Some(bad.into()),
            ..q()
        }) {
            Err(LogError::BadSearch { query, reason }) => {
                assert_eq!(query, bad);
                assert!(!reason.is_empty());
                let shown = LogError::BadSearch { query, reason }.to_string();
                assert!(shown.starts_with("bad search"), "{shown}");
            }
            other => panic!("{bad:?}: expected BadSearch, got {other:?}"),
        }
    }
    // The store still works afterwards.
    assert_eq!(store.query(&q()).unwrap().len(), 5);
}

#[test]
fn lines_survive_a_restart_and_ids_keep_growing() {
    let (_d, path) = temp();
    let last = {
        let store = open(&path);
        sample(&store);
        store.close();
        store.close(); // idempotent
        store.query(&q()).unwrap()[0].id
    };
    let store = open(&path);
    assert_eq!(store.query(&q()).unwrap().len(), 5);
    store.record("api", "1", Stream::Stdout, "after restart");
    store.flush();
    let lines = store.query(&q()).unwrap();
    assert_eq!(lines[0].message, "after restart");
    assert!(lines[0].id > last);
    assert_eq!(store.written(), 1);
    assert_consistent(&path);
}

#[test]
fn dropping_the_last_handle_commits_what_was_queued() {
    let (_d, path) = temp();
    {
        let store = open(&path);
        let clone = store.clone();
        for i in 0..1000 {
            clone.record("api", "1", Stream::Stdout, &format!("line {i}"));
        }
        drop(clone);
    }
    assert_eq!(rows(&path), 1000);
}

#[test]
fn close_then_record_counts_dropped() {
    let (_d, path) = temp();
    let store = open(&path);
    store.close();
    store.record("api", "1", Stream::Stdout, "too late");
    store.flush(); // returns at once
    assert_eq!((store.written(), store.dropped()), (0, 1));
    assert!(store.lines_by_instance().is_empty());
}

#[test]
fn retention_by_row_count_keeps_the_newest() {
    let (_d, path) = temp();
    let opts = LogOptions {
        max_rows: 100,
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    for i in 0..12_000 {
        store.record(
            "api",
            "1",
            Stream::Stdout,
            &format!("line {i} marker{}", i % 7),
        );
    }
    store.flush();
    store.retain_now();
    let lines = store.query(&LogQuery { limit: 1000, ..q() }).unwrap();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[0].message, "line 11999 marker1");
    assert_eq!(lines[99].message, "line 11900 marker0");
    assert_eq!(rows(&path), 100);
    // The FTS index forgot the deleted lines.
    let hits = store
        .query(&LogQuery {
            search: Some("marker0".into()),
            limit: 1000,
            ..q()
        })
        .unwrap();
    assert_eq!(hits.len(), 15);
    assert_consistent(&path);
}

#[test]
fn retention_by_age() {
    let (_d, path) = temp();
    let opts = LogOptions {
        retention: Duration::from_secs(3600),
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    let old = store::millis(SystemTime::now() - Duration::from_secs(7200));
    for i in 0..50 {
        store.enqueue(old, "api", "1", Stream::Stdout, &format!("ancient {i}"));
    }
    for i in 0..10 {
        store.record("api", "1", Stream::Stdout, &format!("fresh {i}"));
    }
    store.flush();
    assert_eq!(rows(&path), 60);
    store.retain_now();
    let lines = store.query(&q()).unwrap();
    assert_eq!(lines.len(), 10);
    assert!(lines.iter().all(|l| l.message.starts_with("fresh")));
    let ancient = store
        .query(&LogQuery {
            search: Some("ancient".into()),
            ..q()
        })
        .unwrap();
    assert!(ancient.is_empty());
    assert_consistent(&path);
}

#[test]
fn retention_runs_by_itself() {
    let (_d, path) = temp();
    let opts = LogOptions {
        retention: Duration::from_millis(1),
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    sample(&store);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rows(&path) > 0 {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn subscribers_get_committed_lines_with_ids() {
    let (_d, path) = temp();
    let store = open(&path);
    let mut rx = store.subscribe();
    sample(&store);
    let stored = store.query(&q()).unwrap();
    let mut got = Vec::new();
    while let Ok(line) = rx.try_recv() {
        got.push((*line).clone());
    }
    got.reverse();
    assert_eq!(got, stored);
}

#[test]
fn a_slow_subscriber_is_told_it_lagged() {
    let (_d, path) = temp();
    let store = open(&path);
    let mut rx = store.subscribe();
    for i in 0..5000 {
        store.record("api", "1", Stream::Stdout, &format!("line {i}"));
    }
    store.flush();
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Lagged(904));
    assert_eq!(rx.try_recv().unwrap().message, "line 904");
}

#[test]
fn counts_per_instance_and_the_sink() {
    let (_d, path) = temp();
    let store = open(&path);
    sample(&store);
    let sink: Arc<dyn LogSink> = Arc::new(store.clone());
    let name = InstanceName {
        process: "worker".into(),
        id: "2".into(),
    };
    sink.line(&name, Stream::Stderr, "from the sink");
    store.flush();
    assert_eq!(
        store.lines_by_instance(),
        [
            (("api".into(), "1".into()), 2),
            (("api".into(), "2".into()), 2),
            (("worker".into(), "1".into()), 1),
            (("worker".into(), "2".into()), 1),
        ]
    );
    let line = &store.query(&q()).unwrap()[0];
    assert_eq!(
        (
            line.process.as_str(),
            line.instance.as_str(),
            line.stream.as_str()
        ),
        ("worker", "2", "stderr")
    );
}

#[test]
fn a_flood_is_written_or_counted_never_lost() {
    let (_d, path) = temp();
    let opts = LogOptions {
        queue: 1024,
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    let total = 200_000u64;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..total / 4 {
                    store.record("api", &t.to_string(), Stream::Stdout, &format!("flood {i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    store.flush();
    let (written, dropped) = (store.written(), store.dropped());
    assert_eq!(
        written + dropped,
        total,
        "written {written} dropped {dropped}"
    );
    assert!(written > 0);
    assert_eq!(rows(&path), written);
    let accepted: u64 = store.lines_by_instance().iter().map(|(_, n)| n).sum();
    assert_eq!(accepted, written);
    assert_consistent(&path);
}
