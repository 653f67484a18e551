//! See hostile.rs. Review M8 (logs bounded in bytes), S3 (weight writes under a log flood),
//! L4 (the fleet's merge bounded), L3 (/metrics off the workers).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::supervision::cli;
use crate::util::{Builder, Ten, DOMAIN};

/// What `log_max_line` appends to a cut line.
const CUT_MARK: &str = "…[cut]";

fn cli_ok(ten: &Ten, args: &[&str]) -> String {
    let (ok, out, err) = cli(ten, args);
    assert!(ok, "ten {args:?}: {err}\n{}", ten.stderr());
    out
}

fn weight_of(ten: &Ten, name: &str) -> Value {
    let rows: Vec<Value> =
        serde_json::from_str(&cli_ok(ten, &["ps", "--json"])).expect("ps --json");
    rows.iter()
        .find(|r| r["name"] == name)
        .map(|r| r["weight"].clone())
        .unwrap_or(Value::Null)
}

/// Message bytes in the store, as SQLite counts them.
fn stored_bytes(ten: &Ten) -> i64 {
    let c = rusqlite::Connection::open(ten.data_dir().join("tenement.db")).expect("open db");
    c.busy_timeout(Duration::from_secs(5))
        .expect("busy_timeout");
    c.query_row(
        "SELECT COALESCE(SUM(octet_length(message)), 0) FROM logs",
        [],
        |r| r.get(0),
    )
    .expect("sum")
}

/// An app that prints 5,000 lines of 20 KB (in bursts, in the background) and serves.
fn noisy(max_line: &str, max_bytes: &str) -> Ten {
    let b = Builder::new()
        .settings(&format!(
            "log_max_line = \"{max_line}\"\nlog_max_bytes = \"{max_bytes}\""
        ))
        .body(
            "[process.noisy]\ncommand = \"@DIR@/noisy.sh\"\nenv = { APP = \"@APP@\" }\n\
             [instances]\nnoisy = [\"a\"]\n",
        );
    let script = b.dir().join("noisy.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         line=$(printf '%020000d' 0)\n\
         (for i in $(seq 1 20); do yes \"$line\" | head -n 250; done) &\n\
         exec \"$APP\"\n",
    )
    .expect("write noisy.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    b.start()
}

/// Review M8 and S3: a flood of long lines is cut at log_max_line, the store keeps at most
/// log_max_bytes, and weight changes during the flood all succeed and survive a restart.
#[test]
fn a_flood_of_long_lines_is_bounded_and_never_starves_weight_writes() {
    let mut ten = noisy("1KB", "200KB");
    ten.wait_status(&format!("a.noisy.{DOMAIN}"), "/", 200);
    for w in 1..=20 {
        let out = cli_ok(&ten, &["weight", "noisy:a", &w.to_string()]);
        assert_eq!(out, format!("noisy:a weight {w}\n"));
    }
    assert_eq!(weight_of(&ten, "noisy:a"), 20);

    // Lines are cut at 1 KB and marked (before: split into 16 KiB pieces, unmarked).
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let out = cli_ok(&ten, &["logs", "noisy:a", "--limit", "1", "--json"]);
        let line: Option<Value> = out
            .lines()
            .next()
            .and_then(|l| serde_json::from_str(l).ok());
        if let Some(m) = line.as_ref().and_then(|l| l["message"].as_str()) {
            if m.ends_with(CUT_MARK) {
                break m.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no cut line: {out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(line, format!("{}{CUT_MARK}", "0".repeat(1000)));

    // The store holds at most log_max_bytes of messages once the flood is over (100 MB came).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bytes = stored_bytes(&ten);
        if bytes <= 200_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store still holds {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The last weight was saved: it is there after a restart.
    assert!(ten.sigterm().success());
    ten.serve_again();
    assert_eq!(weight_of(&ten, "noisy:a"), 20);
}

/// A fake fleet member: `/health` answers ok, anything else 20 MiB (with a Content-Length on
/// `/metrics`, without one, until the connection closes, elsewhere).
struct Huge {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Huge {
    fn start() -> Huge {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                std::thread::spawn(move || {
                    c.set_nonblocking(false).ok();
                    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    c.set_write_timeout(Some(Duration::from_secs(10))).ok();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if c.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    if path == "/health" {
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}",
                        );
                        return;
                    }
                    let size = 20 * 1024 * 1024;
                    let head = if path == "/metrics" {
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
                    } else {
                        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string()
                    };
                    if c.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let chunk = vec![b'['; 64 * 1024];
                    for _ in 0..size / chunk.len() {
                        if c.write_all(&chunk).is_err() {
                            return; // the router stopped reading: what we want
                        }
                    }
                });
            }
        });
        Huge { addr, stop }
    }
}

impl Drop for Huge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Review L4: a member answering 20 MiB is named as an error in the merge, the router stays up.
#[test]
fn a_member_answering_too_much_is_an_error_in_the_merge_not_an_oom() {
    let huge = Huge::start();
    let router = Builder::new()
        .body("[fleet]\nhealth_interval = \"100ms\"\nunhealthy_after = 1\n")
        .start_with_args(&["--domain", "r.test"]);
    cli_ok(
        &router,
        &[
            "server",
            "add",
            "huge",
            &format!("http://{}", huge.addr),
            "--domain",
            "huge.test",
        ],
    );
    let get = |path: &str| {
        router.control_request(&format!(
            "GET {path} HTTP/1.1\r\nHost: ten\r\nConnection: close\r\n\r\n"
        ))
    };
    let r = get("/api/fleet/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("# server huge: answer over 8 MiB, not merged\n"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert!(text.contains("tenement_fleet_scrape_up{server_id=\"huge\"} 0"));
    assert!(text.len() < 1024 * 1024, "{} bytes", text.len());

    let r = get("/api/fleet/logs?limit=100000");
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = r.json();
    let lines = lines.as_array().expect("lines");
    assert!(
        lines.iter().any(|l| l["server"] == "huge"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("server huge: answer over 8 MiB, not merged"))),
        "{lines:?}"
    );
    // Still up and answering.
    assert_eq!(get("/health").status, 200);
    assert_eq!(get("/api/servers").status, 200);
}

/// Review L3: concurrent scrapes each get a whole, valid exposition (renders are serialised
/// off the workers and shared).
#[test]
fn concurrent_scrapes_all_get_the_whole_exposition() {
    let ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\", \"b\"]\n")
        .start();
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    let addr = ten.addr;
    let scrapes: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                crate::util::request(
                    addr,
                    format!("GET /metrics HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
            })
        })
        .collect();
    for s in scrapes {
        let r = s.join().expect("scrape thread");
        assert_eq!(r.status, 200);
        let text = r.text();
        for series in [
            "tenement_instance_up{id=\"a\",process=\"api\"}",
            "tenement_instance_up{id=\"b\",process=\"api\"}",
            "tenement_log_lines_dropped_total",
            "tenement_build_info",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
