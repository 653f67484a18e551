//! See hostile.rs. The supervisor under faults: a failed start at boot is retried like a crash
//! (review M6), and ten's own fd exhaustion never counts against an app (SPEC §14, review H1).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::supervision::{instance, wait_instance};
use crate::util::{Builder, DOMAIN};

/// A script that fails (exit 1) until `$READY` exists, then runs the test app.
fn flaky(dir: &std::path::Path) {
    let path = dir.join("flaky.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\n[ -f \"$READY\" ] || { echo not ready yet >&2; exit 1; }\nexec \"$TESTAPP\"\n",
    )
    .expect("write flaky.sh");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn flaky_config(restart: &str) -> String {
    format!(
        "[process.app]\ncommand = \"@DIR@/flaky.sh\"\n\
         env = {{ READY = \"@DIR@/ready\", TESTAPP = \"@APP@\" }}\n\
         restart = \"{restart}\"\nhealth = \"/health\"\nstartup_timeout = \"5s\"\n\
         backoff_base_ms = 50\nbackoff_max_ms = 200\nmax_restarts = 1000\n\
         [instances]\napp = [\"1\"]\n"
    )
}

/// Review M6: the app cannot start at boot (its DB is not up yet); it must stay listed and be
/// retried, and become healthy once it can start.
#[test]
fn a_failed_start_at_boot_is_retried_until_it_succeeds() {
    let b = Builder::new().body(&flaky_config("always"));
    flaky(b.dir());
    let ready = b.dir().join("ready");
    let ten = b.start();
    // The boot attempt failed, yet the instance is listed with why.
    let v = wait_instance(&ten, "app:1", "a failed boot start, listed", |v| {
        v["last_error"].as_str().is_some()
    });
    assert_ne!(v["state"], "healthy", "{v}");
    std::fs::write(&ready, "").expect("touch ready");
    let v = wait_instance(&ten, "app:1", "healthy once it can start", |v| {
        v["state"] == "healthy"
    });
    assert!(v["restarts"].as_u64().unwrap_or(0) >= 1, "{v}");
    ten.wait_status(&format!("1.app.{DOMAIN}"), "/", 200);
}

/// With restart = "never", a failed start at boot shows `failed` with the reason (not absent).
#[test]
fn a_failed_start_at_boot_with_restart_never_shows_failed() {
    let b = Builder::new().body(&flaky_config("never"));
    flaky(b.dir());
    let ten = b.start();
    let v = wait_instance(&ten, "app:1", "failed, listed", |v| v["state"] == "failed");
    let why = v["last_error"].as_str().unwrap_or("");
    assert!(why.contains("exited with code 1"), "{v}");
    // It stays failed (never retried): still listed, no restart.
    std::thread::sleep(Duration::from_millis(500));
    let v = instance(&ten, "app:1").expect("still listed");
    assert_eq!(
        (v["state"].as_str(), v["restarts"].as_u64()),
        (Some("failed"), Some(0))
    );
}

/// The lowest descriptor number `pid` does not have open: with its soft RLIMIT_NOFILE set to
/// this, every new socket, pipe or file of that process fails with EMFILE.
fn lowest_free_fd(pid: u32) -> u64 {
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).expect("a free fd")
}

/// Set `pid`'s soft NOFILE limit (keeping the hard one); returns the old soft limit.
fn set_nofile_soft(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: prlimit with valid pointers; reading first, then writing.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit read: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit write: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// Review H1 / SPEC §14: ten runs out of file descriptors (its health probes get EMFILE). The
/// checks are skipped, not failed: the instance is not restarted, never `failed`, and healthy
/// once ten has descriptors again.
#[test]
fn ten_out_of_fds_never_counts_against_the_app() {
    let ten = Builder::new()
        .settings("health_check_interval = \"1s\"\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n")
        .body("[process.app]\ncommand = \"@APP@\"\nhealth = \"/health\"\n[instances]\napp = [\"1\"]\n")
        .start();
    let before = wait_instance(&ten, "app:1", "healthy", |v| v["state"] == "healthy");
    let pid = ten.pid();
    let mut limit = lowest_free_fd(pid);
    let old = set_nofile_soft(pid, limit);
    // Several health intervals (3 failed checks would make it unhealthy), bounded; done early
    // once ten says it skipped a check (the proof that the probes did hit EMFILE).
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut skipped_at = None;
    while Instant::now() < deadline {
        // A descriptor ten closed since (the `ten ps` connection) would leave room: no room.
        let free = lowest_free_fd(pid);
        if free < limit {
            limit = free;
            set_nofile_soft(pid, limit);
        }
        if skipped_at.is_none() && ten.stderr().contains("health check skipped") {
            skipped_at = Some(Instant::now());
        }
        if skipped_at.is_some_and(|t| t.elapsed() > Duration::from_millis(3500)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    set_nofile_soft(pid, old);
    let after = wait_instance(&ten, "app:1", "healthy", |v| v["state"] == "healthy");
    let err = ten.stderr();
    assert!(!err.contains("unhealthy after"), "{err}");
    assert_eq!(after["restarts"], before["restarts"], "{after}\n{err}");
    assert_eq!(after["pid"], before["pid"], "restarted: {after}\n{err}");
    // And the probes did hit EMFILE (else this test showed nothing).
    assert!(
        err.contains("health check skipped") && err.contains("ten is out of resources"),
        "the probes never hit EMFILE:\n{err}"
    );
    ten.wait_status(&format!("1.app.{DOMAIN}"), "/", 200);
}
