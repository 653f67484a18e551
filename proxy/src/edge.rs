//! The proxy's client connections: [`Edge`], the Pingora app that runs each accepted
//! connection's HTTP/1 request loop around [`HttpProxy`] with ten's limits (SPEC §14): the
//! whole request head within `header_timeout`, an idle keep-alive connection closed after
//! `keepalive_timeout`. An HTTP/2 connection (ALPN h2) runs Pingora's h2 loop inside the same
//! limits as far as they translate (see `Edge::serve_h2`): its connection preface within
//! `header_timeout`, an h2 connection with no open stream closed after `keepalive_timeout`,
//! counted in `max_connections` as one connection however many streams it carries.
//!
//! The limits are live ([`LiveLimits`]): `ten reload` stores new ones and every connection
//! accepted from then on reads them once, at its start (one `ArcSwap` load per connection,
//! nothing per request); a connection already open keeps the values it started with.
//!
//! Why a connection-level wrapper: Pingora 0.9.1 reads the head in
//! `HttpProxy::handle_new_request` (pingora-proxy) through `v1::HttpSession::read_request`,
//! whose timeout (`keepalive_timeout`, else `read_timeout`) applies to EACH read, so one byte
//! every few seconds holds a socket forever; after an HTTP/1.1 request it even sets keep-alive
//! to "infinite" (`respect_keepalive`), so the next head's reads have no timeout at all. No
//! option bounds the whole head. So `Edge` replaces Pingora's own per-connection loop (the
//! `ServerApp` impl for every `HttpServerApp`, pingora-core apps/mod.rs, which it mirrors for
//! HTTP/1): it sets the keep-alive timeout on every session and races each
//! `process_new_http` against a deadline that stops mattering once the proxy has the head
//! (`TenProxy::new_ctx` calls [`head_read`], in the same poll). The request itself (body,
//! upstream, response) is not limited by it. Between requests a connection holds only its
//! stream: `Edge` waits for the client's first bytes itself (`park`, no buffer while it waits)
//! and only then makes Pingora's request future, handing it the buffer they were read into
//! (issue 23: an idle keep-alive connection held ~36 KB).
//!
//! [`ConnLimit`]: `max_connections` per listener. Pingora accepts in one loop per listener and
//! awaits the listener's connection filter after each `accept()` (feature
//! `connection_filter`): ten's filter waits while the listener has `max` connections open, so
//! the loop stops accepting and new connections wait in the kernel's backlog (the management
//! plane, on its own listeners, is not affected). A connection is counted from its accept (plain
//! listeners) or from the end of its TLS handshake (a failed handshake never reaches `Edge`, so
//! counting it at accept could leak) until `Edge` is done with it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, ProxyHttp};
use tokio::io::AsyncRead;
use tokio::sync::Notify;
use tokio::time::Instant;

thread_local! {
    /// Set by [`head_read`] during a poll of the request future [`with_head_deadline`] drives.
    static HEAD_READ: Cell<bool> = const { Cell::new(false) };
}

/// Called by the proxy once a request's head has been read and parsed (`new_ctx`): the head
/// deadline of the request being polled no longer applies. One thread-local store.
#[inline]
pub(crate) fn head_read() {
    HEAD_READ.with(|c| c.set(true));
}

/// Limits on client connections (`[settings]`).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// The whole request head (and, on TLS, the handshake before the first one) must arrive
    /// within this.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this (whole seconds, at least 1).
    pub keepalive_timeout: Duration,
}

/// The [`EdgeLimits`] new connections get: shared by every listener, replaced by a reload.
#[derive(Debug)]
pub struct LiveLimits(ArcSwap<EdgeLimits>);

impl LiveLimits {
    pub fn new(limits: EdgeLimits) -> Arc<LiveLimits> {
        Arc::new(LiveLimits(ArcSwap::from_pointee(limits)))
    }

    /// What a connection accepted now gets.
    pub fn get(&self) -> EdgeLimits {
        **self.0.load()
    }

    /// Connections accepted from now on get `limits` (open ones keep theirs).
    pub fn set(&self, limits: EdgeLimits) {
        self.0.store(Arc::new(limits));
    }
}

