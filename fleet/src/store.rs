//! The fleet's store: servers, tenants, failover placements and outages (`fleet_servers`,
//! `fleet_tenants`, `fleet_placements`, `fleet_outages`), in one of two backends behind one
//! [`FleetStore`]:
//! - SQLite (`store/sqlite.rs`, the default): the shared `tenement.db` of one router.
//! - PostgreSQL (`store/pg.rs`, `[fleet] store = "postgres://..."`): shared by several routers;
//!   every write NOTIFYs the others, and a session lock elects the one leader.
//!
//! A tenant's `server` is a foreign key (`ON DELETE RESTRICT`): a server with tenants cannot be
//! removed until they are migrated or removed. A placement (where a tenant is served while its
//! home is offline, see `placement.rs`) is data too, so that another router can take it over;
//! it goes away with its tenant or its server. An outage row records that the webhook for a
//! server's current outage was claimed, so N routers send one. Every input is validated here,
//! once for both backends, so the API and the CLI report the same messages.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tenement_conf::{check_hostname, check_instance_id, check_process_name};

use crate::validate::{check_id, normalize_url};
use crate::FleetError;

mod pg;
mod sqlite;
mod tls;

pub(crate) use pg::PgStore;
pub(crate) use sqlite::SqliteStore;

/// A tenement server of the fleet.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Server {
    pub id: String,
    /// `http(s)://host[:port]`, without a trailing slash.
    pub url: String,
    /// The Host suffix for its instances: `{instance}.{process}.{domain}`.
    pub domain: String,
    pub region: Option<String>,
    /// Its API token, to read its `/api/logs` and `/metrics`. Never serialized.
    #[serde(skip)]
    pub token: Option<String>,
}

/// What `add_server` takes (also the body of `POST /api/servers`).
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

/// A tenant: its domain is served by `process:instance` on its home `server`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    pub domain: String,
    pub server: String,
    pub process: String,
    pub instance: String,
}

/// Where a tenant is served while its home is offline: a decision of the placement component
/// (`placement.rs`), kept in the store.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub tenant: String,
    /// The server the tenant is placed on.
    pub server: String,
    /// The router asked that server to spawn the instance (so it stops it once home is back);
    /// false when the server already ran it (or could not be asked: no token).
    pub spawned: bool,
    pub state: PlaceState,
    /// Why the placement failed (state `failed`).
    pub error: Option<String>,
    /// When the server was chosen (ms since the epoch).
    pub placed_ms: i64,
}

/// A placement's progress.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PlaceState {
    /// Chosen; the instance is being spawned there: requests wait.
    Placing,
    /// Serving.
    Ready,
    /// The spawn failed: requests get a 503 saying why until the next try.
    Failed,
}

impl PlaceState {
    pub fn as_str(self) -> &'static str {
        match self {
            PlaceState::Placing => "placing",
            PlaceState::Ready => "ready",
            PlaceState::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> PlaceState {
        match s {
            "ready" => PlaceState::Ready,
            "placing" => PlaceState::Placing,
            _ => PlaceState::Failed,
        }
    }
}

/// The fleet's store: SQLite (one router) or PostgreSQL (several routers).
pub enum FleetStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// What the store tells the fleet (PostgreSQL only): another router wrote, or the store
/// reconnected (re-read everything); this router leads or not.
pub(crate) struct Feeds {
    /// Bumped on every change made by another router and after every (re)connect.
    pub changes: tokio::sync::watch::Receiver<u64>,
    /// Whether this router holds the leader lock.
    pub leader: tokio::sync::watch::Receiver<bool>,
}

impl FleetStore {
    /// Opens (or creates) the SQLite database file and the fleet's tables.
    pub fn open(db: &Path) -> Result<Self, FleetError> {
        SqliteStore::open(db).map(FleetStore::Sqlite)
    }

    /// The store `[fleet] store` names: a `postgres://` URL, else the SQLite file `db`.
    /// PostgreSQL: connects (at most `connect_timeout`) and applies the migrations; the
    /// sessions reconnect by themselves afterwards.
    pub fn open_conf(
        store: Option<&str>,
        db: &Path,
        connect_timeout: Duration,
    ) -> Result<Self, FleetError> {
        match store {
            Some(url) => PgStore::connect(url, connect_timeout).map(FleetStore::Postgres),
            None => FleetStore::open(db),
        }
    }

    /// How messages name the store: the file, or the URL without its password.
    pub fn name(&self) -> String {
        match self {
            FleetStore::Sqlite(s) => s.name(),
            FleetStore::Postgres(s) => s.name().to_string(),
        }
    }

