//! The registry: every instance's slot, the routing views published from them, and the setters
//! the runners use. The [`crate::Supervisor`] is the public face over it; a runner holds an
//! `Arc<Registry>`, never a whole supervisor.
//!
//! Publishing: a change of what routing reads ([`Routed`]) publishes a numbered
//! [`RoutingView`] on a `watch` channel; the table publisher (in the `ten` binary) builds a
//! table from the latest view and acknowledges its generation. [`Registry::settle`] waits for
//! that acknowledgement, so an API call, a drain or a wake continues only once the table that
//! contains its change is live. Status changes ([`Status`]) publish nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use tenement_conf::{Config, InstanceName, DYNAMIC_UIDS};

use crate::blocking::blocking;
use crate::child::{LogSink, Pipes, Stream};
use crate::runner::Stop;
use crate::state::{StateError, StateStore};
use crate::view::{InstanceView, Kind, Routed, RoutingView, State, Status, TrafficProbe, View};
use crate::Error;

pub(crate) struct Slot {
    pub routed: Arc<Routed>,
    pub status: Status,
    /// Spawn order (a restart keeps its place).
    pub seq: u64,
    pub stop: watch::Sender<Stop>,
    pub wake: Arc<Notify>,
    pub done: watch::Receiver<bool>,
    pub storage_warned: u8,
    /// Announced at boot, not spawned yet (no runner behind it).
    pub reserved: bool,
    /// The output readers of its running process (an upgrade takes their pipes).
    pub pipes: Option<Pipes>,
    /// The cgroup its running process is in, when it has limits.
    pub cgroup: Option<PathBuf>,
}

impl Slot {
    /// A slot with no runner behind it yet (`done` already true).
    pub fn new(name: &InstanceName, kind: Kind, weight: u32, seq: u64, reserved: bool) -> Self {
        let (stop, _) = watch::channel(Stop::No);
        let (_, done) = watch::channel(true);
        Slot {
            routed: Arc::new(Routed {
                name: name.clone(),
                kind,
                state: State::Starting,
                weight,
                addr: None,
                idle: false,
            }),
            status: Status::default(),
            seq,
            stop,
            wake: Arc::new(Notify::new()),
            done,
            storage_warned: 0,
            reserved,
            pipes: None,
            cgroup: None,
        }
    }
}

const TEN: &str = "ten";

/// An adopted instance's pipes (and its tail), read once the new ten serves.
pub(crate) type Deferred = (
    InstanceName,
    Arc<crate::child::Tail>,
    Vec<crate::child::HandedPipe>,
);

/// Listing order: spawned instances in spawn order, then external upstreams.
fn order(s: &Slot) -> (bool, u64) {
    (s.routed.kind == Kind::External, s.seq)
}

pub(crate) struct Registry {
    /// The running config: replaced as a whole by a reload ([`Registry::set_config`]); a
    /// runner keeps the `Process` it was started with.
    config: RwLock<Arc<Config>>,
    pub data_dir: PathBuf,
    slots: Mutex<BTreeMap<InstanceName, Slot>>,
    seq: AtomicU64,
    /// Generation of the last published routing view (written under the slots lock).
    generation: AtomicU64,
    routing_tx: watch::Sender<Arc<RoutingView>>,
    /// The generation whose table is live, as acknowledged by the publisher.
    live_tx: watch::Sender<u64>,
    /// Someone builds tables from the views: [`Registry::settle`] waits for it.
    followed: AtomicBool,
    pub traffic: Arc<dyn TrafficProbe>,
    pub sink: Arc<dyn LogSink>,
    pub store: Option<StateStore>,
    pub shutting_down: AtomicBool,
    /// Dynamic uids handed out when there is no store (tests).
    dynamic: Mutex<BTreeMap<InstanceName, u32>>,
    /// An upgrade is handing the instances over: no new spawn until it ends.
    pub frozen: AtomicBool,
    /// The instances belong to a new ten now (an upgrade succeeded): runners end at their next
    /// step and touch nothing (no kill, no cleanup, no write to the desired state, no event).
    pub released: AtomicBool,
    /// Adopted instances' pipes, read once the new ten serves.
    deferred: Mutex<Vec<Deferred>>,
}

