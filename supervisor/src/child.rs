//! Starting one instance's process and capturing its output; signalling its process group.
//! A start that fails because ten itself is out of resources (a port, the pipes, fork) is
//! [`Error::Resources`], never the app's failure; the instance joins its cgroup (if it has
//! limits) between fork and exec. The output readers can hand their pipe over (an upgrade of
//! ten): see [`Pipes`].

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::{mpsc, watch};

use tenement_conf::template::{self, Vars};
use tenement_conf::{InstanceName, Isolation, ListenMode, Process};

use crate::cgroup;
use crate::identity::{self, Identity};
use crate::namespace;
use crate::resource::{self, Op};
use crate::Error;
use tenement_conf::Addr;

/// stdout or stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where captured lines go (the log store, in the `ten` binary).
pub trait LogSink: Send + Sync + 'static {
    fn line(&self, instance: &InstanceName, stream: Stream, line: &str);

    /// The longest line kept, in bytes (`[settings] log_max_line`): a longer one is cut there
    /// and marked with [`CUT_MARK`].
    fn max_line(&self) -> usize {
        DEFAULT_MAX_LINE
    }
}

/// A sink that forwards lines to `tracing` (used until a store is attached).
pub struct TracingSink;

impl LogSink for TracingSink {
    fn line(&self, instance: &InstanceName, stream: Stream, line: &str) {
        if instance.process == "ten" {
            return; // ten's own events are already traced where they happen
        }
        tracing::info!(target: "app", instance = %instance, stream = stream.as_str(), "{line}");
    }
}

/// The last lines an instance printed, for error messages.
#[derive(Debug, Default)]
pub struct Tail(Mutex<VecDeque<String>>);

const TAIL_LINES: usize = 20;
/// Longest captured line unless the sink says otherwise (the `log_max_line` default).
pub const DEFAULT_MAX_LINE: usize = 16_000;
/// The shortest `max_line` the reader honours (the config refuses less).
const MIN_MAX_LINE: usize = 256;
/// Appended to a line that was cut at `max_line` bytes (the rest of it is discarded).
pub const CUT_MARK: &str = "…[cut]";
/// The capture's read buffer (independent of `max_line`, which may be large).
const READ_BUF: usize = 16 * 1024;

impl Tail {
    fn push(&self, line: &str) {
        if let Ok(mut t) = self.0.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What `start` needs beyond the process config.
pub struct Launch<'a> {
    pub name: &'a InstanceName,
    pub process: &'a Process,
    pub data_dir: &'a Path,
    pub sink: Arc<dyn LogSink>,
    pub tail: Arc<Tail>,
    /// The user it runs as (`user`); None: ten's own.
    pub identity: Option<Identity>,
}

/// A started child.
pub struct Started {
    pub child: Child,
    pub pid: u32,
    pub addr: Addr,
    /// The output readers: they end at EOF of the app's stdout/stderr, or hand their pipe over.
    pub captures: Vec<tokio::task::JoinHandle<()>>,
    /// How to ask the readers for their pipes (an upgrade).
    pub pipes: Pipes,
    /// Its cgroup (limits set), when it has limits and they could be applied.
    pub cgroup: Option<PathBuf>,
    /// Why its limits could not be applied (a warning for the operator).
    pub cgroup_warning: Option<String>,
}

/// An error of a spawn step: ten's own resource exhaustion, or the app's (or config's) problem.
fn spawn_error(e: &std::io::Error, text: String) -> Error {
    if resource::ours(e, Op::Spawn) {
        Error::Resources(text)
    } else {
        Error::Spawn(text)
    }
}

/// A TCP port the OS says is free right now.
fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| spawn_error(&e, format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| spawn_error(&e, format!("no free port: {e}")))
}

/// `{data_dir}/{process}/{id}`
pub fn instance_data_dir(data_dir: &Path, name: &InstanceName) -> PathBuf {
    data_dir.join(&name.process).join(&name.id)
}

