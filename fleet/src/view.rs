//! [`FleetView`]: the one snapshot the fleet publishes (servers with their runtime health and
//! resolved address, and tenants), with [`Status`] and [`ServerState`], and the failover choice
//! [`FleetView::target`] the router makes on it.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::{Server, Tenant};

/// A fleet server's address as the fleet's health loop last resolved it, for the router: a
/// failed resolution is never published (the previous good address stays, or none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    pub addr: SocketAddr,
    /// The url's scheme is https.
    pub tls: bool,
    /// The url's host, without IPv6 brackets: the SNI name for TLS.
    pub host: String,
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
    /// Where its url resolved to (None until the first good resolution). Not in the API's JSON.
    #[serde(skip)]
    pub resolved: Option<ServerAddr>,
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
    pub fn new(servers: Vec<ServerState>, tenants: Vec<Tenant>, generation: u64) -> Self {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tenant_host;

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
            resolved: None,
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
