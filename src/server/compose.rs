//! From views to the routing table: ONE pure builder and ONE publisher.
//!
//! [`build_table`] is a pure function of the config (compiled once into [`Compiled`]: the
//! per-process options and plugin chains every table shares), the supervisor's
//! [`RoutingView`], the fleet's view and the live counters ([`StatsCache`]): no I/O, no DNS, no
//! locks. The [`Publisher`] is its only caller: one task that waits for either view to change,
//! builds the next table from the latest of both, swaps it in, and acknowledges the
//! supervisor's generation. That acknowledgement is what a changing call waits for
//! ([`tenement_supervisor::Supervisor::settle`]), so an API call still answers only once the
//! table that contains its change is live.
//!
//! Only routing changes reach it: the supervisor publishes a view when an address, a weight, a
//! state or the idle flag changes, never for status fields (restarts, last error, storage).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use tenement_conf::{Config, InstanceName, Route};
use tenement_fleet::{Fleet, FleetView, Served};
use tenement_proxy::metrics::Metrics;
use tenement_proxy::plugins::Chain;
use tenement_proxy::{
    Availability, Backend, InstanceStats, ProcessMetrics, ProcessOpts, Remote, Router, Table,
    TableBuilder, TenantTarget, TenantTargets, TrustedProxies,
};
use tenement_supervisor::{Routed, RoutingView, State, Supervisor, TrafficProbe};

/// The config as tables need it, built once: per-process options and plugin chains (shared by
/// every table, so rate-limit buckets and auth caches survive swaps).
pub struct Compiled {
    pub config: Arc<Config>,
    opts: HashMap<String, Arc<ProcessOpts>>,
    /// `[routes]`, shared by every table (a build with the same shape reuses the host index).
    routes: Arc<[Route]>,
    /// `[settings] trusted_proxies`, shared by every table.
    trusted: Arc<TrustedProxies>,
}

impl Compiled {
    /// `metrics`: the hot-path registry, or None when `[settings] metrics = false`.
    pub fn new(config: Arc<Config>, metrics: Option<&Arc<Metrics>>) -> Result<Self, String> {
        Self::next(config, metrics, None)
    }

    /// Compile `config`, keeping from `prev` the options (and so the plugin state: rate-limit
    /// buckets, auth caches) of every process whose table part did not change (a reload).
    pub fn next(
        config: Arc<Config>,
        metrics: Option<&Arc<Metrics>>,
        prev: Option<&Compiled>,
    ) -> Result<Self, String> {
        let mut opts = HashMap::new();
        for p in &config.processes {
            let same = prev.and_then(|c| {
                let old = c.config.process(&p.name)?;
                let same = old.plugins == p.plugins
                    && old.request_timeout == p.request_timeout
                    && old.max_body == p.max_body;
                same.then(|| c.opts.get(&p.name).cloned()).flatten()
            });
            if let Some(o) = same {
                opts.insert(p.name.clone(), o);
                continue;
            }
            let plugins =
                Chain::build(&p.plugins).map_err(|e| format!("process.{}.{e}", p.name))?;
            let o = ProcessOpts {
                name: p.name.as_str().into(),
                request_timeout: p.request_timeout,
                max_body: p.max_body,
                metrics: metrics.map(|m| ProcessMetrics {
                    in_flight: m.process_in_flight(&p.name),
                    unrouted: m.instance(&p.name, "-"),
                }),
                plugins,
                upstream_http2: p.upstream_http2,
            };
            opts.insert(p.name.clone(), Arc::new(o));
        }
        let routes = config.routes.clone();
        let trusted = TrustedProxies::new(&config.settings.trusted_proxies)
            .map_err(|e| format!("settings.trusted_proxies: {e}"))?;
        Ok(Compiled {
            config,
            opts,
            routes,
            trusted: Arc::new(trusted),
        })
    }
}

/// The fleet as tables need it: its view (servers with the addresses the fleet resolved) and
/// whether failover is on.
pub struct FleetInput<'a> {
    pub view: &'a Arc<FleetView>,
    pub failover: bool,
}

