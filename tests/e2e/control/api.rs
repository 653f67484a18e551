//! SPEC §6: the management HTTP API on the proxy's bare domain, on `admin_listen` and on the
//! control socket: tokens (Argon2 hashes only), per-client slowing of failed attempts, and bad
//! input refused with a reason and no change.

use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use super::{cli_ok, names, ps_json, row, server, summary, API};
use crate::util::{read_response, Builder, Resp, Ten, DOMAIN};

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A request to the management API at `addr`, from the source address `from`.
fn api_from(
    from: Ipv4Addr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Resp {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(from), 0)))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    sock.connect_timeout(&SockAddr::from(addr), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr} from {from}: {e}"));
    let mut s = TcpStream::from(sock);
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    read_response(&mut BufReader::new(s))
}

fn api(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
    api_from(LOCAL, addr, method, path, token, body)
}

/// A JSON `{"error": "..."}` answer: its message.
fn error_of(r: &Resp) -> String {
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{} {}",
        r.status,
        r.text()
    );
    r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" in {}", r.text()))
        .to_string()
}

/// `ten token-gen`: the token alone on stdout.
fn token_gen(ten: &Ten) -> String {
    token_line(&cli_ok(ten, &["token-gen"]))
}

/// The stdout of `ten token-gen`: one line, `ten_` and 64 hex digits; the token.
fn token_line(out: &str) -> String {
    let token = out.strip_suffix('\n').unwrap_or(out);
    assert!(!token.contains('\n'), "only the token on stdout: {out:?}");
    let hex = token
        .strip_prefix("ten_")
        .unwrap_or_else(|| panic!("token without ten_ prefix: {out:?}"));
    assert_eq!(hex.len(), 64, "{out:?}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{out:?}"
    );
    token.to_string()
}

#[test]
fn api_needs_a_token_on_the_bare_domain_and_on_admin_listen() {
    let ten = Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .body(API)
        .start();
    let admin = ten.admin.expect("admin address announced");
    assert_ne!(admin, ten.addr);
    let both = [("bare domain", ten.addr), ("admin_listen", admin)];

    for (what, addr) in both {
        let r = api(addr, "GET", "/health", None, "");
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.json(), json!({"status": "ok"}), "{what}");
        // No token exists yet: 401, telling how to make one.
        let r = api(addr, "GET", "/api/instances", None, "");
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(
            error_of(&r).contains("ten token-gen"),
            "{what}: {}",
            r.text()
        );
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{what}: {:?}",
            r.headers
        );
    }

    let (status, out, err) = ten.cli(&["token-gen"]);
    assert!(status.success(), "{err}");
    assert!(err.contains("shown once"), "{err}");
    let token = token_line(&out);
    let wrong = format!("ten_{}", "0".repeat(64));

    // Three failures in all from 127.0.0.1: under the limit of per-client slowing.
    let r = api(ten.addr, "GET", "/api/instances", None, "");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some());
    error_of(&r);
    for (what, addr) in both {
        let r = api(addr, "GET", "/api/instances", Some(&wrong), "");
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert!(r.header("www-authenticate").is_some(), "{what}");
        assert!(
            error_of(&r).contains("invalid token"),
            "{what}: {}",
            r.text()
        );
        let r = api(addr, "GET", "/api/instances", Some(&token), "");
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.json(), json!([]), "{what}");
        // Tokens are made only over the control socket, even with a valid token.
        let r = api(addr, "POST", "/api/tokens", Some(&token), "");
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert!(error_of(&r).contains("token-gen"), "{what}");
    }

    // The token works for changes too: spawn on admin_listen, stop on the bare domain.
    let r = api(
        admin,
        "POST",
        "/api/instances",
        Some(&token),
        r#"{"process": "api", "id": "t"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "api:t");
    assert_eq!(r.json()["state"], "healthy");
    assert_eq!(names(&ps_json(&ten)), ["api:t"]);
    let r = api(ten.addr, "DELETE", "/api/instances/api:t", Some(&token), "");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(ps_json(&ten), Vec::<Value>::new());

    // A second token works alongside the first.
    let second = token_gen(&ten);
    assert_ne!(second, token);
    for t in [&token, &second] {
        let r = api(admin, "GET", "/api/instances", Some(t), "");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Only Argon2 hashes are stored, never a token.
    let db = ten.data_dir().join("tenement.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open tenement.db");
    let mut stmt = conn
        .prepare("SELECT hash FROM api_tokens")
        .expect("api_tokens");
    let hashes: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|h| h.expect("hash"))
        .collect();
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    for h in &hashes {
        assert!(h.starts_with("$argon2"), "{h}");
        for t in [&token, &second] {
            assert!(!h.contains(t.trim_start_matches("ten_")), "{h}");
        }
    }
    // Nor anywhere in the database files (main, journal, WAL).
    for e in std::fs::read_dir(ten.data_dir())
        .expect("data dir")
        .flatten()
    {
        if !e.file_name().to_string_lossy().starts_with("tenement.db") {
            continue;
        }
        let bytes = std::fs::read(e.path()).expect("read db file");
        for t in [&token, &second] {
            let hex = t.trim_start_matches("ten_").as_bytes();
            assert!(
                !bytes.windows(hex.len()).any(|w| w == hex),
                "token stored in clear in {}",
                e.path().display()
            );
        }
    }
}

