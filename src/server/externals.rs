//! External upstreams (`upstreams = [...]`): services ten does not spawn or stop, routed like
//! instances (`legacy:0`, `legacy:1`, ...): health-checked like them, out of routing while
//! unhealthy, weights settable and persisted.

use std::net::ToSocketAddrs;
use std::sync::Mutex;
use std::time::Duration;

use tenement_conf::{Config, InstanceName, Upstream};
use tenement_proxy::UpstreamAddr;
use tenement_supervisor::probe::{self, Addr};
use tenement_supervisor::{StateStore, UNHEALTHY_AFTER};

/// One external upstream as routed now.
#[derive(Debug, Clone)]
pub struct External {
    pub name: InstanceName,
    pub addr: Option<UpstreamAddr>,
    pub health: Option<String>,
    pub weight: u32,
    pub healthy: bool,
    pub fails: u32,
}

pub struct Externals {
    list: Mutex<Vec<External>>,
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

impl Externals {
    /// From the config, with persisted weights (default 100).
    pub fn new(config: &Config, store: Option<&StateStore>) -> Self {
        let weights = store
            .and_then(|s| s.external_weights().ok())
            .unwrap_or_default();
        let mut list = Vec::new();
        for p in config.processes.iter().filter(|p| p.is_external()) {
            for (i, u) in p.upstreams.iter().enumerate() {
                let name = InstanceName {
                    process: p.name.clone(),
                    id: i.to_string(),
                };
                let weight = weights
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, w)| *w)
                    .unwrap_or(100);
                list.push(External {
                    addr: resolve(u),
                    health: p.health.clone(),
                    weight,
                    healthy: true, // until checks say otherwise; connect failures are retried anyway
                    fails: 0,
                    name,
                });
            }
        }
        Externals {
            list: Mutex::new(list),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<External>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn all(&self) -> Vec<External> {
        self.lock().clone()
    }

    pub fn contains(&self, name: &InstanceName) -> bool {
        self.lock().iter().any(|e| &e.name == name)
    }

    /// Set a weight; false when `name` is not an external upstream.
    pub fn set_weight(&self, name: &InstanceName, weight: u32) -> bool {
        let mut list = self.lock();
        match list.iter_mut().find(|e| &e.name == name) {
            Some(e) => {
                e.weight = weight;
                true
            }
            None => false,
        }
    }

    /// One round of checks (concurrently); true when any health state changed.
    pub async fn check(&self, timeout: Duration) -> bool {
        let targets: Vec<(usize, Addr, Option<String>)> = self
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let addr = match e.addr.as_ref()? {
                    UpstreamAddr::Tcp(sa) => Addr::Tcp(*sa),
                    UpstreamAddr::Unix(p) => Addr::Unix(p.clone()),
                };
                Some((i, addr, e.health.clone()))
            })
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for (i, addr, health) in targets {
            set.spawn(async move { (i, probe::probe(&addr, health.as_deref(), timeout).await) });
        }
        let mut changed = false;
        while let Some(Ok((i, result))) = set.join_next().await {
            let mut list = self.lock();
            let Some(e) = list.get_mut(i) else { continue };
            match result {
                Ok(()) => {
                    if !e.healthy {
                        tracing::info!(upstream = %e.name, "external upstream healthy again");
                        changed = true;
                    }
                    e.healthy = true;
                    e.fails = 0;
                }
                Err(why) => {
                    e.fails += 1;
                    if e.fails == UNHEALTHY_AFTER && e.healthy {
                        tracing::warn!(upstream = %e.name, "external upstream unhealthy: {why}");
                        e.healthy = false;
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}
