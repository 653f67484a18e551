use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::testing::{closed_url, wait_until, Answer, TestServer};
use crate::{Events, FleetStore, NewServer, Tenant};

fn conf(interval_ms: u64, degraded_ms: u64) -> tenement_conf::Fleet {
    tenement_conf::Fleet {
        health_interval: Duration::from_millis(interval_ms),
        degraded_latency: Duration::from_millis(degraded_ms),
        ..tenement_conf::Fleet::default()
    }
}

#[test]
fn record_walks_the_states() {
    let c = conf(50, 100);
    let mut h = Health::default();
    let ms = Duration::from_millis;
    assert_eq!(
        record(&mut h, Ok(ms(5)), &c, 1),
        Some((Status::Unknown, Status::Online, "answered in 5ms".into()))
    );
    assert_eq!(h.last_seen_ms, Some(1));
    let change = record(&mut h, Ok(ms(150)), &c, 2).unwrap();
    assert_eq!((change.0, change.1), (Status::Online, Status::Degraded));
    assert!(change.2.contains("slower than 100ms"), "{}", change.2);
    // Failures keep the previous status until the third.
    assert_eq!(
        record(&mut h, Err("connection refused".into()), &c, 3),
        None
    );
    assert_eq!(
        record(&mut h, Err("connection refused".into()), &c, 4),
        None
    );
    assert_eq!((h.status, h.failures), (Status::Degraded, 2));
    assert_eq!(
        record(&mut h, Err("connection refused".into()), &c, 5),
        Some((
            Status::Degraded,
            Status::Offline,
            "3 failed checks: connection refused".into()
        ))
    );
    assert_eq!(h.offline_since_ms, Some(5));
    h.webhook_sent = true;
    // Still failing: still offline, the outage keeps its start.
    assert_eq!(record(&mut h, Err("HTTP 503".into()), &c, 6), None);
    assert_eq!((h.offline_since_ms, h.failures), (Some(5), 4));
    // Back: a new outage will get its own webhook.
    let change = record(&mut h, Ok(ms(1)), &c, 7).unwrap();
    assert_eq!((change.0, change.1), (Status::Offline, Status::Online));
    assert_eq!(h.offline_since_ms, None);
    assert!(!h.webhook_sent);
    assert_eq!(h.failures, 0);
    assert_eq!(h.last_error, None);
}

fn store() -> (tempfile::TempDir, FleetStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FleetStore::open(&dir.path().join("tenement.db")).unwrap();
    (dir, store)
}

fn add(store: &FleetStore, id: &str, url: &str) {
    store
        .add_server(&NewServer {
            id: id.into(),
            url: url.into(),
            domain: Some(format!("{id}.example.com")),
            ..NewServer::default()
        })
        .unwrap();
}

/// The fleet plus the event lines it emitted.
fn fleet(store: FleetStore, conf: tenement_conf::Fleet) -> (Fleet, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let events: Events = Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string()));
    (Fleet::new(store, conf, events), lines)
}

fn status(f: &Fleet, id: &str) -> Status {
    f.view()
        .server(id)
        .map(|s| s.status)
        .unwrap_or(Status::Unknown)
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn statuses_become_online_degraded_and_offline() {
    let fast = TestServer::ok().await;
    let slow = TestServer::start(|_| Answer::status(200).after(Duration::from_millis(100))).await;
    let closed = closed_url().await;
    let (_dir, store) = store();
    add(&store, "fast", &fast.url());
    add(&store, "slow", &slow.url());
    add(&store, "gone", &closed);
    let (f, events) = fleet(store, conf(200, 50));
    assert!(f.view().servers.iter().all(|s| s.status == Status::Unknown));

    // Every published view: "gone" is never offline before its third failure.
    let mut rx = f.subscribe();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let v = rx.borrow_and_update().clone();
            log.lock().unwrap().push(v);
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(f.clone().run(stop_rx));
    wait_until("fast online", LIMIT, || {
        status(&f, "fast") == Status::Online
    })
    .await;
    wait_until("slow degraded", LIMIT, || {
        status(&f, "slow") == Status::Degraded
    })
    .await;
    wait_until("gone offline", LIMIT, || {
        status(&f, "gone") == Status::Offline
    })
    .await;

    let view = f.view();
    let fast_state = view.server("fast").unwrap();
    assert!(fast_state.last_seen.as_deref().unwrap().ends_with('Z'));
    assert!(fast_state.latency_ms.is_some());
    let gone = view.server("gone").unwrap();
    assert!(gone.consecutive_failures >= 3);
    assert!(gone.offline_since.is_some() && gone.last_seen.is_none());
    assert_eq!(gone.last_error.as_deref(), Some("connection refused"));
    assert!(fast.requests().iter().all(|r| r.path == "/health"));
    // The url is an IP: the server is asked on its domain (a `ten` answers /health there only).
    assert_eq!(fast.requests()[0].header("host"), Some("fast.example.com"));

    stop_tx.send(true).unwrap();
    tokio::time::timeout(LIMIT, loop_task)
        .await
        .unwrap()
        .unwrap();
    drop(f);
    watcher.abort();

    let views = seen.lock().unwrap().clone();
    assert!(!views.is_empty());
    let gens: Vec<u64> = views.iter().map(|v| v.generation).collect();
    assert!(gens.windows(2).all(|w| w[0] < w[1]), "{gens:?}");
    for v in &views {
        let g = v.server("gone").unwrap();
        assert!(g.status != Status::Online && g.status != Status::Degraded);
        if g.status == Status::Offline {
            assert!(g.consecutive_failures >= 3, "{g:?}");
        }
    }
    assert!(
        views.iter().any(|v| {
            let g = v.server("gone").unwrap();
            g.status == Status::Unknown && g.consecutive_failures > 0
        }),
        "a failure before the third keeps the previous status"
    );
    let events = events.lock().unwrap().clone();
    assert!(
        events.contains(
            &"server gone: unknown -> offline (3 failed checks: connection refused)".to_string()
        ),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|l| l.starts_with("server fast: unknown -> online (answered in")));
    assert!(events
        .iter()
        .any(|l| l.starts_with("server slow: unknown -> degraded (")));
}

