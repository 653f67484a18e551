//! The fleet at 1,000 servers and 100,000 tenants (issue 22): `cargo bench --bench fleet`.
//!
//! - A health tick: 1,000 check results applied as the health loop applies them, then the
//!   tick's publish (latencies change, no status does). Its view shares the tenant list and
//!   keeps its routing generation, so the table publisher acknowledges it without a rebuild.
//! - The table rebuild a status change causes (the binary's `src/server/compose.rs`, by path)
//!   with 100k tenants, one server offline / back: `FleetTargets::sync` re-resolves the 100
//!   tenants homed there and replaces their targets copy-on-write, then `build_table` shares
//!   the live table's host index and the rest of the targets. Beside it, the same rebuild with
//!   every tenant resolved again (what every status change cost before).
//! - Lookups: `FleetView::server` and `FleetView::tenant` by id (hash indexes), against the
//!   linear scan they replaced.
//! - A store re-read (what a router does on another router's notification, and every 30 s):
//!   `Fleet::changed` over SQLite, and over PostgreSQL when the Debian package is installed (a
//!   private cluster, as the tests start).

#[allow(dead_code)]
#[path = "../src/server/compose.rs"]
mod compose;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenement_conf::Config;
use tenement_fleet::{FleetStore, Server, Tenant};
use tenement_supervisor::RoutingView;

use compose::{build_table, Compiled, FleetInput, FleetTargets, StatsCache};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVERS: usize = 1_000;
const TENANTS: usize = 100_000;
const RUNS: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn servers() -> Vec<Server> {
    (0..SERVERS)
        .map(|i| Server {
            id: format!("s{i:04}"),
            url: format!("http://10.{}.{}.1:8080", i / 250, i % 250),
            domain: format!("s{i:04}.fleet.test"),
            region: Some(format!("r{}", i % 4)),
            token: None,
        })
        .collect()
}

fn tenants() -> Vec<Tenant> {
    (0..TENANTS)
        .map(|i| Tenant {
            id: format!("t{i}"),
            domain: format!("t{i}.customers.example"),
            server: format!("s{:04}", i % SERVERS),
            process: "app".into(),
            instance: format!("t{i}"),
        })
        .collect()
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8, 1], 8080))
}

