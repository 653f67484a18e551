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

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, ProxyHttp};
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

/// The proxy app with ten's connection limits; `A` is Pingora's [`HttpProxy`].
pub struct Edge<A> {
    app: Arc<A>,
    header_timeout: Duration,
    keepalive_secs: u64,
}

impl<SV> Edge<HttpProxy<SV>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    pub fn new(app: Arc<HttpProxy<SV>>, limits: EdgeLimits) -> Self {
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
}
