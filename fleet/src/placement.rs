//! Failover placement (SPEC §9): when a tenant's home is offline, ONE component decides where it
//! is served, starts it there, and takes it back once home returns.
//!
//! - The choice ([`choose`], pure): a server that is up, not home; the home's region first, then
//!   the fewest instances (each server's `GET /api/instances`, fetched by the health loop once per
//!   tick, never per request), then online before degraded, then by id.
//! - [`Inner::reconcile`] runs after every status change and every tick, under the runtime lock,
//!   and only on the leader ([`Inner::is_leader`]: always this router today; a shared store
//!   will give it to the holder of its lock). It writes each decision to the store
//!   (`fleet_placements`) and publishes it in the view, so the routing table follows.
//! - If the chosen server does not run `{process}:{instance}` (per that cached list), a task asks
//!   it to (`POST {url}/api/instances` with its token; it answers once the instance is healthy, a
//!   409 "already exists" counts too): the placement is `placing` (requests wait, see
//!   [`crate::Fleet::wait_placed`]) until it is `ready` or `failed` (a 503 saying why; tried
//!   again, on another server if there is one, one health interval later). A server without a
//!   token cannot be asked anything: it is used as it is (as before placements existed).
//! - Home back online: new requests go home at once (the view routes home whatever the
//!   placement says). A copy the router spawned is stopped (`DELETE {url}/api/instances/{p}:{i}`)
//!   once its server reports no new request and none in flight for `failover_linger` (the copy's
//!   own `requests`/`in_flight` counters in that same cached list: every router's traffic
//!   counts, and the hot path is untouched); then the placement is forgotten.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::fleet::{Inner, Runtime};
use crate::{now_ms, FleetView, PlaceState, Placement, Server, ServerState, Status, Tenant};

/// A copy's traffic as its server counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub requests: u64,
    pub in_flight: u64,
}

/// What a server's `GET /api/instances` said at its last health tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Instances {
    /// By `process:id`.
    by_name: HashMap<String, Traffic>,
}

impl Instances {
    /// From the API's JSON array of instances.
    pub(crate) fn parse(v: &Value) -> Result<Instances, String> {
        let list = v
            .as_array()
            .ok_or("GET /api/instances: expected a JSON array")?;
        let by_name = list
            .iter()
            .filter_map(|i| {
                let (p, id) = (i["process"].as_str()?, i["id"].as_str()?);
                let t = Traffic {
                    requests: i["requests"].as_u64().unwrap_or(0),
                    in_flight: i["in_flight"].as_u64().unwrap_or(0),
                };
                Some((format!("{p}:{id}"), t))
            })
            .collect();
        Ok(Instances { by_name })
    }

    /// How loaded the server is: its number of instances.
    pub(crate) fn count(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Traffic> {
        self.by_name.get(name).copied()
    }
}

/// `process:instance`, the key of [`Instances`].
fn instance_name(t: &Tenant) -> String {
    format!("{}:{}", t.process, t.instance)
}

/// Where a home-offline tenant should be placed: a server that is up, neither home nor in
/// `exclude`; same region as home first, then the fewest instances (`load`; unknown counts as
/// the most), then online before degraded, then by id. None: no server is up.
pub(crate) fn choose<'a>(
    view: &'a FleetView,
    tenant: &Tenant,
    load: impl Fn(&str) -> Option<usize>,
    exclude: Option<&str>,
) -> Option<&'a ServerState> {
    let region = view
        .server(&tenant.server)
        .and_then(|h| h.server.region.as_deref());
    view.servers
        .iter()
        .filter(|s| s.server.id != tenant.server && s.status.is_up())
        .filter(|s| Some(s.server.id.as_str()) != exclude)
        .min_by_key(|s| {
            let other_region = region.is_none() || s.server.region.as_deref() != region;
            (
                other_region,
                load(&s.server.id).unwrap_or(usize::MAX),
                s.status == Status::Degraded,
                s.server.id.clone(),
            )
        })
}

/// Linger bookkeeping of a copy whose tenant's home is back.
pub(crate) struct Linger {
    /// The copy's request count when last seen.
    requests: u64,
    /// Since when it has had no new request and none in flight (ms since the epoch).
    quiet_since_ms: i64,
}

/// What `reconcile` decided to do outside the lock.
enum Task {
    Spawn(Placement, Server, Tenant),
    Stop(Placement, Server, Tenant),
}

