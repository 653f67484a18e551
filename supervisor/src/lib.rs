//! The supervisor: spawns instances, waits for readiness, checks health, restarts with
//! backoff, stops idle instances and wakes them, drains and stops; health-checks external
//! upstreams; keeps the desired state (instances and weights) in SQLite so a restart of
//! `ten serve` brings them back.
//!
//! It publishes what routing reads as numbered [`RoutingView`]s (see [`registry`] for the
//! protocol); the `ten` binary builds routing tables from them and acknowledges each
//! generation, and every call here that changes routing returns only once the table that
//! contains its change is live. It never touches the proxy: in-flight counts and last-request
//! times come in through the [`TrafficProbe`] trait.

mod backoff;
mod blocking;
mod cgroup;
mod child;
mod error;
mod externals;
mod guard;
mod handover;
mod identity;
pub mod logs;
mod namespace;
mod orphans;
mod owner;
mod policy;
pub mod probe;
mod registry;
mod resource;
mod runner;
mod state;
mod storage;
mod time;
mod view;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};

use tenement_conf::{Config, InstanceName};

pub use backoff::{Backoff, BackoffError};
pub use blocking::blocking;
pub use child::HandedPipe;
pub use child::{describe_exit, instance_data_dir, LogSink, Stream, Tail, TracingSink};
pub use error::Error;
pub use handover::{Handed, Handover, ADOPTED_EXIT};
pub use runner::UNHEALTHY_AFTER;
pub use state::{Persisted, StateError, StateStore};
/// The SQLite opener (the `tenement-db` crate), for the binary's own tables.
pub use tenement_db as db;
pub use view::{InstanceView, Kind, Routed, RoutingView, State, Status, TrafficProbe, View};

use registry::{Registry, Slot};
use runner::{Runner, Stop};

/// The supervisor handle (cheap to clone).
#[derive(Clone)]
pub struct Supervisor {
    reg: Arc<Registry>,
}

impl Supervisor {
    /// `store`: where desired state is kept (None: nothing persists, for tests).
    pub fn new(
        config: Arc<Config>,
        traffic: Arc<dyn TrafficProbe>,
        sink: Arc<dyn LogSink>,
        store: Option<StateStore>,
    ) -> Self {
        Supervisor {
            reg: Arc::new(Registry::new(config, traffic, sink, store)),
        }
    }

    /// The running config: the one `ten serve` started with, or the last one a reload applied.
    pub fn config(&self) -> Arc<Config> {
        self.reg.config()
    }

    /// Replace the running config (a reload). Running instances keep the process definition
    /// they were started with; spawns, drains and health intervals read the new one from now on.
    pub fn set_config(&self, config: Arc<Config>) {
        self.reg.set_config(config);
    }

    /// Routing views as they change. The caller builds a table from each and calls
    /// [`Supervisor::acknowledge`] with its generation once it is live: from then on, calls
    /// that change routing wait for that acknowledgement before they return.
    pub fn follow(&self) -> watch::Receiver<Arc<RoutingView>> {
        self.reg.follow()
    }

    /// The table built from routing view `generation` (or a later one) is live.
    pub fn acknowledge(&self, generation: u64) {
        self.reg.acknowledge(generation);
    }

    /// Wait until the table that contains every change made so far is live.
    pub async fn settle(&self) {
        self.reg.settle(self.reg.generation()).await;
    }

    /// Every instance with its status, in spawn order (external upstreams last).
    pub fn view(&self) -> Arc<View> {
        Arc::new(self.reg.view())
    }

    /// One instance's current view.
    pub fn instance(&self, name: &InstanceName) -> Option<InstanceView> {
        self.reg.instance(name)
    }

    /// An event of `ten` itself about an instance: to the log store (process "ten") and tracing.
    pub fn event(&self, name: &InstanceName, what: &str) {
        self.reg.event(name, what);
    }

