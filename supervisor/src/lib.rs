//! The supervisor: spawns instances, waits for readiness, checks health, restarts with
//! backoff, stops idle instances and wakes them, drains and stops; keeps the desired state
//! (instances and weights) in SQLite so a restart of `ten serve` brings them back.
//!
//! It publishes a plain [`View`] of its instances through a `watch` channel; the `ten` binary's
//! composer turns views into routing tables. It never touches the proxy: in-flight counts and
//! last-request times come in through the [`TrafficProbe`] trait.

mod backoff;
mod cgroup;
mod child;
pub mod db;
pub mod logs;
mod orphans;
pub mod probe;
mod runner;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};

use tenement_conf::{Config, InstanceName, Process};

pub use backoff::{Backoff, BackoffError};
pub use child::{describe_exit, instance_data_dir, LogSink, Stream, Tail, TracingSink};
pub use probe::Addr;
pub use runner::UNHEALTHY_AFTER;
pub use state::{Persisted, StateError, StateStore};

/// Runs blocking work (a SQLite write, which may wait for an fsync) from code that may be on a
/// tokio worker thread, which is also the proxy's: on a multi-thread runtime the worker hands
/// its other tasks to another thread while `f` blocks, so a weight change or a deploy never
/// stalls requests in flight (BENCHMARKS.md, weights changing 10 times per second). Elsewhere
/// (no runtime, a current-thread runtime) `f` simply runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

use runner::{Runner, Stop};

/// Supervisor errors, each naming the instance and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown process \"{0}\" (not in the config)")]
    UnknownProcess(String),
    #[error("unknown instance {0}")]
    UnknownInstance(String),
    #[error("process \"{0}\" is external (upstreams): ten does not spawn or stop it")]
    External(String),
    #[error("instance {0} already exists")]
    AlreadyRunning(String),
    #[error("{0}")]
    Spawn(String),
    #[error("instance {name} did not become healthy: {reason}{}", tail_text(.tail))]
    StartupFailed {
        name: String,
        reason: String,
        tail: Vec<String>,
    },
    #[error("instance {0} could not be woken: {1}")]
    Wake(String, String),
    #[error("ten is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    State(#[from] StateError),
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        " (it printed nothing)".into()
    } else {
        format!("\nlast lines of its output:\n  {}", tail.join("\n  "))
    }
}

/// Instance states (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Healthy,
    Unhealthy,
    Draining,
    Stopped,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Draining => "draining",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// One instance, as published.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub name: InstanceName,
    pub state: State,
    pub weight: u32,
    pub pid: Option<u32>,
    pub addr: Option<Addr>,
    pub started: Option<Instant>,
    pub restarts: u32,
    /// Stopped for idleness: a request wakes it.
    pub idle: bool,
    /// Why it is not healthy, when known.
    pub last_error: Option<String>,
    /// Size of its DATA_DIR at the last check (when `storage_quota_mb` is set).
    pub storage_bytes: Option<u64>,
}

/// Every instance, in spawn order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub instances: Vec<InstanceView>,
}

/// What the supervisor learns from the proxy.
pub trait TrafficProbe: Send + Sync + 'static {
    fn in_flight(&self, name: &InstanceName) -> u64;
    /// When the last request to it started, if any.
    fn last_request(&self, name: &InstanceName) -> Option<Instant>;
}

struct Slot {
    view: InstanceView,
    seq: u64,
    stop: watch::Sender<Stop>,
    wake: Arc<Notify>,
    done: watch::Receiver<bool>,
    storage_warned: u8,
    /// Announced at boot, not spawned yet (no runner behind it).
    reserved: bool,
}

fn new_view(name: &InstanceName, weight: u32) -> InstanceView {
    InstanceView {
        name: name.clone(),
        state: State::Starting,
        weight,
        pid: None,
        addr: None,
        started: None,
        restarts: 0,
        idle: false,
        last_error: None,
        storage_bytes: None,
    }
}

