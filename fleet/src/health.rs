//! [`Fleet`]: the health loop and the published [`FleetView`].
//!
//! Every `health_interval` each server without a check in flight gets `GET {url}/health`
//! (timeout: min(interval, 5s)) in its own task, so one slow server never delays another.
//! A result is applied as soon as it arrives; a status change is published at once, other
//! changes (last_seen, latency) at the next tick: at most one routine publish per interval.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::webhook::{OutagePayload, WebhookSender};
use crate::{now_ms, rfc3339_ms, FleetStore, FleetView, Server, ServerState, Status, Tenant};

/// The events sink: one human line per status change or webhook.
pub type Events = Arc<dyn Fn(&str) + Send + Sync>;

/// The fleet: its store, its health loop and the snapshot it publishes. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    store: FleetStore,
    conf: tenement_conf::Fleet,
    events: Events,
    tx: watch::Sender<Arc<FleetView>>,
    client: reqwest::Client,
    webhook: Option<WebhookSender>,
    /// Runtime health by server id; also serializes publishes.
    rt: Mutex<Runtime>,
}

#[derive(Default)]
struct Runtime {
    health: HashMap<String, Health>,
    generation: u64,
    /// Something changed that is not published yet.
    dirty: bool,
}

/// One server's runtime health.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Health {
    pub status: Status,
    pub last_seen_ms: Option<i64>,
    pub latency_ms: Option<u64>,
    pub offline_since_ms: Option<i64>,
    pub failures: u32,
    pub last_error: Option<String>,
    /// The webhook for the current outage was sent (or is being sent).
    pub webhook_sent: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            status: Status::Unknown,
            last_seen_ms: None,
            latency_ms: None,
            offline_since_ms: None,
            failures: 0,
            last_error: None,
            webhook_sent: false,
        }
    }
}

/// Applies one check result. Returns `(old, new, why)` when the status changed.
pub(crate) fn record(
    h: &mut Health,
    result: Result<Duration, String>,
    conf: &tenement_conf::Fleet,
    now: i64,
) -> Option<(Status, Status, String)> {
    let old = h.status;
    let why = match result {
        Ok(latency) => {
            let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            let slow = latency > conf.degraded_latency;
            h.status = if slow {
                Status::Degraded
            } else {
                Status::Online
            };
            h.failures = 0;
            h.last_seen_ms = Some(now);
            h.latency_ms = Some(ms);
            h.last_error = None;
            h.offline_since_ms = None;
            h.webhook_sent = false;
            if slow {
                format!(
                    "answered in {ms}ms, slower than {}ms",
                    conf.degraded_latency.as_millis()
                )
            } else {
                format!("answered in {ms}ms")
            }
        }
        Err(e) => {
            h.failures = h.failures.saturating_add(1);
            let why = format!(
                "{} failed check{}: {e}",
                h.failures,
                if h.failures == 1 { "" } else { "s" }
            );
            h.last_error = Some(e);
            if h.failures >= conf.unhealthy_after.max(1) && old != Status::Offline {
                h.status = Status::Offline;
                h.offline_since_ms = Some(now);
                h.latency_ms = None;
            }
            why
        }
    };
    (h.status != old).then_some((old, h.status, why))
}