/// Expand templates, start the process in its own process group, capture its output.
pub fn start(l: &Launch<'_>) -> Result<Started, Error> {
    let p = l.process;
    let data_dir = l.data_dir.to_string_lossy().into_owned();
    let base = Vars {
        process: &l.name.process,
        id: &l.name.id,
        data_dir: &data_dir,
        socket: "",
        port: "",
    };
    let (addr, port, socket) = match p.listen {
        ListenMode::Port => {
            let port = free_port()?;
            (
                Addr::Tcp(([127, 0, 0, 1], port).into()),
                port.to_string(),
                String::new(),
            )
        }
        ListenMode::Socket => {
            let path = template::expand(&p.socket, &base);
            if let Some(dir) = Path::new(&path).parent() {
                match &l.identity {
                    // Its own directory (the config keeps it out of data_dir itself).
                    Some(id) if dir != l.data_dir => {
                        identity::own_dir(dir, l.data_dir, id).map_err(Error::Spawn)?
                    }
                    _ => std::fs::create_dir_all(dir)
                        .map_err(|e| Error::Spawn(format!("create {}: {e}", dir.display())))?,
                }
            }
            // A stale socket from an earlier run would make the app's bind fail.
            let _ = std::fs::remove_file(&path);
            (Addr::Unix(PathBuf::from(&path)), String::new(), path)
        }
    };
    let vars = Vars {
        socket: &socket,
        port: &port,
        ..base
    };
    let argv: Vec<String> = p
        .command
        .iter()
        .map(|a| template::expand(a, &vars))
        .collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::Spawn(format!("process {} has no command", p.name)));
    };
    let inst_dir = instance_data_dir(l.data_dir, l.name);
    match &l.identity {
        Some(id) => identity::own_dir(&inst_dir, l.data_dir, id).map_err(Error::Spawn)?,
        None => std::fs::create_dir_all(&inst_dir)
            .map_err(|e| Error::Spawn(format!("create {}: {e}", inst_dir.display())))?,
    }
    let mut env: BTreeMap<String, String> = p
        .env
        .iter()
        .map(|(k, v)| (k.clone(), template::expand(v, &vars)))
        .collect();
    env.insert("TEN_PROCESS".into(), l.name.process.clone());
    env.insert("TEN_INSTANCE".into(), l.name.id.clone());
    env.insert("DATA_DIR".into(), inst_dir.to_string_lossy().into_owned());
    match p.listen {
        ListenMode::Port => env.insert("PORT".into(), port.clone()),
        ListenMode::Socket => env.insert("SOCKET_PATH".into(), socket.clone()),
    };
    // A clean environment (SPEC §12): nothing of ten's but the allow-list and env_inherit.
    let env = identity::environment(
        std::env::vars_os(),
        &p.env_inherit,
        l.identity.as_ref(),
        env,
    );
    let cwd = match &p.directory {
        Some(dir) => PathBuf::from(template::expand(dir, &vars)),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    if let Some(id) = &l.identity {
        // Say why the app's uid cannot run it, rather than a bare EACCES (or exit 126).
        identity::runnable(program, env.get(std::ffi::OsStr::new("PATH")), &cwd, id).map_err(
            |why| {
                Error::Spawn(format!(
                    "cannot start {program:?} for {} as uid {}: {why}",
                    l.name, id.uid
                ))
            },
        )?;
        let mut own = vec![("DATA_DIR", inst_dir.as_path())];
        if let Addr::Unix(sock) = &addr {
            own.push(("socket", sock.as_path()));
        }
        for (what, path) in own {
            identity::reachable(path, id).map_err(|why| {
                Error::Spawn(format!(
                    "{}: its {what} {} is out of reach of uid {}: {why}",
                    l.name,
                    path.display(),
                    id.uid
                ))
            })?;
        }
    }
    let plan = match p.isolation {
        Isolation::Namespace => {
            let mut keep = vec![inst_dir.as_path()];
            if let Addr::Unix(sock) = &addr {
                if let Some(dir) = sock.parent().filter(|d| *d != inst_dir.as_path()) {
                    keep.push(dir);
                }
            }
            Some(
                namespace::Plan::new(l.data_dir, &keep, l.identity.clone())
                    .map_err(|e| Error::Spawn(format!("isolation of {}: {e}", l.name)))?,
            )
        }
        Isolation::Process => None,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if p.directory.is_some() {
        cmd.current_dir(&cwd);
    }
    let (prepared, mut cgroup_warning) = if p.memory_limit_mb.is_some() || p.cpu_shares.is_some() {
        match cgroup::prepare(l.name, p.memory_limit_mb, p.cpu_shares) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    if let Some(c) = &prepared {
        let fd = c.procs_fd();
        // SAFETY: the closure runs between fork and exec and only calls write(2).
        unsafe {
            cmd.pre_exec(move || {
                cgroup::join_in_child(fd);
                Ok(())
            });
        }
    }
    // After the cgroup join (which needs ten's privileges).
    match (plan, &l.identity) {
        (Some(plan), _) => {
            // SAFETY: `enter` makes only async-signal-safe calls (see `namespace`).
            unsafe { cmd.pre_exec(move || plan.enter()) };
        }
        (None, Some(id)) => {
            let id = id.clone();
            // SAFETY: setgroups/setgid/setuid on memory allocated before the fork.
            unsafe { cmd.pre_exec(move || id.drop_privileges()) };
        }
        (None, None) => {}
    }
    let spawned = cmd
        .spawn()
        .map_err(|e| spawn_error(&e, format!("cannot start {program:?} for {}: {e}", l.name)));
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = &prepared {
                cgroup::remove(&c.dir);
            }
            return Err(e);
        }
    };
    let pid = child
        .id()
        .ok_or_else(|| Error::Spawn(format!("{} exited at once", l.name)))?;
    let cgroup = match prepared {
        Some(c) => match c.confirm(pid) {
            Ok(()) => Some(c.dir),
            Err(e) => {
                cgroup_warning = Some(e);
                cgroup::remove(&c.dir);
                None
            }
        },
        None => None,
    };
    let (pipes, ends) = Pipes::new(l.tail.clone());
    let mut captures = Vec::new();
    let out = Capture {
        name: l.name.clone(),
        sink: l.sink.clone(),
        tail: l.tail.clone(),
        ends,
    };
    if let Some(o) = child.stdout.take() {
        captures.push(tokio::spawn(out.clone().run(o, Stream::Stdout, Vec::new())));
    }
    if let Some(e) = child.stderr.take() {
        captures.push(tokio::spawn(out.run(e, Stream::Stderr, Vec::new())));
    }
    Ok(Started {
        child,
        pid,
        addr,
        captures,
        pipes,
        cgroup,
        cgroup_warning,
    })
}

