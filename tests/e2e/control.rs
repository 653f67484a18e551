//! SPEC §5 and §6, end to end: the CLI's client commands, the control socket and the help
//! texts (the HTTP API is in control/api.rs), against a real `ten serve` with real
//! `ten-testapp` children, driven by the real `ten` client.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::lifecycle::marked_pids;
use crate::util::{alive, run_bounded, ten_bin, Builder, Ten, DOMAIN};

/// SPEC §6 over HTTP: tokens, per-client limiting, bad input.
mod api;

/// One process, no instance at boot: the tests spawn what they need through the CLI.
const API: &str = "[process.api]\ncommand = \"@APP@\"\nhealth = \"/health\"\n";

fn host(h: &str) -> String {
    format!("{h}.{DOMAIN}")
}

fn server() -> Ten {
    Builder::new().body(API).start()
}

/// Run a client command that must succeed; its stdout.
fn cli_ok(ten: &Ten, args: &[&str]) -> String {
    let (status, out, err) = ten.cli(args);
    assert!(
        status.success(),
        "ten {args:?}: {status:?}\nstdout: {out}\nstderr: {err}\nserver: {}",
        ten.stderr()
    );
    out
}

/// Run a client command that must fail with `code`, printing nothing on stdout; its stderr.
fn cli_fails(ten: &Ten, args: &[&str], code: i32) -> String {
    let (status, out, err) = ten.cli(args);
    assert_eq!(
        status.code(),
        Some(code),
        "ten {args:?}\nstdout: {out}\nstderr: {err}"
    );
    assert_eq!(
        out, "",
        "ten {args:?}: errors go to stderr, got stdout {out:?}"
    );
    assert!(!err.trim().is_empty(), "ten {args:?}: no message on stderr");
    err
}

/// `ten ps --json`, parsed.
fn ps_json(ten: &Ten) -> Vec<Value> {
    let out = cli_ok(ten, &["ps", "--json"]);
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ps --json is not JSON ({e}): {out}"));
    v.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("ps --json is not a list: {out}"))
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed by ps: {rows:#?}"))
}

fn names(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["name"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn pid(rows: &[Value], name: &str) -> u32 {
    let r = row(rows, name);
    r["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("{name} has no pid: {r}"))
}

/// What a refused command must leave as it was: every instance's name, state, weight, pid
/// and restarts (uptime and request counters move on their own).
fn summary(ten: &Ten) -> Vec<Value> {
    ps_json(ten)
        .iter()
        .map(|r| {
            json!({
                "name": r["name"], "state": r["state"], "weight": r["weight"],
                "pid": r["pid"], "restarts": r["restarts"],
            })
        })
        .collect()
}

/// `n` requests to the weighted route `api.<domain>`: who answered each.
fn weighted_answers(ten: &Ten, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = ten.get(&host("api"), "/");
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect()
}

/// The `ps` table: the header of src/cmd/instances.rs and every row aligned under it, showing
/// what `ps --json` shows.
fn check_table(out: &str, rows: &[Value]) {
    const COLS: [&str; 8] = [
        "INSTANCE", "STATE", "HEALTH", "WEIGHT", "PID", "UPTIME", "RESTARTS", "REQUESTS",
    ];
    let lines: Vec<&str> = out.lines().collect();
    let header = lines.first().copied().unwrap_or_default();
    assert!(header.starts_with("INSTANCE  STATE "), "{out}");
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), COLS, "{out}");
    let starts: Vec<usize> = COLS
        .iter()
        .map(|c| header.find(c).expect("column in header"))
        .collect();
    assert_eq!(lines.len(), rows.len() + 1, "one line per instance:\n{out}");
    for line in &lines[1..] {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), COLS.len(), "{line:?} in\n{out}");
        for (i, (start, field)) in starts.iter().zip(&fields).enumerate() {
            assert!(
                line.get(*start..)
                    .is_some_and(|rest| rest.starts_with(field)),
                "column {} not aligned in {line:?}:\n{out}",
                COLS[i]
            );
        }
        let r = row(rows, fields[0]);
        let cell = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            v => v.to_string(),
        };
        assert_eq!(fields[1], cell(&r["state"]), "{line}");
        assert_eq!(fields[2], cell(&r["health"]), "{line}");
        assert_eq!(fields[3], cell(&r["weight"]), "{line}");
        assert_eq!(fields[4], cell(&r["pid"]), "{line}");
        assert_eq!(fields[6], cell(&r["restarts"]), "{line}");
    }
}