#[tokio::test]
async fn one_webhook_per_outage() {
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    let server = TestServer::start(move |_| {
        Answer::status(if flag.load(Ordering::SeqCst) {
            200
        } else {
            500
        })
    })
    .await;
    let hook = TestServer::ok().await;
    let (_dir, store) = store();
    add(&store, "s2", &server.url());
    let mut c = conf(30, 1000);
    c.webhook = Some(format!("{}/alert", hook.url()));
    c.webhook_after = Duration::from_millis(100);
    let (f, events) = fleet(store, c);
    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(f.clone().run(stop_rx));

    wait_until("online", LIMIT, || status(&f, "s2") == Status::Online).await;
    up.store(false, Ordering::SeqCst);
    wait_until("offline", LIMIT, || status(&f, "s2") == Status::Offline).await;
    let since = f
        .view()
        .server("s2")
        .unwrap()
        .offline_since
        .clone()
        .unwrap();
    wait_until("the first webhook", LIMIT, || hook.requests().len() == 1).await;
    // Many more failed checks (well past webhook_after): no second POST for this outage.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(hook.requests().len(), 1);
    let req = &hook.requests()[0];
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/alert"));
    assert_eq!(
        req.json(),
        serde_json::json!({"server": "s2", "status": "offline", "since": since})
    );

    // Back online, then a new outage: its own POST.
    up.store(true, Ordering::SeqCst);
    wait_until("online again", LIMIT, || status(&f, "s2") == Status::Online).await;
    assert_eq!(hook.requests().len(), 1);
    up.store(false, Ordering::SeqCst);
    wait_until("the second webhook", LIMIT, || hook.requests().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.requests().len(), 2);
    let second = hook.requests()[1].json();
    assert_eq!(second["server"], "s2");
    assert_ne!(second["since"], serde_json::json!(since));

    stop_tx.send(true).unwrap();
    tokio::time::timeout(LIMIT, loop_task)
        .await
        .unwrap()
        .unwrap();
    let events = events.lock().unwrap().clone();
    let sent = events
        .iter()
        .filter(|l| l.contains("webhook sent to"))
        .count();
    assert_eq!(sent, 2, "{events:?}");
}

