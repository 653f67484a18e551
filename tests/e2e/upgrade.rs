//! SPEC §11 upgrade: `ten upgrade` hands the listening sockets and the running instances of a
//! real `ten serve` to a new one, under steady load; a new binary that fails leaves the old one
//! serving; the new one supervises what it adopted (a crash restarts it, `ten stop` stops it).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::deploy::{assert_no_loss, Load};
use crate::supervision::{cli, instance, wait_instance};
use crate::util::{alive, signal, wait_bounded, Builder, Ten, DOMAIN};

/// Two instances of one process, each printing a numbered `tick N` line every 20 ms.
const BODY: &str = "[process.api]\ncommand = \"@APP@ --tick-ms 20\"\nhealth = \"/health\"\n\
    stop_timeout = \"5s\"\nrestart = \"always\"\nbackoff_base_ms = 50\n\
    [instances]\napi = [\"1\", \"2\"]\n";

fn server() -> Ten {
    let ten = Builder::new().body(BODY).start();
    ten.wait_status(&format!("1.api.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("2.api.{DOMAIN}"), "/", 200);
    ten
}

fn pid(ten: &Ten, name: &str) -> u64 {
    crate::util::healthy_pid(ten, name)
}

/// After a failed upgrade: the old `ten serve` is alive, with the same two instances (pids
/// `p1`, `p2`), and serves.
fn old_one_serves(ten: &Ten, p1: u64, p2: u64) {
    assert!(alive(ten.pid()), "the old ten serve exited");
    assert_eq!(
        instance(ten, "api:1").and_then(|v| v["pid"].as_u64()),
        Some(p1)
    );
    assert_eq!(
        instance(ten, "api:2").and_then(|v| v["pid"].as_u64()),
        Some(p2)
    );
    assert_eq!(ten.get(&format!("api.{DOMAIN}"), "/").status, 200);
}

/// The new `ten serve` an upgrade started: SIGTERM on drop (it stops its instances), bounded.
struct NewServer(u32);

impl Drop for NewServer {
    fn drop(&mut self) {
        if !alive(self.0) {
            return;
        }
        signal(self.0, "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(self.0) {
            signal(self.0, "KILL");
        }
    }
}

/// A second `ten serve` on the same config is refused by `ten.lock`, which names `pid`.
fn second_serve_refused(ten: &Ten, pid: u32) {
    let config = ten.dir.path().join("tenement.toml");
    let mut cmd = std::process::Command::new(crate::util::ten_bin());
    cmd.arg("serve").arg("--config").arg(&config);
    let (status, _, err) = crate::util::run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{err}");
    let want = format!(
        "another ten serve is already running on {} (pid {pid},",
        ten.data_dir().display()
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");
}

/// `ten upgrade ARGS`: (success, stdout, stderr).
fn upgrade(ten: &Ten, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["upgrade"];
    all.extend_from_slice(args);
    cli(ten, &all)
}

/// (old pid, new pid) from `upgraded: ten serve pid OLD -> pid NEW ...`.
fn pids(out: &str) -> (u32, u32) {
    let rest = out
        .strip_prefix("upgraded: ten serve pid ")
        .unwrap_or_else(|| panic!("unexpected output {out:?}"));
    let mut words = rest.split_whitespace();
    let old = words.next().and_then(|w| w.parse().ok()).expect("old pid");
    let new = words.nth(2).and_then(|w| w.parse().ok()).expect("new pid");
    (old, new)
}

/// The `tick N` numbers `ten logs` has of `name`, in order.
fn ticks(ten: &Ten, name: &str) -> Vec<u64> {
    let (ok, out, err) = cli(
        ten,
        &[
            "logs", name, "--search", "tick", "--limit", "100000", "--json",
        ],
    );
    assert!(ok, "ten logs: {err}");
    let mut n: Vec<(i64, u64)> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let line = v["message"].as_str()?.strip_prefix("tick ")?.parse().ok()?;
            Some((v["id"].as_i64().unwrap_or(0), line))
        })
        .collect();
    n.sort();
    n.into_iter().map(|(_, t)| t).collect()
}

/// The newest `tick N` number `ten logs` has of `name` (0: none yet).
fn last_tick(ten: &Ten, name: &str) -> u64 {
    ticks(ten, name).last().copied().unwrap_or(0)
}

/// The ticks of `name` once some printed at least `n` ticks after `mark` were captured (bounded:
/// 20 s): lines from both sides of a handover taken at `mark`.
fn ticks_beyond(ten: &Ten, name: &str, mark: u64, n: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = ticks(ten, name);
        if t.last().is_some_and(|&l| l >= mark + n) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "no tick past {} of {name} was captured: {t:?}",
            mark + n
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until `ten logs NAME` shows `want` (bounded: 20 s).
fn wait_log(ten: &Ten, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = cli(ten, &["logs", name, "--search", "noise"]);
        assert!(ok, "ten logs: {err}");
        if out.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ten logs {name} never showed {want:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_upgrade_under_load_keeps_every_request_the_instances_their_weights_and_their_logs() {
    let mut ten = server();
    let (p1, p2) = (pid(&ten, "api:1"), pid(&ten, "api:2"));
    let (ok, _, err) = cli(&ten, &["weight", "api:2", "30"]);
    assert!(ok, "ten weight: {err}");
    let old_pid = ten.pid();
    let load = Load::start(ten.addr, format!("api.{DOMAIN}"), 3);
    std::thread::sleep(Duration::from_millis(700));
    let mark = last_tick(&ten, "api:1");
    assert!(mark > 0, "no tick of api:1 captured before the upgrade");
    let (ok, out, err) = upgrade(&ten, &[]);
    assert!(ok, "ten upgrade failed: {out}\n{err}\n{}", ten.stderr());
    let (old, new) = pids(&out);
    let _new = NewServer(new);
    assert_eq!(old, old_pid);
    assert_ne!(new, old_pid);
    std::thread::sleep(Duration::from_millis(700));
    let seen = load.finish();
    assert_no_loss(&seen);
    // The old one drained and exited 0; the new one serves with the same instances.
    let mut child = ten.child.take().expect("old ten serve");
    let status = wait_bounded(&mut child, Duration::from_secs(30)).expect("old ten serve exits");
    assert!(
        status.success(),
        "old ten serve: {status}\n{}",
        ten.stderr()
    );
    assert!(!alive(old_pid), "old ten serve still running");
    assert!(alive(new), "new ten serve is gone\n{}", ten.stderr());
    // ten.lock: held by the new one (the old one's exit did not unlock it), with its pid.
    second_serve_refused(&ten, new);
    let v1 = instance(&ten, "api:1").expect("api:1 listed");
    let v2 = instance(&ten, "api:2").expect("api:2 listed");
    assert_eq!(v1["pid"].as_u64(), Some(p1), "{v1}");
    assert_eq!(v2["pid"].as_u64(), Some(p2), "{v2}");
    assert_eq!(v1["state"], "healthy", "{v1}");
    assert_eq!(v2["weight"].as_u64(), Some(30), "{v2}");
    assert_eq!(ten.get(&format!("1.api.{DOMAIN}"), "/").status, 200);
    // Output printed after the upgrade is captured by the new one...
    ten.get(&format!("1.api.{DOMAIN}"), "/noise?lines=3");
    wait_log(&ten, "api:1", "noise 3 from api:1");
    // ... and across the handover no line was lost or read twice.
    let t = ticks_beyond(&ten, "api:1", mark, 10);
    let first = t[0];
    let want: Vec<u64> = (first..first + t.len() as u64).collect();
    assert_eq!(t, want, "ticks lost or doubled across the upgrade");
    // `ten stop` of an adopted instance stops that process.
    let (ok, _, err) = cli(&ten, &["stop", "api:2"]);
    assert!(ok, "ten stop api:2: {err}");
    assert!(instance(&ten, "api:2").is_none(), "api:2 still listed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(p2 as u32) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(p2 as u32),
        "api:2 (pid {p2}) still runs after ten stop"
    );
}

#[test]
fn an_upgrade_to_a_binary_that_fails_leaves_the_old_one_serving_with_its_instances() {
    let ten = server();
    let (p1, p2) = (pid(&ten, "api:1"), pid(&ten, "api:2"));
    let (ok, out, err) = upgrade(&ten, &["--binary", "/bin/false"]);
    assert!(!ok, "ten upgrade --binary /bin/false succeeded: {out}");
    assert!(
        err.contains("upgrade failed: the new ten serve (/bin/false) did not take over"),
        "{err}"
    );
    assert!(err.contains("keeps serving"), "{err}");
    old_one_serves(&ten, p1, p2);
    // Its output is read again after the failed handover.
    ten.get(&format!("2.api.{DOMAIN}"), "/noise?lines=2");
    wait_log(&ten, "api:2", "noise 2 from api:2");
    // Spawning works again too (the freeze ended).
    let (ok, _, err) = cli(&ten, &["spawn", "api", "--id", "3"]);
    assert!(ok, "ten spawn after a failed upgrade: {err}");
}

#[test]
fn an_adopted_instance_that_crashes_is_restarted_by_the_new_server() {
    let ten = server();
    let p1 = pid(&ten, "api:1");
    let (ok, out, err) = upgrade(&ten, &[]);
    assert!(ok, "ten upgrade failed: {out}\n{err}\n{}", ten.stderr());
    let (_, new) = pids(&out);
    let _new = NewServer(new);
    ten.get(&format!("1.api.{DOMAIN}"), "/crash");
    let v = wait_instance(&ten, "api:1", "restarted", |v| {
        v["state"] == "healthy" && v["pid"].as_u64().is_some_and(|p| p != p1)
    });
    assert!(v["restarts"].as_u64() >= Some(1), "{v}");
    assert_eq!(ten.get(&format!("1.api.{DOMAIN}"), "/").status, 200);
    let (ok, out, _) = cli(&ten, &["logs", "ten", "--search", "adopted"]);
    assert!(
        ok && out.contains("api:1: crashed: exited (status unknown"),
        "{out}"
    );
}

/// The config file `Builder` wrote, with `listen` replaced by `listen`.
fn rewrite_listen(ten: &Ten, listen: &str) {
    let path = ten.dir.path().join("tenement.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replace("listen = \"127.0.0.1:0\"", &format!("listen = {listen}"));
    std::fs::write(&path, text).expect("write config");
}

#[test]
fn a_new_server_that_cannot_take_over_says_why_and_the_old_one_goes_on_reading_output() {
    let ten = server();
    let path = ten.dir.path().join("tenement.toml");
    let good = std::fs::read_to_string(&path).expect("read config");
    let (p1, p2) = (pid(&ten, "api:1"), pid(&ten, "api:2"));
    // An invalid file: the new process refuses before taking anything.
    std::fs::write(&path, format!("{good}\n[process.api]\n")).expect("write config");
    let (ok, out, err) = upgrade(&ten, &[]);
    assert!(!ok, "upgrade with an invalid config succeeded: {out}");
    assert!(err.contains("did not take over: invalid config"), "{err}");
    // A listen address it cannot bind: it fails after adopting the instances.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr");
    std::fs::write(&path, &good).expect("write config");
    rewrite_listen(&ten, &format!("[\"127.0.0.1:0\", \"{taken}\"]"));
    let (ok, out, err) = upgrade(&ten, &[]);
    assert!(!ok, "upgrade onto a taken port succeeded: {out}");
    assert!(err.contains(&format!("cannot listen on {taken}")), "{err}");
    // ten.lock: still held (the new one's exit did not unlock it), with the old one's pid.
    second_serve_refused(&ten, ten.pid());
    // The old one serves with the same instances and reads their output again.
    old_one_serves(&ten, p1, p2);
    ten.get(&format!("1.api.{DOMAIN}"), "/noise?lines=4");
    wait_log(&ten, "api:1", "noise 4 from api:1");
    // Then a good one takes over; no output line lost or doubled across all three.
    let mark = last_tick(&ten, "api:1");
    std::fs::write(&path, &good).expect("write config");
    let (ok, out, err) = upgrade(&ten, &[]);
    assert!(ok, "ten upgrade failed: {out}\n{err}\n{}", ten.stderr());
    let (_, new) = pids(&out);
    let _new = NewServer(new);
    assert_eq!(
        instance(&ten, "api:1").and_then(|v| v["pid"].as_u64()),
        Some(p1)
    );
    ten.get(&format!("1.api.{DOMAIN}"), "/noise?lines=5");
    wait_log(&ten, "api:1", "noise 5 from api:1");
    let t = ticks_beyond(&ten, "api:1", mark, 10);
    let want: Vec<u64> = (t[0]..t[0] + t.len() as u64).collect();
    assert_eq!(
        t, want,
        "ticks lost or doubled across the failed and the good upgrade"
    );
}

#[test]
fn systemd_hears_the_new_main_pid_from_the_old_process() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify.sock");
    let listener = crate::util::NotifyListener::bind(&notify);
    let recv = || listener.recv();
    let config = dir.path().join("tenement.toml");
    std::fs::write(
        &config,
        format!(
            "[settings]\ndomain = \"{DOMAIN}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}/data\"\n\
             [process.api]\ncommand = \"{}\"\n[instances]\napi = [\"1\"]\n",
            dir.path().display(),
            crate::util::app_bin()
        ),
    )
    .expect("write");
    let mut old = Command::new(crate::util::ten_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ten serve");
    let _old = NewServer(old.id());
    assert_eq!(recv(), "READY=1");
    let data = dir.path().join("data");
    let (status, out, err) = crate::util::ten(
        &["--data-dir", data.to_str().expect("utf8"), "upgrade"],
        dir.path(),
    );
    assert!(status.success(), "{out}{err}");
    let (old_pid, new) = pids(&out);
    let _new = NewServer(new);
    assert_eq!(old_pid, old.id());
    // From the old (main) process: the new one is the main one now, and ready.
    assert_eq!(recv(), format!("MAINPID={new}\nREADY=1"));
    let exited = wait_bounded(&mut old, Duration::from_secs(30));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    // The new one notifies from then on; nothing was said as STOPPING by the old one.
    signal(new, "TERM");
    assert_eq!(recv(), "STOPPING=1");
}

#[test]
fn an_instance_stopped_for_idleness_stays_stopped_across_an_upgrade_and_wakes_on_a_request() {
    let ten = Builder::new()
        .body(
            "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\nidle_timeout = \"300ms\"\n\
             [instances]\napi = [\"1\"]\n",
        )
        .start();
    ten.wait_status(&format!("1.api.{DOMAIN}"), "/", 200);
    wait_instance(&ten, "api:1", "stopped for idleness", |v| {
        v["state"] == "stopped" && v["pid"].is_null()
    });
    let (ok, out, err) = upgrade(&ten, &[]);
    assert!(ok, "ten upgrade failed: {out}\n{err}\n{}", ten.stderr());
    let (_, new) = pids(&out);
    let _new = NewServer(new);
    // Not started again by the new server: still idle, still wakeable.
    let v = instance(&ten, "api:1").expect("api:1 listed");
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(v["pid"].is_null(), "{v}");
    assert_eq!(ten.get(&format!("1.api.{DOMAIN}"), "/").status, 200);
    let v = instance(&ten, "api:1").expect("api:1 listed");
    assert!(
        v["pid"].as_u64().is_some(),
        "woken instance has no pid: {v}"
    );
}

#[test]
fn an_upgrade_is_refused_over_the_admin_listener_even_with_a_token() {
    let ten = Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .body("[process.api]\ncommand = \"@APP@\"\n")
        .start();
    let (status, out, err) = ten.cli(&["token-gen"]);
    assert!(status.success(), "token-gen: {out}{err}");
    let token = out.trim();
    let admin = ten.admin.expect("admin_listen");
    let body = "{\"binary\": \"/bin/true\"}";
    let r = crate::util::request(
        admin,
        format!(
            "POST /api/upgrade HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("only over the control socket"),
        "{}",
        r.text()
    );
    assert!(alive(ten.pid()));
}