/// Open connections of one listener, at most `max` (see the module doc). `max` may change
/// while it serves ([`ConnLimit::set_max`]).
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    max: AtomicUsize,
    /// Counted by the filter at accept (plain TCP) rather than when `Edge` gets the stream.
    at_accept: bool,
    freed: Notify,
}

impl ConnLimit {
    /// A limit of `max` (at least 1) open connections; `tls`: the listener does a TLS
    /// handshake before `Edge` sees the stream.
    pub fn new(max: usize, tls: bool) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max.max(1)),
            at_accept: !tls,
            freed: Notify::new(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The limit now.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// A new limit (at least 1; `ten reload`): a lower one holds new connections back until
    /// enough open ones close (none is cut), a higher one lets a waiting accept go at once.
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Release);
        // The waiter (the listener's accept loop) re-checks against the new limit.
        self.freed.notify_waiters();
    }

    /// Count one more if under the limit.
    fn try_take(&self) -> bool {
        let max = self.max();
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Wait until a connection may be taken (counting it when `take`).
    async fn wait_for_room(&self, take: bool) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let room = if take {
                self.try_take()
            } else {
                self.open() < self.max()
            };
            if room {
                return;
            }
            freed.await;
        }
    }

    /// The connection `Edge` now serves: counted until the guard drops.
    fn enter(self: &Arc<Self>) -> ConnGuard {
        if !self.at_accept {
            self.open.fetch_add(1, Ordering::AcqRel);
        }
        ConnGuard(self.clone())
    }
}

#[async_trait]
impl ConnectionFilter for ConnLimit {
    async fn should_accept(&self, _peer: Option<&std::net::SocketAddr>) -> bool {
        self.wait_for_room(self.at_accept).await;
        true
    }
}

/// One open connection of a [`ConnLimit`].
struct ConnGuard(Arc<ConnLimit>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// The proxy app with ten's connection limits; `A` is Pingora's [`HttpProxy`].
pub struct Edge<A> {
    app: Arc<A>,
    /// Read once per connection, at its start.
    limits: Arc<LiveLimits>,
    /// The listener's `max_connections`.
    limit: Option<Arc<ConnLimit>>,
}

impl<SV> Edge<HttpProxy<SV>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    /// `limits`: what each new connection gets; `limit`: the listener's open connections
    /// (also its connection filter).
    pub fn new(
        app: Arc<HttpProxy<SV>>,
        limits: Arc<LiveLimits>,
        limit: Option<Arc<ConnLimit>>,
    ) -> Self {
        Edge { app, limits, limit }
    }
}

/// When the next request head is due on a connection. One timer per connection, re-armed
/// lazily: a request only stores a new instant (one clock read); the timer is moved only when it
/// fires early (then it is set to the stored instant) or when the new instant is earlier than
/// the armed one. So a keep-alive request registers no timer at all in the common case.
struct HeadDeadline {
    at: Instant,
    /// A kept-alive connection's idle deadline: when it passes while the client is sending (bytes
    /// wait in the socket), the head gets `header_timeout` more, once.
    grace: Option<Duration>,
    /// The connection's socket (for the pending-bytes check when the idle deadline passes).
    fd: i32,
    /// The waker the timer was last polled with since it was (re)armed: while the task's waker
    /// is the same and the timer has not fired, polling it again would only re-register the
    /// same waker, so it is skipped (one comparison instead of a timer poll per request).
    registered: Option<Waker>,
}

/// Whether the client has sent bytes ten has not read yet (one `recv(MSG_PEEK)`, only when an
/// idle deadline passes).
fn bytes_waiting(fd: i32) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut byte = [0u8; 1];
    matches!(
        recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Ok(n) if n > 0
    )
}

/// The size of the first read of a request head: Pingora's own (`INIT_HEADER_BUF_SIZE`), so a
/// head arrives in as many reads as before.
const FIRST_READ: usize = 4096;

