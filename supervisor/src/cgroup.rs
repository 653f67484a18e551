//! cgroup v2 limits (`memory_limit_mb` -> memory.max, `cpu_shares` -> cpu.weight), applied when
//! the cgroup tree is writable. Every failure is returned as a message for a clear warning;
//! limits are never silently ignored.
//!
//! Order matters (review S2): the controllers are enabled on ten's cgroup once, before any
//! instance with limits is forked ([`delegate`] first moves ten and every process already in it
//! into a leaf, so enabling never fails with EBUSY whatever the spawn order); an instance's
//! cgroup is made and limited before its fork ([`prepare`]), and the child joins it itself
//! between fork and exec (through a descriptor opened here), so nothing it forks early escapes
//! the limit. Names are `ten-{process}.{id}`: a process name has no '.', so two instances never
//! share a cgroup.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use tenement_conf::InstanceName;

const ROOT: &str = "/sys/fs/cgroup";
/// The leaf ten (and instances without limits) live in once controllers are delegated.
const LEAF: &str = "ten-serve";

/// Our own cgroup directory (cgroup v2 only).
fn own_cgroup() -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("cgroup v2 is not in use (no unified hierarchy)")?;
    let dir = base_of(Path::new(ROOT), rel.trim());
    if !dir.join("cgroup.controllers").exists() {
        return Err(format!("{} is not a cgroup v2 directory", dir.display()));
    }
    Ok(dir)
}

/// The cgroup ten's instances go below, from ten's own (`rel`, as /proc/self/cgroup has it):
/// ten's own, or its parent when ten already runs in the [`LEAF`] a ten made there (a `ten
/// serve` started by `ten upgrade` from one that had delegated the controllers).
fn base_of(root: &Path, rel: &str) -> PathBuf {
    let dir = root.join(rel.trim_start_matches('/'));
    match (dir.file_name(), dir.parent()) {
        (Some(name), Some(parent)) if name == LEAF => parent.to_path_buf(),
        _ => dir,
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

/// The cgroup directory name of an instance. Process names are DNS labels (no '.'), ids may
/// hold '.', so the first '.' after the prefix splits them unambiguously.
pub fn name_of(name: &InstanceName) -> String {
    format!("ten-{}.{}", name.process, name.id)
}

/// memory.max in bytes for `mb` MiB, or why it cannot be.
pub fn memory_max(mb: u64) -> Result<u64, String> {
    mb.checked_mul(1024 * 1024)
        .ok_or_else(|| format!("memory_limit_mb {mb} is too large (over 2^64 bytes)"))
}

/// Enable the memory and cpu controllers for children of `base`. cgroup v2 forbids processes in
/// a cgroup whose controllers are delegated, so every process in `base` (ten itself and
/// instances without limits started before) first moves into a leaf.
fn delegate(base: &Path) -> Result<(), String> {
    let subtree = base.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&subtree).unwrap_or_default();
    if current.contains("memory") && current.contains("cpu") {
        return Ok(());
    }
    let leaf = base.join(LEAF);
    std::fs::create_dir_all(&leaf).map_err(|e| format!("create {}: {e}", leaf.display()))?;
    let procs = leaf.join("cgroup.procs");
    write(&procs, &std::process::id().to_string())?;
    let others = std::fs::read_to_string(base.join("cgroup.procs")).unwrap_or_default();
    for pid in others.lines().map(str::trim).filter(|p| !p.is_empty()) {
        // One that exited meanwhile is fine; the write below says if any is left.
        let _ = std::fs::write(&procs, pid);
    }
    write(&subtree, "+memory +cpu")
}

/// At start, before any instance is forked: when some process has limits, delegate the
/// controllers now (a warning names what failed; each spawn tries again).
pub fn setup(needed: bool) -> Result<(), String> {
    if !needed {
        return Ok(());
    }
    delegate(&own_cgroup()?)
}

/// An instance's cgroup, made and limited before its fork.
#[derive(Debug)]
pub struct Prepared {
    pub dir: PathBuf,
    /// Its `cgroup.procs`, open for writing (close-on-exec): the child writes "0" to it
    /// between fork and exec to join.
    procs: std::fs::File,
}

impl Prepared {
    /// The descriptor the child joins through (valid while `self` lives).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// After the fork: make sure `pid` is in (a no-op when it joined itself).
    pub fn confirm(&self, pid: u32) -> Result<(), String> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }
}

