//! Slow and many clients (SPEC §14, review H1, M2, S6, L6): the request head deadline, the
//! keep-alive timeout, max_connections, the open-file limit, WebSocket bytes and max_body,
//! log streams at shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{closed_within, read_response, signal, wait_bounded, Builder, Ten, DOMAIN};

const APP: &str = "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n";

fn host(h: &str) -> String {
    format!("{h}.{DOMAIN}")
}

/// A server with one `api:prod` instance, its process config extended by `process`.
fn server(settings: &str, process: &str) -> Ten {
    let ten = Builder::new()
        .settings(settings)
        .body(&format!("{APP}{process}\n[instances]\napi = [\"prod\"]\n"))
        .start();
    ten.wait_status(&host("prod.api"), "/", 200);
    ten
}

#[test]
fn websocket_frames_are_not_counted_against_max_body() {
    let ten = server("", "max_body = \"1KB\"\n");
    let stream = TcpStream::connect(ten.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let url = format!("ws://{}/ws", host("prod.api"));
    let (mut ws, resp) = tungstenite::client(url.as_str(), stream).expect("websocket handshake");
    assert_eq!(resp.status().as_u16(), 101);
    // 50 frames of 100 bytes: 5 times max_body, every one echoed.
    for i in 0..50 {
        let payload = vec![b'a' + (i % 26) as u8; 100];
        ws.send(tungstenite::Message::binary(payload.clone()))
            .unwrap_or_else(|e| panic!("send frame {i}: {e}"));
        let msg = ws
            .read()
            .unwrap_or_else(|e| panic!("connection cut after frame {i}: {e}"));
        assert_eq!(msg.into_data(), payload, "frame {i}");
    }
    let _ = ws.close(None);
    // A plain request body is still limited.
    let big = "x".repeat(2000);
    let r = ten.request(&format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        host("prod.api"),
        big.len()
    ));
    assert_eq!(r.status, 413);
}

#[test]
fn shutdown_ends_an_open_log_stream_instead_of_waiting_for_drain_timeout() {
    let b = Builder::new();
    let config = format!(
        "[settings]\ndomain = \"{DOMAIN}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"@DIR@/data\"\n\
         drain_timeout = \"300s\"\n\n{APP}\n[instances]\napi = [\"prod\"]\n"
    );
    let mut ten = b.raw(&config).start();
    let (status, out, err) = ten.cli(&["token-gen"]);
    assert!(status.success(), "token-gen: {out}{err}");
    let token = out.trim().to_string();
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /api/logs/stream HTTP/1.1\r\nHost: {DOMAIN}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("write");
    let mut r = BufReader::new(s);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut l = String::new();
        assert!(r.read_line(&mut l).expect("head") > 0, "closed: {head}");
        head.push_str(&l);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // The stream is open (counted in flight); drain_timeout is 300 s. `sigterm` waits at most
    // 30 s for the exit.
    let status = ten.sigterm();
    assert!(status.success(), "{status:?}");
    // The stream ended cleanly (last chunk), not cut.
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
}

#[test]
fn serve_raises_its_open_file_soft_limit_to_the_hard_limit() {
    let b = Builder::new().body(&format!("{APP}\n[instances]\napi = [\"prod\"]\n"));
    let config = b.dir().join("tenement.toml");
    std::fs::write(&config, b.config_text()).expect("config");
    // Started with a low soft limit (below any hard limit), as by a default `ulimit -n`.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {} serve --config {}",
            crate::util::ten_bin(),
            config.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let started = lines.any(|l| l.is_ok_and(|l| l.starts_with("ten: domain")));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()));
    signal(child.id(), crate::util::libc_sig::TERM);
    if wait_bounded(&mut child, Duration::from_secs(15)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(started, "ten serve did not start");
    let limits = limits.expect("/proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let v: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    let (soft, hard) = (v[3], v[4]);
    assert_eq!(soft, hard, "{line}");
    assert_ne!(soft, "256", "{line}");
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_cut_at_header_timeout() {
    let ten = server("header_timeout = \"1s\"", "");
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").expect("request line");
    // One header byte every 200 ms: each read is quick (Pingora's per-read timeout is 60 s),
    // the whole head never completes. Bounded: 40 bytes, 8 s.
    let header = format!("Host: {}\r\nX-Slow: {}", host("prod.api"), "x".repeat(40));
    let mut closed = false;
    for b in header.bytes().take(40) {
        if s.write_all(&[b]).is_err() || closed_within(&mut s, Duration::from_millis(200)) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a 40-byte trickle over 8 s was not cut by header_timeout = 1s"
    );
    // Others are served.
    assert_eq!(ten.get(&host("prod.api"), "/").status, 200);
    // A whole head sent at once (then a body slower than header_timeout) is fine.
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    write!(
        s,
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab",
        host("prod.api")
    )
    .expect("head");
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"cd").expect("rest of the body");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let r = read_response(&mut BufReader::new(s));
    assert_eq!(r.status, 200);
}

#[test]
fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let ten = server("keepalive_timeout = \"1s\"", "");
    let mut s = TcpStream::connect(ten.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Two proxied requests on one connection (kept alive), then silence.
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    for _ in 0..2 {
        write!(s, "GET / HTTP/1.1\r\nHost: {}\r\n\r\n", host("prod.api")).expect("write");
        assert_eq!(read_response(&mut r).status, 200);
    }
    let mut rest = Vec::new();
    // EOF (read_to_end returns) well before the 10 s read timeout.
    match r.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("idle keep-alive connection still open after 10 s")
        }
        Err(_) => {} // reset: closed too
    }
}

/// SPEC §14 max_connections: with the listener full, a new connection waits in the backlog
/// (no answer) while the control socket keeps working; it is served once one closes.
#[test]
fn beyond_max_connections_new_connections_wait_and_the_control_socket_works() {
    let ten = server("header_timeout = \"60s\"\nmax_connections = 3", "");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host("prod.api")
    );
    // Three idle connections (accepted: each had an answer) fill the listener.
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| crate::util::accepted_idle(ten.addr, &host("prod.api")))
        .collect();
    // The fourth: the kernel completes the handshake (backlog); ten does not serve it (a
    // worker may accept it and hold it until there is room).
    let mut waiting = TcpStream::connect(ten.addr).expect("connect (backlog)");
    waiting.write_all(request.as_bytes()).expect("write");
    waiting
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match waiting.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the fourth connection was served while three were open: {other:?}"),
    }
    // The management plane is on its own listener: unaffected.
    let (status, out, err) = ten.cli(&["ps"]);
    assert!(
        status.success(),
        "ten ps while the proxy listener is full: {out}{err}"
    );
    // One closes: the waiting connection is accepted and answered.
    drop(idle.pop());
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let resp = read_response(&mut BufReader::new(&mut waiting));
    assert_eq!(resp.status, 200, "served once a connection closed");
    drop(idle);
}
