//! systemd `Type=notify` (sd_notify(3)): `READY=1` once listening, `RELOADING=1` with
//! `MONOTONIC_USEC=` before a reload and `READY=1` after it, `STOPPING=1` at shutdown,
//! `MAINPID=` (sent by the old process, the one systemd listens to) when an upgrade hands over
//! to a new process. One
//! datagram per message to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing. A failure to notify is
//! logged, never fatal.

use std::os::unix::net::UnixDatagram;

/// The notification socket named by `$NOTIFY_SOCKET`, read once at start.
pub struct Notifier {
    target: Option<String>,
}

impl Notifier {
    pub fn from_env() -> Self {
        Notifier {
            target: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// Before a reload: `RELOADING=1` with the time now (`CLOCK_MONOTONIC`), as
    /// `Type=notify-reload` expects; `ready()` once it is applied.
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| {
                let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
                let nsec = u64::try_from(t.tv_nsec()).unwrap_or(0);
                secs.saturating_mul(1_000_000).saturating_add(nsec / 1_000)
            })
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    /// An upgrade: the new process (`pid`) serves and is the main one from now on.
    pub fn main_pid(&self, pid: u32) {
        self.send(&format!("MAINPID={pid}\nREADY=1"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, msg: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = send_to(target, msg) {
            tracing::warn!(socket = %target, "cannot notify systemd: {e}");
        }
    }
}

fn send_to(target: &str, msg: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), target)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(path.display().to_string()),
        };
        n.ready();
        assert_eq!(recv(&sock), "READY=1");
        n.reloading();
        let m = recv(&sock);
        let usec: u64 = m
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0, "{m}");
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1");
        n.main_pid(4242);
        assert_eq!(recv(&sock), "MAINPID=4242\nREADY=1");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ten-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some(format!("@{name}")),
        };
        n.ready();
        assert_eq!(recv(&sock), "READY=1");
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        Notifier { target: None }.ready();
    }
}
