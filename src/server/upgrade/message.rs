//! What an upgrade sends from the old `ten serve` to the new one, over the socket pair the new
//! one inherits (its `--takeover-fd`): one JSON description (length-prefixed), then the
//! descriptors it names by index, [`BATCH`] per `sendmsg` (SCM_RIGHTS). The new one answers
//! one line: `ready PID` once it serves, or `error TEXT`.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Descriptors per message (SCM_MAX_FD is 253).
const BATCH: usize = 200;
/// The longest description accepted (a few hundred bytes per instance).
const MAX_JSON: usize = 64 << 20;

/// A proxy listener.
#[derive(Debug, Serialize, Deserialize)]
pub struct Listener {
    /// As the config has it (`tls ADDR` for the TLS listener).
    pub configured: String,
    pub local: String,
    pub tls: bool,
    pub fd: usize,
}

/// One instance's output pipe.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pipe {
    /// `stdout` or `stderr`.
    pub stream: String,
    pub fd: usize,
    /// Read from the pipe but not yet made into lines.
    pub pending: Vec<u8>,
}

/// One running instance.
#[derive(Debug, Serialize, Deserialize)]
pub struct Instance {
    /// `process:id`
    pub name: String,
    pub pid: u32,
    /// `tcp:HOST:PORT` or `unix:PATH`
    pub addr: String,
    pub cgroup: Option<PathBuf>,
    pub weight: u32,
    /// `starting`, `healthy` or `unhealthy`
    pub state: String,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub uptime_ms: u64,
    pub idle_for_ms: u64,
    pub pipes: Vec<Pipe>,
}

/// An instance stopped for idleness.
#[derive(Debug, Serialize, Deserialize)]
pub struct Idle {
    pub name: String,
    pub weight: u32,
}

/// The whole description.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Description {
    pub old_pid: u32,
    pub control: Option<usize>,
    /// `{data_dir}/ten.lock`, locked.
    pub lock: Option<usize>,
    /// (bound address, fd)
    pub admin: Option<(String, usize)>,
    pub listeners: Vec<Listener>,
    pub instances: Vec<Instance>,
    pub idle: Vec<Idle>,
    /// How many descriptors follow.
    pub fds: usize,
}

/// Send `d` and `fds` (borrowed: the sender keeps its own).
pub fn send(sock: &mut UnixStream, d: &Description, fds: &[BorrowedFd<'_>]) -> Result<()> {
    let json = serde_json::to_vec(d)?;
    let len = u32::try_from(json.len()).context("description too large")?;
    sock.write_all(&len.to_be_bytes())?;
    sock.write_all(&json)?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    for chunk in raw.chunks(BATCH) {
        let cmsg = [ControlMessage::ScmRights(chunk)];
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(b"F")],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .context("sendmsg")?;
    }
    Ok(())
}

/// The new ten's answer: `ready PID` or `error TEXT`, one line.
pub fn answer(sock: &mut UnixStream, outcome: Result<u32, &str>) -> std::io::Result<()> {
    let line = match outcome {
        Ok(pid) => format!("ready {pid}\n"),
        Err(why) => format!("error {}\n", why.replace('\n', " / ")),
    };
    sock.write_all(line.as_bytes())
}

/// Read the new ten's answer (bounded by the socket's read timeout): its pid, or why not.
pub fn read_answer(sock: &mut UnixStream) -> Result<u32, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match sock.read(&mut byte) {
            Ok(0) => return Err("it exited (or closed the handover socket) before serving".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 64 * 1024 => line.push(byte[0]),
            Ok(_) => return Err("its answer is too long".into()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("it did not take over in time".into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("handover socket: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line);
    if let Some(pid) = line.strip_prefix("ready ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| format!("bad answer {line:?}"));
    }
    match line.strip_prefix("error ") {
        Some(why) => Err(why.to_string()),
        None => Err(format!("bad answer {line:?}")),
    }
}

/// Receive a description and its descriptors.
pub fn receive(sock: &mut UnixStream) -> Result<(Description, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len)
        .context("the old ten serve sent nothing")?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_JSON {
        bail!("description of {len} bytes: too large");
    }
    // read_exact reads no further than the description: the bytes that carry descriptors
    // are read by recvmsg only.
    let mut json = vec![0u8; len];
    sock.read_exact(&mut json)?;
    let d: Description = serde_json::from_slice(&json).context("bad description")?;
    let mut fds = Vec::with_capacity(d.fds);
    while fds.len() < d.fds {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; BATCH]);
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("recvmsg")?;
        if msg.bytes == 0 {
            bail!(
                "the old ten serve closed the socket after {} of {} descriptors",
                fds.len(),
                d.fds
            );
        }
        for c in msg.cmsgs().context("control messages")? {
            if let ControlMessageOwned::ScmRights(got) = c {
                // SAFETY: descriptors just received, owned by nobody else in this process.
                fds.extend(
                    got.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    Ok((d, fds))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_description_and_more_descriptors_than_one_message_carries_arrive_intact() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        // 450 pipes' read ends: three batches. Each carries a different byte written after.
        let pipes: Vec<(OwnedFd, OwnedFd)> =
            (0..450).map(|_| nix::unistd::pipe().unwrap()).collect();
        let d = Description {
            old_pid: 7,
            instances: vec![Instance {
                name: "api:1".into(),
                pid: 42,
                addr: "tcp:127.0.0.1:9".into(),
                cgroup: None,
                weight: 30,
                state: "healthy".into(),
                restarts: 2,
                last_error: None,
                uptime_ms: 1,
                idle_for_ms: 1,
                pipes: vec![Pipe {
                    stream: "stdout".into(),
                    fd: 449,
                    pending: b"half a li".to_vec(),
                }],
            }],
            fds: pipes.len(),
            ..Description::default()
        };
        let borrowed: Vec<BorrowedFd<'_>> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
        let (got, fds) = std::thread::scope(|s| {
            s.spawn(|| send(&mut a, &d, &borrowed).unwrap());
            receive(&mut b).unwrap()
        });
        assert_eq!(got.instances[0].pipes[0].pending, b"half a li");
        assert_eq!(fds.len(), 450);
        for (i, (_, w)) in pipes.iter().enumerate() {
            nix::unistd::write(w, &[(i % 251) as u8]).unwrap();
        }
        for (i, fd) in fds.iter().enumerate() {
            let mut byte = [0u8; 1];
            nix::unistd::read(fd.as_raw_fd(), &mut byte).unwrap();
            assert_eq!(byte[0], (i % 251) as u8, "descriptor {i} is another pipe");
        }
    }
}
