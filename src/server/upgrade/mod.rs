//! `ten upgrade [--binary PATH]` (SPEC §11), the old `ten serve`'s side: [`Upgrader::upgrade`]
//! starts the new binary as `ten serve --takeover-fd 3` with the same config file and flags,
//! hands it (over a socket pair it inherits, [`message`]) every listening socket (proxy
//! listeners, the admin listener, the control socket), the locked `ten.lock` and every running
//! instance with its output pipes ([`tenement_supervisor::Handover`]), and waits (bounded) for
//! its `ready`. Then the instances are released (this process touches them no more), systemd
//! hears `MAINPID=` of the new process, and `ten serve` stops accepting, drains and exits 0
//! without stopping any instance. If the new one fails to start or to take over, it is killed,
//! the instances' output is read here again and this process keeps serving.
//!
//! The new side is [`takeover`].

pub mod message;
pub mod takeover;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::ListenFds;
use tokio::sync::mpsc;

use tenement_supervisor::{Handover, Stream, Supervisor};

use crate::server::admin::AdminListener;
use crate::server::listeners::Listeners;
use crate::server::notify::Notifier;
use crate::server::reload::Source;
use message::Description;

/// How long the new process gets to take over (config, database, adoption, listeners).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// What an upgrade needs of the running server.
pub struct Upgrader {
    /// This binary's path at start (a package upgrade puts the new binary there).
    pub exe: PathBuf,
    pub source: Source,
    pub supervisor: Supervisor,
    pub listeners: Arc<Listeners>,
    /// The control socket's descriptor (Pingora's table).
    pub fds: ListenFds,
    pub control_key: String,
    /// The admin listener (as a reload left it).
    pub admin: Arc<AdminListener>,
    /// `ten.lock`, locked (a duplicate: the same open file).
    pub lock: Option<OwnedFd>,
    pub notifier: Arc<Notifier>,
    /// Tells `ten serve` that the new process serves (its pid): stop accepting and exit.
    pub done: mpsc::UnboundedSender<u32>,
    /// One upgrade at a time; Some(new pid) once one succeeded (this process is on its way out).
    pub serial: tokio::sync::Mutex<Option<u32>>,
}

/// A listener's descriptor, duplicated (the copy sent; ours stays in use until the switch).
fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is open for as long as its listener is: it is only duplicated here.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

