//! cgroup v2 limits (`memory_limit_mb` -> memory.max, `cpu_shares` -> cpu.weight), applied when
//! the cgroup tree is writable. Every failure is returned as a message for a clear warning;
//! limits are never silently ignored.

use std::path::{Path, PathBuf};

use tenement_conf::InstanceName;

const ROOT: &str = "/sys/fs/cgroup";

/// Our own cgroup directory (cgroup v2 only).
fn own_cgroup() -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("cgroup v2 is not in use (no unified hierarchy)")?;
    let dir = Path::new(ROOT).join(rel.trim_start_matches('/'));
    if !dir.join("cgroup.controllers").exists() {
        return Err(format!("{} is not a cgroup v2 directory", dir.display()));
    }
    Ok(dir)
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

/// Enable the memory and cpu controllers for children of `base`. cgroup v2 forbids processes in
/// a cgroup whose controllers are delegated, so `ten serve` first moves itself into a leaf.
fn delegate(base: &Path) -> Result<(), String> {
    let subtree = base.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&subtree).unwrap_or_default();
    if current.contains("memory") && current.contains("cpu") {
        return Ok(());
    }
    let leaf = base.join("ten-serve");
    std::fs::create_dir_all(&leaf).map_err(|e| format!("create {}: {e}", leaf.display()))?;
    write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
    write(&subtree, "+memory +cpu")
}

/// Put `pid` in its own cgroup with the limits; returns the cgroup's path.
pub fn apply(
    name: &InstanceName,
    pid: u32,
    memory_mb: Option<u64>,
    cpu_weight: Option<u32>,
) -> Result<PathBuf, String> {
    let base = own_cgroup()?;
    delegate(&base)?;
    let dir = base.join(format!("ten-{}-{}", name.process, name.id));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if let Some(mb) = memory_mb {
        write(&dir.join("memory.max"), &(mb * 1024 * 1024).to_string())?;
    }
    if let Some(w) = cpu_weight {
        write(&dir.join("cpu.weight"), &w.clamp(1, 10_000).to_string())?;
    }
    write(&dir.join("cgroup.procs"), &pid.to_string())?;
    Ok(dir)
}

/// Remove an instance's cgroup once its processes are gone (best effort).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}
