//! SPEC §11 reload: `ten reload`, `--dry-run`, SIGHUP and `POST /api/reload` against a real
//! `ten serve`, under steady load where it matters.

use std::time::{Duration, Instant};

use crate::deploy::{assert_no_loss, Load};
use crate::supervision::{cli, instance, ps, wait_instance};
use crate::util::{alive, app_bin, free_port, request, signal, Builder, Ten, DOMAIN};

/// The `[settings]` limits and listeners a reload applies live (issue 20).
mod settings;

/// The config text as `Builder` writes it, with other `[settings]` lines and body.
fn text(ten: &Ten, settings: &str, body: &str) -> String {
    let dir = ten.dir.path().display().to_string();
    format!(
        "[settings]\ndomain = \"{DOMAIN}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"@DIR@/data\"\n\
         drain_timeout = \"5s\"\n{settings}\n{body}\n"
    )
    .replace("@APP@", app_bin())
    .replace("@DIR@", &dir)
}

/// Replace the config file `ten serve` was started with.
fn rewrite(ten: &Ten, settings: &str, body: &str) {
    std::fs::write(
        ten.dir.path().join("tenement.toml"),
        text(ten, settings, body),
    )
    .expect("write config");
}

const TWO: &str =
    "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\nstop_timeout = \"5s\"\n\
    [process.web]\ncommand = \"@APP@\"\nhealth = \"/health\"\nstop_timeout = \"5s\"\n\
    [instances]\napi = [\"1\"]\nweb = [\"1\"]\n";

fn server() -> Ten {
    let ten = Builder::new().body(TWO).start();
    ten.wait_status(&format!("1.api.{DOMAIN}"), "/", 200);
    ten.wait_status(&format!("1.web.{DOMAIN}"), "/", 200);
    ten
}

fn pid(ten: &Ten, name: &str) -> u64 {
    crate::util::healthy_pid(ten, name)
}

/// `ten reload ARGS`: (success, stdout, stderr).
fn reload(ten: &Ten, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["reload"];
    all.extend_from_slice(args);
    cli(ten, &all)
}

#[test]
fn a_reload_under_load_adds_a_route_and_a_process_replaces_a_changed_one_and_loses_nothing() {
    let ten = server();
    let (api_pid, web_pid) = (pid(&ten, "api:1"), pid(&ten, "web:1"));
    let api_load = Load::start(ten.addr, format!("api.{DOMAIN}"), 3);
    let web_load = Load::start(ten.addr, format!("web.{DOMAIN}"), 2);
    std::thread::sleep(Duration::from_millis(1000));
    rewrite(
        &ten,
        "",
        "[process.api]\ncommand = \"@APP@ --name api-new\"\nhealth = \"/health\"\nstop_timeout = \"5s\"\n\
         [process.web]\ncommand = \"@APP@\"\nhealth = \"/health\"\nstop_timeout = \"5s\"\n\
         [process.worker]\ncommand = \"@APP@\"\nhealth = \"/health\"\n\
         [routes]\n\"a.test\" = \"web\"\n\
         [instances]\napi = [\"1\"]\nweb = [\"1\"]\nworker = [\"1\"]\n",
    );
    let (ok, out, err) = reload(&ten, &[]);
    assert!(ok, "reload failed: {out}\n{err}\n{}", ten.stderr());
    std::thread::sleep(Duration::from_millis(1000));
    let (api_seen, web_seen) = (api_load.finish(), web_load.finish());
    for line in [
        "process ~ api: command changed, replacing 1 instance(s)",
        "process + worker: 1 instance(s) at start",
        "instance + worker:1",
        "route + a.test -> web",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
    let bodies = assert_no_loss(&api_seen);
    assert_no_loss(&web_seen);
    assert_eq!(
        bodies.last().map(|(_, b)| b.as_str()),
        Some("hello from api-new\n"),
        "the changed process answers with its new command"
    );
    assert_eq!(
        pid(&ten, "web:1"),
        web_pid,
        "the untouched process kept its PID"
    );
    assert_ne!(
        pid(&ten, "api:1"),
        api_pid,
        "the changed process was replaced"
    );
    assert!(!alive(api_pid as u32), "the old api:1 is stopped");
    assert!(
        instance(&ten, "api:1-reload").is_none(),
        "the temporary copy is gone"
    );
    let r = ten.get("a.test", "/");
    assert_eq!((r.status, r.text()), (200, "hello from web:1\n".into()));
    ten.wait_status(&format!("worker.{DOMAIN}"), "/", 200);
    // Audit-logged like other writes.
    let (ok, history, _) = cli(&ten, &["deploy", "--history", "--json"]);
    assert!(ok);
    let h: serde_json::Value = serde_json::from_str(&history).expect("json");
    assert!(
        h.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["action"] == "reload"
                && r["result"].as_str().is_some_and(|s| s.starts_with("ok"))),
        "{h}"
    );
}

