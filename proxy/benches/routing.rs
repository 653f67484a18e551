//! Routing micro-benchmarks: host lookup in the arc-swapped [`Table`] at 10, 10k and 100k hosts
//! against the naive baseline (`RwLock<HashMap>`), alone and with concurrent readers while a
//! writer swaps/updates; the table rebuild; weighted choice against a naive per-request scan.
//!
//! `cargo bench -p tenement-proxy --bench routing` prints Markdown (embedded in BENCHMARKS.md by
//! `make bench`). Under `cargo test` (no `--bench` argument) it runs a few milliseconds of each,
//! as a smoke test.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tenement_conf::{Addr, Route};
use tenement_proxy::{
    Availability, Backend, InstanceStats, ProcessOpts, Router, Table, TableBuilder, Target,
};

const DOMAIN: &str = "bench.test";
/// Each reader cycles through this many pre-generated host names.
const QUERIES: usize = 4096;
/// Hosts of the "hot set" access pattern (a few busy tenants among many).
const HOT: usize = 64;
/// Pause between two writes while readers run.
const WRITE_EVERY: Duration = Duration::from_millis(1);
/// Reader threads in the concurrent runs.
const READERS: usize = 2;

struct Mode {
    /// How long one measurement runs.
    measure: Duration,
    sizes: &'static [usize],
    /// Table rebuilds timed per size (the median is printed).
    rebuilds: usize,
}

fn opts(name: &str) -> Arc<ProcessOpts> {
    Arc::new(ProcessOpts {
        name: name.into(),
        request_timeout: Duration::from_secs(30),
        max_body: 10_000_000,
        metrics: None,
        plugins: None,
        upstream_http2: false,
    })
}

fn backend(opts: &Arc<ProcessOpts>, i: usize, weight: u32) -> Arc<Backend> {
    let port = u16::try_from(20_000 + i % 40_000).expect("port below 65536");
    Arc::new(Backend::new(
        opts.clone(),
        &i.to_string(),
        Some(Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))),
        weight,
        Availability::Up { healthy: true },
        Arc::new(InstanceStats::default()),
    ))
}

fn tenant(i: usize) -> String {
    format!("tenant{i}.customers.example")
}

/// `hosts` tenant hosts, each a `[routes]` entry (prefix `/`) to process "api", like a fleet of
/// tenant domains (in ten they come from the config, made once).
fn tenant_routes(hosts: usize) -> Arc<[Route]> {
    (0..hosts)
        .map(|i| Route {
            host: tenant(i),
            prefix: "/".into(),
            process: "api".into(),
            instance: None,
            strip_prefix: false,
        })
        .collect()
}

/// A table with these routes to process "api" (two instances). `weight` lets two tables differ.
fn build_table(routes: &Arc<[Route]>, weight: u32) -> Table {
    builder(routes, weight).build()
}

fn builder(routes: &Arc<[Route]>, weight: u32) -> TableBuilder {
    let api = opts("api");
    let mut b = TableBuilder::new(DOMAIN);
    b.process(
        api.clone(),
        vec![backend(&api, 1, weight), backend(&api, 2, 100)],
    );
    b.routes(routes.clone());
    b
}

fn api_target(table: &Table) -> Target {
    table
        .pool("api")
        .map(|p| Target::Pool(p.clone()))
        .expect("the table has the api pool")
}

/// Host names to look up: uniformly over all hosts, or over a hot set spread across the table.
fn queries(hosts: usize, hot: bool, seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let range = if hot { hosts.min(HOT) } else { hosts };
    let step = (hosts / range).max(1);
    (0..QUERIES)
        .map(|_| tenant(rng.usize(0..range) * step))
        .collect()
}

/// One reader: look up every host of `q` over and over until `stop`; (lookups, elapsed).
fn read_loop(
    stop: &AtomicBool,
    mut one: impl FnMut(&str) -> bool,
    q: &[String],
) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for host in q {
            assert!(one(host), "{host} is routed");
        }
        n += q.len() as u64;
    }
    (n, start.elapsed())
}

fn ns_per(n: u64, t: Duration) -> f64 {
    t.as_nanos() as f64 / n.max(1) as f64
}

/// ns per lookup of one reader running alone for `d`.
fn alone(d: Duration, one: impl FnMut(&str) -> bool + Send, q: &[String]) -> f64 {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| read_loop(&stop, one, q));
        std::thread::sleep(d);
        stop.store(true, Ordering::Relaxed);
        let (n, t) = reader.join().expect("reader thread");
        ns_per(n, t)
    })
}