/// An output pipe a reader can give back (to hand it to another ten).
pub trait Pipe: AsyncRead + Unpin + Send + 'static {
    fn into_fd(self) -> std::io::Result<OwnedFd>;
}

impl Pipe for ChildStdout {
    fn into_fd(self) -> std::io::Result<OwnedFd> {
        self.into_owned_fd()
    }
}

impl Pipe for ChildStderr {
    fn into_fd(self) -> std::io::Result<OwnedFd> {
        self.into_owned_fd()
    }
}

impl Pipe for tokio::net::unix::pipe::Receiver {
    fn into_fd(self) -> std::io::Result<OwnedFd> {
        self.into_nonblocking_fd()
    }
}

/// One output pipe given back by its reader: the read end and the bytes read from it but not
/// yet made into lines (the start of a line, lines still in the read buffer), which the next
/// reader takes first, so no line is lost or read twice.
#[derive(Debug)]
pub struct HandedPipe {
    pub stream: Stream,
    pub fd: OwnedFd,
    pub pending: Vec<u8>,
}

/// The output readers of one instance, seen from outside: [`Pipes::hand_over`] stops them
/// and returns their pipes.
#[derive(Debug)]
pub struct Pipes {
    handover: watch::Sender<bool>,
    handed: mpsc::UnboundedReceiver<HandedPipe>,
    /// The instance's last lines (for a reader started again on the pipes).
    pub tail: Arc<Tail>,
}

