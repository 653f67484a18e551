//! The SQLite backend of the fleet store: the tables in the shared `tenement.db` of one
//! router, with their numbered migrations (component `fleet` in `schema_version`). Inputs are
//! validated by the facade (`store.rs`) before they reach it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    domain_taken, server_exists, still_homed, tenant_exists, unknown_server, unknown_tenant,
    PlaceState, Placement, Server, Tenant,
};
use crate::db::{self, DbError, Schema};
use crate::FleetError;

/// The fleet's tables (component `fleet` in `schema_version`).
const SCHEMA: Schema = Schema {
    component: "fleet",
    migrations: &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3],
};

/// Migration 1: the schema from before versions existed.
pub(crate) const SCHEMA_V1: &str = "
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

/// Migration 3: outages whose webhook was claimed (one per server at most).
const SCHEMA_V3: &str = "
CREATE TABLE fleet_outages (
    server      TEXT PRIMARY KEY REFERENCES fleet_servers(id) ON DELETE CASCADE,
    since_ms    INTEGER NOT NULL,
    notified_ms INTEGER NOT NULL
);
";

const SERVER_COLS: &str = "id, url, domain, region, token";
const TENANT_COLS: &str = "id, domain, server, process, instance";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (or creates) the database file and our tables.
    pub(crate) fn open(db: &Path) -> Result<Self, FleetError> {
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
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: db.to_path_buf(),
        })
    }

    pub(crate) fn name(&self) -> String {
        self.path.display().to_string()
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_server(&self, server: &Server, now: i64) -> Result<(), FleetError> {
        let conn = self.conn();
        if let Some(old) = get_server(&conn, &server.id)? {
            return Err(server_exists(&old));
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
                now
            ],
        )?;
        Ok(())
    }

    pub(crate) fn servers(&self) -> Result<Vec<Server>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SERVER_COLS} FROM fleet_servers ORDER BY id"
        ))?;
        let rows = stmt.query_map([], server_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn server(&self, id: &str) -> Result<Option<Server>, FleetError> {
        get_server(&self.conn(), id)
    }

    pub(crate) fn created_ms(&self) -> Result<HashMap<String, i64>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, created_ms FROM fleet_servers")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn remove_server(&self, id: &str) -> Result<(), FleetError> {
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
            return Err(still_homed(id, &homed));
        }
        conn.execute("DELETE FROM fleet_servers WHERE id = ?1", [id])?;
        Ok(())
    }

    pub(crate) fn add_tenant(&self, tenant: &Tenant) -> Result<(), FleetError> {
        let conn = self.conn();
        if let Some(old) = get_tenant(&conn, &tenant.id)? {
            return Err(tenant_exists(&old));
        }
        let owner: Option<String> = conn
            .query_row(
                "SELECT id FROM fleet_tenants WHERE domain = ?1",
                [&tenant.domain],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(owner) = owner {
            return Err(domain_taken(&tenant.domain, &owner));
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
        Ok(())
    }

    pub(crate) fn tenants(&self) -> Result<Vec<Tenant>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TENANT_COLS} FROM fleet_tenants ORDER BY id"
        ))?;
        let rows = stmt.query_map([], tenant_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn tenant(&self, id: &str) -> Result<Option<Tenant>, FleetError> {
        get_tenant(&self.conn(), id)
    }

    pub(crate) fn remove_tenant(&self, id: &str) -> Result<(), FleetError> {
        let n = self
            .conn()
            .execute("DELETE FROM fleet_tenants WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(unknown_tenant(id));
        }
        Ok(())
    }

    /// One UPDATE: atomic.
    pub(crate) fn migrate_tenant(&self, id: &str, server: &str) -> Result<Tenant, FleetError> {
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

    pub(crate) fn placements(&self) -> Result<Vec<Placement>, FleetError> {
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

    pub(crate) fn put_placement(&self, p: &Placement) -> Result<(), FleetError> {
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

    pub(crate) fn remove_placement(&self, tenant: &str) -> Result<(), FleetError> {
        self.conn()
            .execute("DELETE FROM fleet_placements WHERE tenant = ?1", [tenant])?;
        Ok(())
    }

    pub(crate) fn claim_outage(&self, id: &str, since: i64, now: i64) -> Result<bool, FleetError> {
        let n = self.conn().execute(
            "INSERT INTO fleet_outages (server, since_ms, notified_ms)
             SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM fleet_servers WHERE id = ?1)
             ON CONFLICT (server) DO NOTHING",
            params![id, since, now],
        )?;
        Ok(n == 1)
    }

    pub(crate) fn end_outages(&self, ids: &[String]) -> Result<(), FleetError> {
        let conn = self.conn();
        for id in ids {
            conn.execute("DELETE FROM fleet_outages WHERE server = ?1", [id])?;
        }
        Ok(())
    }

    pub(crate) fn outages(&self) -> Result<Vec<String>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT server FROM fleet_outages ORDER BY server")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
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
