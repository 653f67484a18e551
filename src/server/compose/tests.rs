//! `build_table` from hand-made views, checked through `Table::lookup`.

use std::path::Path;

use tenement_conf::Addr;
use tenement_proxy::Target;
use tenement_supervisor::Kind;

use super::*;

fn config(body: &str) -> Arc<Config> {
    let text = format!("[settings]\ndomain = \"t.test\"\n{body}");
    Arc::new(Config::parse(&text, "tenement.toml", Path::new("/tmp")).unwrap())
}

const TWO: &str = "[process.api]\ncommand = \"x\"\n[process.legacy]\nupstreams = [\"127.0.0.1:9\"]\n[routes]\n\"example.com/admin\" = \"api:b\"\n";

fn routed(name: &str, kind: Kind, state: State, weight: u32, port: u16, idle: bool) -> Arc<Routed> {
    let (process, id) = name.split_once(':').unwrap();
    Arc::new(Routed {
        name: InstanceName {
            process: process.into(),
            id: id.into(),
        },
        kind,
        state,
        weight,
        addr: Some(Addr::Tcp(([127, 0, 0, 1], port).into())),
        idle,
    })
}

/// A view of one healthy spawned instance `name` (port 1001) and its synced stats.
fn one_healthy(name: &str) -> (RoutingView, StatsCache) {
    let v = view(vec![routed(
        name,
        Kind::Spawned,
        State::Healthy,
        100,
        1001,
        false,
    )]);
    let mut stats = StatsCache::new(None);
    stats.sync(&v);
    (v, stats)
}

fn view(instances: Vec<Arc<Routed>>) -> RoutingView {
    RoutingView {
        generation: 1,
        instances,
    }
}

fn backend<'a>(t: &'a Table, host: &str, path: &str) -> Option<&'a Arc<Backend>> {
    match t.lookup(host, path)?.target {
        Target::Instance(b) => Some(b),
        _ => None,
    }
}

