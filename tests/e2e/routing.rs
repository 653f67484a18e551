//! SPEC §3: host rules, weighted choice, retries, errors, forwarded headers, streaming.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::{request, Builder, Ten, DOMAIN};

fn two_instances(extra_process: &str) -> Ten {
    Builder::new()
        .body(&format!(
            "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\nrequest_timeout = \"1s\"\nmax_body = \"1KB\"\n{extra_process}\n\
             [process.sock]\ncommand = \"@APP@\"\nlisten = \"socket\"\n\
             [instances]\napi = [\"prod\", \"v2\"]\nsock = [\"one\"]\n"
        ))
        .start()
}

fn host(h: &str) -> String {
    format!("{h}.{DOMAIN}")
}

#[test]
fn every_host_rule_in_order() {
    let ten = two_instances("");
    let r = ten.wait_status(&host("prod.api"), "/", 200);
    assert_eq!(r.text(), "hello from api:prod\n");
    let r = ten.wait_status(&host("v2.api"), "/", 200);
    assert_eq!(r.text(), "hello from api:v2\n");
    // Unix-socket instance.
    let r = ten.wait_status(&host("one.sock"), "/", 200);
    assert_eq!(r.text(), "hello from sock:one\n");
    // {process}.{domain}: weighted across both.
    let r = ten.get(&host("api"), "/");
    assert!(r.text().starts_with("hello from api:"), "{}", r.text());
    // Bare domain: management.
    let r = ten.get(DOMAIN, "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    // Host matching ignores case and port.
    let r = ten.get(&format!("PROD.Api.{}:8080", DOMAIN.to_uppercase()), "/");
    assert_eq!(r.text(), "hello from api:prod\n");
    // Anything else: 404 naming the host.
    let r = ten.get("other.example", "/");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "no route for host \"other.example\"\n");
    // An unknown id of a known process is a 404 too (never a spawn).
    let r = ten.get(&host("nope.api"), "/");
    assert_eq!(r.status, 404);
}

#[test]
fn weighted_route_spreads_over_healthy_instances() {
    let ten = two_instances("");
    ten.wait_status(&host("prod.api"), "/", 200);
    ten.wait_status(&host("v2.api"), "/", 200);
    let mut prod = 0;
    let n = 400;
    // Keep-alive: many requests on one connection.
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    for _ in 0..n {
        write!(s, "GET / HTTP/1.1\r\nHost: {}\r\n\r\n", host("api")).expect("write");
        let resp = crate::util::read_response(&mut r);
        assert_eq!(resp.status, 200);
        if resp.text() == "hello from api:prod\n" {
            prod += 1;
        }
    }
    // 50/50 over 400: far from both ends (the ±2-point property is unit-tested over 10,000).
    assert!((120..=280).contains(&prod), "prod got {prod} of {n}");
}

#[test]
fn request_headers_are_forwarded_and_request_id_echoed() {
    // The test client (127.0.0.1) is a trusted proxy here: its X-Forwarded-For is extended
    // (tests/e2e/trust.rs covers an untrusted one).
    let ten = Builder::new()
        .settings("trusted_proxies = [\"127.0.0.1\"]")
        .body(
            "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n\
             [instances]\napi = [\"prod\"]\n",
        )
        .start();
    ten.wait_status(&host("prod.api"), "/", 200);
    let raw = format!(
        "GET /headers?x=1 HTTP/1.1\r\nHost: {}\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\r\n",
        host("prod.api")
    );
    let r = ten.request(&raw);
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["host"], host("prod.api"), "Host is preserved");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], host("prod.api"));
    assert_eq!(h["_path"], "/headers?x=1");
    let id = h["x-request-id"]
        .as_str()
        .expect("request id sent upstream")
        .to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.header("x-request-id"),
        Some(id.as_str()),
        "echoed on the response"
    );
    for hop in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert!(
            h.get(hop).is_none(),
            "hop-by-hop header {hop} was forwarded: {h}"
        );
    }
    // One hop-by-hop field alone (no Connection header) is still found and stripped: a
    // standard name and one outside `http`'s list (vendor pingora-proxy 0004's one pass).
    for (field, name) in [
        ("Proxy-Authorization: Basic eA==", "proxy-authorization"),
        ("Keep-Alive: timeout=5", "keep-alive"),
        ("TE: trailers", "te"),
    ] {
        let raw = format!(
            "GET /headers HTTP/1.1\r\nHost: {}\r\n{field}\r\nX-Other: 1\r\n\r\n",
            host("prod.api")
        );
        let h = ten.request(&raw).json();
        assert!(h.get(name).is_none(), "{name} was forwarded: {h}");
        assert_eq!(h["x-other"], "1", "{h}");
    }
    // A client-sent id is kept.
    let raw = format!(
        "GET /headers HTTP/1.1\r\nHost: {}\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n",
        host("prod.api")
    );
    let r = ten.request(&raw);
    assert_eq!(r.json()["x-request-id"], "abc-123");
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    // Our own error responses carry one too.
    assert!(ten.get("nowhere", "/").header("x-request-id").is_some());
    // ten compresses nothing (no downstream modules): Accept-Encoding goes to the app as sent
    // and the app's identity response comes back as it is.
    let raw = format!(
        "GET /headers HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: gzip, br\r\nConnection: close\r\n\r\n",
        host("prod.api")
    );
    let r = ten.request(&raw);
    assert_eq!(r.json()["accept-encoding"], "gzip, br");
    assert_eq!(r.header("content-encoding"), None);
    // Several X-Forwarded-For lines are one list (RFC 9110 §5.3): all kept, in order.
    let raw = format!(
        "GET /headers HTTP/1.1\r\nHost: {}\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nConnection: close\r\n\r\n",
        host("prod.api")
    );
    assert_eq!(
        ten.request(&raw).json()["x-forwarded-for"],
        "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
    );
}