impl Registry {
    pub fn new(
        config: Arc<Config>,
        traffic: Arc<dyn TrafficProbe>,
        sink: Arc<dyn LogSink>,
        store: Option<StateStore>,
    ) -> Self {
        let (routing_tx, _) = watch::channel(Arc::new(RoutingView::default()));
        let (live_tx, _) = watch::channel(0);
        Registry {
            data_dir: config.settings.data_dir.clone(),
            config: RwLock::new(config),
            slots: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            routing_tx,
            live_tx,
            followed: AtomicBool::new(false),
            traffic,
            sink,
            store,
            shutting_down: AtomicBool::new(false),
            dynamic: Mutex::new(BTreeMap::new()),
            frozen: AtomicBool::new(false),
            released: AtomicBool::new(false),
            deferred: Mutex::new(Vec::new()),
        }
    }

    /// The running config (a reload swaps it whole; a reader keeps the one it loaded).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    pub fn slots(&self) -> MutexGuard<'_, BTreeMap<InstanceName, Slot>> {
        // Every update under this lock is a single insert/remove/field store, so a panic
        // elsewhere cannot leave the map half-written: a poisoned lock is safe to keep using.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    // --- publishing ---

    /// Views as they change (generation, then the instances in spawn order). The caller
    /// promises to [`Registry::acknowledge`] each generation once its table is live.
    pub fn follow(&self) -> watch::Receiver<Arc<RoutingView>> {
        self.followed.store(true, Ordering::Relaxed);
        self.routing_tx.subscribe()
    }

    /// Views as they change, without promising anything (wake waits on these).
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutingView>> {
        self.routing_tx.subscribe()
    }

    pub fn acknowledge(&self, generation: u64) {
        self.live_tx.send_if_modified(|live| {
            let newer = generation > *live;
            if newer {
                *live = generation;
            }
            newer
        });
    }

    /// The generation of the latest routing view.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Wait until the table built from `generation` (or a later view) is live. Returns at once
    /// when nobody builds tables (unit tests, benches).
    pub async fn settle(&self, generation: u64) {
        if !self.followed.load(Ordering::Relaxed) {
            return;
        }
        let mut live = self.live_tx.subscribe();
        let _ = live.wait_for(|g| *g >= generation).await;
    }

    /// Publish the routing view of `slots` (called with the lock held, so views go out in the
    /// order they were made). Returns its generation.
    pub fn publish_slots(&self, slots: &BTreeMap<InstanceName, Slot>) -> u64 {
        let mut v: Vec<_> = slots
            .values()
            .map(|s| (order(s), s.routed.clone()))
            .collect();
        v.sort_by_key(|(o, _)| *o);
        let generation = self.generation.load(Ordering::Acquire) + 1;
        self.generation.store(generation, Ordering::Release);
        self.routing_tx.send_replace(Arc::new(RoutingView {
            generation,
            instances: v.into_iter().map(|(_, r)| r).collect(),
        }));
        generation
    }

    /// Publish the current routing view; returns its generation.
    pub fn publish(&self) -> u64 {
        let slots = self.slots();
        self.publish_slots(&slots)
    }

    /// Change what routing reads of `name` (and its status with it); publishes a new view only
    /// when the routing part changed. Returns the generation that contains the change.
    pub fn route(&self, name: &InstanceName, f: impl FnOnce(&mut Routed, &mut Status)) -> u64 {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(name) else {
            return self.generation();
        };
        let mut routed = (*slot.routed).clone();
        f(&mut routed, &mut slot.status);
        if routed == *slot.routed {
            return self.generation();
        }
        slot.routed = Arc::new(routed);
        self.publish_slots(&slots)
    }

    /// Change status fields only: nothing is published, no table is rebuilt.
    pub fn status(&self, name: &InstanceName, f: impl FnOnce(&mut Status)) {
        if let Some(slot) = self.slots().get_mut(name) {
            f(&mut slot.status);
        }
    }

    /// Insert (or replace) a slot and publish (tests; spawns claim a name under one lock).
    #[cfg(test)]
    pub fn insert(&self, name: &InstanceName, slot: Slot) -> u64 {
        let mut slots = self.slots();
        slots.insert(name.clone(), slot);
        self.publish_slots(&slots)
    }

    pub fn forget_slot(&self, name: &InstanceName) -> u64 {
        let mut slots = self.slots();
        slots.remove(name);
        self.publish_slots(&slots)
    }

    // --- reading ---

