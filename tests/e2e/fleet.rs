//! SPEC §9 fleet, with three real `ten serve` processes on 127.0.0.1: a router and two servers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::supervision::cli;
use crate::util::{Builder, Ten};

mod pg;
mod placement;

/// A webhook receiver on 127.0.0.1 that keeps every POST body.
struct Hook {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicUsize>,
}

impl Hook {
    fn start() -> Hook {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicUsize::new(0));
        let (b, s) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while s.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
                let Ok((stream, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).ok();
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut r = BufReader::new(stream.try_clone().expect("clone"));
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                b.lock()
                    .expect("bodies")
                    .push(String::from_utf8_lossy(&body).into_owned());
                let mut w = stream;
                let _ = w.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Hook { port, bodies, stop }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("bodies").clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::Relaxed);
    }
}

/// An app server: `app:acme` and `app:globex`, each answering `/env?name=SERVER` with `name`.
/// On a fixed port, so that it comes back at the same URL after a restart. It lists its
/// router (127.0.0.1) in `trusted_proxies`, as docs/fleet.md says a member server does.
fn app_server(name: &str) -> Ten {
    let port = crate::util::free_port().to_string();
    Builder::new()
        .settings("trusted_proxies = [\"127.0.0.1\"]")
        .body(&format!(
            "[process.app]\ncommand = \"@APP@\"\nenv = {{ SERVER = \"{name}\" }}\n[instances]\napp = [\"acme\", \"globex\"]\n"
        ))
        .start_with_args(&["--domain", &format!("{name}.test"), "--port", &port])
}

