//! ten-testapp: the real child process that the end-to-end tests and the demo
//! run behind `ten`. A small thread-per-connection HTTP/1.1 server with
//! keep-alive, SSE, WebSocket echo and a handful of misbehaviour routes.

use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

mod h2c;

use base64::Engine as _;
use sha1::{Digest, Sha1};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_BODY: usize = 64 << 20;
const MAX_LINE: u64 = 16 << 10;
const MAX_HEADERS: usize = 200;
const TEXT: &str = "text/plain";
const USAGE: &str = "usage: ten-testapp [--port N | --socket PATH] [--name NAME] \
[--startup-delay-ms N] [--ignore-sigterm] [--spawn-child] [--fail-health] [--h2c] [--tick-ms N]
env: SOCKET_PATH (unix socket), PORT (tcp on 127.0.0.1), TEN_PROCESS + TEN_INSTANCE (name)";

/// Writes one line to stdout and flushes; errors (closed pipe) are ignored.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn complain(line: &str) {
    let _ = writeln!(io::stderr().lock(), "ten-testapp: {line}");
}

// ---------------------------------------------------------------- startup

enum Listen {
    Tcp(u16),
    Unix(PathBuf),
}

#[derive(Default)]
struct Config {
    name: Option<String>,
    listen: Option<Listen>,
    startup_delay_ms: u64,
    ignore_sigterm: bool,
    spawn_child: bool,
    fail_health: bool,
    /// Serve HTTP/1.1 and h2c (prior knowledge) through hyper instead (see h2c.rs).
    h2c: bool,
    /// `--tick-ms N`: print `tick 1`, `tick 2`, ... on stdout every N ms (a steady stream of
    /// numbered lines: a test sees a lost or doubled line as a gap or a repeat).
    tick_ms: Option<u64>,
}

fn num_arg<T: FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid {what}: {s:?}"))
}

/// Parses flags; `--flag value` and `--flag=value` are both accepted.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    const VALUED: [&str; 5] = [
        "--port",
        "--socket",
        "--name",
        "--startup-delay-ms",
        "--tick-ms",
    ];
    const SWITCHES: [&str; 4] = [
        "--ignore-sigterm",
        "--spawn-child",
        "--fail-health",
        "--h2c",
    ];
    let mut cfg = Config::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let value = if VALUED.contains(&flag) {
            let value = inline.or_else(|| args.next());
            value.ok_or_else(|| format!("{flag} needs a value"))?
        } else if SWITCHES.contains(&flag) && inline.is_none() {
            String::new()
        } else {
            return Err(format!("unknown argument {arg:?}"));
        };
        match flag {
            "--port" => cfg.listen = Some(Listen::Tcp(num_arg("port", &value)?)),
            "--socket" => cfg.listen = Some(Listen::Unix(value.into())),
            "--name" => cfg.name = Some(value),
            "--startup-delay-ms" => cfg.startup_delay_ms = num_arg("delay", &value)?,
            "--ignore-sigterm" => cfg.ignore_sigterm = true,
            "--spawn-child" => cfg.spawn_child = true,
            "--fail-health" => cfg.fail_health = true,
            "--h2c" => cfg.h2c = true,
            "--tick-ms" => cfg.tick_ms = Some(num_arg("tick", &value)?),
            _ => {}
        }
    }
    if cfg.listen.is_none() {
        cfg.listen = Some(
            match std::env::var_os("SOCKET_PATH").filter(|p| !p.is_empty()) {
                Some(path) => Listen::Unix(path.into()),
                None => match std::env::var("PORT") {
                    Ok(p) if !p.is_empty() => Listen::Tcp(num_arg("PORT", &p)?),
                    _ => Listen::Tcp(0),
                },
            },
        );
    }
    if cfg.name.is_none() {
        cfg.name = Some(
            match (std::env::var("TEN_PROCESS"), std::env::var("TEN_INSTANCE")) {
                (Ok(p), Ok(i)) => format!("{p}:{i}"),
                _ => "testapp".to_string(),
            },
        );
    }
    Ok(cfg)
}

