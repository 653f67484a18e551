//! SPEC §7 logs: capture, `ten logs`, search, filters, follow, SSE, floods.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::metrics::{scrape, value};
use crate::supervision::cli;
use crate::util::{Builder, Ten, DOMAIN};

fn app(ten_instances: &str) -> Ten {
    Builder::new()
        .body(&format!(
            "[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [{ten_instances}]\n"
        ))
        .start()
}

/// Poll `ten logs ARGS` until its output contains `want` (bounded: 20 s).
fn wait_logs(ten: &Ten, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = cli(ten, args);
        assert!(ok, "ten logs {args:?}: {err}");
        if out.contains(want) || Instant::now() > deadline {
            assert!(
                out.contains(want),
                "ten logs {args:?} never showed {want:?}:\n{out}"
            );
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn app_output_is_captured_searchable_and_filtered() {
    let ten = app("\"a\", \"b\"");
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("b.api.{DOMAIN}"), "/", 200);
    ten.get(&format!("a.api.{DOMAIN}"), "/noise?lines=3&stream=stderr");
    ten.get(&format!("b.api.{DOMAIN}"), "/noise?lines=2&stream=stdout");
    let out = wait_logs(&ten, &["logs", "api:a"], "noise 3 from api:a");
    let lines: Vec<_> = out.lines().filter(|l| l.contains(" from api:a")).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("noise 1") && lines[2].contains("noise 3"),
        "newest last: {out}"
    );
    assert!(lines.iter().all(|l| l.contains(" api:a stderr ")), "{out}");
    assert!(!out.contains("from api:b"), "instance filter: {out}");
    // Search by word across instances; stream filter.
    wait_logs(&ten, &["logs", "--search", "noise"], "noise 2 from api:b");
    let (_, out, _) = cli(
        &ten,
        &["logs", "api", "--stream", "stdout", "--search", "noise"],
    );
    assert!(
        out.contains("noise 1 from api:b") && !out.contains("from api:a stderr"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.contains(" stderr ")), "{out}");
    // --limit and --json.
    let (_, out, _) = cli(
        &ten,
        &[
            "logs", "api:a", "--search", "from", "--limit", "1", "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["message"], "noise 3 from api:a");
    assert_eq!(v["stream"], "stderr");
    assert!(
        v["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{v}"
    );
    // ten's own events are in the same store.
    wait_logs(
        &ten,
        &["logs", "ten", "--search", "healthy"],
        "api:a: healthy",
    );
    // A bad FTS query is the user's error, clearly.
    let (ok, _, err) = cli(&ten, &["logs", "--search", "\"unterminated"]);
    assert!(!ok);
    assert!(err.contains("bad search"), "{err}");
}

/// Issue 19: `ten logs ten --search crash` finds "api:a crashed: ..." (a bare word is a prefix);
/// quoted, `"crash"` is the exact word and does not.
#[test]
fn search_by_the_start_of_a_word() {
    let ten = app("\"a\"");
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    assert_eq!(ten.get(&format!("a.api.{DOMAIN}"), "/crash").status, 200);
    let out = wait_logs(
        &ten,
        &["logs", "ten", "--search", "crash"],
        "api:a: crashed",
    );
    assert!(out.contains("killed by SIGABRT"), "{out}");
    let (_, exact, _) = cli(&ten, &["logs", "ten", "--search", "\"crash\""]);
    assert!(!exact.contains("crashed"), "{exact}");
    // And not any substring: `rash` is the start of no word there.
    let (_, inner, _) = cli(&ten, &["logs", "ten", "--search", "rash"]);
    assert!(!inner.contains("crashed"), "{inner}");
}

#[test]
fn follow_and_sse_deliver_new_lines() {
    let ten = app("\"a\"");
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    let mut follow = Command::new(crate::util::ten_bin())
        .args(["logs", "-f", "api:a", "--data-dir"])
        .arg(ten.dir.path().join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("ten logs -f");
    // SSE straight over the control socket.
    let mut sse = UnixStream::connect(ten.dir.path().join("data/ten.sock")).expect("socket");
    sse.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        sse,
        "GET /api/logs/stream?process=api&id=a HTTP/1.1\r\nHost: ten\r\n\r\n"
    )
    .expect("write");
    let mut sse_r = BufReader::new(sse);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut l = String::new();
        assert!(sse_r.read_line(&mut l).expect("head") > 0);
        head.push_str(&l);
    }
    assert!(head.contains("text/event-stream"), "{head}");
    // Wait until both are attached, then make a line.
    std::thread::sleep(Duration::from_millis(300));
    ten.get(&format!("a.api.{DOMAIN}"), "/noise?lines=1");
    let mut got = String::new();
    while !got.contains("noise 1 from api:a") {
        let mut l = String::new();
        assert!(
            sse_r.read_line(&mut l).expect("sse read") > 0,
            "stream ended: {got}"
        );
        got.push_str(&l);
    }
    assert!(got.contains("data: {"), "{got}");
    let mut out = BufReader::new(follow.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains("noise 1 from api:a") && Instant::now() < deadline {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&l);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.contains("noise 1 from api:a"),
        "ten logs -f saw: {seen}"
    );
}

#[test]
fn a_flood_is_written_or_counted_as_dropped_never_lost() {
    let ten = app("\"a\"");
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    let produced = 200_000.0;
    let r = ten.get(&format!("a.api.{DOMAIN}"), "/noise?lines=200000");
    assert_eq!(r.text(), "wrote 200000\n");
    // The app also printed its "listening" line and one line per request it served
    // (GET / from wait_status, GET /noise): 200,003 lines.
    let want = produced + 3.0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut accepted, mut dropped);
    loop {
        let s = scrape(&ten);
        accepted = value(
            &s,
            "tenement_log_lines_total",
            &[("process", "api"), ("id", "a")],
        )
        .unwrap_or(0.0);
        dropped = value(&s, "tenement_log_lines_dropped_total", &[]).unwrap_or(0.0);
        if accepted + dropped >= want || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        accepted + dropped,
        want,
        "accepted {accepted} + dropped {dropped}"
    );
    // What was accepted is stored: the newest line is there and searchable.
    let (_, out, _) = cli(
        &ten,
        &["logs", "api:a", "--search", "noise", "--limit", "1"],
    );
    if dropped == 0.0 {
        assert!(out.contains("noise 200000 from api:a"), "{out}");
    }
}

#[test]
fn logs_survive_a_restart_of_ten_serve() {
    let mut ten = app("\"a\"");
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    ten.get(&format!("a.api.{DOMAIN}"), "/noise?lines=1&stream=stderr");
    wait_logs(&ten, &["logs", "api:a"], "noise 1 from api:a");
    assert!(ten.sigterm().success());
    ten.serve_again();
    let out = wait_logs(
        &ten,
        &["logs", "api:a", "--stream", "stderr"],
        "noise 1 from api:a",
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("noise 1 from api:a"))
            .count(),
        1,
        "{out}"
    );
    // ten's own events from before the restart are there too.
    wait_logs(
        &ten,
        &["logs", "ten", "--search", "stopped"],
        "api:a: stopped",
    );
}
