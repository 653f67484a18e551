//! SPEC §9 several routers: routers sharing their fleet through PostgreSQL (`[fleet] store`),
//! each test on a private cluster (`tenement_fleet::pgtest`): writes seen by the other router
//! within 1 s, one webhook per outage with two routers (also after the leader is killed -9),
//! routing on the last table while PostgreSQL is down, and `ten fleet migrate-store`.

use std::time::{Duration, Instant};

use serde_json::Value;
use tenement_fleet::pgtest::{PgCluster, PASSWORD};

use super::{app_server, served_by, wait_status, Hook};
use crate::supervision::cli;
use crate::util::{unix_request, Builder, Ten};

fn cluster(db: &str) -> (PgCluster, String) {
    let pg = PgCluster::start().expect("postgres");
    let url = pg.create_db(db).expect("database");
    (pg, url)
}

/// A router whose fleet is in `url`.
fn router(url: &str, extra: &str) -> Ten {
    Builder::new()
        .body(&format!(
            "[fleet]\nstore = \"{url}\"\nhealth_interval = \"200ms\"\nunhealthy_after = 2\n{extra}"
        ))
        .start_with_args(&["--domain", "r.test"])
}

fn ok(ten: &Ten, args: &[&str]) -> String {
    let (ok, out, err) = cli(ten, args);
    assert!(ok, "ten {args:?}: {err}\n{}", ten.stderr());
    out
}

