//! SPEC §12 trust: `trusted_proxies` and the client address (X-Forwarded-*), the hardened
//! `admin_loopback_trusted`, API tokens (list, revoke, scopes) and the remote CLI.

use crate::util::{Builder, Resp, Ten, DOMAIN};

fn host() -> String {
    format!("a.api.{DOMAIN}")
}

fn server(settings: &str, plugins: &str) -> Ten {
    let ten = Builder::new()
        .settings(settings)
        .body(&format!(
            "[process.api]\ncommand = \"@APP@\"\nplugins = [{plugins}]\n[instances]\napi = [\"a\"]\n"
        ))
        .start();
    // Each poll as another (trusted-forwarded or not) client, so rate limits do not bite.
    for i in 0..200 {
        let xff = format!("X-Forwarded-For: 198.18.{}.{}\r\n", i / 200, i % 200);
        if get_with(&ten, "/", &xff).status == 200 {
            return ten;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("api:a never answered 200");
}

/// GET `path` on the test app with extra header lines.
fn get_with(ten: &Ten, path: &str, headers: &str) -> Resp {
    ten.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
        host()
    ))
}

/// Regression (issue 18): a client's X-Forwarded-Proto/Host passed through on plain HTTP and
/// its X-Forwarded-For was extended, so it could pick the address ip_filter saw upstream.
#[test]
fn spoofed_forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let ten = server("", "{ kind = \"ip_filter\", deny = [\"6.6.6.6\"] }");
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n";
    let r = get_with(&ten, "/headers", spoof);
    assert_eq!(
        r.status,
        200,
        "the spoofed address is not the client: {}",
        r.text()
    );
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], host(), "{h}");
}

#[test]
fn a_trusted_proxy_is_honoured_and_plugins_key_on_the_right_most_untrusted_address() {
    let ten = server(
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
        "{ kind = \"ip_filter\", deny = [\"192.0.2.66\"] }, \
         { kind = \"rate_limit\", rps = 0.01, burst = 1 }",
    );
    // Its headers are kept, its address appended.
    let r = get_with(
        &ten,
        "/headers",
        "X-Forwarded-For: 1.1.1.1, 10.0.0.5\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer.example\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.5, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-host"], "outer.example", "{h}");
    // ip_filter: 10.0.0.5 is trusted, so 192.0.2.66 is the client; the left-most entry is not.
    let xff = |v: &str| format!("X-Forwarded-For: {v}\r\n");
    let r = get_with(&ten, "/", &xff("1.1.1.2, 192.0.2.66, 10.0.0.5"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        get_with(&ten, "/", &xff("192.0.2.66, 198.51.100.1")).status,
        200
    );
    // rate_limit keys on the same address: one client's burst is not another's.
    assert_eq!(get_with(&ten, "/", &xff("203.0.113.1")).status, 200);
    assert_eq!(get_with(&ten, "/", &xff("203.0.113.1")).status, 429);
    assert_eq!(
        get_with(&ten, "/", &xff("203.0.113.2, 10.9.9.9")).status,
        200
    );
}

