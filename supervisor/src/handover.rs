//! An upgrade of ten (`ten upgrade`): the running instances handed to a new `ten serve` and
//! taken over by it, same processes. The old one [`Supervisor::freeze`]s (no new spawn; each
//! instance's output readers stop and give their pipes back with the bytes not yet made into
//! lines), then either [`Supervisor::release`]s them (the new one serves: its runners end
//! without touching anything) or [`Supervisor::thaw`]s (the new one failed: reading goes on).
//! The new one adopts them in [`Supervisor::prepare_adopting`]: not its children, so each is
//! watched through a pidfd (its exit status is unknown: an exit counts as a crash), in its own
//! process group and cgroup as before; their output is read from the handed pipes once the new
//! ten serves ([`Supervisor::resume_output`]).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

use tenement_conf::{Addr, InstanceName};

use crate::child::{self, HandedPipe, Tail};
use crate::registry::Slot;
use crate::runner::{Adopt, Live, Runner, Stop};
use crate::{guard, Kind, State, Supervisor};

/// How long the output readers get to stop and give their pipes back.
const HAND_OVER_PIPES: Duration = Duration::from_secs(2);

/// The text of an adopted instance's exit: not ten's child, so its status is not known.
pub const ADOPTED_EXIT: &str = "exited (status unknown: adopted by this ten serve at an upgrade)";

/// One running instance as handed over.
#[derive(Debug)]
pub struct Handed {
    pub name: InstanceName,
    /// Its pid, which is also its process group.
    pub pid: u32,
    pub addr: Addr,
    pub cgroup: Option<PathBuf>,
    pub weight: u32,
    /// Starting, healthy or unhealthy.
    pub state: State,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub uptime: Duration,
    /// Since its last request (or its start): its idle timer goes on.
    pub idle_for: Duration,
    pub pipes: Vec<HandedPipe>,
    /// Its last lines (kept in the old ten for a thaw; not sent).
    pub tail: Arc<Tail>,
}

/// Everything an upgrade hands over.
#[derive(Debug, Default)]
pub struct Handover {
    pub running: Vec<Handed>,
    /// Stopped for idleness (with their weights): they wait for a wake in the new ten.
    pub idle: Vec<(InstanceName, u32)>,
}

impl Supervisor {
    /// Stop spawning and take every running instance's pipes (an upgrade begins).
    pub async fn freeze(&self) -> Handover {
        let reg = &self.reg;
        reg.frozen.store(true, Ordering::Release);
        let mut taken = Vec::new();
        let mut idle = Vec::new();
        {
            let mut slots = reg.slots();
            for (name, slot) in slots.iter_mut() {
                if slot.routed.kind != Kind::Spawned || slot.reserved {
                    continue;
                }
                let running = matches!(
                    slot.routed.state,
                    State::Starting | State::Healthy | State::Unhealthy
                );
                match (running, slot.status.pid, &slot.routed.addr) {
                    (true, Some(pid), Some(addr)) => {
                        let Some(pipes) = slot.pipes.take() else {
                            continue;
                        };
                        let uptime = slot.status.started.map(|s| s.elapsed()).unwrap_or_default();
                        let idle_for = reg
                            .traffic
                            .last_request(name)
                            .map_or(uptime, |t| t.elapsed().min(uptime));
                        taken.push((
                            Handed {
                                name: name.clone(),
                                pid,
                                addr: addr.clone(),
                                cgroup: slot.cgroup.clone(),
                                weight: slot.routed.weight,
                                state: slot.routed.state,
                                restarts: slot.status.restarts,
                                last_error: slot.status.last_error.clone(),
                                uptime,
                                idle_for,
                                pipes: Vec::new(),
                                tail: pipes.tail.clone(),
                            },
                            pipes,
                        ));
                    }
                    (false, None, _) if slot.routed.idle && slot.routed.state == State::Stopped => {
                        idle.push((name.clone(), slot.routed.weight));
                    }
                    _ => {}
                }
            }
        }
        let mut running = Vec::new();
        for (mut h, pipes) in taken {
            h.pipes = pipes.hand_over(HAND_OVER_PIPES).await;
            running.push(h);
        }
        Handover { running, idle }
    }

    /// The upgrade failed: read the instances' output again, spawn again.
    pub fn thaw(&self, handover: Handover) {
        let reg = &self.reg;
        for h in handover.running {
            let (pipes, _captures) = child::resume(&h.name, &reg.sink, &h.tail, h.pipes);
            let mut slots = reg.slots();
            if let Some(slot) = slots.get_mut(&h.name) {
                if slot.status.pid == Some(h.pid) {
                    slot.pipes = Some(pipes);
                }
            }
        }
        reg.frozen.store(false, Ordering::Release);
    }

