//! The access log (`[settings] access_log`, SPEC §13): one JSON line per request the proxy
//! listeners answer (proxied, ten's own 404/503, the management API on the bare domain).
//!
//! The request path pays one `try_send` of an [`Entry`] (no formatting, no allocation: the
//! fields are reference-counted clones of the request's own) into a bounded channel, only when
//! the log is on; a full channel drops the line and counts it in
//! `tenement_access_log_dropped_total`. One background thread formats the lines ([`line`])
//! and writes them in batches: idle, it waits on the channel (the first line of a burst pays
//! one wake-up and is written at once); busy, it drains the channel every [`TICK`] without
//! waiting on it, so that senders wake nobody, and writes each batch with one `write`.
//! [`AccessLog::reopen`] (SIGUSR1, `ten reload`)
//! makes it reopen a file log by its path before its next line, for logrotate;
//! [`AccessLog::switch`] hands it another target (a reload that changed `access_log`), opened
//! by the caller first so that a path that cannot be opened refuses the reload;
//! [`AccessLog::close`] (the end of `ten serve`, and of the old process after `ten upgrade`)
//! writes out what is still queued and stops the thread.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};
use pingora_proxy::Session;
use prometheus::IntCounter;

mod line;

/// How long [`AccessLog::close`] waits for the writer to write out the queue.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How long a busy writer sleeps between two drains of the queue (at most this late on the
/// file; the queue holds [`QUEUE`] lines meanwhile: 1.6 M lines/s before any drop).
pub const TICK: Duration = Duration::from_millis(10);

/// A batch is written out when it reaches this many bytes.
const BATCH: usize = 64 * 1024;

/// Lines queued between the proxy and the writer thread before lines are dropped.
pub const QUEUE: usize = 16 * 1024;

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

/// One request, as the proxy hands it over.
#[derive(Debug)]
pub struct Entry {
    pub ts: SystemTime,
    pub client_ip: Option<IpAddr>,
    pub method: Method,
    pub host: Option<HeaderValue>,
    /// Path and query as received.
    pub uri: Uri,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    pub duration: Duration,
    /// `process:id`, when an instance took the request.
    pub upstream: Option<Arc<str>>,
    pub request_id: HeaderValue,
}

/// What goes through the queue: a line, or [`AccessLog::close`] waking an idle writer.
/// Not boxed: a queue slot is as large as an [`Entry`] either way, and a box would cost the
/// request path an allocation.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Entry),
    Close,
}

/// The access log's sending side (shared by every proxy listener).
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: IntCounter,
    /// Set by [`AccessLog::reopen`], [`AccessLog::switch`] and [`AccessLog::close`]; read by
    /// the writer thread.
    control: Arc<Control>,
    /// The writer thread, and the channel its end closes (taken by [`AccessLog::close`]).
    writer: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
}

/// What the writer does before its next line (not on the request path).
#[derive(Debug, Default)]
struct Control {
    /// Reopen the file (or take `next`) before the next line.
    reopen: AtomicBool,
    /// Another target, already open ([`AccessLog::switch`]).
    next: Mutex<Option<Output>>,
    /// Write out what is queued and end ([`AccessLog::close`]).
    stop: AtomicBool,
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

impl AccessLog {
    /// Open `target` (a file is appended to, created 0640) and start the writer thread.
    /// `dropped` counts lines lost to a full queue.
    pub fn start(target: &Target, dropped: IntCounter) -> Result<Arc<AccessLog>, OpenError> {
        let out = Output::open(target)?;
        let control = Arc::new(Control::default());
        let (tx, rx) = sync_channel(QUEUE);
        let (ended, end) = std::sync::mpsc::channel::<()>();
        let writer = control.clone();
        let thread = std::thread::Builder::new()
            .name("ten-access-log".into())
            .spawn(move || {
                let _ended = ended; // dropped when the thread ends (even by a panic)
                write_lines(rx, out, &writer, || std::thread::park_timeout(TICK))
            })
            .map_err(|source| OpenError {
                path: "(writer thread)".into(),
                source,
            })?;
        Ok(Arc::new(AccessLog {
            tx,
            dropped,
            control,
            writer: Mutex::new(Some((thread, end))),
        }))
    }

    /// Write out the lines still queued, flush, and stop the writer thread (waiting for it at
    /// most [`CLOSE_WAIT`]); lines sent afterwards are dropped and counted. Called once the
    /// proxy answered its last request; blocks (call it off the async runtime's workers).
    pub fn close(&self) {
        let Some((thread, end)) = self.writer.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        self.control.stop.store(true, Ordering::Release);
        // An idle writer waits on the queue: a message wakes it. A full queue means a busy
        // writer, which sees `stop` after its tick, cut short here.
        let _ = self.tx.try_send(Msg::Close);
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
        self.control.reopen.store(true, Ordering::Release);
    }