/// Regression (review M1): on an `admin_loopback_trusted` listener any Host, Origin and
/// Content-Type passed, so a rebound or cross-site page could spawn instances; and on `[::]`
/// the v4-mapped loopback peer `::ffff:127.0.0.1` was not loopback.
#[test]
fn admin_loopback_trust_refuses_rebinding_cross_site_and_non_json_writes() {
    let ten = Builder::new()
        .settings("admin_listen = \"[::]:0\"\nadmin_loopback_trusted = true")
        .body("[process.api]\ncommand = \"@APP@\"\n")
        .start();
    let port = ten.admin.expect("admin listener").port();
    // Over IPv4 to a dual-stack listener: the peer is ::ffff:127.0.0.1.
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let send = |method: &str, host: &str, extra: &str, body: &str| {
        crate::util::request(
            admin,
            format!(
                "{method} /api/instances HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let local = format!("localhost:{port}");
    let spawn = r#"{"process":"api","id":"csrf"}"#;
    assert_eq!(
        send("GET", &local, "", "").status,
        200,
        "v4-mapped loopback is trusted"
    );
    // The review's repro: a rebound page (foreign Host) gets no free pass.
    let r = send(
        "POST",
        "attacker.example",
        "Origin: https://attacker.example\r\nContent-Type: text/plain\r\n",
        spawn,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = send(
        "POST",
        &local,
        "Origin: https://attacker.example\r\nContent-Type: application/json\r\n",
        spawn,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("cross-origin"), "{}", r.text());
    let r = send(
        "POST",
        &local,
        "Sec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\n",
        spawn,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send("POST", &local, "Content-Type: text/plain\r\n", spawn);
    assert_eq!(r.status, 415, "{}", r.text());
    // Nothing was spawned by the refused requests.
    let list = send("GET", &local, "", "").text();
    assert!(!list.contains("csrf"), "{list}");
    // Same origin, JSON: allowed.
    let same = format!("Origin: http://{local}\r\nContent-Type: application/json\r\n");
    let r = send("POST", &local, &same, spawn);
    assert_eq!(r.status, 201, "{}", r.text());
}

/// A management API request on the proxy's bare domain with a bearer token.
fn api(ten: &Ten, method: &str, path: &str, token: &str, body: &str) -> Resp {
    ten.request(&format!(
        "{method} {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// `ten ARGS` against `ten`'s control socket: (exit code, stdout, stderr).
fn cli(ten: &Ten, args: &[&str]) -> (i32, String, String) {
    let (status, out, err) = ten.cli(args);
    (status.code().unwrap_or(-1), out, err)
}

/// `ten token-gen ARGS`: (token, id).
fn token_gen(ten: &Ten, args: &[&str]) -> (String, i64) {
    let mut all = vec!["token-gen"];
    all.extend_from_slice(args);
    let (code, out, err) = cli(ten, &all);
    assert_eq!(code, 0, "{err}");
    let id = err
        .split("Token id ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token id in {err:?}"));
    (out.trim().to_string(), id)
}

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i["name"].as_str().unwrap_or("").to_string())
        .collect();
    n.sort();
    n
}

fn tokens_server() -> Ten {
    let ten = Builder::new()
        .body(
            "[process.app]\ncommand = \"@APP@\"\n[process.web]\ncommand = \"@APP@\"\n\
             [instances]\napp = [\"u1\", \"u2\"]\nweb = [\"w\"]\n",
        )
        .start();
    ten.wait_status(&format!("u1.app.{DOMAIN}"), "/", 200);
    ten
}

#[test]
fn tokens_are_listed_and_revoked_at_once() {
    let ten = tokens_server();
    let (admin, admin_id) = token_gen(&ten, &["--name", "ci"]);
    let (_other, _) = token_gen(&ten, &[]);
    assert_eq!(api(&ten, "GET", "/api/instances", &admin, "").status, 200);
    let (code, out, err) = cli(&ten, &["token", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&admin) && !out.contains("argon2"), "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rows = list.as_array().expect("list");
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["id"], admin_id);
    assert_eq!(rows[0]["name"], "ci");
    assert!(rows[0]["scope"].is_null());
    assert!(rows[0]["created_ms"].as_u64().is_some(), "{out}");
    assert!(
        rows[0]["last_used_ms"].as_u64().is_some(),
        "used once: {out}"
    );
    assert!(rows[1]["last_used_ms"].is_null(), "never used: {out}");
    let (code, table, _) = cli(&ten, &["token", "list"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("ID  NAME  SCOPE"), "{table}");
    // The token is cached now; revoking it still stops it at once.
    let (code, out, err) = cli(&ten, &["token", "revoke", &admin_id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let r = api(&ten, "GET", "/api/instances", &admin, "");
    assert_eq!(r.status, 401, "{}", r.text());
    let (code, _, err) = cli(&ten, &["token", "revoke", &admin_id.to_string()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("no token with id {admin_id}")),
        "{err}"
    );
    let (code, out, _) = cli(&ten, &["token", "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn a_scoped_token_sees_and_acts_on_its_instance_only() {
    let ten = tokens_server();
    // 0.2's --tenant spelling; and a process-wide scope.
    let (mine, _) = token_gen(&ten, &["--name", "acme", "--tenant", "app:u1"]);
    let (app, _) = token_gen(&ten, &["--scope", "app"]);
    let (code, out, _) = cli(&ten, &["token", "list", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"app:u1\""), "{out}");
    let list = api(&ten, "GET", "/api/instances", &mine, "");
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(names(&list.json()), ["app:u1"]);
    assert_eq!(
        names(&api(&ten, "GET", "/api/instances", &app, "").json()),
        ["app:u1", "app:u2"]
    );
    // Its own instance: restart, weight, logs.
    let r = api(
        &ten,
        "PUT",
        "/api/instances/app:u1/weight",
        &mine,
        r#"{"weight":40}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api(&ten, "POST", "/api/instances/app:u1/restart", &mine, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api(&ten, "GET", "/api/logs?limit=50", &mine, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = r.json();
    assert!(
        lines
            .as_array()
            .expect("lines")
            .iter()
            .all(|l| l["process"] == "app" && l["instance"] == "u1"),
        "only its own lines: {lines}"
    );
    // Everything else: 403, and nothing changed.
    for (method, path, body) in [
        ("POST", "/api/instances/app:u2/restart", ""),
        ("PUT", "/api/instances/web:w/weight", r#"{"weight":1}"#),
        ("DELETE", "/api/instances/app:u1", ""),
        ("POST", "/api/instances", r#"{"process":"app","id":"x"}"#),
        ("POST", "/api/deploy", r#"{"process":"app","version":"v9"}"#),
        ("GET", "/api/logs?process=web", ""),
        ("GET", "/api/logs?id=u2", ""),
        ("GET", "/api/tokens", ""),
        ("DELETE", "/api/tokens/1", ""),
        ("GET", "/api/deploys", ""),
    ] {
        let r = api(&ten, method, path, &mine, body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        assert!(
            r.text().contains("scoped to app:u1"),
            "{method} {path}: {}",
            r.text()
        );
    }
    assert_eq!(
        api(&ten, "POST", "/api/instances/app:u2/restart", &app, "").status,
        200
    );
    let (_, ps, _) = cli(&ten, &["ps", "--json"]);
    assert!(!ps.contains("app:x"), "{ps}");
    let (code, _, _) = cli(&ten, &["token", "list"]);
    assert_eq!(code, 0, "the token list is still there");
}

/// `ten --server URL --token T ARGS` from a directory without a config or data dir.
fn remote(ten: &Ten, url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(crate::util::ten_bin());
    cmd.args(["--server", url, "--token", token])
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("TENEMENT_CONFIG")
        .env_remove("TENEMENT_DATA_DIR")
        .env_remove("TENEMENT_SERVER")
        .env_remove("TENEMENT_TOKEN");
    let _ = ten;
    let (status, out, err) = crate::util::run_bounded(&mut cmd, std::time::Duration::from_secs(60));
    (status.code().unwrap_or(-1), out, err)
}

/// `ps --json` without the fields that tick (uptime).
fn ps_stable(out: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for i in v.as_array_mut().expect("list") {
        if let Some(o) = i.as_object_mut() {
            o.remove("uptime_secs");
        }
    }
    v
}

#[test]
fn the_cli_works_remotely_with_the_same_output_and_exit_codes() {
    let ten = Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .body(
            "[process.app]\ncommand = \"@APP@\"\n[process.web]\ncommand = \"@APP@\"\n\
             [instances]\napp = [\"u1\", \"u2\"]\nweb = [\"w\"]\n",
        )
        .start();
    ten.wait_status(&format!("u1.app.{DOMAIN}"), "/", 200);
    let url = format!("http://{}", ten.admin.expect("admin listener"));
    let (token, _) = token_gen(&ten, &["--name", "remote"]);
    let both = |args: &[&str]| {
        let r = remote(&ten, &url, &token, args);
        let l = cli(&ten, args);
        (r, l)
    };
    // Listing commands: same bytes (minus uptime, which ticks).
    let ((rc, rout, rerr), (lc, lout, _)) = both(&["ps", "--json"]);
    assert_eq!((rc, lc), (0, 0), "{rerr}");
    assert_eq!(ps_stable(&rout), ps_stable(&lout));
    let ((rc, rout, rerr), (_, lout, _)) = both(&["token", "list"]);
    assert_eq!(rc, 0, "{rerr}");
    assert_eq!(rout, lout);
    let ((rc, rout, rerr), (_, lout, _)) = both(&["logs", "app:u1", "--limit", "5"]);
    assert_eq!(rc, 0, "{rerr}");
    assert_eq!(rout, lout);
    // Changes.
    let ((rc, rout, rerr), (lc, lout, _)) = both(&["weight", "app:u1", "40"]);
    assert_eq!((rc, lc), (0, 0), "{rerr}");
    assert_eq!(rout, lout);
    let (rc, rout, rerr) = remote(&ten, &url, &token, &["restart", "app:u2"]);
    assert_eq!(rc, 0, "{rerr}");
    assert!(rout.contains("app:u2"), "{rout}");
    // Errors: same message, same exit code.
    let ((rc, _, rerr), (lc, _, lerr)) = both(&["restart", "app:nope"]);
    assert_eq!((rc, lc), (1, 1));
    assert_eq!(rerr, lerr);
    // A bad token: the server's 401 message, exit 1.
    let (code, _, err) = remote(&ten, &url, "ten_wrong", &["ps"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid token"), "{err}");
    // A scoped token: its part, and the 403 message elsewhere.
    let (scoped, _) = token_gen(&ten, &["--scope", "app:u1"]);
    let (code, out, err) = remote(&ten, &url, &scoped, &["ps", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&ps_stable(&out)), ["app:u1"]);
    let (code, _, err) = remote(&ten, &url, &scoped, &["weight", "web:w", "5"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("forbidden: this token is scoped to app:u1"),
        "{err}"
    );
    // Nothing listens there: exit 1 with the reason.
    let port = crate::util::free_port();
    let (code, _, err) = remote(&ten, &format!("http://127.0.0.1:{port}"), &token, &["ps"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach ten serve"), "{err}");
}

#[test]
fn logs_follow_streams_remotely() {
    let ten = Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .body("[process.api]\ncommand = \"@APP@\"\n[instances]\napi = [\"a\"]\n")
        .start();
    ten.wait_status(&format!("a.api.{DOMAIN}"), "/", 200);
    let url = format!("http://{}", ten.admin.expect("admin listener"));
    let (token, _) = token_gen(&ten, &[]);
    let mut follow = std::process::Command::new(crate::util::ten_bin())
        .args(["--server", &url, "--token", &token, "logs", "-f", "api:a"])
        .env_remove("TENEMENT_DATA_DIR")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ten logs -f");
    let out = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = String::new();
    // Make a line until the follower shows one (it may attach after the first).
    let mut n = 0;
    while !seen.contains("noise 1 from api:a") && std::time::Instant::now() < deadline {
        if n < 20 {
            ten.get(&format!("a.api.{DOMAIN}"), "/noise?lines=1");
            n += 1;
        }
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
            seen.push_str(&l);
            seen.push('\n');
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.contains("noise 1 from api:a"),
        "ten logs -f saw: {seen}"
    );
}

#[test]
fn the_remote_cli_speaks_https_with_a_private_ca() {
    let b = Builder::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(b.dir().join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(b.dir().join("key.pem"), cert.key_pair.serialize_pem()).expect("write key");
    // The management API on the bare domain of the TLS listener: the domain is `localhost`.
    let ten = b
        .raw(
            "[settings]\ndomain = \"localhost\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"@DIR@/data\"\n\
             [settings.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"@DIR@/cert.pem\"\nkey = \"@DIR@/key.pem\"\n",
        )
        .start();
    let https = ten.https.expect("https listener announced");
    let (token, _) = token_gen(&ten, &[]);
    let url = format!("https://localhost:{}", https.port());
    let ca = ten.dir.path().join("cert.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let (code, out, err) = remote(
        &ten,
        &url,
        &token,
        &["--ca-cert", ca, "token", "list", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let (_, local, _) = cli(&ten, &["token", "list", "--json"]);
    assert_eq!(out, local);
    // Without the CA the certificate is not trusted: exit 1, and the reason.
    let (code, _, err) = remote(&ten, &url, &token, &["token", "list"]);
    assert_eq!(code, 1);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// The dashboard in headless Chromium with a scoped token: its instance only, no Deploys or
/// Fleet pages, no Stop, no ten events, and no request the token may not make (no 403).
#[test]
fn the_dashboard_shows_a_scoped_token_only_its_part() {
    use crate::browser::{Driver, Outcome, Page, WAIT};
    use serde_json::json;
    let ten = Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .body(
            "[process.app]\ncommand = \"@APP@\"\n[process.web]\ncommand = \"@APP@\"\n\
             [instances]\napp = [\"u1\", \"u2\"]\nweb = [\"w\"]\n",
        )
        .start();
    ten.wait_status(&format!("u1.app.{DOMAIN}"), "/", 200);
    let (token, _) = token_gen(&ten, &["--scope", "app:u1"]);
    let admin = format!("http://{}/", ten.admin.expect("admin listener"));
    let shots = ten.dir.path().join("shots");
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result: Outcome<Vec<String>> = rt.block_on(async {
        let client = driver.session().await?;
        let mut page = Page::new(client, shots);
        let run = async {
            page.phase("login").await?;
            page.c.goto(&admin).await.map_err(|e| format!("goto: {e}"))?;
            page.fill("#token-input", &token).await?;
            page.click("#token-form button[type=\"submit\"]").await?;
            page.wait_for("#page-overview:not([hidden])").await?;
            let conn = page.text("#conn").await?;
            page.check("the header names the scope", conn.contains("app:u1"), &conn)?;
            for hidden in ["deploys", "fleet"] {
                let shown = page.visible(&format!("#nav a[data-page=\"{hidden}\"]")).await?;
                page.check(&format!("no {hidden} page"), !shown, "")?;
            }
            let events = page.visible("#ov-events-card").await?;
            page.check("no events of ten itself", !events, "")?;
            // Not even by the page's address (the Deploys page holds it).
            page.c
                .goto(&format!("{admin}#/deploys"))
                .await
                .map_err(|e| format!("goto: {e}"))?;
            page.wait_for("#page-overview:not([hidden])").await?;
            let reload = page.visible("#reload-form").await?;
            page.check("no Reload config action", !reload, "")?;
            page.phase("instances").await?;
            page.click("#nav a[data-page=\"instances\"]").await?;
            page.wait(
                "return !!document.querySelector('#inst-rows tr[data-name=\"app:u1\"]');",
                vec![],
                WAIT,
            )
            .await?;
            let rows = page
                .js(
                    "return [...document.querySelectorAll('#inst-rows tr[data-name]')].map((r) => r.dataset.name);",
                    vec![],
                )
                .await?;
            page.check("only its instance is listed", rows == json!(["app:u1"]), &rows.to_string())?;
            let stop = page
                .js("return document.querySelectorAll('#inst-rows button[data-action=\"stop\"]').length;", vec![])
                .await?;
            page.check("no Stop button", stop == json!(0), &stop.to_string())?;
            page.drain_logs().await?;
            let errors: Vec<String> = page
                .console
                .iter()
                .filter(|c| c.level == "SEVERE")
                // The page's first, token-less probe (is this a trusted loopback client?).
                .filter(|c| !(c.text.contains("/api/instances") && c.text.contains("status of 401")))
                .map(|c| c.text.clone())
                .collect();
            page.check("no refused request (403) or other error", errors.is_empty(), &errors.join(" | "))?;
            Ok::<(), String>(())
        };
        let r = tokio::time::timeout(std::time::Duration::from_secs(90), run)
            .await
            .unwrap_or_else(|_| Err("the browser test still ran after 90 s".into()));
        let _ = page.c.clone().close().await;
        r.map(|()| page.checks)
    });
    drop(driver);
    let checks = result.unwrap_or_else(|e| panic!("{e}\nten serve stderr:\n{}", ten.stderr()));
    assert!(checks.len() >= 7, "{checks:?}");
}
