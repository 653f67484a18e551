//! The dashboard (issue 11): its assets over HTTP on both transports, and the page itself in
//! headless Chromium driven over WebDriver from Rust (crate::browser: Debian's chromium and
//! chromium-driver, which `make test-deps` installs; no Node) against a real `ten serve` with
//! two instances.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::{Console, Driver, Outcome, Page, WAIT};
use crate::util::{Builder, Resp, Ten, DOMAIN};

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

/// The dashboard in headless Chromium (WebDriver from Rust, crate::browser) against a real
/// `ten serve` with `web:a` and `web:b`: every page, with assertions on what each shows, and a
/// full-page screenshot of each in target/dashboard-screenshots/.
#[test]
fn dashboard_in_headless_chromium() {
    let ten = server();
    let (status, out, err) = ten.cli(&["token-gen"]);
    assert!(status.success(), "token-gen: {out}{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("ten_"), "token: {token:?}");
    let admin = ten.admin.expect("admin_listen");
    let shots: PathBuf = repo().join("target/dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (checks, result) = rt.block_on(async {
        let client = match driver.session().await {
            Ok(c) => c,
            Err(e) => return (Vec::new(), Err(e)),
        };
        let mut page = Page::new(client, shots.clone());
        let run = Run {
            admin: format!("http://{admin}"),
            token: &token,
            proxy: ten.addr,
            config: ten.dir.path().join("tenement.toml"),
        };
        let result = match tokio::time::timeout(Duration::from_secs(150), run.all(&mut page)).await
        {
            Ok(r) => r,
            Err(_) => Err("the browser test still ran after 150 s".to_string()),
        };
        if result.is_err() {
            let _ = page.shot("failure").await;
        }
        let _ = page.c.clone().close().await;
        (page.checks, result)
    });
    let report = format!(
        "{}\nchromedriver log:\n{}\nten serve stderr:\n{}",
        checks.join("\n"),
        driver.log(),
        ten.stderr()
    );
    let profile = driver.user_data_dir().display().to_string();
    drop(driver);
    assert!(
        crate::browser::processes_using(&profile).is_empty(),
        "a Chromium outlived the test"
    );
    if let Err(e) = result {
        panic!("{e}\n{report}");
    }
    assert!(checks.len() >= 20, "{report}");
    for page in [
        "token-rejected",
        "overview",
        "instances",
        "instances-confirm",
        "logs",
        "deploys",
        "reload-refused",
        "reload",
        "fleet",
        "overview-after",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 1000,
            "no screenshot {}",
            png.display()
        );
    }
}

/// What the browser test needs to know about the server.
struct Run<'a> {
    /// The admin_listen base URL (`http://127.0.0.1:PORT`).
    admin: String,
    token: &'a str,
    /// The proxy listener (requests with `Host: *.{DOMAIN}`).
    proxy: SocketAddr,
    /// The config file `ten serve` was started with (the reload button re-reads it).
    config: PathBuf,
}

/// An instance row of the Instances page: state, uptime (s), restarts.
async fn instance_row(page: &Page, name: &str) -> Outcome<(String, f64, f64)> {
    let v = page
        .js(
            "const tr = document.querySelector(`#inst-rows tr[data-name=\"${arguments[0]}\"]`);
             if (!tr) return null;
             const cell = (f) => tr.querySelector(`[data-field=\"${f}\"]`);
             return [tr.dataset.state, Number(cell('uptime').dataset.secs || -1),
                     Number(cell('restarts').textContent)];",
            vec![json!(name)],
        )
        .await?;
    Ok((
        v[0].as_str().unwrap_or_default().to_string(),
        v[1].as_f64().unwrap_or(-1.0),
        v[2].as_f64().unwrap_or(-1.0),
    ))
}

