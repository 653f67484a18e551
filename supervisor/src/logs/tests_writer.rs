//! Writer-side tests: restarts, shutdown, retention, subscribers, counters, floods.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::error::TryRecvError;

use super::tests::{assert_consistent, open, q, rows, sample, temp};
use super::*;

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
fn new_limits_apply_in_the_next_pass_without_new_lines() {
    let (_d, path) = temp();
    let store = LogStore::open(&path, LogOptions::default()).unwrap();
    for i in 0..500 {
        store.record("api", "1", Stream::Stdout, &format!("line {i}"));
    }
    store.flush();
    assert_eq!(rows(&path), 500, "within the default limits");
    // A reload lowers log_max_rows: applied with no further line coming in.
    store.set_limits(Duration::from_secs(3600), 50, 0);
    store.flush();
    store.retain_now();
    assert_eq!(rows(&path), 50);
    let lines = store.query(&LogQuery { limit: 1000, ..q() }).unwrap();
    assert_eq!(lines[0].message, "line 499");
    assert_eq!(lines[49].message, "line 450");
    // And the byte limit: each "line NNN" is 8 bytes.
    store.set_limits(Duration::from_secs(3600), 0, 80);
    store.flush();
    store.retain_now();
    assert!(rows(&path) <= 10, "{} rows over 80 bytes", rows(&path));
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

/// An idle writer does no periodic SQL, yet rows still expire on time: retention by age runs
/// when the oldest row's age passes the limit, with no new rows to wake it.
#[test]
fn rows_expire_with_no_new_rows_coming_in() {
    let (_d, path) = temp();
    let opts = LogOptions {
        retention: Duration::from_secs(2),
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    sample(&store);
    store.flush();
    let written = rows(&path);
    assert!(written > 0);
    // Let the pass that follows the inserts run (it finds nothing expired yet) ...
    std::thread::sleep(Duration::from_millis(1200));
    // ... then nothing else is written, and the rows still go once 2 s old.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rows(&path) > 0 {
        assert!(std::time::Instant::now() < deadline, "rows never expired");
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

/// Total message bytes as SQLite sums them, and as the running total says.
fn bytes(path: &std::path::Path) -> (u64, u64) {
    let c = rusqlite::Connection::open(path).unwrap();
    let sum: i64 = c
        .query_row(
            "SELECT COALESCE(SUM(octet_length(message)), 0) FROM logs",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let total = store::stored_bytes(&c).unwrap();
    (u64::try_from(sum).unwrap(), total)
}

#[test]
fn the_queue_is_bounded_in_bytes_and_drops_are_reported() {
    let (_d, path) = temp();
    let opts = LogOptions {
        max_line: 300,
        queue_bytes: 1200, // two 300-byte lines with their overhead
        batch: 1,
        drop_report_every: Duration::ZERO,
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    // Another connection holds the write lock: the writer cannot commit, so lines wait.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let line = "x".repeat(300);
    for _ in 0..100 {
        store.record("api", "1", Stream::Stdout, &line);
    }
    // At most one line in the writer's hands and two in the queue.
    assert!(store.dropped() >= 97, "dropped {}", store.dropped());
    holder.execute_batch("COMMIT").unwrap();
    store.flush();
    store.flush(); // the report is written after the first flush's batch
    assert_eq!(store.written() + store.dropped(), 100);
    let report = store
        .query(&LogQuery {
            process: Some("ten".into()),
            instance: Some("logs".into()),
            ..q()
        })
        .unwrap();
    let dropped = store.dropped();
    assert!(
        report.iter().any(|l| l
            .message
            .starts_with(&format!("{dropped} log lines dropped"))
            && l.stream == "stderr"),
        "{report:?} {:?}",
        store.query(&q()).unwrap()
    );
    assert_consistent(&path);
}

#[test]
fn a_line_longer_than_max_line_is_cut_and_marked() {
    let (_d, path) = temp();
    let opts = LogOptions {
        max_line: 300,
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    assert_eq!(LogSink::max_line(&store), 300);
    store.record("api", "1", Stream::Stdout, &"é".repeat(400));
    store.flush();
    let got = &store.query(&q()).unwrap()[0].message;
    assert_eq!(*got, format!("{}{CUT_MARK}", "é".repeat(150)));
}

#[test]
fn each_transaction_is_bounded_in_bytes() {
    let (_d, path) = temp();
    let opts = LogOptions {
        batch_bytes: 1000,
        flush_every: Duration::from_secs(5),
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    let line = "b".repeat(600);
    for _ in 0..20 {
        store.record("api", "1", Stream::Stdout, &line);
    }
    store.flush();
    assert_eq!(store.written(), 20);
    // A batch stops once it holds batch_bytes: at most one line past it.
    let largest = store.inner.shared.largest_batch.load(Ordering::Relaxed);
    assert!(largest <= 1000 + 600, "largest batch {largest} bytes");
}

#[test]
fn retention_by_bytes_keeps_the_newest_and_the_total_right() {
    let (_d, path) = temp();
    let opts = LogOptions {
        max_bytes: 10_000,
        ..LogOptions::default()
    };
    let store = LogStore::open(&path, opts).unwrap();
    for i in 0..100 {
        store.record(
            "api",
            "1",
            Stream::Stdout,
            &format!("line {i:03} marker{} {}", i % 2, "z".repeat(980)),
        );
    }
    store.flush();
    let (sum, total) = bytes(&path);
    assert_eq!(sum, total);
    assert!(sum > 10_000);
    store.retain_now();
    let (sum, total) = bytes(&path);
    assert_eq!(sum, total);
    assert!(sum <= 10_000, "{sum} bytes kept");
    let lines = store.query(&LogQuery { limit: 1000, ..q() }).unwrap();
    assert!(lines.len() >= 9, "{} lines kept", lines.len());
    assert!(lines[0].message.starts_with("line 099 "));
    // The FTS index forgot the deleted lines.
    let hits = store
        .query(&LogQuery {
            search: Some("marker0".into()),
            limit: 1000,
            ..q()
        })
        .unwrap();
    assert_eq!(hits.len(), lines.len().div_ceil(2).min(lines.len()));
    assert_consistent(&path);
}

#[test]
fn a_store_from_before_the_byte_total_gets_it_summed() {
    let (_d, path) = temp();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(store::SCHEMA_V1).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
             INSERT INTO schema_version VALUES ('logs', 1);
             INSERT INTO logs (ts, process, instance, stream, message)
                 VALUES (1, 'api', '1', 'stdout', 'héllo'), (2, 'api', '1', 'stdout', 'abc');",
        )
        .unwrap();
    }
    let store = open(&path);
    assert_eq!(bytes(&path), (9, 9));
    store.record("api", "1", Stream::Stdout, "four");
    store.flush();
    assert_eq!(bytes(&path), (13, 13));
}