impl Upgrader {
    /// Hand everything to a new `ten serve` started from `binary` (default: [`Upgrader::exe`]).
    /// Ok((old pid, new pid)) once it serves; Err(why) if it did not take over (this one
    /// still serves, the instances untouched).
    pub async fn upgrade(&self, binary: Option<PathBuf>) -> Result<(u32, u32), String> {
        let mut upgraded = self.serial.lock().await;
        if let Some(pid) = *upgraded {
            return Err(format!(
                "this ten serve (pid {}) was already upgraded: pid {pid} serves now; this one is exiting",
                std::process::id()
            ));
        }
        let binary = binary.unwrap_or_else(|| self.exe.clone());
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot make the handover socket: {e}"))?;
        let mut child = self.start(&binary, &theirs)?;
        drop(theirs);
        let new_pid = child.id().unwrap_or(0);
        tracing::info!(binary = %binary.display(), pid = new_pid, "upgrade: new ten serve started, handing over");
        let handover = self.supervisor.freeze().await;
        let sent = self.describe(&handover).map_err(|e| e.to_string());
        let outcome = match sent {
            Err(e) => Err(e),
            Ok((d, fds)) => tokio::task::spawn_blocking(move || {
                let mut sock = ours;
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                let sent = message::send(&mut sock, &d, &borrowed);
                drop(fds); // the new process has its own copies now
                sock.set_read_timeout(Some(TAKEOVER_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                let answer = message::read_answer(&mut sock);
                match sent {
                    // Its answer says why it stopped reading, if it said anything.
                    Err(e) => Err(answer
                        .err()
                        .unwrap_or_else(|| format!("cannot hand over: {e:#}"))),
                    Ok(()) => answer,
                }
            })
            .await
            .unwrap_or_else(|e| Err(format!("handover task failed: {e}"))),
        };
        match outcome {
            Ok(pid) => {
                self.supervisor.release(&handover);
                // systemd follows the new main process (only the main one may say so).
                self.notifier.main_pid(pid);
                tracing::info!(
                    pid,
                    "upgrade: the new ten serve serves; this one drains and exits"
                );
                *upgraded = Some(pid);
                let _ = self.done.send(pid);
                // The child runs on; it is reaped by whoever inherits it.
                drop(child);
                Ok((std::process::id(), pid))
            }
            Err(why) => {
                let _ = child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                self.supervisor.thaw(handover);
                // The new one may have written its pid in ten.lock: ours again.
                if let Some(lock) = &self.lock {
                    let file = lock.try_clone().map(std::fs::File::from);
                    if let Err(e) =
                        file.and_then(|mut f| crate::server::data_dir::write_pid(&mut f))
                    {
                        tracing::warn!("cannot write ten.lock: {e}");
                    }
                }
                let how = match status {
                    Ok(Ok(s)) => format!(" (it {})", tenement_supervisor::describe_exit(&s)),
                    _ => String::new(),
                };
                let why = format!(
                    "the new ten serve ({}) did not take over: {why}{how}; this one (pid {}) keeps serving, instances untouched",
                    binary.display(),
                    std::process::id()
                );
                tracing::error!("upgrade: {why}");
                Err(why)
            }
        }
    }

    /// Start `binary serve --takeover-fd 3` with this server's config file and flags; `sock`
    /// becomes its descriptor 3. Its output goes where ours goes.
    fn start(&self, binary: &Path, sock: &UnixStream) -> Result<tokio::process::Child, String> {
        use std::os::fd::AsRawFd;
        let meta = std::fs::metadata(binary)
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if !meta.is_file() {
            return Err(format!("cannot run {}: not a file", binary.display()));
        }
        let s = &self.source;
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("--config").arg(&s.path);
        if let Some(dir) = &s.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        cmd.arg("serve");
        if let Some(port) = s.port {
            cmd.arg("--port").arg(port.to_string());
        }
        if let Some(domain) = &s.domain {
            cmd.arg("--domain").arg(domain);
        }
        cmd.arg("--takeover-fd").arg("3");
        cmd.stdin(std::process::Stdio::null());
        let fd = sock.as_raw_fd();
        // SAFETY: between fork and exec only dup2(2) and fcntl(2), async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                use nix::fcntl::{fcntl, FcntlArg, FdFlag};
                if fd == 3 {
                    // Already 3: dup2 would keep close-on-exec; clear it instead.
                    fcntl(3, FcntlArg::F_SETFD(FdFlag::empty()))?;
                } else {
                    nix::unistd::dup2(fd, 3)?;
                }
                Ok(())
            });
        }
        tokio::process::Command::from(cmd)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))
    }

    /// The description and the descriptors it names (duplicates, owned here until sent).
    fn describe(&self, handover: &Handover) -> std::io::Result<(Description, Vec<OwnedFd>)> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut add = |fd: OwnedFd| {
            fds.push(fd);
            fds.len() - 1
        };
        let mut d = Description {
            old_pid: std::process::id(),
            ..Description::default()
        };
        let table = self.fds.lock().get(&self.control_key).copied();
        if let Some(fd) = table {
            d.control = Some(add(dup(fd)?));
        }
        if let Some((local, fd)) = self.admin.handover() {
            d.admin = Some((local, add(dup(fd)?)));
        }
        if let Some(lock) = &self.lock {
            d.lock = Some(add(lock.try_clone()?));
        }
        for (configured, local, tls, fd) in self.listeners.handover() {
            d.listeners.push(message::Listener {
                configured,
                local,
                tls,
                fd: add(dup(fd)?),
            });
        }
        for h in &handover.running {
            let mut pipes = Vec::new();
            for p in &h.pipes {
                pipes.push(message::Pipe {
                    stream: p.stream.as_str().to_string(),
                    fd: add(p.fd.try_clone()?),
                    pending: p.pending.clone(),
                });
            }
            d.instances.push(message::Instance {
                name: h.name.to_string(),
                pid: h.pid,
                addr: match &h.addr {
                    tenement_conf::Addr::Tcp(a) => format!("tcp:{a}"),
                    tenement_conf::Addr::Unix(p) => format!("unix:{}", p.display()),
                },
                cgroup: h.cgroup.clone(),
                weight: h.weight,
                state: h.state.as_str().to_string(),
                restarts: h.restarts,
                last_error: h.last_error.clone(),
                uptime_ms: u64::try_from(h.uptime.as_millis()).unwrap_or(u64::MAX),
                idle_for_ms: u64::try_from(h.idle_for.as_millis()).unwrap_or(u64::MAX),
                pipes,
            });
        }
        d.idle = handover
            .idle
            .iter()
            .map(|(n, w)| message::Idle {
                name: n.to_string(),
                weight: *w,
            })
            .collect();
        d.fds = fds.len();
        Ok((d, fds))
    }
}

/// `stdout` / `stderr` back to a stream.
pub fn stream_of(s: &str) -> Stream {
    if s == "stderr" {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}
