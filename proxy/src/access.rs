//! The access log (`[settings] access_log`, SPEC §13): one JSON line per request the proxy
//! listeners answer (proxied, ten's own 404/503, the management API on the bare domain).
//!
//! The request path formats its line ([`line`]: no `fmt` machinery, no allocation on the common
//! path) straight into a per-thread buffer, only when the log is on: one uncontended lock of its
//! thread's [`Shard`], no copy or reference count of the request's fields, nothing handed to
//! another thread to free. A shard holding [`SHARD_MAX`] bytes not yet written drops the line
//! and counts it in `tenement_access_log_dropped_total`. One background thread takes each
//! shard's bytes (a buffer swap) and writes them: busy, every [`TICK`] without being woken (one
//! `write` per shard per tick); idle, it sleeps until the first line into an empty shard wakes
//! it (that line is written at once). Lines of one thread are written in their order; lines of
//! two threads interleave by tick.
//! [`AccessLog::reopen`] (SIGUSR1, `ten reload`)
//! makes it reopen a file log by its path before its next line, for logrotate;
//! [`AccessLog::switch`] hands it another target (a reload that changed `access_log`), opened
//! by the caller first so that a path that cannot be opened refuses the reload;
//! [`AccessLog::close`] (the end of `ten serve`, and of the old process after `ten upgrade`)
//! writes out what is still buffered and stops the thread.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime};

use pingora_proxy::Session;
use prometheus::IntCounter;

mod line;

/// How long [`AccessLog::close`] waits for the writer to write out the buffered lines.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How long a busy writer sleeps between two collections of the shards (at most this late on
/// the file; each shard holds up to [`SHARD_MAX`] bytes meanwhile: about 5,000 lines per thread
/// and tick, 500,000 lines/s, before any drop).
pub const TICK: Duration = Duration::from_millis(10);

/// The bytes a shard holds before its lines are dropped (the writer not keeping up).
pub const SHARD_MAX: usize = 1024 * 1024;

/// Shards: threads that log are spread over them by a per-thread number (more threads than
/// shards share some, still correct).
const SHARDS: usize = 16;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// The target of `[settings] access_log` (None: off).
    pub fn of(conf: &tenement_conf::AccessLog) -> Option<Target> {
        match conf {
            tenement_conf::AccessLog::Off => None,
            tenement_conf::AccessLog::Stdout => Some(Target::Stdout),
            tenement_conf::AccessLog::File(p) => Some(Target::File(p.clone())),
        }
    }
}

/// One request's fields, borrowed from the request for the time its line is formatted.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub ts: SystemTime,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub host: Option<&'a [u8]>,
    /// Path and query as received.
    pub path: &'a str,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    pub duration: Duration,
    /// `process:id`, when an instance took the request.
    pub upstream: Option<&'a str>,
    pub request_id: &'a [u8],
}

/// The lines of the threads numbered to it, not yet taken by the writer.
#[derive(Debug, Default)]
struct Shard {
    buf: Vec<u8>,
    /// The formatter (its cached second) of these lines.
    lines: line::Lines,
}

/// What the proxy threads and the writer share.
#[derive(Debug)]
struct Shared {
    shards: Box<[Mutex<Shard>]>,
    /// A shard drops lines beyond this many bytes ([`SHARD_MAX`]; smaller in tests).
    max: usize,
    /// The writer found every shard empty and sleeps until a line arrives (read and cleared
    /// under a shard's lock: see [`AccessLog::log`]).
    sleeping: AtomicBool,
    /// Reopen the file (or take `next`) before the next write.
    reopen: AtomicBool,
    /// Another target, already open ([`AccessLog::switch`]).
    next: Mutex<Option<Output>>,
    /// Write out what is buffered and end ([`AccessLog::close`]); lines logged after it are
    /// dropped and counted.
    stop: AtomicBool,
}

impl Shared {
    fn new(max: usize) -> Shared {
        Shared {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max,
            sleeping: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            next: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }
}

/// This thread's shard number.
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SLOT.with(|s| *s)
}