#[test]
fn failed_tokens_slow_down_that_client_only() {
    let ten = server();
    let token = token_gen(&ten);
    let wrong = format!("ten_{}", "f".repeat(64));

    let mut statuses = Vec::new();
    let mut slowed = None;
    for _ in 0..10 {
        let r = api_from(LOCAL, ten.addr, "GET", "/api/instances", Some(&wrong), "");
        statuses.push(r.status);
        if r.status == 429 {
            slowed = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = slowed.unwrap_or_else(|| panic!("never slowed down: {statuses:?}"));
    assert!(
        statuses.len() >= 2,
        "slowed at the first failure: {statuses:?}"
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {:?}", r.headers));
    assert!(retry >= 1, "Retry-After {retry}");
    assert!(!error_of(&r).is_empty());
    let r = api_from(LOCAL, ten.addr, "GET", "/api/instances", Some(&wrong), "");
    assert_eq!(r.status, 429, "still slowed: {}", r.text());

    // Another client address is not affected: the right token passes, a wrong one is a 401.
    let r = api_from(OTHER, ten.addr, "GET", "/api/instances", Some(&token), "");
    assert_eq!(
        r.status,
        200,
        "127.0.0.2 with the right token: {}",
        r.text()
    );
    let r = api_from(OTHER, ten.addr, "GET", "/api/instances", Some(&wrong), "");
    assert_eq!(r.status, 401, "127.0.0.2 with a wrong token: {}", r.text());
    let r = api_from(OTHER, ten.addr, "GET", "/api/instances", Some(&token), "");
    assert_eq!(r.status, 200, "{}", r.text());
    // Open endpoints stay open for the slowed client, and the control socket needs no token.
    let r = api_from(LOCAL, ten.addr, "GET", "/health", None, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ps_json(&ten), Vec::<Value>::new());
}

/// A raw request over the control socket.
fn over_socket(ten: &Ten, method: &str, path: &str, body: &str) -> Resp {
    ten.control_request(&format!(
        "{method} {path} HTTP/1.1\r\nHost: ten\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Bad requests over the control socket: method, path, body, the status expected, and a word
/// the error message must contain.
#[rustfmt::skip]
const BAD_INPUT: &[(&str, &str, &str, u16, &str)] = &[
    ("POST", "/api/instances", r#"{"process": "api", "#, 400, "invalid JSON"),
    ("POST", "/api/instances", "", 400, "invalid JSON"),
    ("POST", "/api/instances", r#"{"process":"api","id":"z","bogus":1}"#, 400, "bogus"),
    ("POST", "/api/instances", r#"{"process":"api"}"#, 400, "id"),
    ("POST", "/api/instances", r#"{"process":"api","id":"z","weight":101}"#, 400, "101"),
    ("POST", "/api/instances", r#"{"process":"api","id":"a b"}"#, 400, "a b"),
    ("POST", "/api/instances", r#"{"process":"nope","id":"z"}"#, 404, "nope"),
    ("POST", "/api/instances", r#"{"process":"api","id":"x"}"#, 409, "already exists"),
    ("PUT", "/api/instances/api:x/weight", r#"{"weight":101}"#, 400, "101"),
    ("PUT", "/api/instances/api:x/weight", r#"{"weight":-1}"#, 400, "-1"),
    ("PUT", "/api/instances/api:x/weight", r#"{"weight":"50"}"#, 400, "invalid JSON"),
    ("PUT", "/api/instances/api:x/weight", r#"{"weight":50,"x":1}"#, 400, "x"),
    ("PUT", "/api/instances/api:x/weight", "fifty", 400, "invalid JSON"),
    ("GET", "/api/instances/nocolon", "", 400, "nocolon"),
    ("DELETE", "/api/instances/nocolon", "", 400, "nocolon"),
    ("POST", "/api/instances/nocolon/restart", "", 400, "nocolon"),
    ("GET", "/api/instances/api:nope", "", 404, "api:nope"),
    ("DELETE", "/api/instances/api:nope", "", 404, "api:nope"),
    ("POST", "/api/instances/api:nope/restart", "", 404, "api:nope"),
    ("PUT", "/api/instances/api:nope/weight", r#"{"weight":5}"#, 404, "api:nope"),
    ("DELETE", "/api/instances", "", 405, "DELETE"),
    ("PATCH", "/api/instances", "{}", 405, "PATCH"),
    ("GET", "/api/instances/api:x/restart", "", 405, "GET"),
    ("POST", "/api/instances/api:x/weight", r#"{"weight":5}"#, 405, "POST"),
    ("PUT", "/api/tokens", "", 405, "PUT"),
    ("DELETE", "/api/tokens/nope", "", 400, "nope"),
    ("DELETE", "/api/tokens/999", "", 404, "999"),
    ("POST", "/api/tokens", r#"{"scope":"Bad Name"}"#, 400, "scope"),
    ("GET", "/api/nothing-here", "", 404, "nothing-here"),
];

#[test]
fn bad_api_input_is_refused_with_a_reason_and_changes_nothing() {
    let ten = server();
    cli_ok(&ten, &["spawn", "api:x"]);
    // The control socket needs no token.
    let r = over_socket(&ten, "GET", "/api/instances", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(r.json().as_array().expect("list")), ["api:x"]);
    let before = summary(&ten);

    for (method, path, body, status, needle) in BAD_INPUT {
        let r = over_socket(&ten, method, path, body);
        assert_eq!(r.status, *status, "{method} {path} {body}: {}", r.text());
        let msg = error_of(&r);
        assert!(
            msg.contains(needle),
            "{method} {path} {body}: {needle:?} not in {msg:?}"
        );
        assert_eq!(
            summary(&ten),
            before,
            "{method} {path} {body} changed something"
        );
    }
    // The same good requests do work over the socket.
    let r = over_socket(
        &ten,
        "PUT",
        "/api/instances/api:x/weight",
        r#"{"weight":7}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["weight"], 7);
    assert_eq!(row(&ps_json(&ten), "api:x")["weight"], 7);
}
