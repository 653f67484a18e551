//! The fleet: other tenement servers and the tenants they are home to.
//!
//! - [`FleetStore`]: servers and tenants in SQLite, with foreign keys (a server with tenants
//!   cannot be removed).
//! - [`Fleet`]: the health loop. It checks every server concurrently and publishes ONE
//!   snapshot, [`FleetView`] (servers with their status + tenants), through a watch channel:
//!   the router reads a consistent pair, never servers from one write and tenants from another.
//! - [`webhook`]: one POST per outage once a server has been offline for `webhook_after`.
//! - [`aggregate`]: every server's `/metrics` and `/api/logs`, merged.
//!
//! This crate knows nothing of the proxy or the supervisor: the root package wires it in.

pub mod aggregate;
mod health;
mod http;
mod prom;
mod store;
mod validate;
pub mod webhook;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testing;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use aggregate::{fetch_all, merge_logs, merge_metrics};
pub use health::{Events, Fleet};
pub use store::{FleetStore, NewServer, Server, Tenant};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad input (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// Unknown server or tenant (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// Duplicate id or domain, server still in use (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The database failed (HTTP 500).
    #[error("fleet store: {0}")]
    Db(#[from] rusqlite::Error),
}

/// A server's health as seen by the loop. `Unknown` until its first check.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unknown,
    Online,
    Degraded,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Online => "online",
            Status::Degraded => "degraded",
            Status::Offline => "offline",
        }
    }

    /// Answers requests: online or degraded (`tenement_fleet_server_up` = 1).
    pub fn is_up(self) -> bool {
        matches!(self, Status::Online | Status::Degraded)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server and its runtime health (not persisted).
#[derive(Serialize, Clone, Debug)]
pub struct ServerState {
    #[serde(flatten)]
    pub server: Server,
    pub status: Status,
    /// The last successful check, RFC 3339 with milliseconds.
    pub last_seen: Option<String>,
    pub latency_ms: Option<u64>,
    /// When it went offline (None unless offline).
    pub offline_since: Option<String>,
    pub consecutive_failures: u32,
    /// Why the last failed check failed (cleared by a success).
    pub last_error: Option<String>,
}

/// One consistent snapshot of the fleet: servers with their health, and tenants.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    pub servers: Vec<ServerState>,
    pub tenants: Vec<Tenant>,
    /// Bumped on every publish.
    pub generation: u64,
    /// Tenant index by (lower-case) domain, built once per snapshot.
    domains: HashMap<String, usize>,
}

impl FleetView {
    pub(crate) fn new(servers: Vec<ServerState>, tenants: Vec<Tenant>, generation: u64) -> Self {
        let domains = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.domain.clone(), i))
            .collect();
        FleetView {
            servers,
            tenants,
            generation,
            domains,
        }
    }

    pub fn server(&self, id: &str) -> Option<&ServerState> {
        self.servers.iter().find(|s| s.server.id == id)
    }

    /// The tenant whose domain is `host` (lower-case, without port): one hash lookup.
    pub fn tenant_by_domain(&self, host: &str) -> Option<&Tenant> {
        self.domains.get(host).and_then(|&i| self.tenants.get(i))
    }

    /// Where a tenant's requests go: its home unless home is offline; then, with `failover`,
    /// another server that is up, preferring the home's region (online before degraded; by
    /// id within a rank); None = 503. A home still `unknown` (not checked yet) is used.
    pub fn target(&self, tenant: &Tenant, failover: bool) -> Option<&ServerState> {
        let home = self.server(&tenant.server);
        if let Some(h) = home.filter(|h| h.status != Status::Offline) {
            return Some(h);
        }
        if !failover {
            return None;
        }
        let region = home.and_then(|h| h.server.region.as_deref());
        // Lower rank first: same region online, same region degraded, other online, other degraded.
        let rank = |s: &ServerState| {
            let other_region = u8::from(region.is_none() || s.server.region.as_deref() != region);
            let degraded = u8::from(s.status == Status::Degraded);
            other_region * 2 + degraded
        };
        self.servers
            .iter()
            .filter(|s| s.server.id != tenant.server && s.status.is_up())
            .min_by_key(|s| (rank(s), s.server.id.clone()))
    }
}