impl Fleet {
    /// A fleet over `store`, publishing its first view now (every server `unknown`).
    pub fn new(store: FleetStore, conf: tenement_conf::Fleet, events: Events) -> Fleet {
        let (tx, _) = watch::channel(Arc::new(FleetView::default()));
        let webhook = conf.webhook.as_deref().map(WebhookSender::new);
        let fleet = Fleet {
            inner: Arc::new(Inner {
                store,
                conf,
                events,
                tx,
                client: crate::http::client(),
                webhook,
                rt: Mutex::new(Runtime::default()),
            }),
        };
        fleet.changed();
        fleet
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetView>> {
        self.inner.tx.subscribe()
    }

    pub fn view(&self) -> Arc<FleetView> {
        self.inner.tx.borrow().clone()
    }

    pub fn store(&self) -> &FleetStore {
        &self.inner.store
    }

    pub fn conf(&self) -> &tenement_conf::Fleet {
        &self.inner.conf
    }

    /// Re-reads servers and tenants from the store and publishes them (after every write).
    pub fn changed(&self) {
        let mut rt = self.inner.lock();
        let read = self
            .inner
            .store
            .servers()
            .and_then(|s| Ok((s, self.inner.store.tenants()?)));
        match read {
            Ok((servers, tenants)) => {
                let ids: HashSet<&str> = servers.iter().map(|s| s.id.as_str()).collect();
                rt.health.retain(|id, _| ids.contains(id.as_str()));
                self.inner.publish(&mut rt, servers, tenants);
            }
            Err(e) => tracing::error!("fleet: cannot read servers and tenants: {e}"),
        }
    }

    /// The health loop; returns when `shutdown` turns true (or its sender is dropped).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let interval = self
            .inner
            .conf
            .health_interval
            .max(Duration::from_millis(10));
        let timeout = interval.min(Duration::from_secs(5));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut checks: JoinSet<(String, String, Result<Duration, String>)> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                Some(done) = checks.join_next_with_id(), if !checks.is_empty() => match done {
                    Ok((task, (id, url, result))) => {
                        in_flight.remove(&task);
                        self.inner.apply(&id, &url, result);
                    }
                    Err(e) => {
                        if let Some(id) = in_flight.remove(&e.id()) {
                            tracing::error!("fleet: health check of server {id} failed: {e}");
                        }
                    }
                },
                _ = ticker.tick() => {
                    self.inner.tick();
                    let busy: HashSet<&String> = in_flight.values().collect();
                    let due: Vec<Server> = self.view().servers.iter()
                        .filter(|s| !busy.contains(&s.server.id))
                        .map(|s| s.server.clone())
                        .collect();
                    for s in due {
                        let client = self.inner.client.clone();
                        let id = s.id.clone();
                        let task = checks.spawn(async move {
                            let result = check(&client, &s, timeout).await;
                            (s.id, s.url, result)
                        });
                        in_flight.insert(task.id(), id);
                    }
                }
            }
        }
        checks.abort_all();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Runtime> {
        self.rt.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, rt: &mut Runtime, servers: Vec<Server>, tenants: Vec<Tenant>) {
        let states = servers
            .into_iter()
            .map(|server| {
                let h = rt.health.entry(server.id.clone()).or_default();
                ServerState {
                    server,
                    status: h.status,
                    last_seen: h.last_seen_ms.map(rfc3339_ms),
                    latency_ms: h.latency_ms,
                    offline_since: h.offline_since_ms.map(rfc3339_ms),
                    consecutive_failures: h.failures,
                    last_error: h.last_error.clone(),
                }
            })
            .collect();
        rt.generation += 1;
        rt.dirty = false;
        self.tx
            .send_replace(Arc::new(FleetView::new(states, tenants, rt.generation)));
    }

    /// Republishes the current servers and tenants with fresh health.
    fn republish(&self, rt: &mut Runtime) {
        let view = self.tx.borrow().clone();
        let servers = view.servers.iter().map(|s| s.server.clone()).collect();
        self.publish(rt, servers, view.tenants.clone());
    }

    fn apply(&self, id: &str, url: &str, result: Result<Duration, String>) {
        let line = {
            let mut rt = self.lock();
            // A result for a server removed (or replaced) since the check started is dropped.
            let current = self.tx.borrow().server(id).map(|s| s.server.url.clone());
            if current.as_deref() != Some(url) {
                return;
            }
            let Some(h) = rt.health.get_mut(id) else {
                return;
            };
            let change = record(h, result, &self.conf, now_ms());
            rt.dirty = true;
            let line = change.map(|(old, new, why)| {
                self.republish(&mut rt);
                (new, format!("server {id}: {old} -> {new} ({why})"))
            });
            self.send_due_webhooks(&mut rt);
            line
        };
        // Outside the lock: the sink may call back into the fleet.
        if let Some((new, line)) = line {
            if new.is_up() {
                tracing::info!("{line}");
            } else {
                tracing::warn!("{line}");
            }
            (self.events)(&line);
        }
    }

    /// Each tick: publish pending changes, send the webhooks that are due.
    fn tick(&self) {
        let mut rt = self.lock();
        if rt.dirty {
            self.republish(&mut rt);
        }
        self.send_due_webhooks(&mut rt);
    }

    fn send_due_webhooks(&self, rt: &mut Runtime) {
        let Some(sender) = &self.webhook else {
            return;
        };
        let after = i64::try_from(self.conf.webhook_after.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        for (id, h) in rt.health.iter_mut() {
            let Some(since) = h.offline_since_ms else {
                continue;
            };
            if h.status != Status::Offline || h.webhook_sent || now - since < after {
                continue;
            }
            h.webhook_sent = true;
            let payload = OutagePayload::offline(id, rfc3339_ms(since));
            let (sender, events) = (sender.clone(), self.events.clone());
            tokio::spawn(async move {
                let line = match sender.send(&payload).await {
                    Ok(_) => {
                        let l = format!(
                            "server {}: offline since {}: webhook sent to {}",
                            payload.server,
                            payload.since,
                            sender.url()
                        );
                        tracing::info!("{l}");
                        l
                    }
                    Err(e) => {
                        let l = format!(
                            "server {}: offline since {}: webhook to {} failed: {e}",
                            payload.server,
                            payload.since,
                            sender.url()
                        );
                        tracing::warn!("{l}");
                        l
                    }
                };
                events(&line);
            });
        }
    }
}

/// One `GET {url}/health`: Ok(latency to the response head) on a 2xx.
async fn check(
    client: &reqwest::Client,
    s: &Server,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let req = crate::http::get(client, s, "/health", timeout);
    let resp = req
        .send()
        .await
        .map_err(|e| crate::http::error_text(&e, timeout))?;
    let latency = start.elapsed();
    if resp.status().is_success() {
        Ok(latency)
    } else {
        Err(format!("HTTP {}", resp.status()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