/// Ignores SIGTERM, or blocks it (before any thread exists, so every thread
/// inherits the mask) and has one thread `sigwait` for it and exit 0.
fn setup_signals(name: &str, ignore: bool) -> Result<(), String> {
    use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
    if ignore {
        // SAFETY: SIG_IGN installs no handler code, so nothing can run unsafely.
        unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(|e| e.to_string())?;
    let name = name.to_string();
    let waiter = move || loop {
        match set.wait() {
            Ok(Signal::SIGTERM) => {
                say(&format!("ten-testapp {name} got SIGTERM, exiting"));
                std::process::exit(0);
            }
            Ok(_) => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    };
    thread::Builder::new()
        .spawn(waiter)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    let cfg = match parse_args(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            complain(&format!("{msg}\n{USAGE}"));
            std::process::exit(2);
        }
    };
    if let Err(msg) = run(cfg) {
        complain(&msg);
        std::process::exit(1);
    }
}

fn run(cfg: Config) -> Result<(), String> {
    let name = cfg.name.unwrap_or_default();
    // The grandchild is spawned before SIGTERM is blocked or ignored, so it
    // keeps the default disposition; it shares our process group.
    let child = match cfg.spawn_child {
        false => None,
        true => {
            let mut cmd = Command::new("sleep");
            cmd.arg("3600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = cmd.spawn().map_err(|e| format!("spawning child: {e}"))?;
            say(&format!("child pid {}", child.id()));
            Some(child)
        }
    };
    setup_signals(&name, cfg.ignore_sigterm)?;
    if let Some(mut child) = child {
        let _ = thread::Builder::new().spawn(move || child.wait()); // reap it
    }
    thread::sleep(Duration::from_millis(cfg.startup_delay_ms));
    let listen = cfg.listen.unwrap_or(Listen::Tcp(0));
    let listener = bind(&listen).map_err(|e| format!("bind: {e}"))?;
    say(&format!(
        "ten-testapp {name} listening on {}",
        listener.addr()
    ));
    if let Some(ms) = cfg.tick_ms {
        let _ = thread::Builder::new().spawn(move || {
            for i in 1u64.. {
                say(&format!("tick {i}"));
                thread::sleep(Duration::from_millis(ms));
            }
        });
    }
    if cfg.h2c {
        return match listener {
            Listener::Tcp(l) => h2c::serve(l, name),
            Listener::Unix(..) => Err("--h2c needs a TCP port".to_string()),
        };
    }
    let app: &'static App = Box::leak(Box::new(App {
        name,
        healthy: AtomicBool::new(!cfg.fail_health),
    }));
    loop {
        match listener.accept() {
            Ok(stream) => {
                let _ = thread::Builder::new().spawn(move || handle_conn(app, stream));
            }
            Err(e) => {
                complain(&format!("accept: {e}"));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------- sockets

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

fn bind(listen: &Listen) -> io::Result<Listener> {
    match listen {
        Listen::Tcp(port) => TcpListener::bind(("127.0.0.1", *port)).map(Listener::Tcp),
        Listen::Unix(path) => {
            // Remove a stale socket; leave anything else for bind to refuse.
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path)?;
            }
            UnixListener::bind(path).map(|l| Listener::Unix(l, path.clone()))
        }
    }
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }

    fn addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            Listener::Unix(_, path) => path.display().to_string(),
        }
    }
}

/// Forwards a method call to whichever socket type the stream wraps.
macro_rules! each {
    ($stream:expr, $s:ident => $e:expr) => {
        match $stream {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
        }
    };
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        each!(self, s => s.shutdown(how))
    }

    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        each!(self, s => s.set_read_timeout(d))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(self, s => s.read(buf))
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(self, s => s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush())
    }
}

// ---------------------------------------------------------------- requests

struct App {
    name: String,
    healthy: AtomicBool,
}

struct Conn {
    r: BufReader<Stream>,
    w: BufWriter<Stream>,
}

struct Request {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    http10: bool,
    headers: Vec<(String, String)>,
    /// The header names as they arrived (their case kept), in order.
    names: Vec<String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(k, _)| k == name);
        found.next().map(|(_, v)| v.as_str())
    }

    fn param(&self, key: &str) -> Option<&str> {
        let mut found = self.query.iter().filter(|(k, _)| k == key);
        found.next().map(|(_, v)| v.as_str())
    }

    /// A numeric query parameter; `None` if present but not a valid number.
    fn num<T: FromStr>(&self, key: &str, default: T) -> Option<T> {
        self.param(key)
            .map_or(Some(default), |v| v.trim().parse().ok())
    }
}

fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A malformed request (answered with 400); `OutOfMemory` means 413.
fn bad(msg: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

fn too_large() -> io::Error {
    io::Error::new(ErrorKind::OutOfMemory, "body too large")
}

/// One CRLF- (or LF-) terminated line; `None` on EOF before any byte.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.pop() != Some(b'\n') {
        return Err(match n as u64 >= MAX_LINE {
            true => bad("line too long"),
            false => ErrorKind::UnexpectedEof.into(),
        });
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn must_line(r: &mut impl BufRead) -> io::Result<String> {
    read_line(r)?.ok_or_else(|| ErrorKind::UnexpectedEof.into())
}

fn is_token(s: &str) -> bool {
    let special = |b: u8| b"!#$%&'*+-.^_`|~".contains(&b);
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || special(b))
}

fn read_request(conn: &mut Conn) -> io::Result<Option<Request>> {
    let mut line = String::new();
    for _ in 0..8 {
        match read_line(&mut conn.r)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue, // tolerate stray CRLFs
            Some(l) => {
                line = l;
                break;
            }
        }
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(bad("unsupported http version")),
    };
    if !is_token(method) || !(target.starts_with('/') || target == "*") {
        return Err(bad("malformed request line"));
    }
    let mut headers = Vec::new();
    let mut names = Vec::new();
    loop {
        let line = must_line(&mut conn.r)?;
        if line.is_empty() {
            break;
        }
        match line.split_once(':') {
            _ if headers.len() >= MAX_HEADERS => return Err(bad("too many headers")),
            Some((k, v)) if is_token(k) => {
                names.push(k.to_string());
                headers.push((k.to_ascii_lowercase(), v.trim().into()))
            }
            _ => return Err(bad("malformed header")),
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        path: path.to_string(),
        query: parse_query(query),
        http10,
        headers,
        names,
        body: Vec::new(),
    };
    req.body = read_body(conn, &req)?;
    Ok(Some(req))
}

fn read_body(conn: &mut Conn, req: &Request) -> io::Result<Vec<u8>> {
    let expect = req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let send_continue = |w: &mut BufWriter<Stream>| -> io::Result<()> {
        if expect && !req.http10 {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            w.flush()?;
        }
        Ok(())
    };
    if let Some(te) = req.header("transfer-encoding") {
        if !te
            .rsplit(',')
            .next()
            .is_some_and(|t| has_token(t, "chunked"))
        {
            return Err(bad("unsupported transfer-encoding"));
        }
        send_continue(&mut conn.w)?;
        return read_chunked(&mut conn.r);
    }
    let mut len = None;
    for (_, v) in req.headers.iter().filter(|(k, _)| k == "content-length") {
        let n = Some(v).filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
        match n.and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if len.is_none() || len == Some(n) => len = Some(n),
            _ => return Err(bad("bad content-length")),
        }
    }
    let len = len.unwrap_or(0);
    if len > MAX_BODY {
        return Err(too_large());
    }
    if len > 0 {
        send_continue(&mut conn.w)?;
    }
    let mut body = Vec::with_capacity(len.min(1 << 20));
    read_exactly(&mut conn.r, len, &mut body)?;
    Ok(body)
}

fn read_exactly(r: &mut impl Read, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
    if r.by_ref().take(n as u64).read_to_end(out)? < n {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = must_line(r)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = match usize::from_str_radix(size, 16) {
            Ok(n) if size.bytes().all(|b| b.is_ascii_hexdigit()) => n,
            _ => return Err(bad("bad chunk size")),
        };
        if size == 0 {
            while !must_line(r)?.is_empty() {} // trailers
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(too_large());
        }
        read_exactly(r, size, &mut body)?;
        if !must_line(r)?.is_empty() {
            return Err(bad("bad chunk terminator"));
        }
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    let pairs = q.split('&').filter(|kv| !kv.is_empty());
    pairs
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        let hex = hex.and_then(|h| std::str::from_utf8(h).ok());
        match (c, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------- responses

/// What the connection loop does once a route has answered.
enum Then {
    KeepAlive,
    Close,
    WebSocket,
    Exit(i32),
    Abort,
}

struct Done {
    status: u16,
    then: Then,
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_head(
    w: &mut impl Write,
    name: &str,
    status: u16,
    headers: &[(&str, &str)],
    close: bool,
) -> io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nX-Served-By: {name}\r\n",
        reason(status)
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "\r\n"
    });
    w.write_all(h.as_bytes())
}

/// Everything a route needs to answer one request.
struct Cx<'a> {
    app: &'a App,
    req: &'a Request,
    conn: &'a mut Conn,
    close: bool,
}