thread_local! {
    /// A head buffer no connection holds yet: a parked connection's read attempt borrows it and
    /// gives it back when no bytes are there, so parking holds no buffer and finding bytes
    /// copies nothing (the buffer read into is the one handed to Pingora).
    static SPARE: Cell<Option<bytes::BytesMut>> = const { Cell::new(None) };
}

/// How a parked connection's wait ended.
enum Parked {
    /// The client's first bytes of its next request, in the buffer Pingora will parse from.
    Bytes(bytes::BytesMut),
    /// The client closed the connection (or it failed) before sending anything, which Pingora
    /// treats as a quiet end too; or ten is shutting down.
    Closed,
    /// The deadline passed with nothing sent.
    Late,
}

/// Arm `timer` for `deadline.at` if it is set later (a timer set earlier is moved when it fires).
fn arm(deadline: &mut HeadDeadline, timer: Pin<&mut tokio::time::Sleep>) {
    if deadline.at < timer.deadline() {
        timer.reset(deadline.at);
        deadline.registered = None;
    }
}

/// Ready once the deadline has passed (and its grace, if any, did not apply). The timer is
/// polled only when it fired or does not yet know this waker.
fn poll_deadline(
    deadline: &mut HeadDeadline,
    mut timer: Pin<&mut tokio::time::Sleep>,
    cx: &mut std::task::Context<'_>,
) -> Poll<()> {
    if !timer.is_elapsed()
        && deadline
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
    {
        return Poll::Pending;
    }
    while timer.as_mut().poll(cx).is_ready() {
        let now = Instant::now();
        if now < deadline.at {
            timer.as_mut().reset(deadline.at); // armed early: move it, poll again
            continue;
        }
        match deadline.grace.take() {
            Some(more) if bytes_waiting(deadline.fd) => {
                deadline.at = now + more;
                timer.as_mut().reset(deadline.at);
            }
            _ => return Poll::Ready(()),
        }
    }
    deadline.registered = Some(cx.waker().clone());
    Poll::Pending
}

/// A connection between requests: what wakes it when it is parked. One per connection.
struct Park<S> {
    /// `HttpProxy::await_shutdown()`, made once per connection and polled only to (re)register
    /// the task's waker: after that a shutdown wakes the task and `is_shutting_down` says why,
    /// so parking again registers nothing.
    closing: S,
    /// The waker `closing` was last polled with.
    registered: Option<Waker>,
}

/// Wait for a connection's next bytes, holding no buffer while it waits (see [`SPARE`]): the
/// same one read as Pingora's `read_request` would make, into the buffer handed to Pingora
/// (`set_pipelined_prefix`, which its parser reads before the socket). Ends early at shutdown
/// or when the deadline passes.
fn park<'a, SV, S>(
    stream: &'a mut Stream,
    app: &'a HttpProxy<SV>,
    park: &'a mut Park<S>,
    deadline: &'a mut HeadDeadline,
    mut timer: Pin<&'a mut tokio::time::Sleep>,
) -> impl Future<Output = Parked> + 'a
where
    S: Future<Output = ()> + Unpin,
{
    std::future::poll_fn(move |cx| {
        let mut head = SPARE
            .take()
            .unwrap_or_else(|| bytes::BytesMut::with_capacity(FIRST_READ));
        let mut buf = tokio::io::ReadBuf::uninit(head.spare_capacity_mut());
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                let n = buf.filled().len();
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity
                // (`ReadBuf::filled` over that same memory: a reader cannot swap the buffer).
                unsafe { head.set_len(n) };
                return Poll::Ready(Parked::Bytes(head));
            }
            Poll::Ready(_) => {
                SPARE.set(Some(head));
                return Poll::Ready(Parked::Closed);
            }
            Poll::Pending => SPARE.set(Some(head)),
        }
        // Shutdown (or the end of an upgrade's drain) closes parked connections, as Pingora's
        // `read_request` does.
        if app.is_shutting_down() {
            return Poll::Ready(Parked::Closed);
        }
        if !park
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            if Pin::new(&mut park.closing).poll(cx).is_ready() {
                return Poll::Ready(Parked::Closed);
            }
            park.registered = Some(cx.waker().clone());
        }
        poll_deadline(deadline, timer.as_mut(), cx).map(|()| Parked::Late)
    })
}