/// Failed loads the page makes on purpose: the wrong token's 401, the refused reload's 400, and
/// the fleet routes' 404 or 409 while fleet routing is off (the Fleet page shows that message).
/// Anything else fails.
fn expected(c: &Console) -> bool {
    (c.phase == "wrong-token" && c.text.contains("status of 401"))
        || (c.phase == "reload"
            && c.text.contains("/api/reload")
            && c.text.contains("status of 400"))
        || (c.phase == "fleet"
            && (c.text.contains("status of 404") || c.text.contains("status of 409"))
            && (c.text.contains("/api/servers") || c.text.contains("/api/tenants")))
}

const LOG_MARKER: &str = "noise 1 from web:b";

impl Run<'_> {
    /// A GET through ten's proxy with `Host: {host}`.
    fn proxy_get(&self, host: &str, path: &str) -> Resp {
        crate::util::request(
            self.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    async fn go(&self, page: &mut Page, name: &str) -> Outcome {
        page.phase(name).await?;
        page.click(&format!("#nav a[data-page=\"{name}\"]")).await?;
        page.wait_for(&format!("#page-{name}:not([hidden])")).await
    }

    async fn all(&self, page: &mut Page) -> Outcome {
        self.wrong_token(page).await?;
        self.login(page).await?;
        self.overview(page).await?;
        self.instances(page).await?;
        self.logs(page).await?;
        self.deploys(page).await?;
        self.reload(page).await?;
        self.fleet(page).await?;
        self.finally(page).await
    }

    /// A wrong token: the 401 message, and the token form stays.
    async fn wrong_token(&self, page: &mut Page) -> Outcome {
        // What the browser did before our page (its own start page) is not the dashboard's.
        page.drain_logs().await?;
        page.requests.clear();
        page.console.clear();
        page.phase("wrong-token").await?;
        let url = format!("{}/", self.admin);
        page.c
            .goto(&url)
            .await
            .map_err(|e| format!("goto {url}: {e}"))?;
        page.drain_logs().await?;
        let doc = page
            .responses
            .iter()
            .find(|r| r["url"] == url.as_str())
            .cloned()
            .unwrap_or_default();
        let csp = doc["headers"]
            .as_object()
            .and_then(|h| {
                h.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-security-policy"))
            })
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_string();
        page.check(
            "the page loads with its CSP",
            doc["status"] == 200 && csp.contains("script-src 'self'"),
            &format!("status {}, CSP {csp:?}", doc["status"]),
        )?;
        page.wait_for("#auth:not([hidden])").await?;
        page.fill("#token-input", &format!("ten_{}", "0".repeat(64)))
            .await?;
        page.click("#token-form button[type=\"submit\"]").await?;
        page.wait(
            "return /token rejected/.test(document.getElementById('banner').textContent);",
            vec![],
            WAIT,
        )
        .await?;
        let banner = page.text("#banner").await?;
        page.check(
            "a wrong token shows the 401 message",
            banner.contains("token rejected: create one with `ten token-gen` on the server"),
            banner.trim(),
        )?;
        let form = page.visible("#token-input").await?;
        page.check("the token form stays for another try", form, "")?;
        page.shot("token-rejected").await
    }

    /// The right token opens the dashboard and is kept.
    async fn login(&self, page: &mut Page) -> Outcome {
        page.phase("login").await?;
        page.fill("#token-input", self.token).await?;
        page.click("#token-form button[type=\"submit\"]").await?;
        page.wait_for("#page-overview:not([hidden])").await?;
        let conn = page.text("#conn").await?;
        page.check(
            "the right token opens the dashboard",
            conn.contains("connected"),
            &conn,
        )?;
        let kept = page
            .js("return localStorage.getItem('tenement.token');", vec![])
            .await?;
        page.check(
            "the token is kept in the browser",
            kept == json!(self.token),
            "",
        )
    }

    /// Overview: counts, and a live chart once traffic flows between two scrapes.
    async fn overview(&self, page: &mut Page) -> Outcome {
        page.phase("overview").await?;
        page.wait(
            "return document.getElementById('ov-healthy').textContent === '2';",
            vec![],
            WAIT,
        )
        .await?;
        let proxy = self.proxy;
        let traffic = std::thread::spawn(move || {
            for _ in 0..60 {
                let _ = std::panic::catch_unwind(|| {
                    crate::util::request(
                        proxy,
                        format!(
                            "GET / HTTP/1.1\r\nHost: web.{DOMAIN}\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                });
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let charted = page
            .wait(
                "const c = document.querySelector('.chart[data-process=\"web\"]');
                 return !!c && !!c.querySelector('path.rps')
                     && /[1-9]/.test(c.querySelector('.chart-title .muted').textContent.split('req/s')[0]);",
                vec![],
                Duration::from_secs(30),
            )
            .await;
        let _ = traffic.join();
        charted?;
        let title = page
            .text(".chart[data-process=\"web\"] .chart-title")
            .await?;
        page.check(
            "overview charts requests/s and p99 of process web",
            title.contains("req/s · p99 "),
            &title,
        )?;
        let unhealthy = page.text("#ov-unhealthy").await?;
        page.check(
            "overview counts 2 healthy, 0 not healthy",
            unhealthy == "0",
            &unhealthy,
        )?;
        page.wait_for("#ov-events tr td.mono").await?;
        let events = page
            .js(
                "return document.querySelectorAll('#ov-events tr').length;",
                vec![],
            )
            .await?;
        page.check(
            "overview lists recent ten events",
            events.as_u64().unwrap_or(0) > 0,
            &events.to_string(),
        )?;
        page.shot("overview").await
    }

    /// Instances: both listed; restart one through the confirmation dialog, its uptime resets.
    async fn instances(&self, page: &mut Page) -> Outcome {
        self.go(page, "instances").await?;
        page.wait_for("#inst-rows tr[data-name=\"web:a\"]").await?;
        page.wait_for("#inst-rows tr[data-name=\"web:b\"]").await?;
        let names = page
            .js(
                "return [...document.querySelectorAll('#inst-rows tr[data-name]')].map((t) => t.dataset.name);",
                vec![],
            )
            .await?;
        let names: Vec<&str> = names
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        page.check(
            "the instance list shows web:a and web:b",
            names.contains(&"web:a") && names.contains(&"web:b"),
            &names.join(", "),
        )?;
        page.wait(
            "const c = document.querySelector('#inst-rows tr[data-name=\"web:a\"] [data-field=\"uptime\"]');
             return !!c && Number(c.dataset.secs) >= 3;",
            vec![],
            Duration::from_secs(30),
        )
        .await?;
        let (_, up_before, restarts_before) = instance_row(page, "web:a").await?;
        page.shot("instances").await?;
        page.click("#inst-rows tr[data-name=\"web:a\"] button[data-action=\"restart\"]")
            .await?;
        page.wait_for("dialog#confirm[open]").await?;
        let title = page.text("#confirm-title").await?;
        page.check(
            "restart asks for confirmation in a dialog",
            title.contains("Restart web:a"),
            &title,
        )?;
        page.shot("instances-confirm").await?;
        page.click("#confirm-ok").await?;
        page.wait(
            "const tr = document.querySelector('#inst-rows tr[data-name=\"web:a\"]');
             if (!tr || tr.dataset.state !== 'healthy') return false;
             const secs = Number(tr.querySelector('[data-field=\"uptime\"]').dataset.secs);
             const restarts = Number(tr.querySelector('[data-field=\"restarts\"]').textContent);
             return secs < arguments[0] && restarts > arguments[1];",
            vec![json!(up_before), json!(restarts_before)],
            Duration::from_secs(30),
        )
        .await?;
        let (_, up_after, restarts_after) = instance_row(page, "web:a").await?;
        page.check(
            "restart resets the uptime and counts the restart",
            up_after < up_before && restarts_after == restarts_before + 1.0,
            &format!(
                "uptime {up_before}s -> {up_after}s, restarts {restarts_before} -> {restarts_after}"
            ),
        )
    }

    async fn has_marker(page: &Page) -> Outcome<bool> {
        let v = page
            .js(
                "return [...document.querySelectorAll('#log-lines .log-line .msg')]
                     .some((e) => e.textContent === arguments[0]);",
                vec![json!(LOG_MARKER)],
            )
            .await?;
        Ok(v == Value::Bool(true))
    }

    /// Search `text` on the Logs page; true when the marker line is among the results.
    async fn search(&self, page: &mut Page, text: &str) -> Outcome<(bool, String)> {
        page.fill("#log-search", text).await?;
        page.click("#log-filters button[type=\"submit\"]").await?;
        page.wait(
            "return document.getElementById('log-mode').textContent.startsWith('search: ');",
            vec![],
            WAIT,
        )
        .await?;
        let found = Self::has_marker(page).await?;
        Ok((found, page.text("#log-mode").await?))
    }

    /// Logs: a new line arrives live over SSE; full-text search finds it, by a word's start too.
    async fn logs(&self, page: &mut Page) -> Outcome {
        self.go(page, "logs").await?;
        let live = "return document.getElementById('log-mode').textContent === 'live';";
        page.wait(live, vec![], WAIT).await?;
        let before = Self::has_marker(page).await?;
        page.check(
            "the log line is not there before it is written",
            !before,
            "",
        )?;
        let noise = self.proxy_get(&format!("b.web.{DOMAIN}"), "/noise?lines=1");
        page.check(
            "web:b wrote a line",
            noise.status == 200,
            &format!("{} {}", noise.status, noise.text().trim()),
        )?;
        page.wait(
            "return [...document.querySelectorAll('#log-lines .log-line .msg')]
                 .some((e) => e.textContent === arguments[0]);",
            vec![json!(LOG_MARKER)],
            Duration::from_secs(15),
        )
        .await?;
        let arrived = Self::has_marker(page).await?;
        page.check("the new log line arrives live", arrived, "")?;
        page.shot("logs").await?;
        let (found, mode) = self.search(page, "noise").await?;
        page.check("full-text search finds the line", found, &mode)?;
        let (found, mode) = self.search(page, "nois").await?;
        page.check("search by the start of a word finds the line", found, &mode)?;
        page.click("#log-live").await?;
        page.wait(live, vec![], WAIT).await
    }

    /// Deploys: deploy from the page, see it in the history.
    async fn deploys(&self, page: &mut Page) -> Outcome {
        self.go(page, "deploys").await?;
        page.fill("#deploy-form input[name=\"process\"]", "web")
            .await?;
        page.fill("#deploy-form input[name=\"version\"]", "v2")
            .await?;
        page.fill("#deploy-form input[name=\"weight\"]", "0")
            .await?;
        page.click("#deploy-form button[type=\"submit\"]").await?;
        page.wait(
            "return /^(deployed|failed)/.test(document.querySelector('#deploy-form .result').textContent);",
            vec![],
            Duration::from_secs(30),
        )
        .await?;
        let deployed = page.text("#deploy-form .result").await?;
        page.check(
            "deploy from the page",
            deployed.starts_with("deployed web:v2"),
            &deployed,
        )?;
        let listed = page
            .wait(
                "return [...document.querySelectorAll('#deploy-rows td')].some((td) => td.textContent === 'deploy');",
                vec![],
                WAIT,
            )
            .await;
        page.check("the deploy is in the history", listed.is_ok(), "")?;
        page.shot("deploys").await
    }

    /// Click "Reload config" and wait for its result line.
    async fn reload_click(&self, page: &mut Page) -> Outcome<String> {
        page.click("#reload-form button[type=\"submit\"]").await?;
        page.wait(
            "return /^(reloaded|failed)/.test(document.querySelector('#reload-form .result').textContent);",
            vec![],
            Duration::from_secs(30),
        )
        .await?;
        page.text("#reload-form .result").await
    }

    /// The reload button (issue 20): an invalid file shows every error and changes nothing; a
    /// valid one shows its change lines and is live.
    async fn reload(&self, page: &mut Page) -> Outcome {
        page.phase("reload").await?;
        let original = std::fs::read_to_string(&self.config).map_err(|e| e.to_string())?;
        let invalid = original.replace(
            "[settings]\n",
            "[settings]\nbogus_key = 1\nmax_body = \"lots\"\n",
        );
        std::fs::write(&self.config, invalid).map_err(|e| e.to_string())?;
        let refused = self.reload_click(page).await?;
        let lines = page.text("#reload-form .reload-lines").await?;
        page.check(
            "an invalid config is refused with every error",
            refused.starts_with("failed: refused, nothing changed: 2 error(s)")
                && lines.contains("bogus_key")
                && lines.contains("max_body"),
            &format!("{refused} / {lines}"),
        )?;
        page.shot("reload-refused").await?;
        let routed = format!("{original}\n[routes]\n\"reload.test\" = \"web\"\n");
        std::fs::write(&self.config, routed).map_err(|e| e.to_string())?;
        let applied = self.reload_click(page).await?;
        let lines = page.text("#reload-form .reload-lines").await?;
        page.check(
            "a valid config is applied and its changes listed",
            applied == "reloaded: 1 change(s) applied"
                && lines.contains("route + reload.test -> web"),
            &format!("{applied} / {lines}"),
        )?;
        let r = self.proxy_get("reload.test", "/");
        page.check("the reloaded route answers", r.status == 200, &r.text())?;
        page.shot("reload").await
    }

    /// Fleet: servers and tenants, or the message that fleet routing is off.
    async fn fleet(&self, page: &mut Page) -> Outcome {
        self.go(page, "fleet").await?;
        let answered = page
            .wait(
                "return !document.getElementById('fleet-off').hidden
                     || !!document.querySelector('#fleet-servers tr');",
                vec![],
                WAIT,
            )
            .await;
        let detail = if page.visible("#fleet-off").await? {
            page.text("#fleet-off").await?.trim().to_string()
        } else {
            "fleet on".to_string()
        };
        page.check("the fleet page answers", answered.is_ok(), &detail)?;
        page.shot("fleet").await
    }

    /// Back to the overview (every page visited), then the console and the network.
    async fn finally(&self, page: &mut Page) -> Outcome {
        self.go(page, "overview").await?;
        page.wait(
            "return document.querySelectorAll('.chart[data-process=\"web\"] path.rps').length > 0;",
            vec![],
            WAIT,
        )
        .await?;
        // One more scrape: the charts keep their history across pages.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        page.shot("overview-after").await?;
        page.drain_logs().await?;
        // The requests the dashboard made (the browser's own pages are not its business).
        let origin = format!("{}/", self.admin);
        let ours: Vec<&String> = page
            .requests
            .iter()
            .filter(|(doc, _)| doc.starts_with(&origin))
            .map(|(_, url)| url)
            .collect();
        let foreign: Vec<String> = ours
            .iter()
            .filter(|u| !u.starts_with(&origin) && !u.starts_with("data:"))
            .map(|u| u.to_string())
            .collect();
        page.check(
            "the network log saw the page's API calls",
            ours.iter().any(|u| u.contains("/api/instances")),
            &format!("{} requests", ours.len()),
        )?;
        page.check(
            "no request leaves the server",
            foreign.is_empty(),
            &foreign.join(" "),
        )?;
        // The console log works: it has the wrong token's 401 (an expected error).
        page.check(
            "the console log saw the wrong token's 401",
            page.console
                .iter()
                .any(|c| c.phase == "wrong-token" && c.level == "SEVERE" && expected(c)),
            &format!("{} console messages", page.console.len()),
        )?;
        let unexpected: Vec<String> = page
            .console
            .iter()
            .filter(|c| c.level == "SEVERE" && !expected(c))
            .map(|c| format!("[{}] {}", c.phase, c.text))
            .collect();
        page.check(
            "no console errors on any page",
            unexpected.is_empty(),
            &unexpected.join(" | "),
        )
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
        get(admin, &format!("127.0.0.1:{}", admin.port())).status,
        200,
        "loopback client on admin_listen, no token"
    );
    // Only with a loopback Host (review M1: DNS rebinding); tests/e2e/trust.rs has the rest.
    assert_eq!(get(admin, "anything").status, 401);
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
