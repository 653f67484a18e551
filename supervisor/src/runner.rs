//! One task per instance owns its whole life: start, wait until ready, watch exits and health,
//! stop when idle, restart with backoff, drain and stop when asked. A start that fails because
//! ten itself is out of resources is retried without charging the app (SPEC §14); a failed
//! first start at boot is treated like a crash (review M6).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch, Notify};

use tenement_conf::{Addr, InstanceName, Process, RunAs};

use crate::child::{self, Tail};
use crate::identity::Identity;
use crate::owner::{self, Owner};
use crate::policy::{self, Check, Health, Next, Restarts};
use crate::probe::{self, ProbeError};
use crate::registry::Registry;
use crate::time::later;
use crate::{cgroup, storage, Error, State};

/// Consecutive failed health checks that make an instance unhealthy.
pub const UNHEALTHY_AFTER: u32 = 3;

/// What the runner was asked to do from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep running.
    No,
    /// Stop; `forget` also removes it from the desired state (an operator's stop, not shutdown).
    Yes { forget: bool },
}

/// How a running child's watch ended.
enum Outcome {
    Exited { text: String, success: bool },
    Unhealthy(String),
    Idle,
    Stop { forget: bool },
}

/// Where a runner is in an instance's life; each phase is a method returning the next one.
///
/// Start → Ready → Monitor, then by how the watch ended: Idle (→ Start on a wake), Backoff
/// (→ Start, or Down on a crash loop), Down (restart policy says no), Stop. A start that failed
/// on ten's own resources goes to Wait (→ Start, never charged). Every way out passes Finish
/// (the slot is forgotten), except a failed first start of an operator's spawn (Done at once;
/// at boot it is a failure like any other).
enum Phase {
    /// Spawn the child.
    Start,
    /// Wait until it accepts connections (or answers its health path).
    Ready(Live),
    /// Healthy: watch exits, health, idleness and stop requests.
    Monitor(Live),
    /// Stopped for idleness: wait for a wake or a stop.
    Idle,
    /// After a failure, the child gone: crash loop or sleep the backoff.
    Backoff,
    /// ten itself was out of resources (why): sleep a backoff that is not a restart.
    Wait(String),
    /// Stays down (restart policy or crash loop) until asked to stop.
    Down,
    /// Asked to stop while running: drain and kill.
    Stop { live: Live, forget: bool },
    /// The runner is done: forget the slot (and the desired state when `forget`).
    Finish { forget: bool },
    /// Nothing left to do.
    Done,
}

/// What a runner carries from phase to phase.
struct Life {
    /// Hears how the first start went; taken by it.
    first: Option<oneshot::Sender<Result<(), Error>>>,
    /// Until when an operator's spawn retries a start that failed on ten's resources.
    first_deadline: Instant,
    restarts: Restarts,
    /// ten's resource failure was already warned about (once per run of them).
    ours_warned: bool,
}

/// Why a started child did not become ready.
struct NotReady {
    reason: String,
    /// The last probe could not be made for ten's own lack of resources.
    ours: bool,
}

pub struct Runner {
    pub reg: Arc<Registry>,
    pub name: InstanceName,
    pub process: Process,
    pub stop: watch::Receiver<Stop>,
    pub wake: Arc<Notify>,
    pub tail: Arc<Tail>,
    /// Started at boot: a failed first start is retried like a crash (the caller still hears
    /// of the first failure at once), not forgotten.
    pub boot: bool,
}

/// A started (or adopted) child and the channel its reaper reports the exit on.
pub(crate) struct Live {
    pub pid: u32,
    pub addr: Addr,
    pub exit: watch::Receiver<Option<(String, bool)>>,
    pub cgroup: Option<std::path::PathBuf>,
    pub captures: Vec<tokio::task::JoinHandle<()>>,
    /// Idle since (adopted from a previous ten: its idle timer goes on); else since healthy.
    pub idle_since: Option<Instant>,
}