#[test]
fn spawn_ps_and_health_against_a_real_server() {
    let ten = server();
    // Nothing yet: the bare header of src/cmd/instances.rs.
    assert_eq!(
        cli_ok(&ten, &["ps"]),
        "INSTANCE  STATE  HEALTH  WEIGHT  PID  UPTIME  RESTARTS  REQUESTS\n(no instances)\n"
    );
    assert_eq!(ps_json(&ten), Vec::<Value>::new());

    let out = cli_ok(&ten, &["spawn", "api:x"]);
    assert!(out.starts_with("api:x healthy (pid "), "{out}");
    let out_y = cli_ok(&ten, &["spawn", "api", "--id", "y"]);
    assert!(out_y.starts_with("api:y healthy (pid "), "{out_y}");

    let rows = ps_json(&ten);
    assert_eq!(names(&rows), ["api:x", "api:y"]);
    for (name, id) in [("api:x", "x"), ("api:y", "y")] {
        let r = row(&rows, name);
        assert_eq!(r["process"], "api", "{r}");
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["state"], "healthy", "{r}");
        assert_eq!(r["health"], "passing", "{r}");
        assert_eq!(r["weight"], 100, "{r}");
        assert_eq!(r["restarts"], 0, "{r}");
        let p = pid(&rows, name);
        assert!(alive(p), "{name}: pid {p} is not running");
        // The spawn command printed that same pid, and the instance is routed.
        let line = if id == "x" { &out } else { &out_y };
        assert!(line.contains(&format!("(pid {p}, ")), "{line} vs pid {p}");
        let r = ten.get(&host(&format!("{id}.api")), "/");
        assert_eq!(r.text(), format!("hello from {name}\n"));
    }
    assert_ne!(pid(&rows, "api:x"), pid(&rows, "api:y"));

    check_table(&cli_ok(&ten, &["ps"]), &rows);

    let out = cli_ok(&ten, &["health", "api:x"]);
    assert!(out.starts_with("api:x: healthy"), "{out}");
    assert!(
        out.contains(&format!("pid {}", pid(&rows, "api:x"))),
        "{out}"
    );
    assert!(out.contains("weight 100"), "{out}");
}

#[test]
fn weight_is_listed_and_routes() {
    let ten = server();
    cli_ok(&ten, &["spawn", "api:x"]);
    cli_ok(&ten, &["spawn", "api:y"]);

    assert_eq!(cli_ok(&ten, &["weight", "api:y", "0"]), "api:y weight 0\n");
    let rows = ps_json(&ten);
    assert_eq!(row(&rows, "api:y")["weight"], 0);
    assert_eq!(row(&rows, "api:x")["weight"], 100);
    for who in weighted_answers(&ten, 40) {
        assert_eq!(who, "hello from api:x\n", "weight 0 gets no traffic");
    }
    // Still reachable directly.
    assert_eq!(ten.get(&host("y.api"), "/").text(), "hello from api:y\n");

    // The other way round: it is the weights, not the order.
    cli_ok(&ten, &["weight", "api:y", "100"]);
    assert_eq!(cli_ok(&ten, &["weight", "api:x", "0"]), "api:x weight 0\n");
    for who in weighted_answers(&ten, 40) {
        assert_eq!(who, "hello from api:y\n", "weight 0 gets no traffic");
    }

    assert_eq!(
        cli_ok(&ten, &["weight", "api:x", "30"]),
        "api:x weight 30\n"
    );
    let rows = ps_json(&ten);
    assert_eq!(row(&rows, "api:x")["weight"], 30);
    assert_eq!(row(&rows, "api:y")["weight"], 100);
    let answers = weighted_answers(&ten, 300);
    // 30 against 100 over 300 requests: both get some (missing one is ~1e-34 likely).
    for name in ["api:x", "api:y"] {
        assert!(
            answers.contains(&format!("hello from {name}\n")),
            "{name} got no request at weight {}",
            row(&rows, name)["weight"]
        );
    }

    // Spawned with --weight 0: healthy, listed at 0, reachable directly only.
    let out = cli_ok(&ten, &["spawn", "api:z", "--weight", "0"]);
    assert!(out.starts_with("api:z healthy"), "{out}");
    let rows = ps_json(&ten);
    let z = row(&rows, "api:z");
    assert_eq!(z["weight"], 0, "{z}");
    assert_eq!(z["state"], "healthy", "{z}");
    assert_eq!(ten.get(&host("z.api"), "/").text(), "hello from api:z\n");
    for who in weighted_answers(&ten, 40) {
        assert_ne!(who, "hello from api:z\n", "weight 0 gets no traffic");
    }
}

