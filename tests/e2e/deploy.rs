//! SPEC §5 deploy semantics, proven whole under continuous load: no request lost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::supervision::{cli, instance};
use crate::util::{Builder, Ten, DOMAIN};

/// One response as the load generator saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    started: Instant,
    result: Result<(u16, String), String>,
}

/// Continuous keep-alive GET / load from a few threads, bounded in time (also used by
/// `reload.rs` and `upgrade.rs`). Like any HTTP/1.1 client it opens a new connection after a
/// response that says `Connection: close` (a server that drains, as during an upgrade).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Seen>>>,
}

/// One response: (status, body) and whether it said `Connection: close`.
fn read_one(r: &mut BufReader<TcpStream>) -> Result<((u16, String), bool), String> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("read status: {e}"))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    let mut close = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)
            .map_err(|e| format!("read header: {e}"))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                close = true;
            }
            if k.eq_ignore_ascii_case("content-length") {
                len = v
                    .trim()
                    .parse()
                    .map_err(|_| "bad content-length".to_string())?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok(((status, String::from_utf8_lossy(&body).into_owned()), close))
}

impl Load {
    pub(crate) fn start(addr: SocketAddr, host: String, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (stop, host) = (stop.clone(), host.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut seen = Vec::new();
                    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let started = Instant::now();
                        if conn.is_none() {
                            match TcpStream::connect(addr) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                                    let r = BufReader::new(s.try_clone().expect("clone"));
                                    conn = Some((s, r));
                                }
                                Err(e) => {
                                    seen.push(Seen {
                                        started,
                                        result: Err(format!("connect: {e}")),
                                    });
                                    continue;
                                }
                            }
                        }
                        let Some((s, r)) = conn.as_mut() else {
                            continue;
                        };
                        let result = write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
                            .map_err(|e| format!("write: {e}"))
                            .and_then(|_| read_one(r));
                        if !matches!(result, Ok((_, false))) {
                            conn = None;
                        }
                        let result = result.map(|(answer, _)| answer);
                        seen.push(Seen { started, result });
                    }
                    seen
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub(crate) fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect()
    }
}

/// Every response a 2xx, no connection error; returns bodies in order of start.
pub(crate) fn assert_no_loss(seen: &[Seen]) -> Vec<(Instant, String)> {
    assert!(
        seen.len() > 50,
        "load generator barely ran: {} requests",
        seen.len()
    );
    let bad: Vec<_> = seen
        .iter()
        .filter(|s| !matches!(&s.result, Ok((200..=299, _))))
        .map(|s| format!("{:?}", s.result))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        bad.len(),
        seen.len(),
        &bad[..bad.len().min(5)]
    );
    let mut bodies: Vec<_> = seen
        .iter()
        .filter_map(|s| s.result.as_ref().ok().map(|(_, b)| (s.started, b.clone())))
        .collect();
    bodies.sort_by_key(|(t, _)| *t);
    bodies
}

fn ok(ten: &Ten, args: &[&str]) -> String {
    let (ok, out, err) = cli(ten, args);
    assert!(ok, "ten {args:?} failed: {err}\n{}", ten.stderr());
    out
}

fn server() -> Ten {
    Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\nstop_timeout = \"5s\"\n[instances]\napi = [\"v1\"]\n")
        .start()
}

