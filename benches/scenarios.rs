//! Scenario measurements (not tests): the real `ten` and `ten-testapp` release binaries on
//! 127.0.0.1. Prints a markdown section to stdout (`make bench` appends it to BENCHMARKS.md).
//!
//! - wake latency of an idle-stopped instance vs the app's own start time (issue 3)
//! - restart latency after a crash, default backoff and a 10 ms backoff (issue 3)
//! - throughput and p99 while weights change 10 times a second vs unchanged (issue 5)
//! - route lookup at 10 vs 100,000 tenants, table rebuild at 100,000 tenants (issue 8)
//! - CPU of the fleet health loop with 1,000 registered servers (issue 8)
//!
//! Run: `cargo bench --profile profiling --bench scenarios` (after
//! `cargo build --profile profiling --bins`; `make bench` does both).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenement_proxy::{Remote, TableBuilder, TenantTarget};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/PROFILE/deps/scenarios-HASH -> target/PROFILE/NAME (PROFILE: `make bench` uses
    // `profiling`; a plain `cargo bench` uses `release`).
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = profile_dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --profile profiling --bins` first (or `--release` for a \
         plain `cargo bench`)",
        p.display()
    );
    p
}

struct Ten {
    child: Child,
    addr: SocketAddr,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ten {
    fn start(body: &str) -> Ten {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("tenement.toml");
        let text = format!(
            "[settings]\ndomain = \"b.test\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}/data\"\n{}",
            dir.path().display(),
            body.replace("@APP@", &bin("ten-testapp").display().to_string())
        );
        std::fs::write(&config, text).expect("config");
        let mut child = Command::new(bin("ten"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("TEN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ten serve");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut addr = None;
        for line in out.lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("ten: listening on http://") {
                addr = a.parse().ok();
            }
            if line.starts_with("ten: domain") {
                break;
            }
        }
        Ten {
            child,
            addr: addr.expect("ten announced its address"),
            sock: dir.path().join("data/ten.sock"),
            _dir: dir,
        }
    }

    /// One request on a new connection: (status, elapsed).
    fn get(&self, host: &str, path: &str) -> (u16, Duration) {
        let t = Instant::now();
        let status = get(self.addr, host, path).0;
        (status, t.elapsed())
    }

    fn api(&self, method: &str, path: &str, body: &str) -> u16 {
        let mut s = UnixStream::connect(&self.sock).expect("control socket");
        write!(s, "{method} {path} HTTP/1.1\r\nHost: ten\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn wait_ok(&self, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get(host, "/").0 != 200 {
            assert!(Instant::now() < deadline, "{host} never answered 200");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// CPU seconds (user + system) of `ten serve` so far.
    fn cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }
}

impl Drop for Ten {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// How long the test app takes to start listening on its own.
fn app_start_time() -> Duration {
    let mut times = Vec::new();
    for _ in 0..7 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let t = Instant::now();
        let mut c = Command::new(bin("ten-testapp"))
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("app");
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(t.elapsed());
        let _ = c.kill();
        let _ = c.wait();
    }
    median(times)
}

fn wake_latency() -> Duration {
    let ten = Ten::start("[process.app]\ncommand = \"@APP@\"\nhealth = \"/health\"\nidle_timeout = \"1s\"\n[instances]\napp = [\"u1\"]\n");
    ten.wait_ok("u1.app.b.test");
    let mut times = Vec::new();
    for _ in 0..5 {
        // Wait until idle-stopped: the next request wakes it.
        std::thread::sleep(Duration::from_millis(2500));
        let (status, t) = ten.get("u1.app.b.test", "/");
        assert_eq!(status, 200);
        times.push(t);
    }
    median(times)
}

fn restart_latency(backoff_ms: u64) -> Duration {
    let ten = Ten::start(&format!(
        "[process.app]\ncommand = \"@APP@\"\nhealth = \"/health\"\nbackoff_base_ms = {backoff_ms}\n\
         backoff_max_ms = {}\nmax_restarts = 100\n[instances]\napp = [\"a\"]\n",
        backoff_ms.max(1000)
    ));
    ten.wait_ok("a.app.b.test");
    let mut times = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let _ = ten.get("a.app.b.test", "/crash");
        let t = Instant::now();
        // The crash lands ~50 ms after the reply; wait for it, then for the restart.
        while ten.get("a.app.b.test", "/").0 == 200 && t.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(2));
        }
        while ten.get("a.app.b.test", "/").0 != 200 {
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push(t.elapsed());
    }
    median(times)
}

/// Keep-alive load on `host` for `secs` from `conns` threads: (req/s, p99).
fn load(addr: SocketAddr, host: &str, secs: u64, conns: usize) -> (f64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, host) = (stop.clone(), host.to_string());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let Ok(s) = TcpStream::connect(addr) else {
                    return lat;
                };
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if w.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return lat;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        break;
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect();
    all.sort();
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or_default();
    (all.len() as f64 / secs as f64, p99)
}

fn weight_churn() -> Vec<(String, f64, Duration)> {
    let ten =
        Ten::start("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"v1\", \"v2\"]\n");
    ten.wait_ok("v1.api.b.test");
    ten.wait_ok("v2.api.b.test");
    let mut rows = Vec::new();
    for round in 0..3 {
        let (rps, p99) = load(ten.addr, "api.b.test", 4, 8);
        rows.push((format!("round {} steady weights", round + 1), rps, p99));
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (stop, sock) = (stop.clone(), ten.sock.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let w = if i.is_multiple_of(2) { 10 } else { 90 };
                    if let Ok(mut s) = UnixStream::connect(&sock) {
                        let body = format!("{{\"weight\": {w}}}");
                        let _ = write!(
                            s,
                            "PUT /api/instances/api:v2/weight HTTP/1.1\r\nHost: ten\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.read_to_end(&mut Vec::new());
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                i
            })
        };
        let (rps, p99) = load(ten.addr, "api.b.test", 4, 8);
        stop.store(true, Ordering::Relaxed);
        let changes = churn.join().unwrap_or(0);
        rows.push((
            format!(
                "round {} weights changing 10/s ({changes} changes)",
                round + 1
            ),
            rps,
            p99,
        ));
    }
    rows
}

/// Route lookup cost at `n` tenants (ns/lookup) and the build time of that table.
fn tenant_table(n: usize) -> (f64, Duration) {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let t = Instant::now();
    let mut b = TableBuilder::new("b.test");
    for i in 0..n {
        let r = Remote::to(
            &format!("t{i}"),
            "s1",
            format!("t{i}.app.s1.test"),
            addr,
            false,
            "s1.test",
        );
        b.tenant(
            &format!("tenant{i}.example.com"),
            TenantTarget::Remote(Box::new(r)),
        );
    }
    let table = b.build();
    let build = t.elapsed();
    let hosts: Vec<String> = (0..1000)
        .map(|i| format!("tenant{}.example.com", (i * 7919) % n))
        .collect();
    let rounds = 2_000;
    let t = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        for h in &hosts {
            found += usize::from(table.lookup(std::hint::black_box(h), "/").is_some());
        }
    }
    let per = t.elapsed().as_nanos() as f64 / (rounds * hosts.len()) as f64;
    assert_eq!(found, rounds * hosts.len());
    (per, build)
}

/// CPU used by `ten serve` per second with 1,000 servers checked every second.
fn fleet_health_cpu() -> (f64, usize) {
    // One tiny /health responder stands in for all 1,000 servers.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}");
            });
        }
    });
    let ten = Ten::start("[fleet]\nhealth_interval = \"1s\"\n");
    let n = 1000;
    for i in 0..n {
        let body = format!(
            "{{\"id\": \"s{i}\", \"url\": \"http://127.0.0.1:{port}\", \"domain\": \"s{i}.test\"}}"
        );
        assert_eq!(
            ten.api("POST", "/api/servers", &body),
            201,
            "add server {i}"
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let (c0, t0) = (ten.cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let per_sec = (ten.cpu() - c0) / t0.elapsed().as_secs_f64();
    (per_sec, n)
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    println!("## Scenarios (benches/scenarios.rs)\n");
    let start = app_start_time();
    let wake = wake_latency();
    println!("### Scale to zero and restarts\n");
    println!("| measure | median |\n|---|---|");
    println!(
        "| ten-testapp start to listening, on its own | {} |",
        ms(start)
    );
    println!(
        "| request to an idle-stopped instance (wake + serve) | {} |",
        ms(wake)
    );
    println!(
        "| wake overhead over the app's own start | {} |",
        ms(wake.saturating_sub(start))
    );
    println!(
        "| crash to serving again, backoff_base_ms = 1000 (default) | {} |",
        ms(restart_latency(1000))
    );
    println!(
        "| crash to serving again, backoff_base_ms = 10 | {} |",
        ms(restart_latency(10))
    );
    println!("\n### Weight changes under load (8 keep-alive connections, 4 s each, interleaved)\n");
    println!("| run | req/s | p99 |\n|---|---|---|");
    for (name, rps, p99) in weight_churn() {
        println!("| {name} | {rps:.0} | {} |", ms(p99));
    }
    println!("\n### Fleet tables\n");
    println!("| tenants | lookup | table build |\n|---|---|---|");
    for n in [10, 100_000] {
        let (per, build) = tenant_table(n);
        println!("| {n} | {per:.0} ns | {} |", ms(build));
    }
    let (cpu, n) = fleet_health_cpu();
    println!("\nFleet health loop: {n} servers checked every second use {:.1} % of one core in `ten serve`.", cpu * 100.0);
}