struct Inner {
    config: Arc<Config>,
    data_dir: PathBuf,
    slots: Mutex<BTreeMap<InstanceName, Slot>>,
    seq: AtomicU64,
    view_tx: watch::Sender<Arc<View>>,
    traffic: Arc<dyn TrafficProbe>,
    sink: Arc<dyn LogSink>,
    store: Option<StateStore>,
    shutting_down: AtomicBool,
    on_publish: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The supervisor handle (cheap to clone).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

const TEN: &str = "ten";

impl Supervisor {
    /// `store`: where desired state is kept (None: nothing persists, for tests).
    pub fn new(
        config: Arc<Config>,
        traffic: Arc<dyn TrafficProbe>,
        sink: Arc<dyn LogSink>,
        store: Option<StateStore>,
    ) -> Self {
        let (view_tx, _) = watch::channel(Arc::new(View::default()));
        Supervisor {
            inner: Arc::new(Inner {
                data_dir: config.settings.data_dir.clone(),
                config,
                slots: Mutex::new(BTreeMap::new()),
                seq: AtomicU64::new(0),
                view_tx,
                traffic,
                sink,
                store,
                shutting_down: AtomicBool::new(false),
                on_publish: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// Views as they change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.inner.view_tx.subscribe()
    }

    pub fn view(&self) -> Arc<View> {
        self.inner.view_tx.borrow().clone()
    }

    /// One instance's current view.
    pub fn instance(&self, name: &InstanceName) -> Option<InstanceView> {
        self.slots().get(name).map(|s| s.view.clone())
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<InstanceName, Slot>> {
        // Every update under this lock is a single insert/remove/field store, so a panic
        // elsewhere cannot leave the map half-written: a poisoned lock is safe to keep using.
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish the current view, then tell the listener (the composer) before returning: an
    /// API call that changed something answers only once the new routing table is live.
    fn publish(&self) {
        {
            // Built and sent under the lock: views are published in the order they were made.
            let slots = self.slots();
            let mut v: Vec<_> = slots.values().map(|s| (s.seq, s.view.clone())).collect();
            v.sort_by_key(|(seq, _)| *seq);
            let view = View {
                instances: v.into_iter().map(|(_, v)| v).collect(),
            };
            self.inner.view_tx.send_replace(Arc::new(view));
        }
        if let Some(hook) = self.inner.on_publish.get() {
            hook();
        }
    }

    /// Call `hook` after every published change (once; later calls are ignored).
    pub fn on_publish(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.inner.on_publish.set(Box::new(hook));
    }

    fn update(&self, name: &InstanceName, f: impl FnOnce(&mut InstanceView)) {
        if let Some(slot) = self.slots().get_mut(name) {
            f(&mut slot.view);
        }
        self.publish();
    }

    fn persist(&self, f: impl FnOnce(&StateStore) -> Result<(), StateError>) {
        if let Some(store) = &self.inner.store {
            if let Err(e) = blocking(|| f(store)) {
                tracing::error!("{e}");
            }
        }
    }

    // --- used by the runner ---

    pub(crate) fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub(crate) fn sink(&self) -> Arc<dyn LogSink> {
        self.inner.sink.clone()
    }

    pub(crate) fn health_interval(&self) -> Duration {
        self.inner.config.settings.health_check_interval
    }

    /// An event of `ten` itself about an instance: to the log store (process "ten") and tracing.
    pub fn event(&self, name: &InstanceName, what: &str) {
        tracing::info!(instance = %name, "{what}");
        self.ten_line(Stream::Stdout, &format!("{name}: {what}"));
    }

    pub(crate) fn warn(&self, name: &InstanceName, what: &str) {
        tracing::warn!(instance = %name, "{what}");
        self.ten_line(Stream::Stderr, &format!("{name}: warning: {what}"));
    }

    fn ten_line(&self, stream: Stream, line: &str) {
        let me = InstanceName {
            process: TEN.into(),
            id: "serve".into(),
        };
        self.inner.sink.line(&me, stream, line);
    }

    pub(crate) fn set_state(&self, name: &InstanceName, state: State, error: Option<String>) {
        self.update(name, |v| {
            v.state = state;
            // An idle instance stays wakeable while it stops and while it starts again.
            if matches!(state, State::Healthy | State::Failed | State::Unhealthy) {
                v.idle = false;
            }
            if state == State::Healthy {
                v.last_error = None;
            } else if error.is_some() {
                v.last_error = error;
            }
        });
    }

    pub(crate) fn set_last_error(&self, name: &InstanceName, error: String) {
        self.update(name, |v| v.last_error = Some(error));
    }

    pub(crate) fn set_started(&self, name: &InstanceName, pid: u32, addr: Addr) {
        self.update(name, |v| {
            v.pid = Some(pid);
            v.addr = Some(addr);
            v.started = Some(Instant::now());
        });
        self.persist(|s| s.set_pgid(name, Some(pid)));
    }

    pub(crate) fn clear_pid(&self, name: &InstanceName) {
        self.update(name, |v| {
            v.pid = None;
            v.started = None;
        });
        self.persist(|s| s.set_pgid(name, None));
    }

    /// It is about to stop for idleness: from now on a request wakes it instead of failing.
    pub(crate) fn mark_idle(&self, name: &InstanceName) {
        self.update(name, |v| v.idle = true);
    }

    pub(crate) fn set_idle(&self, name: &InstanceName) {
        self.update(name, |v| {
            v.state = State::Stopped;
            v.idle = true;
            v.pid = None;
            v.started = None;
        });
        self.persist(|s| s.set_pgid(name, None));
    }

    pub(crate) fn count_restart(&self, name: &InstanceName) {
        self.update(name, |v| v.restarts += 1);
    }

    /// The runner is done: forget the slot (and the desired state when `forget`).
    pub(crate) fn finish(&self, name: &InstanceName, forget: bool) {
        self.event(name, "stopped");
        if forget {
            self.persist(|s| s.remove(name));
        } else {
            self.persist(|s| s.set_pgid(name, None));
        }
        self.forget_slot(name);
    }

    pub(crate) fn forget_slot(&self, name: &InstanceName) {
        self.slots().remove(name);
        self.publish();
    }

    /// Wait until no request is in flight on `name` (at most drain_timeout).
    pub(crate) async fn drain(&self, name: &InstanceName) {
        let deadline = Instant::now() + self.inner.config.settings.drain_timeout;
        while self.inner.traffic.in_flight(name) > 0 {
            if Instant::now() >= deadline {
                self.warn(name, "drain_timeout reached with requests in flight");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// No request in flight and none started for `idle_timeout` (counting from `since`).
    pub(crate) fn is_idle(
        &self,
        name: &InstanceName,
        since: Instant,
        idle_timeout: Duration,
    ) -> bool {
        let t = &self.inner.traffic;
        let last = t.last_request(name).map_or(since, |l| l.max(since));
        t.in_flight(name) == 0 && last.elapsed() >= idle_timeout
    }

    /// storage_quota_mb: a warning at 80 % and at 100 % (once each until it drops back).
    pub(crate) fn check_storage(&self, name: &InstanceName, process: &Process) {
        let Some(quota_mb) = process.storage_quota_mb else {
            return;
        };
        let used = dir_size(&instance_data_dir(&self.inner.data_dir, name));
        let quota = quota_mb * 1024 * 1024;
        let level = if used >= quota {
            2
        } else {
            u8::from(used * 5 >= quota * 4)
        };
        let warn = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            slot.view.storage_bytes = Some(used);
            let warn = level > slot.storage_warned;
            slot.storage_warned = level;
            warn
        };
        self.publish();
        if warn {
            let pct = used * 100 / quota.max(1);
            self.warn(
                name,
                &format!("DATA_DIR uses {used} bytes, {pct}% of storage_quota_mb {quota_mb}"),
            );
        }
    }

    // --- the API ---

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
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(Error::ShuttingDown);
        }
        let mut process = self
            .inner
            .config
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
        let (done_tx, done_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        {
            let mut slots = self.slots();
            // A slot reserved at boot keeps its place; any other is a conflict.
            let seq = match slots.get(name) {
                Some(s) if s.reserved => s.seq,
                Some(_) => return Err(Error::AlreadyRunning(name.to_string())),
                None => self.inner.seq.fetch_add(1, Ordering::Relaxed),
            };
            slots.insert(
                name.clone(),
                Slot {
                    view: new_view(name, weight),
                    seq,
                    stop: stop_tx,
                    wake: wake.clone(),
                    done: done_rx,
                    storage_warned: 0,
                    reserved: false,
                },
            );
        }
        self.publish();
        let runner = Runner {
            sup: self.clone(),
            name: name.clone(),
            process,
            stop: stop_rx,
            wake,
            tail: Arc::new(Tail::default()),
        };
        // Recorded before the start, so the process group it runs in is recorded too.
        let new_row = match &self.inner.store {
            Some(store) => blocking(|| store.upsert(name, weight)).unwrap_or_else(|e| {
                tracing::error!("{e}");
                false
            }),
            None => false,
        };
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(async move {
            runner.run(first_tx).await;
            let _ = done_tx.send(true);
        });
        match first_rx.await {
            Ok(Ok(())) => self
                .instance(name)
                .ok_or_else(|| Error::UnknownInstance(name.to_string())),
            Ok(Err(e)) => {
                if new_row {
                    self.persist(|s| s.remove(name)); // a failed spawn changes nothing
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

    async fn stop_with(&self, name: &InstanceName, forget: bool) -> Result<(), Error> {
        let mut done = {
            let mut slots = self.slots();
            let slot = slots
                .get(name)
                .ok_or_else(|| Error::UnknownInstance(name.to_string()))?;
            if slot.reserved {
                // Announced at boot, never started: nothing to stop.
                slots.remove(name);
                drop(slots);
                if forget {
                    self.persist(|s| s.remove(name));
                }
                self.publish();
                return Ok(());
            }
            slot.stop.send_replace(Stop::Yes { forget });
            slot.done.clone()
        };
        let _ = done.wait_for(|d| *d).await;
        let process = self.inner.config.process(&name.process);
        if forget && process.is_some_and(|p| !p.storage_persist) {
            let _ = std::fs::remove_dir_all(instance_data_dir(&self.inner.data_dir, name));
        }
        Ok(())
    }

    /// Stop and start again with the same weight (the restart count carries on).
    pub async fn restart(&self, name: &InstanceName) -> Result<InstanceView, Error> {
        let view = self
            .instance(name)
            .ok_or_else(|| Error::UnknownInstance(name.to_string()))?;
        self.stop_with(name, false).await?;
        self.spawn(name, view.weight).await?;
        self.update(name, |v| v.restarts = view.restarts + 1);
        self.instance(name)
            .ok_or_else(|| Error::UnknownInstance(name.to_string()))
    }

    /// Set weights of several instances at once: ONE published view, so ONE table swap.
    pub fn set_weights(&self, weights: &[(InstanceName, u32)]) -> Result<(), Error> {
        {
            let mut slots = self.slots();
            if let Some((missing, _)) = weights.iter().find(|(n, _)| !slots.contains_key(n)) {
                return Err(Error::UnknownInstance(missing.to_string()));
            }
            for (n, w) in weights {
                if let Some(slot) = slots.get_mut(n) {
                    slot.view.weight = *w;
                }
            }
        }
        self.publish();
        self.persist(|s| s.set_weights(weights));
        Ok(())
    }

    /// Wake an idle-stopped instance and wait until it is healthy. Concurrent callers share
    /// one wake.
    pub async fn wake(&self, name: &InstanceName) -> Result<(), Error> {
        let mut views = self.subscribe();
        let timeout = self
            .inner
            .config
            .process(&name.process)
            .map(|p| p.startup_timeout)
            .unwrap_or(Duration::from_secs(10))
            + Duration::from_secs(5);
        {
            let slots = self.slots();
            let slot = slots
                .get(name)
                .ok_or_else(|| Error::UnknownInstance(name.to_string()))?;
            match (slot.view.state, slot.view.idle) {
                (State::Healthy, _) => return Ok(()),
                // Stopping or stopped for idleness: one permit, taken when the runner waits.
                // (Starting while idle means a wake is already under way: share it.)
                (State::Stopped | State::Draining, true) => slot.wake.notify_one(),
                _ => {}
            }
        }
        let woke = tokio::time::timeout(timeout, async {
            loop {
                let state = views
                    .borrow_and_update()
                    .instances
                    .iter()
                    .find(|v| &v.name == name)
                    .map(|v| (v.state, v.idle));
                match state {
                    Some((State::Healthy, _)) => return Ok(()),
                    None => return Err("it was stopped".to_string()),
                    Some((State::Failed, _)) => return Err("it failed to start".to_string()),
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

    /// At start, before the listeners open: kill what a crashed `ten serve` left running, and
    /// announce the desired instances (persisted ones in their order with their weights, then
    /// `[instances]` of the config not already there) as `starting`, so their hosts answer 503,
    /// not 404, until each is up. Returns them for [`Supervisor::start_desired`].
    pub fn prepare(&self) -> Vec<(InstanceName, u32)> {
        let persisted = match &self.inner.store {
            Some(store) => store.load().unwrap_or_else(|e| {
                tracing::error!("{e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        orphans::kill(&persisted);
        let mut wanted: Vec<(InstanceName, u32)> = Vec::new();
        for p in persisted {
            let known = self
                .inner
                .config
                .process(&p.name.process)
                .is_some_and(|pr| !pr.is_external());
            if known {
                wanted.push((p.name, p.weight));
            } else {
                tracing::warn!(instance = %p.name, "no longer in the config: forgotten");
                self.persist(|s| s.remove(&p.name));
            }
        }
        for name in &self.inner.config.instances {
            if !wanted.iter().any(|(n, _)| n == name) {
                wanted.push((name.clone(), 100));
            }
        }
        // Announce them all at once (state starting: 503, not 404, until each is up).
        {
            let mut slots = self.slots();
            for (name, weight) in &wanted {
                let (stop, _) = watch::channel(Stop::No);
                let (_, done) = watch::channel(true);
                slots.entry(name.clone()).or_insert_with(|| Slot {
                    view: new_view(name, *weight),
                    seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
                    stop,
                    wake: Arc::new(Notify::new()),
                    done,
                    storage_warned: 0,
                    reserved: true,
                });
            }
        }
        self.publish();
        wanted
    }

    /// Spawn what [`Supervisor::prepare`] announced, in order. Failures are logged; the others
    /// still start.
    pub async fn start_desired(&self, wanted: Vec<(InstanceName, u32)>) {
        for (name, weight) in wanted {
            if self.inner.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = self.spawn(&name, weight).await {
                tracing::error!("boot: {e}");
            }
        }
    }

    /// Refuse new spawns, then stop every instance concurrently (keeping the desired state).
    pub async fn stop_all(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let names: Vec<_> = self.slots().keys().cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for n in names {
            let me = self.clone();
            tasks.spawn(async move { me.stop_with(&n, false).await });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Bytes under `dir` (files only; symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod blocking_tests {
    use super::blocking;

    #[test]
    fn runs_with_and_without_a_runtime() {
        assert_eq!(blocking(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { blocking(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        // On a worker, and from the runtime's own block_on.
        let on_worker = multi.block_on(async { tokio::spawn(async { blocking(|| 3) }).await });
        assert_eq!(on_worker.unwrap(), 3);
        assert_eq!(multi.block_on(async { blocking(|| 4) }), 4);
    }

    #[test]
    fn other_tasks_run_while_one_blocks() {
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        multi.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // Blocks its worker until the other task has run: with one worker, that task runs
            // only because the blocked one handed the worker over.
            let blocked = tokio::spawn(async move {
                blocking(|| rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok())
            });
            let other = tokio::spawn(async move { tx.send(()).is_ok() });
            assert!(other.await.unwrap());
            assert!(blocked.await.unwrap());
        });
    }
}
