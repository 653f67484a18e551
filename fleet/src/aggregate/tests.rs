use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::*;
use crate::testing::{closed_url, Answer, TestServer};

/// What `ten` serves on /metrics (prometheus crate text encoder), abridged, plus a family
/// whose label values hold quotes, backslashes and a newline.
const S1: &str = r#"# HELP tenement_requests_total Requests proxied, by status
# TYPE tenement_requests_total counter
tenement_requests_total{id="prod",process="api",status="200"} 1027
tenement_requests_total{id="prod",process="api",status="503"} 3
# HELP tenement_request_duration_seconds Time to the upstream's response
# TYPE tenement_request_duration_seconds histogram
tenement_request_duration_seconds_bucket{id="prod",process="api",le="0.005"} 10
tenement_request_duration_seconds_bucket{id="prod",process="api",le="0.1"} 1020
tenement_request_duration_seconds_bucket{id="prod",process="api",le="+Inf"} 1030
tenement_request_duration_seconds_sum{id="prod",process="api"} 12.5
tenement_request_duration_seconds_count{id="prod",process="api"} 1030
# HELP tenement_in_flight_requests Requests in flight
# TYPE tenement_in_flight_requests gauge
tenement_in_flight_requests{process="api"} 2
# HELP tenement_log_lines_dropped_total Lines dropped because the writer fell behind
# TYPE tenement_log_lines_dropped_total counter
tenement_log_lines_dropped_total 0
# HELP tenement_odd Label values with escapes
# TYPE tenement_odd gauge
tenement_odd{path="C:\\data\\",quote="say \"hi\"",nl="a\nb",server_id="inner"} 1
# HELP tenement_build_info Build information
# TYPE tenement_build_info gauge
tenement_build_info{version="0.1.0"} 1
"#;

/// A second server: other values, a family the first lacks, a different HELP for a shared
/// family (the first seen wins), an unparseable line, an untyped sample; it runs a ten from
/// before SPEC §10's `id` label (`instance="v2"`), and one family carries labels Prometheus
/// owns (`instance` next to `id`, `job`).
const S2: &str = r#"# HELP tenement_request_duration_seconds Other help text
# TYPE tenement_request_duration_seconds histogram
tenement_request_duration_seconds_bucket{instance="v2",process="web",le="0.005"} 1
tenement_request_duration_seconds_bucket{instance="v2",process="web",le="+Inf"} 4
tenement_request_duration_seconds_sum{instance="v2",process="web"} 0.75
tenement_request_duration_seconds_count{instance="v2",process="web"} 4
# HELP tenement_requests_total Requests proxied, by status
# TYPE tenement_requests_total counter
tenement_requests_total{instance="v2",process="web",status="200"} 4
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.4576e+07
this line is { broken
legacy_metric 7 1700000000000
tenement_owned{id="x",instance="y",job="z"} 1
"#;

/// A family as seen when re-parsing the merged output.
#[derive(Default, Debug)]
struct Parsed {
    help: Vec<String>,
    kind: Vec<String>,
    samples: Vec<Sample>,
}

/// Re-parses an exposition with our own parser, checking the rules a scraper relies on:
/// every line parses, HELP/TYPE at most once per family and before its samples, a family's
/// lines contiguous.
fn reparse(text: &str) -> (Vec<String>, HashMap<String, Parsed>) {
    let mut order: Vec<String> = Vec::new();
    let mut fams: HashMap<String, Parsed> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        let (name, line) = match parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}")) {
            Line::Help { name, text } => (name.clone(), Line::Help { name, text }),
            Line::Type { name, kind } => {
                types.insert(name.clone(), kind.clone());
                (name.clone(), Line::Type { name, kind })
            }
            Line::Sample(s) => {
                let empty = Families::default();
                let fam = family_of(&s.name, &types, &empty).to_string();
                (fam, Line::Sample(s))
            }
            Line::Skip => continue,
        };
        if current.as_deref() != Some(name.as_str()) {
            if let Some(prev) = current.take() {
                closed.insert(prev);
            }
            assert!(!closed.contains(&name), "family {name} is split");
            order.push(name.clone());
            current = Some(name.clone());
        }
        let f = fams.entry(name.clone()).or_default();
        match line {
            Line::Help { text, .. } => {
                assert!(
                    f.samples.is_empty() && f.kind.is_empty(),
                    "HELP late in {name}"
                );
                f.help.push(text);
            }
            Line::Type { kind, .. } => {
                assert!(f.samples.is_empty(), "TYPE after samples in {name}");
                f.kind.push(kind);
            }
            Line::Sample(s) => f.samples.push(s),
            Line::Skip => {}
        }
    }
    for (name, f) in &fams {
        assert!(f.help.len() <= 1 && f.kind.len() <= 1, "{name}: {f:?}");
    }
    (order, fams)
}