    pub fn instance(&self, name: &InstanceName) -> Option<InstanceView> {
        self.slots()
            .get(name)
            .map(|s| InstanceView::of(&s.routed, &s.status))
    }

    pub fn view(&self) -> View {
        let slots = self.slots();
        let mut v: Vec<_> = slots.values().collect();
        v.sort_by_key(|s| order(s));
        View {
            instances: v
                .into_iter()
                .map(|s| InstanceView::of(&s.routed, &s.status))
                .collect(),
        }
    }

    // --- persistence and events ---

    pub fn deferred_pipes(&self) -> MutexGuard<'_, Vec<Deferred>> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instances were handed to a new ten (see `released`).
    pub fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    pub fn persist(&self, f: impl FnOnce(&StateStore) -> Result<(), StateError>) {
        if self.released() {
            return; // the new ten owns the desired state now
        }
        if let Some(store) = &self.store {
            if let Err(e) = blocking(|| f(store)) {
                tracing::error!("{e}");
            }
        }
    }

    /// An event of `ten` itself about an instance: to the log store (process "ten") and tracing.
    pub fn event(&self, name: &InstanceName, what: &str) {
        tracing::info!(instance = %name, "{what}");
        self.ten_line(Stream::Stdout, &format!("{name}: {what}"));
    }

    pub fn warn(&self, name: &InstanceName, what: &str) {
        tracing::warn!(instance = %name, "{what}");
        self.ten_line(Stream::Stderr, &format!("{name}: warning: {what}"));
    }

    fn ten_line(&self, stream: Stream, line: &str) {
        if self.released() {
            return;
        }
        let me = InstanceName {
            process: TEN.into(),
            id: "serve".into(),
        };
        self.sink.line(&me, stream, line);
    }

    // --- used by the runners ---

    /// Between 1 ms and a year: tokio's intervals add it to `now` unchecked.
    pub fn health_interval(&self) -> Duration {
        self.config()
            .settings
            .health_check_interval
            .clamp(Duration::from_millis(1), tenement_conf::MAX_DURATION)
    }

    pub fn set_state(&self, name: &InstanceName, state: State, error: Option<String>) -> u64 {
        self.route(name, |r, s| {
            r.state = state;
            // An idle instance stays wakeable while it stops and while it starts again.
            if matches!(state, State::Healthy | State::Failed | State::Unhealthy) {
                r.idle = false;
            }
            if state == State::Healthy {
                s.last_error = None;
            } else if error.is_some() {
                s.last_error = error;
            }
        })
    }

    pub fn set_last_error(&self, name: &InstanceName, error: String) {
        self.status(name, |s| s.last_error = Some(error));
    }

    pub fn set_started(&self, name: &InstanceName, pid: u32, addr: tenement_conf::Addr) {
        self.route(name, |r, s| {
            r.addr = Some(addr);
            s.pid = Some(pid);
            s.started = Some(Instant::now());
        });
        self.persist(|s| s.set_pgid(name, Some(pid)));
    }

    /// The output readers and cgroup of the process just started (what an upgrade hands over).
    pub fn set_pipes(&self, name: &InstanceName, pipes: Pipes, cgroup: Option<PathBuf>) {
        if let Some(slot) = self.slots().get_mut(name) {
            slot.pipes = Some(pipes);
            slot.cgroup = cgroup;
        }
    }

    pub fn clear_pid(&self, name: &InstanceName) {
        self.status(name, |s| {
            s.pid = None;
            s.started = None;
        });
        self.persist(|s| s.set_pgid(name, None));
    }

    /// It is about to stop for idleness: from now on a request wakes it instead of failing.
    pub fn mark_idle(&self, name: &InstanceName) -> u64 {
        self.route(name, |r, _| r.idle = true)
    }

    pub fn set_idle(&self, name: &InstanceName) {
        self.route(name, |r, s| {
            r.state = State::Stopped;
            r.idle = true;
            s.pid = None;
            s.started = None;
        });
        self.persist(|s| s.set_pgid(name, None));
    }

    pub fn count_restart(&self, name: &InstanceName) {
        self.status(name, |s| s.restarts += 1);
    }

    /// The runner is done: forget the slot (and the desired state when `forget`).
    pub fn finish(&self, name: &InstanceName, forget: bool) {
        self.event(name, "stopped");
        if forget {
            self.persist(|s| s.remove(name));
        } else {
            self.persist(|s| s.set_pgid(name, None));
        }
        self.forget_slot(name);
    }