impl Cx<'_> {
    fn head(&mut self, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
        write_head(
            &mut self.conn.w,
            &self.app.name,
            status,
            headers,
            self.close,
        )
    }

    fn done(&self, status: u16) -> io::Result<Done> {
        let then = if self.close {
            Then::Close
        } else {
            Then::KeepAlive
        };
        Ok(Done { status, then })
    }

    fn send(&mut self, status: u16, ctype: &str, body: &[u8]) -> io::Result<Done> {
        let no_body = status == 204 || status == 304;
        let len = body.len().to_string();
        let headers = [("Content-Type", ctype), ("Content-Length", len.as_str())];
        self.head(status, if no_body { &[] } else { &headers })?;
        if self.req.method != "HEAD" && !no_body {
            self.conn.w.write_all(body)?;
        }
        self.conn.w.flush()?;
        self.done(status)
    }

    fn text(&mut self, status: u16, body: impl AsRef<[u8]>) -> io::Result<Done> {
        self.send(status, TEXT, body.as_ref())
    }
}

fn handle_conn(app: &App, stream: Stream) -> io::Result<()> {
    let mut conn = Conn {
        r: BufReader::with_capacity(64 << 10, stream.try_clone()?),
        w: BufWriter::with_capacity(64 << 10, stream),
    };
    loop {
        let req = match read_request(&mut conn) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::InvalidData => return reject(app, &mut conn, 400, e),
            Err(e) if e.kind() == ErrorKind::OutOfMemory => return reject(app, &mut conn, 413, e),
            Err(e) => return Err(e),
        };
        let close = req.http10
            || req
                .header("connection")
                .is_some_and(|v| has_token(v, "close"));
        let done = route(Cx {
            app,
            req: &req,
            conn: &mut conn,
            close,
        })?;
        let (method, target, status) = (&req.method, &req.target, done.status);
        say(&format!("{} {method} {target} {status}", app.name));
        match done.then {
            Then::KeepAlive => {}
            Then::Close => return Ok(()),
            Then::WebSocket => return ws_echo(&mut conn),
            Then::Exit(code) => return die_later(Some(code)),
            Then::Abort => return die_later(None),
        }
    }
}

/// Answers a bad request, then closes gracefully (drain a little so the
/// client sees the response rather than a reset).
fn reject(app: &App, conn: &mut Conn, status: u16, err: io::Error) -> io::Result<()> {
    say(&format!("{} - - {status}", app.name));
    let body = format!("bad request: {err}\n");
    let len = body.len().to_string();
    let headers = [("Content-Type", TEXT), ("Content-Length", len.as_str())];
    write_head(&mut conn.w, &app.name, status, &headers, true)?;
    conn.w.write_all(body.as_bytes())?;
    conn.w.flush()?;
    let _ = conn.w.get_ref().shutdown(Shutdown::Write);
    let _ = conn
        .w
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)));
    let _ = io::copy(&mut conn.r.by_ref().take(1 << 20), &mut io::sink());
    Ok(())
}

/// Exits with `code` (or aborts on `None`) ~50 ms from now, from another
/// thread, so the response and the log line get out first.
fn die_later(code: Option<i32>) -> io::Result<()> {
    let die = move || match code {
        Some(code) => std::process::exit(code),
        None => std::process::abort(),
    };
    let delayed = move || {
        thread::sleep(Duration::from_millis(50));
        die();
    };
    if thread::Builder::new().spawn(delayed).is_err() {
        die();
    }
    Ok(())
}

// ---------------------------------------------------------------- routes