    /// Open `target` (a file is created now), to [`AccessLog::switch`] to it.
    pub fn open(target: &Target) -> Result<Opened, OpenError> {
        Output::open(target).map(Opened)
    }

    /// Write the lines to `to` from the next one on (the previous file is closed).
    pub fn switch(&self, to: Opened) {
        if let Ok(mut next) = self.control.next.lock() {
            *next = Some(to.0);
        }
        self.control.reopen.store(true, Ordering::Release);
    }

    /// Queue one line; never waits (a full queue drops it and counts the drop).
    #[inline]
    pub fn send(&self, entry: Entry) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Line(entry))
        {
            self.dropped.inc();
        }
    }
}

/// The request's fields for a line, cloned by reference count. `client_ip` is the client
/// address the proxy computed once per request (`[settings] trusted_proxies` applied).
pub(crate) fn entry(
    session: &Session,
    client_ip: Option<IpAddr>,
    status: u16,
    duration: Duration,
    upstream: Option<Arc<str>>,
    request_id: &HeaderValue,
) -> Entry {
    let req = session.req_header();
    Entry {
        ts: SystemTime::now(),
        client_ip,
        method: req.method.clone(),
        host: req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
        uri: req.uri.clone(),
        status,
        bytes_sent: session.body_bytes_sent(),
        duration,
        upstream,
        request_id: request_id.clone(),
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

/// The writer thread: waits for a line while idle, then drains the queue after each `tick`
/// (a [`TICK`] of sleep, cut short by [`AccessLog::close`]) until a drain finds nothing (see
/// the module header). When `control.reopen` is set, before the next batch: the target handed
/// over by a switch, else the file reopened by its path. When `control.stop` is set: writes
/// out what is queued and returns.
fn write_lines(rx: Receiver<Msg>, mut o: Output, control: &Control, mut tick: impl FnMut()) {
    let mut lines = line::Lines::default();
    let mut batch = Vec::with_capacity(BATCH + 1024);
    let line = |m: Msg| match m {
        Msg::Line(e) => Some(e),
        Msg::Close => None, // `control.stop` is set: seen after this drain
    };
    while let Ok(first) = rx.recv() {
        let mut next = line(first);
        loop {
            if next.is_some() && control.reopen.swap(false, Ordering::AcqRel) {
                o = reopened(o, control);
            }
            let mut n = 0usize;
            while let Some(e) = next.take() {
                lines.push(&e, &mut batch);
                drop(e);
                n += 1;
                if batch.len() >= BATCH {
                    o.write(&mut batch);
                }
                match rx.try_recv() {
                    Ok(m) => next = line(m),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => {
                        o.write(&mut batch);
                        return;
                    }
                }
            }
            o.write(&mut batch);
            if control.stop.load(Ordering::Acquire) {
                // The last lines: what is queued now (the proxy sends no more).
                if control.reopen.swap(false, Ordering::AcqRel) {
                    o = reopened(o, control);
                }
                while let Ok(m) = rx.try_recv() {
                    if let Some(e) = line(m) {
                        lines.push(&e, &mut batch);
                        if batch.len() >= BATCH {
                            o.write(&mut batch);
                        }
                    }
                }
                o.write(&mut batch);
                return;
            }
            if n == 0 {
                break; // idle again: wait on the channel
            }
            tick();
            match rx.try_recv() {
                Ok(m) => next = line(m),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// The output after a reopen: the switched-to target, else the file reopened by its path
/// (the old one kept when that fails).
fn reopened(mut o: Output, control: &Control) -> Output {
    let _ = o.out.flush();
    let next = control.next.lock().ok().and_then(|mut n| n.take());
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

    /// A `Write` into a shared buffer.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

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
        log.send(sample());
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
        log.send(sample());
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
        log.send(sample());
        assert_eq!(count(&first, 1), 1);
        let opened = AccessLog::open(&Target::File(second.clone())).unwrap();
        assert!(second.exists(), "opened (created) before the switch");
        log.switch(opened);
        log.send(sample());
        log.send(sample());
        assert_eq!(count(&second, 2), 2);
        assert_eq!(count(&first, 1), 1, "nothing more in the old file");
        // A path that cannot be opened is an error for the caller (nothing switched).
        assert!(AccessLog::open(&Target::File(dir.join("no/such/dir.log"))).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The line of `e`, as the writer formats it.
    fn format_line(e: &Entry, out: &mut String) {
        let mut bytes = Vec::new();
        line::Lines::default().push(e, &mut bytes);
        out.push_str(&String::from_utf8(bytes).unwrap());
    }

    pub(super) fn sample() -> Entry {
        Entry {
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client_ip: Some("10.0.0.7".parse().unwrap()),
            method: Method::POST,
            host: Some(HeaderValue::from_static("a.example.com")),
            uri: "/p/\"q\"?x=1&y=%20".parse().unwrap(),
            status: 201,
            bytes_sent: 42,
            duration: Duration::from_micros(1500),
            upstream: Some("api:prod".into()),
            request_id: HeaderValue::from_static("abc"),
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

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        // No writer thread: the queue fills and stays full.
        let (tx, _rx) = sync_channel(2);
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog {
            tx,
            dropped: dropped.clone(),
            control: Arc::default(),
            writer: Mutex::default(),
        };
        for _ in 0..5 {
            log.send(sample());
        }
        assert_eq!(dropped.get(), 3);
    }

    #[test]
    fn the_writer_writes_every_queued_line() {
        let (tx, rx) = sync_channel(8);
        for _ in 0..3 {
            tx.send(Msg::Line(sample())).unwrap();
        }
        drop(tx);
        let out = Sink::default();
        write_lines(rx, Output::to(out.clone()), &Control::default(), || {});
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 3);
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
        log.send(sample());
        for _ in 0..500 {
            if count() >= 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(count(), 1);
        for _ in 0..1000 {
            log.send(sample());
        }
        log.close();
        assert_eq!(count(), 1001, "every line queued before close is written");
        assert_eq!(dropped.get(), 0);
        log.send(sample());
        assert_eq!(dropped.get(), 1, "after close: dropped and counted");
        log.close(); // a second close does nothing
        assert_eq!(count(), 1001);
        // An idle writer (waiting on the queue) is woken by close.
        let idle = dir.join("idle.log");
        let log = AccessLog::start(&Target::File(idle.clone()), dropped).unwrap();
        log.close();
        assert!(log.writer.lock().unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Issue 21 (access log cost): a busy writer does not wait on the queue, so senders wake
    /// nobody; what arrived during a tick is written with one `write`.
    #[test]
    fn a_busy_writer_writes_what_a_tick_brought_in_one_write() {
        let (tx, rx) = sync_channel(64);
        let (release, ticks) = std::sync::mpsc::channel::<()>();
        let out = Calls::default();
        let sink = out.clone();
        let writer = std::thread::spawn(move || {
            write_lines(rx, Output::to(sink), &Control::default(), move || {
                let _ = ticks.recv();
            })
        });
        let wait = |calls: usize, lines: usize| {
            for _ in 0..500 {
                let got = out.0.lock().unwrap().clone();
                let n: usize = got
                    .iter()
                    .map(|c| c.iter().filter(|&&b| b == b'\n').count())
                    .sum();
                if got.len() >= calls && n >= lines {
                    return (got.len(), n);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let got = out.0.lock().unwrap().clone();
            (
                got.len(),
                got.iter()
                    .map(|c| c.iter().filter(|&&b| b == b'\n').count())
                    .sum(),
            )
        };
        // Idle: the first line is written at once.
        tx.send(Msg::Line(sample())).unwrap();
        assert_eq!(wait(1, 1), (1, 1));
        // Busy: the writer is in its tick; 20 lines queue up meanwhile, one write for all.
        for _ in 0..20 {
            tx.send(Msg::Line(sample())).unwrap();
        }
        release.send(()).unwrap();
        assert_eq!(wait(2, 21), (2, 21));
        drop(tx);
        drop(release);
        writer.join().unwrap();
    }

    /// A tick that brings nothing makes the writer idle again: it waits on the queue, and a
    /// new line is written without another tick. The queue holds nothing (a rendezvous
    /// channel): a `try_send` gets through only while the writer waits in `recv`, never
    /// while it is in a tick or draining.
    #[test]
    fn a_tick_that_brings_nothing_makes_the_writer_wait_on_the_queue() {
        let (tx, rx) = sync_channel(0);
        let (release, ticks) = std::sync::mpsc::channel::<()>();
        let out = Calls::default();
        let sink = out.clone();
        let writer = std::thread::spawn(move || {
            write_lines(rx, Output::to(sink), &Control::default(), move || {
                let _ = ticks.recv();
            })
        });
        let lines = |calls: usize| {
            for _ in 0..500 {
                if out.0.lock().unwrap().len() >= calls {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            out.0.lock().unwrap().len()
        };
        let handed = |tx: &SyncSender<Msg>| {
            for _ in 0..500 {
                match tx.try_send(Msg::Line(sample())) {
                    Ok(()) => return true,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            false
        };
        assert!(handed(&tx), "idle at the start");
        assert_eq!(lines(1), 1);
        // The writer is in its tick now; one tick (release kept alive: no second one).
        release.send(()).unwrap();
        assert!(
            handed(&tx),
            "waiting on the queue after a tick that brought nothing"
        );
        assert_eq!(lines(2), 2, "written without another tick");
        drop(tx);
        drop(release);
        writer.join().unwrap();
    }
}
