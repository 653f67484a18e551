//! The health loop: every `health_interval` each server without a check in flight gets
//! `GET {url}/health` (timeout: min(interval, 5s)) in its own task, so one slow server never
//! delays another, and its url is resolved (`tokio::net::lookup_host`) in the same task.
//! A result is applied as soon as it arrives; a status change or a new address is published at
//! once, other changes (last_seen, latency) at the next tick: at most one routine publish per
//! interval. A server that appears between ticks is resolved at once (not checked).
//!
//! With `failover`, the same task also reads the server's `GET /api/instances` (servers with a
//! token only): the load and instance list the placement component (`placement.rs`) decides on,
//! cached until the next tick. The placements are reconciled after every status change and
//! every tick.
//!
//! Resolution: the published [`ServerAddr`] is the last good one. A failure is never cached: it
//! keeps the previous address (or none) and the next tick tries again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::fleet::{Fleet, Inner, Runtime};
use crate::placement::{list_instances, Instances};
use crate::webhook::OutagePayload;
use crate::{now_ms, rfc3339_ms, Server, ServerAddr, Status};

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
    /// The url's last good resolution (kept when a later one fails).
    pub resolved: Option<ServerAddr>,
    /// Why the last resolution failed (cleared by a success): logged once per cause.
    pub resolve_error: Option<String>,
    /// Its instances as its API last listed them (None: unknown).
    pub instances: Option<Instances>,
    /// Why the last listing failed (cleared by a success): logged once per cause.
    pub instances_error: Option<String>,
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
            resolved: None,
            resolve_error: None,
            instances: None,
            instances_error: None,
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

/// What a task of the loop reports.
enum Done {
    /// A tick's check of server `id` (at `url`), with its url resolved alongside.
    Checked {
        id: String,
        url: String,
        resolved: Result<ServerAddr, String>,
        result: Result<Duration, String>,
        /// Its `/api/instances` (None: not asked).
        instances: Option<Result<Instances, String>>,
    },
    /// A new server's url, resolved before its first tick.
    Resolved {
        id: String,
        url: String,
        resolved: Result<ServerAddr, String>,
    },
}

