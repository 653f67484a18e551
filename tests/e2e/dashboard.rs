//! The dashboard (issue 11): its assets over HTTP on both transports, and the page itself in
//! headless Chromium (tests/browser/dashboard.test.mjs, playwright-core) against a real
//! `ten serve` with two instances. `make deps` installs Chromium and the npm package.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{run_bounded, Builder, Resp, Ten, DOMAIN};

const WEB: &str = "[process.web]\ncommand = \"@APP@\"\nhealth = \"/health\"\n\
                   [instances]\nweb = [\"a\", \"b\"]\n";

fn server() -> Ten {
    let ten = Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .body(WEB)
        .start();
    assert!(ten.admin.is_some(), "admin_listen not announced");
    ten
}

fn get_admin(ten: &Ten, path: &str) -> Resp {
    let admin = ten.admin.expect("admin_listen");
    crate::util::request(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Whether `text` holds something shaped like an API token (`ten_` + 64 hex characters).
fn has_token(text: &str) -> bool {
    text.match_indices("ten_").any(|(i, _)| {
        text[i + 4..]
            .chars()
            .take(64)
            .filter(|c| c.is_ascii_hexdigit())
            .count()
            == 64
    })
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn dashboard_assets_are_served_on_the_bare_domain_and_admin_listen() {
    let ten = server();
    for (transport, get) in [
        (
            "bare domain",
            Box::new(|p: &str| ten.get(DOMAIN, p)) as Box<dyn Fn(&str) -> Resp>,
        ),
        ("admin_listen", Box::new(|p: &str| get_admin(&ten, p))),
    ] {
        for (path, ct) in [
            ("/", "text/html; charset=utf-8"),
            ("/index.html", "text/html; charset=utf-8"),
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/style.css", "text/css; charset=utf-8"),
        ] {
            let r = get(path);
            assert_eq!(r.status, 200, "{transport} {path}: {}", r.text());
            assert_eq!(r.header("content-type"), Some(ct), "{transport} {path}");
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(r.header("cache-control"), Some("no-cache"));
            let csp = r.header("content-security-policy").unwrap_or_default();
            assert!(
                csp.contains("script-src 'self'"),
                "{transport} {path}: {csp}"
            );
            assert!(!has_token(&r.text()), "a token in {path}?");
        }
        // No page without a token holds anything secret, and nothing else is served.
        for path in [
            "/assets/unknown.js",
            "/assets/../Cargo.toml",
            "/assets/../../Cargo.toml",
            "/assets/%2e%2e/Cargo.toml",
            "/assets/",
        ] {
            let r = get(path);
            assert_eq!(r.status, 404, "{transport} {path}: {}", r.text());
            assert!(!r.text().contains("[package]"), "{transport} {path}");
        }
        assert_eq!(get("/api/instances").status, 401, "{transport}");
    }
}

#[test]
fn dashboard_in_headless_chromium() {
    let node_modules = repo().join("tests/browser/node_modules/playwright-core");
    assert!(
        node_modules.is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and playwright-core: run `make deps` \
         (apt chromium; npm ci in tests/browser)"
    );
    let ten = server();
    let (status, out, err) = ten.cli(&["token-gen"]);
    assert!(status.success(), "token-gen: {out}{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("ten_"), "token: {token:?}");
    let admin = ten.admin.expect("admin_listen");
    let shots: PathBuf = repo().join("target/dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("tests/browser/dashboard.test.mjs"))
        .arg(format!("http://{admin}"))
        .arg(&token)
        .arg(&shots)
        .arg(ten.addr.to_string())
        .arg(DOMAIN)
        .current_dir(repo());
    let (status, out, err) = run_bounded(&mut cmd, Duration::from_secs(120));
    let report = format!(
        "node exited {status}\nstdout:\n{out}\nstderr:\n{err}\nten serve stderr:\n{}",
        ten.stderr()
    );
    assert!(status.success(), "{report}");
    let summary = out
        .lines()
        .rev()
        .find(|l| l.starts_with("dashboard: "))
        .unwrap_or_default();
    let passed: usize = summary
        .strip_prefix("dashboard: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        summary.ends_with(", 0 failed") && passed >= 15,
        "summary {summary:?}\n{report}"
    );
    for needed in [
        "ok: a wrong token shows the 401 message",
        "ok: the instance list shows web:a and web:b",
        "ok: restart resets the uptime and counts the restart",
        "ok: the new log line arrives live",
        "ok: no console errors on any page",
    ] {
        assert!(out.contains(needed), "missing {needed:?}\n{report}");
    }
    for page in [
        "token-rejected",
        "overview",
        "instances",
        "logs",
        "deploys",
        "fleet",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "no screenshot {}",
            png.display()
        );
    }
}

#[test]
fn admin_listen_trusts_loopback_only_when_turned_on() {
    let get = |addr, host: &str| {
        crate::util::request(
            addr,
            format!("GET /api/instances HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let ten = crate::util::Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"\nadmin_loopback_trusted = true")
        .start();
    let admin = ten.admin.expect("admin listener");
    assert_eq!(
        get(admin, "anything").status,
        200,
        "loopback client on admin_listen, no token"
    );
    assert_eq!(
        get(ten.addr, crate::util::DOMAIN).status,
        401,
        "the public listener still needs a token"
    );
    let off = crate::util::Builder::new()
        .settings("admin_listen = \"127.0.0.1:0\"")
        .start();
    assert_eq!(
        get(off.admin.expect("admin listener"), "anything").status,
        401,
        "off by default"
    );
}
