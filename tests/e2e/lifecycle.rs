//! `ten serve` lifecycle: SIGTERM drains in-flight requests, stops every instance (process
//! group included), exits 0.

use std::time::Duration;

use crate::util::{alive, Builder, DOMAIN};

/// Pids of every process whose environment carries `TEN_TEST_MARKER=<marker>`.
pub fn marked_pids(marker: &str) -> Vec<u32> {
    let needle = format!("TEN_TEST_MARKER={marker}");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) && alive(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn sigterm_drains_then_stops_every_instance_and_exits_0() {
    let b = Builder::new();
    let marker = b.dir().display().to_string();
    let mut ten = b
        .body(
            "[process.stubborn]\ncommand = \"@APP@ --spawn-child --ignore-sigterm\"\nstop_timeout = \"1s\"\n\
             env = { TEN_TEST_MARKER = \"@DIR@\" }\n\
             [process.web]\ncommand = \"@APP@\"\nlisten = \"socket\"\nenv = { TEN_TEST_MARKER = \"@DIR@\" }\n\
             [instances]\nstubborn = [\"a\"]\nweb = [\"x\"]\n",
        )
        .start();
    ten.wait_status(&format!("a.stubborn.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("x.web.{DOMAIN}"), "/", 200);
    let pids = marked_pids(&marker);
    assert!(pids.len() >= 3, "app a, its child, app x: {pids:?}");
    let sock = ten.dir.path().join("data/web-x.sock");
    assert!(sock.exists(), "socket at the default path");
    // A slow request in flight when SIGTERM arrives must complete.
    let addr = ten.addr;
    let slow = std::thread::spawn(move || {
        crate::util::request(
            addr,
            format!(
                "GET /sleep?ms=2000 HTTP/1.1\r\nHost: x.web.{DOMAIN}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = ten.sigterm();
    assert!(status.success(), "exit status {status:?}\n{}", ten.stderr());
    let r = slow.join().expect("slow request");
    assert_eq!(r.status, 200, "in-flight request drained: {}", r.text());
    assert_eq!(r.text(), "slept 2000\n");
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived ten serve");
    }
    assert!(!sock.exists(), "socket file removed on stop");
    assert!(
        ten.stderr().contains("SIGKILL"),
        "the stubborn app needed SIGKILL:\n{}",
        ten.stderr()
    );
}
