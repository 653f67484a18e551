//! [`Fleet`]: the fleet handle. It owns the store, the published [`FleetView`] and the runtime
//! health, and every write goes through it: `add_server`, `remove_server`, `add_tenant`,
//! `remove_tenant`, `migrate_tenant` write to the store AND publish the new view, so no caller
//! has to remember to. The health loop that updates the runtime health is in `health.rs`; the
//! failover placements it triggers are in `placement.rs`.
//!
//! With a shared store (PostgreSQL), [`Fleet::run`] also follows the store: another router's
//! write (a notification) or a reconnect re-reads servers, tenants and placements (all of
//! them: ~130 ms at 100k tenants, `benches/fleet.rs`), and so does a timer every
//! [`RESYNC`], as the backstop for a missed notification. It also follows the leader lock:
//! only the leader places tenants and sends webhooks; the others follow its placements.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::health::Health;
use crate::placement::Linger;
use crate::webhook::WebhookSender;
use crate::{
    rfc3339_ms, FleetError, FleetStore, FleetView, NewServer, Placement, Served, Server,
    ServerState, Tenant,
};

/// The events sink: one human line per status change or webhook.
pub type Events = Arc<dyn Fn(&str) + Send + Sync>;

/// The fleet: its store, its health loop and the snapshot it publishes. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: FleetStore,
    pub(crate) conf: tenement_conf::Fleet,
    pub(crate) events: Events,
    pub(crate) tx: watch::Sender<Arc<FleetView>>,
    pub(crate) client: reqwest::Client,
    pub(crate) webhook: Option<WebhookSender>,
    /// Runtime health by server id; also serializes publishes.
    pub(crate) rt: Mutex<Runtime>,
    /// Whether this router places tenants and sends webhooks: always true with SQLite; with a
    /// shared store, while it holds the leader lock.
    pub(crate) leader: AtomicBool,
    /// Serializes store re-reads, so an older read is never published after a newer one.
    pub(crate) reread: Mutex<()>,
    /// Itself, for the tasks it starts.
    pub(crate) me: Weak<Inner>,
}

#[derive(Default)]
pub(crate) struct Runtime {
    pub(crate) health: HashMap<String, Health>,
    pub(crate) generation: u64,
    /// Something changed that is not published yet.
    pub(crate) dirty: bool,
    /// Copies whose home is back, by tenant: their traffic since.
    pub(crate) linger: HashMap<String, Linger>,
    /// Tenants whose failover copy is being stopped.
    pub(crate) stopping: HashSet<String>,
    /// Servers seen coming up: their outage (if one was claimed) ends at the next tick.
    pub(crate) came_up: Vec<String>,
}

/// How often a router with a shared store re-reads it all, notification or not.
pub const RESYNC: Duration = Duration::from_secs(30);

impl Fleet {
    /// A fleet over `store`, publishing its first view now (every server `unknown`).
    pub fn new(store: FleetStore, conf: tenement_conf::Fleet, events: Events) -> Fleet {
        let (tx, _) = watch::channel(Arc::new(FleetView::default()));
        // A shared store's leader is elected (`run`); alone, this router leads.
        let alone = matches!(store, FleetStore::Sqlite(_));
        let webhook = conf.webhook.as_deref().map(WebhookSender::new);
        let fleet = Fleet {
            inner: Arc::new_cyclic(|me| Inner {
                store,
                conf,
                events,
                tx,
                client: crate::http::client(),
                webhook,
                rt: Mutex::new(Runtime::default()),
                leader: AtomicBool::new(alone),
                reread: Mutex::new(()),
                me: me.clone(),
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

    /// The store, for reads. A write made here directly is published only by [`Fleet::changed`]:
    /// use the handle's own writes instead.
    pub fn store(&self) -> &FleetStore {
        &self.inner.store
    }

    pub fn conf(&self) -> &tenement_conf::Fleet {
        &self.inner.conf
    }

    /// Adds a server and publishes it (status `unknown` until the loop checks it).
    pub fn add_server(&self, s: &NewServer) -> Result<Server, FleetError> {
        let added = self.inner.store.add_server(s)?;
        self.changed();
        Ok(added)
    }

    /// Removes a server that no tenant calls home, and publishes.
    pub fn remove_server(&self, id: &str) -> Result<(), FleetError> {
        self.inner.store.remove_server(id)?;
        self.changed();
        Ok(())
    }

    /// Adds a tenant and publishes it.
    pub fn add_tenant(&self, t: &Tenant) -> Result<Tenant, FleetError> {
        let added = self.inner.store.add_tenant(t)?;
        self.changed();
        Ok(added)
    }

    /// Removes a tenant and publishes.
    pub fn remove_tenant(&self, id: &str) -> Result<(), FleetError> {
        self.inner.store.remove_tenant(id)?;
        self.changed();
        Ok(())
    }

    /// Moves a tenant's home to `server` and publishes.
    pub fn migrate_tenant(&self, id: &str, server: &str) -> Result<Tenant, FleetError> {
        let moved = self.inner.store.migrate_tenant(id, server)?;
        self.changed();
        Ok(moved)
    }

    /// Re-reads servers, tenants and placements from the store and publishes them (each write
    /// above does), then lets the placement component catch up.
    /// A store that cannot be read keeps the last view (routing continues on it).
    pub fn changed(&self) {
        let _one = self.inner.reread.lock().unwrap_or_else(|p| p.into_inner());
        // Read outside the runtime lock: the health loop is not held up by the store.
        let read = self.inner.store.snapshot();
        let lines = {
            let mut rt = self.inner.lock();
            match read {
                Ok(snap) => {
                    let ids: HashSet<&str> = snap.servers.iter().map(|s| s.id.as_str()).collect();
                    rt.health.retain(|id, _| ids.contains(id.as_str()));
                    self.inner
                        .publish(&mut rt, snap.servers, Some(snap.tenants), snap.placements);
                    self.inner.reconcile(&mut rt)
                }
                Err(e) => {
                    tracing::error!(
                        "fleet: cannot read servers, tenants and placements (routing on the last \
                         table): {e}"
                    );
                    Vec::new()
                }
            }
        };
        self.inner.emit(lines);
    }

    /// Whether this router leads (places tenants, sends webhooks).
    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// Follows a shared store until `shutdown`: re-reads it on every change another router
    /// makes (and every [`RESYNC`]), and takes or gives up the lead as the lock says.
    pub(crate) async fn follow_store(&self, mut shutdown: watch::Receiver<bool>) {
        let retry = self
            .inner
            .conf
            .health_interval
            .max(Duration::from_millis(50));
        let Some(mut feeds) = self.inner.store.feeds(retry) else {
            return;
        };
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                r = feeds.changes.changed() => {
                    if r.is_err() {
                        break;
                    }
                    feeds.changes.borrow_and_update();
                    self.reread().await;
                }
                _ = resync.tick() => self.reread().await,
                r = feeds.leader.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let leads = *feeds.leader.borrow_and_update();
                    self.set_leader(leads);
                }
            }
        }
        self.inner.leader.store(false, Ordering::Relaxed);
    }

    /// [`Fleet::changed`] on a blocking thread (the store call waits for PostgreSQL).
    async fn reread(&self) {
        let me = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || me.changed()).await {
            tracing::error!("fleet: re-reading the store failed: {e}");
        }
    }

