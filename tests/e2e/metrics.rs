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
    let a200 = [("process", "api"), ("instance", "a"), ("status", "200")];
    // The single GET / of wait_status, once counted.
    let before = scrape_until(&ten, "the first request", |s| {
        value(s, "tenement_requests_total", &a200) == Some(1.0)
    });
    let ok0 = value(
        &before,
        "tenement_requests_total",
        &[("process", "api"), ("instance", "a"), ("status", "200")],
    )
    .unwrap_or(0.0);
    let nf0 = value(
        &before,
        "tenement_requests_total",
        &[("process", "api"), ("instance", "a"), ("status", "404")],
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
                &[("process", "api"), ("instance", "a"), ("status", "4xx")],
            ) == Some(1.0)
            // The in-flight gauge drops just after the counters move.
            && value(s, "tenement_in_flight_requests", &[("process", "api")]) == Some(0.0)
    });
    let ok1 = value(
        &after,
        "tenement_requests_total",
        &[("process", "api"), ("instance", "a"), ("status", "200")],
    )
    .expect("200 series");
    let nf1 = value(
        &after,
        "tenement_requests_total",
        &[("process", "api"), ("instance", "a"), ("status", "404")],
    )
    .expect("404 series");
    assert_eq!(ok1 - ok0, 25.0);
    assert_eq!(nf1 - nf0, 3.0);
    assert_eq!(
        value(
            &after,
            "tenement_requests_total",
            &[("process", "api"), ("instance", "a"), ("status", "4xx")]
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
            &[("process", "api"), ("instance", "a")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "tenement_instance_weight",
            &[("process", "api"), ("instance", "a")]
        ),
        Some(100.0)
    );
    assert_eq!(
        value(&after, "tenement_in_flight_requests", &[("process", "api")]),
        Some(0.0)
    );
    // No healthy instance: counted for the process with instance "-".
    let ten2 = Builder::new()
        .body("[process.idle]\ncommand = \"@APP@\"\n")
        .start();
    assert_eq!(ten2.get(&format!("idle.{DOMAIN}"), "/").status, 503);
    let unrouted = [("process", "idle"), ("instance", "-"), ("status", "503")];
    let s = scrape_until(&ten2, "the 503 counted", |s| {
        value(s, "tenement_requests_total", &unrouted).is_some()
    });
    assert_eq!(
        value(
            &s,
            "tenement_requests_total",
            &[("process", "idle"), ("instance", "-"), ("status", "503")]
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
    let timeout = [("process", "api"), ("instance", "a"), ("kind", "timeout")];
    let s = scrape_until(&ten, "the timeout counted", |s| {
        value(s, "tenement_upstream_errors_total", &timeout) == Some(1.0)
    });
    assert_eq!(
        value(
            &s,
            "tenement_instance_restarts_total",
            &[("process", "api"), ("instance", "a")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "tenement_upstream_errors_total",
            &[("process", "api"), ("instance", "a"), ("kind", "timeout")]
        ),
        Some(1.0)
    );
    assert!(value(
        &s,
        "tenement_requests_total",
        &[("process", "api"), ("instance", "b"), ("status", "200")]
    )
    .is_some());
    let (ok, _, err) = cli(&ten, &["stop", "api:b"]);
    assert!(ok, "{err}");
    let s = scrape_until(&ten, "api:b gone", |s| {
        !s.samples
            .iter()
            .any(|x| x.labels.get("instance") == Some("b"))
    });
    let left: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.labels.get("instance") == Some("b"))
        .map(|x| x.metric.clone())
        .collect();
    assert!(
        left.is_empty(),
        "series of the stopped instance remain: {left:?}"
    );
    assert!(value(
        &s,
        "tenement_instance_up",
        &[("process", "api"), ("instance", "a")]
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
            &[("process", "api"), ("instance", "a")]
        ),
        Some(1.0),
        "state families stay"
    );
}