/// The access log's logging side (shared by every proxy listener).
#[derive(Debug)]
pub struct AccessLog {
    shared: Arc<Shared>,
    dropped: IntCounter,
    /// The writer thread, to wake when it sleeps.
    waker: Option<Thread>,
    /// The writer thread, and the channel its end closes (taken by [`AccessLog::close`]).
    writer: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
}

/// A target opened by [`AccessLog::open`], for [`AccessLog::switch`].
#[derive(Debug)]
pub struct Opened(Output);

#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct OpenError {
    path: String,
    source: std::io::Error,
}

/// How the writer waits (a parameter so that tests can step it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Busy: a [`TICK`] (cut short by [`AccessLog::close`]).
    Tick,
    /// Idle: until a line (or close) wakes it.
    Idle,
}

impl AccessLog {
    /// Open `target` (a file is appended to, created 0640) and start the writer thread.
    /// `dropped` counts lines lost to a full shard.
    pub fn start(target: &Target, dropped: IntCounter) -> Result<Arc<AccessLog>, OpenError> {
        let out = Output::open(target)?;
        let shared = Arc::new(Shared::new(SHARD_MAX));
        let (ended, end) = std::sync::mpsc::channel::<()>();
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ten-access-log".into())
            .spawn(move || {
                let _ended = ended; // dropped when the thread ends (even by a panic)
                write_lines(&writer, out, |w| match w {
                    Wait::Tick => std::thread::park_timeout(TICK),
                    Wait::Idle => std::thread::park(),
                })
            })
            .map_err(|source| OpenError {
                path: "(writer thread)".into(),
                source,
            })?;
        Ok(Arc::new(AccessLog {
            shared,
            dropped,
            waker: Some(thread.thread().clone()),
            writer: Mutex::new(Some((thread, end))),
        }))
    }

    /// Write out the lines still buffered, flush, and stop the writer thread (waiting for it
    /// at most [`CLOSE_WAIT`]); lines logged afterwards are dropped and counted. Called once the
    /// proxy answered its last request; blocks (call it off the async runtime's workers).
    pub fn close(&self) {
        let Some((thread, end)) = self.writer.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        thread.thread().unpark();
        match end.recv_timeout(CLOSE_WAIT) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
            }
            _ => tracing::warn!("the access log writer did not finish writing in time"),
        }
    }

    /// Reopen a file log by its path before the next line (after logrotate moved it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.wake();
    }

    /// Open `target` (a file is created now), to [`AccessLog::switch`] to it.
    pub fn open(target: &Target) -> Result<Opened, OpenError> {
        Output::open(target).map(Opened)
    }

    /// Write the lines to `to` from the next one on (the previous file is closed).
    pub fn switch(&self, to: Opened) {
        if let Ok(mut next) = self.shared.next.lock() {
            *next = Some(to.0);
        }
        self.reopen();
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.unpark();
        }
    }

    /// Format the line of `e` into this thread's shard; never waits on the writer (a full
    /// shard drops the line and counts the drop).
    #[inline]
    pub fn log(&self, e: &Entry<'_>) {
        let Some(shard) = self.shared.shards.get(slot()) else {
            return;
        };
        let Ok(mut shard) = shard.lock() else {
            self.dropped.inc();
            return;
        };
        if shard.buf.len() >= self.shared.max || self.shared.stop.load(Ordering::Relaxed) {
            drop(shard);
            self.dropped.inc();
            return;
        }
        let Shard { buf, lines } = &mut *shard;
        let first = buf.is_empty();
        lines.push(e, buf);
        // Checked under the shard's lock: the writer sets `sleeping` before it looks at each
        // shard under its lock, so either it sees this line or this sees `sleeping`.
        let wake = first && self.shared.sleeping.swap(false, Ordering::AcqRel);
        drop(shard);
        if wake {
            self.wake();
        }
    }
}

/// The request's fields for its line. `client_ip` is the client address the proxy computed
/// once per request (`[settings] trusted_proxies` applied).
pub(crate) fn entry<'a>(
    session: &'a Session,
    client_ip: Option<IpAddr>,
    status: u16,
    duration: Duration,
    upstream: Option<&'a str>,
    request_id: &'a [u8],
) -> Entry<'a> {
    let req = session.req_header();
    Entry {
        ts: SystemTime::now(),
        client_ip,
        method: req.method.as_str(),
        host: req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes())),
        path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        status,
        bytes_sent: session.body_bytes_sent(),
        duration,
        upstream,
        request_id,
    }
}