impl Fleet {
    /// Resolve now every server whose url has no address yet (at most `timeout` in all) and
    /// publish the results: `ten serve` calls it before its listeners open and the API after
    /// adding a server, so a tenant routes from its first request, as when a rebuild resolved
    /// urls itself. A failure is not kept: the loop tries again on its next tick.
    pub async fn resolve_pending(&self, timeout: Duration) {
        let pending: Vec<(String, String)> = self
            .view()
            .servers
            .iter()
            .filter(|s| s.resolved.is_none())
            .map(|s| (s.server.id.clone(), s.server.url.clone()))
            .collect();
        let mut tasks = JoinSet::new();
        for (id, url) in pending {
            tasks.spawn(async move {
                let resolved = resolve(&url, timeout).await;
                (id, url, resolved)
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok((id, url, resolved)) = done {
                self.inner.apply(&id, &url, Some(resolved), None, None);
            }
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
        let mut tasks: JoinSet<Done> = JoinSet::new();
        // Checks in flight by task, so a server gets at most one at a time.
        let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
        // (id, url) of the servers resolved (or being resolved) since the loop started.
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut views = self.subscribe();
        // A shared store is followed alongside (changes, the leader lock).
        let follow = tokio::spawn({
            let me = self.clone();
            let stop = shutdown.clone();
            async move { me.follow_store(stop).await }
        });
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => match done {
                    Ok((task, Done::Checked { id, url, resolved, result, instances })) => {
                        in_flight.remove(&task);
                        self.inner.apply(&id, &url, Some(resolved), Some(result), instances);
                    }
                    Ok((_, Done::Resolved { id, url, resolved })) => {
                        self.inner.apply(&id, &url, Some(resolved), None, None);
                    }
                    Err(e) => {
                        if let Some(id) = in_flight.remove(&e.id()) {
                            tracing::error!("fleet: health check of server {id} failed: {e}");
                        }
                    }
                },
                Ok(()) = views.changed() => {
                    let view = views.borrow_and_update().clone();
                    seen.retain(|(id, url)| view.server(id).is_some_and(|s| s.server.url == *url));
                    for s in &view.servers {
                        if s.resolved.is_some() || !seen.insert((s.server.id.clone(), s.server.url.clone())) {
                            continue;
                        }
                        let (id, url) = (s.server.id.clone(), s.server.url.clone());
                        tasks.spawn(async move {
                            let resolved = resolve(&url, timeout).await;
                            Done::Resolved { id, url, resolved }
                        });
                    }
                },
                _ = ticker.tick() => {
                    self.inner.tick();
                    let busy: HashSet<&String> = in_flight.values().collect();
                    let due: Vec<Server> = self.view().servers.iter()
                        .filter(|s| !busy.contains(&s.server.id))
                        .map(|s| s.server.clone())
                        .collect();
                    let failover = self.inner.conf.failover;
                    for s in due {
                        seen.insert((s.id.clone(), s.url.clone()));
                        let client = self.inner.client.clone();
                        let id = s.id.clone();
                        let task = tasks.spawn(async move {
                            let list = async {
                                match failover && s.token.is_some() {
                                    true => Some(list_instances(&client, &s, timeout).await),
                                    false => None,
                                }
                            };
                            let (resolved, result, instances) = tokio::join!(
                                resolve(&s.url, timeout),
                                check(&client, &s, timeout),
                                list
                            );
                            Done::Checked { id: s.id, url: s.url, resolved, result, instances }
                        });
                        in_flight.insert(task.id(), id);
                    }
                }
            }
        }
        tasks.abort_all();
        follow.abort();
    }
}

impl Inner {
    /// Applies a resolution and/or a check result (and instance list) of server `id`, if it
    /// is still at `url`.
    fn apply(
        &self,
        id: &str,
        url: &str,
        resolved: Option<Result<ServerAddr, String>>,
        result: Option<Result<Duration, String>>,
        instances: Option<Result<Instances, String>>,
    ) {
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
            let moved = resolved.is_some_and(|r| note_resolved(h, id, url, r));
            if let Some(list) = instances {
                note_instances(h, id, list);
            }
            let checked = result.map(|result| record(h, result, &self.conf, now_ms()));
            if checked.is_some() {
                rt.dirty = true;
            }
            let change = checked.flatten();
            if let Some((_, new, _)) = &change {
                if new.is_up() {
                    rt.came_up.push(id.to_string());
                }
            }
            // A status change or a new address (routing) is published at once.
            if change.is_some() || moved {
                self.republish(&mut rt);
            }
            let placed = match change.is_some() {
                true => self.reconcile(&mut rt),
                false => Vec::new(),
            };
            let line =
                change.map(|(old, new, why)| (new, format!("server {id}: {old} -> {new} ({why})")));
            self.send_due_webhooks(&mut rt);
            (line, placed)
        };
        // Outside the lock: the sink may call back into the fleet.
        let (line, placed) = line;
        if let Some((new, line)) = line {
            if new.is_up() {
                tracing::info!("{line}");
            } else {
                tracing::warn!("{line}");
            }
            (self.events)(&line);
        }
        self.emit(placed);
    }

    /// [`Inner::apply`] with a resolution and a check result (`bench.rs`).
    pub(crate) fn apply_for_bench(
        &self,
        id: &str,
        url: &str,
        resolved: Result<ServerAddr, String>,
        result: Result<Duration, String>,
    ) {
        self.apply(id, url, Some(resolved), Some(result), None);
    }

    /// [`Inner::apply`] with a check result only (`bench.rs`).
    pub(crate) fn apply_result_for_bench(&self, id: &str, url: &str, r: Result<Duration, String>) {
        self.apply(id, url, None, Some(r), None);
    }

    /// [`Inner::tick`] (`bench.rs`).
    pub(crate) fn tick_for_bench(&self) {
        self.tick();
    }

    /// Each tick: publish pending changes, reconcile the placements, send the webhooks that
    /// are due.
    fn tick(&self) {
        let lines = {
            let mut rt = self.lock();
            if rt.dirty {
                self.republish(&mut rt);
            }
            let lines = self.reconcile(&mut rt);
            self.end_outages(&mut rt);
            self.send_due_webhooks(&mut rt);
            lines
        };
        self.emit(lines);
    }