fn conf() -> tenement_conf::Fleet {
    tenement_conf::Fleet {
        unhealthy_after: 1,
        ..tenement_conf::Fleet::default()
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("ten-bench-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = dir.join("tenement.db");
    let store = FleetStore::open(&db).expect("store");
    let fleet = tenement_fleet::bench::fleet_with(store, conf(), servers(), tenants());

    println!("### Fleet: 1,000 servers, 100,000 tenants (issue 22)\n");
    println!("| what | ms (median of {RUNS}) |");
    println!("|---|---:|");

    // Health ticks: the first marks every server online (1,000 status changes); then steady.
    let start = Instant::now();
    tenement_fleet::bench::health_tick(&fleet, Duration::from_millis(2), addr);
    let first = ms(start);
    let routing = fleet.view().routing;
    let tenants_list = fleet.view().tenants.clone();
    let ticks: Vec<f64> = (0..RUNS)
        .map(|i| {
            let start = Instant::now();
            let latency = Duration::from_millis(1 + (i as u64 % 3));
            tenement_fleet::bench::health_tick(&fleet, latency, addr);
            ms(start)
        })
        .collect();
    let after = fleet.view();
    assert_eq!(
        after.routing, routing,
        "a latency-only tick routes the same"
    );
    assert!(Arc::ptr_eq(&after.tenants, &tenants_list), "tenants shared");
    println!(
        "| first health tick (1,000 servers unknown -> online, 1,000 publishes) | {first:.2} |"
    );
    println!(
        "| health tick, steady (1,000 results + publish; tenants shared, no table rebuild) | {:.3} |",
        median(ticks)
    );

    // The table rebuild a status change causes (one server offline / back).
    let text = "[settings]\ndomain = \"router.test\"\n";
    let config = Config::parse(text, "tenement.toml", Path::new("/tmp")).expect("config");
    let compiled = Compiled::new(Arc::new(config), None).expect("compiles");
    let routing_view = RoutingView::default();
    let stats = StatsCache::new(None);
    let online = fleet.view();
    tenement_fleet::bench::check_fails(&fleet, "s0000");
    let one_down = fleet.view();
    assert_ne!(
        one_down.routing, online.routing,
        "a status change routes differently"
    );
    let views = [online.clone(), one_down.clone()];
    let own = compiled.config.settings.domain.clone();
    let input = |view| FleetInput {
        view,
        failover: true,
    };
    let mut targets = FleetTargets::new(&own, &input(&views[0]));
    let router = tenement_proxy::Router::new(build_table(
        &compiled,
        &routing_view,
        Some(targets.part()),
        &stats,
        None,
    ));
    // The next table from the fleet's part, on the live one, published.
    let publish = |part: &tenement_proxy::TenantTargets| {
        let live = router.load();
        let next = build_table(&compiled, &routing_view, Some(part), &stats, Some(&live));
        drop(live);
        router.publish(next);
    };
    let mut resolved = 0;
    let builds: Vec<f64> = (0..RUNS)
        .map(|i| {
            let v = &views[(i + 1) % 2];
            let start = Instant::now();
            resolved = targets.sync(&own, &input(v));
            publish(targets.part());
            ms(start)
        })
        .collect();
    assert_eq!(
        resolved,
        TENANTS / SERVERS,
        "only the tenants of the server that changed"
    );
    let full: Vec<f64> = (0..RUNS)
        .map(|i| {
            let v = &views[(i + 1) % 2];
            let start = Instant::now();
            let all = FleetTargets::new(&own, &input(v));
            publish(all.part());
            ms(start)
        })
        .collect();
    println!(
        "| table rebuild on a status change ({resolved} of 100,000 tenants resolved again) | {:.3} |",
        median(builds)
    );
    println!(
        "| the same, every tenant resolved again (each status change before) | {:.2} |",
        median(full)
    );

    // Lookups: the indexes against the scans they replaced.
    let ids: Vec<String> = online.servers.iter().map(|s| s.server.id.clone()).collect();
    let start = Instant::now();
    let mut hits = 0usize;
    for t in online.tenants.iter() {
        hits += usize::from(online.server(&t.server).is_some());
    }
    let indexed = ms(start);
    let start = Instant::now();
    for t in online.tenants.iter() {
        hits += usize::from(online.servers.iter().any(|s| s.server.id == t.server));
    }
    let linear = ms(start);
    let start = Instant::now();
    for id in ids.iter().cycle().take(TENANTS) {
        hits += usize::from(online.server(id).is_some());
    }
    let by_id = ms(start);
    assert_eq!(hits, 3 * TENANTS);
    println!("| 100,000 tenant -> server lookups, indexed | {indexed:.2} |");
    println!("| 100,000 tenant -> server lookups, linear scan (before) | {linear:.2} |");
    println!("| 100,000 server lookups by id, indexed | {by_id:.2} |");

    // A store re-read: SQLite (the rows written in one transaction first).
    {
        let mut conn = rusqlite::Connection::open(&db).expect("db");
        let tx = conn.transaction().expect("tx");
        for s in servers() {
            tx.execute(
                "INSERT INTO fleet_servers (id, url, domain, region, token, created_ms) VALUES (?1, ?2, ?3, ?4, NULL, 0)",
                rusqlite::params![s.id, s.url, s.domain, s.region],
            )
            .expect("server");
        }
        for t in tenants() {
            tx.execute(
                "INSERT INTO fleet_tenants (id, domain, server, process, instance) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![t.id, t.domain, t.server, t.process, t.instance],
            )
            .expect("tenant");
        }
        tx.commit().expect("commit");
    }
    let rereads: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            fleet.changed();
            ms(start)
        })
        .collect();
    assert_eq!(fleet.view().tenants.len(), TENANTS);
    println!(
        "| store re-read + publish, SQLite (Fleet::changed, median of 3) | {:.1} |",
        median(rereads)
    );

    // The same over PostgreSQL, when installed.
    match tenement_fleet::pgtest::PgCluster::start() {
        Err(e) => println!("| store re-read, PostgreSQL | not run: {e} |"),
        Ok(pg) => {
            let url = pg.create_db("bench").expect("database");
            let to = FleetStore::open_conf(Some(&url), &db, Duration::from_secs(10)).expect("pg");
            let from = FleetStore::open(&db).expect("sqlite");
            let start = Instant::now();
            to.copy_from(&from, false).expect("copy");
            let copy = ms(start);
            let shared = tenement_fleet::bench::fleet_with(to, conf(), Vec::new(), Vec::new());
            let rereads: Vec<f64> = (0..3)
                .map(|_| {
                    let start = Instant::now();
                    shared.changed();
                    ms(start)
                })
                .collect();
            assert_eq!(shared.view().tenants.len(), TENANTS);
            println!("| ten fleet migrate-store of this fleet (one transaction) | {copy:.0} |");
            println!(
                "| store re-read + publish, PostgreSQL (Fleet::changed, median of 3) | {:.1} |",
                median(rereads)
            );
        }
    }
    println!();
    let _ = std::fs::remove_dir_all(&dir);
}