#[test]
fn restart_gives_a_new_pid_counts_and_keeps_the_weight() {
    let ten = server();
    cli_ok(&ten, &["spawn", "api:x"]);
    cli_ok(&ten, &["spawn", "api:y"]);
    cli_ok(&ten, &["weight", "api:x", "30"]);
    let before = ps_json(&ten);
    let old = pid(&before, "api:x");

    let out = cli_ok(&ten, &["restart", "api:x"]);
    let rows = ps_json(&ten);
    let new = pid(&rows, "api:x");
    assert_eq!(out, format!("api:x restarted (pid {new}, healthy)\n"));
    assert_ne!(new, old, "restart gives a new process");
    assert!(!alive(old), "the old process {old} is gone");
    assert!(alive(new));
    let x = row(&rows, "api:x");
    assert_eq!(x["restarts"], 1, "{x}");
    assert_eq!(x["weight"], 30, "weight kept: {x}");
    assert_eq!(x["state"], "healthy", "{x}");
    assert_eq!(ten.get(&host("x.api"), "/").text(), "hello from api:x\n");
    // The other instance was left alone.
    assert_eq!(pid(&rows, "api:y"), pid(&before, "api:y"));
    assert_eq!(row(&rows, "api:y")["restarts"], 0);

    cli_ok(&ten, &["restart", "api:x"]);
    assert_eq!(row(&ps_json(&ten), "api:x")["restarts"], 2);
}

#[test]
fn stop_removes_the_instance_kills_it_and_unroutes_it() {
    let ten = server();
    cli_ok(&ten, &["spawn", "api:x"]);
    cli_ok(&ten, &["spawn", "api:y"]);
    let before = ps_json(&ten);
    let x = pid(&before, "api:x");
    assert_eq!(ten.get(&host("x.api"), "/").status, 200);

    assert_eq!(cli_ok(&ten, &["stop", "api:x"]), "api:x stopped\n");
    let rows = ps_json(&ten);
    assert_eq!(names(&rows), ["api:y"]);
    assert!(!alive(x), "api:x's process {x} survived stop");
    let r = ten.get(&host("x.api"), "/");
    assert_eq!(r.status, 404, "{}", r.text());
    for who in weighted_answers(&ten, 20) {
        assert_eq!(who, "hello from api:y\n");
    }
    assert_eq!(pid(&rows, "api:y"), pid(&before, "api:y"));
    // Stopped means gone: a second stop names it as unknown.
    let err = cli_fails(&ten, &["stop", "api:x"], 1);
    assert!(err.contains("unknown instance api:x"), "{err}");
}