#[test]
fn merged_metrics_are_valid_and_labelled() {
    let scrapes = vec![
        ("s1".to_string(), Ok(S1.to_string())),
        ("s2".to_string(), Ok(S2.to_string())),
        ("s3".to_string(), Err("connection refused".to_string())),
    ];
    let out = merge_metrics(&scrapes);
    let (order, fams) = reparse(&out);
    assert_eq!(
        order,
        [
            SCRAPE_UP,
            "tenement_requests_total",
            "tenement_request_duration_seconds",
            "tenement_in_flight_requests",
            "tenement_log_lines_dropped_total",
            "tenement_odd",
            "tenement_build_info",
            "process_resident_memory_bytes",
            "legacy_metric",
            "tenement_owned",
        ]
    );
    // Every sample: server_id first.
    for (name, f) in &fams {
        for s in &f.samples {
            assert_eq!(s.labels[0].0, "server_id", "{name}: {s:?}");
        }
    }
    let up: Vec<(String, String)> = fams[SCRAPE_UP]
        .samples
        .iter()
        .map(|s| (s.labels[0].1.clone(), s.value.clone()))
        .collect();
    let want = [("s1", "1"), ("s2", "1"), ("s3", "0")];
    assert_eq!(up, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(fams[SCRAPE_UP].kind, ["gauge"]);

    // The histogram keeps its buckets, sum and count from both servers under one TYPE.
    let h = &fams["tenement_request_duration_seconds"];
    assert_eq!(h.kind, ["histogram"]);
    assert_eq!(
        h.help,
        ["Time to the upstream's response"],
        "the first HELP wins"
    );
    assert_eq!(h.samples.len(), 9);
    let servers: Vec<&str> = h.samples.iter().map(|s| s.labels[0].1.as_str()).collect();
    assert_eq!(
        servers,
        ["s1", "s1", "s1", "s1", "s1", "s2", "s2", "s2", "s2"]
    );
    assert_eq!(
        h.samples[2].labels,
        [
            ("server_id", "s1"),
            ("id", "prod"),
            ("process", "api"),
            ("le", "+Inf")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(fams["tenement_requests_total"].samples.len(), 3);

    // Escapes survive; a scraped server_id is kept as exported_server_id.
    let odd = &fams["tenement_odd"].samples[0];
    let get = |k: &str| {
        odd.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("path"), Some("C:\\data\\"));
    assert_eq!(get("quote"), Some("say \"hi\""));
    assert_eq!(get("nl"), Some("a\nb"));
    assert_eq!(get("server_id"), Some("s1"));
    assert_eq!(get("exported_server_id"), Some("inner"));
    assert!(out.contains(r#"path="C:\\data\\",quote="say \"hi\"",nl="a\nb""#));

    // Untyped and timestamped samples pass; the broken line is dropped.
    let legacy = &fams["legacy_metric"].samples[0];
    assert_eq!(legacy.timestamp.as_deref(), Some("1700000000000"));
    assert!(fams["legacy_metric"].kind.is_empty());
    assert!(!out.contains("broken"));

    // No label Prometheus owns: an older server's `instance` is merged as `id`.
    let v2 = fams["tenement_requests_total"]
        .samples
        .iter()
        .find(|s| s.labels[0].1 == "s2")
        .unwrap();
    assert_eq!(
        v2.labels,
        [
            ("server_id", "s2"),
            ("id", "v2"),
            ("process", "web"),
            ("status", "200")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(
        fams["tenement_owned"].samples[0].labels,
        [
            ("server_id", "s2"),
            ("id", "x"),
            ("exported_instance", "y"),
            ("exported_job", "z")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    for f in fams.values() {
        for s in &f.samples {
            assert!(
                s.labels.iter().all(|(k, _)| k != "instance" && k != "job"),
                "{s:?}"
            );
        }
    }
}

#[test]
fn merging_nothing_gives_only_the_scrape_family() {
    let out = merge_metrics(&[]);
    assert_eq!(
        out,
        "# HELP tenement_fleet_scrape_up 1 when the server's /metrics was scraped, 0 when the scrape failed\n# TYPE tenement_fleet_scrape_up gauge\n"
    );
}

#[test]
fn merged_output_merges_again() {
    // The output is itself a valid input: merging it keeps the families.
    let once = merge_metrics(&[("s1".into(), Ok(S1.into())), ("s2".into(), Ok(S2.into()))]);
    let twice = merge_metrics(&[("router".into(), Ok(once.clone()))]);
    let (a, _) = reparse(&once);
    let (b, fams) = reparse(&twice);
    assert_eq!(a, b);
    let s = &fams["tenement_requests_total"].samples[0];
    assert_eq!(
        &s.labels[..2],
        &[
            ("server_id".to_string(), "router".to_string()),
            ("exported_server_id".to_string(), "s1".to_string())
        ]
    );
}

fn line(ts: &str, msg: &str) -> Value {
    json!({"id": 1, "timestamp": ts, "process": "api", "instance": "prod", "stream": "stdout", "message": msg})
}

#[test]
fn logs_merge_newest_first_with_the_server() {
    let s1 = vec![
        line("2026-01-01T10:00:05.000Z", "a3"),
        line("2026-01-01T10:00:03.000Z", "a2"),
        line("2026-01-01T10:00:01.000Z", "a1"),
    ];
    let s2 = vec![
        line("2026-01-01T10:00:04.000Z", "b2"),
        line("2026-01-01T10:00:03.000Z", "b1"),
        json!("not an object"),
    ];
    let merged = merge_logs(
        vec![("s1".into(), s1.clone()), ("s2".into(), s2.clone())],
        4,
    );
    let got: Vec<(&str, &str)> = merged
        .iter()
        .map(|v| {
            (
                v["server"].as_str().unwrap(),
                v["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("s1", "a3"), ("s2", "b2"), ("s1", "a2"), ("s2", "b1")]
    );
    assert_eq!(merged[0]["stream"], "stdout");
    let all = merge_logs(vec![("s1".into(), s1), ("s2".into(), s2)], 0);
    assert_eq!(all.len(), 5);
    assert_eq!(all[4]["message"], "a1");
    assert!(merge_logs(vec![], 10).is_empty());
}

fn srv(id: &str, url: String, token: Option<&str>) -> Server {
    Server {
        id: id.into(),
        url,
        domain: format!("{id}.example.com"),
        region: None,
        token: token.map(str::to_string),
    }
}

#[tokio::test]
async fn fetch_all_asks_every_server_in_parallel() {
    let ok = TestServer::start(|r| Answer::body(format!("path={}", r.path))).await;
    let denied = TestServer::start(|_| Answer {
        status: 401,
        body: r#"{"error":"bad token"}"#.into(),
        delay: std::time::Duration::ZERO,
    })
    .await;
    let slow = TestServer::start(|_| Answer::body("late").after(Duration::from_millis(300))).await;
    let slow2 = TestServer::start(|_| Answer::body("late").after(Duration::from_millis(300))).await;
    let servers = vec![
        srv("a", ok.url(), Some("tok-a")),
        srv("b", denied.url(), None),
        srv("c", closed_url().await, None),
        srv("d", slow.url(), None),
        srv("e", slow2.url(), None),
    ];
    let start = std::time::Instant::now();
    let got = fetch_all(
        &servers,
        "/api/logs?process=api&limit=5",
        Duration::from_secs(5),
    )
    .await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(550), "not parallel: {took:?}");
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    assert_eq!(got[0].1, Ok("path=/api/logs?process=api&limit=5".into()));
    assert_eq!(
        ok.requests()[0].header("authorization"),
        Some("Bearer tok-a")
    );
    assert_eq!(ok.requests()[0].header("host"), Some("a.example.com"));
    let b = got[1].1.clone().unwrap_err();
    assert!(b.starts_with("HTTP 401") && b.contains("bad token"), "{b}");
    assert!(denied.requests()[0].header("authorization").is_none());
    assert_eq!(got[2].1, Err("connection refused".into()));
    assert_eq!(got[3].1, Ok("late".into()));

    let got = fetch_all(&servers[3..4], "/metrics", Duration::from_millis(50)).await;
    assert_eq!(got[0].1, Err("no answer within 50ms".into()));
}

/// Review L4: a server answering more than MAX_BODY is that server's error, not the router's
/// memory; whether it says its length up front or not.
#[tokio::test]
async fn an_answer_over_the_cap_is_an_error_naming_the_server() {
    let big = "x".repeat(MAX_BODY + 1);
    let announced = TestServer::start(move |_| Answer::body(big.clone())).await;
    // No Content-Length: the body runs until the connection closes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unannounced = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = c.read(&mut head).await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .await;
                let chunk = vec![b'y'; 64 * 1024];
                for _ in 0..(20 * 16) {
                    if c.write_all(&chunk).await.is_err() {
                        return; // the reader gave up: good
                    }
                }
            });
        }
    });
    let fine = TestServer::start(|_| Answer::body("up 1\n")).await;
    let servers = vec![
        srv("big", announced.url(), None),
        srv("stream", unannounced, None),
        srv("ok", fine.url(), None),
    ];
    let got = fetch_all(&servers, "/metrics", Duration::from_secs(10)).await;
    assert_eq!(got[0].1, Err("answer over 8 MiB, not merged".into()));
    assert_eq!(got[1].1, Err("answer over 8 MiB, not merged".into()));
    assert_eq!(got[2].1, Ok("up 1\n".into()));
    let merged = merge_metrics(&got);
    assert!(
        merged.contains("# server big: answer over 8 MiB, not merged\n")
            && merged.contains("# server stream: answer over 8 MiB, not merged\n"),
        "{merged}"
    );
    assert!(merged.contains("up{server_id=\"ok\"} 1"), "{merged}");
    assert!(merged.contains("tenement_fleet_scrape_up{server_id=\"big\"} 0"));
    reparse(&merged);
}