#[test]
fn upstream_errors_map_to_502_503_504_413() {
    let ten = two_instances("");
    ten.wait_status(&host("prod.api"), "/", 200);
    // request_timeout = 1s
    let r = ten.get(&host("prod.api"), "/sleep?ms=3000");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("api:prod"), "{}", r.text());
    // Broken mid-response: the status line already went out, so the body is cut short.
    let r = request(
        ten.addr,
        format!(
            "GET /broken HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            host("prod.api")
        )
        .as_bytes(),
    );
    assert!(
        r.status == 502 || r.body.len() < 1000,
        "status {} body {}",
        r.status,
        r.body.len()
    );
    // max_body = 1KB: Content-Length over it is refused before reaching the app.
    let body = "x".repeat(2000);
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        host("prod.api"),
        body.len()
    );
    let r = ten.request(&raw);
    assert_eq!(r.status, 413, "{}", r.text());
    // A chunked body without Content-Length is counted too.
    let raw = format!("POST /echo HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", host("prod.api"), body.len());
    let r = ten.request(&raw);
    assert_eq!(r.status, 413, "{}", r.text());
    // Under the limit it passes.
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        host("prod.api")
    );
    assert_eq!(ten.request(&raw).text(), "hello");
}

#[test]
fn no_healthy_instance_is_503() {
    let ten = two_instances("");
    ten.wait_status(&host("prod.api"), "/", 200);
    ten.wait_status(&host("v2.api"), "/", 200);
    ten.get(&host("v2.api"), "/exit?code=0");
    ten.wait_status(&host("v2.api"), "/", 503);
    for _ in 0..20 {
        assert_eq!(ten.get(&host("api"), "/").text(), "hello from api:prod\n");
    }
    ten.get(&host("prod.api"), "/exit?code=0");
    let r = ten.wait_status(&host("api"), "/", 503);
    assert!(
        r.text().contains("no healthy instance of \"api\""),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = ten.get(&host("prod.api"), "/");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("api:prod is not running"), "{}", r.text());
}

#[test]
fn connect_failure_is_retried_on_another_instance() {
    // An app ten does not manage, and a port where nothing listens.
    let live = crate::util::free_port();
    let dead = crate::util::free_port();
    let mut app = std::process::Command::new(crate::util::app_bin())
        .args(["--port", &live.to_string(), "--name", "outside"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn app");
    let ten = Builder::new()
        .body(&format!(
            "[process.legacy]\nupstreams = [\"127.0.0.1:{dead}\", \"127.0.0.1:{live}\"]\n"
        ))
        .start();
    ten.wait_status(&host("1.legacy"), "/", 200);
    for _ in 0..40 {
        let r = ten.get(&host("legacy"), "/");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "hello from outside\n");
    }
    // Direct to the dead one: nowhere else to go.
    let r = ten.get(&host("0.legacy"), "/");
    assert_eq!(r.status, 502, "{}", r.text());
    let _ = app.kill();
    let _ = app.wait();
}

#[test]
fn bad_requests_get_4xx_not_a_crash() {
    let ten = two_instances("");
    ten.wait_status(&host("prod.api"), "/", 200);
    // HTTP/1.0 without Host.
    let r = ten.request("GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.text());
    for bad in ["exa mple", "a..b", "[zz]", "x:y"] {
        let r = ten.request(&format!(
            "GET / HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(r.status, 400, "host {bad:?}: {}", r.text());
    }
    // An absurd header: refused, and the server keeps serving.
    let huge = "a".repeat(200_000);
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = write!(
        s,
        "GET / HTTP/1.1\r\nHost: {}\r\nX-Big: {huge}\r\n\r\n",
        host("prod.api")
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    assert!(head.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");
    // Garbage.
    let r = std::panic::catch_unwind(|| ten.request("NOT HTTP AT ALL\r\n\r\n"));
    if let Ok(r) = r {
        assert!((400..500).contains(&r.status));
    }
    assert_eq!(ten.get(&host("prod.api"), "/").status, 200, "still serving");
}

#[test]
fn websocket_and_sse_pass_through() {
    let ten = two_instances("");
    ten.wait_status(&host("prod.api"), "/", 200);
    // WebSocket echo through the proxy.
    let stream = TcpStream::connect(ten.addr).expect("connect");
    let url = format!("ws://{}/ws", host("prod.api"));
    let (mut ws, resp) = tungstenite::client(url.as_str(), stream).expect("websocket handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws.send(tungstenite::Message::text("ping through ten"))
        .expect("send");
    let msg = ws.read().expect("read");
    assert_eq!(msg.into_text().expect("text").as_str(), "ping through ten");
    // Quiet for longer than request_timeout (1s here): a WebSocket is not cut by it.
    std::thread::sleep(Duration::from_millis(1500));
    ws.send(tungstenite::Message::text("still there"))
        .expect("send after a pause");
    let msg = ws.read().expect("read after a pause");
    assert_eq!(msg.into_text().expect("text").as_str(), "still there");
    let _ = ws.close(None);
    // SSE: events arrive one by one, before the stream ends. From `sock` (default
    // request_timeout): api's 1s read timeout would race the 1s gap between events.
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /sse?n=3&interval_ms=1000 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host("one.sock")
    )
    .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The first event must arrive while the app is still sleeping before the second (unbuffered).
    while !String::from_utf8_lossy(&got).contains("event 1 ") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "stream ended before the first event");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        !String::from_utf8_lossy(&got).contains("event 3"),
        "events were buffered"
    );
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event 3 from sock:one"), "{text}");
}