    /// The new ten serves with the instances: from now on this supervisor touches none of them
    /// (its runners end at their next step; no kill, no cleanup, no write to the desired
    /// state). A process this one runs that was not handed over (started or restarted during
    /// the handover, or being stopped) is unknown to the new ten: it is killed.
    pub fn release(&self, handover: &Handover) {
        let reg = &self.reg;
        let slots = reg.slots();
        for (name, slot) in slots.iter() {
            let Some(pid) = slot.status.pid else { continue };
            let handed = handover
                .running
                .iter()
                .any(|h| h.name == *name && h.pid == pid);
            let dir = child::instance_data_dir(&reg.data_dir, name);
            if slot.routed.kind == Kind::Spawned
                && !handed
                && crate::orphans::group_is_instance(pid, &dir)
            {
                child::signal_group(pid, Signal::SIGKILL);
            }
        }
        reg.released.store(true, Ordering::Release);
        drop(slots);
    }

    /// [`Supervisor::prepare`] for a new ten that takes `handover` over: the handed instances
    /// are adopted (not killed as orphans, not spawned again); the idle ones wait for a wake;
    /// the other desired instances are announced for [`Supervisor::start_desired`].
    pub async fn prepare_adopting(&self, handover: Handover) -> Vec<(InstanceName, u32)> {
        let adopted: Vec<(InstanceName, u32)> = handover
            .running
            .iter()
            .map(|h| (h.name.clone(), h.pid))
            .collect();
        let mut wanted = self.prepare_with(&adopted).await;
        let config = self.reg.config();
        let mut taken = Vec::new();
        for h in handover.running {
            let known = config
                .process(&h.name.process)
                .filter(|p| !p.is_external())
                .cloned();
            match known {
                Some(process) => {
                    taken.push(h.name.clone());
                    self.adopt(h, process);
                }
                None => {
                    tracing::warn!(instance = %h.name, pid = h.pid, "adopted instance is no longer in the config: killed");
                    child::signal_group(h.pid, Signal::SIGKILL);
                    self.reg.persist(|s| s.remove(&h.name));
                }
            }
        }
        for (name, weight) in handover.idle {
            if let Some(process) = config.process(&name.process).filter(|p| !p.is_external()) {
                taken.push(name.clone());
                self.adopt_idle(&name, weight, process.clone());
            }
        }
        wanted.retain(|(n, _)| !taken.contains(n));
        self.reg.publish();
        wanted
    }

