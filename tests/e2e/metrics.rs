//! SPEC §10 metrics, scraped and parsed with a real Prometheus text-format parser.

use std::collections::HashMap;

use crate::supervision::{cli, wait_instance};
use crate::util::{Builder, Ten, DOMAIN};

/// Scrape /metrics on the bare domain and parse it.
pub fn scrape(ten: &Ten) -> prometheus_parse::Scrape {
    let r = ten.get(DOMAIN, "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    let lines = r
        .text()
        .lines()
        .map(|l| Ok(l.to_string()))
        .collect::<Vec<_>>();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid Prometheus text format")
}

/// The value of `name` with exactly these labels (None when absent).
pub fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find_map(|x| {
        let want: HashMap<&str, &str> = labels.iter().copied().collect();
        let got: HashMap<&str, &str> = x
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if x.metric != name || got != want {
            return None;
        }
        match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            prometheus_parse::Value::Histogram(ref h) => h
                .iter()
                .map(|b| b.count)
                .fold(None, |a, c| Some(a.unwrap_or(0.0f64).max(c))),
            _ => None,
        }
    })
}

/// Scrape until `pred` holds (bounded: 20 s): counters move just after each response is sent.
pub fn scrape_until(
    ten: &Ten,
    what: &str,
    pred: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = scrape(ten);
        if pred(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn names(s: &prometheus_parse::Scrape) -> Vec<String> {
    s.samples.iter().map(|x| x.metric.clone()).collect()
}

#[test]
fn counters_move_by_exactly_the_requests_sent() {
    let ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n[instances]\napi = [\"a\"]\n")
        .start();
    let host = format!("a.api.{DOMAIN}");
    ten.wait_status(&host, "/", 200);
    let a200 = [("process", "api"), ("id", "a"), ("status", "200")];
    // The single GET / of wait_status, once counted.
    let before = scrape_until(&ten, "the first request", |s| {
        value(s, "tenement_requests_total", &a200) == Some(1.0)
    });
    let ok0 = value(
        &before,
        "tenement_requests_total",
        &[("process", "api"), ("id", "a"), ("status", "200")],
    )
    .unwrap_or(0.0);
    let nf0 = value(
        &before,
        "tenement_requests_total",
        &[("process", "api"), ("id", "a"), ("status", "404")],
    )
    .unwrap_or(0.0);
    for _ in 0..25 {
        assert_eq!(ten.get(&host, "/").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(ten.get(&host, "/missing").status, 404);
    }
    ten.get(&host, "/status?code=418");
    let after = scrape_until(&ten, "29 more requests", |s| {
        value(s, "tenement_requests_total", &a200) == Some(26.0)
            && value(
                s,
                "tenement_requests_total",
                &[("process", "api"), ("id", "a"), ("status", "4xx")],
            ) == Some(1.0)
            // The in-flight gauge drops just after the counters move.
            && value(s, "tenement_in_flight_requests", &[("process", "api")]) == Some(0.0)
    });
    let ok1 = value(
        &after,
        "tenement_requests_total",
        &[("process", "api"), ("id", "a"), ("status", "200")],
    )
    .expect("200 series");
    let nf1 = value(
        &after,
        "tenement_requests_total",
        &[("process", "api"), ("id", "a"), ("status", "404")],
    )
    .expect("404 series");
    assert_eq!(ok1 - ok0, 25.0);
    assert_eq!(nf1 - nf0, 3.0);
    assert_eq!(
        value(
            &after,
            "tenement_requests_total",
            &[("process", "api"), ("id", "a"), ("status", "4xx")]
        ),
        Some(1.0),
        "rare codes by class"
    );
    let n = names(&after);
    for name in [
        "tenement_request_duration_seconds_count",
        "tenement_in_flight_requests",
        "tenement_instance_up",
        "tenement_instance_weight",
        "tenement_instance_restarts_total",
        "tenement_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(n.iter().any(|m| m == name), "{name} missing from {n:?}");
    }
    assert_eq!(
        value(
            &after,
            "tenement_instance_up",
            &[("process", "api"), ("id", "a")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "tenement_instance_weight",
            &[("process", "api"), ("id", "a")]
        ),
        Some(100.0)
    );
    assert_eq!(
        value(&after, "tenement_in_flight_requests", &[("process", "api")]),
        Some(0.0)
    );
    // No healthy instance: counted for the process with id "-".
    let ten2 = Builder::new()
        .body("[process.idle]\ncommand = \"@APP@\"\n")
        .start();
    assert_eq!(ten2.get(&format!("idle.{DOMAIN}"), "/").status, 503);
    let unrouted = [("process", "idle"), ("id", "-"), ("status", "503")];
    let s = scrape_until(&ten2, "the 503 counted", |s| {
        value(s, "tenement_requests_total", &unrouted).is_some()
    });
    assert_eq!(
        value(
            &s,
            "tenement_requests_total",
            &[("process", "idle"), ("id", "-"), ("status", "503")]
        ),
        Some(1.0)
    );
}

#[test]
fn restarts_and_upstream_errors_are_counted_and_stopped_instances_disappear() {
    let ten = Builder::new()
        .settings("backoff_base_ms = 50\nbackoff_max_ms = 100")
        .body("[process.api]\ncommand = \"@APP@\"\nrequest_timeout = \"1s\"\n[instances]\napi = [\"a\", \"b\"]\n")
        .start();
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("b.api.{DOMAIN}"), "/", 200);
    assert_eq!(
        ten.get(&format!("a.api.{DOMAIN}"), "/sleep?ms=2500").status,
        504
    );
    let pid = crate::supervision::instance(&ten, "api:a").expect("a")["pid"].as_u64();
    ten.get(&format!("a.api.{DOMAIN}"), "/crash");
    wait_instance(&ten, "api:a", "restarted", |v| {
        v["state"] == "healthy" && v["pid"].as_u64() != pid
    });
    let timeout = [("process", "api"), ("id", "a"), ("kind", "timeout")];
    let s = scrape_until(&ten, "the timeout counted", |s| {
        value(s, "tenement_upstream_errors_total", &timeout) == Some(1.0)
    });
    assert_eq!(
        value(
            &s,
            "tenement_instance_restarts_total",
            &[("process", "api"), ("id", "a")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "tenement_upstream_errors_total",
            &[("process", "api"), ("id", "a"), ("kind", "timeout")]
        ),
        Some(1.0)
    );
    assert!(value(
        &s,
        "tenement_requests_total",
        &[("process", "api"), ("id", "b"), ("status", "200")]
    )
    .is_some());
    let (ok, _, err) = cli(&ten, &["stop", "api:b"]);
    assert!(ok, "{err}");
    let s = scrape_until(&ten, "api:b gone", |s| {
        !s.samples.iter().any(|x| x.labels.get("id") == Some("b"))
    });
    let left: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.labels.get("id") == Some("b"))
        .map(|x| x.metric.clone())
        .collect();
    assert!(
        left.is_empty(),
        "series of the stopped instance remain: {left:?}"
    );
    assert!(value(
        &s,
        "tenement_instance_up",
        &[("process", "api"), ("id", "a")]
    )
    .is_some());
}

#[test]
fn metrics_token_guards_metrics_and_health() {
    let ten = Builder::new()
        .settings("metrics_token = \"s3cret\"")
        .start();
    assert_eq!(ten.get(DOMAIN, "/metrics").status, 401);
    assert_eq!(ten.get(DOMAIN, "/health").status, 401);
    let r = ten.request(&format!("GET /metrics HTTP/1.1\r\nHost: {DOMAIN}\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("tenement_build_info"));
    let r = ten.request(&format!("GET /metrics HTTP/1.1\r\nHost: {DOMAIN}\r\nAuthorization: Bearer wrong\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.status, 401);
}

#[test]
fn metrics_can_be_turned_off() {
    let ten = Builder::new()
        .settings("metrics = false")
        .body("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    let s = scrape(&ten);
    assert!(!names(&s).iter().any(|n| n == "tenement_requests_total"));
    assert_eq!(
        value(
            &s,
            "tenement_instance_up",
            &[("process", "api"), ("id", "a")]
        ),
        Some(1.0),
        "state families stay"
    );
}

/// SPEC §10's families with the exact label names each sample carries (the histogram by its
/// base name: prometheus_parse folds `_bucket` into it and drops `le`).
const SPEC_FAMILIES: &[(&str, &[&str])] = &[
    ("tenement_requests_total", &["process", "id", "status"]),
    ("tenement_request_duration_seconds", &["process", "id"]),
    ("tenement_upstream_errors_total", &["process", "id", "kind"]),
    ("tenement_in_flight_requests", &["process"]),
    ("tenement_instance_up", &["process", "id"]),
    ("tenement_instance_weight", &["process", "id"]),
    ("tenement_instance_restarts_total", &["process", "id"]),
    ("tenement_log_lines_total", &["process", "id"]),
    ("tenement_log_lines_dropped_total", &[]),
    ("tenement_fleet_server_up", &["server_id"]),
    ("tenement_build_info", &["version"]),
];

const TWO_INSTANCES: &str = "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n\
                             request_timeout = \"1s\"\n[instances]\napi = [\"prod\", \"canary\"]\n";

/// A Debian `prometheus` package binary (promtool, prometheus), or a failure that says how to
/// get it.
fn debian_tool(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is not installed: run `make test`, which installs the Debian package prometheus",
        path.display()
    );
    path
}

/// GET `path` on `addr` with any Host and an optional bearer token.
fn get_at(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> crate::util::Resp {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    crate::util::request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// Percent-encodes a PromQL query for a URL query string.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn promtool_accepts_a_live_scrape_and_labels_follow_the_spec() {
    let promtool = debian_tool("promtool");
    let ten = Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .body(TWO_INSTANCES)
        .body("[fleet]\nhealth_interval = \"200ms\"\n")
        .start();
    let admin = ten.admin.expect("admin_listen announced");
    // Traffic on both instances, one upstream timeout, and a fleet of one (this server), so
    // every family of SPEC §10 has samples.
    for id in ["prod", "canary"] {
        let host = format!("{id}.api.{DOMAIN}");
        ten.wait_status(&host, "/", 200);
        assert_eq!(ten.get(&host, "/missing").status, 404);
    }
    assert_eq!(
        ten.get(&format!("prod.api.{DOMAIN}"), "/sleep?ms=1500")
            .status,
        504
    );
    let (ok, _, err) = cli(
        &ten,
        &[
            "server",
            "add",
            "self",
            &format!("http://{}", ten.addr),
            "--domain",
            DOMAIN,
        ],
    );
    assert!(ok, "{err}");
    scrape_until(&ten, "every family", |s| {
        value(
            s,
            "tenement_upstream_errors_total",
            &[("process", "api"), ("id", "prod"), ("kind", "timeout")],
        ) == Some(1.0)
            && value(s, "tenement_fleet_server_up", &[("server_id", "self")]) == Some(1.0)
            && ["prod", "canary"].iter().all(|id| {
                value(
                    s,
                    "tenement_log_lines_total",
                    &[("process", "api"), ("id", id)],
                )
                .is_some()
            })
    });

    // The scrape Prometheus would make: admin_listen, Host = the target address.
    let r = get_at(admin, "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let file = ten.dir.path().join("scrape.prom");
    std::fs::write(&file, &text).expect("write scrape");
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open scrape"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    let status = crate::util::wait_bounded(&mut child, std::time::Duration::from_secs(60))
        .expect("promtool check metrics did not finish");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        status.success(),
        "promtool check metrics: {status}\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every SPEC family has samples with exactly its labels; none carries a label Prometheus
    // owns on every target (it would arrive as exported_instance / exported_job).
    let lines = text.lines().map(|l| Ok(l.to_string())).collect::<Vec<_>>();
    let s = prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid exposition");
    for (family, labels) in SPEC_FAMILIES {
        let samples: Vec<_> = s.samples.iter().filter(|x| x.metric == *family).collect();
        assert!(!samples.is_empty(), "{family} has no samples:\n{text}");
        let mut want: Vec<&str> = labels.to_vec();
        want.sort_unstable();
        for x in samples {
            let mut got: Vec<&str> = x.labels.keys().map(String::as_str).collect();
            got.sort_unstable();
            assert_eq!(got, want, "{family}: {:?}", x.labels);
        }
    }
    for x in &s.samples {
        for owned in ["instance", "job"] {
            assert!(
                x.labels.get(owned).is_none(),
                "{} carries {owned}: {:?}",
                x.metric,
                x.labels
            );
        }
    }
}

/// A child process stopped (and reaped) when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/api/v1/query` on a Prometheus server: the `data.result` vector (None until it answers).
fn prom_query(prom: std::net::SocketAddr, query: &str) -> Option<Vec<serde_json::Value>> {
    std::net::TcpStream::connect(prom).ok()?;
    let r = get_at(
        prom,
        &format!("/api/v1/query?query={}", url_encode(query)),
        None,
    );
    if r.status != 200 {
        return None;
    }
    r.json()["data"]["result"].as_array().cloned()
}

#[test]
fn a_real_prometheus_scrapes_admin_listen_and_the_domain_without_renaming_labels() {
    let prometheus = debian_tool("prometheus");
    // domain = "localhost" so the proxy listener can be scraped by name (docs/operations.md);
    // the metrics_token goes in Prometheus' `authorization` as documented.
    let ten = Builder::new()
        .raw(&format!(
            "[settings]\ndomain = \"localhost\"\nlisten = \"127.0.0.1:0\"\n\
             admin_listen = \"127.0.0.1:0\"\ndata_dir = \"@DIR@/data\"\n\
             metrics_token = \"s3cret\"\n{TWO_INSTANCES}"
        ))
        .start();
    let admin = ten.admin.expect("admin_listen announced");
    ten.wait_status("prod.api.localhost", "/", 200);
    ten.wait_status("canary.api.localhost", "/", 200);
    let targets = [admin.to_string(), format!("localhost:{}", ten.addr.port())];
    let dir = ten.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: tenement\n    authorization:\n      credentials: s3cret\n\
             \x20   static_configs:\n      - targets: [\"{}\", \"{}\"]\n",
            targets[0], targets[1]
        ),
    )
    .expect("prometheus.yml");
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], crate::util::free_port()));
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let _prom = Reaped(
        std::process::Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus"),
    );
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();

    // Both targets up (bounded: 30 s; a scrape every second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let up = prom_query(listen, "up").unwrap_or_default();
        let is_up = |t: &str| {
            up.iter()
                .any(|r| r["metric"]["instance"] == t && r["value"][1] == "1")
        };
        if targets.iter().all(|t| is_up(t)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "targets {targets:?} never up: {up:?}\n{}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // ten's series arrive with their own labels next to Prometheus' instance and job.
    let series = prom_query(listen, r#"tenement_instance_up{process="api",id="prod"}"#)
        .expect("query answered");
    let mut seen: Vec<String> = series
        .iter()
        .map(|r| {
            let m = &r["metric"];
            assert_eq!(m["job"], "tenement", "{m}");
            assert!(m.get("exported_instance").is_none(), "{m}");
            assert_eq!(r["value"][1], "1", "{r}");
            m["instance"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    seen.sort();
    let mut want = targets.to_vec();
    want.sort();
    assert_eq!(seen, want, "one series per target: {series:?}");
    for owned in ["exported_instance", "exported_job"] {
        let renamed = prom_query(listen, &format!("{{{owned}=~\".+\"}}")).expect("answered");
        assert!(renamed.is_empty(), "series with {owned}: {renamed:?}");
    }
}
