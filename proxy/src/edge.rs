//! The proxy's client connections: [`Edge`], the Pingora app that runs each accepted
//! connection's HTTP/1 request loop around [`HttpProxy`] with ten's limits (SPEC §14): the
//! whole request head within `header_timeout`, an idle keep-alive connection closed after
//! `keepalive_timeout`.
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
//! upstream, response) is not limited by it.
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
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, ProxyHttp};
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

/// Open connections of one listener, at most `max` (see the module doc).
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    max: usize,
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
            max: max.max(1),
            at_accept: !tls,
            freed: Notify::new(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Count one more if under the limit.
    fn try_take(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
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
                self.open() < self.max
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
    header_timeout: Duration,
    keepalive_secs: u64,
    /// The listener's `max_connections`.
    limit: Option<Arc<ConnLimit>>,
}

impl<SV> Edge<HttpProxy<SV>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    /// `limit`: the listener's open connections (also its connection filter).
    pub fn new(app: Arc<HttpProxy<SV>>, limits: EdgeLimits, limit: Option<Arc<ConnLimit>>) -> Self {
        // Pingora counts keep-alive in whole seconds, 0 meaning "forever": round up.
        let keepalive_secs = limits
            .keepalive_timeout
            .as_secs()
            .saturating_add(u64::from(limits.keepalive_timeout.subsec_nanos() > 0))
            .max(1);
        Edge {
            app,
            header_timeout: limits.header_timeout,
            keepalive_secs,
            limit,
        }
    }
}

/// Drive `fut` (one request) to its end, or give up (None) when `deadline` passes before the
/// proxy has read the request head. After the head, `fut` runs unlimited by it.
async fn with_head_deadline<F>(mut fut: F, deadline: Instant) -> Option<F::Output>
where
    F: Future + Unpin,
{
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
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
        // The timer is only registered while a head is still awaited.
        if !head && sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
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
        // ten offers no HTTP/2 (no h2c, no ALPN): should a stream negotiate it, Pingora's own
        // loop serves it (its h2 idle timeout applies).
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let keepalive = (!*shutdown.borrow()).then_some(self.keepalive_secs);
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(keepalive);
        // The first head is due header_timeout after the accept; a next one on a kept-alive
        // connection may first idle for keepalive_timeout (Pingora closes it quietly then).
        let mut deadline = Instant::now() + self.header_timeout;
        loop {
            let request = self.app.process_new_http(session, shutdown);
            let Some(reused) = with_head_deadline(request, deadline).await else {
                tracing::debug!(
                    timeout = ?self.header_timeout,
                    "request head not complete within header_timeout: connection closed"
                );
                return None;
            };
            let (stream, settings) = reused?.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            // Pingora carries "forever" over from an HTTP/1.1 request: ten's timeout instead.
            if session.get_keepalive().is_some() {
                session.set_keepalive(Some(self.keepalive_secs));
            }
            deadline =
                Instant::now() + Duration::from_secs(self.keepalive_secs) + self.header_timeout;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_applies_until_the_head_is_read_only() {
        // Never reads a head: cut at the deadline.
        let never = Box::pin(std::future::pending::<()>());
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(with_head_deadline(never, deadline).await, None);
        // Reads its head at once, then runs past the deadline: finishes.
        let slow = Box::pin(async {
            head_read();
            tokio::time::sleep(Duration::from_secs(5)).await;
            7
        });
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(with_head_deadline(slow, deadline).await, Some(7));
        // Reads its head late (after the deadline passed): cut.
        let late = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            head_read();
            7
        });
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(with_head_deadline(late, deadline).await, None);
        // The flag does not leak out of the poll.
        assert!(!HEAD_READ.with(Cell::get));
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
}