/// The readers' side of [`Pipes`].
#[derive(Debug, Clone)]
pub struct PipeEnds {
    handover: watch::Receiver<bool>,
    handed: mpsc::UnboundedSender<HandedPipe>,
}

/// Readers started again on handed pipes (the pending bytes first): in the old ten when an
/// upgrade failed, in the new one for an adopted instance.
pub fn resume(
    name: &InstanceName,
    sink: &Arc<dyn LogSink>,
    tail: &Arc<Tail>,
    handed: Vec<HandedPipe>,
) -> (Pipes, Vec<tokio::task::JoinHandle<()>>) {
    let (pipes, ends) = Pipes::new(tail.clone());
    let capture = Capture {
        name: name.clone(),
        sink: sink.clone(),
        tail: tail.clone(),
        ends,
    };
    let mut captures = Vec::new();
    for p in handed {
        match tokio::net::unix::pipe::Receiver::from_owned_fd(p.fd) {
            Ok(rx) => captures.push(tokio::spawn(capture.clone().run(rx, p.stream, p.pending))),
            Err(e) => {
                tracing::warn!(instance = %name, stream = p.stream.as_str(), "cannot read its output any more: {e}")
            }
        }
    }
    (pipes, captures)
}

impl Pipes {
    pub fn new(tail: Arc<Tail>) -> (Pipes, PipeEnds) {
        let (tx, rx) = watch::channel(false);
        let (htx, hrx) = mpsc::unbounded_channel();
        (
            Pipes {
                handover: tx,
                handed: hrx,
                tail,
            },
            PipeEnds {
                handover: rx,
                handed: htx,
            },
        )
    }

    /// Stop every reader and collect the pipes they held (a reader that already reached EOF
    /// has none). Bounded by `limit`: a reader that does not answer keeps its pipe.
    pub async fn hand_over(mut self, limit: std::time::Duration) -> Vec<HandedPipe> {
        self.handover.send_replace(true);
        let mut got = Vec::new();
        let _ = tokio::time::timeout(limit, async {
            // Ends when every reader has answered or ended (all senders dropped).
            while let Some(p) = self.handed.recv().await {
                got.push(p);
            }
        })
        .await;
        got
    }
}

/// One reader's setup (cloned for stdout and stderr).
#[derive(Clone)]
pub struct Capture {
    pub name: InstanceName,
    pub sink: Arc<dyn LogSink>,
    pub tail: Arc<Tail>,
    pub ends: PipeEnds,
}

impl Capture {
    /// Read lines (lossy UTF-8) from `pending` then `r` until EOF, or until asked to hand the
    /// pipe over (then the pipe and the bytes not yet made into lines go to [`Pipes`]). A line
    /// longer than the sink's `max_line` bytes is cut there (on a UTF-8 boundary), marked with
    /// [`CUT_MARK`], and the rest of it is read and discarded: memory per stream stays at most
    /// `max_line` whatever the app prints.
    pub async fn run<P: Pipe>(self, r: P, stream: Stream, pending: Vec<u8>) {
        let Capture {
            name,
            sink,
            tail,
            ends,
        } = self;
        let PipeEnds {
            mut handover,
            handed,
        } = ends;
        let max = sink.max_line().max(MIN_MAX_LINE);
        let mut r = BufReader::with_capacity(READ_BUF, std::io::Cursor::new(pending).chain(r));
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            // `read_line` only awaits in `fill_buf`, which keeps what it read: dropping it
            // there loses nothing (what it took so far is in `buf`).
            let got = tokio::select! {
                biased;
                _ = handover.wait_for(|h| *h) => {
                    give_back(r, buf, stream, &handed);
                    return;
                }
                got = read_line(&mut r, &mut buf, max) => got,
            };
            let (n, cut) = match got {
                Ok(got) => got,
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            if !cut {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
            }
            let line = bounded_text(&buf, max, cut);
            tail.push(&line);
            sink.line(&name, stream, &line);
        }
    }
}

