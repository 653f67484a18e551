//! Test harness: each test gets its own temp dir and config, runs the real `ten` binary on
//! port 0 with real `ten-testapp` children, and talks raw HTTP/1.1 on 127.0.0.1.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "ten.test";

pub fn ten_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ten")
}

/// `ten-testapp`, a binary of the `tenement-testbins` package (so that `cargo install --path .`
/// installs `ten` only): cargo gives no `CARGO_BIN_EXE_` for another package's binary, so it is
/// found in the target dir this test runs from (`target/debug/deps/e2e-HASH` ->
/// `target/debug/ten-testapp`). `make test` builds it (`cargo test --workspace` builds it for
/// testbins/tests/smoke.rs); a lone `cargo test --test e2e` needs
/// `cargo build -p tenement-testbins` first.
pub fn app_bin() -> &'static str {
    static APP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    APP.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        let app = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from target/PROFILE/deps")
            .join("ten-testapp");
        assert!(
            app.is_file(),
            "{} missing: build it with `cargo build -p tenement-testbins` (`make test` does)",
            app.display()
        );
        app.display().to_string()
    })
}

/// Run `ten` with args to completion (bounded), returning (status, stdout, stderr).
pub fn ten(args: &[&str], cwd: &Path) -> (ExitStatus, String, String) {
    let out = Command::new(ten_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("TENEMENT_CONFIG")
        .env_remove("TENEMENT_DATA_DIR")
        .output()
        .expect("run ten");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a command to completion, stopping it after `limit` (then panicking): (status, stdout,
/// stderr).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let Some(status) = wait_bounded(&mut child, limit) else {
        // Politely first (a stray `ten serve` stops its instances), then for sure.
        signal(child.id(), libc_sig::TERM);
        if wait_bounded(&mut child, Duration::from_secs(15)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "{cmd:?} still running after {limit:?}; stderr so far:\n{}",
            err.join().unwrap_or_default()
        );
    };
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// A running `ten serve`.
pub struct Ten {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub https: Option<SocketAddr>,
    /// The control socket, as announced by `ten: control socket PATH`.
    pub control: PathBuf,
    /// The `admin_listen` address, when the config sets one.
    pub admin: Option<SocketAddr>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr_path: PathBuf,
    /// Extra `ten serve` arguments (kept for `serve_again`).
    pub extra: Vec<String>,
    /// Extra environment of `ten serve` (kept for `serve_again`).
    pub extra_env: Vec<(String, String)>,
}

pub struct Builder {
    settings: String,
    body: String,
    /// A whole config of its own (no generated [settings]).
    raw: Option<String>,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Builder {
    pub fn new() -> Self {
        Builder {
            settings: String::new(),
            body: String::new(),
            raw: None,
            dir: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
        }
    }

    /// Extra `[settings]` lines.
    pub fn settings(mut self, s: &str) -> Self {
        self.settings.push_str(s);
        self.settings.push('\n');
        self
    }

    /// The rest of the config; `@APP@` is the test app's path, `@DIR@` the temp dir.
    pub fn body(mut self, s: &str) -> Self {
        self.body.push_str(s);
        self.body.push('\n');
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A variable in `ten serve`'s own environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Use this whole config text instead (`@APP@`/`@DIR@` still replaced).
    pub fn raw(mut self, text: &str) -> Self {
        self.raw = Some(text.to_string());
        self
    }

    pub fn config_text(&self) -> String {
        let dir = self.dir.path().display().to_string();
        if let Some(raw) = &self.raw {
            return raw.replace("@APP@", app_bin()).replace("@DIR@", &dir);
        }
        let text = format!(
            "[settings]\ndomain = \"{DOMAIN}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"@DIR@/data\"\n\
             drain_timeout = \"5s\"\n{}\n{}",
            self.settings, self.body
        );
        text.replace("@APP@", app_bin()).replace("@DIR@", &dir)
    }

    pub fn start(self) -> Ten {
        self.start_with_args(&[])
    }

    pub fn start_with_args(self, extra: &[&str]) -> Ten {
        let config = self.dir.path().join("tenement.toml");
        std::fs::write(&config, self.config_text()).expect("write config");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut ten = Ten {
            child: None,
            dir: self.dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            https: None,
            control: PathBuf::new(),
            admin: None,
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr_path: PathBuf::new(),
            extra,
            extra_env: self.env,
        };
        ten.launch();
        ten
    }
}

impl Ten {
    /// Start `ten serve` on this dir's config (again); its stderr is appended to `ten.stderr`.
    fn launch(&mut self) {
        let config = self.dir.path().join("tenement.toml");
        self.stderr_path = self.dir.path().join("ten.stderr");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let mut child = Command::new(ten_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(&self.extra)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env(
                "TEN_LOG",
                std::env::var("E2E_TEN_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ten serve");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().expect("lines").push(line);
            }
        });
        let mut addr = None;
        let mut https = None;
        let mut control = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(a) = line.strip_prefix("ten: listening on http://") {
                addr = Some(a.parse().expect("addr"));
            } else if let Some(a) = line.strip_prefix("ten: listening on https://") {
                https = Some(a.parse().expect("addr"));
            } else if let Some(a) = line.strip_prefix("ten: admin listening on http://") {
                admin = Some(a.parse().expect("admin addr"));
            } else if let Some(p) = line.strip_prefix("ten: control socket ") {
                control = Some(PathBuf::from(p));
            } else if line.starts_with("ten: domain") {
                break;
            }
        }
        let (Some(addr), Some(control)) = (addr, control) else {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            panic!("ten serve did not start; stderr:\n{err}");
        };
        self.child = Some(child);
        self.addr = addr;
        self.https = https;
        self.control = control;
        self.admin = admin;
        self.stdout = lines;
    }

    /// Start `ten serve` again on the same dir and config (after `sigterm` or `kill9`).
    pub fn serve_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.launch();
    }

    /// `kill -9` ten serve (its instances are left behind, as after a crash).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Ten {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The data dir of the generated config (`@DIR@/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run a client command against this server: `ten --data-dir <dir>/data ARGS`, bounded.
    pub fn cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let mut cmd = Command::new(ten_bin());
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("TENEMENT_CONFIG")
            .env_remove("TENEMENT_DATA_DIR");
        run_bounded(&mut cmd, Duration::from_secs(120))
    }

    /// One raw HTTP request over the control socket (no token needed there).
    pub fn control_request(&self, raw: &str) -> Resp {
        unix_request(&self.control, raw.as_bytes())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// GET `path` with `Host: host`.
    pub fn get(&self, host: &str, path: &str) -> Resp {
        self.request(&format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
    }

    pub fn request(&self, raw: &str) -> Resp {
        request(self.addr, raw.as_bytes())
    }

    /// Poll `host` + `path` until it answers `status` (bounded: 20 s).
    pub fn wait_status(&self, host: &str, path: &str, status: u16) -> Resp {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get(host, path);
            if r.status == status || Instant::now() > deadline {
                assert_eq!(
                    r.status,
                    status,
                    "waiting for {host}{path}: {}\n{}",
                    r.text(),
                    self.stderr()
                );
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc_sig::TERM);
        wait_bounded(&mut child, Duration::from_secs(30))
            .expect("ten serve did not exit after SIGTERM")
    }
}

impl Drop for Ten {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc_sig::TERM);
            if wait_bounded(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub mod libc_sig {
    pub const TERM: &str = "TERM";
    pub const KILL: &str = "KILL";
    pub const INT: &str = "INT";
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A connection `ten` has accepted and counts as open: one keep-alive request for `host`
/// answered, then left idle. (A connection merely connected may still be in the backlog, and
/// with several proxy workers the order in which queued connections are counted is not the
/// order they connected in.)
pub fn accepted_idle(addr: SocketAddr, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("write");
    let resp = read_response(&mut BufReader::new(&mut s));
    assert_eq!(resp.status, 200, "{}", resp.text());
    s
}

/// One request on a new connection; reads one response.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(raw).expect("write");
    read_response(&mut BufReader::new(s))
}

pub fn read_response<R: BufRead>(r: &mut R) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 101 || status == 204 || status == 304 {
        return resp;
    }
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        // A broken upstream may cut the body short: keep what arrived.
        let _ = r.take(len as u64).read_to_end(&mut resp.body);
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .expect("chunk size");
            if n == 0 {
                let mut end = String::new();
                let _ = r.read_line(&mut end);
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = r.read_to_end(&mut resp.body);
    }
    resp
}

/// One request over a unix socket; reads one response.
pub fn unix_request(path: &Path, raw: &[u8]) -> Resp {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(raw).expect("write");
    read_response(&mut BufReader::new(s))
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A systemd notification socket (`$NOTIFY_SOCKET`) bound by a test: what ten tells systemd.
pub struct NotifyListener(std::os::unix::net::UnixDatagram);

impl NotifyListener {
    pub fn bind(path: &Path) -> Self {
        let sock = std::os::unix::net::UnixDatagram::bind(path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        NotifyListener(sock)
    }

    /// The next notification (within 30 s).
    pub fn recv(&self) -> String {
        let mut buf = [0u8; 256];
        let n = self.0.recv(&mut buf).expect("a notification within 30s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// The pid of instance `name` once it is healthy (bounded wait).
pub fn healthy_pid(ten: &Ten, name: &str) -> u64 {
    let v = crate::supervision::wait_instance(ten, name, "healthy with a pid", |v| {
        v["state"] == "healthy" && v["pid"].as_u64().is_some()
    });
    v["pid"].as_u64().expect("pid")
}

/// Whether the server closed `s` (EOF or reset) within `limit`; answered bytes are drained.
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}