/// Where an adopted instance's runner starts.
pub(crate) enum Adopt {
    /// Still starting: wait until it is ready.
    Ready(Live),
    /// Healthy or unhealthy: watch it.
    Monitor(Live),
    /// Stopped for idleness: wait for a wake.
    Idle,
}

impl Live {
    /// Let the output readers reach EOF (bounded: a grandchild may hold the pipes open), so
    /// the last lines an app printed before dying are in the tail.
    async fn drain_output(&mut self) {
        let all = join_all(std::mem::take(&mut self.captures));
        let _ = tokio::time::timeout(Duration::from_secs(1), all).await;
    }
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

impl Runner {
    fn stop_requested(&self) -> Option<bool> {
        match *self.stop.borrow() {
            Stop::No => None,
            Stop::Yes { forget } => Some(forget),
        }
    }

    /// Drive the instance through its phases until it is done. `first` hears how the first
    /// start went (the caller of a spawn waits on it).
    pub async fn run(self, first: oneshot::Sender<Result<(), Error>>) {
        self.drive(Some(first), Phase::Start).await;
    }

    /// Take over an instance a previous ten started (an upgrade): same process, watched from
    /// where it was.
    pub async fn adopt(self, from: Adopt) {
        let phase = match from {
            Adopt::Ready(live) => Phase::Ready(live),
            Adopt::Monitor(live) => Phase::Monitor(live),
            Adopt::Idle => Phase::Idle,
        };
        self.drive(None, phase).await;
    }

    async fn drive(mut self, first: Option<oneshot::Sender<Result<(), Error>>>, mut phase: Phase) {
        let Ok(restarts) = Restarts::of(&self.process) else {
            return;
        };
        let mut life = Life {
            first,
            first_deadline: later(Instant::now(), self.process.startup_timeout),
            restarts,
            ours_warned: false,
        };
        loop {
            if self.reg.released() {
                return; // handed to a new ten: nothing more to do here
            }
            phase = match phase {
                Phase::Start => self.start_phase(&mut life).await,
                Phase::Ready(live) => self.ready_phase(&mut life, live).await,
                Phase::Monitor(live) => self.monitor_phase(&mut life, live).await,
                Phase::Idle => self.idle_phase(&mut life).await,
                Phase::Backoff => self.backoff_phase(&mut life).await,
                Phase::Wait(why) => self.wait_phase(&mut life, why).await,
                Phase::Down => self.down_phase().await,
                Phase::Stop { live, forget } => self.stop_phase(live, forget).await,
                Phase::Finish { forget } => {
                    if let Some(tx) = life.first.take() {
                        let _ = tx.send(Err(Error::Spawn(format!(
                            "{} was stopped during its start",
                            self.name
                        ))));
                    }
                    self.reg.finish(&self.name, forget);
                    Phase::Done
                }
                Phase::Done => return,
            };
        }
    }

    /// Spawn the child. A first start of an operator's spawn that fails ends the runner (the
    /// caller hears why); at boot, and on a restart, it is a failure like a crash. ten's own
    /// lack of resources is never the app's failure: it waits and tries again.
    async fn start_phase(&mut self, life: &mut Life) -> Phase {
        match self.start().await {
            Ok(live) => {
                life.restarts.started();
                Phase::Ready(live)
            }
            Err(Error::Resources(why)) => self.out_of_resources(life, why),
            Err(e) => {
                let text = e.to_string();
                let what = if life.first.is_some() {
                    "failed to start"
                } else {
                    "restart failed"
                };
                if let Some(tx) = life.first.take() {
                    if !self.boot {
                        self.reg.forget_slot(&self.name); // gone before the caller hears of it
                        let _ = tx.send(Err(e));
                        return Phase::Done;
                    }
                    let _ = tx.send(Err(e));
                }
                self.start_failed(life, what, text)
            }
        }
    }