/// The reader stops: its pipe and every byte read but not made into lines, in order.
fn give_back<P: Pipe>(
    r: BufReader<tokio::io::Chain<std::io::Cursor<Vec<u8>>, P>>,
    mut pending: Vec<u8>,
    stream: Stream,
    handed: &mpsc::UnboundedSender<HandedPipe>,
) {
    pending.extend_from_slice(r.buffer());
    let (cursor, pipe) = r.into_inner().into_inner();
    let at = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    pending.extend_from_slice(cursor.get_ref().get(at..).unwrap_or_default());
    match pipe.into_fd() {
        Ok(fd) => {
            let _ = handed.send(HandedPipe {
                stream,
                fd,
                pending,
            });
        }
        Err(e) => tracing::warn!(
            stream = stream.as_str(),
            "cannot hand an output pipe over: {e}"
        ),
    }
}

/// Like `read_until(b'\n')`, but keeps at most `max` bytes of the line (plus its newline):
/// past that it consumes up to the newline without keeping it. Returns the bytes consumed
/// and whether the line was cut.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    let mut total = 0;
    let mut cut = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok((total, cut));
        }
        // Room for `max` bytes and a "\r\n" after them (a line of exactly `max` is not cut).
        let room = (max + 2).saturating_sub(buf.len());
        let newline = available.iter().position(|&c| c == b'\n');
        let take = newline.map_or(available.len(), |i| i + 1);
        let keep = if cut { 0 } else { take.min(room) };
        buf.extend_from_slice(&available[..keep]);
        // The line's own bytes: without its "\n" or "\r\n" (a "\r" may wait for its "\n").
        let mut content = buf.len();
        if newline.is_some() && keep == take {
            content -= 1;
        }
        if content > 0 && buf[content - 1] == b'\r' {
            content -= 1;
        }
        if !cut && content > max {
            cut = true;
            buf.truncate(max);
        }
        r.consume(take);
        total += take;
        if newline.is_some() {
            return Ok((total, cut));
        }
    }
}

/// The text of a captured line: lossy UTF-8, at most `max` bytes (never half a character),
/// then [`CUT_MARK`] if it was cut (while reading, or because lossy decoding made it longer).
fn bounded_text(bytes: &[u8], max: usize, cut: bool) -> String {
    let bytes = &bytes[..bytes.len().min(max)];
    // A character the cut split in two is dropped whole (not shown as U+FFFD).
    let bytes = if cut {
        &bytes[..complete_utf8_len(bytes)]
    } else {
        bytes
    };
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    let mut cut = cut;
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        cut = true;
    }
    if cut {
        text.push_str(CUT_MARK);
    }
    text
}

/// `bytes.len()` less a trailing UTF-8 sequence that is incomplete.
fn complete_utf8_len(bytes: &[u8]) -> usize {
    let len = bytes.len();
    // The start of the last character: at most 3 continuation bytes back.
    let Some(start) = (0..len).rev().take(4).find(|&i| bytes[i] & 0xC0 != 0x80) else {
        return len;
    };
    let need = match bytes[start] {
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        b if b >= 0xC0 => 2,
        _ => 1,
    };
    if start + need > len {
        start
    } else {
        len
    }
}

/// Signal a whole process group; a group that is already gone is fine.
pub fn signal_group(pid: u32, sig: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if let Err(e) = killpg(Pid::from_raw(pid), sig) {
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pid, signal = %sig, error = %e, "could not signal process group");
        }
    }
}