    /// The leader ends the claimed outages of the servers seen up since the last tick (one
    /// store call, on a blocking thread).
    fn end_outages(&self, rt: &mut Runtime) {
        if rt.came_up.is_empty() || !self.is_leader() || self.webhook.is_none() {
            rt.came_up.clear();
            return;
        }
        let ids = std::mem::take(&mut rt.came_up);
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            if let Err(e) = me.store.end_outages(&ids) {
                tracing::warn!("fleet: cannot end the outages of {}: {e}", ids.join(", "));
            }
        });
    }

    fn send_due_webhooks(&self, rt: &mut Runtime) {
        let Some(sender) = &self.webhook else {
            return;
        };
        // Only the leader sends; the store's outage row dedupes across routers and leaders.
        if !self.is_leader() {
            return;
        }
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
            let Some(me) = self.me.upgrade() else {
                return;
            };
            let id = id.clone();
            tokio::spawn(async move {
                let store = me.clone();
                let claim = tokio::task::spawn_blocking(move || {
                    store.store.claim_outage(&id, since).map_err(|e| (id, e))
                });
                match claim.await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        tracing::info!(
                            "server {}: offline since {}: webhook already sent for this outage",
                            payload.server,
                            payload.since
                        );
                        return;
                    }
                    Ok(Err((id, e))) => {
                        tracing::warn!(
                            "server {id}: cannot record the outage (tried again next tick): {e}"
                        );
                        if let Some(h) = me.lock().health.get_mut(&id) {
                            h.webhook_sent = false;
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::error!("fleet: outage claim failed: {e}");
                        return;
                    }
                }
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

/// Records a resolution of server `id`'s `url`; returns whether its published address changes.
/// A failure keeps the previous address and is logged once per cause.
fn note_resolved(h: &mut Health, id: &str, url: &str, r: Result<ServerAddr, String>) -> bool {
    match r {
        Ok(addr) => {
            if h.resolve_error.take().is_some() {
                tracing::info!("fleet: server {id}: {url} resolves again, to {}", addr.addr);
            }
            if h.resolved.as_ref() == Some(&addr) {
                return false;
            }
            h.resolved = Some(addr);
            true
        }
        Err(e) => {
            if h.resolve_error.as_deref() != Some(e.as_str()) {
                match &h.resolved {
                    Some(old) => tracing::warn!(
                        "fleet: server {id}: cannot resolve {url}: {e} (still using {})",
                        old.addr
                    ),
                    None => tracing::error!("fleet: server {id}: cannot resolve {url}: {e}"),
                }
                h.resolve_error = Some(e);
            }
            false
        }
    }
}

/// Records a listing of server `id`'s instances. A failure forgets the last list (the load and
/// what runs there are unknown again) and is logged once per cause.
fn note_instances(h: &mut Health, id: &str, r: Result<Instances, String>) {
    match r {
        Ok(list) => {
            if h.instances_error.take().is_some() {
                tracing::info!("fleet: server {id}: its instances can be listed again");
            }
            h.instances = Some(list);
        }
        Err(e) => {
            if h.instances_error.as_deref() != Some(e.as_str()) {
                tracing::warn!("fleet: server {id}: cannot list its instances: {e}");
                h.instances_error = Some(e);
            }
            h.instances = None;
        }
    }
}

/// A server url's host (without IPv6 brackets, for SNI), port (the scheme's by default) and
/// whether it is https; None if it is not a url with a host.
pub(crate) fn parse_url(url: &str) -> Option<(String, u16, bool)> {
    let uri: ::http::Uri = url.parse().ok()?;
    let tls = uri.scheme_str() == Some("https");
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Some((host, port, tls))
}

/// Resolves a server url (asynchronously, within `timeout`) to its first address.
pub(crate) async fn resolve(url: &str, timeout: Duration) -> Result<ServerAddr, String> {
    let (host, port, tls) = parse_url(url).ok_or_else(|| format!("not a url: {url:?}"))?;
    let lookup = tokio::net::lookup_host((host.as_str(), port));
    let addr = match tokio::time::timeout(timeout, lookup).await {
        Err(_) => return Err(format!("no answer within {}ms", timeout.as_millis())),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(mut addrs)) => addrs.next().ok_or("no address")?,
    };
    Ok(ServerAddr { addr, tls, host })
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
