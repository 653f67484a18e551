//! `build_table` from hand-made views, checked through `Table::lookup`.

use std::path::Path;

use tenement_conf::Addr;
use tenement_proxy::{Availability, Target};
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
    let t = build_table(&c, &v, None, &stats);

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
    let t1 = build_table(&c, &v1, None, &stats);
    let v2 = view(vec![routed(
        "api:a",
        Kind::Spawned,
        State::Healthy,
        10,
        1001,
        false,
    )]);
    stats.sync(&v2);
    let t2 = build_table(&c, &v2, None, &stats);
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
    let t = build_table(&c, &RoutingView::default(), None, &StatsCache::new(None));
    assert!(matches!(
        t.lookup("t.test", "/").unwrap().target,
        Target::Management
    ));
    // A process with no instance answers (503 from the proxy), it is not unknown (404).
    assert!(t.pool("api").is_some_and(|p| p.backends.is_empty()));
}