/// Drive `fut` (one request) to its end, or give up (None) when the deadline passes before the
/// proxy has read the request head. After the head, `fut` runs unlimited by it.
async fn with_head_deadline<F>(
    mut fut: F,
    deadline: &mut HeadDeadline,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Option<F::Output>
where
    F: Future + Unpin,
{
    arm(deadline, timer.as_mut());
    let mut head = false;
    std::future::poll_fn(|cx| {
        if head {
            return Pin::new(&mut fut).poll(cx).map(Some);
        }
        let outer = HEAD_READ.with(|c| c.replace(false));
        let polled = Pin::new(&mut fut).poll(cx);
        head = HEAD_READ.with(|c| c.replace(outer));
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Some(out));
        }
        // The deadline only matters while a head is still awaited.
        if head {
            return Poll::Pending;
        }
        poll_deadline(deadline, timer.as_mut(), cx).map(|()| None)
    })
    .await
}

/// A connection whose request head did not arrive in time: closed.
fn late(limits: &EdgeLimits) -> Option<Stream> {
    tracing::debug!(
        header_timeout = ?limits.header_timeout,
        keepalive_timeout = ?limits.keepalive_timeout,
        "no complete request head in time: connection closed"
    );
    None
}

#[async_trait]
impl<SV> ServerApp for Edge<HttpProxy<SV>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.limit.as_ref().map(ConnLimit::enter);
        // This connection's limits, for its whole life (a reload changes the next ones').
        let limits = self.limits.get();
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.serve_h2(stream, shutdown, limits).await;
        }
        let fd = stream.id();
        // The first head is due header_timeout after the accept (a TLS handshake included); on
        // a kept-alive connection the next one within keepalive_timeout of the answer (plus
        // header_timeout once if the client is sending when it passes).
        let mut deadline = HeadDeadline {
            at: Instant::now() + limits.header_timeout,
            grace: None,
            fd,
            registered: None,
        };
        let timer = tokio::time::sleep_until(deadline.at);
        tokio::pin!(timer);
        let app = &*self.app;
        let closing = std::pin::pin!(app.await_shutdown());
        let mut parked = Park {
            closing,
            registered: None,
        };
        let (mut stream, mut settings) = (stream, None);
        loop {
            // Until the client's first bytes arrive, the connection holds only its stream: the
            // request future (`process_new_http`, an async_trait Box of ~14 KB) and Pingora's
            // 4 KiB head buffer are made once there is a request to read.
            arm(&mut deadline, timer.as_mut());
            let first =
                match park(&mut stream, app, &mut parked, &mut deadline, timer.as_mut()).await {
                    Parked::Bytes(first) => first,
                    Parked::Closed => return None,
                    Parked::Late => return late(&limits),
                };
            let mut session = ServerSession::new_http1(stream);
            match settings {
                Some(settings) => HttpPersistentSettings::apply_to_session(settings, &mut session),
                // Pingora's keep-alive timeout would register a timer for every read of every
                // head: "infinite" there, and ten's own deadline (one timer per connection)
                // instead. Later sessions inherit it through `settings`.
                None => session.set_keepalive((!*shutdown.borrow()).then_some(0)),
            }
            // ten never enables HTTP/1.1 pipelining, so `settings` carries no bytes of its own
            // (Pingora refuses reuse when a request overread).
            session.set_pipelined_prefix(first);
            // The boxed request future itself, polled by the deadline (no wrapper future).
            let request = self.app.process_new_http(session, shutdown);
            let Some(reused) = with_head_deadline(request, &mut deadline, timer.as_mut()).await
            else {
                return late(&limits);
            };
            (stream, settings) = reused?.consume();
            deadline.at = Instant::now() + limits.keepalive_timeout;
            deadline.grace = Some(limits.header_timeout);
        }
    }

    // No `cleanup`: the app is shared by every listener, and Pingora's (closing every parked
    // keep-alive connection for good) would end all of them when ONE listener closes (a reload
    // removing a `listen` address). The server calls `http_cleanup` itself at shutdown.
}

