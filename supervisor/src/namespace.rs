//! `isolation = "namespace"` (SPEC §12): between fork and exec the child enters new PID,
//! mount, IPC and UTS namespaces; mounts become private, `/tmp` a private tmpfs, `data_dir` a
//! tmpfs with only the instance's own DATA_DIR and socket directory bound back; then it drops
//! to the instance's user and execs. No external tool.
//!
//! The PID namespace takes two forks: `unshare(CLONE_NEWPID)` puts only the caller's *next*
//! child in it. So the process ten spawned (host pid P, leader of process group P: the pid
//! ten records, signals and waits for) stays a small waiter in the host namespace; its child
//! is pid 1 of the new namespace, a reaper; the reaper's child is the app (pid 2), which execs.
//! All three are in process group P, so ten's `killpg(P, SIGTERM)` reaches the app directly,
//! as with `isolation = "process"`: the waiter ignores the stop signals, and pid 1 of a
//! namespace ignores them by nature (the kernel delivers to it only signals it handles,
//! SIGKILL aside). The app is not pid 1 because of that rule: an app without a SIGTERM handler
//! would never stop gracefully. When the app exits, pid 1 passes its wait status to the
//! waiter (a pipe) and exits (the kernel kills whatever is left in the namespace); the waiter
//! exits the same way (re-raising a fatal signal), so ten sees the app's own exit status.
//! The waiters close every descriptor they inherited (the app's stdout/stderr pipes and
//! std's exec-status pipe among them), so `spawn` returns once the app has exec'd, and
//! output capture ends when the app's output does.
//!
//! Everything the child runs is async-signal-safe: syscalls on memory prepared before fork.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::identity::Identity;

/// The signals ten or an operator sends to an instance's group: the waiter ignores them.
const STOP_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// One directory bound back over the hidden data_dir.
struct Bind {
    /// The directory: opened (O_PATH) in the new mount namespace before anything is mounted
    /// over it, then bound from `/proc/self/fd/N` (a descriptor opened before `unshare`
    /// would name a mount of the old namespace, which mount(2) refuses).
    target: CString,
    /// The target's ancestors and itself, made (if missing) before the bind.
    mkdirs: Vec<CString>,
}

/// What the child does, prepared (paths, descriptors) before the fork.
pub struct Plan {
    data_dir: CString,
    /// data_dir and its ancestors (remade when data_dir is under the new /tmp).
    data_dir_mkdirs: Vec<CString>,
    binds: Vec<Bind>,
    identity: Option<Identity>,
}

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

/// Every ancestor of `p` (from the root, without it) and `p` itself.
fn ancestors(p: &Path) -> Result<Vec<CString>, String> {
    let mut all: Vec<PathBuf> = p.ancestors().map(Path::to_path_buf).collect();
    all.reverse();
    all.into_iter()
        .filter(|a| a.as_os_str().len() > 1)
        .map(|a| cstring(&a))
        .collect()
}

impl Plan {
    /// `keep`: the instance's own directories (DATA_DIR, the socket's; at most 4), bound back.
    pub fn new(
        data_dir: &Path,
        keep: &[&Path],
        identity: Option<Identity>,
    ) -> Result<Plan, String> {
        if keep.len() > 4 {
            return Err(format!("{} directories to keep (at most 4)", keep.len()));
        }
        let mut binds = Vec::new();
        for dir in keep {
            binds.push(Bind {
                target: cstring(dir)?,
                mkdirs: ancestors(dir)?,
            });
        }
        Ok(Plan {
            data_dir: cstring(data_dir)?,
            data_dir_mkdirs: ancestors(data_dir)?,
            binds,
            identity,
        })
    }

