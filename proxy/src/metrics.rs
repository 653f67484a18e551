//! Hot-path metrics (SPEC §10): request counts, latency, upstream errors, in-flight requests.
//!
//! No label lookup per request: each instance carries its own handles, resolved the first time
//! a status (or error kind) is seen and cached in a `OnceLock` (so 10,000 idle tenants do not
//! create 200,000 series up front). Handles live in [`crate::InstanceStats`], which survives
//! table swaps; [`InstanceMetrics::remove`] deletes an instance's series when it goes away.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Buckets from 0.5 ms to 10 s: the range a proxy's upstream latency lives in.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Codes counted under their own label; everything else by class ("2xx", ...).
const CODES: &[u16] = &[
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 429,
    499, 500, 502, 503, 504,
];
const CLASSES: &[&str] = &["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const SLOTS: usize = CODES.len() + CLASSES.len();

/// Upstream error kinds.
pub const KINDS: &[&str] = &["connect", "timeout", "broken", "other"];

fn slot(code: u16) -> (usize, String) {
    match CODES.iter().position(|c| *c == code) {
        Some(i) => (i, code.to_string()),
        None => {
            let c = match code {
                100..=199 => 0,
                200..=299 => 1,
                300..=399 => 2,
                400..=499 => 3,
                500..=599 => 4,
                _ => 5,
            };
            (CODES.len() + c, CLASSES[c].to_string())
        }
    }
}

/// The metric families of the hot path, in their own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    in_flight: IntGaugeVec,
    access_log_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tenement_requests_total",
                "Requests proxied, by instance and response status",
            ),
            &["process", "id", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tenement_request_duration_seconds",
                "Time from request start to response end",
            )
            .buckets(BUCKETS.to_vec()),
            &["process", "id"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tenement_upstream_errors_total",
                "Upstream failures by kind (connect, timeout, broken, other)",
            ),
            &["process", "id", "kind"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "tenement_in_flight_requests",
                "Requests in flight, by process",
            ),
            &["process"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let access_log_dropped = IntCounter::new(
            "tenement_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind (its queue was full)",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        Ok(Arc::new(Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            in_flight,
            access_log_dropped,
        }))
    }

    /// Counts access log lines dropped (exposed from the start, at 0).
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The in-flight gauge of a process (resolved once per process).
    pub fn process_in_flight(&self, process: &str) -> IntGauge {
        self.in_flight.with_label_values(&[process])
    }

    /// Lazily-resolved handles for one instance.
    pub fn instance(self: &Arc<Self>, process: &str, instance: &str) -> InstanceMetrics {
        InstanceMetrics {
            metrics: self.clone(),
            process: process.into(),
            instance: instance.into(),
            status: std::array::from_fn(|_| OnceLock::new()),
            duration: OnceLock::new(),
            errors: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

pub struct InstanceMetrics {
    metrics: Arc<Metrics>,
    process: Box<str>,
    instance: Box<str>,
    status: [OnceLock<(IntCounter, String)>; SLOTS],
    duration: OnceLock<Histogram>,
    errors: [OnceLock<IntCounter>; 4],
}

impl std::fmt::Debug for InstanceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InstanceMetrics({}:{})", self.process, self.instance)
    }
}

impl InstanceMetrics {
    /// One finished request.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let (i, label) = slot(status);
        if let Some(cell) = self.status.get(i) {
            let (counter, _) = cell.get_or_init(|| {
                let c = self.metrics.requests.with_label_values(&[
                    &*self.process,
                    &*self.instance,
                    &label,
                ]);
                (c, label)
            });
            counter.inc();
        }
        self.duration
            .get_or_init(|| {
                self.metrics
                    .duration
                    .with_label_values(&[&*self.process, &*self.instance])
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One upstream failure of `kind` (one of [`KINDS`]).
    pub fn error(&self, kind: &str) {
        let i = KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(KINDS.len() - 1);
        if let Some(cell) = self.errors.get(i) {
            cell.get_or_init(|| {
                self.metrics.upstream_errors.with_label_values(&[
                    &*self.process,
                    &*self.instance,
                    KINDS[i],
                ])
            })
            .inc();
        }
    }

    /// Delete every series of this instance (it was removed).
    pub fn remove(&self) {
        let m = &self.metrics;
        for cell in &self.status {
            if let Some((_, label)) = cell.get() {
                let _ = m
                    .requests
                    .remove_label_values(&[&*self.process, &*self.instance, label]);
            }
        }
        if self.duration.get().is_some() {
            let _ = m
                .duration
                .remove_label_values(&[&*self.process, &*self.instance]);
        }
        for (i, cell) in self.errors.iter().enumerate() {
            if cell.get().is_some() {
                let _ = m.upstream_errors.remove_label_values(&[
                    &*self.process,
                    &*self.instance,
                    KINDS[i],
                ]);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_code_or_class_and_removes() {
        let m = Metrics::new().unwrap();
        let im = m.instance("api", "prod");
        im.observe(200, Duration::from_millis(3));
        im.observe(200, Duration::from_millis(3));
        im.observe(418, Duration::from_millis(1));
        im.error("timeout");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&m.registry().gather())
            .unwrap();
        assert!(
            text.contains("tenement_requests_total{id=\"prod\",process=\"api\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("status=\"4xx\"} 1"), "{text}");
        assert!(text.contains(
            "tenement_upstream_errors_total{id=\"prod\",kind=\"timeout\",process=\"api\"} 1"
        ));
        assert!(text.contains(
            "tenement_request_duration_seconds_bucket{id=\"prod\",process=\"api\",le=\"0.005\"} 3"
        ));
        // Prometheus owns `instance` and `job` on every target (SPEC §10).
        assert!(
            !text.contains("instance=") && !text.contains("job="),
            "{text}"
        );
        im.remove();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&m.registry().gather())
            .unwrap();
        assert!(!text.contains("prod"), "{text}");
    }
}
