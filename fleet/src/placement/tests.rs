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