#[test]
fn instances_pools_externals_and_routes() {
    let c = Compiled::new(config(TWO), None).unwrap();
    let v = view(vec![
        routed("api:a", Kind::Spawned, State::Healthy, 100, 1001, false),
        routed("api:b", Kind::Spawned, State::Unhealthy, 30, 1002, false),
        routed("api:c", Kind::Spawned, State::Stopped, 100, 1003, true),
        routed("api:d", Kind::Spawned, State::Failed, 100, 1004, false),
        routed("legacy:0", Kind::External, State::Healthy, 50, 9, false),
    ]);
    let mut stats = StatsCache::new(None);
    stats.sync(&v);
    let t = build_table(&c, &v, None, &stats, None);

    let a = backend(&t, "a.api.t.test", "/").unwrap();
    assert_eq!(a.availability, Availability::Up { healthy: true });
    assert_eq!(a.weight, 100);
    assert_eq!(
        backend(&t, "b.api.t.test", "/").unwrap().availability,
        Availability::Up { healthy: false }
    );
    assert_eq!(
        backend(&t, "c.api.t.test", "/").unwrap().availability,
        Availability::Idle
    );
    assert_eq!(
        backend(&t, "d.api.t.test", "/").unwrap().availability,
        Availability::Down
    );
    // The pool holds the process's instances in view order; externals have their own.
    let pool = t.pool("api").unwrap();
    let ids: Vec<_> = pool.backends.iter().map(|b| b.id.to_string()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    let legacy = t.pool("legacy").unwrap();
    assert_eq!(legacy.backends.len(), 1);
    assert_eq!(legacy.backends[0].weight, 50);
    assert!(matches!(
        t.lookup("api.t.test", "/").unwrap().target,
        Target::Pool(_)
    ));
    assert!(matches!(
        t.lookup("t.test", "/").unwrap().target,
        Target::Management
    ));
    // [routes] beat the implicit rules and point at one instance.
    assert_eq!(
        backend(&t, "example.com", "/admin/x").unwrap().id.as_ref(),
        "b"
    );
    assert!(t.lookup("example.com", "/other").is_none());
    assert!(t.lookup("nope.t.test", "/").is_none());
}

#[test]
fn counters_outlive_tables_and_go_with_their_instance() {
    let c = Compiled::new(config(TWO), None).unwrap();
    let mut stats = StatsCache::new(None);
    let v1 = view(vec![
        routed("api:a", Kind::Spawned, State::Healthy, 100, 1001, false),
        routed("api:b", Kind::Spawned, State::Healthy, 100, 1002, false),
    ]);
    stats.sync(&v1);
    let t1 = build_table(&c, &v1, None, &stats, None);
    let v2 = view(vec![routed(
        "api:a",
        Kind::Spawned,
        State::Healthy,
        10,
        1001,
        false,
    )]);
    stats.sync(&v2);
    let t2 = build_table(&c, &v2, None, &stats, None);
    let (a1, a2) = (
        backend(&t1, "a.api.t.test", "/").unwrap(),
        backend(&t2, "a.api.t.test", "/").unwrap(),
    );
    assert!(
        Arc::ptr_eq(&a1.stats, &a2.stats),
        "same counters across tables"
    );
    assert_eq!(a2.weight, 10);
    assert!(backend(&t2, "b.api.t.test", "/").is_none());
    let name = InstanceName {
        process: "api".into(),
        id: "b".into(),
    };
    assert!(
        stats.get(&name).is_none(),
        "a gone instance's counters are dropped"
    );
}

#[test]
fn no_view_still_routes_the_domain_and_processes() {
    let c = Compiled::new(config(TWO), None).unwrap();
    let t = build_table(
        &c,
        &RoutingView::default(),
        None,
        &StatsCache::new(None),
        None,
    );
    assert!(matches!(
        t.lookup("t.test", "/").unwrap().target,
        Target::Management
    ));
    // A process with no instance answers (503 from the proxy), it is not unknown (404).
    assert!(t.pool("api").is_some_and(|p| p.backends.is_empty()));
}

fn server(id: &str, status: tenement_fleet::Status, resolved: bool) -> tenement_fleet::ServerState {
    tenement_fleet::ServerState {
        server: tenement_fleet::Server {
            id: id.into(),
            url: format!("https://{id}.example.com"),
            domain: format!("{id}.example.com"),
            region: None,
            token: None,
        },
        status,
        last_seen: None,
        latency_ms: None,
        offline_since: None,
        consecutive_failures: 0,
        last_error: None,
        resolved: resolved.then(|| tenement_fleet::ServerAddr {
            addr: ([127, 0, 0, 1], 4443).into(),
            tls: true,
            host: format!("{id}.example.com"),
        }),
    }
}

fn tenant(id: &str, server: &str) -> tenement_fleet::Tenant {
    tenement_fleet::Tenant {
        id: id.into(),
        domain: format!("{id}.customers.test"),
        server: server.into(),
        process: "api".into(),
        instance: id.into(),
    }
}

#[test]
fn tenants_go_local_remote_or_nowhere_without_any_dns() {
    use tenement_fleet::Status::{Offline, Online};
    let mut conf = config("[process.api]\ncommand = \"x\"\n");
    Arc::make_mut(&mut conf).settings.domain = "me.example.com".into();
    let c = Compiled::new(conf, None).unwrap();
    let fleet = Arc::new(FleetView::new(
        vec![
            server("me", Online, true),
            server("far", Online, true),
            server("unresolved", Online, false),
            server("down", Offline, true),
        ],
        vec![
            tenant("local", "me"),
            tenant("remote", "far"),
            tenant("noaddr", "unresolved"),
            tenant("stranded", "down"),
        ],
        1,
    ));
    let own = c.config.settings.domain.clone();
    let (v, stats) = one_healthy("api:local");
    let input = FleetInput {
        view: &fleet,
        failover: false,
    };
    let targets = FleetTargets::new(&own, &input);
    let t = build_table(&c, &v, Some(targets.part()), &stats, None);
    // Served here: straight to the local instance, no hop.
    let local = backend(&t, "local.customers.test", "/").unwrap();
    assert_eq!(local.id.as_ref(), "local");
    // On another server: to the address the fleet resolved, with that server's Host.
    match t.lookup("remote.customers.test", "/").unwrap().target {
        Target::Remote(r) => {
            assert_eq!(r.server.as_deref(), Some("far"));
            assert_eq!(&*r.host, "remote.api.far.example.com");
        }
        other => panic!("{other:?}"),
    }
    // Not resolved yet, or home offline without failover: a 503 target, never a 404.
    for host in ["noaddr.customers.test", "stranded.customers.test"] {
        match t.lookup(host, "/").unwrap().target {
            Target::Remote(r) => assert!(r.server.is_none(), "{host}"),
            other => panic!("{host}: {other:?}"),
        }
    }
    // Home offline with failover: wait while it is placed, then go where it was placed.
    let input = FleetInput {
        view: &fleet,
        failover: true,
    };
    let targets = FleetTargets::new(&own, &input);
    let t = build_table(&c, &v, Some(targets.part()), &stats, None);
    match t.lookup("stranded.customers.test", "/").unwrap().target {
        Target::Remote(r) => assert!(r.placing && r.server.is_none(), "{r:?}"),
        other => panic!("{other:?}"),
    }
    let placed = Arc::new(
        (*fleet)
            .clone()
            .with_placements([tenement_fleet::Placement {
                tenant: "stranded".into(),
                server: "far".into(),
                spawned: true,
                state: tenement_fleet::PlaceState::Ready,
                error: None,
                placed_ms: 1,
            }]),
    );
    let input = FleetInput {
        view: &placed,
        failover: true,
    };
    let targets = FleetTargets::new(&own, &input);
    let t = build_table(&c, &v, Some(targets.part()), &stats, None);
    match t.lookup("stranded.customers.test", "/").unwrap().target {
        Target::Remote(r) => {
            assert_eq!(r.server.as_deref(), Some("far"));
            assert_eq!(&*r.host, "stranded.api.far.example.com");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reload_keeps_the_options_and_plugin_state_of_unchanged_processes() {
    let old = Compiled::new(
        config("[process.api]\ncommand = \"x\"\n[process.web]\ncommand = \"y\"\n"),
        None,
    )
    .unwrap();
    let new = Compiled::next(
        config(
            "[process.api]\ncommand = \"x2\"\n[process.web]\ncommand = \"y\"\nrequest_timeout = \"5s\"\n",
        ),
        None,
        Some(&old),
    )
    .unwrap();
    // api: only its spawn definition changed, so its table options (and plugin state) stay.
    assert!(Arc::ptr_eq(&old.opts["api"], &new.opts["api"]));
    // web: a table key changed, so it gets new options.
    assert!(!Arc::ptr_eq(&old.opts["web"], &new.opts["web"]));
    assert_eq!(
        new.opts["web"].request_timeout,
        std::time::Duration::from_secs(5)
    );
}

#[tokio::test]
async fn a_fleet_publish_that_changes_no_route_rebuilds_no_table() {
    use tenement_fleet::Status::Online;
    let cfg = config("");
    let publisher = Publisher::new(cfg.clone(), None).unwrap();
    let supervisor = Supervisor::new(
        cfg,
        publisher.clone(),
        Arc::new(tenement_supervisor::TracingSink),
        None,
    );
    let base = FleetView::new(
        vec![server("s1", Online, true)],
        vec![tenant("acme", "s1")],
        1,
    );
    let (tx, rx) = watch::channel(Arc::new(base.clone()));
    tokio::spawn(
        publisher
            .clone()
            .run(supervisor.clone(), supervisor.follow(), Some((rx, true))),
    );
    publisher.settle_fleet(1).await;
    let first = publisher.router().load().clone();
    // Health only (latency): a new generation, the same routing generation.
    let mut s = server("s1", Online, true);
    s.latency_ms = Some(7);
    let mut health = base.with_servers(vec![s], 2);
    health.routing = base.routing;
    tx.send_replace(Arc::new(health));
    publisher.settle_fleet(2).await;
    assert!(
        Arc::ptr_eq(&first, &publisher.router().load()),
        "acknowledged without a rebuild"
    );
    // A status change: rebuilt.
    let down = base.with_servers(vec![server("s1", tenement_fleet::Status::Offline, true)], 3);
    assert_eq!(down.routing, 3);
    tx.send_replace(Arc::new(down));
    publisher.settle_fleet(3).await;
    assert!(!Arc::ptr_eq(&first, &publisher.router().load()), "rebuilt");
}

/// Where `host` goes in `t`: the server of a remote target, "placing", "unavailable", or the
/// local instance.
fn goes(t: &Table, host: &str) -> String {
    match t.lookup(host, "/").map(|r| r.target) {
        Some(Target::Remote(r)) if r.placing => "placing".into(),
        Some(Target::Remote(r)) => match &r.server {
            Some(s) => format!("{s} {}", r.host),
            None => format!("unavailable {:?}", r.why),
        },
        Some(Target::Instance(b)) => format!("local {}", b.key),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_status_change_resolves_only_the_tenants_it_touches() {
    use tenement_fleet::Status::{Offline, Online};
    let mut conf = config("[process.api]\ncommand = \"x\"\n");
    Arc::make_mut(&mut conf).settings.domain = "me.example.com".into();
    let c = Compiled::new(conf, None).unwrap();
    let own = c.config.settings.domain.clone();
    let ids = ["me", "s1", "s2", "s3"];
    let servers = |down: &[&str]| -> Vec<tenement_fleet::ServerState> {
        ids.iter()
            .map(|id| server(id, if down.contains(id) { Offline } else { Online }, true))
            .collect()
    };
    // 40 tenants, 10 on each server (t0 on me, t1 on s1, ...).
    let tenants: Vec<_> = (0..40)
        .map(|i| tenant(&format!("t{i}"), ids[i % 4]))
        .collect();
    let online = Arc::new(FleetView::new(servers(&[]), tenants, 1));
    let (v, stats) = one_healthy("api:t0");
    let input = |view| FleetInput {
        view,
        failover: true,
    };
    let mut targets = FleetTargets::default();
    assert_eq!(
        targets.sync(&own, &input(&online)),
        40,
        "the first sync resolves all"
    );
    let t1 = build_table(&c, &v, Some(targets.part()), &stats, None);
    // s1 goes offline (the same tenants, shared): only its 10 tenants are resolved again.
    let mut down = online.with_servers(servers(&["s1"]), 2);
    down.placements = online.placements.clone();
    let down = Arc::new(down);
    assert_eq!(targets.sync(&own, &input(&down)), 10);
    let t2 = build_table(&c, &v, Some(targets.part()), &stats, Some(&t1));
    assert!(
        t2.shares_hosts_with(&t1),
        "no tenant went local or remote: same host index"
    );
    // t5 is placed on s2; s2 then goes offline too: t5 and s2's own 10 tenants.
    let placement = tenement_fleet::Placement {
        tenant: "t5".into(),
        server: "s2".into(),
        spawned: true,
        state: tenement_fleet::PlaceState::Ready,
        error: None,
        placed_ms: 1,
    };
    let placed = Arc::new(
        down.with_servers(servers(&["s1"]), 3)
            .with_placements([placement.clone()]),
    );
    assert_eq!(
        targets.sync(&own, &input(&placed)),
        1,
        "the placement's tenant only"
    );
    let t3 = build_table(&c, &v, Some(targets.part()), &stats, Some(&t2));
    let both = Arc::new(
        placed
            .with_servers(servers(&["s1", "s2"]), 4)
            .with_placements([placement]),
    );
    assert_eq!(targets.sync(&own, &input(&both)), 11);
    let t4 = build_table(&c, &v, Some(targets.part()), &stats, Some(&t3));
    // A tick that changes no route resolves nothing.
    let mut same = both.with_servers(servers(&["s1", "s2"]), 5);
    same.placements = both.placements.clone();
    same.routing = both.routing;
    let same = Arc::new(same);
    assert_eq!(targets.sync(&own, &input(&same)), 0);
    // Each table routes every tenant as a full build from its view does.
    for (t, fv) in [(&t1, &online), (&t2, &down), (&t3, &placed), (&t4, &both)] {
        let full = build_table(
            &c,
            &v,
            Some(FleetTargets::new(&own, &input(fv)).part()),
            &stats,
            None,
        );
        for i in 0..40 {
            let host = format!("t{i}.customers.test");
            assert_eq!(goes(t, &host), goes(&full, &host), "{host}");
        }
    }
    assert_eq!(goes(&t1, "t1.customers.test"), "s1 t1.api.s1.example.com");
    assert_eq!(goes(&t2, "t1.customers.test"), "placing");
    assert_eq!(goes(&t3, "t5.customers.test"), "s2 t5.api.s2.example.com");
    assert_eq!(goes(&t4, "t5.customers.test"), "placing");
    assert_eq!(goes(&t4, "t0.customers.test"), "local api:t0");
}