/// The Host header for a tenant's instance on `server`: `{instance}.{process}.{domain}`.
pub fn tenant_host(tenant: &Tenant, server: &Server) -> String {
    format!(
        "{}.{}.{}",
        tenant.instance.to_ascii_lowercase(),
        tenant.process,
        server.domain
    )
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub use tenement_conf::rfc3339_ms;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(id: &str, status: Status) -> ServerState {
        ServerState {
            server: Server {
                id: id.into(),
                url: format!("http://{id}.example.com"),
                domain: format!("{id}.example.com"),
                region: None,
                token: Some("secret".into()),
            },
            status,
            last_seen: None,
            latency_ms: None,
            offline_since: None,
            consecutive_failures: 0,
            last_error: None,
        }
    }

    #[test]
    fn target_prefers_home_then_fails_over_to_an_up_server() {
        let t = Tenant {
            id: "acme".into(),
            domain: "acme.com".into(),
            server: "s1".into(),
            process: "app".into(),
            instance: "Acme".into(),
        };
        let view = |statuses: &[(&str, Status)]| {
            FleetView::new(
                statuses.iter().map(|(id, s)| state(id, *s)).collect(),
                vec![t.clone()],
                1,
            )
        };
        let v = view(&[("s1", Status::Unknown), ("s2", Status::Online)]);
        assert_eq!(v.target(&t, true).unwrap().server.id, "s1");
        assert_eq!(v.tenant_by_domain("acme.com"), Some(&t));
        assert_eq!(v.tenant_by_domain("other.com"), None);
        let v = view(&[
            ("s1", Status::Offline),
            ("s2", Status::Degraded),
            ("s3", Status::Online),
        ]);
        assert_eq!(v.target(&t, true).unwrap().server.id, "s3");
        assert!(v.target(&t, false).is_none());
        let v = view(&[("s1", Status::Offline), ("s2", Status::Offline)]);
        assert!(v.target(&t, true).is_none());
        assert_eq!(
            tenant_host(&t, &v.servers[0].server),
            "acme.app.s1.example.com"
        );
    }

    #[test]
    fn failover_prefers_the_home_region() {
        let t = Tenant {
            id: "acme".into(),
            domain: "acme.com".into(),
            server: "eu1".into(),
            process: "app".into(),
            instance: "acme".into(),
        };
        let in_region = |id: &str, region: &str, status| {
            let mut s = state(id, status);
            s.server.region = Some(region.into());
            s
        };
        let v = FleetView::new(
            vec![
                in_region("eu1", "eu", Status::Offline),
                in_region("a-us", "us", Status::Online),
                in_region("eu2", "eu", Status::Degraded),
                in_region("eu3", "eu", Status::Online),
            ],
            vec![t.clone()],
            1,
        );
        assert_eq!(
            v.target(&t, true).unwrap().server.id,
            "eu3",
            "same region, online"
        );
        let v = FleetView::new(
            vec![
                in_region("eu1", "eu", Status::Offline),
                in_region("a-us", "us", Status::Online),
                in_region("eu2", "eu", Status::Degraded),
            ],
            vec![t.clone()],
            1,
        );
        assert_eq!(
            v.target(&t, true).unwrap().server.id,
            "eu2",
            "same region beats online elsewhere"
        );
    }

    #[test]
    fn server_state_json_flattens_the_server_and_hides_the_token() {
        let v = serde_json::to_value(state("s1", Status::Degraded)).unwrap();
        assert_eq!(v["id"], "s1");
        assert_eq!(v["status"], "degraded");
        assert!(v.get("token").is_none());
        assert!(v["last_seen"].is_null());
    }
}
