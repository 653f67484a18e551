//! Log store benchmark: ingest rate with FTS5 on, then query latency over the result, then the
//! search tokenizers side by side (issue 19: substring search).
//!
//! `cargo bench --bench logstore` (rows: `LOGSTORE_BENCH_ROWS`, default 1,000,000).
//! The baseline in the same run is the naive store: one transaction per line (`batch = 1`).
//! The tokenizer table writes the same lines into bare SQLite files the way the writer does
//! (2,048 lines per transaction, the batch indexed by one `INSERT ... SELECT`): no index,
//! `unicode61` (the store's, with bare words as prefix queries) and `trigram` (substrings).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use tenement_supervisor::logs::{LogOptions, LogQuery, LogStore};
use tenement_supervisor::Stream;

const USERS: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];
const RESOURCES: [&str; 6] = [
    "users", "orders", "invoices", "carts", "sessions", "products",
];
const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const STATUSES: [u32; 8] = [200, 200, 200, 201, 204, 304, 404, 500];

/// splitmix64's finalizer: independent-looking bits for every field of a line.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One realistic line. "timeout" appears only in every 10,000th line; "GET" in about half.
fn line(i: u64) -> (&'static str, String, Stream, String) {
    let r = mix(i);
    let user = USERS[((r >> 20) % 12) as usize];
    let (process, instance) = match i % 1000 {
        0 => ("cron", "1".to_string()),
        1..=99 => ("worker", (1 + (r >> 11) % 2).to_string()),
        _ => ("api", (1 + (r >> 11) % 8).to_string()),
    };
    if i % 10_000 == 500 {
        let msg = format!("ERROR upstream timeout contacting payments-gateway after 30000ms user={user} attempt={}", r % 3 + 1);
        return (process, instance, Stream::Stderr, msg);
    }
    if i % 20 == 7 {
        let msg = format!(
            "WARN slow query took {}ms table={} user={user}",
            200 + r % 900,
            RESOURCES[(r % 6) as usize]
        );
        return (process, instance, Stream::Stderr, msg);
    }
    let msg = format!(
        "{} /api/{}/{} {} {}ms user={user} req={:08x}",
        METHODS[(r % 4) as usize],
        RESOURCES[((r >> 3) % 6) as usize],
        r % 100_000,
        STATUSES[((r >> 7) % 8) as usize],
        1 + r % 250,
        r as u32
    );
    (process, instance, Stream::Stdout, msg)
}

/// Records `rows` lines without ever overflowing the queue (so nothing is dropped and the
/// rate is the writer's sustained rate), then flushes. Returns lines/s and the time at 90%.
fn ingest(store: &LogStore, rows: u64, queue: u64) -> (f64, SystemTime) {
    let start = Instant::now();
    let mut at_90 = SystemTime::now();
    for i in 0..rows {
        while i - store.written() >= queue.saturating_sub(4096).max(1) {
            std::thread::sleep(Duration::from_micros(200));
        }
        if i == rows * 9 / 10 {
            at_90 = SystemTime::now();
        }
        let (p, inst, stream, msg) = line(i);
        store.record(p, &inst, stream, &msg);
    }
    store.flush();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(store.dropped(), 0, "the bench must not drop lines");
    assert_eq!(store.written(), rows);
    (rows as f64 / secs, at_90)
}