/// A ms count from a duration (saturating).
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Inner {
    /// Publish `view`'s servers and tenants with these placements.
    pub(crate) fn publish_placements(
        &self,
        rt: &mut Runtime,
        view: &FleetView,
        placements: HashMap<String, Placement>,
    ) {
        let servers = view.servers.iter().map(|s| s.server.clone()).collect();
        self.publish(rt, servers, None, placements.into_values());
    }

    /// "Am I the leader": only the leader places tenants and stops copies. One router, one
    /// store: always true today.
    pub(crate) fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Brings the placements in line with the current view (see the module doc); publishes
    /// when one changed. Returns the event lines to emit once the lock is released.
    pub(crate) fn reconcile(&self, rt: &mut Runtime) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.conf.failover || !self.is_leader() {
            return lines;
        }
        let view = self.tx.borrow().clone();
        // One pass over the servers, not one per tenant.
        let servers: HashMap<&str, &ServerState> = view
            .servers
            .iter()
            .map(|s| (s.server.id.as_str(), s))
            .collect();
        let mut placements = view.placements.clone();
        placements.retain(|tenant, _| view.tenant(tenant).is_some());
        rt.linger
            .retain(|tenant, _| placements.contains_key(tenant));
        let mut changed = placements.len() != view.placements.len();
        let mut tasks = Vec::new();
        let now = now_ms();
        let retry_after = ms(self.conf.health_interval.max(Duration::from_secs(1)));
        // Only the tenants whose home is offline or that have a placement: a status change
        // costs what it concerns, not a pass over every tenant.
        for t in view
            .placement_candidates()
            .into_iter()
            .filter_map(|i| view.tenants.get(i))
        {
            let home_down = servers
                .get(t.server.as_str())
                .is_none_or(|h| h.status == Status::Offline);
            let current = placements.get(&t.id).cloned();
            if home_down {
                rt.linger.remove(&t.id);
                let keep = match &current {
                    None => false,
                    Some(p) if p.server == t.server => false,
                    Some(p) => match p.state {
                        PlaceState::Placing => true,
                        PlaceState::Ready => servers
                            .get(p.server.as_str())
                            .is_some_and(|s| s.status.is_up()),
                        PlaceState::Failed => now - p.placed_ms < retry_after,
                    },
                };
                if keep {
                    continue;
                }
                let load = |id: &str| {
                    rt.health
                        .get(id)
                        .and_then(|h| h.instances.as_ref())
                        .map(|i| i.count())
                };
                // A failed server is tried again only when it is the only one left.
                let failed = current
                    .as_ref()
                    .filter(|p| p.state == PlaceState::Failed)
                    .map(|p| p.server.as_str());
                let chosen =
                    choose(&view, t, load, failed).or_else(|| choose(&view, t, load, None));
                let Some(s) = chosen else {
                    if current.is_some() {
                        placements.remove(&t.id);
                        self.forget(&t.id);
                        changed = true;
                    }
                    continue;
                };
                let name = instance_name(t);
                let runs = rt
                    .health
                    .get(&s.server.id)
                    .and_then(|h| h.instances.as_ref())
                    .and_then(|i| i.get(&name))
                    .is_some();
                let spawn = s.server.token.is_some() && !runs;
                let p = Placement {
                    tenant: t.id.clone(),
                    server: s.server.id.clone(),
                    spawned: spawn,
                    state: if spawn {
                        PlaceState::Placing
                    } else {
                        PlaceState::Ready
                    },
                    error: None,
                    placed_ms: now,
                };
                let how = if spawn {
                    format!("asking it to start {name}")
                } else if runs {
                    format!("it runs {name} already")
                } else {
                    "it has no token: used as it is".to_string()
                };
                lines.push(format!(
                    "tenant {}: home {} offline, placed on {} ({how})",
                    t.id, t.server, s.server.id
                ));
                if let Some(old) = current.filter(|p| p.spawned && p.state == PlaceState::Ready) {
                    // Its server is down too: nothing can be asked of it now.
                    lines.push(format!(
                        "tenant {}: the copy on {} is left as it is (that server is not up)",
                        t.id, old.server
                    ));
                }
                self.store_placement(&p);
                if spawn {
                    tasks.push(Task::Spawn(p.clone(), s.server.clone(), t.clone()));
                }
                placements.insert(t.id.clone(), p);
                changed = true;
            } else {
                let Some(p) = current else {
                    continue;
                };
                if rt.stopping.contains(&t.id) {
                    continue;
                }
                let copy = servers.get(p.server.as_str()).copied();
                let name = instance_name(t);
                // Not listed there (yet, or any more): no traffic; the stop then answers 404.
                let traffic = copy
                    .and_then(|s| rt.health.get(&s.server.id))
                    .and_then(|h| h.instances.as_ref())
                    .and_then(|i| i.get(&name))
                    .unwrap_or_default();
                // Nothing of ours to stop (not spawned, not ready, server gone): forget it.
                if !p.spawned
                    || p.server == t.server
                    || p.state != PlaceState::Ready
                    || copy.is_none()
                {
                    lines.push(format!(
                        "tenant {}: home {} is back; no longer served at {}",
                        t.id, t.server, p.server
                    ));
                    placements.remove(&t.id);
                    rt.linger.remove(&t.id);
                    self.forget(&t.id);
                    changed = true;
                    continue;
                }
                let l = rt.linger.entry(t.id.clone()).or_insert(Linger {
                    requests: traffic.requests,
                    quiet_since_ms: now,
                });
                if traffic.in_flight > 0 || traffic.requests != l.requests {
                    l.requests = traffic.requests;
                    l.quiet_since_ms = now;
                }
                let up = copy.is_some_and(|s| s.status.is_up());
                if up && now - l.quiet_since_ms >= ms(self.conf.failover_linger) {
                    if let Some(s) = copy {
                        rt.stopping.insert(t.id.clone());
                        tasks.push(Task::Stop(p.clone(), s.server.clone(), t.clone()));
                    }
                }
            }
        }
        if changed {
            self.publish_placements(rt, &view, placements);
        }
        for task in tasks {
            self.start(task);
        }
        lines
    }

    fn store_placement(&self, p: &Placement) {
        if let Err(e) = self.store.put_placement(p) {
            tracing::error!(
                "fleet: cannot store the placement of tenant {}: {e}",
                p.tenant
            );
        }
    }

    fn forget(&self, tenant: &str) {
        if let Err(e) = self.store.remove_placement(tenant) {
            tracing::error!("fleet: cannot remove the placement of tenant {tenant}: {e}");
        }
    }

    /// Runs a spawn or a stop on its own task.
    fn start(&self, task: Task) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("fleet: no async runtime to place tenants on");
            return;
        };
        let client = self.client.clone();
        let timeout = self.conf.placement_timeout;
        rt.spawn(async move {
            match task {
                Task::Spawn(p, server, tenant) => {
                    let result = spawn(&client, &server, &tenant, timeout).await;
                    me.spawned(&p, &server, &tenant, result);
                }
                Task::Stop(p, server, tenant) => {
                    let result = stop(&client, &server, &tenant).await;
                    me.stopped(&p, &tenant, result);
                }
            }
        });
    }

    /// A spawn answered: the placement is ready (or failed), if it is still the current one.
    /// A copy spawned for a placement dropped meanwhile (home came back) is stopped at once.
    /// `result`: Ok(true) when the server started it, Ok(false) when it ran already (409).
    fn spawned(&self, p: &Placement, server: &Server, t: &Tenant, result: Result<bool, String>) {
        let line = {
            let mut rt = self.lock();
            let view = self.tx.borrow().clone();
            let current = view.placements.get(&p.tenant);
            if current != Some(p) {
                drop(rt);
                if result == Ok(true) {
                    let Some(me) = self.me.upgrade() else {
                        return;
                    };
                    let (client, server, t) = (self.client.clone(), server.clone(), t.clone());
                    tokio::spawn(async move {
                        let r = stop(&client, &server, &t).await;
                        let line = match r {
                            Ok(()) => format!(
                                "tenant {}: placement dropped while starting: copy on {} stopped",
                                t.id, server.id
                            ),
                            Err(e) => format!(
                                "tenant {}: placement dropped while starting: cannot stop the copy on {}: {e}",
                                t.id, server.id
                            ),
                        };
                        tracing::info!("{line}");
                        (me.events)(&line);
                    });
                }
                return;
            }
            let mut next = p.clone();
            let line = match result {
                Ok(started) => {
                    next.state = PlaceState::Ready;
                    // It ran already after all: not ours to stop.
                    next.spawned = started;
                    format!(
                        "tenant {}: served at {} ({}:{} started there)",
                        p.tenant, p.server, t.process, t.instance
                    )
                }
                Err(e) => {
                    next.state = PlaceState::Failed;
                    next.error = Some(e.clone());
                    format!(
                        "tenant {}: placing it on {} failed: {e}",
                        p.tenant, p.server
                    )
                }
            };
            self.store_placement(&next);
            let mut placements = view.placements.clone();
            placements.insert(next.tenant.clone(), next);
            self.publish_placements(&mut rt, &view, placements);
            line
        };
        tracing::info!("{line}");
        (self.events)(&line);
    }

    /// A stop answered: the placement is forgotten (or the stop is tried again next tick).
    fn stopped(&self, p: &Placement, t: &Tenant, result: Result<(), String>) {
        let line = {
            let mut rt = self.lock();
            rt.stopping.remove(&p.tenant);
            match result {
                Err(e) => format!(
                    "tenant {}: cannot stop the failover copy {}:{} on {}: {e} (tried again next tick)",
                    p.tenant, t.process, t.instance, p.server
                ),
                Ok(()) => {
                    rt.linger.remove(&p.tenant);
                    let view = self.tx.borrow().clone();
                    if view.placements.get(&p.tenant) == Some(p) {
                        self.forget(&p.tenant);
                        let mut placements = view.placements.clone();
                        placements.remove(&p.tenant);
                        self.publish_placements(&mut rt, &view, placements);
                    }
                    format!(
                        "tenant {}: failover copy {}:{} on {} stopped after {}s without traffic",
                        p.tenant,
                        t.process,
                        t.instance,
                        p.server,
                        self.conf.failover_linger.as_secs()
                    )
                }
            }
        };
        tracing::info!("{line}");
        (self.events)(&line);
    }
}

