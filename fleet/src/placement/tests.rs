use super::*;
use crate::Status::{Degraded, Offline, Online};

fn state(id: &str, region: Option<&str>, status: Status) -> ServerState {
    ServerState {
        server: Server {
            id: id.into(),
            url: format!("http://{id}.example.com"),
            domain: format!("{id}.example.com"),
            region: region.map(str::to_string),
            token: Some("secret".into()),
        },
        status,
        last_seen: None,
        latency_ms: None,
        offline_since: None,
        consecutive_failures: 0,
        last_error: None,
        resolved: None,
    }
}

fn acme(home: &str) -> Tenant {
    Tenant {
        id: "acme".into(),
        domain: "acme.com".into(),
        server: home.into(),
        process: "app".into(),
        instance: "acme".into(),
    }
}

fn pick(servers: Vec<ServerState>, loads: &[(&str, usize)], exclude: Option<&str>) -> String {
    let t = acme("eu1");
    let view = FleetView::new(servers, vec![t.clone()], 1);
    let load = |id: &str| loads.iter().find(|(s, _)| *s == id).map(|(_, n)| *n);
    choose(&view, &t, load, exclude)
        .map(|s| s.server.id.clone())
        .unwrap_or_else(|| "-".into())
}

#[test]
fn the_home_region_comes_first_then_the_least_loaded_then_the_id() {
    let home = || state("eu1", Some("eu"), Offline);
    // Same region beats a lighter server elsewhere.
    assert_eq!(
        pick(
            vec![
                home(),
                state("us1", Some("us"), Online),
                state("eu2", Some("eu"), Online),
            ],
            &[("us1", 0), ("eu2", 40)],
            None
        ),
        "eu2"
    );
    // Within the region: the fewest instances.
    assert_eq!(
        pick(
            vec![
                home(),
                state("eu2", Some("eu"), Online),
                state("eu3", Some("eu"), Online),
            ],
            &[("eu2", 5), ("eu3", 2)],
            None
        ),
        "eu3"
    );
    // Equal load: by id; a load that could not be read counts as the most.
    assert_eq!(
        pick(
            vec![
                home(),
                state("eu3", Some("eu"), Online),
                state("eu2", Some("eu"), Online),
                state("eu0", Some("eu"), Online),
            ],
            &[("eu2", 3), ("eu3", 3)],
            None
        ),
        "eu2"
    );
    // Equal load: online before degraded.
    assert_eq!(
        pick(
            vec![
                home(),
                state("eu2", Some("eu"), Degraded),
                state("eu3", Some("eu"), Online),
            ],
            &[("eu2", 1), ("eu3", 1)],
            None
        ),
        "eu3"
    );
    // No region on home: every server is "elsewhere", so load decides.
    let t = acme("h");
    let view = FleetView::new(
        vec![
            state("h", None, Offline),
            state("b", Some("eu"), Online),
            state("c", None, Online),
        ],
        vec![t.clone()],
        1,
    );
    let load = |id: &str| Some(if id == "b" { 9 } else { 1 });
    assert_eq!(choose(&view, &t, load, None).unwrap().server.id, "c");
}

#[test]
fn only_up_servers_other_than_home_and_not_excluded() {
    assert_eq!(
        pick(
            vec![
                state("eu1", Some("eu"), Offline),
                state("eu2", Some("eu"), Offline),
                state("eu3", Some("eu"), Status::Unknown),
            ],
            &[],
            None
        ),
        "-"
    );
    let servers = || {
        vec![
            state("eu1", Some("eu"), Offline),
            state("eu2", Some("eu"), Online),
            state("us1", Some("us"), Online),
        ]
    };
    assert_eq!(pick(servers(), &[], None), "eu2");
    assert_eq!(
        pick(servers(), &[], Some("eu2")),
        "us1",
        "a failed server is skipped"
    );
}

#[test]
fn instances_parse_from_the_api_list() {
    let v = serde_json::json!([
        {"name": "app:acme", "process": "app", "id": "acme", "requests": 7, "in_flight": 1},
        {"name": "app:globex", "process": "app", "id": "globex", "requests": 0, "in_flight": 0},
        {"name": "broken"},
    ]);
    let i = Instances::parse(&v).unwrap();
    assert_eq!(i.count(), 2);
    assert_eq!(
        i.get("app:acme"),
        Some(Traffic {
            requests: 7,
            in_flight: 1
        })
    );
    assert_eq!(i.get("app:other"), None);
    assert!(Instances::parse(&serde_json::json!({"error": "no"})).is_err());
}

mod live {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;