/// Median and p99 (nearest rank) of `n` runs of `q` after one warm-up run (statement cache,
/// page cache), in ms, and the rows it returned.
fn latency(store: &LogStore, q: &LogQuery, n: usize) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(n);
    let mut got = 0;
    let _warm_up = store.query(q);
    for _ in 0..n {
        let t = Instant::now();
        got = match store.query(q) {
            Ok(lines) => lines.len(),
            Err(e) => panic!("query {q:?} failed: {e}"),
        };
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let p99 = times[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    (times[n / 2], p99, got)
}

fn size_mb(db: &Path) -> f64 {
    let wal = db.with_extension("db-wal");
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    (len(db) + len(&wal)) as f64 / 1e6
}

fn main() {
    let rows: u64 = std::env::var("LOGSTORE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let dir = match tempfile::Builder::new().prefix("logstore-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temp dir: {e}"),
    };
    let open = |name: &str, opts: LogOptions| match LogStore::open(&dir.path().join(name), opts) {
        Ok(s) => s,
        Err(e) => panic!("cannot open the store: {e}"),
    };
    // Retention must not interfere with the measurement.
    let keep_all = LogOptions {
        max_rows: 0,
        retention: Duration::ZERO,
        ..LogOptions::default()
    };

    // The hot path alone: `record` into an empty queue (no writer back-pressure).
    let burst = 50_000.min(rows).max(1);
    let lines: Vec<_> = (0..burst).map(line).collect();
    let store = open("burst.db", keep_all.clone());
    let t = Instant::now();
    for (p, inst, stream, msg) in &lines {
        store.record(p, inst, *stream, msg);
    }
    let record_ns = t.elapsed().as_nanos() as f64 / burst as f64;
    store.close();
    drop(lines);

    // Baseline: one transaction per line.
    let naive_rows = (rows / 20).clamp(1, 50_000);
    let naive = open(
        "naive.db",
        LogOptions {
            batch: 1,
            flush_every: Duration::ZERO,
            ..keep_all.clone()
        },
    );
    let (naive_rate, _) = ingest(&naive, naive_rows, keep_all.queue as u64);
    naive.close();

    let db = dir.path().join("tenement.db");
    let store = open("tenement.db", keep_all.clone());
    let (rate, at_90) = ingest(&store, rows, keep_all.queue as u64);

    println!("## log store, {rows} lines (FTS5 on)\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| `record()` call (queue not full) | {record_ns:.0} ns/line |");
    println!(
        "| ingest, naive baseline (1 txn/line, {naive_rows} lines) | {naive_rate:.0} lines/s |"
    );
    println!("| ingest, batched (2048/txn) | {rate:.0} lines/s |");
    println!("| database size | {:.0} MB |", size_mb(&db));
    println!();

    let q = |f: &dyn Fn(&mut LogQuery)| {
        let mut q = LogQuery::default();
        f(&mut q);
        q
    };
    let s = |w: &str| Some(w.to_string());
    let middle = store
        .query(&q(&|_| ()))
        .ok()
        .and_then(|l| l.first().map(|l| l.id / 2));
    let cases: Vec<(&str, LogQuery)> = vec![
        (
            "search rare word `timeout` (runs `timeout*`; 1 in 10k lines)",
            q(&|q| q.search = s("timeout")),
        ),
        (
            "search common word `GET` (runs `GET*`; ~half the lines)",
            q(&|q| q.search = s("GET")),
        ),
        ("search prefix `pay*` (rare)", q(&|q| q.search = s("pay*"))),
        (
            "search one letter `u` (a prefix of ~every line)",
            q(&|q| q.search = s("u")),
        ),
        (
            "search phrase `\"slow query\"` (1 in 20)",
            q(&|q| q.search = s("\"slow query\"")),
        ),
        (
            "search `timeout` + instance api:3",
            q(&|q| {
                q.search = s("timeout");
                q.process = s("api");
                q.instance = s("3");
            }),
        ),
        (
            "search `GET` + instance api:3",
            q(&|q| {
                q.search = s("GET");
                q.process = s("api");
                q.instance = s("3");
            }),
        ),
        (
            "filter instance api:3",
            q(&|q| {
                q.process = s("api");
                q.instance = s("3");
            }),
        ),
        (
            "filter process `api` (90% of lines)",
            q(&|q| q.process = s("api")),
        ),
        (
            "filter process `cron` (0.1% of lines)",
            q(&|q| q.process = s("cron")),
        ),
        (
            "filter stream stderr",
            q(&|q| q.stream = Some(Stream::Stderr)),
        ),
        (
            "filter since (last 10% of lines)",
            q(&|q| q.since = Some(at_90)),
        ),
        ("page: before_id = middle", q(&|q| q.before_id = middle)),
    ];
    println!("| query (limit 100, 50 runs after 1 warm-up) | rows | median | p99 |");
    println!("|---|---|---|---|");
    for (name, query) in &cases {
        let (median, p99, got) = latency(&store, query, 50);
        println!("| {name} | {got} | {median:.2} ms | {p99:.2} ms |");
    }
    store.close();
    println!();
    tokenizers(dir.path(), rows);
}

/// The store's tables with the given FTS5 tokenizer (`None`: no full-text index).
fn schema(tokenizer: Option<&str>) -> String {
    let mut sql = "CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, \
                   process TEXT NOT NULL, instance TEXT NOT NULL, stream TEXT NOT NULL, \
                   message TEXT NOT NULL);
                   CREATE INDEX logs_ts ON logs (ts);
                   CREATE INDEX logs_process_instance ON logs (process, instance, id);"
        .to_string();
    if let Some(t) = tokenizer {
        sql.push_str(&format!(
            "CREATE VIRTUAL TABLE logs_fts USING fts5 (message, content = 'logs', \
             content_rowid = 'id', tokenize = '{t}');"
        ));
    }
    sql
}

fn sql<T>(r: rusqlite::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("sqlite: {e}"),
    }
}