    /// A slot and a runner for an adopted instance (published by the caller).
    fn insert_adopted(
        &self,
        name: &InstanceName,
        weight: u32,
        process: tenement_conf::Process,
        fill: impl FnOnce(&mut Slot),
    ) -> (Runner, watch::Receiver<Stop>, watch::Sender<bool>) {
        let reg = &self.reg;
        let (stop_tx, stop_rx) = watch::channel(Stop::No);
        let (done_tx, done_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let mut slot = Slot::new(name, Kind::Spawned, weight, reg.next_seq(), false);
        slot.stop = stop_tx;
        slot.wake = wake.clone();
        slot.done = done_rx;
        fill(&mut slot);
        reg.slots().insert(name.clone(), slot);
        let runner = Runner {
            reg: reg.clone(),
            name: name.clone(),
            process,
            stop: stop_rx.clone(),
            wake,
            tail: Arc::new(Tail::default()),
            boot: true,
        };
        (runner, stop_rx, done_tx)
    }

    /// Start reading the adopted instances' output (once this ten serves: a takeover that
    /// fails before has read nothing, so the old ten goes on where it stopped).
    pub fn resume_output(&self) {
        let reg = &self.reg;
        let deferred = std::mem::take(&mut *reg.deferred_pipes());
        for (name, tail, handed) in deferred {
            let (pipes, _captures) = child::resume(&name, &reg.sink, &tail, handed);
            if let Some(slot) = reg.slots().get_mut(&name) {
                slot.pipes = Some(pipes);
            }
        }
    }

    fn adopt(&self, h: Handed, process: tenement_conf::Process) {
        let reg = &self.reg;
        let now = Instant::now();
        let exit = watch_pid(h.pid, child::instance_data_dir(&reg.data_dir, &h.name));
        let tail = Arc::new(Tail::default());
        reg.deferred_pipes()
            .push((h.name.clone(), tail.clone(), h.pipes));
        let (mut runner, stop_rx, done_tx) =
            self.insert_adopted(&h.name, h.weight, process, |slot| {
                let r = Arc::make_mut(&mut slot.routed);
                r.state = h.state;
                r.addr = Some(h.addr.clone());
                slot.status.pid = Some(h.pid);
                slot.status.started = now.checked_sub(h.uptime).or(Some(now));
                slot.status.restarts = h.restarts;
                slot.status.last_error = h.last_error.clone();
                slot.cgroup = h.cgroup.clone();
            });
        runner.tail = tail;
        let live = Live {
            pid: h.pid,
            addr: h.addr,
            exit,
            cgroup: h.cgroup,
            captures: Vec::new(),
            idle_since: now.checked_sub(h.idle_for),
        };
        reg.event(&h.name, &format!("adopted pid {} (upgrade of ten)", h.pid));
        let from = if h.state == State::Starting {
            Adopt::Ready(live)
        } else {
            Adopt::Monitor(live)
        };
        tokio::spawn(guard::supervise(
            reg.clone(),
            h.name,
            stop_rx,
            runner.adopt(from),
            done_tx,
        ));
    }

    fn adopt_idle(&self, name: &InstanceName, weight: u32, process: tenement_conf::Process) {
        let (runner, stop_rx, done_tx) = self.insert_adopted(name, weight, process, |slot| {
            let r = Arc::make_mut(&mut slot.routed);
            r.state = State::Stopped;
            r.idle = true;
        });
        tokio::spawn(guard::supervise(
            self.reg.clone(),
            name.clone(),
            stop_rx,
            runner.adopt(Adopt::Idle),
            done_tx,
        ));
    }
}

/// Watch a process that is not our child: its pidfd turns readable when it exits. What it left
/// in its group goes with it (as for a child), but only while that group still has a member of
/// this instance (`data_dir`, its DATA_DIR): the leader is reaped by someone else, so its pid
/// may already belong to another process. A process already gone reports at once.
fn watch_pid(pid: u32, data_dir: PathBuf) -> watch::Receiver<Option<(String, bool)>> {
    let (tx, rx) = watch::channel(None);
    let fd = pidfd_open(pid);
    tokio::spawn(async move {
        // SAFETY: an OwnedFd, moved into the AsyncFd: open and the same for its whole life.
        let registered = fd.and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(Into::into));
        match registered {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                // Cannot watch it: poll for it instead (bounded to its life).
                tracing::warn!(pid, "pidfd_open: {e}; watching the pid by polling");
                let p = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
                while nix::sys::signal::kill(p, None).is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if crate::orphans::group_is_instance(pid, &data_dir) {
            child::signal_group(pid, Signal::SIGKILL);
        }
        let _ = tx.send(Some((ADOPTED_EXIT.to_string(), false)));
    });
    rx
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::tests::NoTraffic;
    use crate::{Error, TracingSink};

    fn supervisor() -> Supervisor {
        let config = tenement_conf::Config::parse(
            "[process.api]\ncommand = \"x\"\n",
            "tenement.toml",
            std::path::Path::new("/tmp"),
        )
        .unwrap();
        Supervisor::new(
            Arc::new(config),
            Arc::new(NoTraffic),
            Arc::new(TracingSink),
            None,
        )
    }

    #[tokio::test]
    async fn spawns_are_refused_while_frozen_and_allowed_again_after_a_thaw() {
        let s = supervisor();
        let name = InstanceName {
            process: "nope".into(),
            id: "1".into(),
        };
        let handover = s.freeze().await;
        assert!(matches!(s.spawn(&name, 100).await, Err(Error::Upgrading)));
        s.thaw(handover);
        // Past the freeze: refused for what it is (an unknown process), not for the upgrade.
        assert!(matches!(
            s.spawn(&name, 100).await,
            Err(Error::UnknownProcess(_))
        ));
    }

    #[tokio::test]
    async fn a_process_that_is_gone_reports_its_exit_as_unknown() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap(); // reaped: the pid no longer exists
        let mut exit = watch_pid(pid, PathBuf::from("/nonexistent"));
        let got = tokio::time::timeout(Duration::from_secs(10), exit.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(got, Some((ADOPTED_EXIT.to_string(), false)));
    }

    #[tokio::test]
    async fn the_exit_of_a_watched_process_that_is_not_our_child_is_seen() {
        use std::os::unix::process::CommandExt;
        // A grandchild: `sh` starts `sleep` in its own group and exits; sleep is not ours.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .process_group(0)
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let mut exit = watch_pid(pid, PathBuf::from("/nonexistent"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            exit.borrow().is_none(),
            "reported an exit of a live process"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            Signal::SIGKILL,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), exit.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap();
    }
}
