//! `ten serve --takeover-fd N` (hidden): the new process of an upgrade. It receives the old
//! one's description and descriptors before anything else ([`Takeover::receive`]); `serve`
//! then serves on the handed sockets instead of binding, holds the handed `ten.lock`, adopts
//! the handed instances, and answers `ready` ([`Takeover::ready`]) once it listens, or the
//! error that stopped it ([`Takeover::failed`]).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use tenement_conf::{Addr, InstanceName};
use tenement_supervisor::{Handed, HandedPipe, Handover, State, Tail};

use super::message;

pub struct Takeover {
    sock: UnixStream,
    answered: bool,
    pub old_pid: u32,
    pub control: Option<OwnedFd>,
    pub lock: Option<OwnedFd>,
    pub admin: Option<(String, OwnedFd)>,
    /// (configured, bound address, tls, socket)
    listeners: Vec<(String, String, bool, OwnedFd)>,
    pub handover: Handover,
}

fn state_of(s: &str) -> Result<State> {
    Ok(match s {
        "starting" => State::Starting,
        "healthy" => State::Healthy,
        "unhealthy" => State::Unhealthy,
        other => return Err(anyhow!("unexpected instance state {other:?}")),
    })
}

fn addr_of(s: &str) -> Result<Addr> {
    if let Some(a) = s.strip_prefix("tcp:") {
        return Ok(Addr::Tcp(
            a.parse().with_context(|| format!("address {s}"))?,
        ));
    }
    match s.strip_prefix("unix:") {
        Some(p) => Ok(Addr::Unix(p.into())),
        None => Err(anyhow!("bad address {s:?}")),
    }
}

/// Tell the old ten on `fd` why this one cannot take over, before receiving anything (an
/// invalid config file).
pub fn refuse(fd: RawFd, why: &str) {
    // SAFETY: as in `Takeover::receive`: our end of the handover socket, used by nothing else.
    let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
    let _ = message::answer(&mut sock, Err(why));
}

impl Takeover {
    /// Read the old ten's description and descriptors from inherited descriptor `fd`.
    pub fn receive(fd: RawFd) -> Result<Takeover> {
        // SAFETY: `fd` was given on the command line by the old ten, which set it up as our
        // end of the handover socket pair; nothing else in this process uses it.
        let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
        // Close-on-exec from now on (no instance inherits it).
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (d, fds) = message::receive(&mut sock).context("upgrade handover")?;
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let mut take = |i: usize| -> Result<OwnedFd> {
            fds.get_mut(i)
                .and_then(Option::take)
                .ok_or_else(|| anyhow!("handover: descriptor {i} missing"))
        };
        let control = d.control.map(&mut take).transpose()?;
        let lock = d.lock.map(&mut take).transpose()?;
        let admin = match d.admin {
            Some((local, i)) => Some((local, take(i)?)),
            None => None,
        };
        let mut listeners = Vec::new();
        for l in d.listeners {
            listeners.push((l.configured, l.local, l.tls, take(l.fd)?));
        }
        let mut running = Vec::new();
        for i in d.instances {
            let mut pipes = Vec::new();
            for p in i.pipes {
                pipes.push(HandedPipe {
                    stream: super::stream_of(&p.stream),
                    fd: take(p.fd)?,
                    pending: p.pending,
                });
            }
            running.push(Handed {
                name: InstanceName::from_str(&i.name)
                    .map_err(|e| anyhow!("handover: instance {}: {e}", i.name))?,
                pid: i.pid,
                addr: addr_of(&i.addr)?,
                cgroup: i.cgroup,
                weight: i.weight,
                state: state_of(&i.state)?,
                restarts: i.restarts,
                last_error: i.last_error,
                uptime: Duration::from_millis(i.uptime_ms),
                idle_for: Duration::from_millis(i.idle_for_ms),
                pipes,
                tail: Arc::new(Tail::default()),
            });
        }
        let mut idle = Vec::new();
        for i in d.idle {
            let name = InstanceName::from_str(&i.name)
                .map_err(|e| anyhow!("handover: instance {}: {e}", i.name))?;
            idle.push((name, i.weight));
        }
        Ok(Takeover {
            sock,
            answered: false,
            old_pid: d.old_pid,
            control,
            lock,
            admin,
            listeners,
            handover: Handover { running, idle },
        })
    }

    /// The handed listener configured as `configured` (as the old ten had it), if any.
    pub fn listener(&mut self, configured: &str, tls: bool) -> Option<(String, OwnedFd)> {
        let i = self
            .listeners
            .iter()
            .position(|(c, _, t, _)| c == configured && *t == tls)?;
        let (_, local, _, fd) = self.listeners.remove(i);
        Some((local, fd))
    }

    /// We serve: tell the old ten (it stops accepting and exits).
    pub fn ready(&mut self) -> Result<()> {
        self.answered = true;
        message::answer(&mut self.sock, Ok(std::process::id()))
            .context("cannot tell the old ten serve that this one serves")
    }

    /// We could not take over: tell the old ten why (it keeps serving).
    pub fn failed(&mut self, why: &str) {
        if !self.answered {
            self.answered = true;
            let _ = message::answer(&mut self.sock, Err(why));
        }
    }
}