fn route(mut cx: Cx) -> io::Result<Done> {
    let (app, req) = (cx.app, cx.req);
    let name = &app.name;
    match req.path.as_str() {
        "/" => cx.text(200, format!("hello from {name}\n")),
        "/health" if app.healthy.load(Ordering::SeqCst) => cx.text(200, "ok"),
        "/health" => cx.text(503, "unhealthy"),
        "/control/health-fail" => {
            app.healthy.store(false, Ordering::SeqCst);
            cx.text(200, "health failing\n")
        }
        "/control/health-ok" => {
            app.healthy.store(true, Ordering::SeqCst);
            cx.text(200, "health ok\n")
        }
        "/headers" => match headers_json(name, req) {
            Ok(json) => cx.send(200, "application/json", &json),
            Err(e) => cx.text(500, format!("{e}\n")),
        },
        "/header-names" => cx.text(200, req.names.join("\n")),
        "/echo" => {
            let ctype = req.header("content-type");
            cx.send(200, ctype.unwrap_or("application/octet-stream"), &req.body)
        }
        "/sleep" => match req.num("ms", 0u64) {
            Some(ms) => {
                thread::sleep(Duration::from_millis(ms));
                cx.text(200, format!("slept {ms}\n"))
            }
            None => cx.text(400, "bad ms\n"),
        },
        "/status" => match req.num("code", 200u16).filter(|c| (200..=599).contains(c)) {
            Some(code) => cx.text(code, format!("status {code}\n")),
            None => cx.text(400, "bad code\n"),
        },
        "/env" => match req.param("name").filter(|n| !n.is_empty()) {
            Some(var) => match std::env::var_os(var) {
                Some(value) => cx.text(200, value.as_bytes()),
                None => cx.text(404, "unset"),
            },
            None => cx.text(400, "missing name\n"),
        },
        "/whoami" => {
            let (pid, uid, gid) = (
                std::process::id(),
                nix::unistd::getuid(),
                nix::unistd::getgid(),
            );
            cx.text(200, format!("pid={pid} uid={uid} gid={gid}\n"))
        }
        "/try" => match (req.param("op"), req.param("path")) {
            (Some(op), Some(path)) => match try_path(op, path) {
                Some(Ok(())) => cx.text(200, "ok"),
                Some(Err(e)) => cx.text(200, format!("errno {}", e.raw_os_error().unwrap_or(0))),
                None => cx.text(400, "op: open, list, connect or write\n"),
            },
            _ => cx.text(400, "missing op or path\n"),
        },
        "/exit" => match req.num("code", 0i32) {
            Some(code) => {
                cx.close = true;
                let done = cx.text(200, format!("exiting {code}\n"))?;
                Ok(Done {
                    then: Then::Exit(code),
                    ..done
                })
            }
            None => cx.text(400, "bad code\n"),
        },
        "/crash" => {
            cx.close = true;
            let done = cx.text(200, "crashing\n")?;
            Ok(Done {
                then: Then::Abort,
                ..done
            })
        }
        "/noise" => noise(cx),
        "/sse" => sse(cx),
        "/big" => big(cx),
        "/broken" => broken(cx),
        "/ws" => ws_handshake(cx),
        _ => cx.text(404, "not found\n"),
    }
}

/// `/try`: what an app under its own uid can reach (the isolation tests): open (read) a
/// file, list a directory, connect to a unix socket, write (create) a file.
fn try_path(op: &str, path: &str) -> Option<io::Result<()>> {
    Some(match op {
        "open" => std::fs::File::open(path).and_then(|mut f| f.read(&mut [0u8; 1]).map(|_| ())),
        "list" => std::fs::read_dir(path).map(|_| ()),
        "connect" => UnixStream::connect(path).map(|_| ()),
        "write" => std::fs::write(path, b"written by ten-testapp\n"),
        _ => return None,
    })
}

fn headers_json(name: &str, req: &Request) -> serde_json::Result<Vec<u8>> {
    use serde_json::{Map, Value};
    let mut map = Map::new();
    for (k, v) in &req.headers {
        match map.get_mut(k) {
            Some(Value::String(s)) => *s = format!("{s}, {v}"),
            _ => drop(map.insert(k.clone(), v.clone().into())),
        }
    }
    map.insert("_method".into(), req.method.clone().into());
    map.insert("_path".into(), req.target.clone().into());
    map.insert("_name".into(), name.into());
    serde_json::to_vec(&Value::Object(map))
}

