//! Servers, tenants and failover placements in SQLite (`fleet_servers`, `fleet_tenants`,
//! `fleet_placements` in the shared `tenement.db`).
//!
//! A tenant's `server` is a foreign key (`ON DELETE RESTRICT`): a server with tenants cannot be
//! removed until they are migrated or removed. A placement (where a tenant is served while its
//! home is offline, see `placement.rs`) is data too, so that another store and another router
//! can take it over; it goes away with its tenant or its server. Every input is validated here,
//! so the API and the CLI report the same messages.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use tenement_conf::{check_hostname, check_instance_id, check_process_name};

use crate::db::{self, DbError, Schema};
use crate::validate::{check_id, normalize_url};
use crate::{now_ms, FleetError};

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

    fn parse(s: &str) -> PlaceState {
        match s {
            "ready" => PlaceState::Ready,
            "placing" => PlaceState::Placing,
            _ => PlaceState::Failed,
        }
    }
}

/// The fleet's tables (component `fleet` in `schema_version`).
const SCHEMA: Schema = Schema {
    component: "fleet",
    migrations: &[SCHEMA_V1, SCHEMA_V2],
};

/// Migration 1: the schema from before versions existed.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS fleet_servers (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    domain     TEXT NOT NULL,
    region     TEXT,
    token      TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_tenants (
    id       TEXT PRIMARY KEY,
    domain   TEXT NOT NULL UNIQUE,
    server   TEXT NOT NULL REFERENCES fleet_servers(id) ON DELETE RESTRICT,
    process  TEXT NOT NULL,
    instance TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fleet_tenants_server ON fleet_tenants(server);
";

/// Migration 2: failover placements (one per tenant at most).
const SCHEMA_V2: &str = "
CREATE TABLE fleet_placements (
    tenant    TEXT PRIMARY KEY REFERENCES fleet_tenants(id) ON DELETE CASCADE,
    server    TEXT NOT NULL REFERENCES fleet_servers(id) ON DELETE CASCADE,
    spawned   INTEGER NOT NULL,
    state     TEXT NOT NULL,
    error     TEXT,
    placed_ms INTEGER NOT NULL
);
";

const SERVER_COLS: &str = "id, url, domain, region, token";
const TENANT_COLS: &str = "id, domain, server, process, instance";

pub struct FleetStore {
    conn: Mutex<Connection>,
}

impl FleetStore {
    /// Opens (or creates) the database file and our two tables.
    pub fn open(db: &Path) -> Result<Self, FleetError> {
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                FleetError::Invalid(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // foreign_keys is per connection and a no-op inside a transaction: a pragma, set first.
        let pragmas = [("journal_mode", "WAL"), ("foreign_keys", "ON")];
        let conn = db::open(db, &pragmas, Some(&SCHEMA)).map_err(|e| match e {
            DbError::Open { source, .. } | DbError::Sqlite(source) => FleetError::Db(source),
            refused => FleetError::Schema(refused),
        })?;
        Ok(FleetStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_server(&self, s: &NewServer) -> Result<Server, FleetError> {
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
        let server = Server {
            id: s.id.clone(),
            url,
            domain,
            region: nonempty(&s.region),
            token: nonempty(&s.token),
        };
        let conn = self.conn();
        if let Some(old) = get_server(&conn, &s.id)? {
            return Err(FleetError::Conflict(format!(
                "server {} already exists ({}): remove it first to change it",
                old.id, old.url
            )));
        }
        conn.execute(
            "INSERT INTO fleet_servers (id, url, domain, region, token, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                server.id,
                server.url,
                server.domain,
                server.region,
                server.token,
                now_ms()
            ],
        )?;
        Ok(server)
    }

    /// Every server, by id.
    pub fn servers(&self) -> Result<Vec<Server>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SERVER_COLS} FROM fleet_servers ORDER BY id"
        ))?;
        let rows = stmt.query_map([], server_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn server(&self, id: &str) -> Result<Server, FleetError> {
        get_server(&self.conn(), id)?.ok_or_else(|| unknown_server(id))
    }

    /// Removes a server that no tenant calls home.
    pub fn remove_server(&self, id: &str) -> Result<(), FleetError> {
        let conn = self.conn();
        if get_server(&conn, id)?.is_none() {
            return Err(unknown_server(id));
        }
        let mut stmt =
            conn.prepare("SELECT id FROM fleet_tenants WHERE server = ?1 ORDER BY id")?;
        let homed: Vec<String> = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if !homed.is_empty() {
            return Err(FleetError::Conflict(format!(
                "server {id} still has tenants: {} — migrate or remove them first",
                homed.join(", ")
            )));
        }
        conn.execute("DELETE FROM fleet_servers WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn add_tenant(&self, t: &Tenant) -> Result<Tenant, FleetError> {
        check_id("tenant", &t.id)?;
        let domain = t.domain.trim().to_ascii_lowercase();
        check_hostname(&domain).map_err(|e| FleetError::Invalid(format!("domain: {e}")))?;
        check_process_name(&t.process).map_err(FleetError::Invalid)?;
        check_instance_id(&t.instance).map_err(FleetError::Invalid)?;
        let tenant = Tenant {
            domain,
            ..t.clone()
        };
        let conn = self.conn();
        if let Some(old) = get_tenant(&conn, &t.id)? {
            return Err(FleetError::Conflict(format!(
                "tenant {} already exists ({} on {}): remove it first to change it",
                old.id, old.domain, old.server
            )));
        }
        let owner: Option<String> = conn
            .query_row(
                "SELECT id FROM fleet_tenants WHERE domain = ?1",
                [&tenant.domain],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(owner) = owner {
            return Err(FleetError::Conflict(format!(
                "domain {} is already used by tenant {owner}",
                tenant.domain
            )));
        }
        if get_server(&conn, &tenant.server)?.is_none() {
            return Err(unknown_server(&tenant.server));
        }
        conn.execute(
            "INSERT INTO fleet_tenants (id, domain, server, process, instance)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                tenant.id,
                tenant.domain,
                tenant.server,
                tenant.process,
                tenant.instance
            ],
        )?;
        Ok(tenant)
    }

    /// Every tenant, by id.
    pub fn tenants(&self) -> Result<Vec<Tenant>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TENANT_COLS} FROM fleet_tenants ORDER BY id"
        ))?;
        let rows = stmt.query_map([], tenant_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn tenant(&self, id: &str) -> Result<Tenant, FleetError> {
        get_tenant(&self.conn(), id)?.ok_or_else(|| unknown_tenant(id))
    }

    pub fn remove_tenant(&self, id: &str) -> Result<(), FleetError> {
        let n = self
            .conn()
            .execute("DELETE FROM fleet_tenants WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(unknown_tenant(id));
        }
        Ok(())
    }

    /// Moves a tenant's home to `server` (one UPDATE: atomic).
    pub fn migrate_tenant(&self, id: &str, server: &str) -> Result<Tenant, FleetError> {
        let conn = self.conn();
        let Some(mut tenant) = get_tenant(&conn, id)? else {
            return Err(unknown_tenant(id));
        };
        if get_server(&conn, server)?.is_none() {
            return Err(unknown_server(server));
        }
        conn.execute(
            "UPDATE fleet_tenants SET server = ?2 WHERE id = ?1",
            [id, server],
        )?;
        tenant.server = server.to_string();
        Ok(tenant)
    }
}

