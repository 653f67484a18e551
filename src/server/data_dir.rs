//! The data dir at `ten serve` start (SPEC §12): umask 077 for every file ten writes, the dir
//! itself 0711 (created so, or changed so with a log line), the databases ten left there
//! before 0600, and `ten.lock` (an flock held for the server's life) so that a second
//! `ten serve` on the same dir exits at once instead of taking over the first one's socket.
//! An upgrade hands the locked file over (same open file: the lock goes with it).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{umask, Mode};

/// The data dir's mode: others may pass through to their own DATA_DIR, never list it.
const DIR_MODE: u32 = 0o711;

/// Files of earlier runs made private again (SQLite gives its journals the database's mode).
const PRIVATE: &[&str] = &[
    "tenement.db",
    "tenement.db-wal",
    "tenement.db-shm",
    "tenement.db-journal",
];

/// Held for the server's life: `{data_dir}/ten.lock`, locked, with the server's pid.
pub struct DataDirLock {
    _lock: Option<Flock<File>>,
    /// Another ten holds the same locked file (an upgrade): dropping this must not unlock it.
    shared: bool,
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        if self.shared {
            // Closing the descriptor (at exit) keeps the lock of the open file; unlocking
            // would take it from the other process too.
            std::mem::forget(self._lock.take());
        }
    }
}

/// Set the umask, create or fix `dir`, and lock it for this server.
pub fn prepare(dir: &Path) -> Result<DataDirLock> {
    umask(Mode::from_bits_truncate(0o077));
    setup(dir)
}

/// [`prepare`] for a new ten taking over (an upgrade): `held` is the previous one's locked
/// `ten.lock` (the same open file, so the lock is already ours); None if it held none.
pub fn take_over(dir: &Path, held: Option<std::os::fd::OwnedFd>) -> Result<DataDirLock> {
    umask(Mode::from_bits_truncate(0o077));
    let Some(fd) = held else {
        return setup(dir);
    };
    let mut lock = match Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, e)) => bail!("cannot hold the lock handed over ({e})"),
    };
    write_pid(&mut lock)?;
    // Shared with the old ten until this one serves (`DataDirLock::own`).
    Ok(DataDirLock {
        _lock: Some(lock),
        shared: true,
    })
}

/// `{data_dir}/ten.lock` says our pid.
pub fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())
}

impl DataDirLock {
    /// The lock is this process's alone now (`shared`: an upgrade handed it to a new ten, or
    /// this new ten took over and the old one exits).
    pub fn set_shared(&mut self, shared: bool) {
        self.shared = shared;
    }

    /// The locked file, to hand over at an upgrade (None: no lock held).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self._lock.as_ref().map(|l| l.as_fd())
    }
}

/// [`prepare`] without the umask (which is process-wide).
fn setup(dir: &Path) -> Result<DataDirLock> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
    }
    // The umask applies to `mode` too: set the exact mode on a new or an older dir alike.
    set_mode(dir, DIR_MODE, "data_dir");
    let lock = lock(dir)?;
    for name in PRIVATE {
        let path = dir.join(name);
        if path.exists() {
            set_mode(&path, 0o600, "file");
        }
    }
    Ok(DataDirLock {
        _lock: lock,
        shared: false,
    })
}

/// chmod `path` to `mode` when it differs; logged, and a failure only warned about.
fn set_mode(path: &Path, mode: u32, what: &str) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let old = meta.permissions().mode() & 0o7777;
    if old == mode {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Ok(()) => tracing::info!(
            "{what} {}: mode {old:04o} changed to {mode:04o}",
            path.display()
        ),
        Err(e) => tracing::warn!(
            "{what} {}: mode {old:04o}, cannot change it to {mode:04o}: {e}",
            path.display()
        ),
    }
}

/// Lock `{dir}/ten.lock` and write our pid in it; another live server's lock is an error
/// naming its pid. A filesystem without flock is warned about (no lock).
fn lock(dir: &Path) -> Result<Option<Flock<File>>> {
    let path = dir.join("ten.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false) // the pid of a running server stays readable until we hold the lock
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            // The holder writes its pid just after taking the lock: a second server started
            // at the same moment may read the file in between, so give it a moment.
            let mut pid = String::new();
            for _ in 0..100 {
                pid.clear();
                let _ = file.rewind();
                let _ = file.read_to_string(&mut pid);
                if !pid.trim().is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let pid = match pid.trim() {
                "" => "unknown".to_string(),
                p => p.to_string(),
            };
            bail!(
                "another ten serve is already running on {} (pid {pid}, control socket {})",
                dir.display(),
                crate::wire::control_socket(dir).display()
            );
        }
        Err((_, e)) => {
            tracing::warn!(
                "cannot lock {} ({e}): a second ten serve on this data_dir would not be stopped",
                path.display()
            );
            return Ok(None);
        }
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(lock))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_older_dir_and_its_database_become_private_and_one_server_holds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("tenement.db"), "").unwrap();
        std::fs::set_permissions(
            dir.join("tenement.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let held = setup(&dir).unwrap();
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(mode(&dir.join("tenement.db")), 0o600);
        assert_eq!(mode(&dir.join("ten.lock")), 0o600);
        let pid = std::fs::read_to_string(dir.join("ten.lock")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock is per open file: a second open in this process conflicts like another one.
        let e = setup(&dir).err().unwrap().to_string();
        assert!(
            e.starts_with(&format!(
                "another ten serve is already running on {} (pid {}",
                dir.display(),
                std::process::id()
            )),
            "{e}"
        );
        drop(held);
        let again = setup(&dir).unwrap();
        drop(again);
        // A new dir is created 0711 (nested too).
        let new = tmp.path().join("a/b");
        drop(setup(&new).unwrap());
        assert_eq!(mode(&new), 0o711);
    }
}