    /// A start failed (the app's or its config's fault): back off and retry as after a crash,
    /// or stay down (failed, with the reason) when `restart = "never"`.
    fn start_failed(&mut self, life: &Life, what: &str, text: String) -> Phase {
        if !life.restarts.after_exit(false) {
            self.reg.event(
                &self.name,
                &format!(
                    "{what}: {text}; restart = {} so it stays down",
                    policy::name(self.process.restart)
                ),
            );
            self.reg.set_state(&self.name, State::Failed, Some(text));
            self.reg.clear_pid(&self.name);
            return Phase::Down;
        }
        self.reg.event(&self.name, &format!("{what}: {text}"));
        self.reg.set_last_error(&self.name, text);
        Phase::Backoff
    }

    /// ten itself is out of resources: wait and start again, not charged to the app. An
    /// operator's spawn gives up once its startup_timeout has passed (and hears why).
    fn out_of_resources(&mut self, life: &mut Life, why: String) -> Phase {
        if !self.boot && Instant::now() >= life.first_deadline {
            if let Some(tx) = life.first.take() {
                self.reg.forget_slot(&self.name);
                let _ = tx.send(Err(Error::Resources(why)));
                return Phase::Done;
            }
        }
        Phase::Wait(why)
    }

    /// Sleep a backoff after ten's own resource failure; no restart is counted.
    async fn wait_phase(&mut self, life: &mut Life, why: String) -> Phase {
        self.reg.clear_pid(&self.name);
        let delay = life.restarts.ours_delay(fastrand::f64());
        let text = format!("ten is out of resources: {why}");
        if !life.ours_warned {
            life.ours_warned = true;
            self.reg.warn(
                &self.name,
                &format!(
                    "{text}; not the app's failure: starting again with backoff (first in {}), not counted as a restart",
                    probe::humanize(delay)
                ),
            );
        }
        self.reg.set_state(&self.name, State::Starting, Some(text));
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => Phase::Start,
            _ = stop.wait_for(|s| *s != Stop::No) => {
                Phase::Finish { forget: self.stop_requested().unwrap_or(false) }
            }
        }
    }

    /// Wait until it is ready: healthy, or killed (a first start that fails ends the runner).
    async fn ready_phase(&mut self, life: &mut Life, mut live: Live) -> Phase {
        match self.wait_ready(&live).await {
            Ok(()) => {
                life.ours_warned = false;
                self.reg.set_state(&self.name, State::Healthy, None);
                self.reg.event(&self.name, "healthy");
                if let Some(tx) = life.first.take() {
                    let _ = tx.send(Ok(()));
                }
                Phase::Monitor(live)
            }
            Err(NotReady { reason, ours }) => {
                self.kill(&live).await;
                let first = life.first.is_some();
                if let Some(tx) = life.first.take() {
                    live.drain_output().await;
                    let err = if ours {
                        Error::Resources(reason.clone())
                    } else {
                        Error::StartupFailed {
                            name: self.name.to_string(),
                            reason: reason.clone(),
                            tail: self.tail.lines(),
                        }
                    };
                    if !self.boot {
                        self.cleanup(&live);
                        self.reg.forget_slot(&self.name); // gone before the caller hears of it
                        let _ = tx.send(Err(err));
                        return Phase::Done;
                    }
                    let _ = tx.send(Err(err));
                }
                self.cleanup(&live);
                if let Some(forget) = self.stop_requested() {
                    return Phase::Finish { forget };
                }
                if ours {
                    return Phase::Wait(reason);
                }
                let what = if first {
                    "did not become healthy"
                } else {
                    "did not become healthy after restart"
                };
                self.start_failed(life, what, reason)
            }
        }
    }