/// `GET {url}/api/instances` on a server with a token.
pub(crate) async fn list_instances(
    client: &reqwest::Client,
    s: &Server,
    timeout: Duration,
) -> Result<Instances, String> {
    let resp = crate::http::request(client, reqwest::Method::GET, s, "/api/instances", timeout)
        .send()
        .await
        .map_err(|e| crate::http::error_text(&e, timeout))?;
    if !resp.status().is_success() {
        return Err(format!("GET /api/instances: HTTP {}", resp.status()));
    }
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("GET /api/instances: {e}"))?;
    Instances::parse(&v)
}

/// `POST {url}/api/instances {"process", "id"}`: returns once the instance is healthy there:
/// Ok(true) when it started it (201), Ok(false) when it ran already (409).
async fn spawn(
    client: &reqwest::Client,
    s: &Server,
    t: &Tenant,
    timeout: Duration,
) -> Result<bool, String> {
    let body = serde_json::json!({ "process": t.process, "id": t.instance });
    let resp = crate::http::request(client, reqwest::Method::POST, s, "/api/instances", timeout)
        .json(&body)
        .send()
        .await
        .map_err(|e| crate::http::error_text(&e, timeout))?;
    let status = resp.status();
    if status == reqwest::StatusCode::CONFLICT {
        return Ok(false);
    }
    if status.is_success() {
        return Ok(true);
    }
    let text = resp.text().await.unwrap_or_default();
    Err(format!(
        "POST /api/instances: HTTP {status}: {}",
        api_error(&text)
    ))
}

/// `DELETE {url}/api/instances/{process}:{instance}` (204 after drain and stop; 404: gone).
async fn stop(client: &reqwest::Client, s: &Server, t: &Tenant) -> Result<(), String> {
    // Stopping drains the instance first: give it a minute.
    let timeout = Duration::from_secs(60);
    let path = format!("/api/instances/{}:{}", t.process, t.instance);
    let resp = crate::http::request(client, reqwest::Method::DELETE, s, &path, timeout)
        .send()
        .await
        .map_err(|e| crate::http::error_text(&e, timeout))?;
    let status = resp.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    Err(format!(
        "DELETE {path}: HTTP {status}: {}",
        api_error(&text)
    ))
}

/// The `error` of an API answer, else its text (shortened).
fn api_error(text: &str) -> String {
    let msg = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    msg.chars().take(300).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