#[test]
fn client_errors_name_what_is_wrong_and_change_nothing() {
    let ten = server();
    cli_ok(&ten, &["spawn", "api:x"]);
    let before = summary(&ten);

    let err = cli_fails(&ten, &["spawn", "nope:x"], 1);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("unknown process \"nope\""), "{err}");
    for args in [
        &["stop", "api:nope"][..],
        &["restart", "api:nope"],
        &["health", "api:nope"],
        &["weight", "api:nope", "5"],
    ] {
        let err = cli_fails(&ten, args, 1);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains("unknown instance api:nope"), "{args:?}: {err}");
    }
    let err = cli_fails(&ten, &["spawn", "api:x"], 1);
    assert!(err.contains("api:x already exists"), "{err}");
    let err = cli_fails(&ten, &["spawn", "api", "--id", "x"], 1);
    assert!(err.contains("api:x already exists"), "{err}");

    // Usage errors: exit 2, before anything reaches the server.
    for (args, needle) in [
        (&["stop", "nocolon"][..], "nocolon"),
        (&["restart", "nocolon"], "nocolon"),
        (&["health", "nocolon"], "nocolon"),
        (&["weight", "nocolon", "5"], "nocolon"),
        (&["spawn", "nocolon"], "process:id"),
        (&["spawn", "api:x", "--id", "y"], "not both"),
        (&["spawn", "api:bad id"], "bad id"),
        (&["weight", "api:x", "101"], "101"),
        (&["weight", "api:x", "lots"], "lots"),
        (&["spawn", "api:w", "--weight", "101"], "101"),
        (&["stop"], "INSTANCE"),
    ] {
        let err = cli_fails(&ten, args, 2);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(summary(&ten), before, "a refused command changed something");
}

/// A server with `api:x` running and one more process, `[process.NAME]` with `rest`, whose
/// spawn fails: `ten spawn NAME:a` exits 1 naming the instance, saying why, with `needles` in
/// the message; afterwards `ps` is as before and no process of it is left. Returns the message.
fn failed_spawn(name: &str, rest: &str, needles: &[&str]) -> String {
    let b = Builder::new();
    let marker = b.dir().display().to_string();
    let ten = b
        .body(API)
        .body(&format!(
            "[process.{name}]\n{rest}\nstartup_timeout = \"2s\"\n\
             env = {{ TEN_TEST_MARKER = \"@DIR@\" }}\n"
        ))
        .start();
    cli_ok(&ten, &["spawn", "api:x"]);
    let before = summary(&ten);
    let instance = format!("{name}:a");
    let mut messages = Vec::new();
    // Twice: the failed instance is forgotten, not left half-registered ("already exists").
    for _ in 0..2 {
        let err = cli_fails(&ten, &["spawn", &instance], 1);
        assert!(err.starts_with("error: "), "{err}");
        assert!(
            err.contains(&format!("instance {instance} did not become healthy")),
            "{err}"
        );
        for needle in needles {
            assert!(
                err.contains(needle),
                "{needle:?} not in the message:\n{err}"
            );
        }
        assert_eq!(summary(&ten), before, "the failed spawn left a trace in ps");
        assert_eq!(
            marked_pids(&marker),
            Vec::<u32>::new(),
            "the failed spawn left a process"
        );
        messages.push(err);
    }
    messages.swap_remove(0)
}

#[test]
fn failed_spawn_of_an_app_that_exits_at_once_shows_its_last_output() {
    // The app refuses its arguments on stderr and exits 2 right away.
    let err = failed_spawn(
        "crash",
        "command = \"@APP@ --port nope\"",
        &["exited with code 2", "invalid port: \"nope\""],
    );
    assert!(err.contains("usage: ten-testapp"), "{err}");
}

#[test]
fn failed_spawn_shows_the_very_last_lines_of_a_chatty_app() {
    // Many short lines (60 KB: they fit in the pipe, so the app exits at once), then the
    // reason, then exit: the message must end with the reason, not with whatever ten had read
    // when it noticed the exit. Until the supervisor drains the app's pipes before taking the
    // tail (supervisor/src/runner.rs, StartupFailed), this fails often but not always.
    let err = failed_spawn(
        "chatty",
        "command = \"sh\"\nargs = [\"-c\", \"yes x | head -n 30000; echo 'fatal: the last words'; exit 3\"]",
        &["exited with code 3", "fatal: the last words"],
    );
    assert!(err.trim_end().ends_with("fatal: the last words"), "{err}");
}

#[test]
fn failed_spawn_of_an_app_that_never_gets_healthy_shows_its_last_output() {
    // It runs, says where it listens, but its health check answers 503 until startup_timeout.
    failed_spawn(
        "sick",
        "command = \"@APP@ --fail-health\"\nhealth = \"/health\"",
        &["startup_timeout", "ten-testapp sick:a listening on"],
    );
}