    /// The change and leader feeds of a shared store (None: SQLite, this router alone leads).
    /// `leader_retry`: how often a follower tries to take the leader lock.
    pub(crate) fn feeds(&self, leader_retry: Duration) -> Option<Feeds> {
        match self {
            FleetStore::Sqlite(_) => None,
            FleetStore::Postgres(s) => Some(s.feeds(leader_retry)),
        }
    }

    pub fn add_server(&self, s: &NewServer) -> Result<Server, FleetError> {
        let server = valid_server(s)?;
        match self {
            FleetStore::Sqlite(b) => b.add_server(&server, now_ms())?,
            FleetStore::Postgres(b) => b.add_server(&server, now_ms())?,
        }
        Ok(server)
    }

    /// Every server, by id.
    pub fn servers(&self) -> Result<Vec<Server>, FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.servers(),
            FleetStore::Postgres(b) => b.servers(),
        }
    }

    pub fn server(&self, id: &str) -> Result<Server, FleetError> {
        let found = match self {
            FleetStore::Sqlite(b) => b.server(id)?,
            FleetStore::Postgres(b) => b.server(id)?,
        };
        found.ok_or_else(|| unknown_server(id))
    }

    /// Removes a server that no tenant calls home.
    pub fn remove_server(&self, id: &str) -> Result<(), FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.remove_server(id),
            FleetStore::Postgres(b) => b.remove_server(id),
        }
    }

    pub fn add_tenant(&self, t: &Tenant) -> Result<Tenant, FleetError> {
        let tenant = valid_tenant(t)?;
        match self {
            FleetStore::Sqlite(b) => b.add_tenant(&tenant)?,
            FleetStore::Postgres(b) => b.add_tenant(&tenant)?,
        }
        Ok(tenant)
    }

    /// Every tenant, by id.
    pub fn tenants(&self) -> Result<Vec<Tenant>, FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.tenants(),
            FleetStore::Postgres(b) => b.tenants(),
        }
    }

    pub fn tenant(&self, id: &str) -> Result<Tenant, FleetError> {
        let found = match self {
            FleetStore::Sqlite(b) => b.tenant(id)?,
            FleetStore::Postgres(b) => b.tenant(id)?,
        };
        found.ok_or_else(|| unknown_tenant(id))
    }

    pub fn remove_tenant(&self, id: &str) -> Result<(), FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.remove_tenant(id),
            FleetStore::Postgres(b) => b.remove_tenant(id),
        }
    }

    /// Moves a tenant's home to `server` (atomic).
    pub fn migrate_tenant(&self, id: &str, server: &str) -> Result<Tenant, FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.migrate_tenant(id, server),
            FleetStore::Postgres(b) => b.migrate_tenant(id, server),
        }
    }

    /// Servers, tenants and placements read together (one transaction on PostgreSQL: one
    /// consistent snapshot).
    pub fn snapshot(&self) -> Result<Snapshot, FleetError> {
        match self {
            FleetStore::Sqlite(b) => Ok(Snapshot {
                servers: b.servers()?,
                tenants: b.tenants()?,
                placements: b.placements()?,
            }),
            FleetStore::Postgres(b) => b.snapshot(),
        }
    }

    /// Every placement, by tenant.
    pub fn placements(&self) -> Result<Vec<Placement>, FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.placements(),
            FleetStore::Postgres(b) => b.placements(),
        }
    }

    /// Records a placement (replacing the tenant's previous one).
    pub fn put_placement(&self, p: &Placement) -> Result<(), FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.put_placement(p),
            FleetStore::Postgres(b) => b.put_placement(p),
        }
    }

    /// Forgets a tenant's placement (none: a no-op).
    pub fn remove_placement(&self, tenant: &str) -> Result<(), FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.remove_placement(tenant),
            FleetStore::Postgres(b) => b.remove_placement(tenant),
        }
    }

    /// Claims the webhook of server `id`'s current outage (offline since `since_ms`): true
    /// when no router claimed it yet (the caller sends it), false when one did. An outage
    /// lasts until [`FleetStore::end_outages`] names its server.
    pub fn claim_outage(&self, id: &str, since_ms: i64) -> Result<bool, FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.claim_outage(id, since_ms, now_ms()),
            FleetStore::Postgres(b) => b.claim_outage(id, since_ms, now_ms()),
        }
    }

    /// Ends the outages of these servers (they are up): their next outage gets a webhook.
    pub fn end_outages(&self, ids: &[String]) -> Result<(), FleetError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            FleetStore::Sqlite(b) => b.end_outages(ids),
            FleetStore::Postgres(b) => b.end_outages(ids),
        }
    }

    /// Servers with an outage claimed, by id.
    pub fn outages(&self) -> Result<Vec<String>, FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.outages(),
            FleetStore::Postgres(b) => b.outages(),
        }
    }

    /// Copies `from`'s servers (tokens included), tenants and placements into this store in
    /// one transaction: refused unless this store is empty, or `force` (then its servers,
    /// tenants, placements and outages are replaced). Returns the counts copied.
    pub fn copy_from(&self, from: &FleetStore, force: bool) -> Result<Copied, FleetError> {
        let snap = from.snapshot()?;
        let created = from.created_ms()?;
        match self {
            FleetStore::Sqlite(_) => Err(FleetError::Invalid(
                "the target of a copy must be a PostgreSQL store".into(),
            )),
            FleetStore::Postgres(b) => b.replace_all(&snap, &created, force),
        }
    }

    /// Each server's creation time (ms), by id (kept by a copy).
    fn created_ms(&self) -> Result<std::collections::HashMap<String, i64>, FleetError> {
        match self {
            FleetStore::Sqlite(b) => b.created_ms(),
            FleetStore::Postgres(b) => b.created_ms(),
        }
    }
}

