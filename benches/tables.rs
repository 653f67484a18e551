//! The table publisher's build (issue 16): `build_table` from a supervisor view at 10k
//! instances and from a config with 100k `[routes]` hosts, timed the way the publisher runs it
//! (counters synced, table built, published, the old one dropped). `cargo bench --bench tables`;
//! `make bench` appends it to BENCHMARKS.md's micro-benchmarks.
//!
//! It includes the binary's `src/server/compose.rs` by path: the builder is a pure function of
//! its inputs, so the bench calls the very code `ten serve` runs, with no server around it.
//! Status changes cause no build at all: the supervisor publishes no view for them (its unit
//! test `status_changes_publish_nothing` asserts it), so there is nothing to time.

#[allow(dead_code)]
#[path = "../src/server/compose.rs"]
mod compose;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tenement_conf::{Addr, Config, InstanceName, Route};
use tenement_proxy::Router;
use tenement_supervisor::{Kind, Routed, RoutingView, State};

use compose::{build_table, Compiled, StatsCache};

/// The allocator `ten` runs with (src/main.rs), so the build costs what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn config(processes: usize) -> Config {
    let mut text = String::from("[settings]\ndomain = \"bench.test\"\n");
    for p in 0..processes {
        text.push_str(&format!("[process.p{p}]\ncommand = \"x\"\n"));
    }
    Config::parse(&text, "tenement.toml", Path::new("/tmp")).expect("bench config parses")
}

fn view(processes: usize, per_process: usize, weight: u32, generation: u64) -> RoutingView {
    let mut instances = Vec::with_capacity(processes * per_process);
    for p in 0..processes {
        for i in 0..per_process {
            let port = u16::try_from(20_000 + (p * per_process + i) % 40_000).unwrap_or(20_000);
            instances.push(Arc::new(Routed {
                name: InstanceName {
                    process: format!("p{p}"),
                    id: format!("user{i}"),
                },
                kind: Kind::Spawned,
                state: State::Healthy,
                weight,
                addr: Some(Addr::Tcp(([127, 0, 0, 1], port).into())),
                idle: false,
            }));
        }
    }
    RoutingView {
        generation,
        instances,
    }
}

/// Median ms of: sync the counters, build on the live table (as the publisher does), publish
/// (dropping the previous table). The views alternate.
fn time(compiled: &Compiled, views: &[RoutingView]) -> f64 {
    let mut stats = StatsCache::new(None);
    stats.sync(&views[0]);
    let router = Router::new(build_table(compiled, &views[0], None, &stats, None));
    let times = (0..RUNS)
        .map(|i| {
            let v = &views[(i + 1) % views.len()];
            let start = Instant::now();
            stats.sync(v);
            let live = router.load();
            let next = build_table(compiled, v, None, &stats, Some(&live));
            drop(live);
            router.publish(next);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(times)
}

/// `base` with its first instance's weight changed (a new entry; the others shared, as the
/// supervisor's views share them).
fn one_weight(base: &RoutingView) -> RoutingView {
    let mut v = base.clone();
    if let Some(first) = v.instances.first_mut() {
        let mut r = (**first).clone();
        r.weight = if r.weight == 100 { 50 } else { 100 };
        *first = Arc::new(r);
    }
    v.generation += 1;
    v
}

/// `base` without its last instance.
fn one_gone(base: &RoutingView) -> RoutingView {
    let mut v = base.clone();
    v.instances.pop();
    v.generation += 1;
    v
}

fn main() {
    println!("### Table publisher: build_table (issue 16)\n");
    println!(
        "What `ten serve` does on each routing change: counters synced with the view, the \
         table built by `build_table` from the config, the supervisor's view and the fleet's, \
         published, the old table dropped. Median of {RUNS} runs, the views alternating. A \
         change that adds or removes no host reuses the live table's host index; one that \
         does patches the instance hosts. Status changes (restarts, last error, storage \
         size) build nothing.\n"
    );
    println!("| case | hosts | change | ms | target |");
    println!("|---|---:|---|---:|---|");
    // 10k instances: 100 processes of 100 per-customer instances.
    let compiled = Compiled::new(Arc::new(config(100)), None).expect("compiles");
    let base = view(100, 100, 100, 1);
    let rows = [
        ("every weight", [base.clone(), view(100, 100, 50, 2)]),
        ("one weight", [base.clone(), one_weight(&base)]),
        ("one instance gone / back", [base.clone(), one_gone(&base)]),
    ];
    for (change, views) in rows {
        let ms = time(&compiled, &views);
        println!("| 10,000 instances (100 processes) | 10,101 | {change} | {ms:.2} | <= 10 ms |");
    }
    // 100k hosts: [routes] entries (tenant domains) to one process of two instances.
    let mut c = config(1);
    c.routes = (0..100_000)
        .map(|i| Route {
            host: format!("tenant{i}.customers.example"),
            prefix: "/".into(),
            process: "p0".into(),
            instance: None,
            strip_prefix: false,
        })
        .collect();
    let compiled = Compiled::new(Arc::new(c), None).expect("compiles");
    let base = view(1, 3, 100, 1);
    let rows = [
        ("one weight", [base.clone(), one_weight(&base)]),
        ("one instance gone / back", [base.clone(), one_gone(&base)]),
    ];
    for (change, views) in rows {
        let ms = time(&compiled, &views);
        println!("| 100,000 [routes] hosts | 100,005 | {change} | {ms:.2} | <= 20 ms |");
    }
    println!();
}