#[test]
fn failed_spawn_of_a_silent_app_says_it_printed_nothing() {
    failed_spawn(
        "mute",
        "command = \"false\"",
        &["exited with code 1", "printed nothing"],
    );
}

#[test]
fn client_without_a_server_says_so_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let expected = format!(
        "error: ten serve is not running (no control socket at {}/ten.sock)\n",
        data.display()
    );
    let run = |args: &[&str], env_data_dir: bool| {
        let mut cmd = Command::new(ten_bin());
        cmd.args(args)
            .current_dir(dir.path())
            .env_remove("TENEMENT_CONFIG")
            .env_remove("TENEMENT_DATA_DIR");
        if env_data_dir {
            cmd.env("TENEMENT_DATA_DIR", &data);
        } else {
            cmd.arg("--data-dir").arg(&data);
        }
        run_bounded(&mut cmd, Duration::from_secs(60))
    };
    for args in [
        &["ps"][..],
        &["ps", "--json"],
        &["spawn", "api:x"],
        &["stop", "api:x"],
        &["restart", "api:x"],
        &["health", "api:x"],
        &["weight", "api:x", "5"],
        &["token-gen"],
    ] {
        let (status, out, err) = run(args, false);
        assert_eq!(status.code(), Some(1), "{args:?}: {out}{err}");
        assert_eq!(out, "", "{args:?}");
        assert_eq!(err, expected, "{args:?}");
    }
    // $TENEMENT_DATA_DIR finds it too.
    let (status, _, err) = run(&["ps"], true);
    assert_eq!(status.code(), Some(1));
    assert_eq!(err, expected);
    // A socket file nobody listens on is "not running" too.
    drop(std::os::unix::net::UnixListener::bind(data.join("ten.sock")).expect("bind"));
    let (status, _, err) = run(&["ps"], false);
    assert_eq!(status.code(), Some(1));
    assert_eq!(err, expected);
}

