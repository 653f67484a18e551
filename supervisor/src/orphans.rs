//! After `kill -9` of `ten serve`, its instances keep running. On the next start, the process
//! groups recorded in the desired state are killed before anything is respawned — but only
//! groups that still look like ours (a process of the group carries the instance's
//! TEN_PROCESS/TEN_INSTANCE: the leader itself, or under `isolation = "namespace"` the app
//! below the leader, which is a waiter forked from ten), so a recycled pid is never hit.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::child::signal_group;
use crate::state::Persisted;

/// The process group of `pid` (from /proc/PID/stat).
fn pgrp_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" of the command name: state ppid pgrp ...
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(2))
        .and_then(|s| s.parse::<u32>().ok())
}

/// Does `pid` carry TEN_PROCESS / TEN_INSTANCE of this instance?
fn carries(pid: u32, p: &Persisted) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want_p = format!("TEN_PROCESS={}", p.name.process);
    let want_i = format!("TEN_INSTANCE={}", p.name.id);
    let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
    vars.contains(&want_p.as_bytes()) && vars.contains(&want_i.as_bytes())
}

/// Does `pid` lead a process group one of whose processes carries this instance's
/// TEN_PROCESS / TEN_INSTANCE?
fn looks_like(pid: u32, p: &Persisted) -> bool {
    if pgrp_of(pid) != Some(pid) {
        return false;
    }
    if carries(pid, p) {
        return true;
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .parse::<u32>()
            .is_ok_and(|member| pgrp_of(member) == Some(pid) && carries(member, p))
    })
}

/// Any process still in group `pgid`?
fn group_alive(pgid: u32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .is_some_and(|stat| {
                let mut f = stat.rsplit(')').next().unwrap_or("").split_whitespace();
                let state = f.next();
                let pgrp = f.nth(1).and_then(|s| s.parse::<u32>().ok());
                pgrp == Some(pgid) && state != Some("Z")
            })
    })
}

/// Does process group `pgid` still have a live member running as the instance whose DATA_DIR
/// is `data_dir` (its environment says so)? Then `pgid` is still that group (a pid in use as a
/// group id is never given to a new process) and signalling it reaches no one else. A leader
/// that is gone and reaped by someone else leaves its pid free for reuse: without such a
/// member, the group must not be signalled.
pub fn group_is_instance(pgid: u32, data_dir: &std::path::Path) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    let want = format!("DATA_DIR={}", data_dir.display());
    rd.flatten().any(|e| {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            return false;
        };
        let member = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .is_some_and(|stat| {
                let mut f = stat.rsplit(')').next().unwrap_or("").split_whitespace();
                let state = f.next();
                let pgrp = f.nth(1).and_then(|s| s.parse::<u32>().ok());
                pgrp == Some(pgid) && state != Some("Z")
            });
        member
            && std::fs::read(format!("/proc/{pid}/environ"))
                .ok()
                .is_some_and(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
    })
}

/// Kill the recorded groups that are still ours; wait (bounded) until they are gone.
pub fn kill(persisted: &[Persisted]) {
    let mut killed = Vec::new();
    for p in persisted {
        if let Some(pgid) = p.pgid {
            if looks_like(pgid, p) {
                tracing::warn!(instance = %p.name, pgid, "killing the orphaned process group of a previous ten serve");
                signal_group(pgid, Signal::SIGKILL);
                killed.push(pgid);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|g| group_alive(*g)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_group_is_the_instance_only_while_a_member_carries_its_data_dir() {
        let mut app = std::process::Command::new("sleep")
            .arg("30")
            .env("DATA_DIR", "/srv/data/api/1")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = app.id();
        let mine = std::path::Path::new("/srv/data/api/1");
        assert!(group_is_instance(pid, mine));
        assert!(!group_is_instance(
            pid,
            std::path::Path::new("/srv/data/api/2")
        ));
        app.kill().unwrap();
        app.wait().unwrap();
        // Gone (and reaped): its pid may be anyone's now; the group is not signalled.
        assert!(!group_is_instance(pid, mine));
    }
}