impl<SV> Edge<HttpProxy<SV>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    /// An HTTP/2 connection (ALPN h2): Pingora's own h2 loop (its bounded defaults: 100
    /// concurrent streams, 64 KiB header lists; each stream is one `process_new_http`), under
    /// ten's limits: the client's connection preface is due `header_timeout` after the
    /// handshake (the connection is cut otherwise), and a connection with no open stream is
    /// closed after `keepalive_timeout` (Pingora's `h2_idle_timeout`, which Pingora reads
    /// from the app's options: [`H2Conn`] carries this connection's), which also bounds a
    /// stream whose HEADERS never complete.
    async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        limits: EdgeLimits,
    ) -> Option<Stream> {
        let mut deadline = HeadDeadline {
            at: Instant::now() + limits.header_timeout,
            grace: None,
            fd: -1,
            registered: None,
        };
        let timer = tokio::time::sleep_until(deadline.at);
        tokio::pin!(timer);
        let watched: Stream = Box::new(PrefaceWatch {
            inner: stream,
            read: 0,
        });
        let app = Arc::new(H2Conn {
            options: h2_server_options_on(self.app.server_options(), &limits),
            app: self.app.clone(),
        });
        let conn = ServerApp::process_new(&app, watched, shutdown);
        if with_head_deadline(conn, &mut deadline, timer.as_mut())
            .await
            .is_none()
        {
            tracing::debug!(
                header_timeout = ?limits.header_timeout,
                "no HTTP/2 connection preface in time: connection closed"
            );
        }
        None
    }
}

/// Pingora's HTTP server options for ten's proxy: an idle HTTP/2 connection closes after
/// `keepalive_timeout`, as an HTTP/1 one does. (ten sets no `H2Options`: Pingora's bounded
/// defaults apply.)
pub fn h2_server_options(limits: &EdgeLimits) -> HttpServerOptions {
    h2_server_options_on(None, limits)
}

/// `base` (the app's options) with the idle timeout of `limits`.
fn h2_server_options_on(
    base: Option<&HttpServerOptions>,
    limits: &EdgeLimits,
) -> HttpServerOptions {
    let mut o = base.cloned().unwrap_or_default();
    o.h2_idle_timeout = Some(limits.keepalive_timeout);
    o
}

/// One HTTP/2 connection's view of the proxy app: the app itself, with server options carrying
/// the connection's own `keepalive_timeout` (Pingora reads `h2_idle_timeout` from the app, and
/// the proxy app is shared and fixed at start). One allocation per h2 connection.
struct H2Conn<A> {
    app: Arc<A>,
    options: HttpServerOptions,
}

#[async_trait]
impl<SV> HttpServerApp for H2Conn<HttpProxy<SV>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.app.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.app.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// The HTTP/2 client connection preface's length (`PRI * HTTP/2.0...`).
const H2_PREFACE_LEN: usize = 24;

/// A stream that reports (through [`head_read`], in the poll of the connection's future) once
/// the HTTP/2 connection preface has been read from it; otherwise passes everything through.
#[derive(Debug)]
struct PrefaceWatch {
    inner: Stream,
    read: usize,
}

