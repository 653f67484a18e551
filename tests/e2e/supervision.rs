//! SPEC §4 supervision with real processes: crash restarts, crash loops, health, drain on stop,
//! scale to zero, DATA_DIR, resource limits.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{alive, Builder, Ten, DOMAIN};

/// Run a client command against this server's data dir.
pub fn cli(ten: &Ten, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(crate::util::ten_bin())
        .args(args)
        .arg("--data-dir")
        .arg(ten.dir.path().join("data"))
        .output()
        .expect("run ten");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ten ps --json` as a list.
pub fn ps(ten: &Ten) -> Vec<Value> {
    let (ok, out, err) = cli(ten, &["ps", "--json"]);
    assert!(ok, "ten ps failed: {err}");
    serde_json::from_str::<Value>(&out)
        .expect("ps json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn instance(ten: &Ten, name: &str) -> Option<Value> {
    ps(ten).into_iter().find(|v| v["name"] == name)
}

/// Poll `ps` until `pred` holds for `name` (bounded: 30 s).
pub fn wait_instance(ten: &Ten, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = instance(ten, name) {
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: waiting for {what}; last seen {v}\n{}",
                    ten.stderr()
                );
            }
        } else if Instant::now() > deadline {
            panic!("{name}: waiting for {what}; not listed\n{}", ten.stderr());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn host(h: &str) -> String {
    format!("{h}.{DOMAIN}")
}

const FAST: &str = "backoff_base_ms = 50\nbackoff_max_ms = 200\n";

#[test]
fn crash_is_restarted_and_routed_again() {
    let ten = Builder::new()
        .settings(FAST)
        .body("[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    let before = wait_instance(&ten, "api:a", "healthy", |v| v["state"] == "healthy");
    let pid = before["pid"].as_u64().expect("pid");
    assert_eq!(ten.get(&host("a.api"), "/crash").status, 200);
    let after = wait_instance(&ten, "api:a", "restarted", |v| {
        v["state"] == "healthy" && v["pid"].as_u64() != Some(pid)
    });
    assert_eq!(after["restarts"], 1);
    assert!(!alive(pid as u32));
    assert_eq!(ten.get(&host("a.api"), "/").text(), "hello from api:a\n");
    assert!(
        ten.stderr().contains("crashed: killed by SIGABRT"),
        "{}",
        ten.stderr()
    );
}

#[test]
fn crash_loop_ends_in_failed_without_restart_loop() {
    let b = Builder::new().settings(FAST);
    let flag = b.dir().join("crash");
    let ten = b
        .body(
            "[process.api]\ncommand = \"sh -c 'if [ -e @DIR@/crash ]; then echo boom >&2; exit 3; fi; exec @APP@'\"\n\
             max_restarts = 3\nrestart_window = \"5m\"\n[instances]\napi = [\"a\"]\n",
        )
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    std::fs::write(&flag, "").expect("flag");
    ten.get(&host("a.api"), "/exit?code=1");
    let v = wait_instance(&ten, "api:a", "failed", |v| v["state"] == "failed");
    assert_eq!(v["restarts"], 3, "{v}");
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("crash loop"),
        "{v}"
    );
    assert_eq!(ten.get(&host("api"), "/").status, 503);
    let m = crate::metrics::scrape(&ten);
    let failed = [("process", "api"), ("id", "a"), ("state", "failed")];
    assert_eq!(
        crate::metrics::value(&m, "tenement_instance_state", &failed),
        Some(1.0),
        "failed is visible in metrics"
    );
    assert_eq!(
        crate::metrics::value(
            &m,
            "tenement_instance_up",
            &[("process", "api"), ("id", "a")]
        ),
        Some(0.0)
    );
    // It stays failed: no more restarts.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(instance(&ten, "api:a").expect("listed")["restarts"], 3);
    // `ten restart` gives it another chance once the cause is gone.
    std::fs::remove_file(&flag).expect("rm flag");
    let (ok, _, err) = cli(&ten, &["restart", "api:a"]);
    assert!(ok, "{err}");
    assert_eq!(ten.get(&host("a.api"), "/").status, 200);
}

#[test]
fn failing_health_takes_an_instance_out_of_routing_until_it_recovers() {
    let ten = Builder::new()
        .settings("health_check_interval = \"100ms\"")
        .body("[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\nrestart = \"never\"\n[instances]\napi = [\"a\", \"b\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    ten.wait_status(&host("b.api"), "/", 200);
    ten.get(&host("a.api"), "/control/health-fail");
    wait_instance(&ten, "api:a", "unhealthy", |v| v["state"] == "unhealthy");
    for _ in 0..40 {
        assert_eq!(
            ten.get(&host("api"), "/").text(),
            "hello from api:b\n",
            "unhealthy a must get no weighted traffic"
        );
    }
    // Direct routing still reaches it (for debugging); it recovers when its checks pass.
    ten.get(&host("a.api"), "/control/health-ok");
    wait_instance(&ten, "api:a", "healthy again", |v| v["state"] == "healthy");
    let mut seen_a = false;
    for _ in 0..100 {
        seen_a |= ten.get(&host("api"), "/").text() == "hello from api:a\n";
    }
    assert!(seen_a, "a is back in the weighted route");
}

#[test]
fn failing_health_restarts_per_policy() {
    let ten = Builder::new()
        .settings(&format!("health_check_interval = \"100ms\"\n{FAST}"))
        .body("[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    let pid = wait_instance(&ten, "api:a", "healthy", |v| v["state"] == "healthy")["pid"].as_u64();
    ten.get(&host("a.api"), "/control/health-fail");
    let v = wait_instance(&ten, "api:a", "restarted", |v| {
        v["state"] == "healthy" && v["pid"].as_u64() != pid
    });
    assert_eq!(v["restarts"], 1);
}

#[test]
fn stop_drains_a_slow_in_flight_request_first() {
    let ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    let pid = instance(&ten, "api:a").expect("listed")["pid"]
        .as_u64()
        .expect("pid") as u32;
    let addr = ten.addr;
    let slow = std::thread::spawn(move || {
        crate::util::request(
            addr,
            format!(
                "GET /sleep?ms=1500 HTTP/1.1\r\nHost: a.api.{DOMAIN}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    });
    // Wait until the proxy counts it in flight.
    wait_instance(&ten, "api:a", "a request in flight", |v| {
        v["in_flight"] == 1
    });
    let (ok, out, err) = cli(&ten, &["stop", "api:a"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "api:a stopped");
    let r = slow.join().expect("slow request");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slept 1500\n");
    assert!(!alive(pid), "stopped process is gone");
    assert!(instance(&ten, "api:a").is_none());
    assert_eq!(ten.get(&host("a.api"), "/").status, 404);
}

#[test]
fn idle_instance_is_stopped_and_woken_by_its_next_request() {
    let ten = Builder::new()
        .body("[process.app]\ncommand = \"@APP@\"\nhealth = \"/health\"\nidle_timeout = \"1s\"\n[instances]\napp = [\"user123\"]\n")
        .start();
    ten.wait_status(&host("user123.app"), "/", 200);
    let v = wait_instance(&ten, "app:user123", "idle-stopped", |v| {
        v["state"] == "stopped" && v["idle"] == true
    });
    assert!(v["pid"].is_null());
    // Concurrent requests share one wake and are all served.
    let addr = ten.addr;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                crate::util::request(
                    addr,
                    format!(
                        "GET / HTTP/1.1\r\nHost: user123.app.{DOMAIN}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
            })
        })
        .collect();
    for h in handles {
        let r = h.join().expect("request");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), ten.stderr());
        assert_eq!(r.text(), "hello from app:user123\n");
    }
    let v = instance(&ten, "app:user123").expect("listed");
    assert_eq!(v["state"], "healthy");
    let spawns = ten
        .stderr()
        .lines()
        .filter(|l| l.contains("spawned pid") && l.contains("app:user123"))
        .count();
    assert_eq!(spawns, 2, "boot + one shared wake:\n{}", ten.stderr());
    // An unknown id is never spawned.
    assert_eq!(ten.get(&host("stranger.app"), "/").status, 404);
}

#[test]
fn data_dir_is_created_and_removed_on_stop_when_not_persisted() {
    let ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\nstorage_persist = false\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    let r = ten.get(&host("a.api"), "/env?name=DATA_DIR");
    let dir = r.text();
    assert_eq!(Path::new(&dir), ten.dir.path().join("data/api/a"));
    assert!(Path::new(&dir).is_dir());
    for (k, v) in [("TEN_PROCESS", "api"), ("TEN_INSTANCE", "a")] {
        assert_eq!(ten.get(&host("a.api"), &format!("/env?name={k}")).text(), v);
    }
    assert!(ten
        .get(&host("a.api"), "/env?name=PORT")
        .text()
        .parse::<u16>()
        .is_ok());
    let (ok, _, err) = cli(&ten, &["stop", "api:a"]);
    assert!(ok, "{err}");
    assert!(!Path::new(&dir).exists(), "DATA_DIR deleted on stop");
}

#[test]
fn storage_quota_warns_at_80_percent() {
    let ten = Builder::new()
        .settings("health_check_interval = \"100ms\"")
        .body("[process.api]\ncommand = \"@APP@\"\nstorage_quota_mb = 1\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    std::fs::write(
        ten.dir.path().join("data/api/a/blob"),
        vec![0u8; 900 * 1024],
    )
    .expect("write");
    let v = wait_instance(&ten, "api:a", "storage measured", |v| {
        v["storage_bytes"].as_u64() >= Some(900 * 1024)
    });
    assert!(v["storage_bytes"].as_u64().is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ten.stderr().contains("of storage_quota_mb 1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        ten.stderr().contains("87% of storage_quota_mb 1"),
        "{}",
        ten.stderr()
    );
}

#[test]
fn memory_limit_is_applied_or_clearly_warned() {
    let ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\nmemory_limit_mb = 64\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    let pid = instance(&ten, "api:a").expect("listed")["pid"]
        .as_u64()
        .expect("pid");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("");
    let max =
        std::fs::read_to_string(format!("/sys/fs/cgroup{rel}/memory.max")).unwrap_or_default();
    if max.trim() != (64u64 * 1024 * 1024).to_string() {
        assert!(
            ten.stderr()
                .contains("memory_limit_mb/cpu_shares not applied"),
            "neither applied (memory.max {max:?} in {rel}) nor warned:\n{}",
            ten.stderr()
        );
    }
}

#[test]
fn restart_of_ten_serve_restores_instances_and_weights() {
    let mut ten = Builder::new()
        .body("[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    let (ok, _, err) = cli(&ten, &["spawn", "api:b", "--weight", "0"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&ten, &["weight", "api:a", "30"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&ten, &["spawn", "api:gone"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&ten, &["stop", "api:gone"]);
    assert!(ok, "{err}");
    assert!(ten.sigterm().success());
    ten.serve_again();
    let a = wait_instance(&ten, "api:a", "restored", |v| v["state"] == "healthy");
    let b = wait_instance(&ten, "api:b", "restored", |v| v["state"] == "healthy");
    assert_eq!(
        (a["weight"].as_u64(), b["weight"].as_u64()),
        (Some(30), Some(0))
    );
    assert!(
        instance(&ten, "api:gone").is_none(),
        "a stopped instance stays stopped"
    );
    let names: Vec<_> = ps(&ten)
        .iter()
        .map(|v| v["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, vec!["api:a", "api:b"], "in their original order");
    // Weight 0 for b: every weighted request goes to a.
    for _ in 0..20 {
        assert_eq!(ten.get(&host("api"), "/").text(), "hello from api:a\n");
    }
}

#[test]
fn kill_9_of_ten_serve_then_restart_leaves_no_orphan() {
    let b = Builder::new();
    let marker = b.dir().display().to_string();
    let mut ten = b
        .body(
            "[process.api]\ncommand = \"@APP@ --spawn-child\"\nenv = { TEN_TEST_MARKER = \"@DIR@\" }\n\
             [instances]\napi = [\"a\", \"b\"]\n",
        )
        .start();
    ten.wait_status(&host("a.api"), "/", 200);
    ten.wait_status(&host("b.api"), "/", 200);
    let before = crate::lifecycle::marked_pids(&marker);
    assert!(before.len() >= 4, "two apps and their children: {before:?}");
    ten.kill9();
    // The apps survive the crash of ten serve...
    assert!(
        before.iter().any(|p| alive(*p)),
        "orphans expected right after kill -9"
    );
    ten.serve_again();
    ten.wait_status(&host("a.api"), "/", 200);
    ten.wait_status(&host("b.api"), "/", 200);
    // ...and the next start killed every one of them (apps and grandchildren) before respawning.
    for pid in &before {
        assert!(
            !alive(*pid),
            "orphan {pid} survived the restart\n{}",
            ten.stderr()
        );
    }
    let now = crate::lifecycle::marked_pids(&marker);
    assert!(
        now.len() >= 4 && now.iter().all(|p| !before.contains(p)),
        "fresh processes: {now:?}"
    );
    assert!(
        ten.stderr().contains("orphaned process group"),
        "{}",
        ten.stderr()
    );
    drop(ten);
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<_> = crate::lifecycle::marked_pids(&marker)
        .into_iter()
        .filter(|p| alive(*p))
        .collect();
    assert!(
        left.is_empty(),
        "processes left after the final stop: {left:?}"
    );
}