fn noise(mut cx: Cx) -> io::Result<Done> {
    let stderr = match cx.req.param("stream") {
        None | Some("stdout") => false,
        Some("stderr") => true,
        Some(_) => return cx.text(400, "bad stream\n"),
    };
    let Some(lines) = cx.req.num("lines", 10u64) else {
        return cx.text(400, "bad lines\n");
    };
    let mut out: Box<dyn Write> = match stderr {
        true => Box::new(io::stderr().lock()),
        false => Box::new(io::stdout().lock()),
    };
    for i in 1..=lines {
        if writeln!(out, "noise {i} from {}", cx.app.name).is_err() {
            break;
        }
    }
    let _ = out.flush();
    drop(out);
    cx.text(200, format!("wrote {lines}\n"))
}

fn sse(mut cx: Cx) -> io::Result<Done> {
    let (Some(n), Some(interval)) = (cx.req.num("n", 5u64), cx.req.num("interval_ms", 100u64))
    else {
        return cx.text(400, "bad n or interval_ms\n");
    };
    cx.head(
        200,
        &[
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
        ],
    )?;
    cx.conn.w.flush()?;
    if cx.req.method == "HEAD" {
        return cx.done(200);
    }
    for i in 1..=n {
        if i > 1 {
            thread::sleep(Duration::from_millis(interval));
        }
        let event = format!("data: event {i} from {}\n\n", cx.app.name);
        write!(cx.conn.w, "{:x}\r\n{event}\r\n", event.len())?;
        cx.conn.w.flush()?;
    }
    cx.conn.w.write_all(b"0\r\n\r\n")?;
    cx.conn.w.flush()?;
    cx.done(200)
}

fn big(mut cx: Cx) -> io::Result<Done> {
    let Some(bytes) = cx.req.num("bytes", 0u64) else {
        return cx.text(400, "bad bytes\n");
    };
    let len = bytes.to_string();
    cx.head(
        200,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", &len),
        ],
    )?;
    if cx.req.method != "HEAD" {
        io::copy(&mut io::repeat(b'x').take(bytes), &mut cx.conn.w)?;
    }
    cx.conn.w.flush()?;
    cx.done(200)
}

/// Promises 1000 bytes, sends 10, then drops the connection.
fn broken(mut cx: Cx) -> io::Result<Done> {
    cx.head(200, &[("Content-Type", TEXT), ("Content-Length", "1000")])?;
    cx.conn.w.write_all(b"0123456789")?;
    cx.conn.w.flush()?;
    let _ = cx.conn.w.get_ref().shutdown(Shutdown::Both);
    Ok(Done {
        status: 200,
        then: Then::Close,
    })
}

// ---------------------------------------------------------------- websocket

fn ws_handshake(mut cx: Cx) -> io::Result<Done> {
    let upgrade = cx
        .req
        .header("upgrade")
        .is_some_and(|v| has_token(v, "websocket"));
    let Some(key) = cx.req.header("sec-websocket-key").filter(|_| upgrade) else {
        return cx.text(400, "expected websocket upgrade\n");
    };
    let digest = Sha1::digest(format!("{}{WS_GUID}", key.trim()).as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(digest);
    cx.close = false;
    cx.head(
        101,
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", &accept),
        ],
    )?;
    cx.conn.w.flush()?;
    Ok(Done {
        status: 101,
        then: Then::WebSocket,
    })
}

struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

fn read_frame(r: &mut impl BufRead) -> io::Result<Option<Frame>> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let len = usize::try_from(len).ok().filter(|&l| l <= MAX_BODY);
    let len = len.ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "frame too large"))?;
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        r.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    for (b, m) in payload.iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
    let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
    Ok(Some(Frame {
        fin,
        opcode,
        payload,
    }))
}

fn write_frame(w: &mut impl Write, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xffff => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Echoes data frames back unmasked (per frame, so fragments stay fragments),
/// answers pings, and replies to a close frame before ending the connection.
fn ws_echo(conn: &mut Conn) -> io::Result<()> {
    while let Some(f) = read_frame(&mut conn.r)? {
        match f.opcode {
            0x0..=0x2 => write_frame(&mut conn.w, f.fin, f.opcode, &f.payload)?,
            0x9 => write_frame(&mut conn.w, true, 0xA, &f.payload)?,
            0xA => {}
            0x8 => {
                let code = f.payload.get(..2).unwrap_or(&[]);
                write_frame(&mut conn.w, true, 0x8, code)?;
                return conn.w.flush();
            }
            _ => {
                write_frame(&mut conn.w, true, 0x8, &1002u16.to_be_bytes())?;
                return conn.w.flush();
            }
        }
        conn.w.flush()?;
    }
    Ok(())
}