    /// In the child between fork and exec. Returns only in the app (pid 2 of the new PID
    /// namespace), with privileges dropped; the two waiters never return.
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: raw syscalls on CStrings and buffers allocated before the fork; the forks
        // happen in a single-threaded process (std's child).
        unsafe {
            check(libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
            ))?;
            let none = std::ptr::null();
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ))?;
            // The directories to keep, opened before anything hides them (at most 4 of them).
            let mut fds = [-1; 4];
            for (fd, b) in fds.iter_mut().zip(&self.binds) {
                *fd = libc::open(
                    b.target.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                if *fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777".as_ptr().cast(),
            ))?;
            // Directories made here get exactly 0711 (ten's umask is 077); restored below.
            let umask = libc::umask(0);
            for d in &self.data_dir_mkdirs {
                mkdir(d)?;
            }
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.data_dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0711".as_ptr().cast(),
            ))?;
            for (b, fd) in self.binds.iter().zip(fds) {
                for d in &b.mkdirs {
                    mkdir(d)?;
                }
                let source = fd_path(fd);
                check(libc::mount(
                    source.as_ptr().cast(),
                    b.target.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    none.cast(),
                ))?;
                libc::close(fd);
            }
            libc::umask(umask);
            // The stop signals wait (blocked) until each process has its disposition.
            let mut block: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            for s in STOP_SIGNALS {
                libc::sigaddset(&mut block, s);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &block, &mut old);
            let mut pipe = [0; 2];
            check(libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC))?;
            let [read_end, write_end] = pipe;
            let init = libc::fork();
            if init < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if init > 0 {
                waiter(init, read_end, &old);
            }
            // pid 1 of the new namespace.
            libc::close(read_end);
            // Its own /proc (best effort: the app still runs with the host's).
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                none.cast(),
            );
            let app = libc::fork();
            if app < 0 {
                libc::_exit(127);
            }
            if app > 0 {
                reaper(app, write_end);
            }
            // The app.
            libc::close(write_end);
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        if let Some(id) = &self.identity {
            id.drop_privileges()?;
        }
        Ok(())
    }
}

/// The process ten spawned: wait for pid 1 of the namespace, then end as the app ended.
unsafe fn waiter(init: libc::pid_t, read_end: libc::c_int, old: &libc::sigset_t) -> ! {
    for s in STOP_SIGNALS {
        libc::signal(s, libc::SIG_IGN);
    }
    libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    close_all_but(read_end);
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        let n = libc::read(read_end, buf[got..].as_mut_ptr().cast(), buf.len() - got);
        if n > 0 {
            got += n as usize;
        } else if n == 0 || *libc::__errno_location() != libc::EINTR {
            break;
        }
    }
    let mut status = 0;
    while libc::waitpid(init, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    if got == buf.len() {
        status = i32::from_ne_bytes(buf);
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
    libc::_exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    })
}

/// pid 1 of the namespace: reap everything; when the app ends, pass its status on and exit.
unsafe fn reaper(app: libc::pid_t, write_end: libc::c_int) -> ! {
    close_all_but(write_end);
    loop {
        let mut status = 0;
        let pid = libc::waitpid(-1, &mut status, 0);
        if pid == app {
            let buf = status.to_ne_bytes();
            libc::write(write_end, buf.as_ptr().cast(), buf.len());
            libc::_exit(0);
        }
        if pid < 0 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(127);
        }
    }
}

/// Close every descriptor but `keep` (stdout/stderr and std's exec-status pipe included):
/// close_range(2), or one close(2) each up to the open-file limit on kernels before 5.9.
unsafe fn close_all_but(keep: libc::c_int) {
    let k = keep as libc::c_uint;
    let below = k == 0 || libc::syscall(libc::SYS_close_range, 0u32, k - 1, 0u32) == 0;
    let above = libc::syscall(libc::SYS_close_range, k + 1, libc::c_uint::MAX, 0u32) == 0;
    if below && above {
        return;
    }
    let mut limit: libc::rlimit = std::mem::zeroed();
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
        limit.rlim_cur.min(1 << 20) as libc::c_int
    } else {
        1024
    };
    for fd in (0..max).filter(|fd| *fd != keep) {
        libc::close(fd);
    }
}

/// `/proc/self/fd/N` NUL-terminated, written on the stack (no allocation after fork).
fn fd_path(fd: libc::c_int) -> [u8; 32] {
    let mut buf = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// mkdir 0711; one that exists is fine.
unsafe fn mkdir(path: &CString) -> std::io::Result<()> {
    if libc::mkdir(path.as_ptr(), 0o711) == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths() {
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let buf = fd_path(fd);
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            assert_eq!(std::str::from_utf8(&buf[..end]), Ok(want));
        }
        let buf = fd_path(i32::MAX);
        assert!(buf.contains(&0), "NUL-terminated");
    }
}
