//! Issue 20: the `[settings]` limits and listeners a reload applies while serving:
//! `header_timeout`, `max_connections`, `trusted_proxies`, `preserve_header_case`,
//! `admin_listen`, the TLS listener's `listen` and `http2`. Each test changes one kind and shows the new value in force.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{reload, rewrite, TWO};
use crate::util::{accepted_idle, closed_within, free_port, read_response, Builder, Ten, DOMAIN};

fn api() -> String {
    format!("1.api.{DOMAIN}")
}

fn start(settings: &str) -> Ten {
    let ten = Builder::new().settings(settings).body(TWO).start();
    ten.wait_status(&api(), "/", 200);
    ten
}

/// `ten reload` with `settings` in the file; its output (it must succeed).
fn reload_with(ten: &Ten, settings: &str) -> String {
    rewrite(ten, settings, TWO);
    let (ok, out, err) = reload(ten, &[]);
    assert!(ok, "reload failed: {out}\n{err}\n{}", ten.stderr());
    out
}

/// Sends a head one byte every 200 ms (40 bytes, 8 s at most); whether it was cut.
fn trickle_is_cut(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").expect("request line");
    let header = format!("Host: {}\r\nX-Slow: {}", api(), "x".repeat(40));
    for b in header.bytes().take(40) {
        if s.write_all(&[b]).is_err() || closed_within(&mut s, Duration::from_millis(200)) {
            return true;
        }
    }
    false
}

#[test]
fn a_lower_header_timeout_by_reload_cuts_a_slow_head_on_new_connections() {
    let ten = start("header_timeout = \"60s\"");
    let out = reload_with(&ten, "header_timeout = \"1s\"");
    assert!(
        out.contains("setting ~ header_timeout: applies to connections accepted from now on"),
        "{out}"
    );
    assert!(
        trickle_is_cut(ten.addr),
        "a 40-byte trickle over 8 s was not cut by the reloaded header_timeout = 1s"
    );
    assert_eq!(ten.get(&api(), "/").status, 200, "others are served");
}

/// Whether `s` gets no answer within 2 s (its connection waits in the backlog).
fn unanswered(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    matches!(
        s.read(&mut buf),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    )
}

#[test]
fn a_lower_max_connections_by_reload_holds_and_a_higher_one_lets_waiters_in() {
    let ten = start("header_timeout = \"60s\"\nmax_connections = 100");
    let out = reload_with(&ten, "header_timeout = \"60s\"\nmax_connections = 1");
    assert!(out.contains("setting ~ max_connections:"), "{out}");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        api()
    );
    // One idle connection (accepted: it had an answer) fills the listener at its new limit.
    let idle = accepted_idle(ten.addr, &api());
    let mut waiting = TcpStream::connect(ten.addr).expect("connect (backlog)");
    waiting.write_all(request.as_bytes()).expect("write");
    assert!(
        unanswered(&mut waiting),
        "a second connection was served with max_connections = 1"
    );
    // A higher limit: the waiting connection is accepted at once, the idle one still open.
    let out = reload_with(&ten, "header_timeout = \"60s\"\nmax_connections = 4");
    assert!(out.contains("setting ~ max_connections:"), "{out}");
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let resp = read_response(&mut BufReader::new(&mut waiting));
    assert_eq!(resp.status, 200, "served once the limit grew");
    drop(idle);
}