    /// The uid `name` runs as under `user = "dynamic"` (SPEC §12): stable per instance
    /// (recorded in the store), the lowest free one of [`DYNAMIC_UIDS`], never one another
    /// instance holds nor one the system gives a user or group.
    pub fn dynamic_uid(&self, name: &InstanceName) -> Result<u32, Error> {
        // Asked only when a uid is handed out (not for an instance that has one).
        let running = std::cell::OnceCell::new();
        let taken = |u: u32| {
            running.get_or_init(running_uids).contains(&u)
                || nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u))
                    .ok()
                    .flatten()
                    .is_some()
                || nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(u))
                    .ok()
                    .flatten()
                    .is_some()
        };
        let uid = match &self.store {
            Some(store) => blocking(|| store.dynamic_uid(name, DYNAMIC_UIDS, &taken))?,
            None => {
                let mut held = self.dynamic.lock().unwrap_or_else(|p| p.into_inner());
                match held.get(name) {
                    Some(u) => Some(*u),
                    None => {
                        let used: Vec<u32> = held.values().copied().collect();
                        let uid = DYNAMIC_UIDS
                            .clone()
                            .find(|u| !used.contains(u) && !taken(*u));
                        if let Some(u) = uid {
                            held.insert(name.clone(), u);
                        }
                        uid
                    }
                }
            }
        };
        uid.ok_or_else(|| {
            Error::Spawn(format!(
                "{name}: no dynamic uid left ({}-{} are all held)",
                DYNAMIC_UIDS.start(),
                DYNAMIC_UIDS.end()
            ))
        })
    }

    /// `name` gives its dynamic uid back (its DATA_DIR was removed).
    pub fn release_uid(&self, name: &InstanceName) {
        self.dynamic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.persist(|s| s.release_uid(name));
    }

    /// Wait until no request is in flight on `name` (at most drain_timeout).
    pub async fn drain(&self, name: &InstanceName) {
        let deadline = crate::time::later(Instant::now(), self.config().settings.drain_timeout);
        while self.traffic.in_flight(name) > 0 {
            if Instant::now() >= deadline {
                self.warn(name, "drain_timeout reached with requests in flight");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// No request in flight and none started for `idle_timeout` (counting from `since`).
    pub fn is_idle(&self, name: &InstanceName, since: Instant, idle_timeout: Duration) -> bool {
        let t = &self.traffic;
        let last = t.last_request(name).map_or(since, |l| l.max(since));
        t.in_flight(name) == 0 && last.elapsed() >= idle_timeout
    }
}

/// The real uids of every running process (/proc/PID/status): a dynamic uid is never one a
/// process already runs as (another `ten serve`'s instance, say).
fn running_uids() -> std::collections::HashSet<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::child::TracingSink;

    /// A proxy that never has traffic (the supervisor's unit tests share it).
    pub(crate) struct NoTraffic;
    impl TrafficProbe for NoTraffic {
        fn in_flight(&self, _: &InstanceName) -> u64 {
            0
        }
        fn last_request(&self, _: &InstanceName) -> Option<Instant> {
            None
        }
    }

    fn registry() -> Registry {
        let config = tenement_conf::Config::parse(
            "[process.api]\ncommand = \"x\"\n",
            "tenement.toml",
            std::path::Path::new("/tmp"),
        )
        .unwrap();
        Registry::new(
            Arc::new(config),
            Arc::new(NoTraffic),
            Arc::new(TracingSink),
            None,
        )
    }

    fn name(id: &str) -> InstanceName {
        InstanceName {
            process: "api".into(),
            id: id.into(),
        }
    }

    /// A dynamic uid is never one a running process already has (another ten's instance),
    /// is stable per instance and distinct between instances.
    #[test]
    fn a_dynamic_uid_skips_uids_that_processes_run_as() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "needs root (CI runs as root)"
        );
        let reg = registry();
        let first = *DYNAMIC_UIDS.start();
        let mut squatter = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::uid(&mut squatter, first);
        let mut squatter = squatter.arg("30").spawn().unwrap();
        let a = reg.dynamic_uid(&name("a")).unwrap();
        let b = reg.dynamic_uid(&name("b")).unwrap();
        squatter.kill().unwrap();
        squatter.wait().unwrap();
        assert_ne!(a, first, "handed out a uid a process runs as");
        assert_ne!(a, b);
        assert_eq!(reg.dynamic_uid(&name("a")).unwrap(), a);
        reg.release_uid(&name("a"));
        assert!(
            !reg.dynamic.lock().unwrap().contains_key(&name("a")),
            "given back"
        );
        assert_ne!(reg.dynamic_uid(&name("c")).unwrap(), b);
    }

    #[tokio::test]
    async fn drain_with_a_huge_drain_timeout_does_not_panic() {
        let config = tenement_conf::Config::parse(
            "[process.api]\ncommand = \"x\"\n",
            "tenement.toml",
            std::path::Path::new("/tmp"),
        )
        .unwrap();
        let mut config = config;
        config.settings.drain_timeout = Duration::MAX;
        let reg = Registry::new(
            Arc::new(config),
            Arc::new(NoTraffic),
            Arc::new(TracingSink),
            None,
        );
        reg.drain(&name("a")).await;
    }

    #[test]
    fn status_changes_publish_nothing() {
        let reg = registry();
        let mut rx = reg.subscribe();
        let g = reg.insert(
            &name("a"),
            Slot::new(&name("a"), Kind::Spawned, 100, 0, false),
        );
        assert_eq!(g, 1);
        rx.borrow_and_update();
        for i in 0..100 {
            reg.set_last_error(&name("a"), format!("error {i}"));
            reg.count_restart(&name("a"));
            reg.clear_pid(&name("a"));
            reg.status(&name("a"), |s| s.storage_bytes = Some(i));
        }
        assert!(!rx.has_changed().unwrap(), "no view for status changes");
        assert_eq!(reg.generation(), 1);
        let v = reg.instance(&name("a")).unwrap();
        assert_eq!(v.restarts, 100);
        assert_eq!(v.last_error.as_deref(), Some("error 99"));
        assert_eq!(v.storage_bytes, Some(99));
    }

    #[test]
    fn routing_changes_publish_once_each_and_in_order() {
        let reg = registry();
        let mut rx = reg.subscribe();
        reg.insert(
            &name("a"),
            Slot::new(&name("a"), Kind::Spawned, 100, 1, false),
        );
        reg.insert(
            &name("b"),
            Slot::new(&name("b"), Kind::Spawned, 100, 0, false),
        );
        let g = reg.set_state(&name("a"), State::Healthy, None);
        assert_eq!(g, 3);
        // The same state again changes nothing routing reads: no new view.
        assert_eq!(reg.set_state(&name("a"), State::Healthy, None), 3);
        let v = rx.borrow_and_update().clone();
        assert_eq!(v.generation, 3);
        // Spawn order (seq), not name order.
        let names: Vec<_> = v.instances.iter().map(|r| r.name.id.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(v.instances[1].state, State::Healthy);
        assert_eq!(reg.mark_idle(&name("a")), 4);
        assert_eq!(reg.forget_slot(&name("b")), 5);
        assert_eq!(rx.borrow().instances.len(), 1);
    }

    #[test]
    fn externals_are_listed_after_spawned_instances() {
        let reg = registry();
        let ext = InstanceName {
            process: "legacy".into(),
            id: "0".into(),
        };
        reg.insert(&ext, Slot::new(&ext, Kind::External, 100, 0, false));
        reg.insert(
            &name("a"),
            Slot::new(&name("a"), Kind::Spawned, 100, 1, false),
        );
        let v = reg.view();
        assert_eq!(v.instances[0].name, name("a"));
        assert_eq!(v.instances[1].kind, Kind::External);
        assert_eq!(reg.subscribe().borrow().instances[1].name, ext);
    }

    #[tokio::test]
    async fn settle_waits_for_the_acknowledgement_when_followed() {
        let reg = Arc::new(registry());
        // Nobody follows: settle returns at once.
        reg.settle(7).await;
        let _rx = reg.follow();
        let g = reg.insert(
            &name("a"),
            Slot::new(&name("a"), Kind::Spawned, 100, 0, false),
        );
        let waiter = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.settle(g).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "settled before the table was live");
        reg.acknowledge(g - 1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "an older table does not settle it");
        reg.acknowledge(g);
        waiter.await.unwrap();
        // Older acknowledgements never move the live generation back.
        reg.acknowledge(1);
        reg.settle(g).await;
    }
}