/// Human text for an exit status.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => "exited".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Lines as `capture` makes them from `input` with `max_line = max`.
    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            // A tiny read buffer: lines and cuts span many reads.
            let mut r = BufReader::with_capacity(7, input);
            let mut out = Vec::new();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let (n, cut) = read_line(&mut r, &mut buf, max).await.unwrap();
                if n == 0 {
                    return out;
                }
                assert!(buf.len() <= max + 2, "kept {} bytes", buf.len());
                if !cut {
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                }
                out.push(bounded_text(&buf, max, cut));
            }
        })
    }

    /// Collects lines.
    #[derive(Default)]
    struct Lines(std::sync::Mutex<Vec<String>>);

    impl LogSink for Lines {
        fn line(&self, _: &InstanceName, _: Stream, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    #[tokio::test]
    async fn a_handed_over_pipe_loses_no_line_and_reads_none_twice() {
        use std::io::Write;
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r).unwrap();
        let sink = Arc::new(Lines::default());
        let name = InstanceName {
            process: "api".into(),
            id: "1".into(),
        };
        let tail = Arc::new(Tail::default());
        let (pipes, ends) = Pipes::new(tail.clone());
        let cap = Capture {
            name: name.clone(),
            sink: sink.clone(),
            tail: tail.clone(),
            ends,
        };
        let reader = tokio::spawn(cap.run(rx, Stream::Stdout, b"pend".to_vec()));
        w.write_all(b"ing\none\ntwo\nhalf of thr").unwrap();
        // Wait until the complete lines are in (bounded).
        for _ in 0..500 {
            if sink.0.lock().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let mut handed = pipes.hand_over(std::time::Duration::from_secs(5)).await;
        reader.await.unwrap();
        assert_eq!(handed.len(), 1);
        let p = handed.remove(0);
        assert_eq!(*sink.0.lock().unwrap(), ["pending", "one", "two"]);
        assert_eq!(p.pending, b"half of thr");
        // Written while nobody reads, then read by the next reader after the pending bytes.
        w.write_all(b"ee\nfour\n").unwrap();
        drop(w);
        let (_pipes, readers) = resume(&name, &(sink.clone() as Arc<dyn LogSink>), &tail, vec![p]);
        for r in readers {
            r.await.unwrap();
        }
        assert_eq!(
            *sink.0.lock().unwrap(),
            ["pending", "one", "two", "half of three", "four"]
        );
    }

    #[test]
    fn a_long_line_is_cut_at_max_line_and_marked_and_its_rest_discarded() {
        let long = "x".repeat(1000);
        let input = format!("short\n{long}\nnext\n");
        let got = lines(input.as_bytes(), 300);
        assert_eq!(
            got,
            vec![
                "short".to_string(),
                format!("{}{CUT_MARK}", "x".repeat(300)),
                "next".to_string()
            ]
        );
    }

    #[test]
    fn a_line_of_exactly_max_line_is_kept_whole() {
        let exact = "y".repeat(300);
        let input = format!("{exact}\n{exact}\r\n{exact}");
        assert_eq!(
            lines(input.as_bytes(), 300),
            vec![exact.clone(), exact.clone(), exact]
        );
        let over = "z".repeat(301);
        assert_eq!(
            lines(format!("{over}\n").as_bytes(), 300),
            vec![format!("{}{CUT_MARK}", "z".repeat(300))]
        );
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // 299 ASCII bytes then "é" (2 bytes): the cut at 300 would split it.
        let input = format!("{}é and more\n", "a".repeat(299));
        let got = lines(input.as_bytes(), 300);
        assert_eq!(got, vec![format!("{}{CUT_MARK}", "a".repeat(299))]);
        // Invalid bytes become U+FFFD (3 bytes each) and still fit in max_line.
        let bad = vec![0xFFu8; 200];
        let got = bounded_text(&bad, 300, false);
        assert!(got.len() <= 300 + CUT_MARK.len(), "{}", got.len());
        assert!(got.ends_with(CUT_MARK));
    }

    #[test]
    fn an_endless_line_without_newline_keeps_memory_bounded() {
        let input = vec![b'q'; 100_000];
        let got = lines(&input, 256);
        assert_eq!(got, vec![format!("{}{CUT_MARK}", "q".repeat(256))]);
    }
}