impl tokio::io::AsyncRead for PrefaceWatch {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.read < H2_PREFACE_LEN {
            self.read += buf.filled().len() - before;
            if self.read >= H2_PREFACE_LEN {
                head_read();
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for PrefaceWatch {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for PrefaceWatch {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for PrefaceWatch {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for PrefaceWatch {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for PrefaceWatch {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for PrefaceWatch {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for PrefaceWatch {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for PrefaceWatch {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A deadline `secs` from now with no grace (fd -1: nothing ever waits on it).
    fn due_in(secs: u64) -> HeadDeadline {
        HeadDeadline {
            at: Instant::now() + Duration::from_secs(secs),
            grace: None,
            fd: -1,
            registered: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_applies_until_the_head_is_read_only() {
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        // Never reads a head: cut at the deadline (the timer armed later is moved earlier).
        let never = Box::pin(std::future::pending::<()>());
        assert_eq!(
            with_head_deadline(never, &mut due_in(1), timer.as_mut()).await,
            None
        );
        // Reads its head at once, then runs past the deadline: finishes.
        let slow = Box::pin(async {
            head_read();
            tokio::time::sleep(Duration::from_secs(5)).await;
            7
        });
        assert_eq!(
            with_head_deadline(slow, &mut due_in(1), timer.as_mut()).await,
            Some(7)
        );
        // Reads its head late (after the deadline passed): cut.
        let late = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            head_read();
            7
        });
        assert_eq!(
            with_head_deadline(late, &mut due_in(1), timer.as_mut()).await,
            None
        );
        // The flag does not leak out of the poll.
        assert!(!HEAD_READ.with(Cell::get));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_fires_early_is_moved_to_the_deadline_not_obeyed() {
        // Armed for 1 s (an earlier request's deadline); this request's head is due in 5 s and
        // is read at 3 s: served.
        let timer = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(timer);
        let at_3s = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            head_read();
            7
        });
        assert_eq!(
            with_head_deadline(at_3s, &mut due_in(5), timer.as_mut()).await,
            Some(7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_deadline_gives_a_client_that_is_sending_one_grace() {
        // A connected pair: the "client" has sent a byte ten has not read.
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut theirs, b"G").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ours);
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut deadline = HeadDeadline {
            at: Instant::now() + Duration::from_secs(1),
            grace: Some(Duration::from_secs(10)),
            fd,
            registered: None,
        };
        let head_at_5s = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            head_read();
            7
        });
        assert_eq!(
            with_head_deadline(head_at_5s, &mut deadline, timer.as_mut()).await,
            Some(7),
            "bytes waiting at the idle deadline: header_timeout more"
        );
        // Nothing waiting (the byte read): cut at the idle deadline.
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut &ours, &mut b).unwrap();
        let mut deadline = HeadDeadline {
            at: Instant::now() + Duration::from_secs(1),
            grace: Some(Duration::from_secs(10)),
            fd,
            registered: None,
        };
        let never = Box::pin(std::future::pending::<()>());
        assert_eq!(
            with_head_deadline(never, &mut deadline, timer.as_mut()).await,
            None
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_filter_waits_while_max_connections_are_open() {
        for tls in [false, true] {
            let limit = ConnLimit::new(2, tls);
            let accept = |l: &Arc<ConnLimit>| {
                let l = l.clone();
                tokio::spawn(async move { l.should_accept(None).await })
            };
            let mut open = Vec::new();
            for _ in 0..2 {
                assert!(accept(&limit).await.unwrap());
                open.push(limit.enter());
            }
            assert_eq!(limit.open(), 2);
            let third = accept(&limit);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                !third.is_finished(),
                "a third connection waits (tls: {tls})"
            );
            drop(open.pop());
            assert!(
                third.await.unwrap(),
                "accepted once one closed (tls: {tls})"
            );
            let _third = limit.enter();
            assert_eq!(limit.open(), 2);
        }
    }

    /// Issue 20: `max_connections` changed by a reload holds for the listener as it serves: a
    /// lower limit holds new connections back (none is cut), a higher one lets the waiting
    /// accept go at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_max_applies_to_a_listener_in_place() {
        let limit = ConnLimit::new(3, false);
        let accept = |l: &Arc<ConnLimit>| {
            let l = l.clone();
            tokio::spawn(async move { l.should_accept(None).await })
        };
        let mut open = Vec::new();
        for _ in 0..2 {
            assert!(accept(&limit).await.unwrap());
            open.push(limit.enter());
        }
        limit.set_max(1);
        assert_eq!((limit.open(), limit.max()), (2, 1), "open ones stay");
        let waiting = accept(&limit);
        drop(open.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "2 -> 1 open: still at the new limit"
        );
        limit.set_max(5);
        assert!(waiting.await.unwrap(), "a higher limit lets it in");
        assert_eq!(limit.open(), 2);
    }
}
