//! [`FleetView`]: the one snapshot the fleet publishes (servers with their runtime health and
//! resolved address, tenants, and failover placements), with [`Status`] and [`ServerState`],
//! and where a tenant is served on it: [`FleetView::serve`]. Which server a placement picks is
//! decided by the placement component (`placement.rs`), not here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::{PlaceState, Placement, Server, Tenant};

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
///
/// Lookups by server id, tenant id and domain are hash lookups (indexes built once per
/// snapshot). A publish that changes only health (a routine tick) shares the previous
/// snapshot's tenants and their indexes (one `Arc`), so it costs O(servers), not O(tenants);
/// its [`FleetView::routing`] stays the same when nothing that routes changed, so the table is
/// not rebuilt.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    pub servers: Vec<ServerState>,
    pub tenants: Arc<Vec<Tenant>>,
    /// Bumped on every publish.
    pub generation: u64,
    /// The generation of the last publish that changed what routes (servers' identity, status
    /// or address, tenants, placements): equal routing generations route the same.
    pub routing: u64,
    /// Failover placements by tenant id.
    pub placements: HashMap<String, Placement>,
    /// Tenant indexes, shared by the snapshots with the same tenants.
    index: Arc<TenantIndex>,
    /// Server index by id.
    server_ids: HashMap<String, usize>,
    /// How many servers are up.
    up: usize,
}

/// Tenant positions by (lower-case) domain, by id and by home server.
#[derive(Debug, Default)]
struct TenantIndex {
    domains: HashMap<String, usize>,
    ids: HashMap<String, usize>,
    by_home: HashMap<String, Vec<usize>>,
}

/// Where a tenant's requests go now ([`FleetView::serve`]).
#[derive(Debug)]
pub enum Served<'a> {
    /// To this server: its home, or the server it is placed on while home is offline.
    At(&'a ServerState),
    /// Home offline; a server is being chosen or is starting the instance: requests wait.
    Placing,
    /// Nowhere (a 503 saying why).
    Unavailable(String),
}

impl PartialEq for Served<'_> {
    /// Two `At` are equal when they name the same server.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Served::At(a), Served::At(b)) => a.server.id == b.server.id,
            (Served::Placing, Served::Placing) => true,
            (Served::Unavailable(a), Served::Unavailable(b)) => a == b,
            _ => false,
        }
    }
}