    /// Watch it run until it exits, turns unhealthy, goes idle or is asked to stop.
    async fn monitor_phase(&mut self, life: &mut Life, live: Live) -> Phase {
        let healthy_at = Instant::now();
        let outcome = self.monitor(&live, life.restarts.when_unhealthy()).await;
        life.restarts.ran(healthy_at, Instant::now());
        match outcome {
            Outcome::Stop { forget } => Phase::Stop { live, forget },
            Outcome::Idle => {
                self.reg
                    .event(&self.name, "idle: stopping (it wakes on its next request)");
                self.reg.mark_idle(&self.name);
                self.drain_and_kill(&live).await;
                self.cleanup(&live);
                self.reg.set_idle(&self.name);
                Phase::Idle
            }
            Outcome::Exited { text, success } => {
                let restart = life.restarts.after_exit(success);
                self.cleanup(&live);
                if !restart {
                    let state = if success {
                        State::Stopped
                    } else {
                        State::Failed
                    };
                    self.reg.event(
                        &self.name,
                        &format!(
                            "{text}; restart = {} so it stays down",
                            policy::name(self.process.restart)
                        ),
                    );
                    self.reg.set_state(&self.name, state, Some(text));
                    self.reg.clear_pid(&self.name);
                    return Phase::Down;
                }
                self.reg.event(&self.name, &format!("crashed: {text}"));
                self.reg.set_last_error(&self.name, text);
                Phase::Backoff
            }
            Outcome::Unhealthy(reason) => {
                self.reg
                    .event(&self.name, &format!("unhealthy ({reason}): restarting"));
                self.kill(&live).await;
                self.cleanup(&live);
                Phase::Backoff
            }
        }
    }

