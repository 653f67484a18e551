//! Who is on the other end of the control socket (SPEC §12): only root or `ten serve`'s own
//! uid may use it. Anyone else (the socket's mode is the first fence; this is the second, for
//! a socket made reachable by mistake) is logged with its uid and pid and dropped before a
//! byte of its request is read.

use std::os::fd::{BorrowedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use pingora_core::protocols::http::ServerSession;

/// Whether a peer of uid `peer` may use the control socket of a server running as `own`.
pub(crate) fn allowed(peer: u32, own: u32) -> bool {
    peer == 0 || peer == own
}

/// (uid, pid) of the process connected to the Unix socket `fd` (SO_PEERCRED).
fn credentials(fd: RawFd) -> std::io::Result<(u32, i32)> {
    // SAFETY: `fd` is the session's open socket, borrowed only for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let cred = getsockopt(&fd, PeerCredentials)?;
    Ok((cred.uid(), cred.pid()))
}

/// Whether the control socket session's peer may talk to ten; logs a warning when not.
pub(crate) fn control_peer_allowed(session: &ServerSession) -> bool {
    let own = nix::unistd::geteuid().as_raw();
    let Some(stream) = session.stream() else {
        tracing::warn!("control socket: refused a connection whose peer cannot be checked");
        return false;
    };
    match credentials(stream.id()) {
        Ok((uid, _)) if allowed(uid, own) => true,
        Ok((uid, pid)) => {
            tracing::warn!(
                peer_uid = uid,
                peer_pid = pid,
                "control socket: refused a connection from uid {uid} (pid {pid}): only root and uid {own} may use it"
            );
            false
        }
        Err(e) => {
            tracing::warn!(
                "control socket: refused a connection: cannot read its peer's credentials: {e}"
            );
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn root_and_own_uid_only() {
        assert!(allowed(0, 1000));
        assert!(allowed(1000, 1000));
        assert!(!allowed(1001, 1000));
        assert!(!allowed(65534, 0));
        assert!(allowed(0, 0));
    }

    #[test]
    fn reads_the_peer_of_a_socket() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (uid, pid) = credentials(a.as_raw_fd()).unwrap();
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
        assert_eq!(pid, std::process::id() as i32);
    }
}