impl FleetView {
    pub fn new(servers: Vec<ServerState>, tenants: Vec<Tenant>, generation: u64) -> Self {
        let index = TenantIndex {
            domains: tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.domain.clone(), i))
                .collect(),
            ids: tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.id.clone(), i))
                .collect(),
            by_home: HashMap::new(),
        };
        let mut index = index;
        for (i, t) in tenants.iter().enumerate() {
            index.by_home.entry(t.server.clone()).or_default().push(i);
        }
        FleetView::with_tenants(servers, Arc::new(tenants), Arc::new(index), generation)
    }

    /// A snapshot with `servers` and the same tenants (and tenant indexes) as `self`.
    pub fn with_servers(&self, servers: Vec<ServerState>, generation: u64) -> Self {
        FleetView::with_tenants(
            servers,
            self.tenants.clone(),
            self.index.clone(),
            generation,
        )
    }

    fn with_tenants(
        servers: Vec<ServerState>,
        tenants: Arc<Vec<Tenant>>,
        index: Arc<TenantIndex>,
        generation: u64,
    ) -> Self {
        let server_ids = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.server.id.clone(), i))
            .collect();
        let up = servers.iter().filter(|s| s.status.is_up()).count();
        FleetView {
            servers,
            tenants,
            generation,
            routing: generation,
            placements: HashMap::new(),
            index,
            server_ids,
            up,
        }
    }

    /// The same view with these placements.
    pub fn with_placements(mut self, placements: impl IntoIterator<Item = Placement>) -> Self {
        self.placements = placements
            .into_iter()
            .map(|p| (p.tenant.clone(), p))
            .collect();
        self
    }

    /// Whether `self` routes as `prev` does: same tenants (the same shared list), same
    /// placements, and servers with the same identity, status and address.
    pub fn routes_like(&self, prev: &FleetView) -> bool {
        Arc::ptr_eq(&self.tenants, &prev.tenants)
            && self.placements == prev.placements
            && self.servers.len() == prev.servers.len()
            && self.servers.iter().zip(&prev.servers).all(|(a, b)| {
                a.status == b.status && a.resolved == b.resolved && a.server == b.server
            })
    }

    /// The positions in `tenants` of the tenants that need the placement component: those
    /// whose home is offline (or not in the view) and those with a placement, in `tenants`
    /// order. Proportional to them, not to all tenants.
    pub(crate) fn placement_candidates(&self) -> Vec<usize> {
        let mut todo: Vec<usize> = self
            .index
            .by_home
            .iter()
            .filter(|(home, _)| {
                self.server(home)
                    .is_none_or(|s| s.status == Status::Offline)
            })
            .flat_map(|(_, list)| list.iter().copied())
            .chain(
                self.placements
                    .keys()
                    .filter_map(|id| self.index.ids.get(id).copied()),
            )
            .collect();
        todo.sort_unstable();
        todo.dedup();
        todo
    }

    /// The positions in `tenants` of the tenants whose home is server `id`: one hash lookup.
    pub fn homed_on(&self, id: &str) -> &[usize] {
        self.index.by_home.get(id).map_or(&[], Vec::as_slice)
    }

    /// The position in `tenants` of tenant `id`.
    pub fn tenant_position(&self, id: &str) -> Option<usize> {
        self.index.ids.get(id).copied()
    }

    /// How many servers are up (online or degraded).
    pub fn servers_up(&self) -> usize {
        self.up
    }

    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.index.ids.get(id).and_then(|&i| self.tenants.get(i))
    }

    pub fn server(&self, id: &str) -> Option<&ServerState> {
        self.server_ids.get(id).and_then(|&i| self.servers.get(i))
    }

    /// The tenant whose domain is `host` (lower-case, without port): one hash lookup.
    pub fn tenant_by_domain(&self, host: &str) -> Option<&Tenant> {
        self.index
            .domains
            .get(host)
            .and_then(|&i| self.tenants.get(i))
    }

    /// Where a tenant's requests go: its home unless home is offline (a home still `unknown`,
    /// not checked yet, is used); then, with `failover`, where the tenant is placed once that
    /// placement is ready. Home offline without a ready placement: wait while one is being
    /// made (or will be: another server is up), else unavailable.
    pub fn serve(&self, tenant: &Tenant, failover: bool) -> Served<'_> {
        let home = self.server(&tenant.server);
        if let Some(h) = home.filter(|h| h.status != Status::Offline) {
            return Served::At(h);
        }
        if !failover {
            return Served::Unavailable(format!(
                "its server {} is offline (failover is off)",
                tenant.server
            ));
        }
        match self.placements.get(&tenant.id) {
            Some(p) if p.server != tenant.server => match p.state {
                PlaceState::Ready => match self.server(&p.server) {
                    Some(s) if s.status.is_up() => Served::At(s),
                    // Its server went down too: the placement component places it again.
                    _ => self.placing_or_none(tenant),
                },
                PlaceState::Placing => Served::Placing,
                PlaceState::Failed => Served::Unavailable(format!(
                    "its server {} is offline and placing it on {} failed: {}",
                    tenant.server,
                    p.server,
                    p.error.as_deref().unwrap_or("unknown error")
                )),
            },
            _ => self.placing_or_none(tenant),
        }
    }

    /// Placing when some other server is up (one will be chosen), else unavailable.
    /// Its home is offline (or gone) here, so it is not among the servers up: O(1).
    fn placing_or_none(&self, tenant: &Tenant) -> Served<'_> {
        if self.up > 0 {
            Served::Placing
        } else {
            Served::Unavailable(format!(
                "its server {} is offline and no other server is online",
                tenant.server
            ))
        }
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
    fn serve_goes_home_then_waits_for_the_placement_then_serves_it() {
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
        let at = |served: Served<'_>| match served {
            Served::At(s) => s.server.id.clone(),
            other => format!("{other:?}"),
        };
        let v = view(&[("s1", Status::Unknown), ("s2", Status::Online)]);
        assert_eq!(at(v.serve(&t, true)), "s1", "unknown home is used");
        assert_eq!(v.tenant_by_domain("acme.com"), Some(&t));
        assert_eq!(v.tenant_by_domain("other.com"), None);
        let v = view(&[("s1", Status::Degraded), ("s2", Status::Online)]);
        assert_eq!(at(v.serve(&t, true)), "s1", "degraded home is used");

        // Home offline: wait (another server is up) until the placement is ready.
        let v = view(&[("s1", Status::Offline), ("s2", Status::Online)]);
        assert_eq!(v.serve(&t, true), Served::Placing);
        assert!(
            matches!(v.serve(&t, false), Served::Unavailable(ref m) if m.contains("failover is off"))
        );
        let placed = |state: PlaceState, error: Option<&str>| Placement {
            tenant: "acme".into(),
            server: "s2".into(),
            spawned: true,
            state,
            error: error.map(str::to_string),
            placed_ms: 1,
        };
        let v = view(&[("s1", Status::Offline), ("s2", Status::Online)]);
        let v = v.with_placements([placed(PlaceState::Placing, None)]);
        assert_eq!(v.serve(&t, true), Served::Placing);
        let v = v.with_placements([placed(PlaceState::Ready, None)]);
        assert_eq!(at(v.serve(&t, true)), "s2");
        let v = v.with_placements([placed(PlaceState::Failed, Some("HTTP 500"))]);
        assert!(
            matches!(v.serve(&t, true), Served::Unavailable(ref m) if m.contains("on s2 failed: HTTP 500")),
            "{:?}",
            v.serve(&t, true)
        );
        // A ready placement whose server went down too: placed again (wait), or nowhere.
        let v = view(&[
            ("s1", Status::Offline),
            ("s2", Status::Offline),
            ("s3", Status::Online),
        ])
        .with_placements([placed(PlaceState::Ready, None)]);
        assert_eq!(v.serve(&t, true), Served::Placing);
        let v = view(&[("s1", Status::Offline), ("s2", Status::Offline)])
            .with_placements([placed(PlaceState::Ready, None)]);
        assert!(
            matches!(v.serve(&t, true), Served::Unavailable(ref m) if m.contains("no other server is online"))
        );
        // Home back: home again, whatever the placement says.
        let v = view(&[("s1", Status::Online), ("s2", Status::Online)])
            .with_placements([placed(PlaceState::Ready, None)]);
        assert_eq!(at(v.serve(&t, true)), "s1");
        assert_eq!(
            tenant_host(&t, &v.servers[0].server),
            "acme.app.s1.example.com"
        );
    }

    #[test]
    fn placement_candidates_are_the_tenants_of_offline_homes_and_the_placed_ones() {
        let t = |id: &str, server: &str| Tenant {
            id: id.into(),
            domain: format!("{id}.com"),
            server: server.into(),
            process: "app".into(),
            instance: id.into(),
        };
        let tenants = vec![
            t("a1", "s1"),
            t("a2", "s2"),
            t("a3", "s1"),
            t("a4", "s2"),
            t("a5", "s3"),
        ];
        let servers = vec![
            state("s1", Status::Online),
            state("s2", Status::Offline),
            state("s3", Status::Online),
        ];
        let v = FleetView::new(servers, tenants, 1);
        assert_eq!(v.placement_candidates(), [1, 3], "the tenants of s2 only");
        let v = v.with_placements([Placement {
            tenant: "a5".into(),
            server: "s1".into(),
            spawned: false,
            state: PlaceState::Ready,
            error: None,
            placed_ms: 1,
        }]);
        assert_eq!(v.placement_candidates(), [1, 3, 4], "and the placed one");
        assert_eq!(v.tenant("a4").unwrap().server, "s2");
        assert_eq!(v.server("s3").unwrap().status, Status::Online);
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
