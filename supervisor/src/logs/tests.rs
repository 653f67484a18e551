#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tempfile::TempDir;

use super::*;

pub(super) fn temp() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("ten-logs-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("tenement.db");
    (dir, path)
}

pub(super) fn open(path: &Path) -> LogStore {
    LogStore::open(path, LogOptions::default()).unwrap()
}

pub(super) fn q() -> LogQuery {
    LogQuery::default()
}

pub(super) fn messages(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.message.as_str()).collect()
}

pub(super) fn rows(path: &Path) -> u64 {
    let c = Connection::open(path).unwrap();
    c.query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
        .unwrap()
}

/// `PRAGMA integrity_check` is ok and the FTS index matches the table.
pub(super) fn assert_consistent(path: &Path) {
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
pub(super) fn sample(store: &LogStore) {
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
    let err = store
        .query(&LogQuery {
            search: Some("user=alice".into()),
            ..q()
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("syntax error") && err.contains("double quotes"),
        "{err}"
    );
    // Quoted, the same text is a phrase.
    let lines = store
        .query(&LogQuery {
            search: Some(literal_search("user=alice")),
            ..q()
        })
        .unwrap();
    assert_eq!(messages(&lines), ["GET /users 200 user=alice"]);
    assert!(store
        .query(&LogQuery {
            search: Some(literal_search("say \"hi\" AND")),
            ..q()
        })
        .unwrap()
        .is_empty());
    // The store still works afterwards.
    assert_eq!(store.query(&q()).unwrap().len(), 5);
}

/// Any search text gives lines or `BadSearch` (a 400), never another error (a 500) or a
/// panic; a literal search of any text without a NUL always gives lines.
#[test]
fn any_search_is_lines_or_bad_search() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let (_d, path) = temp();
    let store = open(&path);
    sample(&store);
    let fts = prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "GET",
                "user",
                "alice",
                "AND",
                "OR",
                "NOT",
                "NEAR",
                "NEAR(",
                "\"",
                "(",
                ")",
                "*",
                "^",
                ":",
                "message:",
                "process:",
                "nosuch:",
                "{message}",
                "-",
                "+",
                ",",
                " ",
                "\u{0}",
                "'",
                "\\",
                "é",
                "user=alice",
                "500",
            ])
            .prop_map(str::to_string),
            "\\PC{1,4}",
        ],
        0..10,
    )
    .prop_map(|v| v.concat());
    let search = prop_oneof![fts, "\\PC{0,40}"];
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&search, |s| {
            for (text, literal) in [(s.clone(), false), (literal_search(&s), true)] {
                let q = LogQuery {
                    search: Some(text.clone()),
                    ..q()
                };
                match store.query(&q) {
                    Ok(_) => {}
                    // FTS5 reads its query as a C string: a NUL ends it, even quoted.
                    Err(LogError::BadSearch { .. }) if !literal || s.contains('\0') => {}
                    Err(e) => return Err(TestCaseError::fail(format!("{text:?}: {e:?}"))),
                }
            }
            Ok(())
        })
        .unwrap();
}

/// `ten logs --search crash` finds `crashed` (a bare word is a prefix); quoted, a word is exact;
/// phrases, OR and NOT keep their FTS5 meaning.
#[test]
fn a_bare_word_finds_longer_words_and_the_syntax_still_works() {
    let (_d, path) = temp();
    let store = open(&path);
    store.record("ten", "-", Stream::Stderr, "web:a crashed: exit status 1");
    store.record(
        "ten",
        "-",
        Stream::Stderr,
        "crash loop: 3 restarts within 60s",
    );
    store.record("api", "1", Stream::Stdout, "connection refused by upstream");
    store.record("api", "1", Stream::Stdout, "warning: slow query 812ms");
    store.record("api", "1", Stream::Stdout, "query slow again");
    store.flush();
    let search = |s: &str| {
        let lines = store
            .query(&LogQuery {
                search: Some(s.into()),
                ..q()
            })
            .unwrap();
        messages(&lines).join(" | ")
    };
    assert_eq!(
        search("crash"),
        "crash loop: 3 restarts within 60s | web:a crashed: exit status 1"
    );
    assert_eq!(search("CRASHED"), "web:a crashed: exit status 1");
    assert_eq!(search("\"crash\""), "crash loop: 3 restarts within 60s");
    assert_eq!(search("\"slow query\""), "warning: slow query 812ms");
    assert_eq!(
        search("crash OR refuse"),
        "connection refused by upstream | crash loop: 3 restarts within 60s | web:a crashed: exit status 1"
    );
    assert_eq!(search("crash NOT loop"), "web:a crashed: exit status 1");
    assert_eq!(search("rash"), "", "a prefix, not any substring");
    for bad in [
        "\"unterminated",
        "AND AND",
        "nosuchcolumn:foo",
        "(",
        "user=alice",
    ] {
        assert!(
            matches!(
                store.query(&LogQuery {
                    search: Some(bad.into()),
                    ..q()
                }),
                Err(LogError::BadSearch { ref query, .. }) if query == bad
            ),
            "{bad:?}"
        );
    }
}

/// The live stream's filter ([`LiveSearch`], `ten logs -f --search`) keeps the lines the index
/// finds, for the same text.
#[test]
fn live_search_agrees_with_the_index() {
    let (_d, path) = temp();
    let store = open(&path);
    let lines = [
        "web:a crashed: exit status 1",
        "crash loop: 3 restarts within 60s",
        "connection refused by upstream",
        "warning: slow query 812ms",
        "query slow again",
        "GET /users 200 user=alice",
        "GET /orders 500 errored",
        "job 7 done",
        "Ünïcode Straße",
    ];
    for l in lines {
        store.record("api", "1", Stream::Stdout, l);
    }
    store.flush();
    let mut compared = 0;
    for query in [
        "crash",
        "\"crash\"",
        "crash*",
        "CRASH",
        "crash OR refused",
        "crash NOT loop",
        "crash AND exit",
        "\"slow query\"",
        "slow query",
        "(crash OR slow) query",
        "GET NOT orders",
        "GET -",
        "user + alice",
        "\"user=alice\"",
        "message:err",
        "^job",
        "^done",
        "NEAR(job done, 5)",
        "stra",
        "a OR b c",
        "500 OR 200",
    ] {
        let found = store
            .query(&LogQuery {
                search: Some(query.into()),
                ..q()
            })
            .map(|l| {
                let mut m: Vec<String> = l.into_iter().map(|l| l.message).collect();
                m.sort();
                m
            });
        let Ok(found) = found else {
            // The store refused it: so does `ten logs -f` (it asks the store first).
            continue;
        };
        let live = LiveSearch::new(query);
        let mut kept: Vec<String> = lines
            .iter()
            .filter(|l| live.matches(l))
            .map(|l| l.to_string())
            .collect();
        kept.sort();
        assert_eq!(kept, found, "{query:?} ({:?})", fts_query(query));
        compared += 1;
    }
    assert!(compared >= 19, "only {compared} queries were valid FTS5");
}