#[tokio::test]
async fn no_webhook_before_webhook_after() {
    let hook = TestServer::ok().await;
    let (_dir, store) = store();
    add(&store, "s3", &closed_url().await);
    let mut c = conf(20, 1000);
    c.webhook = Some(hook.url());
    c.webhook_after = Duration::from_secs(60);
    let (f, _) = fleet(store, c);
    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(f.clone().run(stop_rx));
    wait_until("offline", LIMIT, || status(&f, "s3") == Status::Offline).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(hook.requests().is_empty());
    stop_tx.send(true).unwrap();
    tokio::time::timeout(LIMIT, loop_task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn writes_are_published_and_picked_up_by_the_loop() {
    let a = TestServer::ok().await;
    let (_dir, store) = store();
    let (f, _) = fleet(store, conf(30, 1000));
    let g0 = f.view().generation;
    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(f.clone().run(stop_rx));

    add(f.store(), "a", &a.url());
    assert!(
        f.view().server("a").is_none(),
        "not published before changed()"
    );
    f.changed();
    assert!(f.view().generation > g0);
    assert_eq!(status(&f, "a"), Status::Unknown);
    wait_until("a online", LIMIT, || status(&f, "a") == Status::Online).await;

    f.store()
        .add_tenant(&Tenant {
            id: "acme".into(),
            domain: "Acme.COM".into(),
            server: "a".into(),
            process: "app".into(),
            instance: "acme".into(),
        })
        .unwrap();
    f.changed();
    let view = f.view();
    assert_eq!(view.tenant_by_domain("acme.com").unwrap().id, "acme");
    assert_eq!(
        view.server("a").unwrap().status,
        Status::Online,
        "health survives a write"
    );

    f.store().remove_tenant("acme").unwrap();
    f.store().remove_server("a").unwrap();
    f.changed();
    assert!(f.view().servers.is_empty() && f.view().tenants.is_empty());

    // The loop returns when the shutdown sender goes away, too.
    drop(stop_tx);
    tokio::time::timeout(LIMIT, loop_task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_hanging_server_does_not_delay_the_others() {
    let fast = TestServer::ok().await;
    let hang = TestServer::start(|_| Answer::status(200).after(Duration::from_secs(30))).await;
    let (_dir, store) = store();
    add(&store, "fast", &fast.url());
    add(&store, "hang", &hang.url());
    // Interval 1s: a check of "hang" stays in flight the whole interval (timeout 1s).
    let (f, _) = fleet(store, conf(1000, 1000));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let loop_task = tokio::spawn(f.clone().run(stop_rx));
    wait_until("fast online", LIMIT, || {
        status(&f, "fast") == Status::Online
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "waited for the hanging server"
    );
    wait_until("hang offline", LIMIT, || {
        status(&f, "hang") == Status::Offline
    })
    .await;
    let last_error = f.view().server("hang").unwrap().last_error.clone();
    assert_eq!(last_error.as_deref(), Some("no answer within 1000ms"));
    stop_tx.send(true).unwrap();
    tokio::time::timeout(LIMIT, loop_task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn server_urls_parse_like_the_router_did() {
    assert_eq!(
        parse_url("http://eu1.example.com"),
        Some(("eu1.example.com".into(), 80, false))
    );
    assert_eq!(
        parse_url("https://eu1.example.com"),
        Some(("eu1.example.com".into(), 443, true))
    );
    assert_eq!(
        parse_url("https://[::1]:8443"),
        Some(("::1".into(), 8443, true))
    );
    assert_eq!(parse_url("not a url"), None);
}

#[test]
fn a_failed_resolution_keeps_the_last_good_address() {
    let a = ServerAddr {
        addr: "10.0.0.1:80".parse().unwrap(),
        tls: false,
        host: "s1.example.com".into(),
    };
    let b = ServerAddr {
        addr: "10.0.0.2:80".parse().unwrap(),
        ..a.clone()
    };
    let mut h = Health::default();
    let url = "http://s1.example.com";
    assert!(!note_resolved(
        &mut h,
        "s1",
        url,
        Err("no such host".into())
    ));
    assert_eq!(h.resolved, None, "a failure with no good address: none");
    assert!(note_resolved(&mut h, "s1", url, Ok(a.clone())));
    assert!(
        !note_resolved(&mut h, "s1", url, Ok(a.clone())),
        "unchanged"
    );
    assert!(!note_resolved(&mut h, "s1", url, Err("timeout".into())));
    assert_eq!(
        h.resolved.as_ref(),
        Some(&a),
        "kept, not replaced by the failure"
    );
    assert_eq!(h.resolve_error.as_deref(), Some("timeout"));
    // Not cached: the next good answer is taken.
    assert!(note_resolved(&mut h, "s1", url, Ok(b.clone())));
    assert_eq!(
        (h.resolved.as_ref(), h.resolve_error.as_ref()),
        (Some(&b), None)
    );
}

#[tokio::test]
async fn the_loop_publishes_resolved_addresses_even_between_ticks() {
    let a = TestServer::ok().await;
    let b = TestServer::ok().await;
    let (_dir, store) = store();
    add(&store, "a", &a.url());
    // A long interval: "b", added after the first tick, is resolved before the second.
    let (f, _) = fleet(store, conf(60_000, 1000));
    assert!(f.view().server("a").unwrap().resolved.is_none());
    let (stop_tx, stop_rx) = watch::channel(false);
    let loop_task = tokio::spawn(f.clone().run(stop_rx));
    wait_until("a resolved", LIMIT, || {
        f.view().server("a").is_some_and(|s| s.resolved.is_some())
    })
    .await;
    let got = f.view().server("a").unwrap().resolved.clone().unwrap();
    assert_eq!(got.addr.to_string(), a.url().trim_start_matches("http://"));
    assert_eq!((got.tls, got.host.as_str()), (false, "127.0.0.1"));
    f.add_server(&NewServer {
        id: "b".into(),
        url: b.url(),
        domain: Some("b.example.com".into()),
        ..NewServer::default()
    })
    .unwrap();
    wait_until("b resolved", LIMIT, || {
        f.view().server("b").is_some_and(|s| s.resolved.is_some())
    })
    .await;
    assert_eq!(
        f.view().server("b").unwrap().status,
        Status::Unknown,
        "resolved, not checked, before its first tick"
    );
    stop_tx.send(true).unwrap();
    tokio::time::timeout(LIMIT, loop_task)
        .await
        .unwrap()
        .unwrap();
}
