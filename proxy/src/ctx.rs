//! The per-request context (`Ctx`) the proxy phases share, and the guards that keep the
//! drain counter (`Traffic`) and a process's in-flight gauge right however a request ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;

use crate::plugins::{Chain, Reply};
use crate::table::{Backend, InFlight, Target};

/// Counts every request the proxy is handling, for the shutdown drain.
#[derive(Debug, Default)]
pub struct Traffic {
    in_flight: AtomicU64,
}

impl Traffic {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
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