fn servers(router: &Ten) -> Vec<Value> {
    let (ok, out, err) = cli(router, &["server", "list", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_status(router: &Ten, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = servers(router);
        if s.iter().any(|v| v["id"] == id && v["status"] == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server {id} never became {status}: {s:?}\n{}",
            router.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which server answered for `domain` (through the router).
fn served_by(router: &Ten, domain: &str) -> (u16, String) {
    let r = router.get(domain, "/env?name=SERVER");
    (r.status, r.text())
}

#[test]
fn tenants_route_fail_over_come_home_and_migrate() {
    let hook = Hook::start();
    let mut a = app_server("a");
    let b = app_server("b");
    a.wait_status("acme.app.a.test", "/", 200);
    b.wait_status("globex.app.b.test", "/", 200);
    let router = Builder::new()
        .body(&format!(
            "[process.local]\ncommand = \"@APP@\"\nenv = {{ SERVER = \"router\" }}\n[instances]\nlocal = [\"home\"]\n\
             [fleet]\nhealth_interval = \"200ms\"\nunhealthy_after = 2\nwebhook = \"http://127.0.0.1:{}/hook\"\nwebhook_after = \"1s\"\n",
            hook.port
        ))
        .start_with_args(&["--domain", "r.test"]);
    // The router's own instance starts in the background after the listeners open.
    router.wait_status("home.local.r.test", "/", 200);
    let ok = |args: &[&str]| {
        let (ok, out, err) = cli(&router, args);
        assert!(ok, "ten {args:?}: {err}");
        out
    };
    ok(&[
        "server",
        "add",
        "a",
        &format!("http://{}", a.addr),
        "--domain",
        "a.test",
        "--region",
        "eu",
    ]);
    ok(&[
        "server",
        "add",
        "b",
        &format!("http://{}", b.addr),
        "--domain",
        "b.test",
        "--region",
        "eu",
    ]);
    ok(&[
        "server",
        "add",
        "r",
        &format!("http://{}", router.addr),
        "--domain",
        "r.test",
    ]);
    ok(&["tenant", "add", "acme", "acme.com", "a", "app", "acme"]);
    ok(&[
        "tenant",
        "add",
        "globex",
        "globex.com",
        "b",
        "app",
        "globex",
    ]);
    ok(&["tenant", "add", "home", "home.com", "r", "local", "home"]);
    wait_status(&router, "a", "online");
    wait_status(&router, "b", "online");
    assert_eq!(served_by(&router, "acme.com"), (200, "a".into()));
    assert_eq!(served_by(&router, "globex.com"), (200, "b".into()));
    assert_eq!(
        served_by(&router, "home.com"),
        (200, "router".into()),
        "served locally"
    );
    let h = router.get("acme.com", "/headers").json();
    assert_eq!(
        h["host"], "acme.app.a.test",
        "Host rewritten for the home server"
    );
    assert_eq!(h["x-forwarded-host"], "acme.com");
    // A server with tenants cannot be removed.
    let (gone, _, err) = cli(&router, &["server", "rm", "a"]);
    assert!(!gone && err.contains("acme"), "{err}");

    // Kill server a: offline after unhealthy_after checks, then its tenants fail over to b.
    assert!(a.sigterm().success());
    wait_status(&router, "a", "offline");
    // The API shows the status as soon as the health loop records it; the table with the
    // failover is published right after (asynchronously): wait for it, then no 5xx.
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_by(&router, "acme.com") != (200, "b".into()) {
        assert!(Instant::now() < deadline, "never failed over to b");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..20 {
        assert_eq!(
            served_by(&router, "acme.com"),
            (200, "b".into()),
            "failover without 5xx after detection"
        );
    }
    // One webhook POST for this outage, not more.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook.bodies().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let posts = hook.bodies();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let post: Value = serde_json::from_str(&posts[0]).expect("webhook JSON");
    assert_eq!(
        (post["server"].as_str(), post["status"].as_str()),
        (Some("a"), Some("offline"))
    );
    assert!(
        post["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{post}"
    );

    // It comes back: online, and traffic returns home.
    a.serve_again();
    a.wait_status("acme.app.a.test", "/", 200);
    wait_status(&router, "a", "online");
    assert_eq!(served_by(&router, "acme.com"), (200, "a".into()));
    assert_eq!(hook.bodies().len(), 1, "no POST for the recovery");

    // Migrate: new requests go to the new home at once.
    ok(&["tenant", "migrate", "acme", "b"]);
    assert_eq!(served_by(&router, "acme.com"), (200, "b".into()));
    let tenants: Value = serde_json::from_str(&ok(&["tenant", "list", "--json"])).expect("json");
    assert!(
        tenants
            .as_array()
            .expect("array")
            .iter()
            .any(|t| t["id"] == "acme" && t["server"] == "b"),
        "{tenants}"
    );

    // Fleet metrics: one exposition, every sample labelled with its server.
    let r = crate::util::unix_request(
        &router.control,
        b"GET /api/fleet/metrics HTTP/1.1\r\nHost: ten\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = r
        .text()
        .lines()
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid exposition");
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| s.labels.get("server_id").is_some()),
        "every sample has server_id"
    );
    for id in ["a", "b", "r"] {
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "tenement_fleet_scrape_up"
                    && s.labels.get("server_id") == Some(id)),
            "scrape_up for {id}"
        );
    }
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "tenement_requests_total" && s.labels.get("server_id") == Some("a")));
    // And the router's own /metrics has the fleet gauge.
    let r = crate::util::unix_request(
        &router.control,
        b"GET /metrics HTTP/1.1\r\nHost: ten\r\nConnection: close\r\n\r\n",
    );
    let lines = r
        .text()
        .lines()
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    let own = prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid exposition");
    assert_eq!(
        crate::metrics::value(&own, "tenement_fleet_server_up", &[("server_id", "a")]),
        Some(1.0)
    );
}

#[test]
fn tenant_with_no_server_online_gets_503_and_fleet_needs_its_section() {
    let router = Builder::new()
        .body("[fleet]\nhealth_interval = \"100ms\"\nunhealthy_after = 1\n")
        .start_with_args(&["--domain", "r.test"]);
    let port = crate::util::free_port();
    let (ok, _, err) = cli(
        &router,
        &[
            "server",
            "add",
            "dead",
            &format!("http://127.0.0.1:{port}"),
            "--domain",
            "dead.test",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &router,
        &["tenant", "add", "t1", "t1.com", "dead", "app", "x"],
    );
    assert!(ok, "{err}");
    wait_status(&router, "dead", "offline");
    let r = router.get("t1.com", "/");
    assert_eq!(r.status, 503, "{}", r.text());
    // Bad input: duplicate domain, unknown server.
    let (ok, _, err) = cli(
        &router,
        &["tenant", "add", "t2", "t1.com", "dead", "app", "x"],
    );
    assert!(!ok && err.contains("t1"), "{err}");
    let (ok, _, err) = cli(
        &router,
        &["tenant", "add", "t3", "t3.com", "nope", "app", "x"],
    );
    assert!(!ok && err.contains("nope"), "{err}");
    // Without [fleet], the commands say how to turn it on.
    let plain = Builder::new().start();
    let (ok, _, err) = cli(&plain, &["server", "list"]);
    assert!(!ok && err.contains("[fleet]"), "{err}");
}
