//! The per-request context (`Ctx`) the proxy phases share, the guards that keep the drain
//! counter (`Traffic`) and a process's in-flight gauge right however a request ends, and the
//! shutdown signal (`Closing`) that ends long-lived management streams.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use tokio::sync::Notify;

use crate::plugins::{Chain, Reply};
use crate::table::{Backend, InFlight, Target};
use crate::trust::Client;

/// Counts every request the proxy is handling, for the shutdown drain, and carries the
/// shutdown signal that ends open management streams (an SSE log stream would otherwise hold
/// the drain until `drain_timeout`).
#[derive(Debug, Default)]
pub struct Traffic {
    in_flight: AtomicU64,
    closing: Closing,
}

impl Traffic {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Shutting down: open management streams end (their requests then leave the drain).
    pub fn close(&self) {
        self.closing.close();
    }

    pub(crate) fn closing(&self) -> &Closing {
        &self.closing
    }
}

/// A one-way "stopping" signal: set once, awaited by any number of tasks.
#[derive(Debug, Default)]
pub struct Closing {
    closed: AtomicBool,
    notify: Notify,
}

impl Closing {
    /// Set the signal and wake every task waiting in [`Closing::closed`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Resolves once [`Closing::close`] has been called (registered before the flag is read,
    /// so a close in between is not missed).
    pub async fn closed(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

struct TrafficGuard(Arc<Traffic>);

impl Drop for TrafficGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request state.
pub struct Ctx {
    _traffic: Option<TrafficGuard>,
    /// Sent upstream and back to the client (one shared buffer, cloned by reference count).
    pub(crate) request_id: HeaderValue,
    /// The client's IP address, computed once per request from the TCP peer and
    /// `trusted_proxies` (SPEC §12): what `ip_filter`, `rate_limit`, the auth lockouts and the
    /// access log use. None on a Unix-socket listener.
    pub client_ip: Option<IpAddr>,
    /// The TCP peer and whether it is a trusted proxy (for the `X-Forwarded-*` headers).
    pub(crate) peer: Client,
    pub(crate) target: Option<Target>,
    /// Bytes of the path to strip (a matched `strip_prefix` route).
    pub(crate) strip: usize,
    pub(crate) backend: Option<Arc<Backend>>,
    /// Bitmask of pool indexes already tried (connect retries).
    pub(crate) tried: u64,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) max_body: u64,
    pub(crate) body_seen: u64,
    /// A message for the error response, set where the cause is known best.
    pub(crate) error_msg: Option<String>,
    pub(crate) start: Instant,
    /// Counts this request in its process's in-flight gauge until dropped.
    pub(crate) gauge: Option<GaugeGuard>,
    /// The target process's plugins, when it has any.
    pub(crate) plugins: Option<Arc<Chain>>,
    /// A plugin's answer to send instead of an error (a body over a plugin's limit).
    pub(crate) reply: Option<Reply>,
}

/// Holds one count in a process's in-flight gauge; gives it back when dropped.
pub(crate) struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    /// Count one more request in `gauge` until the guard is dropped.
    #[inline]
    pub(crate) fn enter(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Ctx {
    /// A fresh request, counted in `traffic` until the context is dropped.
    #[inline]
    pub(crate) fn new(traffic: &Arc<Traffic>) -> Self {
        traffic.in_flight.fetch_add(1, Ordering::Relaxed);
        Ctx {
            _traffic: Some(TrafficGuard(traffic.clone())),
            request_id: HeaderValue::from_static(""),
            client_ip: None,
            peer: Client::default(),
            target: None,
            strip: 0,
            backend: None,
            tried: 0,
            in_flight: None,
            max_body: u64::MAX,
            body_seen: 0,
            error_msg: None,
            start: Instant::now(),
            gauge: None,
            plugins: None,
            reply: None,
        }
    }
}