#[test]
fn an_invalid_file_changes_nothing_prints_every_error_and_exits_1() {
    let ten = server();
    let api_pid = pid(&ten, "api:1");
    rewrite(
        &ten,
        "",
        "[process.api]\ncommand = \"@APP@\"\nhealth = \"nope\"\n\
         [process.web]\ncommand = \"@APP@\"\nstartup_timeout = \"soon\"\n\
         [process.worker]\ncommand = \"@APP@\"\n\
         [instances]\napi = [\"1\"]\nworker = [\"1\"]\n",
    );
    let (ok, out, err) = reload(&ten, &[]);
    assert!(!ok, "an invalid file must fail: {out}");
    assert!(err.contains("process.api.health"), "{err}");
    assert!(err.contains("process.web.startup_timeout"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");
    assert_eq!(pid(&ten, "api:1"), api_pid);
    assert!(instance(&ten, "worker:1").is_none(), "nothing spawned");
    assert_eq!(ten.get(&format!("worker.{DOMAIN}"), "/").status, 404);
}

#[test]
fn sighup_applies_a_change_and_logs_it() {
    let ten = server();
    rewrite(&ten, "", &format!("{TWO}[routes]\n\"b.test\" = \"api\"\n"));
    signal(ten.pid(), "HUP");
    let r = ten.wait_status("b.test", "/", 200);
    assert_eq!(r.text(), "hello from api:1\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ten
        .stderr()
        .contains("SIGHUP: reload: route + b.test -> api")
    {
        assert!(Instant::now() < deadline, "not logged:\n{}", ten.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dry_run_prints_the_changes_and_changes_nothing() {
    let ten = server();
    rewrite(
        &ten,
        "",
        &format!("{TWO}worker = [\"1\"]\n[process.worker]\ncommand = \"@APP@\"\n[routes]\n\"c.test\" = \"web\"\n"),
    );
    let (ok, out, err) = reload(&ten, &["--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("route + c.test -> web"), "{out}");
    assert!(out.contains("process + worker"), "{out}");
    assert!(out.contains("dry run: nothing changed"), "{out}");
    assert_eq!(ten.get("c.test", "/").status, 404);
    assert!(instance(&ten, "worker:1").is_none());
    // The API answers the same, as JSON.
    let body = "{\"dry_run\":true}";
    let r = ten.control_request(&format!(
        "POST /api/reload HTTP/1.1\r\nHost: ten\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["dry_run"], true);
    assert!(v["errors"].as_array().expect("errors").is_empty());
    assert!(
        v["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .any(|c| c == "route + c.test -> web"),
        "{v}"
    );
}

#[test]
fn a_removed_process_is_drained_and_stopped() {
    let ten = server();
    let web_pid = pid(&ten, "web:1");
    rewrite(
        &ten,
        "",
        "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\nstop_timeout = \"5s\"\n\
         [instances]\napi = [\"1\"]\n",
    );
    let (ok, out, err) = reload(&ten, &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("process - web: draining and stopping 1 instance(s)"),
        "{out}"
    );
    assert!(ps(&ten).iter().all(|v| v["process"] != "web"), "web listed");
    assert!(!alive(web_pid as u32), "web:1 still running");
    assert_eq!(ten.get(&format!("web.{DOMAIN}"), "/").status, 404);
    assert_eq!(ten.get(&format!("api.{DOMAIN}"), "/").status, 200);
}

#[test]
fn a_new_listen_address_answers_and_a_removed_one_closes() {
    let ten = server();
    let port = free_port();
    let both = format!("listen = [\"127.0.0.1:0\", \"127.0.0.1:{port}\"]\n");
    let text_both = text(&ten, "", TWO).replace("listen = \"127.0.0.1:0\"\n", &both);
    std::fs::write(ten.dir.path().join("tenement.toml"), text_both).expect("write");
    let (ok, out, err) = reload(&ten, &[]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("listen + 127.0.0.1:{port}")), "{out}");
    let new: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let raw = format!("GET / HTTP/1.1\r\nHost: api.{DOMAIN}\r\nConnection: close\r\n\r\n");
    assert_eq!(request(new, raw.as_bytes()).status, 200);
    assert_eq!(ten.get(&format!("api.{DOMAIN}"), "/").status, 200, "old");
    // Now only the new one.
    let only = format!("listen = [\"127.0.0.1:{port}\"]\n");
    let text_new = text(&ten, "", TWO).replace("listen = \"127.0.0.1:0\"\n", &only);
    std::fs::write(ten.dir.path().join("tenement.toml"), text_new).expect("write");
    let (ok, out, err) = reload(&ten, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("listen - 127.0.0.1:0"), "{out}");
    assert!(
        std::net::TcpStream::connect(ten.addr).is_err(),
        "the removed listener still accepts"
    );
    // Closing one listener leaves the others' connections alone (Pingora's app cleanup, shared
    // by every listener, once ended them all).
    for _ in 0..5 {
        assert_eq!(request(new, raw.as_bytes()).status, 200);
    }
}

#[test]
fn a_data_dir_change_is_refused_by_name() {
    let ten = server();
    let text_moved = text(&ten, "", TWO).replace("/data\"", "/elsewhere\"");
    std::fs::write(ten.dir.path().join("tenement.toml"), text_moved).expect("write");
    let (ok, _, err) = reload(&ten, &[]);
    assert!(!ok);
    assert!(err.contains("data_dir cannot change"), "{err}");
}

#[test]
fn a_replacement_that_never_gets_healthy_leaves_the_old_one_serving_and_exits_1() {
    let ten = server();
    let api_pid = pid(&ten, "api:1");
    rewrite(
        &ten,
        "",
        "[process.api]\ncommand = \"@APP@ --fail-health\"\nhealth = \"/health\"\nstartup_timeout = \"1s\"\n\
         stop_timeout = \"5s\"\n\
         [process.web]\ncommand = \"@APP@\"\nhealth = \"/health\"\nstop_timeout = \"5s\"\n\
         [instances]\napi = [\"1\"]\nweb = [\"1\"]\n",
    );
    let (ok, out, err) = reload(&ten, &[]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("process ~ api:") && err.contains("did not get healthy"),
        "{err}"
    );
    assert_eq!(pid(&ten, "api:1"), api_pid, "the old one keeps running");
    assert!(instance(&ten, "api:1-reload").is_none());
    let r = ten.get(&format!("api.{DOMAIN}"), "/");
    assert_eq!((r.status, r.text()), (200, "hello from api:1\n".into()));
    // The running config kept the old definition: the same file is still a change.
    let (_, out, _) = reload(&ten, &["--dry-run"]);
    assert!(out.contains("process ~ api:"), "{out}");
}

#[test]
fn systemd_is_notified_ready_reloading_and_stopping() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify.sock");
    let listener = crate::util::NotifyListener::bind(&notify);
    let recv = || listener.recv();
    let config = dir.path().join("tenement.toml");
    let base = format!(
        "[settings]\ndomain = \"{DOMAIN}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}/data\"\n\
         [process.api]\ncommand = \"{}\"\n",
        dir.path().display(),
        app_bin()
    );
    std::fs::write(&config, &base).expect("write");
    /// Kills `ten serve` if the test fails before it exits.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        Command::new(crate::util::ten_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ten serve"),
    );
    assert_eq!(recv(), "READY=1");
    std::fs::write(&config, format!("{base}[routes]\n\"n.test\" = \"api\"\n")).expect("write");
    let (status, out, err) = crate::util::ten(
        &[
            "--data-dir",
            dir.path().join("data").to_str().expect("utf8"),
            "reload",
        ],
        dir.path(),
    );
    assert!(status.success(), "{out}{err}");
    let reloading = recv();
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("not RELOADING=1 + MONOTONIC_USEC: {reloading:?}"));
    assert!(usec > 0);
    assert_eq!(recv(), "READY=1");
    signal(child.0.id(), "TERM");
    assert_eq!(recv(), "STOPPING=1");
    let exited = crate::util::wait_bounded(&mut child.0, Duration::from_secs(30));
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

#[test]
fn init_writes_a_starter_that_checks_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("site");
    let t = target.to_str().expect("utf8");
    let (status, out, err) = crate::util::ten(&["init", t], dir.path());
    assert!(status.success(), "{out}{err}");
    let path = target.join("tenement.toml");
    let written = std::fs::read_to_string(&path).expect("written");
    // Run as root (CI), the starter sets dynamic users (SPEC §12); otherwise the line is a
    // comment (user needs root).
    let line = match nix::unistd::geteuid().is_root() {
        true => "\nuser = \"dynamic\"",
        false => "# user = \"dynamic\"",
    };
    assert!(written.contains(line), "{written}");
    let p = path.to_str().expect("utf8");
    let (status, out, err) = crate::util::ten(&["config", "check", p], dir.path());
    assert!(status.success(), "starter does not check: {out}{err}");
    // Never over an existing file.
    std::fs::write(&path, "# mine\n").expect("write");
    let (status, _, err) = crate::util::ten(&["init", t], dir.path());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "# mine\n");
    // The unit.
    let (status, unit, err) = crate::util::ten(&["init", "--systemd", "--config", p], dir.path());
    assert!(status.success(), "{err}");
    assert!(unit.contains("\nType=notify\n"), "{unit}");
    assert!(
        unit.contains(&format!(
            "\nExecReload={} --config {p} reload\n",
            crate::util::ten_bin()
        )),
        "{unit}"
    );
    assert!(
        unit.contains(&format!(
            "\nExecStart={} serve --config {p}\n",
            crate::util::ten_bin()
        )),
        "{unit}"
    );
}

#[test]
fn an_external_upstream_added_by_a_reload_routes_and_a_removed_one_stops() {
    let ten = server();
    let api = wait_instance(&ten, "api:1", "an address", |v| v["address"].is_string());
    let addr = api["address"].as_str().expect("address").to_string();
    let ext = format!("[process.legacy]\nupstreams = [\"{addr}\"]\nhealth = \"/health\"\n");
    rewrite(&ten, "", &format!("{TWO}{ext}"));
    let (ok, out, err) = reload(&ten, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("process + legacy: 1 upstream(s)"), "{out}");
    let r = ten.wait_status(&format!("legacy.{DOMAIN}"), "/", 200);
    assert_eq!(r.text(), "hello from api:1\n");
    rewrite(&ten, "", TWO);
    let (ok, out, err) = reload(&ten, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("process - legacy"), "{out}");
    assert_eq!(ten.get(&format!("legacy.{DOMAIN}"), "/").status, 404);
    assert!(ps(&ten).iter().all(|v| v["process"] != "legacy"));
}
