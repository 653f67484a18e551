//! `storage_quota_mb`: the size of an instance's DATA_DIR, walked off the async workers, and a
//! warning when it crosses 80 % and 100 % of the quota. The size is status only: checking it
//! never rebuilds the routing table.

use std::path::{Path, PathBuf};

use tenement_conf::{InstanceName, Process};

use crate::child::instance_data_dir;
use crate::registry::Registry;

/// 0 below 80 %, 1 from 80 %, 2 at or over the quota.
fn level(used: u64, quota: u64) -> u8 {
    if used >= quota {
        2
    } else {
        u8::from(used.saturating_mul(5) >= quota.saturating_mul(4))
    }
}

/// Measure `name`'s DATA_DIR and warn once per level crossed upwards (again after it drops).
pub(crate) async fn check(reg: &Registry, name: &InstanceName, process: &Process) {
    let Some(quota_mb) = process.storage_quota_mb else {
        return;
    };
    let dir = instance_data_dir(&reg.data_dir, name);
    let Ok(used) = tokio::task::spawn_blocking(move || dir_size(&dir)).await else {
        return;
    };
    let quota = quota_mb.saturating_mul(1024 * 1024);
    let level = level(used, quota);
    let warn = {
        let mut slots = reg.slots();
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        slot.status.storage_bytes = Some(used);
        let warn = level > slot.storage_warned;
        slot.storage_warned = level;
        warn
    };
    if warn {
        let pct = used.saturating_mul(100) / quota.max(1);
        reg.warn(
            name,
            &format!("DATA_DIR uses {used} bytes, {pct}% of storage_quota_mb {quota_mb}"),
        );
    }
}

/// Bytes under `dir` (files only; symlinks not followed).
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => {
                    total = total.saturating_add(e.metadata().map(|m| m.len()).unwrap_or(0))
                }
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(0, 100), 0);
        assert_eq!(level(79, 100), 0);
        assert_eq!(level(80, 100), 1);
        assert_eq!(level(99, 100), 1);
        assert_eq!(level(100, 100), 2);
        assert_eq!(level(u64::MAX, u64::MAX / 2), 2);
    }

    #[test]
    fn sizes_files_below_a_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(d.path()), 15);
        assert_eq!(dir_size(&d.path().join("missing")), 0);
    }
}
