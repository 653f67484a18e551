//! The composer: the ONE place that turns the config, the supervisor's view and the external
//! upstreams into a routing table and swaps it in. Builds are serialized and always use the
//! latest view, so an older table can never be published after a newer one. It also keeps each
//! instance's live counters (and metric handles) across table swaps.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use tenement_conf::{Config, InstanceName};
use tenement_fleet::FleetView;
use tenement_proxy::metrics::Metrics;
use tenement_proxy::plugins::Chain;
use tenement_proxy::{
    Availability, Backend, InstanceStats, ProcessMetrics, ProcessOpts, Remote, RouteSpec, Router,
    Table, TableBuilder, TenantTarget, UpstreamAddr,
};
use tenement_supervisor::{Addr, State, StateStore, TrafficProbe, View};

use crate::server::externals::Externals;

/// A fleet server's address, whether it speaks TLS, and its host (for SNI).
type ServerAddr = (SocketAddr, bool, String);

pub struct Composer {
    config: Arc<Config>,
    router: Arc<Router>,
    opts: HashMap<String, Arc<ProcessOpts>>,
    externals: Externals,
    /// Where external weights persist (its own connection to tenement.db).
    store: Option<StateStore>,
    views: OnceLock<watch::Receiver<Arc<View>>>,
    /// The fleet's view and its failover setting, when `[fleet]` is on.
    fleet: OnceLock<(watch::Receiver<Arc<FleetView>>, bool)>,
    /// Server URLs resolved once: (address, TLS, host for SNI).
    resolved: Mutex<HashMap<String, Option<ServerAddr>>>,
    build: Mutex<()>,
    stats: Mutex<HashMap<InstanceName, Arc<InstanceStats>>>,
    metrics: Option<Arc<Metrics>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Composer {
    /// `metrics`: the hot-path registry, or None when `[settings] metrics = false`. Plugin
    /// chains are built here, once: every table shares them (rate-limit buckets, auth caches).
    pub fn new(
        config: Arc<Config>,
        metrics: Option<Arc<Metrics>>,
        store: Option<StateStore>,
    ) -> Result<Arc<Self>, String> {
        let mut opts = HashMap::new();
        for p in &config.processes {
            let plugins =
                Chain::build(&p.plugins).map_err(|e| format!("process.{}.{e}", p.name))?;
            let o = ProcessOpts {
                name: p.name.as_str().into(),
                request_timeout: p.request_timeout,
                max_body: p.max_body,
                metrics: metrics.as_ref().map(|m| ProcessMetrics {
                    in_flight: m.process_in_flight(&p.name),
                    unrouted: m.instance(&p.name, "-"),
                }),
                plugins,
            };
            opts.insert(p.name.clone(), Arc::new(o));
        }
        let me = Composer {
            externals: Externals::new(&config, store.as_ref()),
            router: Arc::new(Router::new(Table::default())),
            config,
            opts,
            store,
            views: OnceLock::new(),
            fleet: OnceLock::new(),
            resolved: Mutex::default(),
            build: Mutex::new(()),
            stats: Mutex::default(),
            metrics,
        };
        me.rebuild();
        Ok(Arc::new(me))
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Follow the supervisor's views from now on.
    pub fn attach(&self, views: watch::Receiver<Arc<View>>) {
        let _ = self.views.set(views);
        self.rebuild();
    }

    /// Route fleet tenants from now on, rebuilding whenever the fleet view changes.
    pub fn attach_fleet(self: &Arc<Self>, fleet: &tenement_fleet::Fleet) {
        let rx = fleet.subscribe();
        let _ = self.fleet.set((rx.clone(), fleet.conf().failover));
        self.rebuild();
        let me = self.clone();
        let mut rx = rx;
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                rx.borrow_and_update();
                me.rebuild();
            }
        });
    }

    /// `http(s)://host[:port]` -> its first address (resolved once per URL).
    fn resolve_url(&self, url: &str) -> Option<ServerAddr> {
        let mut cache = lock(&self.resolved);
        cache
            .entry(url.to_string())
            .or_insert_with(|| {
                let uri: http::Uri = url.parse().ok()?;
                let tls = uri.scheme_str() == Some("https");
                let host = uri
                    .host()?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
                let addr = (host.as_str(), port).to_socket_addrs().ok()?.next();
                if addr.is_none() {
                    tracing::error!(%url, "cannot resolve fleet server address");
                }
                Some((addr?, tls, host))
            })
            .clone()
    }

    /// Where each tenant's domain goes now.
    fn tenant_targets(&self) -> Vec<(String, TenantTarget)> {
        let Some((rx, failover)) = self.fleet.get() else {
            return Vec::new();
        };
        let fleet = rx.borrow().clone();
        let own = &self.config.settings.domain;
        fleet
            .tenants
            .iter()
            .map(|t| {
                let target = match fleet.target(t, *failover) {
                    None => TenantTarget::Remote(Box::new(Remote::unavailable(&t.id))),
                    Some(s) if s.server.domain == *own => TenantTarget::Local {
                        process: t.process.clone(),
                        instance: t.instance.clone(),
                    },
                    Some(s) => match self.resolve_url(&s.server.url) {
                        Some((addr, tls, sni)) => TenantTarget::Remote(Box::new(Remote::to(
                            &t.id,
                            &s.server.id,
                            tenement_fleet::tenant_host(t, &s.server),
                            addr,
                            tls,
                            &sni,
                        ))),
                        None => TenantTarget::Remote(Box::new(Remote::unavailable(&t.id))),
                    },
                };
                (t.domain.clone(), target)
            })
            .collect()
    }

    fn view(&self) -> Arc<View> {
        self.views
            .get()
            .map(|v| v.borrow().clone())
            .unwrap_or_default()
    }

    /// An instance's live counters, if it has been in a table.
    pub fn stats(&self, name: &InstanceName) -> Option<Arc<InstanceStats>> {
        lock(&self.stats).get(name).cloned()
    }

    fn stats_for(&self, name: &InstanceName) -> Arc<InstanceStats> {
        lock(&self.stats)
            .entry(name.clone())
            .or_insert_with(|| {
                let m = self
                    .metrics
                    .as_ref()
                    .map(|m| m.instance(&name.process, &name.id));
                Arc::new(InstanceStats::with_metrics(m))
            })
            .clone()
    }

    /// Forget the counters (and metric series) of instances that are gone.
    fn prune(&self, view: &View) {
        lock(&self.stats).retain(|name, s| {
            let keep =
                self.externals.contains(name) || view.instances.iter().any(|v| &v.name == name);
            if !keep {
                if let Some(m) = &s.metrics {
                    m.remove();
                }
            }
            keep
        });
    }

    /// Build the table from the latest state and publish it in one swap.
    pub fn rebuild(&self) {
        let _one_at_a_time = lock(&self.build);
        let view = self.view();
        let externals = self.externals.all();
        let mut b = TableBuilder::new(&self.config.settings.domain);
        for p in &self.config.processes {
            let Some(opts) = self.opts.get(&p.name) else {
                continue;
            };
            let mut backends = Vec::new();
            for e in externals.iter().filter(|e| e.name.process == p.name) {
                let availability = match e.addr {
                    Some(_) => Availability::Up { healthy: e.healthy },
                    None => Availability::Down,
                };
                let stats = self.stats_for(&e.name);
                backends.push(Arc::new(Backend::new(
                    opts.clone(),
                    &e.name.id,
                    e.addr.clone(),
                    e.weight,
                    availability,
                    stats,
                )));
            }
            for v in view.instances.iter().filter(|v| v.name.process == p.name) {
                let availability = match v.state {
                    State::Healthy => Availability::Up { healthy: true },
                    State::Unhealthy => Availability::Up { healthy: false },
                    State::Stopped | State::Draining | State::Starting if v.idle => {
                        Availability::Idle
                    }
                    State::Starting | State::Draining | State::Stopped | State::Failed => {
                        Availability::Down
                    }
                };
                let addr = v.addr.as_ref().map(|a| match a {
                    Addr::Tcp(sa) => UpstreamAddr::Tcp(*sa),
                    Addr::Unix(p) => UpstreamAddr::Unix(p.clone()),
                });
                let stats = self.stats_for(&v.name);
                backends.push(Arc::new(Backend::new(
                    opts.clone(),
                    &v.name.id,
                    addr,
                    v.weight,
                    availability,
                    stats,
                )));
            }
            b.process(opts.clone(), backends);
        }
        for (domain, target) in self.tenant_targets() {
            b.tenant(&domain, target);
        }
        for r in &self.config.routes {
            b.route(RouteSpec {
                host: r.host.clone(),
                prefix: r.prefix.clone(),
                process: r.process.clone(),
                instance: r.instance.clone(),
                strip_prefix: r.strip_prefix,
            });
        }
        self.router.publish(b.build());
        self.prune(&view);
    }

    /// Health-check external upstreams every `health_check_interval`; rebuild on changes.
    pub async fn check_externals(self: Arc<Self>) {
        let every = self.config.settings.health_check_interval;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self
                .externals
                .check(every.min(Duration::from_secs(5)))
                .await
            {
                self.rebuild();
            }
        }
    }

    /// `ten weight legacy:0 50`; false when it is not an external upstream.
    pub fn set_external_weight(&self, name: &InstanceName, weight: u32) -> bool {
        if !self.externals.set_weight(name, weight) {
            return false;
        }
        if let Some(s) = &self.store {
            if let Err(e) = tenement_supervisor::blocking(|| s.set_external_weight(name, weight)) {
                tracing::error!("{e}");
            }
        }
        self.rebuild();
        true
    }

    /// External upstreams as API entries: `legacy:0`, `legacy:1`, ...
    pub fn externals_json(&self) -> Vec<serde_json::Value> {
        self.externals
            .all()
            .into_iter()
            .map(|e| {
                let stats = self.stats(&e.name);
                let (state, health) = match (&e.addr, e.healthy) {
                    (None, _) => ("failed", "-"),
                    (Some(_), true) => ("healthy", "passing"),
                    (Some(_), false) => ("unhealthy", "failing"),
                };
                serde_json::json!({
                    "name": e.name.to_string(),
                    "process": e.name.process,
                    "id": e.name.id,
                    "kind": "external",
                    "state": state,
                    "health": health,
                    "weight": e.weight,
                    "pid": null,
                    "address": e.addr.as_ref().map(|a| a.to_string()),
                    "uptime_secs": null,
                    "restarts": 0,
                    "requests": stats.as_ref().map(|s| s.requests()).unwrap_or(0),
                    "in_flight": stats.as_ref().map(|s| s.in_flight()).unwrap_or(0),
                    "idle": false,
                    "last_error": null,
                    "storage_bytes": null,
                })
            })
            .collect()
    }
}

impl TrafficProbe for Composer {
    fn in_flight(&self, name: &InstanceName) -> u64 {
        lock(&self.stats)
            .get(name)
            .map(|s| s.in_flight())
            .unwrap_or(0)
    }

    fn last_request(&self, name: &InstanceName) -> Option<Instant> {
        let since_epoch = lock(&self.stats).get(name)?.last_request()?;
        Some(self.router.epoch() + since_epoch)
    }
}

/// Wakes idle instances for the proxy, and returns once the table routes to them.
pub struct Wake {
    pub supervisor: tenement_supervisor::Supervisor,
    pub composer: Arc<Composer>,
}

#[async_trait::async_trait]
impl tenement_proxy::management::Waker for Wake {
    async fn wake(&self, process: &str, id: &str) -> Result<(), String> {
        let name = InstanceName {
            process: process.into(),
            id: id.into(),
        };
        self.supervisor
            .wake(&name)
            .await
            .map_err(|e| e.to_string())?;
        // wake() returns as soon as the view says healthy; the rebuild that view change
        // triggers may still be running on another thread. Build now: the retry sees it.
        self.composer.rebuild();
        Ok(())
    }
}
