//! SPEC §9 "failover places the tenant": a router R and two servers with API tokens, A (the
//! tenant's home) and B (which does not run the tenant's instance). A stops: R asks B to spawn
//! it, requests wait meanwhile (never a 404), then A comes back, new requests go home and the
//! copy on B is stopped after `failover_linger` without traffic. The same with the router's
//! fleet in PostgreSQL (`[fleet] store`): the placement is data in the shared store.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{served_by, wait_status};
use crate::supervision::cli;
use crate::util::{unix_request, Builder, Ten};

/// A server on a fixed port (it comes back at the same URL) running `app` instances
/// `instances`, each answering `/env?name=SERVER` with `name`.
fn app_server(name: &str, instances: &str, args: &str) -> Ten {
    let port = crate::util::free_port().to_string();
    Builder::new()
        .body(&format!(
            "[process.app]\ncommand = \"@APP@{args}\"\nenv = {{ SERVER = \"{name}\" }}\n[instances]\napp = [{instances}]\n"
        ))
        .start_with_args(&["--domain", &format!("{name}.test"), "--port", &port])
}

fn ok(ten: &Ten, args: &[&str]) -> String {
    let (ok, out, err) = cli(ten, args);
    assert!(ok, "ten {args:?}: {err}\n{}", ten.stderr());
    out
}

/// The names in `ten ps --json`.
fn instances(ten: &Ten) -> Vec<String> {
    let v: Value = serde_json::from_str(&ok(ten, &["ps", "--json"])).expect("ps json");
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect()
}

/// acme's `home` and `served_at` in `ten tenant list --json`.
fn placement(router: &Ten) -> (Value, Value) {
    let v: Value =
        serde_json::from_str(&ok(router, &["tenant", "list", "--json"])).expect("tenant json");
    let t = v
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["id"] == "acme")
        .cloned()
        .expect("acme listed");
    (t["home"].clone(), t["served_at"].clone())
}