/// Where the writer thread writes (unbuffered: the writer hands it whole batches), with the
/// path to reopen (files only).
struct Output {
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("path", &self.path).finish()
    }
}

impl Output {
    fn open(target: &Target) -> Result<Output, OpenError> {
        let (out, path): (Box<dyn Write + Send>, _) = match target {
            Target::Stdout => (Box::new(std::io::stdout()), None),
            Target::File(path) => (Box::new(open_file(path)?), Some(path.clone())),
        };
        Ok(Output { out, path })
    }

    #[cfg(test)]
    fn to(w: impl Write + Send + 'static) -> Output {
        Output {
            out: Box::new(w),
            path: None,
        }
    }

    /// Write and clear `batch`. Nowhere to write (disk full, closed stdout): the lines are
    /// lost, later ones retried.
    fn write(&mut self, batch: &mut Vec<u8>) {
        if !batch.is_empty() {
            let _ = self.out.write_all(batch);
            let _ = self.out.flush();
            batch.clear();
        }
    }
}

fn open_file(path: &std::path::Path) -> Result<std::fs::File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| OpenError {
            path: path.display().to_string(),
            source,
        })
}

/// The writer thread: takes every shard's bytes and writes them, then waits a tick; when a
/// collection finds nothing it sleeps until a line wakes it (see the module header). When
/// `reopen` is set, before the next write: the target handed over by a switch, else the file
/// reopened by its path. When `stop` is set: writes out what is buffered and returns.
fn write_lines(shared: &Shared, mut o: Output, mut wait: impl FnMut(Wait)) {
    // The writer's buffers, swapped with the shards' (each keeps its capacity).
    let mut spares: Vec<Vec<u8>> = shared.shards.iter().map(|_| Vec::new()).collect();
    loop {
        let stop = shared.stop.load(Ordering::Acquire);
        if shared.reopen.swap(false, Ordering::AcqRel) {
            o = reopened(o, shared);
        }
        let mut wrote = false;
        for (shard, spare) in shared.shards.iter().zip(spares.iter_mut()) {
            if let Ok(mut s) = shard.lock() {
                if s.buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut s.buf, spare);
            }
            wrote = true;
            o.write(spare);
        }
        if stop {
            return; // `stop` was seen before the collection: nothing is logged after it
        }
        if wrote {
            wait(Wait::Tick);
            continue;
        }
        // Idle: announce it, then look again (a line logged before the announcement is seen
        // here; one after it wakes the writer).
        shared.sleeping.store(true, Ordering::Release);
        let any = shared
            .shards
            .iter()
            .any(|s| s.lock().map(|s| !s.buf.is_empty()).unwrap_or(false));
        if !any && !shared.stop.load(Ordering::Acquire) && !shared.reopen.load(Ordering::Acquire) {
            wait(Wait::Idle);
        }
        shared.sleeping.store(false, Ordering::Release);
    }
}