    /// Takes (or gives up) the lead. A new leader ends the outages of the servers it sees up
    /// (their next outage gets a webhook) and reconciles the placements at once.
    fn set_leader(&self, leads: bool) {
        let was = self.inner.leader.swap(leads, Ordering::Relaxed);
        if was == leads {
            return;
        }
        let store = self.inner.store.name();
        let line = if leads {
            format!("fleet: this router leads now (placements, webhooks; lock in {store})")
        } else {
            format!("fleet: this router no longer leads (lock in {store} lost)")
        };
        self.inner.emit(vec![line]);
        if leads {
            let lines = {
                let mut rt = self.inner.lock();
                let view = self.inner.tx.borrow().clone();
                rt.came_up.extend(
                    view.servers
                        .iter()
                        .filter(|s| s.status.is_up())
                        .map(|s| s.server.id.clone()),
                );
                self.inner.reconcile(&mut rt)
            };
            self.inner.emit(lines);
        }
    }

    /// Wait while tenant `id` is being placed (its home is offline and its copy is starting),
    /// at most `placement_timeout`: Ok(the generation of the view that routes it), or why it
    /// cannot be served. The proxy's waker calls it for a request to a tenant being placed.
    pub async fn wait_placed(&self, id: &str) -> Result<u64, String> {
        let timeout = self.inner.conf.placement_timeout;
        let failover = self.inner.conf.failover;
        let mut rx = self.subscribe();
        let wait = async {
            loop {
                let view = rx.borrow_and_update().clone();
                let Some(t) = view.tenant(id) else {
                    return Err(format!("tenant {id} was removed"));
                };
                match view.serve(t, failover) {
                    Served::At(_) => return Ok(view.generation),
                    Served::Unavailable(why) => return Err(why),
                    Served::Placing => {}
                }
                if rx.changed().await.is_err() {
                    return Err("the fleet stopped".into());
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "not placed within {} (placement_timeout)",
                show_duration(timeout)
            )),
        }
    }

    /// Where each tenant is served in `view` (see [`Fleet::view`]), by tenant id: its home,
    /// the server it is placed on, or None (being placed, or nowhere).
    pub fn served_at(&self, view: &FleetView) -> HashMap<String, Option<String>> {
        let failover = self.inner.conf.failover;
        view.tenants
            .iter()
            .map(|t| {
                let at = match view.serve(t, failover) {
                    Served::At(s) => Some(s.server.id.clone()),
                    Served::Placing | Served::Unavailable(_) => None,
                };
                (t.id.clone(), at)
            })
            .collect()
    }
}

