//! The fleet: other tenement servers and the tenants they are home to.
//!
//! - [`FleetStore`]: servers, tenants, failover placements and outages, with foreign keys (a
//!   server with tenants cannot be removed), in SQLite (one router) or PostgreSQL (several
//!   routers: each write notifies the others, one of them leads; `store/pg.rs`).
//! - [`Fleet`] (`fleet.rs`): the handle. Every write (`add_server`, `migrate_tenant`, ...) goes
//!   to the store AND publishes ONE snapshot, [`FleetView`] (`view.rs`: servers with their
//!   status and resolved address + tenants), through a watch channel: the router reads a
//!   consistent pair, never servers from one write and tenants from another.
//! - `health.rs`: the health loop, which checks and resolves every server concurrently.
//! - With a shared store, every router runs its own health loop and routes on its own view;
//!   only the leader places tenants and sends webhooks (`fleet.rs`).
//! - `placement.rs`: home offline -> the tenant is placed on another server (its instance
//!   spawned there if needed) and taken back once home returns.
//! - [`webhook`]: one POST per outage once a server has been offline for `webhook_after`.
//! - [`aggregate`]: every server's `/metrics` and `/api/logs`, merged.
//!
//! This crate knows nothing of the proxy or the supervisor: the root package wires it in.

pub mod aggregate;
#[doc(hidden)]
pub mod bench;
use tenement_db as db;
mod fleet;
mod health;
mod http;
#[doc(hidden)]
pub mod pgtest;
mod placement;
mod prom;
mod store;
mod validate;
mod view;
pub mod webhook;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testing;

use std::time::{SystemTime, UNIX_EPOCH};

pub use aggregate::{fetch_all, merge_logs, merge_metrics, MAX_BODY};
pub use db::DbError;
pub use fleet::{Events, Fleet};
pub use store::{Copied, FleetStore, NewServer, PlaceState, Placement, Server, Snapshot, Tenant};
/// A `postgres://` URL as messages show it (without its password), or why it is not one.
pub fn store_display_name(url: &str) -> Result<String, FleetError> {
    store::pg_display(url)
}
pub use view::{FleetView, Served, ServerAddr, ServerState, Status};

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
    /// The shared store cannot be reached, or failed (HTTP 503); the message names the store.
    #[error("{0}")]
    Store(String),
    /// The database's fleet schema is newer than this binary knows (HTTP 500).
    #[error("fleet store: {0}")]
    Schema(DbError),
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