/// The fleet tenants' targets, kept in line with each fleet view: the part of the table the
/// fleet owns ([`TenantTargets`], shared by every table built from it).
///
/// [`FleetTargets::sync`] re-resolves only the tenants a change touches: when the view has the
/// same tenants (one shared list) and the same failover setting, the tenants homed on or
/// placed on a server whose identity, status or address changed, and those whose placement
/// changed; their targets replace the old ones copy-on-write ([`TenantTargets::with`]). A new
/// tenant list (a write, a store re-read), a failover switch, or the fleet going from no server
/// up to some (or back) resolves every tenant.
#[derive(Default)]
pub struct FleetTargets {
    /// The view, failover setting and own domain the targets were resolved from.
    from: Option<(Arc<FleetView>, bool, String)>,
    part: TenantTargets,
}

impl FleetTargets {
    /// The targets for `input`, resolved from scratch (tests, benches/fleet.rs).
    #[allow(dead_code)]
    pub fn new(own: &str, input: &FleetInput<'_>) -> Self {
        let mut t = FleetTargets::default();
        t.sync(own, input);
        t
    }

    /// Bring the targets in line with `input` (see [`FleetTargets`]): how many tenants were
    /// resolved again.
    pub fn sync(&mut self, own: &str, input: &FleetInput<'_>) -> usize {
        let view = input.view;
        let same = self.from.as_ref().filter(|(prev, failover, from_own)| {
            Arc::ptr_eq(&prev.tenants, &view.tenants)
                && *failover == input.failover
                && from_own == own
                && (prev.servers_up() > 0) == (view.servers_up() > 0)
        });
        let Some((prev, _, _)) = same else {
            let list = view
                .tenants
                .iter()
                .map(|t| (t.domain.clone(), resolve(own, input, t)))
                .collect();
            self.part = TenantTargets::new(list);
            self.from = Some((view.clone(), input.failover, own.to_string()));
            return view.tenants.len();
        };
        if Arc::ptr_eq(prev, view) || prev.routing == view.routing {
            self.from = Some((view.clone(), input.failover, own.to_string()));
            return 0;
        }
        let touched = touched(prev, view);
        let changes: Vec<(usize, TenantTarget)> = touched
            .iter()
            .filter_map(|&i| Some((i, resolve(own, input, view.tenants.get(i)?))))
            .collect();
        self.part = self.part.with(changes);
        self.from = Some((view.clone(), input.failover, own.to_string()));
        touched.len()
    }

    /// The fleet's part of the next table.
    pub fn part(&self) -> &TenantTargets {
        &self.part
    }
}