/// `GET /api/{path}` on the router's control socket (cheap, unlike a CLI run).
fn api(router: &Ten, path: &str) -> Value {
    let r = unix_request(
        &router.control,
        format!("GET /api/{path} HTTP/1.1\r\nHost: ten\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    r.json()
}

#[test]
fn failover_places_the_tenant_then_returns_home_and_stops_the_copy() {
    failover_round_trip(None);
}

#[test]
fn failover_places_the_tenant_with_the_postgres_store() {
    let pg = tenement_fleet::pgtest::PgCluster::start().expect("postgres");
    let url = pg.create_db("fleet").expect("database");
    failover_round_trip(Some(&url));
    assert_eq!(
        pg.psql("fleet", "SELECT count(*) FROM fleet_tenants")
            .expect("psql"),
        "1",
        "the router's fleet is in PostgreSQL"
    );
}

/// A fails, acme is placed on B (requests wait, never a 404), A returns, the copy stops.
fn failover_round_trip(store: Option<&str>) {
    let store = store
        .map(|u| format!("store = \"{u}\"\n"))
        .unwrap_or_default();
    let mut a = app_server("a", "\"acme\"", "");
    // B starts instances slowly, so requests after A's outage is detected wait for the copy.
    let b = app_server("b", "\"other\"", " --startup-delay-ms 1500");
    a.wait_status("acme.app.a.test", "/", 200);
    b.wait_status("other.app.b.test", "/", 200);
    let token_a = ok(&a, &["token-gen"]).trim().to_string();
    let token_b = ok(&b, &["token-gen"]).trim().to_string();
    let router = Builder::new()
        .body(&format!(
            "[fleet]\nhealth_interval = \"200ms\"\nunhealthy_after = 2\nfailover_linger = \"2s\"\n\
             placement_timeout = \"20s\"\n{store}",
        ))
        .start_with_args(&["--domain", "r.test"]);
    for (id, server, token) in [("a", &a, &token_a), ("b", &b, &token_b)] {
        let url = format!("http://{}", server.addr);
        let domain = format!("{id}.test");
        ok(
            &router,
            &[
                "server", "add", id, &url, "--domain", &domain, "--region", "eu", "--token", token,
            ],
        );
    }
    ok(
        &router,
        &["tenant", "add", "acme", "acme.com", "a", "app", "acme"],
    );
    wait_status(&router, "a", "online");
    wait_status(&router, "b", "online");
    assert_eq!(served_by(&router, "acme.com"), (200, "a".into()));
    assert_eq!(placement(&router), ("a".into(), "a".into()));
    assert!(
        !instances(&b).contains(&"app:acme".to_string()),
        "b does not run the tenant yet"
    );

    // A dies. Until the router has seen it offline, requests fail to reach it (502/503);
    // from then on each request waits for the placement and is served by B. Never a 404.
    a.kill9();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut before = Vec::new();
    let mut after = Vec::new();
    // Requests that waited for the placement: sent while the tenant was being placed (or
    // before the outage was even detected) and served by b.
    let mut waited = 0;
    loop {
        let detected = api(&router, "servers/a")["status"] == "offline";
        let placing = api(&router, "tenants/acme")["served_at"].is_null();
        let answer = served_by(&router, "acme.com");
        assert_ne!(answer.0, 404, "never a 404 during the switch: {}", answer.1);
        let by_b = answer == (200, "b".to_string());
        waited += usize::from(by_b && (placing || !detected));
        if detected {
            after.push(answer.clone());
        } else {
            before.push(answer.clone());
        }
        if detected && after.len() >= 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served by b: before detection {before:?}, after {after:?}\n{}",
            router.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (status, body) in &before {
        assert!(
            (*status, body.as_str()) == (200, "b") || [502, 503].contains(status),
            "before detection: {status} {body}"
        );
    }
    // The API shows the new status a moment before the routing table built from it is
    // swapped in (the table is built off the health loop's thread), so the first request after
    // detection (or two, 20 ms apart) may still have been routed to A like those before it: a
    // 502/503, never a 404.
    let in_flight = after
        .iter()
        .take(2)
        .take_while(|(status, _)| [502, 503].contains(status))
        .count();
    let settled = &after[in_flight..];
    for answer in settled {
        assert_eq!(
            (answer.0, answer.1.as_str()),
            (200, "b"),
            "after detection every request waits for the placement and is served by b: {after:?}"
        );
    }
    assert!(
        waited >= 1,
        "a request sent while the tenant was being placed waited for it: {before:?} {after:?}"
    );
    assert!(
        router
            .stderr()
            .contains("tenant acme: home a offline, placed on b (asking it to start app:acme)"),
        "{}",
        router.stderr()
    );
    assert!(
        instances(&b).contains(&"app:acme".to_string()),
        "the router spawned app:acme on b"
    );
    assert_eq!(placement(&router), ("a".into(), "b".into()));
    let table = ok(&router, &["tenant", "list"]);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("HOME") && h.contains("SERVED_AT")),
        "{table}"
    );

    // A comes back: new requests go home; with no traffic the copy on B is stopped after
    // failover_linger (2s).
    a.serve_again();
    a.wait_status("acme.app.a.test", "/", 200);
    wait_status(&router, "a", "online");
    for _ in 0..5 {
        assert_eq!(served_by(&router, "acme.com"), (200, "a".into()));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while instances(&b).contains(&"app:acme".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the copy on b was never stopped\n{}",
            router.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        instances(&b).contains(&"app:other".to_string()),
        "only the copy is stopped"
    );
    // The router logs the stop once b answered the DELETE (b lists the copy as gone a moment
    // before, and with PostgreSQL the placement is forgotten in the store first).
    let stopped = "tenant acme: failover copy app:acme on b stopped after 2s without traffic";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !router.stderr().contains(stopped) {
        assert!(Instant::now() < deadline, "{}", router.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(placement(&router), ("a".into(), "a".into()));
    assert_eq!(served_by(&router, "acme.com"), (200, "a".into()));
}