/// `GET /api/{path}` on the control socket: (status, JSON).
fn api(ten: &Ten, path: &str) -> (u16, Value) {
    let r = unix_request(
        &ten.control,
        format!("GET /api/{path} HTTP/1.1\r\nHost: ten\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    (
        r.status,
        serde_json::from_str(&r.text()).unwrap_or(Value::Null),
    )
}

/// Polls `f` every 20 ms until it holds, at most `limit`.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many times the router took the lead.
fn leads(ten: &Ten) -> usize {
    ten.stderr().matches("this router leads now").count()
}

#[test]
fn two_routers_see_each_others_writes_within_a_second() {
    let (_pg, url) = cluster("fleet");
    let a = app_server("a");
    a.wait_status("acme.app.a.test", "/", 200);
    let (r1, r2) = (router(&url, ""), router(&url, ""));
    let a_url = format!("http://{}", a.addr);
    ok(&r1, &["server", "add", "a", &a_url, "--domain", "a.test"]);
    assert!(
        within(Duration::from_secs(1), || api(&r2, "servers/a").0 == 200),
        "r2 sees the server r1 added within 1 s\n{}",
        r2.stderr()
    );
    ok(
        &r2,
        &["tenant", "add", "acme", "acme.com", "a", "app", "acme"],
    );
    assert!(
        within(Duration::from_secs(1), || served_by(&r1, "acme.com")
            == (200, "a".into())),
        "r1 routes the tenant r2 added within 1 s\n{}",
        r1.stderr()
    );
    ok(&r1, &["tenant", "rm", "acme"]);
    assert!(
        within(Duration::from_secs(1), || served_by(&r2, "acme.com").0
            == 404),
        "r2 drops the tenant r1 removed within 1 s"
    );
    // Each router checks the server itself.
    wait_status(&r1, "a", "online");
    wait_status(&r2, "a", "online");
}

#[test]
fn one_webhook_per_outage_with_two_routers_also_after_the_leader_is_killed() {
    let (_pg, url) = cluster("fleet");
    let hook = Hook::start();
    let mut a = app_server("a");
    a.wait_status("acme.app.a.test", "/", 200);
    let extra = format!(
        "webhook = \"http://127.0.0.1:{}/hook\"\nwebhook_after = \"300ms\"\n",
        hook.port
    );
    let mut routers = [router(&url, &extra), router(&url, &extra)];
    let a_url = format!("http://{}", a.addr);
    ok(
        &routers[0],
        &["server", "add", "a", &a_url, "--domain", "a.test"],
    );
    assert!(within(Duration::from_secs(10), || {
        routers.iter().map(leads).sum::<usize>() == 1
    }));
    for r in &routers {
        wait_status(r, "a", "online");
    }
    let posts = |n: usize| {
        let ok = within(Duration::from_secs(20), || hook.bodies().len() >= n);
        // A few more ticks of both routers: no second POST.
        std::thread::sleep(Duration::from_millis(1500));
        (ok, hook.bodies())
    };

    // Outage 1: one POST, from the leader.
    a.kill9();
    let (_, got) = posts(1);
    assert_eq!(got.len(), 1, "one webhook for two routers: {got:?}");

    // The leader is killed -9: the other takes the lead, and does not post again.
    let leader = usize::from(leads(&routers[1]) == 1);
    let other = 1 - leader;
    routers[leader].kill9();
    assert!(
        within(Duration::from_secs(10), || leads(&routers[other]) == 1),
        "the other router leads once the leader is gone\n{}",
        routers[other].stderr()
    );
    let (_, got) = posts(1);
    assert_eq!(
        got.len(),
        1,
        "the new leader knows the outage was notified: {got:?}"
    );

    // Outage 2 (a back, then down again): one more POST, from the new leader.
    a.serve_again();
    a.wait_status("acme.app.a.test", "/", 200);
    wait_status(&routers[other], "a", "online");
    std::thread::sleep(Duration::from_millis(500));
    a.kill9();
    let (_, got) = posts(2);
    assert_eq!(got.len(), 2, "one webhook for the next outage: {got:?}");
    let post: Value = serde_json::from_str(&got[1]).expect("webhook JSON");
    assert_eq!(post["server"], "a");
}

#[test]
fn postgres_down_routing_continues_writes_fail_then_recover() {
    let (mut pg, url) = cluster("fleet");
    let a = app_server("a");
    a.wait_status("acme.app.a.test", "/", 200);
    let r = router(&url, "");
    let a_url = format!("http://{}", a.addr);
    ok(&r, &["server", "add", "a", &a_url, "--domain", "a.test"]);
    ok(
        &r,
        &["tenant", "add", "acme", "acme.com", "a", "app", "acme"],
    );
    wait_status(&r, "a", "online");
    assert!(within(Duration::from_secs(10), || leads(&r) == 1));

    pg.stop().expect("stop postgres");
    for _ in 0..5 {
        assert_eq!(
            served_by(&r, "acme.com"),
            (200, "a".into()),
            "routing continues"
        );
    }
    let (added, _, err) = cli(
        &r,
        &[
            "server",
            "add",
            "b",
            "http://127.0.0.1:9",
            "--domain",
            "b.test",
        ],
    );
    assert!(!added, "a write is refused while the store is down");
    let name = format!("postgres://ten@127.0.0.1:{}/fleet", pg.port());
    assert!(err.contains(&name) && err.contains("unreachable"), "{err}");
    assert!(!err.contains(PASSWORD), "never the password: {err}");
    assert!(
        !r.stderr().contains(PASSWORD),
        "never the password in the log"
    );

    pg.resume().expect("restart postgres");
    assert!(
        within(Duration::from_secs(20), || cli(
            &r,
            &[
                "server",
                "add",
                "b",
                "http://127.0.0.1:9",
                "--domain",
                "b.test"
            ]
        )
        .0),
        "writes work again once PostgreSQL is back\n{}",
        r.stderr()
    );
    assert!(
        within(Duration::from_secs(10), || leads(&r) == 2),
        "the lead is taken again\n{}",
        r.stderr()
    );
    assert_eq!(served_by(&r, "acme.com"), (200, "a".into()));
}

#[test]
fn migrate_store_copies_a_sqlite_fleet_into_postgres() {
    let (pg, url) = cluster("fleet");
    let a = app_server("a");
    a.wait_status("acme.app.a.test", "/", 200);
    let mut old = Builder::new()
        .body("[fleet]\nhealth_interval = \"200ms\"\n")
        .start_with_args(&["--domain", "r.test"]);
    let a_url = format!("http://{}", a.addr);
    let add = [
        "server", "add", "a", &a_url, "--domain", "a.test", "--token", "t0k",
    ];
    ok(&old, &add);
    ok(
        &old,
        &["tenant", "add", "acme", "acme.com", "a", "app", "acme"],
    );
    assert!(old.sigterm().success());

    let out = ok(&old, &["fleet", "migrate-store", &url]);
    let name = format!("postgres://ten@127.0.0.1:{}/fleet", pg.port());
    assert!(
        out.contains("copied 1 servers, 1 tenants and 0 placements"),
        "{out}"
    );
    assert!(out.contains(&format!("store = \"{name}\"")), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
    let (again, _, err) = cli(&old, &["fleet", "migrate-store", &url]);
    assert!(
        !again && err.contains("not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        pg.psql("fleet", "SELECT token FROM fleet_servers")
            .expect("psql"),
        "t0k",
        "the server's token is copied"
    );

    // A new router on the PostgreSQL store routes the copied tenant.
    let r = router(&url, "");
    assert!(
        within(Duration::from_secs(10), || served_by(&r, "acme.com")
            == (200, "a".into())),
        "{}",
        r.stderr()
    );
}