/// Mean ns per lookup of one reader per query list while a writer calls `write` every
/// `WRITE_EVERY`; and the writes done per second.
fn contended<F, W>(d: Duration, one: F, mut write: W, qs: &[Vec<String>]) -> (f64, f64)
where
    F: Fn(&str) -> bool + Sync,
    W: FnMut(usize) + Send,
{
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = qs
            .iter()
            .map(|q| {
                let (stop, one) = (&stop, &one);
                s.spawn(move || read_loop(stop, one, q))
            })
            .collect();
        let writer = s.spawn(|| {
            let start = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                write(i);
                i += 1;
                std::thread::sleep(WRITE_EVERY);
            }
            i as f64 / start.elapsed().as_secs_f64()
        });
        std::thread::sleep(d);
        stop.store(true, Ordering::Relaxed);
        let per: Vec<f64> = readers
            .into_iter()
            .map(|h| {
                let (n, t) = h.join().expect("reader thread");
                ns_per(n, t)
            })
            .collect();
        let writes = writer.join().expect("writer thread");
        (per.iter().sum::<f64>() / per.len().max(1) as f64, writes)
    })
}

/// ns per call of `f`, called in batches until `d` has passed.
fn per_op(d: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        for _ in 0..1024 {
            f();
        }
        n += 1024;
    }
    ns_per(n, start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ratio_line(label: &str, col: &HashMap<(usize, bool), f64>, big: usize, small: usize) {
    let r = |hot: bool| match (col.get(&(big, hot)), col.get(&(small, hot))) {
        (Some(b), Some(s)) => format!("{:.2}x", b / s),
        _ => "n/a".into(),
    };
    println!(
        "- {label}: lookup at {big} hosts vs {small}: uniform {}, hot set {}",
        r(false),
        r(true)
    );
}

fn lookups(mode: &Mode) {
    println!("### Route lookup: Router (ArcSwap table) vs RwLock<HashMap>\n");
    println!(
        "ns per lookup (load the table + hash probe on the host + clone the target, as a request \
         does). `uniform`: {QUERIES} hosts drawn uniformly from all; `hot`: {HOT} hosts spread over \
         the table. Contended: {READERS} readers while a writer, every {WRITE_EVERY:?}, stores a \
         whole prebuilt table (ArcSwap) or inserts one entry under the write lock (RwLock).\n"
    );
    println!(
        "| hosts | access | Router, 1 reader | RwLock<HashMap>, 1 reader | ArcSwap, {READERS} readers + writer | RwLock, {READERS} readers + writer | writes/s (ArcSwap / RwLock) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let mut router_alone = HashMap::new();
    let mut router_contended = HashMap::new();
    let mut locked_alone = HashMap::new();
    for &hosts in mode.sizes {
        let routes = tenant_routes(hosts);
        let router = Router::new(build_table(&routes, 100));
        let a = Arc::new(build_table(&routes, 100));
        let b = Arc::new(build_table(&routes, 50));
        let swap = ArcSwap::new(a.clone());
        let target = api_target(&a);
        let locked: RwLock<HashMap<Box<str>, Target>> = RwLock::new(
            (0..hosts)
                .map(|i| (tenant(i).into_boxed_str(), target.clone()))
                .collect(),
        );
        for hot in [false, true] {
            let q = queries(hosts, hot, 1);
            let qs: Vec<Vec<String>> = (0..READERS as u64)
                .map(|r| queries(hosts, hot, 100 + r))
                .collect();
            let via_router = |h: &str| {
                let table = router.load();
                let t = table.lookup(h, "/").map(|r| r.target.clone());
                black_box(t).is_some()
            };
            let via_swap = |h: &str| {
                let table = swap.load();
                let t = table.lookup(h, "/").map(|r| r.target.clone());
                black_box(t).is_some()
            };
            let via_lock = |h: &str| {
                let map = locked.read().expect("lock not poisoned");
                let t = map.get(h).cloned();
                drop(map);
                black_box(t).is_some()
            };
            let r1 = alone(mode.measure, via_router, &q);
            let l1 = alone(mode.measure, via_lock, &q);
            let (rc, rw) = contended(
                mode.measure,
                via_swap,
                |i| swap.store(if i % 2 == 0 { b.clone() } else { a.clone() }),
                &qs,
            );
            let (lc, lw) = contended(
                mode.measure,
                via_lock,
                |i| {
                    let mut map = locked.write().expect("lock not poisoned");
                    map.insert(tenant(i % hosts).into_boxed_str(), target.clone());
                },
                &qs,
            );
            router_alone.insert((hosts, hot), r1);
            router_contended.insert((hosts, hot), rc);
            locked_alone.insert((hosts, hot), l1);
            let access = if hot { "hot" } else { "uniform" };
            println!(
                "| {hosts} | {access} | {r1:.1} | {l1:.1} | {rc:.1} | {lc:.1} | {rw:.0} / {lw:.0} |"
            );
        }
    }
    println!();
    if let (Some(&small), Some(&big)) = (mode.sizes.first(), mode.sizes.last()) {
        ratio_line("Router, 1 reader", &router_alone, big, small);
        ratio_line("ArcSwap, contended", &router_contended, big, small);
        ratio_line("RwLock<HashMap>, 1 reader", &locked_alone, big, small);
    }
    println!();
}

fn rebuild(mode: &Mode) {
    println!("### Table rebuild\n");
    println!(
        "Build a whole table with `TableBuilder` from routes the config already holds and \
         `Router::publish` it (the old table is dropped), median of {} runs. *Same shape*: what \
         the table publisher does for a weight, health or address change (`build_on` the live \
         table: the host index is shared, the targets made again). *Full index*: a table built \
         from nothing (at start, or when routes or tenants change); a change of instances \
         patches the live index instead (`cargo bench --bench tables`). Target (issue 16): \
         100k hosts <= 20 ms.\n",
        mode.rebuilds
    );
    println!("| hosts | same shape (ms) | full index (ms) |");
    println!("|---:|---:|---:|");
    for &hosts in mode.sizes {
        let routes = tenant_routes(hosts);
        let router = Router::new(build_table(&routes, 100));
        let same: Vec<f64> = (0..mode.rebuilds)
            .map(|i| {
                let start = Instant::now();
                let weight = if i % 2 == 0 { 50 } else { 100 };
                let next = builder(&routes, weight).build_on(Some(&router.load()));
                router.publish(next);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let new: Vec<f64> = (0..mode.rebuilds)
            .map(|i| {
                let start = Instant::now();
                let weight = if i % 2 == 0 { 50 } else { 100 };
                router.publish(build_table(&routes, weight));
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!("| {hosts} | {:.2} | {:.2} |", median(same), median(new));
    }
    println!();
}

/// The naive weighted choice: collect the eligible backends and sum their weights on every
/// request, then scan.
fn naive_choose(backends: &[Arc<Backend>]) -> Option<usize> {
    let eligible: Vec<(usize, u64)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.eligible())
        .map(|(i, b)| (i, u64::from(b.weight)))
        .collect();
    let total: u64 = eligible.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(0..total);
    for (i, w) in eligible {
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

fn choice(mode: &Mode) {
    println!("### Weighted choice\n");
    println!(
        "ns per choice among a process's instances (weights 10..100): `Pool::choose` over the \
         cumulative weights built with the table; the retry path (instance 0 already tried); the \
         naive baseline filters and sums the weights on every request.\n"
    );
    println!("| instances | Pool::choose | retry path | naive per-request scan |");
    println!("|---:|---:|---:|---:|");
    for n in [1usize, 2, 4, 16, 64] {
        let api = opts("api");
        let backends = (0..n)
            .map(|i| backend(&api, i, 10 + (i as u32 * 37) % 91))
            .collect();
        let mut tb = TableBuilder::new(DOMAIN);
        tb.process(api, backends);
        let table = tb.build();
        let pool = table.pool("api").expect("the table has the api pool");
        let fast = per_op(mode.measure, || {
            black_box(pool.choose(black_box(0)).map(|(i, _)| i));
        });
        let retry = per_op(mode.measure, || {
            black_box(pool.choose(black_box(1)).map(|(i, _)| i));
        });
        let naive = per_op(mode.measure, || {
            black_box(naive_choose(black_box(&pool.backends)));
        });
        println!("| {n} | {fast:.1} | {retry:.1} | {naive:.1} |");
    }
    println!();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then a quick smoke run.
    let mode = if std::env::args().any(|a| a == "--bench") {
        Mode {
            measure: Duration::from_millis(600),
            sizes: &[10, 10_000, 100_000],
            rebuilds: 5,
        }
    } else {
        Mode {
            measure: Duration::from_millis(5),
            sizes: &[10, 1_000],
            rebuilds: 1,
        }
    };
    lookups(&mode);
    rebuild(&mode);
    choice(&mode);
}