/// The test app's view of `X-Forwarded-For` for a request claiming to come from 192.0.2.7.
fn forwarded_for(ten: &Ten) -> String {
    let r = ten.request(&format!(
        "GET /headers HTTP/1.1\r\nHost: {}\r\nX-Forwarded-For: 192.0.2.7\r\nConnection: close\r\n\r\n",
        api()
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["x-forwarded-for"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn trusted_proxies_changed_by_reload_honour_then_ignore_x_forwarded_for() {
    let ten = start("");
    assert_eq!(forwarded_for(&ten), "127.0.0.1", "nobody is trusted");
    let out = reload_with(&ten, "trusted_proxies = [\"127.0.0.1\"]");
    assert!(
        out.contains("setting ~ trusted_proxies: applies in the next table"),
        "{out}"
    );
    assert_eq!(
        forwarded_for(&ten),
        "192.0.2.7, 127.0.0.1",
        "a trusted peer's X-Forwarded-For is kept and extended"
    );
    reload_with(&ten, "");
    assert_eq!(forwarded_for(&ten), "127.0.0.1", "untrusted again");
}

/// One request through ten, read raw: (the response head as sent, the header names the app
/// received, as it received them).
fn header_case(ten: &Ten) -> (String, Vec<String>) {
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET /header-names HTTP/1.1\r\nHost: {}\r\nX-Custom-Case: 1\r\ncontent-type: text/plain\r\n\
         Connection: close\r\n\r\n",
        api()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}");
    (head.to_string(), body.lines().map(String::from).collect())
}

#[test]
fn header_names_go_through_in_canonical_case_unless_preserve_header_case_is_on_by_reload() {
    let ten = start("");
    // Default: one map per message; the common names in title case, others in lower case.
    let (head, names) = header_case(&ten);
    assert!(
        head.contains("\r\nx-served-by: "),
        "the app's X-Served-By: {head}"
    );
    assert!(head.contains("\r\nContent-Type: "), "{head}");
    assert!(names.iter().any(|n| n == "x-custom-case"), "{names:?}");
    assert!(names.iter().any(|n| n == "Content-Type"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "x-request-id"),
        "ten's own: {names:?}"
    );

    let out = reload_with(&ten, "preserve_header_case = true");
    assert!(
        out.contains("setting ~ preserve_header_case: on for the headers read from now on"),
        "{out}"
    );
    let (head, names) = header_case(&ten);
    assert!(
        head.contains("\r\nX-Served-By: "),
        "as the app wrote it: {head}"
    );
    assert!(names.iter().any(|n| n == "X-Custom-Case"), "{names:?}");
    assert!(names.iter().any(|n| n == "content-type"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "x-request-id"),
        "ten's own: {names:?}"
    );

    reload_with(&ten, "");
    let (head, _) = header_case(&ten);
    assert!(head.contains("\r\nx-served-by: "), "off again: {head}");
}

/// `GET /health` on `addr` (the admin listener), or None if nothing listens there.
fn admin_health(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some(read_response(&mut BufReader::new(s)).status)
}

#[test]
fn admin_listen_is_bound_moved_and_closed_by_reload() {
    let ten = start("");
    let (p1, p2) = (free_port(), free_port());
    let (a1, a2): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{p1}").parse().expect("addr"),
        format!("127.0.0.1:{p2}").parse().expect("addr"),
    );
    let out = reload_with(&ten, &format!("admin_listen = \"{a1}\""));
    assert!(
        out.contains(&format!("setting ~ admin_listen: listening on http://{a1}")),
        "{out}"
    );
    assert_eq!(admin_health(a1), Some(200));
    reload_with(&ten, &format!("admin_listen = \"{a2}\""));
    assert_eq!(admin_health(a2), Some(200));
    assert_eq!(
        admin_health(a1),
        None,
        "the old admin address still accepts"
    );
    let out = reload_with(&ten, "");
    assert!(
        out.contains(&format!("setting ~ admin_listen: {a2} closed")),
        "{out}"
    );
    assert_eq!(
        admin_health(a2),
        None,
        "the removed admin listener still accepts"
    );
    assert_eq!(ten.get(&api(), "/").status, 200);
}

#[test]
fn an_admin_listen_that_cannot_be_bound_refuses_the_reload() {
    let ten = start("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    rewrite(
        &ten,
        &format!("admin_listen = \"{addr}\"\nheader_timeout = \"2s\""),
        TWO,
    );
    let (ok, _, err) = reload(&ten, &[]);
    assert!(!ok, "a reload binding a taken admin_listen succeeded");
    assert!(err.contains("admin_listen"), "{err}");
    // Nothing changed: the same file is still a change of both keys.
    let (ok, out, err) = reload(&ten, &["--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("setting ~ header_timeout"), "{out}");
}

#[test]
fn the_tls_listener_gets_a_new_http2_and_a_new_address_by_reload() {
    let b = Builder::new();
    let host = api();
    let pem = crate::tls::self_signed(b.dir(), "default", &[&host]);
    let tls = |listen: &str, http2: bool| {
        format!(
            "[settings.tls]\nlisten = \"{listen}\"\ncert = \"@DIR@/default.pem\"\n\
             key = \"@DIR@/default.key\"\nhttp2 = {http2}\n"
        )
    };
    let ten = b.settings(&tls("127.0.0.1:0", true)).body(TWO).start();
    ten.wait_status(&host, "/", 200);
    let https = ten.https.expect("https");
    let alpn = |addr| {
        let s = crate::tls::tls_connect(addr, &host, &[&pem], &[b"h2", b"http/1.1"]);
        s.conn.alpn_protocol().map(|p| p.to_vec())
    };
    assert_eq!(alpn(https), Some(b"h2".to_vec()));
    // http2 off: the same address (the same socket) now offers HTTP/1.1 only.
    let out = reload_with(&ten, &tls("127.0.0.1:0", false));
    assert!(
        out.contains("setting ~ tls.http2: off for new connections"),
        "{out}"
    );
    assert_eq!(alpn(https), Some(b"http/1.1".to_vec()));
    // A new address: bound, the old one closed.
    let port = free_port();
    let moved: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let out = reload_with(&ten, &tls(&moved.to_string(), false));
    assert!(out.contains("setting ~ tls.listen:"), "{out}");
    assert_eq!(alpn(moved), Some(b"http/1.1".to_vec()));
    assert!(
        TcpStream::connect(https).is_err(),
        "the old TLS address still accepts"
    );
}

#[test]
fn connections_open_across_an_http2_change_still_count_against_max_connections() {
    let b = Builder::new();
    let host = api();
    let pem = crate::tls::self_signed(b.dir(), "default", &[&host]);
    let tls = |http2: bool| {
        format!(
            "max_connections = 1\n[settings.tls]\nlisten = \"127.0.0.1:0\"\n\
             cert = \"@DIR@/default.pem\"\nkey = \"@DIR@/default.key\"\nhttp2 = {http2}\n"
        )
    };
    let ten = b.settings(&tls(true)).body(TWO).start();
    ten.wait_status(&host, "/", 200);
    let https = ten.https.expect("https");
    // One TLS connection, answered and kept alive: the listener is full.
    let mut open = crate::tls::tls_connect(https, &host, &[&pem], &[b"http/1.1"]);
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    open.write_all(req.as_bytes()).expect("write");
    assert_eq!(read_response(&mut BufReader::new(&mut open)).status, 200);
    // http2 off: a new service takes the socket over; the open connection still counts.
    let out = reload_with(&ten, &tls(false));
    assert!(
        out.contains("setting ~ tls.http2: off for new connections"),
        "{out}"
    );
    // So a second connection waits in the backlog (no handshake answer) while the first is
    // open. (The new service counting from zero accepted it at once.)
    let mut waiting = TcpStream::connect(https).expect("connect (backlog)");
    waiting
        .write_all(b"\x16\x03\x01\x00\x05hello")
        .expect("write");
    assert!(
        unanswered(&mut waiting),
        "a second connection was accepted with max_connections = 1 after the http2 change"
    );
    drop(open);
}

#[test]
fn a_lower_log_max_rows_by_reload_trims_the_log_store_at_once() {
    let ten = start("");
    // The app logs a line per request: well over 5 lines.
    for _ in 0..20 {
        assert_eq!(ten.get(&api(), "/").status, 200);
    }
    let count = || {
        let (status, out, err) = ten.cli(&["logs", "--limit", "1000"]);
        assert!(status.success(), "ten logs: {out}{err}");
        out.lines().count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count() <= 20 {
        assert!(
            Instant::now() < deadline,
            "the lines never reached the store"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = reload_with(&ten, "log_max_rows = 5");
    assert!(
        out.contains("setting ~ log_max_rows: applies in the log store's next pass"),
        "{out}"
    );
    // With no further line written, the store is trimmed to the newest 5.
    while count() > 5 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "still {} lines after log_max_rows = 5",
            count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