/// "30s", "1500ms".
fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Runtime> {
        self.rt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `servers` with their health, `tenants` (None: the current view's, shared)
    /// and `placements`. The view's routing generation moves only if what routes changed.
    pub(crate) fn publish(
        &self,
        rt: &mut Runtime,
        servers: Vec<Server>,
        tenants: Option<Vec<Tenant>>,
        placements: impl IntoIterator<Item = Placement>,
    ) {
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
                    resolved: h.resolved.clone(),
                }
            })
            .collect();
        rt.generation += 1;
        rt.dirty = false;
        let prev = self.tx.borrow().clone();
        let mut view = match tenants {
            Some(tenants) => FleetView::new(states, tenants, rt.generation),
            None => prev.with_servers(states, rt.generation),
        }
        .with_placements(placements);
        if view.routes_like(&prev) {
            view.routing = prev.routing;
        }
        self.tx.send_replace(Arc::new(view));
    }

    /// Republishes the current servers, tenants and placements with fresh health.
    pub(crate) fn republish(&self, rt: &mut Runtime) {
        let view = self.tx.borrow().clone();
        self.publish_placements(rt, &view, view.placements.clone());
    }

    /// Emits event lines (outside the runtime lock: the sink may call back into the fleet).
    pub(crate) fn emit(&self, lines: Vec<String>) {
        for line in lines {
            tracing::info!("{line}");
            (self.events)(&line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Status;

    fn fleet() -> (tempfile::TempDir, Fleet) {
        let dir = tempfile::tempdir().unwrap();
        let store = FleetStore::open(&dir.path().join("tenement.db")).unwrap();
        assert_eq!(
            store.name(),
            dir.path().join("tenement.db").display().to_string()
        );
        let conf = tenement_conf::Fleet {
            health_interval: std::time::Duration::from_secs(60),
            degraded_latency: std::time::Duration::from_secs(1),
            ..tenement_conf::Fleet::default()
        };
        (dir, Fleet::new(store, conf, Arc::new(|_: &str| {})))
    }

    #[test]
    fn a_health_only_publish_shares_the_tenants_and_keeps_the_routing_generation() {
        let (_dir, f) = fleet();
        f.add_server(&NewServer {
            id: "s1".into(),
            url: "http://127.0.0.1:9".into(),
            domain: Some("s1.example.com".into()),
            ..NewServer::default()
        })
        .unwrap();
        f.add_tenant(&Tenant {
            id: "acme".into(),
            domain: "acme.com".into(),
            server: "s1".into(),
            process: "app".into(),
            instance: "acme".into(),
        })
        .unwrap();
        let before = f.view();
        assert_eq!(before.tenant("acme").unwrap().domain, "acme.com");
        assert_eq!(before.server("s1").unwrap().server.id, "s1");
        // Latency only: a new generation, the same routing, the same tenant list.
        {
            let mut rt = f.inner.lock();
            rt.health.get_mut("s1").unwrap().latency_ms = Some(3);
            f.inner.republish(&mut rt);
        }
        let after = f.view();
        assert!(after.generation > before.generation);
        assert_eq!(after.routing, before.routing);
        assert!(Arc::ptr_eq(&after.tenants, &before.tenants));
        assert_eq!(after.server("s1").unwrap().latency_ms, Some(3));
        // A status change routes differently.
        {
            let mut rt = f.inner.lock();
            rt.health.get_mut("s1").unwrap().status = Status::Offline;
            f.inner.republish(&mut rt);
        }
        let down = f.view();
        assert_eq!(down.routing, down.generation);
        assert!(down.routing > after.routing);
        assert!(Arc::ptr_eq(&down.tenants, &before.tenants));
    }

    #[test]
    fn every_write_publishes_without_being_asked() {
        let (_dir, f) = fleet();
        let g0 = f.view().generation;
        f.add_server(&NewServer {
            id: "s1".into(),
            url: "http://127.0.0.1:9".into(),
            domain: Some("s1.example.com".into()),
            ..NewServer::default()
        })
        .unwrap();
        f.add_server(&NewServer {
            id: "s2".into(),
            url: "https://s2.example.com".into(),
            ..NewServer::default()
        })
        .unwrap();
        let v = f.view();
        assert!(v.generation > g0);
        assert_eq!(v.server("s1").unwrap().status, Status::Unknown);
        let t = f
            .add_tenant(&Tenant {
                id: "acme".into(),
                domain: "ACME.com".into(),
                server: "s1".into(),
                process: "app".into(),
                instance: "acme".into(),
            })
            .unwrap();
        assert_eq!(f.view().tenant_by_domain("acme.com"), Some(&t));
        let moved = f.migrate_tenant("acme", "s2").unwrap();
        assert_eq!(moved.server, "s2");
        assert_eq!(f.view().tenant_by_domain("acme.com").unwrap().server, "s2");
        // A refused write publishes nothing.
        let g = f.view().generation;
        assert!(matches!(
            f.remove_server("s2"),
            Err(FleetError::Conflict(_))
        ));
        assert_eq!(f.view().generation, g);
        f.remove_tenant("acme").unwrap();
        assert!(f.view().tenants.is_empty());
        f.remove_server("s2").unwrap();
        let ids: Vec<_> = f
            .view()
            .servers
            .iter()
            .map(|s| s.server.id.clone())
            .collect();
        assert_eq!(ids, ["s1"]);
    }
}
