//! Smoke tests of the test binaries themselves. Besides checking them, this integration test is
//! what makes `cargo test --workspace` (`make test`) build the real `ten-testapp` and
//! `ten-bench-pingora` executables into target/PROFILE/, where the root package's end-to-end
//! tests find them: cargo builds a package's binaries for its own integration tests only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn testapp_listens_and_answers_health() {
    let mut app = Command::new(env!("CARGO_BIN_EXE_ten-testapp"))
        .args(["--port", "0", "--name", "smoke"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ten-testapp");
    let mut out = BufReader::new(app.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read its first line");
    let addr = line
        .trim()
        .strip_prefix("ten-testapp smoke listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let mut conn = TcpStream::connect(&addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    let read = conn.read_to_string(&mut resp);
    let _ = app.kill();
    let _ = app.wait();
    read.expect("read the response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("ok"), "{resp}");
}

#[test]
fn bench_floor_explains_its_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_ten-bench-pingora"))
        .output()
        .expect("run ten-bench-pingora");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("usage: ten-bench-pingora"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