    /// Spawn `name` with `weight` and wait until it is ready (accepts connections, or answers
    /// its health path 2xx) within startup_timeout. On failure it is killed and forgotten and
    /// the error carries its last output lines.
    pub async fn spawn(&self, name: &InstanceName, weight: u32) -> Result<InstanceView, Error> {
        self.spawn_with(name, weight, None).await
    }

    /// `spawn` with another startup timeout (a deploy's `--timeout`).
    pub async fn spawn_with(
        &self,
        name: &InstanceName,
        weight: u32,
        startup_timeout: Option<Duration>,
    ) -> Result<InstanceView, Error> {
        let r = self.spawn_inner(name, weight, startup_timeout, false).await;
        self.settle().await;
        r
    }

    /// `boot`: a desired instance started by `ten serve`; a failed first start is reported but
    /// the instance stays (retried per its `restart` policy, or `failed`), as after a crash.
    async fn spawn_inner(
        &self,
        name: &InstanceName,
        weight: u32,
        startup_timeout: Option<Duration>,
        boot: bool,
    ) -> Result<InstanceView, Error> {
        let reg = &self.reg;
        if reg.shutting_down.load(Ordering::Relaxed) {
            return Err(Error::ShuttingDown);
        }
        if reg.frozen.load(Ordering::Acquire) {
            return Err(Error::Upgrading);
        }
        let mut process = reg
            .config()
            .process(&name.process)
            .ok_or_else(|| Error::UnknownProcess(name.process.clone()))?
            .clone();
        if let Some(t) = startup_timeout {
            process.startup_timeout = t;
        }
        if process.is_external() {
            return Err(Error::External(name.process.clone()));
        }
        let (stop_tx, stop_rx) = watch::channel(Stop::No);
        let stop_rx_guard = stop_rx.clone();
        let (done_tx, done_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        {
            // Checked and taken under one lock: two spawns of one name never both pass. A slot
            // reserved at boot keeps its place; any other is a conflict.
            let mut slots = reg.slots();
            let seq = match slots.get(name) {
                Some(s) if s.reserved => s.seq,
                Some(_) => return Err(Error::AlreadyRunning(name.to_string())),
                None => reg.next_seq(),
            };
            let mut slot = Slot::new(name, Kind::Spawned, weight, seq, false);
            slot.stop = stop_tx;
            slot.wake = wake.clone();
            slot.done = done_rx;
            slots.insert(name.clone(), slot);
            reg.publish_slots(&slots);
        }
        let runner = Runner {
            reg: reg.clone(),
            name: name.clone(),
            process,
            stop: stop_rx,
            wake,
            tail: Arc::new(Tail::default()),
            boot,
        };
        // Recorded before the start, so the process group it runs in is recorded too.
        let new_row = match &reg.store {
            Some(store) => blocking(|| store.upsert(name, weight)).unwrap_or_else(|e| {
                tracing::error!("{e}");
                false
            }),
            None => false,
        };
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(guard::supervise(
            reg.clone(),
            name.clone(),
            stop_rx_guard,
            runner.run(first_tx),
            done_tx,
        ));
        match first_rx.await {
            Ok(Ok(())) => self
                .instance(name)
                .ok_or_else(|| Error::UnknownInstance(name.to_string())),
            Ok(Err(e)) => {
                if new_row && !boot {
                    reg.persist(|s| s.remove(name)); // a failed spawn changes nothing
                }
                Err(e)
            }
            Err(_) => Err(Error::Spawn(format!(
                "{name}: the instance task ended unexpectedly"
            ))),
        }
    }

    /// Stop: out of routing at once, in-flight requests drain (<= drain_timeout), SIGTERM to
    /// the group, SIGKILL after stop_timeout; socket removed; forgotten from the desired state.
    pub async fn stop(&self, name: &InstanceName) -> Result<(), Error> {
        self.stop_with(name, true).await
    }

    /// Stop like [`Supervisor::stop`] but keep it desired and keep its DATA_DIR: it is about
    /// to be started again (a reload replacing it).
    pub async fn stop_keeping(&self, name: &InstanceName) -> Result<(), Error> {
        self.stop_with(name, false).await
    }

    async fn stop_with(&self, name: &InstanceName, forget: bool) -> Result<(), Error> {
        let reg = &self.reg;
        let done = {
            let mut slots = reg.slots();
            let slot = slots
                .get(name)
                .ok_or_else(|| Error::UnknownInstance(name.to_string()))?;
            if slot.routed.kind == Kind::External && forget {
                return Err(Error::External(name.process.clone()));
            }
            if slot.reserved {
                // Announced at boot, never started: nothing to stop.
                slots.remove(name);
                None
            } else {
                slot.stop.send_replace(Stop::Yes { forget });
                Some(slot.done.clone())
            }
        };
        let Some(mut done) = done else {
            if forget {
                reg.persist(|s| s.remove(name));
            }
            let generation = reg.publish();
            reg.settle(generation).await;
            return Ok(());
        };
        if done.wait_for(|d| *d).await.is_err() {
            // Never silently "stopped": the guard always reports done (see `guard`).
            return Err(Error::Spawn(format!(
                "{name}: its supervising task ended without reporting; it may still be running"
            )));
        }
        self.settle().await;
        let process = reg.config().process(&name.process).cloned();
        if forget && process.is_some_and(|p| !p.storage_persist) {
            let dir = instance_data_dir(&reg.data_dir, name);
            match std::fs::remove_dir_all(&dir) {
                // Nothing of it is left for a later holder of its dynamic uid to read.
                Ok(()) => reg.release_uid(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => reg.release_uid(name),
                Err(e) => reg.warn(
                    name,
                    &format!("cannot remove its DATA_DIR {}: {e}", dir.display()),
                ),
            }
        }
        Ok(())
    }

    /// Stop and start again with the same weight (the restart count carries on).
    pub async fn restart(&self, name: &InstanceName) -> Result<InstanceView, Error> {
        let view = self
            .instance(name)
            .ok_or_else(|| Error::UnknownInstance(name.to_string()))?;
        if view.kind == Kind::External {
            return Err(Error::External(name.process.clone()));
        }
        self.stop_with(name, false).await?;
        self.spawn(name, view.weight).await?;
        self.reg
            .status(name, |s| s.restarts = view.restarts.saturating_add(1));
        self.instance(name)
            .ok_or_else(|| Error::UnknownInstance(name.to_string()))
    }

    /// Set weights of several instances (spawned or external) at once: ONE published view, so
    /// ONE table swap; returns once that table is live. Err([`Error::State`]) if the weights
    /// are live but could not be saved.
    pub async fn set_weights(&self, weights: &[(InstanceName, u32)]) -> Result<(), Error> {
        let reg = &self.reg;
        let (generation, external) = {
            let mut slots = reg.slots();
            if let Some((missing, _)) = weights.iter().find(|(n, _)| !slots.contains_key(n)) {
                return Err(Error::UnknownInstance(missing.to_string()));
            }
            let mut external = Vec::new();
            for (n, w) in weights {
                if let Some(slot) = slots.get_mut(n) {
                    if slot.routed.weight != *w {
                        Arc::make_mut(&mut slot.routed).weight = *w;
                    }
                    external.push(slot.routed.kind == Kind::External);
                }
            }
            (reg.publish_slots(&slots), external)
        };
        reg.settle(generation).await;
        let (ext, spawned): (Vec<_>, Vec<_>) = weights
            .iter()
            .zip(external)
            .partition(|(_, is_external)| *is_external);
        let spawned: Vec<_> = spawned.into_iter().map(|(w, _)| w.clone()).collect();
        // Live already; a weight that could not be saved (after the store's busy retries)
        // is the caller's error, not only a log line: it would revert at the next start.
        if let Some(store) = &reg.store {
            if !spawned.is_empty() {
                blocking(|| store.set_weights(&spawned))?;
            }
            for ((name, w), _) in ext {
                blocking(|| store.set_external_weight(name, *w))?;
            }
        }
        Ok(())
    }

    /// Wake an idle-stopped instance and wait until it is healthy and routed. Concurrent
    /// callers share one wake.
    pub async fn wake(&self, name: &InstanceName) -> Result<(), Error> {
        let reg = &self.reg;
        let mut views = reg.subscribe();
        let timeout = reg
            .config()
            .process(&name.process)
            .map(|p| p.startup_timeout)
            .unwrap_or(Duration::from_secs(10))
            .saturating_add(Duration::from_secs(5));
        {
            let slots = reg.slots();
            let slot = slots
                .get(name)
                .ok_or_else(|| Error::UnknownInstance(name.to_string()))?;
            match (slot.routed.state, slot.routed.idle) {
                (State::Healthy, _) => {}
                // Stopping or stopped for idleness: one permit, taken when the runner waits.
                // (Starting while idle means a wake is already under way: share it.)
                (State::Stopped | State::Draining, true) => slot.wake.notify_one(),
                _ => {}
            }
        }
        let woke = tokio::time::timeout(timeout, async {
            loop {
                let (generation, state) = {
                    let v = views.borrow_and_update();
                    let state = v
                        .instances
                        .iter()
                        .find(|r| &r.name == name)
                        .map(|r| r.state);
                    (v.generation, state)
                };
                match state {
                    Some(State::Healthy) => {
                        reg.settle(generation).await;
                        return Ok(());
                    }
                    None => return Err("it was stopped".to_string()),
                    Some(State::Failed) => return Err("it failed to start".to_string()),
                    _ => {}
                }
                if views.changed().await.is_err() {
                    return Err("shutting down".to_string());
                }
            }
        })
        .await;
        match woke {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Wake(name.to_string(), e)),
            Err(_) => Err(Error::Wake(name.to_string(), "not healthy in time".into())),
        }
    }

    /// At start, before the listeners open: kill what a crashed `ten serve` left running,
    /// announce the desired instances (persisted ones in their order with their weights, then
    /// `[instances]` of the config not already there) as `starting`, so their hosts answer 503,
    /// not 404, until each is up; resolve the external upstreams and start their health
    /// checks. Returns the instances for [`Supervisor::start_desired`].
    pub async fn prepare(&self) -> Vec<(InstanceName, u32)> {
        self.prepare_with(&[]).await
    }

    /// [`Supervisor::prepare`], except that the groups of `adopted` (name, pid) are not
    /// orphans: a new ten takes them over (an upgrade).
    async fn prepare_with(&self, adopted: &[(InstanceName, u32)]) -> Vec<(InstanceName, u32)> {
        let reg = &self.reg;
        let persisted = match &reg.store {
            Some(store) => store.load().unwrap_or_else(|e| {
                tracing::error!("{e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let orphans: Vec<_> = persisted
            .iter()
            .filter(|p| {
                !adopted
                    .iter()
                    .any(|(n, pid)| *n == p.name && p.pgid == Some(*pid))
            })
            .cloned()
            .collect();
        orphans::kill(&orphans);
        // Controllers on ten's cgroup before any instance is forked into it (review S2).
        let config = reg.config();
        let limits = config
            .processes
            .iter()
            .any(|p| p.memory_limit_mb.is_some() || p.cpu_shares.is_some());
        if let Err(e) = cgroup::setup(limits) {
            tracing::warn!("memory_limit_mb/cpu_shares not applied: {e}");
        }
        let mut wanted: Vec<(InstanceName, u32)> = Vec::new();
        for p in persisted {
            let known = config
                .process(&p.name.process)
                .is_some_and(|pr| !pr.is_external());
            if known {
                wanted.push((p.name, p.weight));
            } else {
                tracing::warn!(instance = %p.name, "no longer in the config: forgotten");
                reg.persist(|s| s.remove(&p.name));
            }
        }
        for name in &config.instances {
            if !wanted.iter().any(|(n, _)| n == name) {
                wanted.push((name.clone(), 100));
            }
        }
        self.prepare_externals().await;
        // Announce them all at once (state starting: 503, not 404, until each is up).
        {
            let mut slots = reg.slots();
            for (name, weight) in &wanted {
                if !slots.contains_key(name) {
                    let slot = Slot::new(name, Kind::Spawned, *weight, reg.next_seq(), true);
                    slots.insert(name.clone(), slot);
                }
            }
            reg.publish_slots(&slots);
        }
        wanted
    }

    /// External upstreams: resolved once now (so they route from the first request), with
    /// their persisted weights (default 100), then health-checked by their own runners.
    async fn prepare_externals(&self) {
        let config = self.reg.config();
        for p in config.processes.iter().filter(|p| p.is_external()) {
            // Published with the boot announcement, in one view.
            self.add_external(p).await;
        }
    }

    /// Start the upstreams of external process `p` added by a reload; returns once they route.
    pub async fn start_external(&self, p: &tenement_conf::Process) {
        self.add_external(p).await;
        let generation = self.reg.publish();
        self.reg.settle(generation).await;
    }

    /// Resolve `p`'s upstreams and start their health checks; their slots are inserted without
    /// publishing a view.
    async fn add_external(&self, p: &tenement_conf::Process) {
        let reg = &self.reg;
        let weights = reg
            .store
            .as_ref()
            .and_then(|s| s.external_weights().ok())
            .unwrap_or_default();
        for (i, u) in p.upstreams.iter().enumerate() {
            let name = InstanceName {
                process: p.name.clone(),
                id: i.to_string(),
            };
            let weight = weights
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(100, |(_, w)| *w);
            let addr = match externals::resolve(u).await {
                Ok(a) => Some(a),
                Err(why) => {
                    let upstream = match u {
                        tenement_conf::Upstream::Tcp(hp) => hp.clone(),
                        tenement_conf::Upstream::Unix(p) => p.display().to_string(),
                    };
                    tracing::error!(%upstream, "cannot resolve upstream address; it is left out of routing ({why})");
                    None
                }
            };
            let (stop_tx, stop_rx) = watch::channel(Stop::No);
            let (done_tx, done_rx) = watch::channel(false);
            let mut slot = Slot::new(&name, Kind::External, weight, reg.next_seq(), false);
            {
                let r = Arc::make_mut(&mut slot.routed);
                r.state = externals::initial_state(&addr);
                r.addr = addr.clone();
            }
            slot.stop = stop_tx;
            slot.done = done_rx;
            reg.slots().insert(name.clone(), slot);
            tokio::spawn(externals::run(
                reg.clone(),
                externals::Upstream {
                    name,
                    upstream: u.clone(),
                    health: p.health.clone(),
                    addr,
                },
                stop_rx,
                done_tx,
            ));
        }
    }

    /// Stop an external upstream's health checks and take it out of routing (a reload that
    /// removed or changed its process); its persisted weight is kept.
    pub async fn stop_external(&self, name: &InstanceName) -> Result<(), Error> {
        self.stop_with(name, false).await
    }

    /// Spawn what [`Supervisor::prepare`] announced, in order. A failed start is logged and
    /// treated like a crash (review M6): the instance stays listed, retried with backoff per
    /// its `restart` policy (or `failed` with `restart = "never"`); the others still start.
    pub async fn start_desired(&self, wanted: Vec<(InstanceName, u32)>) {
        for (name, weight) in wanted {
            if self.reg.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            let r = self.spawn_inner(&name, weight, None, true).await;
            self.settle().await;
            if let Err(e) = r {
                tracing::error!("boot: {e} (it stays desired: retried per its restart policy)");
            }
        }
    }

    /// Refuse new spawns, then stop every instance concurrently (keeping the desired state).
    pub async fn stop_all(&self) {
        self.reg.shutting_down.store(true, Ordering::Relaxed);
        let names: Vec<_> = self.reg.slots().keys().cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for n in names {
            let me = self.clone();
            tasks.spawn(async move { me.stop_with(&n, false).await });
        }
        while tasks.join_next().await.is_some() {}
    }
}