/// The output after a reopen: the switched-to target, else the file reopened by its path
/// (the old one kept when that fails).
fn reopened(mut o: Output, shared: &Shared) -> Output {
    let _ = o.out.flush();
    let next = shared.next.lock().ok().and_then(|mut n| n.take());
    match (next, &o.path) {
        (Some(next), _) => return next,
        (None, Some(path)) => match open_file(path) {
            Ok(f) => o.out = Box::new(f),
            Err(e) => tracing::warn!(error = %e, "access log not reopened"),
        },
        (None, None) => {}
    }
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reopen_starts_a_new_file_at_the_path() {
        let dir = std::env::temp_dir().join(format!("ten-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let log = AccessLog::start(
            &Target::File(path.clone()),
            IntCounter::new("d", "d").unwrap(),
        )
        .unwrap();
        log.log(&sample());
        let wait_lines = |p: &std::path::Path, n: usize| {
            for _ in 0..200 {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                if text.lines().count() >= n {
                    return text.lines().count();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(wait_lines(&path, 1), 1);
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.log(&sample());
        assert_eq!(wait_lines(&path, 1), 1, "the next line goes to a new file");
        assert_eq!(
            wait_lines(&rotated, 1),
            1,
            "the rotated file keeps its lines"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn switch_sends_the_next_lines_to_the_new_target() {
        let dir = std::env::temp_dir().join(format!("ten-access-sw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = (dir.join("first.log"), dir.join("second.log"));
        let log = AccessLog::start(
            &Target::File(first.clone()),
            IntCounter::new("d", "d").unwrap(),
        )
        .unwrap();
        let count = |p: &std::path::Path, n: usize| {
            for _ in 0..200 {
                let c = std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count();
                if c >= n {
                    return c;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        };
        log.log(&sample());
        assert_eq!(count(&first, 1), 1);
        let opened = AccessLog::open(&Target::File(second.clone())).unwrap();
        assert!(second.exists(), "opened (created) before the switch");
        log.switch(opened);
        log.log(&sample());
        log.log(&sample());
        assert_eq!(count(&second, 2), 2);
        assert_eq!(count(&first, 1), 1, "nothing more in the old file");
        // A path that cannot be opened is an error for the caller (nothing switched).
        assert!(AccessLog::open(&Target::File(dir.join("no/such/dir.log"))).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The line of `e`, as the writer formats it.
    fn format_line(e: &Entry<'_>, out: &mut String) {
        let mut bytes = Vec::new();
        line::Lines::default().push(e, &mut bytes);
        out.push_str(&String::from_utf8(bytes).unwrap());
    }

    pub(super) fn sample() -> Entry<'static> {
        Entry {
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client_ip: Some("10.0.0.7".parse().unwrap()),
            method: "POST",
            host: Some(b"a.example.com"),
            path: "/p/\"q\"?x=1&y=%20",
            status: 201,
            bytes_sent: 42,
            duration: Duration::from_micros(1500),
            upstream: Some("api:prod"),
            request_id: b"abc",
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let mut line = String::new();
        format_line(&sample(), &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client_ip"], "10.0.0.7");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["host"], "a.example.com");
        assert_eq!(
            v["path"], "/p/\"q\"?x=1&y=%20",
            "as received, escaped in JSON"
        );
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_sent"], 42);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "api:prod");
        assert_eq!(v["request_id"], "abc");
        let mut e = sample();
        e.upstream = None;
        e.client_ip = None;
        e.host = None;
        line.clear();
        format_line(&e, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["upstream"].is_null() && v["client_ip"].is_null() && v["host"].is_null());
    }

    /// A log without a writer thread whose shards hold `max` bytes.
    fn unwritten(max: usize, dropped: IntCounter) -> AccessLog {
        AccessLog {
            shared: Arc::new(Shared::new(max)),
            dropped,
            waker: None,
            writer: Mutex::default(),
        }
    }

    /// The line length of `sample()`.
    fn sample_len() -> usize {
        let mut line = String::new();
        format_line(&sample(), &mut line);
        line.len()
    }

    #[test]
    fn a_full_shard_drops_and_counts_never_waits() {
        // No writer: the shard fills and stays full.
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = unwritten(2 * sample_len(), dropped.clone());
        for _ in 0..5 {
            log.log(&sample());
        }
        assert_eq!(dropped.get(), 3);
        let held: usize = log
            .shared
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buf.len())
            .sum();
        assert_eq!(held, 2 * sample_len());
    }

    #[test]
    fn the_writer_writes_every_logged_line_from_every_thread() {
        let log = Arc::new(unwritten(SHARD_MAX, IntCounter::new("d", "d").unwrap()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..3 {
                        log.log(&sample());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.shared.stop.store(true, Ordering::Release);
        let out = Calls::default();
        write_lines(&log.shared, Output::to(out.clone()), |_| {});
        let text = String::from_utf8(out.0.lock().unwrap().concat()).unwrap();
        assert_eq!(text.lines().count(), 12);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }

    /// A `Write` that keeps each `write` call apart.
    #[derive(Clone, Default)]
    struct Calls(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines sent just before `close` are all in the file when it returns (the end of `ten
    /// serve`, and of the old process after `ten upgrade`), the busy writer's tick cut short;
    /// lines sent after it are dropped and counted.
    #[test]
    fn close_writes_out_every_queued_line() {
        let dir = std::env::temp_dir().join(format!("ten-access-close-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::start(&Target::File(path.clone()), dropped.clone()).unwrap();
        let count = || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count()
        };
        // Idle, then busy: the first line is written at once, the writer then in its tick.
        log.log(&sample());
        for _ in 0..500 {
            if count() >= 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(count(), 1);
        for _ in 0..1000 {
            log.log(&sample());
        }
        log.close();
        assert_eq!(count(), 1001, "every line logged before close is written");
        assert_eq!(dropped.get(), 0);
        log.log(&sample());
        assert_eq!(dropped.get(), 1, "after close: dropped and counted");
        log.close(); // a second close does nothing
        assert_eq!(count(), 1001);
        // An idle writer (asleep) is woken by close.
        let idle = dir.join("idle.log");
        let log = AccessLog::start(&Target::File(idle.clone()), dropped).unwrap();
        log.close();
        assert!(log.writer.lock().unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A log whose writer thread waits through `wait` (each tick waits for a message on the
    /// returned sender; idle it parks as the real one does), writing each `write` apart.
    fn stepped(max: usize) -> (Arc<AccessLog>, Calls, std::sync::mpsc::Sender<()>) {
        let shared = Arc::new(Shared::new(max));
        let (release, ticks) = std::sync::mpsc::channel::<()>();
        let out = Calls::default();
        let sink = out.clone();
        let writer = shared.clone();
        let (ended, end) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ended = ended;
            write_lines(&writer, Output::to(sink), move |w| match w {
                Wait::Tick => {
                    let _ = ticks.recv();
                }
                Wait::Idle => std::thread::park(),
            })
        });
        let log = Arc::new(AccessLog {
            shared,
            dropped: IntCounter::new("d", "d").unwrap(),
            waker: Some(thread.thread().clone()),
            writer: Mutex::new(Some((thread, end))),
        });
        (log, out, release)
    }

    /// Wait (bounded) until `out` has at least `calls` writes and `lines` lines.
    fn written(out: &Calls, calls: usize, lines: usize) -> (usize, usize) {
        let count = || {
            let got = out.0.lock().unwrap().clone();
            let n: usize = got
                .iter()
                .map(|c| c.iter().filter(|&&b| b == b'\n').count())
                .sum();
            (got.len(), n)
        };
        for _ in 0..500 {
            let (c, n) = count();
            if c >= calls && n >= lines {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        count()
    }

    /// Issue 21 (access log cost): a busy writer is not woken by lines; what one thread logged
    /// during a tick is written with one `write`.
    #[test]
    fn a_busy_writer_writes_what_a_tick_brought_in_one_write() {
        let (log, out, release) = stepped(SHARD_MAX);
        // Idle: the first line wakes the writer and is written at once.
        log.log(&sample());
        assert_eq!(written(&out, 1, 1), (1, 1));
        // Busy: the writer is in its tick; 20 lines meanwhile, one write for all.
        for _ in 0..20 {
            log.log(&sample());
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            written(&out, 1, 1),
            (1, 1),
            "nothing written during the tick"
        );
        release.send(()).unwrap();
        assert_eq!(written(&out, 2, 21), (2, 21));
        drop(release); // the ticks from now on end at once
        log.close();
    }

    /// A tick that brings nothing makes the writer idle again: asleep, and a new line is
    /// written without another tick.
    #[test]
    fn a_tick_that_brings_nothing_makes_the_writer_sleep_until_a_line() {
        let (log, out, release) = stepped(SHARD_MAX);
        log.log(&sample());
        assert_eq!(written(&out, 1, 1), (1, 1));
        // The writer is in its tick; one tick (release kept alive: no second one).
        release.send(()).unwrap();
        for _ in 0..500 {
            if log.shared.sleeping.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            log.shared.sleeping.load(Ordering::Acquire),
            "asleep after a tick that brought nothing"
        );
        log.log(&sample());
        assert_eq!(written(&out, 2, 2), (2, 2), "written without another tick");
        drop(release);
        log.close();
    }
}