impl FleetStore {
    /// Every placement, by tenant.
    pub fn placements(&self) -> Result<Vec<Placement>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT tenant, server, spawned, state, error, placed_ms FROM fleet_placements
             ORDER BY tenant",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Placement {
                tenant: r.get(0)?,
                server: r.get(1)?,
                spawned: r.get(2)?,
                state: PlaceState::parse(&r.get::<_, String>(3)?),
                error: r.get(4)?,
                placed_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a placement (replacing the tenant's previous one).
    pub fn put_placement(&self, p: &Placement) -> Result<(), FleetError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO fleet_placements
             (tenant, server, spawned, state, error, placed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                p.tenant,
                p.server,
                p.spawned,
                p.state.as_str(),
                p.error,
                p.placed_ms
            ],
        )?;
        Ok(())
    }

    /// Forgets a tenant's placement (none: a no-op).
    pub fn remove_placement(&self, tenant: &str) -> Result<(), FleetError> {
        self.conn()
            .execute("DELETE FROM fleet_placements WHERE tenant = ?1", [tenant])?;
        Ok(())
    }
}

fn get_server(conn: &Connection, id: &str) -> Result<Option<Server>, FleetError> {
    Ok(conn
        .query_row(
            &format!("SELECT {SERVER_COLS} FROM fleet_servers WHERE id = ?1"),
            [id],
            server_row,
        )
        .optional()?)
}

fn get_tenant(conn: &Connection, id: &str) -> Result<Option<Tenant>, FleetError> {
    Ok(conn
        .query_row(
            &format!("SELECT {TENANT_COLS} FROM fleet_tenants WHERE id = ?1"),
            [id],
            tenant_row,
        )
        .optional()?)
}

fn server_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Server> {
    Ok(Server {
        id: r.get(0)?,
        url: r.get(1)?,
        domain: r.get(2)?,
        region: r.get(3)?,
        token: r.get(4)?,
    })
}

fn tenant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: r.get(0)?,
        domain: r.get(1)?,
        server: r.get(2)?,
        process: r.get(3)?,
        instance: r.get(4)?,
    })
}

fn unknown_server(id: &str) -> FleetError {
    FleetError::NotFound(format!(
        "unknown server {id:?} (see `ten server list`, add it with `ten server add`)"
    ))
}

fn unknown_tenant(id: &str) -> FleetError {
    FleetError::NotFound(format!("unknown tenant {id:?} (see `ten tenant list`)"))
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