/// Make `name`'s cgroup with its limits, ready for the child to join before exec.
pub fn prepare(
    name: &InstanceName,
    memory_mb: Option<u64>,
    cpu_weight: Option<u32>,
) -> Result<Prepared, String> {
    let memory = memory_mb.map(memory_max).transpose()?;
    let base = own_cgroup()?;
    delegate(&base)?;
    let dir = base.join(name_of(name));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if let Some(bytes) = memory {
        write(&dir.join("memory.max"), &bytes.to_string())?;
    }
    if let Some(w) = cpu_weight {
        write(&dir.join("cpu.weight"), &w.clamp(1, 10_000).to_string())?;
    }
    let path = dir.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    Ok(Prepared { dir, procs })
}

/// In the child between fork and exec: join the cgroup behind `fd` (async-signal-safe: one
/// write(2), no allocation). A failure is left to [`Prepared::confirm`] to report.
pub fn join_in_child(fd: RawFd) {
    // SAFETY: write(2) on a descriptor we own, from a static buffer.
    let _ = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
}

/// Remove an instance's cgroup once its processes are gone (best effort).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ten_started_in_the_leaf_of_a_previous_one_uses_the_same_base() {
        let root = Path::new("/sys/fs/cgroup");
        let unit = "/system.slice/tenement.service";
        assert_eq!(
            base_of(root, unit),
            root.join("system.slice/tenement.service")
        );
        assert_eq!(
            base_of(root, &format!("{unit}/{LEAF}")),
            root.join("system.slice/tenement.service")
        );
        assert_eq!(base_of(root, "/"), root);
    }

    fn n(process: &str, id: &str) -> InstanceName {
        InstanceName {
            process: process.into(),
            id: id.into(),
        }
    }

    #[test]
    fn names_never_collide() {
        // The review's pair: `a-b`/`c` and `a`/`b-c` were both `ten-a-b-c`.
        assert_ne!(name_of(&n("a-b", "c")), name_of(&n("a", "b-c")));
        assert_eq!(name_of(&n("a-b", "c")), "ten-a-b.c");
        assert_eq!(name_of(&n("a", "b-c")), "ten-a.b-c");
        // Ids may hold '.', process names may not: still unique.
        assert_ne!(name_of(&n("a", "b.c")), name_of(&n("a-b", "c")));
        // Never ten's own leaf, never an interface file ("cgroup.*", "memory.*").
        for name in [n("serve", "x"), n("cgroup", "procs"), n("memory", "max")] {
            let d = name_of(&name);
            assert!(d.starts_with("ten-") && d.contains('.') && d != LEAF, "{d}");
        }
        // Exhaustive over a small alphabet: distinct instances, distinct names.
        let parts = ["a", "b", "a-b", "b-a", "a_b", "ab"];
        let ids = ["a", "b", "a-b", "a.b", "b.a", "a_b", "1"];
        let mut seen = std::collections::HashSet::new();
        for p in parts {
            for i in ids {
                assert!(seen.insert(name_of(&n(p, i))), "{p}:{i} collides");
            }
        }
    }

    #[test]
    fn memory_max_never_wraps() {
        assert_eq!(memory_max(64).unwrap(), 64 * 1024 * 1024);
        assert_eq!(memory_max(0).unwrap(), 0);
        let biggest = u64::MAX / (1024 * 1024);
        assert_eq!(memory_max(biggest).unwrap(), biggest * 1024 * 1024);
        let e = memory_max(biggest + 1).unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(memory_max(u64::MAX).is_err());
    }
}
