//! The supervisor: spawns instances, waits for readiness, watches for exits, drains and stops.
//!
//! It publishes a plain [`View`] of its instances through a `watch` channel; the `ten` binary's
//! composer turns views into routing tables. It never touches the proxy directly: in-flight
//! counts come in through the [`TrafficProbe`] trait.

mod child;
pub mod probe;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::watch;

use tenement_conf::{Config, InstanceName};

pub use child::{describe_exit, instance_data_dir, LogSink, Stream, Tail, TracingSink};
pub use probe::Addr;

/// Supervisor errors, each naming the instance and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown process \"{0}\" (not in the config)")]
    UnknownProcess(String),
    #[error("unknown instance {0}")]
    UnknownInstance(String),
    #[error("process \"{0}\" is external (upstreams): ten does not spawn or stop it")]
    External(String),
    #[error("instance {0} is already running")]
    AlreadyRunning(String),
    #[error("{0}")]
    Spawn(String),
    #[error("instance {name} did not become healthy: {reason}{}", tail_text(.tail))]
    StartupFailed {
        name: String,
        reason: String,
        tail: Vec<String>,
    },
    #[error("ten is shutting down")]
    ShuttingDown,
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
}

/// Every instance, in spawn order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub instances: Vec<InstanceView>,
}

/// How the supervisor learns how many requests an instance has in flight (from the proxy).
pub trait TrafficProbe: Send + Sync + 'static {
    fn in_flight(&self, name: &InstanceName) -> u64;
}

struct Slot {
    view: InstanceView,
    seq: u64,
    exit: watch::Receiver<Option<String>>,
}

struct Inner {
    config: Arc<Config>,
    data_dir: PathBuf,
    slots: Mutex<BTreeMap<InstanceName, Slot>>,
    seq: Mutex<u64>,
    view_tx: watch::Sender<Arc<View>>,
    traffic: Arc<dyn TrafficProbe>,
    sink: Arc<dyn LogSink>,
    shutting_down: std::sync::atomic::AtomicBool,
}