#[test]
fn blue_green_deploy_route_stop_under_load_loses_nothing() {
    let ten = server();
    let api = format!("api.{DOMAIN}");
    ten.wait_status(&format!("v1.{api}"), "/", 200);
    let load = Load::start(ten.addr, api.clone(), 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = ok(&ten, &["deploy", "api", "--version", "v2"]);
    assert!(out.contains("api:v2 deployed: healthy, weight 0"), "{out}");
    assert!(out.contains(&format!("v2.{api}")), "{out}");
    assert_eq!(
        ten.get(&format!("v2.{api}"), "/").text(),
        "hello from api:v2\n",
        "reachable directly before routing"
    );
    // A long request on v1, started before the switch, must complete.
    let addr = ten.addr;
    let long_host = format!("v1.{api}");
    let long = std::thread::spawn(move || {
        crate::util::request(
            addr,
            format!(
                "GET /sleep?ms=1500 HTTP/1.1\r\nHost: {long_host}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    });
    crate::supervision::wait_instance(&ten, "api:v1", "the long request in flight", |v| {
        v["in_flight"].as_u64() >= Some(1)
    });
    ok(&ten, &["route", "api", "--from", "v1", "--to", "v2"]);
    let routed = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    ok(&ten, &["stop", "api:v1"]);
    std::thread::sleep(Duration::from_millis(300));
    let seen = load.finish();
    let r = long.join().expect("long request");
    assert_eq!(
        (r.status, r.text()),
        (200, "slept 1500\n".to_string()),
        "long request on v1 completed"
    );
    let bodies = assert_no_loss(&seen);
    assert!(
        bodies.iter().any(|(_, b)| b == "hello from api:v1\n"),
        "v1 served before the switch"
    );
    let after: Vec<_> = bodies.iter().filter(|(t, _)| *t > routed).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|(_, b)| b == "hello from api:v2\n"),
        "every request after the route goes to v2"
    );
    assert!(instance(&ten, "api:v1").is_none());
    let history = ok(&ten, &["deploy", "--history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&history).expect("json");
    let actions: Vec<_> = h
        .as_array()
        .expect("array")
        .iter()
        .rev()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").to_string(),
                r["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        vec!["deploy", "route", "stop"],
        "{actions:?}"
    );
    assert!(
        actions.iter().all(|(_, r)| r.starts_with("ok")),
        "{actions:?}"
    );
}

#[test]
fn canary_ramp_and_rollback_under_load_lose_nothing() {
    let ten = server();
    let api = format!("api.{DOMAIN}");
    ten.wait_status(&format!("v1.{api}"), "/", 200);
    let load = Load::start(ten.addr, api.clone(), 4);
    ok(
        &ten,
        &["deploy", "api:v2", "--weight", "10", "--timeout", "20s"],
    );
    std::thread::sleep(Duration::from_millis(200));
    ok(&ten, &["weight", "api:v2", "50"]);
    std::thread::sleep(Duration::from_millis(200));
    ok(&ten, &["route", "api", "--from", "v1", "--to", "v2"]);
    std::thread::sleep(Duration::from_millis(200));
    // Rollback.
    ok(&ten, &["route", "api", "--from", "v2", "--to", "v1"]);
    let rolled_back = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    ok(&ten, &["stop", "api:v2"]);
    std::thread::sleep(Duration::from_millis(200));
    let bodies = assert_no_loss(&load.finish());
    assert!(
        bodies.iter().any(|(_, b)| b == "hello from api:v2\n"),
        "the canary got traffic"
    );
    assert!(
        bodies
            .iter()
            .filter(|(t, _)| *t > rolled_back)
            .all(|(_, b)| b == "hello from api:v1\n"),
        "rolled back to v1"
    );
    assert_eq!(instance(&ten, "api:v1").expect("v1")["weight"], 100);
}

#[test]
fn failed_deploy_changes_nothing_and_route_refuses_bad_targets() {
    let b = Builder::new();
    let ten = b
        .body(
            "[process.api]\ncommand = \"sh -c 'if [ {version} = bad ]; then echo cannot start {version} >&2; exit 1; fi; exec @APP@'\"\n\
             health = \"/health\"\n[instances]\napi = [\"v1\"]\n",
        )
        .start();
    ten.wait_status(&format!("v1.api.{DOMAIN}"), "/", 200);
    let before = crate::supervision::ps(&ten);
    let (ok_, _, err) = cli(
        &ten,
        &["deploy", "api", "--version", "bad", "--timeout", "3s"],
    );
    assert!(!ok_);
    assert!(err.contains("api:bad did not become healthy"), "{err}");
    assert!(
        err.contains("cannot start bad"),
        "last log lines shown: {err}"
    );
    let after = crate::supervision::ps(&ten);
    assert_eq!(before.len(), after.len());
    assert_eq!(after[0]["weight"], 100);
    assert_eq!(
        ten.get(&format!("api.{DOMAIN}"), "/").text(),
        "hello from api:v1\n"
    );
    // Route refusals name the problem.
    let (ok_, _, err) = cli(&ten, &["route", "api", "--from", "v1", "--to", "nope"]);
    assert!(!ok_ && err.contains("unknown instance api:nope"), "{err}");
    // Deploying an existing version is a conflict.
    let (ok_, _, err) = cli(&ten, &["deploy", "api:v1"]);
    assert!(!ok_ && err.contains("already exists"), "{err}");
    // Usage errors exit 2.
    let out = std::process::Command::new(crate::util::ten_bin())
        .args(["deploy", "api"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let history = ok(&ten, &["deploy", "--history"]);
    assert!(history.contains("failed"), "{history}");
}
