//! The composer: the ONE place that turns the config and the supervisor's view into a routing
//! table and swaps it in. Also keeps each instance's live counters across table swaps.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tenement_conf::{Config, InstanceName, Upstream};
use tenement_proxy::metrics::Metrics;
use tenement_proxy::{
    Availability, Backend, InstanceStats, ProcessMetrics, ProcessOpts, RouteSpec, Router, Table,
    TableBuilder, UpstreamAddr,
};
use tenement_supervisor::{Addr, State, TrafficProbe, View};

pub struct Composer {
    config: Arc<Config>,
    router: Arc<Router>,
    opts: HashMap<String, Arc<ProcessOpts>>,
    /// External upstreams, resolved once at start.
    externals: HashMap<String, Vec<Option<UpstreamAddr>>>,
    stats: Mutex<HashMap<InstanceName, Arc<InstanceStats>>>,
    metrics: Option<Arc<Metrics>>,
}

impl Composer {
    /// `metrics`: the hot-path registry, or None when `[settings] metrics = false`.
    pub fn new(config: Arc<Config>, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let opts = config
            .processes
            .iter()
            .map(|p| {
                let o = ProcessOpts {
                    name: p.name.as_str().into(),
                    request_timeout: p.request_timeout,
                    max_body: p.max_body,
                    metrics: metrics.as_ref().map(|m| ProcessMetrics {
                        in_flight: m.process_in_flight(&p.name),
                        unrouted: m.instance(&p.name, "-"),
                    }),
                };
                (p.name.clone(), Arc::new(o))
            })
            .collect();
        let externals = config
            .processes
            .iter()
            .filter(|p| p.is_external())
            .map(|p| (p.name.clone(), p.upstreams.iter().map(resolve).collect()))
            .collect();
        let me = Composer {
            router: Arc::new(Router::new(Table::default())),
            config,
            opts,
            externals,
            stats: Mutex::default(),
            metrics,
        };
        me.rebuild(&View::default());
        Arc::new(me)
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// An instance's live counters, if it has been in a table.
    pub fn stats(&self, name: &InstanceName) -> Option<Arc<InstanceStats>> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.get(name).cloned()
    }

    /// External upstreams (`upstreams = [...]`) as API entries: `legacy:0`, `legacy:1`, ...
    pub fn externals_json(&self) -> Vec<serde_json::Value> {
        let table = self.router.load();
        let mut out = Vec::new();
        for p in self.config.processes.iter().filter(|p| p.is_external()) {
            let Some(pool) = table.pool(&p.name) else {
                continue;
            };
            for b in pool.backends.iter() {
                let (state, health) = match b.availability {
                    Availability::Up { healthy: true } => ("healthy", "passing"),
                    Availability::Up { healthy: false } => ("unhealthy", "failing"),
                    _ => ("failed", "-"),
                };
                out.push(serde_json::json!({
                    "name": &*b.key,
                    "process": p.name,
                    "id": &*b.id,
                    "kind": "external",
                    "state": state,
                    "health": health,
                    "weight": b.weight,
                    "pid": null,
                    "address": b.addr.as_ref().map(|a| a.to_string()),
                    "uptime_secs": null,
                    "restarts": 0,
                    "requests": b.stats.requests(),
                    "in_flight": b.stats.in_flight(),
                    "idle": false,
                    "last_error": null,
                    "storage_bytes": null,
                }));
            }
        }
        out
    }

    fn stats_for(&self, name: &InstanceName) -> Arc<InstanceStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats
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
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.retain(|name, s| {
            let keep = self.externals.contains_key(&name.process)
                || view.instances.iter().any(|v| &v.name == name);
            if !keep {
                if let Some(m) = &s.metrics {
                    m.remove();
                }
            }
            keep
        });
    }

    /// Build the table for `view` and publish it in one swap.
    pub fn rebuild(&self, view: &View) {
        let mut b = TableBuilder::new(&self.config.settings.domain);
        for p in &self.config.processes {
            let Some(opts) = self.opts.get(&p.name) else {
                continue;
            };
            let mut backends = Vec::new();
            if let Some(ext) = self.externals.get(&p.name) {
                for (i, addr) in ext.iter().enumerate() {
                    let name = InstanceName {
                        process: p.name.clone(),
                        id: i.to_string(),
                    };
                    let availability = match addr {
                        Some(_) => Availability::Up { healthy: true },
                        None => Availability::Down,
                    };
                    let stats = self.stats_for(&name);
                    backends.push(Arc::new(Backend::new(
                        opts.clone(),
                        &name.id,
                        addr.clone(),
                        100,
                        availability,
                        stats,
                    )));
                }
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
        self.prune(view);
    }

    /// Rebuild on every change of the supervisor's view, until the channel closes.
    pub async fn follow(self: Arc<Self>, mut views: tokio::sync::watch::Receiver<Arc<View>>) {
        loop {
            let view = views.borrow_and_update().clone();
            self.rebuild(&view);
            if views.changed().await.is_err() {
                return;
            }
        }
    }
}

impl TrafficProbe for Composer {
    fn in_flight(&self, name: &InstanceName) -> u64 {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.get(name).map(|s| s.in_flight()).unwrap_or(0)
    }

    fn last_request(&self, name: &InstanceName) -> Option<Instant> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let since_epoch = stats.get(name)?.last_request()?;
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
        // The composer follows views asynchronously: publish now so the retry sees it.
        self.composer.rebuild(&self.supervisor.view());
        Ok(())
    }
}

fn resolve(u: &Upstream) -> Option<UpstreamAddr> {
    match u {
        Upstream::Unix(p) => Some(UpstreamAddr::Unix(p.clone())),
        Upstream::Tcp(hp) => match hp.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(sa) => Some(UpstreamAddr::Tcp(sa)),
            None => {
                tracing::error!(upstream = %hp, "cannot resolve upstream address; it is left out of routing");
                None
            }
        },
    }
}