/// Writes `rows` lines as the writer does; returns (lines/s, file size in MB).
fn ingest_raw(path: &Path, tokenizer: Option<&str>, rows: u64) -> (Connection, f64, f64) {
    let mut conn = sql(Connection::open(path));
    sql(conn.pragma_update(None, "journal_mode", "WAL"));
    sql(conn.pragma_update(None, "synchronous", "NORMAL"));
    sql(conn.execute_batch(&schema(tokenizer)));
    let start = Instant::now();
    let mut i = 0;
    while i < rows {
        let end = (i + 2048).min(rows);
        let tx = sql(conn.transaction());
        {
            let mut insert = sql(tx.prepare_cached(
                "INSERT INTO logs (ts, process, instance, stream, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            ));
            let mut first = 0i64;
            for n in i..end {
                let (p, inst, stream, msg) = line(n);
                sql(insert.execute(rusqlite::params![n as i64, p, inst, stream.as_str(), msg]));
                if n == i {
                    first = tx.last_insert_rowid();
                }
            }
            if tokenizer.is_some() {
                sql(tx.execute(
                    "INSERT INTO logs_fts (rowid, message) SELECT id, message FROM logs \
                     WHERE id BETWEEN ?1 AND ?2",
                    [first, tx.last_insert_rowid()],
                ));
            }
        }
        sql(tx.commit());
        i = end;
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    sql(conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())));
    let mb = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    (conn, rate, mb)
}

/// Median of 20 runs of a search (the store's statement shape) after one warm-up; rows found.
fn search_ms(conn: &Connection, fts: &str) -> (f64, usize) {
    let mut stmt = sql(conn.prepare(
        "SELECT l.id, l.message FROM logs_fts CROSS JOIN logs l ON l.id = logs_fts.rowid \
         WHERE logs_fts MATCH ?1 ORDER BY logs_fts.rowid DESC LIMIT 100",
    ));
    let mut run = || {
        let rows = sql(stmt.query_map([fts], |r| r.get::<_, i64>(0)));
        rows.count()
    };
    run();
    let mut times = Vec::new();
    let mut got = 0;
    for _ in 0..20 {
        let t = Instant::now();
        got = run();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], got)
}

/// Substring search (issue 19): the index size and ingest rate of each way to offer it.
fn tokenizers(dir: &Path, rows: u64) {
    println!("## log search: tokenizers, {rows} lines (SQLite side of ingest, no queue)\n");
    println!("| index | ingest | database size | index size |");
    println!("|---|---|---|---|");
    let mut base = 0.0;
    let mut conns = Vec::new();
    for (name, tok) in [
        ("none", None),
        ("`unicode61` (bare words as prefixes)", Some("unicode61")),
        ("`trigram` (substrings)", Some("trigram")),
    ] {
        let file = dir.join(format!("tok-{}.db", tok.unwrap_or("none")));
        let (conn, rate, mb) = ingest_raw(&file, tok, rows);
        if tok.is_none() {
            base = mb;
        }
        println!(
            "| {name} | {rate:.0} lines/s | {mb:.0} MB | {:.0} MB |",
            mb - base
        );
        conns.push((tok, conn));
    }
    println!();
    println!("| search (limit 100, median of 20) | index | FTS5 query | rows | median |");
    println!("|---|---|---|---|---|");
    for (tok, conn) in &conns {
        let cases: &[(&str, &str)] = match tok {
            Some("unicode61") => &[
                ("rare word", "timeout*"),
                ("common word", "GET*"),
                ("one letter", "u*"),
                ("inside a word", "imeou*"),
            ],
            Some(_) => &[
                ("rare word", "timeout"),
                ("common word", "GET"),
                ("inside a word", "imeou"),
                ("rare and common", "timeout AND GET"),
            ],
            None => &[],
        };
        for (what, fts) in cases {
            let (ms, got) = search_ms(conn, fts);
            println!(
                "| {what} | {} | `{fts}` | {got} | {ms:.2} ms |",
                tok.unwrap_or("")
            );
        }
    }
}
