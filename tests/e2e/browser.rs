//! Headless Chromium for the e2e tests, driven over WebDriver from Rust: Debian's `chromium` and
//! `chromium-driver` (`make test-deps`), the `fantoccini` client. [`Driver`] starts
//! `chromedriver` on a free 127.0.0.1 port in its own process group with a temporary profile
//! and kills the group (and anything left using that profile) when dropped, so no browser
//! outlives a test. [`Page`] wraps a session: bounded waits on JavaScript conditions, the
//! browser console and network logs (chromedriver's `goog:loggingPrefs`), full-page
//! screenshots (DevTools `Page.captureScreenshot` through chromedriver), and named checks.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a wait for the page lasts unless it says otherwise.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `chromedriver` (and, once a session is open, its Chromium).
pub struct Driver {
    child: Child,
    pub url: String,
    profile: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver on a free port and waits (bounded) until it accepts connections.
    pub fn start() -> Driver {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "the browser test needs Debian's chromium and chromium-driver: run `make test-deps`"
        );
        let profile = tempfile::Builder::new()
            .prefix("ten-dashboard-chromium-")
            .tempdir()
            .expect("temp profile dir");
        let port = crate::util::free_port();
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--log-path={}",
                    profile.path().join("chromedriver.log").display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            0,
        )
        .spawn()
        .expect("spawn chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr}:\n{}",
                driver.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// Chromium's profile directory (inside the temporary directory this driver removes).
    pub fn user_data_dir(&self) -> PathBuf {
        self.profile.path().join("profile")
    }

    /// The last 40 lines of chromedriver's log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The capabilities of a headless session with the console and network logs on.
    pub fn capabilities(&self) -> serde_json::Map<String, Value> {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,860",
                    format!("--user-data-dir={}", self.user_data_dir().display()),
                ],
                "perfLoggingPrefs": { "enableNetwork": true, "enablePage": false },
            },
            "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
        });
        match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Opens a session (a new Chromium).
    pub async fn session(&self) -> Result<Client, String> {
        let mut b = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        b.capabilities(self.capabilities());
        b.connect(&self.url).await.map_err(|e| {
            format!(
                "new WebDriver session: {e}\nchromedriver log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share the group; then anything still using
        // our profile (a Chromium that left the group), found by its command line.
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        let marker = self.user_data_dir().display().to_string();
        for _ in 0..20 {
            let left = processes_using(&marker);
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: kill(2) of a process started for this test (it runs with our profile).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Pids whose command line mentions `marker`.
pub fn processes_using(marker: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// A chromedriver command fantoccini has no method for: `POST /session/{id}/{path}`.
#[derive(Debug)]
struct Post {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Post {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// A console message: the phase it came in, its level and text.
#[derive(Debug, Clone)]
pub struct Console {
    pub phase: String,
    pub level: String,
    pub text: String,
}

/// One browser session and what it saw.
pub struct Page {
    pub c: Client,
    pub phase: String,
    pub checks: Vec<String>,
    pub console: Vec<Console>,
    /// Every request the browser made (the network log): the URL of the document it was made
    /// for, and its URL.
    pub requests: Vec<(String, String)>,
    /// Every response the page got: the network log's `response` objects.
    pub responses: Vec<Value>,
    pub shots: PathBuf,
}

pub type Outcome<T = ()> = Result<T, String>;

impl Page {
    pub fn new(c: Client, shots: PathBuf) -> Page {
        Page {
            c,
            phase: "start".into(),
            checks: Vec::new(),
            console: Vec::new(),
            requests: Vec::new(),
            responses: Vec::new(),
            shots,
        }
    }

    async fn post(&self, path: &'static str, body: Value) -> Outcome<Value> {
        self.c
            .issue_cmd(Post { path, body })
            .await
            .map_err(|e| format!("{path}: {e}"))
    }

    /// Reads the browser's console and network logs so far (chromedriver hands each entry
    /// out once), tagging console messages with the current phase.
    pub async fn drain_logs(&mut self) -> Outcome {
        let console = self.post("se/log", json!({"type": "browser"})).await?;
        for e in console.as_array().map(Vec::as_slice).unwrap_or_default() {
            self.console.push(Console {
                phase: self.phase.clone(),
                level: e["level"].as_str().unwrap_or_default().to_string(),
                text: e["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        let perf = self.post("se/log", json!({"type": "performance"})).await?;
        for e in perf.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Ok(m) = serde_json::from_str::<Value>(e["message"].as_str().unwrap_or("{}")) else {
                continue;
            };
            let m = &m["message"];
            match m["method"].as_str() {
                Some("Network.requestWillBeSent") => {
                    let p = &m["params"];
                    if let Some(u) = p["request"]["url"].as_str() {
                        let doc = p["documentURL"].as_str().unwrap_or_default();
                        self.requests.push((doc.to_string(), u.to_string()));
                    }
                }
                Some("Network.responseReceived") => {
                    self.responses.push(m["params"]["response"].clone());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts a new phase (console messages so far belong to the previous one).
    pub async fn phase(&mut self, name: &str) -> Outcome {
        self.drain_logs().await?;
        self.phase = name.to_string();
        Ok(())
    }

    /// Records a named check; a failed one ends the run.
    pub fn check(&mut self, name: &str, ok: bool, detail: &str) -> Outcome {
        let line = format!(
            "{}: {name}{}",
            if ok { "ok" } else { "FAILED" },
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        );
        println!("{line}");
        self.checks.push(line);
        if ok {
            Ok(())
        } else {
            Err(format!("check failed: {name}: {detail}"))
        }
    }

    /// Runs `script` (a function body; `arguments[0..]` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Outcome<Value> {
        self.c
            .execute(script, args)
            .await
            .map_err(|e| format!("script failed: {e}\n{script}"))
    }

    /// Waits (bounded by `limit`) until `script` returns true.
    pub async fn wait(&self, script: &str, args: Vec<Value>, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        loop {
            if self.js(script, args.clone()).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("still false after {limit:?}: {script}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an element matching `css` exists.
    pub async fn wait_for(&self, css: &str) -> Outcome {
        self.wait(
            "return document.querySelector(arguments[0]) !== null;",
            vec![json!(css)],
            WAIT,
        )
        .await
        .map_err(|_| format!("no {css} after {WAIT:?}"))
    }

    pub async fn click(&self, css: &str) -> Outcome {
        self.wait_for(css).await?;
        let el = self
            .c
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("find {css}: {e}"))?;
        el.click().await.map_err(|e| format!("click {css}: {e}"))
    }

    /// Replaces the value of the input `css` by typing `text`.
    pub async fn fill(&self, css: &str, text: &str) -> Outcome {
        self.wait_for(css).await?;
        let el = self
            .c
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("find {css}: {e}"))?;
        el.clear().await.map_err(|e| format!("clear {css}: {e}"))?;
        el.send_keys(text)
            .await
            .map_err(|e| format!("type into {css}: {e}"))
    }

    /// The text content of the first element matching `css` ("" if none).
    pub async fn text(&self, css: &str) -> Outcome<String> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                vec![json!(css)],
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Whether the first element matching `css` is rendered (not hidden, has a box).
    pub async fn visible(&self, css: &str) -> Outcome<bool> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]);
                 return !!e && e.getClientRects().length > 0
                     && getComputedStyle(e).visibility !== 'hidden';",
                vec![json!(css)],
            )
            .await?;
        Ok(v == Value::Bool(true))
    }

    /// A full-page PNG of the page as `{shots}/{name}.png` (DevTools through chromedriver).
    pub async fn shot(&self, name: &str) -> Outcome {
        let cdp = |cmd: &str, params: Value| json!({"cmd": cmd, "params": params});
        let metrics = self
            .post("goog/cdp/execute", cdp("Page.getLayoutMetrics", json!({})))
            .await?;
        let size = &metrics["cssContentSize"];
        let (w, h) = (
            size["width"].as_f64().unwrap_or(1280.0).ceil(),
            size["height"].as_f64().unwrap_or(860.0).ceil(),
        );
        let shot = self
            .post(
                "goog/cdp/execute",
                cdp(
                    "Page.captureScreenshot",
                    json!({
                        "format": "png",
                        "captureBeyondViewport": true,
                        "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
                    }),
                ),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| format!("screenshot {name}: {e}"))?;
        std::fs::create_dir_all(&self.shots).map_err(|e| e.to_string())?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("screenshot: {}", path.display());
        Ok(())
    }
}