/// `ten ps` and friends need only the control socket: they read `[settings] data_dir` and
/// nothing else, so they keep working while the config on disk is being edited and invalid.
#[test]
fn client_finds_the_server_while_the_config_on_disk_is_invalid() {
    let ten = server();
    cli_ok(&ten, &["spawn", "api:x"]);
    let config = ten.dir.path().join("tenement.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!("{text}\n[process.broken]\nhealth = 3\nbogus = true\n"),
    )
    .expect("write config");
    // Another file, elsewhere, naming the same data dir relative to its own folder.
    let sub = ten.dir.path().join("sub");
    std::fs::create_dir(&sub).expect("sub dir");
    std::fs::write(
        sub.join("tenement.toml"),
        "[settings]\ndata_dir = \"../data\"\nno_such_key = 1\n",
    )
    .expect("write sub config");
    let run = |args: &[&str]| {
        run_bounded(
            Command::new(ten_bin())
                .args(args)
                .current_dir(ten.dir.path())
                .env_remove("TENEMENT_CONFIG")
                .env_remove("TENEMENT_DATA_DIR"),
            Duration::from_secs(60),
        )
    };
    // The config check still says what is wrong.
    let (status, _, err) = run(&["config", "check"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("process.broken"), "{err}");
    for args in [&["ps"][..], &["--config", "sub/tenement.toml", "ps"]] {
        let (status, out, err) = run(args);
        assert!(status.success(), "ten {args:?}: {status:?}\n{out}{err}");
        assert!(out.starts_with("INSTANCE "), "ten {args:?}: {out}");
        assert!(out.contains("api:x "), "ten {args:?}: {out}");
        assert_eq!(err, "", "ten {args:?}");
    }
    // A file that is not TOML at all gives no data_dir: that is said, with the file's error.
    std::fs::write(&config, "[settings\n").expect("write config");
    let (status, out, err) = run(&["ps"]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("cannot find the control socket"), "{err}");
    assert!(err.contains("invalid TOML"), "{err}");
}

#[test]
fn control_socket_is_private_and_owned_by_one_server() {
    let ten = Builder::new()
        .body(API)
        .body("[instances]\napi = [\"x\"]\n")
        .start();
    ten.wait_status(&host("x.api"), "/", 200);
    assert_eq!(ten.control, ten.data_dir().join("ten.sock"));
    let meta = std::fs::metadata(&ten.control).expect("control socket");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode {:o}",
        meta.permissions().mode()
    );
    let pid_x = pid(&ps_json(&ten), "api:x");

    // A second server on the same data dir refuses to start (bounded: it must not serve).
    let config = ten.dir.path().join("tenement.toml");
    let (status, out, err) = run_bounded(
        Command::new(ten_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("TENEMENT_DATA_DIR")
            .env("TEN_LOG", "info"),
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("listening"), "{out}");
    assert!(
        err.contains("another ten serve is already running"),
        "{err}"
    );
    assert!(err.contains(&ten.control.display().to_string()), "{err}");

    // The first one keeps serving, with its instance untouched.
    assert!(std::fs::metadata(&ten.control)
        .expect("control socket still there")
        .file_type()
        .is_socket());
    let rows = ps_json(&ten);
    assert_eq!(names(&rows), ["api:x"]);
    assert_eq!(pid(&rows, "api:x"), pid_x);
    assert_eq!(row(&rows, "api:x")["state"], "healthy");
    assert_eq!(ten.get(&host("x.api"), "/").text(), "hello from api:x\n");
    assert_eq!(ten.get(DOMAIN, "/health").status, 200);
}

#[test]
fn stale_control_socket_is_replaced() {
    for stale in ["plain file", "dead socket"] {
        let b = Builder::new().body(API);
        let data = b.dir().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let sock = data.join("ten.sock");
        match stale {
            "plain file" => std::fs::write(&sock, "left over").expect("stale file"),
            _ => drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind")),
        }
        let ten = b.start();
        assert_eq!(ten.control, sock, "{stale}");
        let meta = std::fs::metadata(&sock).expect("control socket");
        assert!(meta.file_type().is_socket(), "{stale}: {meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{stale}");
        assert_eq!(
            cli_ok(&ten, &["ps"]),
            "INSTANCE  STATE  HEALTH  WEIGHT  PID  UPTIME  RESTARTS  REQUESTS\n(no instances)\n",
            "{stale}"
        );
    }
}

// ---------------------------------------------------------------- help

fn help(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, out, err) = crate::util::ten(args, dir.path());
    assert!(status.success(), "ten {args:?}: {err}");
    assert_eq!(err, "", "ten {args:?}");
    out
}

#[test]
fn help_ten() {
    insta::assert_snapshot!("help_ten", help(&["--help"]));
}

#[test]
fn help_spawn() {
    insta::assert_snapshot!("help_spawn", help(&["spawn", "--help"]));
}

#[test]
fn help_ps() {
    insta::assert_snapshot!("help_ps", help(&["ps", "--help"]));
}

#[test]
fn help_weight() {
    insta::assert_snapshot!("help_weight", help(&["weight", "--help"]));
}

/// Regression (issue 16 review): a spawn checks and claims its name in one step, so concurrent
/// spawns of one `process:id` start exactly one instance, and stopping it leaves none running.
#[test]
fn concurrent_spawns_of_one_name_start_one_instance() {
    let ten = server();
    let results: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let (status, out, err) = ten.cli(&["spawn", "api:x"]);
                    (status.success(), format!("{out}{err}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("spawn thread"))
            .collect()
    });
    let ok: Vec<_> = results.iter().filter(|(ok, _)| *ok).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    for (_, out) in results.iter().filter(|(ok, _)| !*ok) {
        assert!(out.contains("api:x already exists"), "{out}");
    }
    let rows = ps_json(&ten);
    assert_eq!(names(&rows), ["api:x"]);
    let p = pid(&rows, "api:x");
    assert!(alive(p));
    cli_ok(&ten, &["stop", "api:x"]);
    assert!(ps_json(&ten).is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive(p) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(p), "pid {p} still running after stop");
}
