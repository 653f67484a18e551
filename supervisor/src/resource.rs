//! ten's own resource exhaustion (SPEC §14): which OS errors mean that ten itself is out of
//! file descriptors, memory or processes, as opposed to an app that misbehaves. Such an error in
//! a health probe makes the check's result unknown (skipped), and in a spawn it is retried with
//! backoff; neither ever counts against the app. Every caller classifies through [`ours`].

use std::io;

/// What ten was doing when the error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connecting to an instance (health or readiness probe).
    Connect,
    /// Starting an instance: a free port, the pipes, fork and exec.
    Spawn,
}

/// Is `e` ten's own resource exhaustion (never the app's fault)?
///
/// EMFILE/ENFILE (no file descriptor), ENOMEM/ENOBUFS (no kernel memory) in any operation;
/// EAGAIN only in a spawn, where it means fork hit RLIMIT_NPROC or the pid limit (on a
/// connect to a unix socket, EAGAIN is the app's full backlog: the app's problem).
pub fn ours(e: &io::Error, op: Op) -> bool {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => true,
        Some(libc::EAGAIN) => op == Op::Spawn,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn fd_and_memory_exhaustion_are_ours_everywhere() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS] {
            assert!(ours(&os(code), Op::Connect), "{code} on connect");
            assert!(ours(&os(code), Op::Spawn), "{code} on spawn");
        }
    }

    #[test]
    fn eagain_is_ours_only_in_a_spawn() {
        assert!(ours(&os(libc::EAGAIN), Op::Spawn));
        assert!(!ours(&os(libc::EAGAIN), Op::Connect));
    }

    #[test]
    fn the_apps_errors_are_not_ours() {
        for code in [
            libc::ECONNREFUSED,
            libc::ENOENT,
            libc::EACCES,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
            libc::ENOEXEC,
        ] {
            assert!(!ours(&os(code), Op::Connect), "{code}");
            assert!(!ours(&os(code), Op::Spawn), "{code}");
        }
        // No OS error at all (a message, a timeout) is never ours.
        assert!(!ours(&io::Error::other("no"), Op::Spawn));
        assert!(!ours(&io::ErrorKind::TimedOut.into(), Op::Connect));
    }
}