    /// Stopped for idleness: wait for a request to wake it, or a stop.
    async fn idle_phase(&mut self, life: &mut Life) -> Phase {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = self.wake.notified() => {
                self.reg.event(&self.name, "waking");
                life.restarts.woke();
                Phase::Start
            }
            _ = stop.wait_for(|s| *s != Stop::No) => {
                Phase::Finish { forget: self.stop_requested().unwrap_or(false) }
            }
        }
    }

    /// After a failure (the child is gone and cleaned up): give up on a crash loop, or sleep
    /// the backoff and start again.
    async fn backoff_phase(&mut self, life: &mut Life) -> Phase {
        self.reg.clear_pid(&self.name);
        let delay = match life.restarts.next(Instant::now(), fastrand::f64()) {
            Next::Restart(delay) => delay,
            Next::GiveUp { restarts } => {
                let why = format!(
                    "crash loop: {restarts} restarts within restart_window {}; not restarting (ten restart {} to try again)",
                    probe::humanize(self.process.restart_window),
                    self.name
                );
                self.reg.event(&self.name, &why);
                self.reg.set_state(&self.name, State::Failed, Some(why));
                return Phase::Down;
            }
        };
        self.reg.set_state(&self.name, State::Starting, None);
        self.reg.event(
            &self.name,
            &format!("restarting in {}", probe::humanize(delay)),
        );
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s != Stop::No) => {
                return Phase::Finish { forget: self.stop_requested().unwrap_or(false) };
            }
        }
        life.restarts.restarted(Instant::now());
        self.reg.count_restart(&self.name);
        Phase::Start
    }

    /// It stays down (restart policy, crash loop) until asked to stop.
    async fn down_phase(&mut self) -> Phase {
        let _ = self.stop.wait_for(|s| *s != Stop::No).await;
        Phase::Finish {
            forget: self.stop_requested().unwrap_or(false),
        }
    }

    /// Asked to stop while running: out of routing, drain, kill.
    async fn stop_phase(&mut self, live: Live, forget: bool) -> Phase {
        self.drain_and_kill(&live).await;
        self.cleanup(&live);
        Phase::Finish { forget }
    }

    async fn start(&self) -> Result<Live, Error> {
        self.reg.set_state(&self.name, State::Starting, None);
        let identity = match &self.process.user {
            None => None,
            Some(RunAs::User { name, uid, gid }) => Some(Identity::named(name, *uid, *gid)),
            Some(RunAs::Dynamic) => {
                let uid = self.reg.dynamic_uid(&self.name)?;
                let home = child::instance_data_dir(&self.reg.data_dir, &self.name);
                Some(Identity::dynamic(uid, &home))
            }
        };
        let started = child::start(&child::Launch {
            name: &self.name,
            process: &self.process,
            data_dir: &self.reg.data_dir,
            sink: self.reg.sink.clone(),
            tail: self.tail.clone(),
            identity,
        })?;
        let pid = started.pid;
        let addr = started.addr.clone();
        self.reg.set_started(&self.name, pid, addr.clone());
        self.reg
            .event(&self.name, &format!("spawned pid {pid} on {addr}"));
        if let Some(e) = &started.cgroup_warning {
            self.reg.warn(
                &self.name,
                &format!("memory_limit_mb/cpu_shares not applied: {e}"),
            );
        }
        let cgroup = started.cgroup;
        self.reg
            .set_pipes(&self.name, started.pipes, cgroup.clone());
        let (exit_tx, exit) = watch::channel(None);
        let mut child = started.child;
        let captures = started.captures;
        tokio::spawn(async move {
            let status = child.wait().await;
            let (text, success) = match &status {
                Ok(s) => (child::describe_exit(s), s.success()),
                Err(e) => (format!("wait failed: {e}"), false),
            };
            // Whatever the leader left behind in its group goes with it.
            child::signal_group(pid, Signal::SIGKILL);
            let _ = exit_tx.send(Some((text, success)));
        });
        Ok(Live {
            pid,
            addr,
            exit,
            cgroup,
            captures,
            idle_since: None,
        })
    }

    async fn wait_ready(&mut self, live: &Live) -> Result<(), NotReady> {
        let deadline = later(Instant::now(), self.process.startup_timeout);
        let mut delay = Duration::from_millis(10);
        let mut last = String::from("it never accepted a connection");
        let mut last_ours = false;
        let mut exit = live.exit.clone();
        let app = |reason: String| NotReady {
            reason,
            ours: false,
        };
        loop {
            if let Some((text, _)) = exit.borrow().clone() {
                return Err(app(format!("it {text} during startup")));
            }
            if self.stop_requested().is_some() {
                return Err(app("stopped during startup".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NotReady {
                    reason: format!(
                        "not ready within startup_timeout {} ({last})",
                        probe::humanize(self.process.startup_timeout)
                    ),
                    ours: last_ours,
                });
            }
            let probed = probe::probe(
                &live.addr,
                self.process.health.as_deref(),
                left.min(Duration::from_secs(2)),
            )
            .await;
            match probed.and_then(|()| self.listener_is_ours(live)) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_ours = e.is_ours();
                    last = e.message().to_string();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay.min(left)) => {}
                _ = exit.changed() => {}
                _ = self.stop.changed() => {}
            }
            delay = delay.saturating_mul(2).min(Duration::from_millis(250));
        }
    }

    /// A TCP instance answered: is it really its own listener (review S1)? A port freed by
    /// ten can be taken by another process before the app binds it.
    fn listener_is_ours(&self, live: &Live) -> Result<(), ProbeError> {
        let Addr::Tcp(a) = &live.addr else {
            return Ok(());
        };
        let port = a.port();
        match crate::blocking(|| owner::check(port, live.pid)) {
            Owner::Ours | Owner::Unknown(_) => Ok(()),
            Owner::Other => Err(ProbeError::App(format!(
                "port {port} is answered by another process, not this instance (another program took the port before the app bound it)"
            ))),
            Owner::NoListener => Err(ProbeError::App(format!(
                "nothing listens on port {port} any more"
            ))),
        }
    }

    /// Watch a healthy child; `restart_unhealthy`: failing its checks ends the watch.
    async fn monitor(&mut self, live: &Live, restart_unhealthy: bool) -> Outcome {
        let interval = self.reg.health_interval();
        let first_check = tokio::time::Instant::from_std(later(Instant::now(), interval));
        let mut health = tokio::time::interval_at(first_check, interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_timeout = self.process.idle_timeout;
        let idle_every =
            (idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut idle_tick = tokio::time::interval(idle_every);
        let since = live.idle_since.unwrap_or_else(Instant::now);
        let mut checks = Health::new(UNHEALTHY_AFTER);
        let mut exit = live.exit.clone();
        loop {
            tokio::select! {
                _ = exit.changed() => {
                    let (text, success) = exit.borrow().clone().unwrap_or_else(|| ("exited".into(), false));
                    return Outcome::Exited { text, success };
                }
                _ = self.stop.changed() => {
                    if let Some(forget) = self.stop_requested() {
                        return Outcome::Stop { forget };
                    }
                }
                _ = health.tick() => {
                    let timeout = interval.min(Duration::from_secs(5));
                    let result = probe::probe(&live.addr, self.process.health.as_deref(), timeout).await;
                    match checks.observe(&result) {
                        Check::Pass | Check::Fail { .. } => {}
                        Check::Recovered => {
                            self.reg.event(&self.name, "recovered: healthy again");
                            self.reg.set_state(&self.name, State::Healthy, None);
                        }
                        Check::Unknown { first } => {
                            if first {
                                let why = result.err().map(|e| e.to_string()).unwrap_or_default();
                                self.reg.warn(&self.name, &format!("health check skipped: {why} (not counted against the app)"));
                            }
                        }
                        Check::Unhealthy => {
                            let e = result.err().map(|e| e.to_string()).unwrap_or_default();
                            self.reg.event(&self.name, &format!("unhealthy after {UNHEALTHY_AFTER} failed checks: {e}"));
                            self.reg.set_state(&self.name, State::Unhealthy, Some(e.clone()));
                            if restart_unhealthy {
                                return Outcome::Unhealthy(e);
                            }
                        }
                    }
                    storage::check(&self.reg, &self.name, &self.process).await;
                }
                _ = idle_tick.tick(), if !idle_timeout.is_zero() => {
                    if self.reg.is_idle(&self.name, since, idle_timeout) {
                        return Outcome::Idle;
                    }
                }
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after stop_timeout; wait for the reaper.
    async fn kill(&self, live: &Live) {
        let mut exit = live.exit.clone();
        if exit.borrow().is_some() || self.reg.released() {
            return;
        }
        child::signal_group(live.pid, Signal::SIGTERM);
        let timed_out =
            tokio::time::timeout(self.process.stop_timeout, exit.wait_for(Option::is_some))
                .await
                .is_err();
        if timed_out {
            self.reg.event(
                &self.name,
                &format!(
                    "did not stop within stop_timeout {}: SIGKILL",
                    probe::humanize(self.process.stop_timeout)
                ),
            );
            child::signal_group(live.pid, Signal::SIGKILL);
            let _ = exit.wait_for(Option::is_some).await;
        }
    }

    /// Out of routing, in-flight requests finish (<= drain_timeout), then kill.
    async fn drain_and_kill(&self, live: &Live) {
        // Out of the table first (the drain counts only requests it routed), then drain.
        let generation = self.reg.set_state(&self.name, State::Draining, None);
        self.reg.settle(generation).await;
        self.reg.drain(&self.name).await;
        self.kill(live).await;
    }

    fn cleanup(&self, live: &Live) {
        if self.reg.released() {
            return; // the process runs on under a new ten
        }
        if let Addr::Unix(path) = &live.addr {
            let _ = std::fs::remove_file(path);
        }
        if let Some(cg) = &live.cgroup {
            cgroup::remove(cg);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::tests::NoTraffic;
    use crate::registry::Slot;
    use crate::{Kind, TracingSink};

    /// A runner for `api.1` (slot in place, no child) with `max_restarts` and a `backoff`
    /// from..to, its stop sender and its restarts.
    fn runner(
        max_restarts: u32,
        backoff: (Duration, Duration),
    ) -> (Runner, watch::Sender<Stop>, Life) {
        let config = tenement_conf::Config::parse(
            "[process.api]\ncommand = \"x\"\n",
            "tenement.toml",
            std::path::Path::new("/tmp"),
        )
        .unwrap();
        let mut process = config.process("api").unwrap().clone();
        process.max_restarts = max_restarts;
        (process.backoff_base, process.backoff_max) = backoff;
        let reg = Arc::new(Registry::new(
            Arc::new(config),
            Arc::new(NoTraffic),
            Arc::new(TracingSink),
            None,
        ));
        let name = InstanceName {
            process: "api".into(),
            id: "1".into(),
        };
        reg.insert(&name, Slot::new(&name, Kind::Spawned, 100, 0, false));
        let (stop_tx, stop) = watch::channel(Stop::No);
        let life = Life {
            first: None,
            first_deadline: Instant::now(),
            restarts: Restarts::of(&process).unwrap(),
            ours_warned: false,
        };
        let runner = Runner {
            reg,
            name,
            process,
            stop,
            wake: Arc::new(Notify::new()),
            tail: Arc::new(Tail::default()),
            boot: false,
        };
        (runner, stop_tx, life)
    }

    fn view(r: &Runner) -> crate::InstanceView {
        r.reg.instance(&r.name).unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn backoff_sleeps_then_starts_again_and_counts_the_restart() {
        let (mut r, _stop, mut life) = runner(5, (MS, MS * 2));
        assert!(matches!(r.backoff_phase(&mut life).await, Phase::Start));
        let v = view(&r);
        assert_eq!((v.state, v.restarts), (State::Starting, 1));
        assert!(matches!(r.backoff_phase(&mut life).await, Phase::Start));
        assert_eq!(view(&r).restarts, 2);
    }

    #[tokio::test]
    async fn backoff_gives_up_on_a_crash_loop_and_stays_down_until_stopped() {
        let (mut r, stop, mut life) = runner(2, (MS, MS * 2));
        assert!(matches!(r.backoff_phase(&mut life).await, Phase::Start));
        assert!(matches!(r.backoff_phase(&mut life).await, Phase::Start));
        assert!(matches!(r.backoff_phase(&mut life).await, Phase::Down));
        let v = view(&r);
        assert_eq!((v.state, v.restarts), (State::Failed, 2));
        let why = v.last_error.unwrap();
        assert!(
            why.starts_with("crash loop: 2 restarts within restart_window"),
            "{why}"
        );
        stop.send_replace(Stop::Yes { forget: true });
        assert!(matches!(
            r.down_phase().await,
            Phase::Finish { forget: true }
        ));
    }

    #[tokio::test]
    async fn a_stop_during_the_backoff_finishes_without_a_restart() {
        let (mut r, stop, mut life) = runner(5, (Duration::from_secs(60), Duration::from_secs(60)));
        stop.send_replace(Stop::Yes { forget: false });
        assert!(matches!(
            r.backoff_phase(&mut life).await,
            Phase::Finish { forget: false }
        ));
        assert_eq!(view(&r).restarts, 0);
    }

    #[tokio::test]
    async fn idle_wakes_into_a_fresh_start_or_finishes_on_a_stop() {
        let (mut r, stop, mut life) = runner(100, (MS, MS * 8));
        // Three failures: the next delay would be the cap.
        for _ in 0..3 {
            assert!(matches!(r.backoff_phase(&mut life).await, Phase::Start));
        }
        r.wake.notify_one();
        assert!(matches!(r.idle_phase(&mut life).await, Phase::Start));
        assert_eq!(
            life.restarts.next(Instant::now(), 0.0),
            Next::Restart(MS),
            "a wake starts the backoff over"
        );
        stop.send_replace(Stop::Yes { forget: true });
        assert!(matches!(
            r.idle_phase(&mut life).await,
            Phase::Finish { forget: true }
        ));
    }
}