/// The supervisor handle (cheap to clone).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub fn new(
        config: Arc<Config>,
        traffic: Arc<dyn TrafficProbe>,
        sink: Arc<dyn LogSink>,
    ) -> Self {
        let (view_tx, _) = watch::channel(Arc::new(View::default()));
        Supervisor {
            inner: Arc::new(Inner {
                data_dir: config.settings.data_dir.clone(),
                config,
                slots: Mutex::new(BTreeMap::new()),
                seq: Mutex::new(0),
                view_tx,
                traffic,
                sink,
                shutting_down: false.into(),
            }),
        }
    }

    /// Views as they change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.inner.view_tx.subscribe()
    }

    pub fn view(&self) -> Arc<View> {
        self.inner.view_tx.borrow().clone()
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<InstanceName, Slot>> {
        // A panic while holding the lock cannot leave the map half-written (every update is a
        // single insert/remove/field store), so a poisoned lock is safe to keep using.
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self) {
        let view = {
            let slots = self.slots();
            let mut v: Vec<_> = slots.values().map(|s| (s.seq, s.view.clone())).collect();
            v.sort_by_key(|(seq, _)| *seq);
            View {
                instances: v.into_iter().map(|(_, v)| v).collect(),
            }
        };
        self.inner.view_tx.send_replace(Arc::new(view));
    }

    fn update(&self, name: &InstanceName, f: impl FnOnce(&mut InstanceView)) {
        if let Some(slot) = self.slots().get_mut(name) {
            f(&mut slot.view);
        }
        self.publish();
    }

    /// Spawn `name` and wait until it is ready (accepts connections, or answers its health
    /// path with 2xx) within `startup_timeout`. On failure it is killed and forgotten, and the
    /// error carries its last output lines.
    pub async fn spawn(&self, name: &InstanceName, weight: u32) -> Result<InstanceView, Error> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::ShuttingDown);
        }
        let config = self.inner.config.clone();
        let process = config
            .process(&name.process)
            .ok_or_else(|| Error::UnknownProcess(name.process.clone()))?;
        if process.is_external() {
            return Err(Error::External(name.process.clone()));
        }
        let tail = Arc::new(Tail::default());
        let (exit_tx, exit_rx) = watch::channel(None);
        {
            let mut slots = self.slots();
            if slots.contains_key(name) {
                return Err(Error::AlreadyRunning(name.to_string()));
            }
            let seq = {
                let mut s = self.inner.seq.lock().unwrap_or_else(|p| p.into_inner());
                *s += 1;
                *s
            };
            slots.insert(
                name.clone(),
                Slot {
                    view: InstanceView {
                        name: name.clone(),
                        state: State::Starting,
                        weight,
                        pid: None,
                        addr: None,
                        started: None,
                        restarts: 0,
                    },
                    seq,
                    exit: exit_rx.clone(),
                },
            );
        }
        self.publish();
        let started = child::start(&child::Launch {
            name,
            process,
            data_dir: &self.inner.data_dir,
            sink: self.inner.sink.clone(),
            tail: tail.clone(),
        });
        let started = match started {
            Ok(s) => s,
            Err(e) => {
                self.slots().remove(name);
                self.publish();
                return Err(e);
            }
        };
        let pid = started.pid;
        let addr = started.addr.clone();
        tracing::info!(instance = %name, pid, addr = %addr, "spawned");
        self.update(name, |v| {
            v.pid = Some(pid);
            v.addr = Some(addr.clone());
            v.started = Some(Instant::now());
        });
        // Reap the child as soon as it exits.
        let me = self.clone();
        let reaped = name.clone();
        let mut child = started.child;
        tokio::spawn(async move {
            let status = child.wait().await;
            let text = match &status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("wait failed: {e}"),
            };
            // Grandchildren left behind in the group go with it.
            child::signal_group(pid, Signal::SIGKILL);
            me.on_exit(&reaped, &text);
            let _ = exit_tx.send(Some(text));
        });
        match self.wait_ready(name, process, &addr, exit_rx).await {
            Ok(()) => {
                self.update(name, |v| v.state = State::Healthy);
                tracing::info!(instance = %name, "healthy");
                Ok(self
                    .instance(name)
                    .ok_or_else(|| Error::UnknownInstance(name.to_string()))?)
            }
            Err(reason) => {
                tracing::warn!(instance = %name, %reason, "startup failed");
                self.kill_now(name, pid, process.stop_timeout).await;
                self.slots().remove(name);
                self.publish();
                Err(Error::StartupFailed {
                    name: name.to_string(),
                    reason,
                    tail: tail.lines(),
                })
            }
        }
    }

    async fn wait_ready(
        &self,
        name: &InstanceName,
        process: &tenement_conf::Process,
        addr: &Addr,
        mut exit: watch::Receiver<Option<String>>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + process.startup_timeout;
        let mut delay = Duration::from_millis(10);
        let mut last = String::from("it never accepted a connection");
        loop {
            if let Some(text) = exit.borrow().clone() {
                return Err(format!("it {text} during startup"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "not ready within startup_timeout {} ({last})",
                    probe::humanize(process.startup_timeout)
                ));
            }
            match probe::probe(
                addr,
                process.health.as_deref(),
                left.min(Duration::from_secs(2)),
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tracing::trace!(instance = %name, "not ready yet: {last}");
            tokio::select! {
                _ = tokio::time::sleep(delay.min(left)) => {}
                _ = exit.changed() => {}
            }
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    fn on_exit(&self, name: &InstanceName, text: &str) {
        let mut crashed = false;
        if let Some(slot) = self.slots().get_mut(name) {
            if slot.view.state != State::Draining {
                crashed = true;
                slot.view.state = State::Failed;
            } else {
                slot.view.state = State::Stopped;
            }
            slot.view.pid = None;
        }
        if crashed {
            tracing::warn!(instance = %name, "{text}");
        } else {
            tracing::info!(instance = %name, "{text}");
        }
        self.publish();
    }

    /// One instance's current view.
    pub fn instance(&self, name: &InstanceName) -> Option<InstanceView> {
        self.slots().get(name).map(|s| s.view.clone())
    }

    /// SIGTERM to the group, SIGKILL after `stop_timeout`, wait for the reaper.
    async fn kill_now(&self, name: &InstanceName, pid: u32, stop_timeout: Duration) {
        let Some(mut exit) = self.slots().get(name).map(|s| s.exit.clone()) else {
            return;
        };
        if exit.borrow().is_none() {
            child::signal_group(pid, Signal::SIGTERM);
            let timed_out = tokio::time::timeout(stop_timeout, exit.wait_for(Option::is_some))
                .await
                .is_err();
            if timed_out {
                tracing::warn!(instance = %name, "did not stop within stop_timeout; sending SIGKILL");
                child::signal_group(pid, Signal::SIGKILL);
                let _ = exit.wait_for(Option::is_some).await;
            }
        }
    }

    /// Stop: out of routing at once, drain in-flight requests (<= drain_timeout), SIGTERM to
    /// the group, SIGKILL after stop_timeout; socket file removed; the instance is forgotten.
    pub async fn stop(&self, name: &InstanceName) -> Result<(), Error> {
        let (pid, addr) = {
            let mut slots = self.slots();
            let slot = slots
                .get_mut(name)
                .ok_or_else(|| Error::UnknownInstance(name.to_string()))?;
            let was = slot.view.state;
            slot.view.state = State::Draining;
            let pid = if matches!(was, State::Stopped | State::Failed) {
                None
            } else {
                slot.view.pid
            };
            (pid, slot.view.addr.clone())
        };
        self.publish();
        let config = self.inner.config.clone();
        let process = config.process(&name.process);
        let drain = config.settings.drain_timeout;
        let deadline = Instant::now() + drain;
        while self.inner.traffic.in_flight(name) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(pid) = pid {
            let stop_timeout = process
                .map(|p| p.stop_timeout)
                .unwrap_or(Duration::from_secs(10));
            self.kill_now(name, pid, stop_timeout).await;
        }
        if let Some(Addr::Unix(path)) = addr {
            let _ = std::fs::remove_file(path);
        }
        if process.is_some_and(|p| !p.storage_persist) {
            let _ = std::fs::remove_dir_all(instance_data_dir(&self.inner.data_dir, name));
        }
        self.slots().remove(name);
        self.publish();
        tracing::info!(instance = %name, "stopped");
        Ok(())
    }

    /// Refuse new spawns, then stop every instance concurrently.
    pub async fn stop_all(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let names: Vec<_> = self.slots().keys().cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for n in names {
            let me = self.clone();
            tasks.spawn(async move { me.stop(&n).await });
        }
        while tasks.join_next().await.is_some() {}
    }
}