/// The positions of the tenants whose target may differ between `prev` and `view` (same
/// tenants): homed or placed on a server that changed (identity, status or address), or whose
/// placement changed. O(servers + placements + the tenants touched).
fn touched(prev: &FleetView, view: &FleetView) -> Vec<usize> {
    let routes_same = |a: &tenement_fleet::ServerState, b: &tenement_fleet::ServerState| {
        a.status == b.status && a.resolved == b.resolved && a.server == b.server
    };
    let mut changed: HashSet<&str, Fast> = HashSet::default();
    for s in &view.servers {
        if !prev.server(&s.server.id).is_some_and(|p| routes_same(p, s)) {
            changed.insert(&s.server.id);
        }
    }
    for s in &prev.servers {
        if view.server(&s.server.id).is_none() {
            changed.insert(&s.server.id);
        }
    }
    let mut out: Vec<usize> = Vec::new();
    for id in &changed {
        out.extend_from_slice(view.homed_on(id));
    }
    for (placements, other) in [
        (&prev.placements, &view.placements),
        (&view.placements, &prev.placements),
    ] {
        for (tenant, p) in placements {
            if changed.contains(p.server.as_str()) || other.get(tenant) != Some(p) {
                out.extend(view.tenant_position(tenant));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A fast hasher for maps keyed by instance names (built from our own config and views).
type Fast = foldhash::fast::RandomState;

/// Every instance's live counters (and metric handles), kept across table swaps.
pub type Stats = HashMap<InstanceName, Arc<InstanceStats>, Fast>;

/// The counters, brought in line with each view before a build: new instances get theirs,
/// gone ones lose theirs (and their metric series). O(instances).
pub struct StatsCache {
    map: Arc<Stats>,
    metrics: Option<Arc<Metrics>>,
}

impl StatsCache {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        StatsCache {
            map: Arc::default(),
            metrics,
        }
    }

    /// Add counters for new instances and drop those of instances no longer in `view`.
    pub fn sync(&mut self, view: &RoutingView) {
        let live: HashSet<&InstanceName, Fast> = view.instances.iter().map(|r| &r.name).collect();
        let stale = self.map.keys().any(|n| !live.contains(n));
        let missing = view
            .instances
            .iter()
            .any(|r| !self.map.contains_key(&r.name));
        if !stale && !missing {
            return;
        }
        let map = Arc::make_mut(&mut self.map);
        map.retain(|name, s| {
            let keep = live.contains(name);
            if !keep {
                if let Some(m) = &s.metrics {
                    m.remove();
                }
            }
            keep
        });
        for r in &view.instances {
            if !map.contains_key(&r.name) {
                let m = self
                    .metrics
                    .as_ref()
                    .map(|m| m.instance(&r.name.process, &r.name.id));
                map.insert(r.name.clone(), Arc::new(InstanceStats::with_metrics(m)));
            }
        }
    }

    pub fn get(&self, name: &InstanceName) -> Option<&Arc<InstanceStats>> {
        self.map.get(name)
    }

    pub fn snapshot(&self) -> Arc<Stats> {
        self.map.clone()
    }
}

/// How routing treats an instance in `state`.
fn availability(r: &Routed) -> Availability {
    match r.state {
        State::Healthy => Availability::Up { healthy: true },
        State::Unhealthy => Availability::Up { healthy: false },
        State::Stopped | State::Draining | State::Starting if r.idle => Availability::Idle,
        State::Starting | State::Draining | State::Stopped | State::Failed => Availability::Down,
    }
}

/// The routing table for these inputs. Pure: no I/O, no DNS, no locks. Instances without
/// counters in `stats` get fresh ones (call [`StatsCache::sync`] first to keep them). `prev`,
/// the live table, lends its host index when the shape (hosts, instance ids, tenants, routes)
/// is the same: a weight, health or address change then costs O(instances), not O(hosts).
pub fn build_table(
    compiled: &Compiled,
    view: &RoutingView,
    fleet: Option<&TenantTargets>,
    stats: &StatsCache,
    prev: Option<&Table>,
) -> Table {
    let config = &compiled.config;
    let mut b = TableBuilder::new(&config.settings.domain);
    // One pass over the view, grouped by process in view order.
    let mut by_process: HashMap<&str, Vec<&Arc<Routed>>, Fast> = HashMap::default();
    for r in &view.instances {
        by_process
            .entry(r.name.process.as_str())
            .or_default()
            .push(r);
    }
    for p in &config.processes {
        let Some(opts) = compiled.opts.get(&p.name) else {
            continue;
        };
        let backends = by_process
            .get(p.name.as_str())
            .map(|list| {
                list.iter()
                    .map(|r| {
                        let stats = stats.get(&r.name).cloned().unwrap_or_default();
                        Arc::new(Backend::new(
                            opts.clone(),
                            &r.name.id,
                            r.addr.clone(),
                            r.weight,
                            availability(r),
                            stats,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        b.process(opts.clone(), backends);
    }
    if let Some(f) = fleet {
        b.tenants(f.clone());
    }
    b.routes(compiled.routes.clone());
    b.trusted(compiled.trusted.clone());
    b.build_on(prev)
}

/// Where a tenant's domain goes now: its home, the server it is placed on, "wait: being
/// placed", or a 503 saying why.
fn resolve(own: &str, f: &FleetInput<'_>, t: &tenement_fleet::Tenant) -> TenantTarget {
    match f.view.serve(t, f.failover) {
        Served::Placing => TenantTarget::Remote(Box::new(Remote::placing(&t.id))),
        Served::Unavailable(why) => {
            TenantTarget::Remote(Box::new(Remote::unavailable_because(&t.id, &why)))
        }
        Served::At(s) if s.server.domain == own => TenantTarget::Local {
            process: t.process.clone(),
            instance: t.instance.clone(),
        },
        Served::At(s) => match &s.resolved {
            Some(a) => TenantTarget::Remote(Box::new(Remote::to(
                &t.id,
                &s.server.id,
                tenement_fleet::tenant_host(t, &s.server),
                a.addr,
                a.tls,
                &a.host,
            ))),
            None => TenantTarget::Remote(Box::new(Remote::unavailable(&t.id))),
        },
    }
}

/// Instances + routes + tenants from which a build runs through `blocking` (BENCHMARKS.md:
/// 10k instances build in a few milliseconds).
const BLOCKING_BUILD: usize = 2_000;

/// The one place tables are built and swapped in.
pub struct Publisher {
    /// Replaced whole by a reload ([`Publisher::reconfigure`]).
    compiled: ArcSwap<Compiled>,
    /// The reload generation asked for, and the one whose table is live.
    config_tx: watch::Sender<u64>,
    config_live: watch::Sender<u64>,
    router: Arc<Router>,
    metrics: Option<Arc<Metrics>>,
    /// The counters of the live table, for the supervisor's drains and the API.
    stats: ArcSwap<Stats>,
    /// The generation of the fleet view the live table was built from.
    fleet_live: watch::Sender<u64>,
}

impl Publisher {
    pub fn new(config: Arc<Config>, metrics: Option<Arc<Metrics>>) -> Result<Arc<Self>, String> {
        let compiled = Compiled::new(config, metrics.as_ref())?;
        let router = Arc::new(Router::new(build_table(
            &compiled,
            &RoutingView::default(),
            None,
            &StatsCache::new(None),
            None,
        )));
        Ok(Arc::new(Publisher {
            compiled: ArcSwap::from_pointee(compiled),
            config_tx: watch::Sender::new(0),
            config_live: watch::Sender::new(0),
            router,
            metrics,
            stats: ArcSwap::default(),
            fleet_live: watch::Sender::new(0),
        }))
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// A reload: build the next tables from `config` (routes, domain, plugins, timeouts and
    /// body limits) and return once the first of them is live. Unchanged processes keep their
    /// plugin state. Err: a plugin that cannot be built (nothing changes).
    pub async fn reconfigure(&self, config: Arc<Config>) -> Result<(), String> {
        let next = Compiled::next(config, self.metrics.as_ref(), Some(&self.compiled.load()))?;
        self.compiled.store(Arc::new(next));
        let mut generation = 0;
        self.config_tx.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let mut live = self.config_live.subscribe();
        let _ = live.wait_for(|g| *g >= generation).await;
        Ok(())
    }

    /// An instance's live counters, if it has been in a table.
    pub fn stats(&self, name: &InstanceName) -> Option<Arc<InstanceStats>> {
        self.stats.load().get(name).cloned()
    }

    /// Wait until the live table was built from fleet view `generation` or a later one, so a
    /// fleet write answers once it routes (as supervisor calls do with their own views).
    pub async fn settle_fleet(&self, generation: u64) {
        let mut live = self.fleet_live.subscribe();
        let _ = live.wait_for(|g| *g >= generation).await;
    }

    /// Build a table whenever the supervisor's routing view or the fleet's view changes, from
    /// the latest of both; acknowledge each supervisor generation once its table is live. Runs
    /// as long as the runtime.
    /// `views` comes from [`Supervisor::follow`], called by the caller before it spawns this
    /// task, so no change is ever settled before the publisher follows.
    pub async fn run(
        self: Arc<Self>,
        supervisor: Supervisor,
        mut views: watch::Receiver<Arc<RoutingView>>,
        mut fleet: Option<(watch::Receiver<Arc<FleetView>>, bool)>,
    ) {
        // However this task ends (even by a panic in a build), nobody waits for it any more:
        // the last table stays live and callers go on.
        let _release = Release {
            supervisor: supervisor.clone(),
            publisher: self.clone(),
        };
        let mut cache = StatsCache::new(self.metrics.clone());
        let mut fleet_targets = FleetTargets::default();
        let mut fleet_view = None;
        let mut configs = self.config_tx.subscribe();
        // What the live table was built from: (supervisor view, config, fleet routing)
        // generations. A fleet publish that changes no route (a health tick's latencies) is
        // acknowledged without a rebuild.
        let mut built: Option<(u64, u64, Option<u64>)> = None;
        loop {
            let config_generation = *configs.borrow_and_update();
            let compiled = self.compiled.load_full();
            let view = views.borrow_and_update().clone();
            if let Some((rx, failover)) = fleet.as_mut() {
                fleet_view = Some((rx.borrow_and_update().clone(), *failover));
            }
            let key = (
                view.generation,
                config_generation,
                fleet_view.as_ref().map(|(fv, _)| fv.routing),
            );
            if built == Some(key) {
                if let Some((fv, _)) = &fleet_view {
                    self.fleet_live.send_replace(fv.generation);
                }
            } else {
                built = Some(key);
                self.build_and_publish(
                    &compiled,
                    &view,
                    fleet_view.as_ref(),
                    &mut cache,
                    &mut fleet_targets,
                );
                supervisor.acknowledge(view.generation);
                if let Some((fv, _)) = &fleet_view {
                    self.fleet_live.send_replace(fv.generation);
                }
                self.config_live.send_replace(config_generation);
            }
            let fleet_closed = match fleet.as_mut() {
                Some((rx, _)) => tokio::select! {
                    r = views.changed() => if r.is_err() { return } else { false },
                    r = rx.changed() => r.is_err(),
                    _ = configs.changed() => false,
                },
                None => tokio::select! {
                    r = views.changed() => if r.is_err() { return } else { false },
                    _ = configs.changed() => false,
                },
            };
            if fleet_closed {
                // The fleet stopped (shutdown): keep routing on its last view; fleet writes no
                // longer wait.
                fleet = None;
                self.fleet_live.send_replace(u64::MAX);
            }
        }
    }
}

impl Publisher {
    /// Builds the table from the supervisor's view, the config and the fleet's view, and
    /// publishes it with fresh counters.
    fn build_and_publish(
        &self,
        compiled: &Compiled,
        view: &RoutingView,
        fleet_view: Option<&(Arc<FleetView>, bool)>,
        cache: &mut StatsCache,
        fleet_targets: &mut FleetTargets,
    ) {
        let mut build = || {
            cache.sync(view);
            let fleet = fleet_view.map(|(fv, failover)| {
                let input = FleetInput {
                    view: fv,
                    failover: *failover,
                };
                fleet_targets.sync(&compiled.config.settings.domain, &input);
                fleet_targets.part()
            });
            let live = self.router.load();
            build_table(compiled, view, fleet, cache, Some(&live))
        };
        // A big build hands this worker's other tasks (requests) to another thread while it
        // runs; a small one (well under a millisecond) is cheaper than that hand-off.
        let size = view.instances.len()
            + compiled.routes.len()
            + fleet_view.map_or(0, |(fv, _)| fv.tenants.len());
        let table = if size >= BLOCKING_BUILD {
            tenement_supervisor::blocking(build)
        } else {
            build()
        };
        self.router.publish(table);
        self.stats.store(cache.snapshot());
    }
}

/// Releases every waiter of the publisher when its task ends.
struct Release {
    supervisor: Supervisor,
    publisher: Arc<Publisher>,
}

impl Drop for Release {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the table publisher panicked: routing stays on the last table");
        }
        self.supervisor.acknowledge(u64::MAX);
        self.publisher.fleet_live.send_replace(u64::MAX);
        self.publisher.config_live.send_replace(u64::MAX);
    }
}

impl TrafficProbe for Publisher {
    fn in_flight(&self, name: &InstanceName) -> u64 {
        self.stats.load().get(name).map_or(0, |s| s.in_flight())
    }

    fn last_request(&self, name: &InstanceName) -> Option<Instant> {
        let since_epoch = self.stats.load().get(name)?.last_request()?;
        Some(self.router.epoch() + since_epoch)
    }
}

/// Wakes idle instances for the proxy, and waits for fleet tenants being placed; returns once
/// the table routes to them.
pub struct Wake {
    pub supervisor: Supervisor,
    /// The fleet and the publisher whose table must show its placement (with `[fleet]`).
    pub fleet: Option<(Fleet, Arc<Publisher>)>,
}

#[async_trait::async_trait]
impl tenement_proxy::management::Waker for Wake {
    async fn wake(&self, process: &str, id: &str) -> Result<(), String> {
        let name = InstanceName {
            process: process.into(),
            id: id.into(),
        };
        // wake() returns once the table built from the view that shows it healthy is live.
        self.supervisor.wake(&name).await.map_err(|e| e.to_string())
    }

    async fn place(&self, tenant: &str) -> Result<(), String> {
        let Some((fleet, publisher)) = &self.fleet else {
            return Err("no [fleet] section".into());
        };
        let generation = fleet.wait_placed(tenant).await?;
        // The view routes it: wait for the table built from that view.
        publisher.settle_fleet(generation).await;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "compose/tests.rs"] // explicit, so benches/tables.rs can include this file
mod tests;
