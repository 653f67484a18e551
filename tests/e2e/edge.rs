//! Edge routes (SPEC §3 rule 0, `[routes]`, `upstreams`): ten as a drop-in for nginx.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::supervision::{cli, instance, wait_instance};
use crate::util::{free_port, request, Builder, Resp, DOMAIN};

/// A test app ten does not manage, on its own port; killed on drop.
struct App(Child, u16);

impl App {
    fn start(name: &str) -> App {
        let port = free_port();
        let child = Command::new(crate::util::app_bin())
            .args(["--port", &port.to_string(), "--name", name])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn app");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "app {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        App(child, port)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> Resp {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn custom_domains_prefixes_strip_and_longest_prefix() {
    let (web, api, admin) = (App::start("web"), App::start("api"), App::start("admin"));
    let ten = Builder::new()
        .body(&format!(
            "[process.web]\nupstreams = [\"127.0.0.1:{}\"]\n[process.api]\nupstreams = [\"127.0.0.1:{}\"]\n\
             [process.admin]\nupstreams = [\"127.0.0.1:{}\"]\n\
             [routes]\n\"Example.com\" = \"web\"\n\"www.example.com\" = \"web:0\"\n\
             \"example.com/api\" = {{ to = \"api\", strip_prefix = true }}\n\
             \"example.com/api/admin\" = {{ to = \"admin\", strip_prefix = true }}\n\"example.com/keep\" = \"api\"\n",
            web.1, api.1, admin.1
        ))
        .start();
    let h = |host: &str, path: &str| {
        let r = ten.get(host, path);
        assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
        let j = r.json();
        (
            j["_name"].as_str().unwrap_or("").to_string(),
            j["_path"].as_str().unwrap_or("").to_string(),
            j["host"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        h("example.com", "/headers"),
        ("web".into(), "/headers".into(), "example.com".into())
    );
    assert_eq!(
        h("EXAMPLE.com:443", "/headers").0,
        "web",
        "case and port ignored"
    );
    assert_eq!(h("www.example.com", "/headers").0, "web");
    // Prefix with strip: /api/headers -> /headers on the api app, Host preserved.
    assert_eq!(
        h("example.com", "/api/headers?x=1"),
        ("api".into(), "/headers?x=1".into(), "example.com".into())
    );
    // Longest prefix wins.
    assert_eq!(
        h("example.com", "/api/admin/headers"),
        ("admin".into(), "/headers".into(), "example.com".into())
    );
    // Without strip the path is kept: the api app sees /keep/headers, which it does not serve.
    let r = ten.get("example.com", "/keep/headers");
    assert_eq!((r.status, r.header("x-served-by")), (404, Some("api")));
    // /apix is not under /api.
    assert_eq!(
        ten.get("example.com", "/apix").text(),
        "not found\n",
        "went to web, which 404s unknown paths"
    );
    assert_eq!(
        ten.get("example.com", "/apix").header("x-served-by"),
        Some("web")
    );
    // Still: unknown hosts 404, implicit rules work for other hosts.
    assert_eq!(ten.get("other.example.com", "/").status, 404);
    assert_eq!(h(&format!("0.api.{DOMAIN}"), "/headers").0, "api");
}

#[test]
fn external_upstreams_are_health_checked_and_weighted() {
    let (a, b) = (App::start("ext-a"), App::start("ext-b"));
    let ten = Builder::new()
        .settings("health_check_interval = \"100ms\"")
        .body(&format!("[process.legacy]\nupstreams = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nhealth = \"/health\"\n", a.1, b.1))
        .start();
    let host = format!("legacy.{DOMAIN}");
    let v = wait_instance(&ten, "legacy:0", "listed healthy", |v| {
        v["state"] == "healthy"
    });
    assert_eq!(v["kind"], "external");
    let (_, table, _) = cli(&ten, &["ps"]);
    assert!(
        table.contains("legacy:0") && table.contains("(external)"),
        "{table}"
    );
    // Health failing: out of routing.
    get(
        std::net::SocketAddr::from(([127, 0, 0, 1], a.1)),
        "x",
        "/control/health-fail",
    );
    wait_instance(&ten, "legacy:0", "unhealthy", |v| v["state"] == "unhealthy");
    for _ in 0..30 {
        assert_eq!(ten.get(&host, "/").text(), "hello from ext-b\n");
    }
    // Recovered: back in.
    get(
        std::net::SocketAddr::from(([127, 0, 0, 1], a.1)),
        "x",
        "/control/health-ok",
    );
    wait_instance(&ten, "legacy:0", "healthy again", |v| {
        v["state"] == "healthy"
    });
    // Weights: legacy:1 at 0 takes nothing; the setting is listed and kept across restarts of ten.
    let (ok, _, err) = cli(&ten, &["weight", "legacy:1", "0"]);
    assert!(ok, "{err}");
    assert_eq!(instance(&ten, "legacy:1").expect("listed")["weight"], 0);
    for _ in 0..30 {
        assert_eq!(ten.get(&host, "/").text(), "hello from ext-a\n");
    }
    // ten never stops an external upstream.
    let (ok, _, err) = cli(&ten, &["stop", "legacy:0"]);
    assert!(!ok, "stopping an external upstream must be refused");
    assert!(
        err.contains("unknown instance") || err.contains("external"),
        "{err}"
    );
}

#[test]
fn bad_route_configs_are_rejected_with_their_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenement.toml");
    std::fs::write(
        &path,
        "[process.web]\ncommand = \"x\"\n[routes]\n\"a.com\" = \"nope\"\n\"b.com/x\" = \"web\"\n\"B.com/x/\" = \"web\"\n\"c.com:80\" = \"web\"\n",
    )
    .expect("write");
    let (status, _, err) = crate::util::ten(
        &["config", "check", path.to_str().expect("utf8")],
        dir.path(),
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("tenement.toml:4: routes.\"a.com\"")
            || err.contains("tenement.toml:4: routes.a.com"),
        "{err}"
    );
    assert!(err.contains("unknown process \"nope\""), "{err}");
    assert!(
        err.contains("line 5") || err.contains(":5"),
        "duplicate names the other line: {err}"
    );
    assert!(err.contains("c.com:80"), "{err}");
}

/// Start nginx on `conf` (absolute), bounded wait until `port` accepts.
fn start_nginx(prefix: &Path, conf: &Path, port: u16) -> Child {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let nginx = nginx.expect("nginx is not installed: run `make test`, which installs nginx-light");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start (see {}/error.log)",
            prefix.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn nginx_migration_answers_like_nginx() {
    let (web, api) = (App::start("web"), App::start("api"));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx-migration");
    let dir = tempfile::tempdir().expect("tempdir");
    let nginx_port = free_port();
    let ports = |text: &str| {
        text.replace("127.0.0.1:3000", &format!("127.0.0.1:{}", web.1))
            .replace("127.0.0.1:3001", &format!("127.0.0.1:{}", api.1))
    };
    let nginx_conf =
        ports(&std::fs::read_to_string(example.join("nginx.conf")).expect("nginx.conf"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{nginx_port}"));
    std::fs::write(dir.path().join("nginx.conf"), nginx_conf).expect("write");
    let nginx = NginxGuard(Some(start_nginx(
        dir.path(),
        &dir.path().join("nginx.conf"),
        nginx_port,
    )));
    let ten_conf =
        ports(&std::fs::read_to_string(example.join("tenement.toml")).expect("tenement.toml"))
            .replace("127.0.0.1:8080", "127.0.0.1:0");
    let ten = Builder::new().raw(&ten_conf).start();
    let nginx_addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx_port));
    for (host, path) in [
        ("example.com", "/"),
        ("example.com", "/headers?q=1"),
        ("www.example.com", "/about"),
        ("example.com", "/api/headers"),
        ("www.example.com", "/api/users/42"),
        ("example.com", "/status?code=503"),
        ("unknown.example.org", "/"),
    ] {
        let (n, t) = (get(nginx_addr, host, path), ten.get(host, path));
        assert_eq!(
            n.status,
            t.status,
            "{host}{path}: nginx {} ten {}",
            n.text(),
            t.text()
        );
        if n.status == 404 && host.starts_with("unknown") {
            continue; // both refuse; bodies are each proxy's own
        }
        assert_eq!(
            n.header("x-served-by"),
            t.header("x-served-by"),
            "{host}{path}: same app"
        );
        if path.starts_with("/headers") || path.starts_with("/api/headers") {
            let (nj, tj) = (n.json(), t.json());
            for k in ["_path", "_method", "host"] {
                assert_eq!(nj[k], tj[k], "{host}{path}: {k}");
            }
        } else {
            assert_eq!(n.text(), t.text(), "{host}{path}: same body");
        }
    }
    drop(nginx);
}

/// Stops nginx however the test ends.
struct NginxGuard(Option<Child>);

impl Drop for NginxGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop_nginx(c);
        }
    }
}

/// SIGTERM: nginx's master stops its workers too (SIGKILL would orphan them).
fn stop_nginx(mut nginx: Child) {
    crate::util::signal(nginx.id(), crate::util::libc_sig::TERM);
    if crate::util::wait_bounded(&mut nginx, Duration::from_secs(10)).is_none() {
        let _ = nginx.kill();
        let _ = nginx.wait();
    }
}

/// An upstream that answers `101 Switching Protocols` the moment it accepts, before it has read
/// the request, then echoes every byte: ten then often holds the 101 before it has handled the
/// upgrade request's own (empty) body end. Regression test for vendor patch
/// pingora-proxy/0001 (cloudflare/pingora#946): that end was taken for the end of the tunnel,
/// and the client got EOF after its 101.
fn eager_upgrade_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn an_upgrade_answered_before_the_request_is_read_stays_open() {
    let port = eager_upgrade_upstream();
    let ten = Builder::new()
        .body(&format!(
            "[process.tunnel]\nupstreams = [\"127.0.0.1:{port}\"]\n\
             [routes]\n\"tunnel.example\" = \"tunnel\"\n"
        ))
        .start();
    // Each connection is a fresh upstream connection (an upgraded one is never pooled), so each
    // is a new chance for the 101 to be read first: without the fix one of the first few broke.
    for i in 0..60 {
        let mut s = std::net::TcpStream::connect(ten.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: tunnel.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("write upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).expect("read 101");
            assert_eq!(n, 1, "connection {i}: closed before its 101");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "connection {i}: {head}");
        let ping = format!("ping {i}");
        s.write_all(ping.as_bytes())
            .expect("write through the tunnel");
        let mut got = vec![0u8; ping.len()];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("connection {i}: tunnel closed after its 101: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), ping, "connection {i}");
    }
}

/// `[settings] threads` sizes ten's async runtime and its proxy workers, one thread with its
/// own runtime each (issue 23 part 4; by default one per CPU ten may run on: this machine's
/// tests run with 2 or more CPUs, so 3 is not the default on a 2-CPU runner, and the log
/// lines say what ten got). Requests on many connections at once are all answered, and the
/// API reached through the proxy listener (the bare domain) answers from the main runtime.
#[test]
fn threads_sets_the_runtime_workers_and_the_proxy_workers() {
    let ten = Builder::new()
        .settings("threads = 3")
        .body("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    let log = ten.stderr();
    assert!(log.contains(" workers=3"), "the main runtime: {log}");
    assert!(log.contains("proxy_workers=3"), "{log}");
    let pid = ten.child.as_ref().expect("running").id();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "ten-proxy").count(),
        3,
        "{names:?}"
    );
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let addr = ten.addr;
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
                (0..5)
                    .map(|_| {
                        write!(s, "GET / HTTP/1.1\r\nHost: a.api.{DOMAIN}\r\n\r\n").expect("write");
                        crate::util::read_response(&mut r).status
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client"), [200; 5]);
    }
    assert_eq!(
        ten.get(DOMAIN, "/health").status,
        200,
        "the API through the proxy listener"
    );
}
