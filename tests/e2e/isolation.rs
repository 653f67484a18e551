//! Trust and isolation (SPEC §12), tested from the app's side: what an instance's environment
//! holds, which uid it runs as, what it can reach (the app tries and reports the errno), and
//! `isolation = "namespace"`. The suite runs as root in CI; the tests that need root say so
//! at their start and fail, never skip.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lifecycle::marked_pids;
use crate::util::{alive, app_bin, run_bounded, ten_bin, Builder, Ten, DOMAIN};

fn assert_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (CI runs the suite as root)"
    );
}

/// A builder whose temp dir other uids may pass through (tempfile makes it 0700), as a real
/// data_dir's parents must be.
fn builder() -> Builder {
    let b = Builder::new();
    std::fs::set_permissions(b.dir(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    b
}

fn get_text(ten: &Ten, instance: &str, path: &str) -> String {
    let (id, process) = instance.split_once('.').expect("id.process");
    let r = ten.get(&format!("{id}.{process}.{DOMAIN}"), path);
    assert_eq!(r.status, 200, "{instance} {path}: {}", r.text());
    r.text()
}

/// `/whoami` of an instance: (pid, uid) as the app sees them.
fn whoami(ten: &Ten, instance: &str) -> (u32, u32) {
    let text = get_text(ten, instance, "/whoami");
    let field = |k: &str| -> u32 {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {text:?}"))
    };
    (field("pid="), field("uid="))
}

/// What the app got trying `op` on `path`: "ok" or "errno N".
fn try_as_app(ten: &Ten, instance: &str, op: &str, path: &Path) -> String {
    get_text(
        ten,
        instance,
        &format!("/try?op={op}&path={}", path.display()),
    )
}

/// The host pid of an instance, from `ten ps --json`.
fn host_pid(ten: &Ten, name: &str) -> u32 {
    let (status, out, err) = ten.cli(&["ps", "--json"]);
    assert!(status.success(), "ps: {err}");
    let rows: Value = serde_json::from_str(&out).expect("ps --json");
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .and_then(|r| r["pid"].as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no pid for {name}: {out}"))
}

/// The real uid of a host process (/proc/PID/status).
fn proc_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Uid in /proc/{pid}/status"))
}

/// Poll `ten logs ARGS` until it shows `want` (bounded).
fn wait_logs(ten: &Ten, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out, _) = ten.cli(args);
        if out.contains(want) || Instant::now() > deadline {
            assert!(
                out.contains(want),
                "ten {args:?} never showed {want:?}:\n{out}"
            );
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_app_sees_a_clean_environment_and_only_the_inherited_names() {
    assert_root();
    let ten = Builder::new()
        .env("TEN_ISO_SECRET", "hunter2")
        .env("TEN_ISO_PASSED", "region-1")
        .body(
            "[process.app]\ncommand = \"@APP@\"\nenv = { APP_ENV = \"prod\" }\n\
             [process.inh]\ncommand = \"@APP@\"\nenv_inherit = [\"TEN_ISO_PASSED\"]\n\
             [instances]\napp = [\"a\"]\ninh = [\"a\"]\n",
        )
        .start();
    ten.wait_status(&format!("a.app.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("a.inh.{DOMAIN}"), "/", 200);
    for instance in ["a.app", "a.inh"] {
        let (id, process) = instance.split_once('.').expect("name");
        let host = format!("{id}.{process}.{DOMAIN}");
        let secret = ten.get(&host, "/env?name=TEN_ISO_SECRET");
        assert_eq!(
            secret.status,
            404,
            "{instance} saw ten's secret: {}",
            secret.text()
        );
        // The allow-list and the §2 variables are there.
        assert_eq!(get_text(&ten, instance, "/env?name=TEN_PROCESS"), process);
        assert!(!get_text(&ten, instance, "/env?name=PATH").is_empty());
        assert_eq!(
            ten.get(&host, "/env?name=TEN_LOG").status,
            404,
            "ten's TEN_LOG leaked"
        );
    }
    assert_eq!(get_text(&ten, "a.app", "/env?name=APP_ENV"), "prod");
    assert_eq!(
        ten.get(&format!("a.app.{DOMAIN}"), "/env?name=TEN_ISO_PASSED")
            .status,
        404
    );
    assert_eq!(
        get_text(&ten, "a.inh", "/env?name=TEN_ISO_PASSED"),
        "region-1"
    );
    // ten runs as root and no user is set: it says so, naming the setting.
    assert!(
        ten.stderr()
            .contains("process.app: its instances run as root")
            && ten.stderr().contains("set user = \"dynamic\""),
        "{}",
        ten.stderr()
    );
}

#[test]
fn a_named_user_runs_the_app_with_its_uid_gid_and_home() {
    assert_root();
    let ten = builder()
        .body("[process.app]\ncommand = \"@APP@\"\nuser = \"nobody\"\n[instances]\napp = [\"a\"]\n")
        .start();
    ten.wait_status(&format!("a.app.{DOMAIN}"), "/", 200);
    let text = get_text(&ten, "a.app", "/whoami");
    assert!(text.contains("uid=65534 gid=65534"), "{text}");
    assert_eq!(proc_uid(host_pid(&ten, "app:a")), 65534);
    assert_eq!(get_text(&ten, "a.app", "/env?name=USER"), "nobody");
    assert_eq!(get_text(&ten, "a.app", "/env?name=HOME"), "/nonexistent");
    assert!(
        !ten.stderr().contains("its instances run as root"),
        "{}",
        ten.stderr()
    );
}

#[test]
fn two_dynamic_instances_run_under_two_uids_stable_across_a_restart() {
    assert_root();
    let mut ten = builder()
        .settings("user = \"dynamic\"")
        .body("[process.app]\ncommand = \"@APP@\"\n[instances]\napp = [\"a\", \"b\"]\n")
        .start();
    ten.wait_status(&format!("a.app.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("b.app.{DOMAIN}"), "/", 200);
    let (_, uid_a) = whoami(&ten, "a.app");
    let (_, uid_b) = whoami(&ten, "b.app");
    assert_ne!(uid_a, uid_b, "two instances share a uid");
    for uid in [uid_a, uid_b] {
        assert!(
            (61184..=65519).contains(&uid),
            "uid {uid} out of the dynamic range"
        );
    }
    assert_eq!(proc_uid(host_pid(&ten, "app:a")), uid_a);
    assert_eq!(proc_uid(host_pid(&ten, "app:b")), uid_b);
    // DATA_DIR belongs to the instance's uid, 0700; data_dir stays 0711.
    let data = ten.data_dir();
    assert_eq!(
        std::fs::metadata(&data).expect("data_dir").mode() & 0o7777,
        0o711
    );
    for (id, uid) in [("a", uid_a), ("b", uid_b)] {
        let meta = std::fs::metadata(data.join("app").join(id)).expect("DATA_DIR");
        assert_eq!(meta.mode() & 0o7777, 0o700, "DATA_DIR of app:{id}");
        assert_eq!(meta.uid(), uid, "DATA_DIR of app:{id}");
        assert_eq!(
            get_text(&ten, &format!("{id}.app"), "/env?name=HOME"),
            data.join("app").join(id).display().to_string()
        );
    }
    // ten serve restarted: each instance gets its uid again.
    assert!(ten.sigterm().success(), "{}", ten.stderr());
    ten.serve_again();
    ten.wait_status(&format!("a.app.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("b.app.{DOMAIN}"), "/", 200);
    assert_eq!(whoami(&ten, "a.app").1, uid_a);
    assert_eq!(whoami(&ten, "b.app").1, uid_b);
}

#[test]
fn an_app_under_another_uid_cannot_reach_ten_sock_the_database_or_another_data_dir() {
    assert_root();
    let ten = builder()
        .settings("user = \"dynamic\"")
        .body("[process.app]\ncommand = \"@APP@\"\n[instances]\napp = [\"a\", \"b\"]\n")
        .start();
    ten.wait_status(&format!("a.app.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("b.app.{DOMAIN}"), "/", 200);
    let data = ten.data_dir();
    let b_dir = data.join("app/b");
    // b writes in its own DATA_DIR; a may write in its own.
    assert_eq!(
        try_as_app(&ten, "b.app", "write", &b_dir.join("secret")),
        "ok"
    );
    assert_eq!(
        try_as_app(&ten, "a.app", "write", &data.join("app/a/mine")),
        "ok"
    );
    let eacces = format!("errno {}", libc::EACCES);
    for (op, path) in [
        ("connect", ten.control.clone()),
        ("open", data.join("tenement.db")),
        ("list", b_dir.clone()),
        ("open", b_dir.join("secret")),
        ("list", data.clone()),
    ] {
        assert_eq!(
            try_as_app(&ten, "a.app", op, &path),
            eacces,
            "{op} {}",
            path.display()
        );
    }
}

#[test]
fn a_command_the_uid_cannot_run_is_a_spawn_error_naming_path_and_uid() {
    assert_root();
    let b = builder();
    let home = b.dir().join("home");
    std::fs::create_dir(&home).expect("home");
    std::fs::copy(app_bin(), home.join("app")).expect("copy app");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let ten = b
        .settings("user = \"dynamic\"")
        .body(
            "[process.app]\ncommand = \"@DIR@/home/app\"\nrestart = \"never\"\n\
             [process.sock]\ncommand = \"@APP@\"\nsocket = \"@DIR@/home/{id}/s.sock\"\n",
        )
        .start();
    let (status, _, err) = ten.cli(&["spawn", "app:x"]);
    assert!(!status.success(), "spawn under a 0700 home succeeded");
    assert!(
        err.contains("as uid 6")
            && err.contains(&format!("{}: directory mode 0700", home.display())),
        "{err}"
    );
    // A socket whose directory the uid cannot reach: said before the spawn, too.
    let (status, _, err) = ten.cli(&["spawn", "sock:y"]);
    assert!(
        !status.success(),
        "spawn with an unreachable socket succeeded"
    );
    assert!(
        err.contains("sock:y: its socket") && err.contains("is out of reach of uid 6"),
        "{err}"
    );
}

#[test]
fn config_check_warns_about_root_apps_and_refuses_user_without_root() {
    assert_root();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = dir.path().join("tenement.toml");
    std::fs::write(&config, "[process.app]\ncommand = \"/bin/true\"\n").expect("write");
    let mut cmd = Command::new(ten_bin());
    cmd.args(["config", "check"]).arg(&config);
    let (status, _, err) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(status.success(), "{err}");
    assert!(
        err.contains("warning: process.app: its instances run as root")
            && err.contains("user = \"dynamic\""),
        "{err}"
    );
    std::fs::write(&config, "[settings]\nuser = \"dynamic\"\n[process.app]\ncommand = \"/bin/true\"\nisolation = \"namespace\"\n")
        .expect("write");
    let mut cmd = Command::new(ten_bin());
    cmd.args(["config", "check"]).arg(&config);
    let (status, _, err) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
    let mut cmd = Command::new(ten_bin());
    cmd.arg("--config").arg(&config).args(["config", "show"]);
    let (status, out, err) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(status.success(), "{err}");
    assert!(
        out.contains("user = \"dynamic\"\nisolation = \"namespace\"\n"),
        "{out}"
    );
    // As another uid: user and isolation are errors naming the setting.
    let mut cmd = Command::new(ten_bin());
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    cmd.args(["config", "check"]).arg(&config);
    let (status, _, err) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("settings.user: user needs ten to run as root"),
        "{err}"
    );
    assert!(
        err.contains("process.app.isolation: isolation needs ten to run as root"),
        "{err}"
    );
}

#[test]
fn namespace_isolation_hides_pids_tmp_and_data_dir_and_still_stops_and_logs() {
    assert_root();
    let b = builder();
    let marker = b.dir().display().to_string();
    let mut ten = b
        .settings("user = \"dynamic\"")
        .body(
            "[process.app]\ncommand = \"@APP@\"\nisolation = \"namespace\"\nlisten = \"socket\"\n\
             health = \"/health\"\nenv = { TEN_TEST_MARKER = \"@DIR@\" }\n\
             [process.plain]\ncommand = \"@APP@\"\n\
             [instances]\napp = [\"a\"]\nplain = [\"p\"]\n",
        )
        .start();
    ten.wait_status(&format!("a.app.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("p.plain.{DOMAIN}"), "/", 200);
    // Its own PID namespace: pid 2 (under the namespace's reaper), not its host pid.
    let (pid, uid) = whoami(&ten, "a.app");
    let host = host_pid(&ten, "app:a");
    assert_eq!(pid, 2, "the app's own pid");
    assert_ne!(host, pid);
    assert!((61184..=65519).contains(&uid), "uid {uid}");
    // A private /tmp.
    let name = format!("ten-iso-{}", std::process::id());
    let tmp = Path::new("/tmp").join(&name);
    assert_eq!(try_as_app(&ten, "a.app", "write", &tmp), "ok");
    assert!(!tmp.exists(), "the app's /tmp file is visible on the host");
    // data_dir: only its own DATA_DIR is there (written through to the host).
    let data = ten.data_dir();
    let enoent = format!("errno {}", libc::ENOENT);
    for path in [
        data.join("tenement.db"),
        data.join("ten.sock"),
        data.join("plain/p"),
    ] {
        assert_eq!(
            try_as_app(&ten, "a.app", "open", &path),
            enoent,
            "{}",
            path.display()
        );
    }
    assert_eq!(
        try_as_app(&ten, "a.app", "write", &data.join("app/a/kept")),
        "ok"
    );
    assert!(
        data.join("app/a/kept").exists(),
        "DATA_DIR is bound to the host's"
    );
    let meta = std::fs::metadata(data.join("app/a")).expect("DATA_DIR");
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, uid));
    let run = std::fs::metadata(data.join("run/app/a")).expect("socket dir");
    assert_eq!((run.mode() & 0o7777, run.uid()), (0o700, uid));
    // Logs are captured; stop reaches the app (SIGTERM, graceful) and leaves nothing.
    wait_logs(&ten, &["logs", "app:a"], "ten-testapp app:a listening");
    let pids = marked_pids(&marker);
    assert!(!pids.is_empty(), "no process carries the marker");
    let (status, _, err) = ten.cli(&["stop", "app:a"]);
    assert!(status.success(), "stop: {err}");
    wait_logs(&ten, &["logs", "app:a"], "got SIGTERM, exiting");
    for p in pids.iter().chain([&host]) {
        assert!(!alive(*p), "process {p} survived the stop");
    }
    // kill -9 of ten serve: the next one kills what the namespace left behind.
    let (status, _, err) = ten.cli(&["spawn", "app:b"]);
    assert!(status.success(), "spawn: {err}");
    let orphans = marked_pids(&marker);
    assert!(!orphans.is_empty(), "app:b is not running");
    ten.kill9();
    ten.serve_again();
    ten.wait_status(&format!("b.app.{DOMAIN}"), "/", 200);
    for p in orphans {
        assert!(
            !alive(p),
            "orphan {p} survived the restart\n{}",
            ten.stderr()
        );
    }
    assert!(
        ten.stderr().contains("killing the orphaned process group"),
        "{}",
        ten.stderr()
    );
    // The app's own exit status reaches ten through the namespace's waiters.
    let _ = ten.get(&format!("b.app.{DOMAIN}"), "/exit?code=3");
    wait_logs(
        &ten,
        &["logs", "ten", "--search", "exited"],
        "exited with code 3",
    );
    ten.wait_status(&format!("b.app.{DOMAIN}"), "/", 200);
    let _ = ten.get(&format!("b.app.{DOMAIN}"), "/crash");
    wait_logs(
        &ten,
        &["logs", "ten", "--search", "killed"],
        "killed by SIGABRT",
    );
}

#[test]
fn namespace_instances_scale_to_zero_wake_and_join_their_cgroup() {
    assert_root();
    let b = builder();
    let marker = b.dir().display().to_string();
    let ten = b
        .body(
            "[process.app]\ncommand = \"@APP@\"\nisolation = \"namespace\"\nhealth = \"/health\"\n\
             idle_timeout = \"1s\"\nmemory_limit_mb = 64\nenv = { TEN_TEST_MARKER = \"@DIR@\" }\n\
             [instances]\napp = [\"a\"]\n",
        )
        .start();
    ten.wait_status(&format!("a.app.{DOMAIN}"), "/", 200);
    // The app (below the namespace's waiters) is in the instance's cgroup, or ten said why not.
    let apps = marked_pids(&marker);
    assert_eq!(apps.len(), 1, "{apps:?}");
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", apps[0])).expect("cgroup");
    assert!(
        cgroup.contains("ten-app.a")
            || ten
                .stderr()
                .contains("memory_limit_mb/cpu_shares not applied"),
        "app cgroup {cgroup:?}\n{}",
        ten.stderr()
    );
    // Idle-stopped after 1 s (the app is gone), woken by the next request.
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(apps[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(apps[0]), "not stopped when idle\n{}", ten.stderr());
    let r = ten.get(&format!("a.app.{DOMAIN}"), "/whoami");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), ten.stderr());
    assert!(r.text().starts_with("pid=2 "), "{}", r.text());
}

#[test]
fn a_dynamic_uid_is_given_back_only_with_its_data_dir() {
    assert_root();
    let ten = builder()
        .settings("user = \"dynamic\"")
        .body(
            "[process.tmp]\ncommand = \"@APP@\"\nstorage_persist = false\n\
             [process.keep]\ncommand = \"@APP@\"\n[instances]\ntmp = [\"a\"]\nkeep = [\"a\"]\n",
        )
        .start();
    ten.wait_status(&format!("a.tmp.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("a.keep.{DOMAIN}"), "/", 200);
    let tmp_uid = whoami(&ten, "a.tmp").1;
    let keep_uid = whoami(&ten, "a.keep").1;
    for name in ["tmp:a", "keep:a"] {
        let (status, _, err) = ten.cli(&["stop", name]);
        assert!(status.success(), "stop {name}: {err}");
    }
    // keep:a's DATA_DIR and uid stay recorded; tmp:a's uid is free again.
    assert!(ten.data_dir().join("keep/a").is_dir());
    assert!(!ten.data_dir().join("tmp/a").exists());
    let db = rusqlite::Connection::open_with_flags(
        ten.data_dir().join("tenement.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open tenement.db");
    let held: Vec<(String, String, u32)> = db
        .prepare("SELECT process, id, uid FROM dynamic_users ORDER BY process")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .expect("dynamic_users");
    assert_eq!(held, vec![("keep".to_string(), "a".to_string(), keep_uid)]);
    assert_ne!(tmp_uid, keep_uid);
    let (status, _, err) = ten.cli(&["spawn", "keep:a"]);
    assert!(status.success(), "spawn keep:a: {err}");
    assert_eq!(whoami(&ten, "a.keep").1, keep_uid);
}
