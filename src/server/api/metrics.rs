//! `/metrics`: the hot-path families (kept by the proxy) plus the state families, built fresh
//! from the supervisor's view at each scrape so a removed instance's series disappear.
//!
//! A render costs O(instances × series) (review L3): it runs off the async workers
//! ([`tenement_supervisor::blocking`]) and one at a time. Scrapes that arrive while a render
//! runs wait for it and then share the next one: N concurrent scrapes cost at most two renders,
//! and every answer was rendered after its scrape arrived.

use std::time::Instant;

use bytes::Bytes;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::Api;

/// The last render (when it started, its text), behind the lock that makes renders one at a
/// time.
#[derive(Default)]
pub struct LastRender(tokio::sync::Mutex<Option<(Instant, Bytes)>>);

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Option<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).ok()?;
    r.register(Box::new(g.clone())).ok()?;
    Some(g)
}

impl Api {
    /// The exposition for one scrape: rendered off the workers, one render at a time, shared by
    /// the scrapes that waited for it (see the module header).
    pub(crate) async fn metrics_body(&self) -> Bytes {
        let arrived = Instant::now();
        let mut last = self.rendered.0.lock().await;
        if let Some((started, body)) = &*last {
            if *started >= arrived {
                return body.clone();
            }
        }
        let started = Instant::now();
        let body = Bytes::from(tenement_supervisor::blocking(|| self.metrics_text()));
        *last = Some((started, body.clone()));
        body
    }

    /// The whole exposition, Prometheus text format.
    pub(crate) fn metrics_text(&self) -> String {
        let state = Registry::new();
        let view = self.supervisor.view();
        let up = gauge_vec(
            &state,
            "tenement_instance_up",
            "1 when the instance is healthy",
            &["process", "id"],
        );
        let weight = gauge_vec(
            &state,
            "tenement_instance_weight",
            "Routing weight 0..100",
            &["process", "id"],
        );
        let storage = gauge_vec(
            &state,
            "tenement_instance_storage_bytes",
            "Bytes in the instance's DATA_DIR (when storage_quota_mb is set)",
            &["process", "id"],
        );
        let restarts = IntCounterVec::new(
            Opts::new(
                "tenement_instance_restarts_total",
                "Restarts since the instance was spawned",
            ),
            &["process", "id"],
        )
        .ok()
        .filter(|c| state.register(Box::new(c.clone())).is_ok());
        let states = gauge_vec(
            &state,
            "tenement_instance_state",
            "1 for the state the instance is in (starting, healthy, unhealthy, draining, stopped, failed)",
            &["process", "id", "state"],
        );
        for v in &view.instances {
            let l = [v.name.process.as_str(), v.name.id.as_str()];
            if let Some(g) = &up {
                g.with_label_values(&l)
                    .set(i64::from(v.state == tenement_supervisor::State::Healthy));
            }
            if let Some(g) = &weight {
                g.with_label_values(&l).set(i64::from(v.weight));
            }
            if v.kind == tenement_supervisor::Kind::External {
                continue; // only up and weight: ten does not run it
            }
            if let Some(g) = &states {
                g.with_label_values(&[l[0], l[1], v.state.as_str()]).set(1);
            }
            if let (Some(g), Some(b)) = (&storage, v.storage_bytes) {
                g.with_label_values(&l)
                    .set(i64::try_from(b).unwrap_or(i64::MAX));
            }
            if let Some(c) = &restarts {
                c.with_label_values(&l).inc_by(u64::from(v.restarts));
            }
        }
        if let Some(lines) = IntCounterVec::new(
            Opts::new(
                "tenement_log_lines_total",
                "Output lines captured, by instance",
            ),
            &["process", "id"],
        )
        .ok()
        .filter(|c| state.register(Box::new(c.clone())).is_ok())
        {
            // ten's own lines, and those of instances that still exist (no stale series).
            let exists = |p: &str, i: &str| {
                p == "ten"
                    || view
                        .instances
                        .iter()
                        .any(|v| v.name.process == p && v.name.id == i)
            };
            for ((p, i), n) in self.logs.lines_by_instance() {
                if exists(&p, &i) {
                    lines.with_label_values(&[&p, &i]).inc_by(n);
                }
            }
        }
        if let Ok(dropped) = prometheus::IntCounter::new(
            "tenement_log_lines_dropped_total",
            "Lines dropped because the log store fell behind (never silently)",
        ) {
            dropped.inc_by(self.logs.dropped());
            let _ = state.register(Box::new(dropped));
        }
        if let Some(info) = gauge_vec(
            &state,
            "tenement_build_info",
            "Build information",
            &["version"],
        ) {
            info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        }
        if let Some(fleet) = &self.fleet {
            let up = gauge_vec(
                &state,
                "tenement_fleet_server_up",
                "1 when the fleet server is online or degraded",
                &["server_id"],
            );
            if let Some(up) = up {
                for s in &fleet.view().servers {
                    up.with_label_values(&[s.server.id.as_str()])
                        .set(i64::from(s.status.is_up()));
                }
            }
        }
        let mut families = state.gather();
        if let Some(m) = &self.metrics {
            families.extend(m.registry().gather());
        }
        families.extend(prometheus::gather()); // the process collector (RSS, CPU, fds)
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Register the process collector (RSS, CPU seconds, open fds) once, in the default registry.
pub fn register_process_collector() {
    let pc = prometheus::process_collector::ProcessCollector::for_self();
    let _ = prometheus::register(Box::new(pc));
}