/// Servers, tenants and placements read together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub servers: Vec<Server>,
    pub tenants: Vec<Tenant>,
    pub placements: Vec<Placement>,
}

/// What [`FleetStore::copy_from`] copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    pub servers: usize,
    pub tenants: usize,
    pub placements: usize,
}

/// A new server, validated and normalized.
fn valid_server(s: &NewServer) -> Result<Server, FleetError> {
    check_id("server", &s.id)?;
    let (url, host) = normalize_url(&s.url)?;
    let domain = match s.domain.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => {
            let d = d.to_ascii_lowercase();
            check_hostname(&d).map_err(|e| FleetError::Invalid(format!("domain: {e}")))?;
            d
        }
        None => check_hostname(&host).map(|()| host.clone()).map_err(|_| {
            FleetError::Invalid(format!(
                "the url's host {host:?} is not a domain: pass a domain for server {}",
                s.id
            ))
        })?,
    };
    Ok(Server {
        id: s.id.clone(),
        url,
        domain,
        region: nonempty(&s.region),
        token: nonempty(&s.token),
    })
}

/// A new tenant, validated, its domain lower-cased.
fn valid_tenant(t: &Tenant) -> Result<Tenant, FleetError> {
    check_id("tenant", &t.id)?;
    let domain = t.domain.trim().to_ascii_lowercase();
    check_hostname(&domain).map_err(|e| FleetError::Invalid(format!("domain: {e}")))?;
    check_process_name(&t.process).map_err(FleetError::Invalid)?;
    check_instance_id(&t.instance).map_err(FleetError::Invalid)?;
    Ok(Tenant {
        domain,
        ..t.clone()
    })
}

pub(crate) fn server_exists(old: &Server) -> FleetError {
    FleetError::Conflict(format!(
        "server {} already exists ({}): remove it first to change it",
        old.id, old.url
    ))
}

pub(crate) fn tenant_exists(old: &Tenant) -> FleetError {
    FleetError::Conflict(format!(
        "tenant {} already exists ({} on {}): remove it first to change it",
        old.id, old.domain, old.server
    ))
}

pub(crate) fn domain_taken(domain: &str, owner: &str) -> FleetError {
    FleetError::Conflict(format!("domain {domain} is already used by tenant {owner}"))
}

pub(crate) fn still_homed(id: &str, homed: &[String]) -> FleetError {
    FleetError::Conflict(format!(
        "server {id} still has tenants: {} — migrate or remove them first",
        homed.join(", ")
    ))
}

pub(crate) fn unknown_server(id: &str) -> FleetError {
    FleetError::NotFound(format!(
        "unknown server {id:?} (see `ten server list`, add it with `ten server add`)"
    ))
}

pub(crate) fn unknown_tenant(id: &str) -> FleetError {
    FleetError::NotFound(format!("unknown tenant {id:?} (see `ten tenant list`)"))
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub(crate) fn pg_display(url: &str) -> Result<String, FleetError> {
    pg::parse_url(url).map(|(c, _)| pg::display_name(&c))
}

fn now_ms() -> i64 {
    crate::now_ms()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