    use crate::testing::{wait_until, Answer, TestServer};
    use crate::{Fleet, FleetStore, NewServer, PlaceState, Served, Tenant};

    const LIMIT: Duration = Duration::from_secs(10);

    /// A tenement server as the placement sees it: `/health` (200 while `up`),
    /// `/api/instances` (empty), and a spawn that answers `spawn`.
    async fn server(up: Arc<AtomicBool>, spawn: u16) -> TestServer {
        TestServer::start(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/health") if up.load(Ordering::Relaxed) => Answer::status(200),
            ("GET", "/health") => Answer::status(503),
            ("GET", "/api/instances") => Answer::body("[]"),
            ("POST", "/api/instances") if spawn == 500 => {
                Answer::body(r#"{"error":"no process \"app\""}"#).status_code(500)
            }
            ("POST", "/api/instances") => Answer::body("{}").status_code(spawn),
            _ => Answer::status(404),
        })
        .await
    }

    fn add(f: &Fleet, id: &str, url: &str, region: &str) {
        f.add_server(&NewServer {
            id: id.into(),
            url: url.into(),
            domain: Some(format!("{id}.example.com")),
            region: Some(region.into()),
            token: Some(format!("tok-{id}")),
        })
        .unwrap();
    }

    #[tokio::test]
    async fn a_failed_spawn_is_a_503_then_another_server_is_tried() {
        let home_up = Arc::new(AtomicBool::new(false));
        let yes = Arc::new(AtomicBool::new(true));
        let home = server(home_up.clone(), 201).await;
        let broken = server(yes.clone(), 500).await;
        let has_it = server(yes.clone(), 409).await;
        let dir = tempfile::tempdir().unwrap();
        let store = FleetStore::open(&dir.path().join("tenement.db")).unwrap();
        let conf = tenement_conf::Fleet {
            health_interval: Duration::from_millis(100),
            unhealthy_after: 1,
            placement_timeout: Duration::from_secs(5),
            ..tenement_conf::Fleet::default()
        };
        let f = Fleet::new(store, conf, Arc::new(|_: &str| {}));
        add(&f, "home", &home.url(), "eu");
        add(&f, "b1", &broken.url(), "eu");
        add(&f, "b2", &has_it.url(), "us");
        f.add_tenant(&Tenant {
            id: "acme".into(),
            domain: "acme.com".into(),
            server: "home".into(),
            process: "app".into(),
            instance: "acme".into(),
        })
        .unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(f.clone().run(stop_rx));

        // Home offline: the same region first (b1), whose spawn fails: a 503 saying why.
        let state = |f: &Fleet| {
            f.view()
                .placements
                .get("acme")
                .map(|p| (p.server.clone(), p.state))
        };
        wait_until("failed on b1", LIMIT, || {
            state(&f) == Some(("b1".into(), PlaceState::Failed))
        })
        .await;
        let post = broken
            .requests()
            .into_iter()
            .find(|r| r.method == "POST")
            .unwrap();
        assert_eq!(post.path, "/api/instances");
        assert_eq!(post.header("authorization"), Some("Bearer tok-b1"));
        assert_eq!(post.header("host"), Some("b1.example.com"));
        assert_eq!(
            post.json(),
            serde_json::json!({"process": "app", "id": "acme"})
        );
        let why = f.wait_placed("acme").await.unwrap_err();
        assert!(
            why.contains("placing it on b1 failed") && why.contains("no process"),
            "{why}"
        );
        assert_eq!(
            f.store().placements().unwrap()[0].state,
            PlaceState::Failed,
            "in the store too"
        );

        // Tried again a health interval (at least 1s) later, elsewhere: b2 runs it already (409).
        wait_until("ready on b2", LIMIT, || {
            state(&f) == Some(("b2".into(), PlaceState::Ready))
        })
        .await;
        assert!(f.wait_placed("acme").await.is_ok());
        let view = f.view();
        let t = view.tenant("acme").unwrap();
        assert!(matches!(view.serve(t, true), Served::At(s) if s.server.id == "b2"));
        assert!(!view.placements["acme"].spawned, "409: not ours to stop");
        assert_eq!(f.served_at(&f.view())["acme"].as_deref(), Some("b2"));

        // Home back: served at home, the placement is forgotten (nothing to stop).
        home_up.store(true, Ordering::Relaxed);
        wait_until("placement forgotten", LIMIT, || state(&f).is_none()).await;
        assert_eq!(f.served_at(&f.view())["acme"].as_deref(), Some("home"));
        assert!(f.store().placements().unwrap().is_empty());
        assert!(has_it.requests().iter().all(|r| r.method != "DELETE"));
        let _ = stop_tx.send(true);
    }
}
