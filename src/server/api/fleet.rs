//! `/api/servers`, `/api/tenants`, `/api/fleet/metrics`, `/api/fleet/logs`: the fleet (SPEC §9).
//!
//! Reads come from the fleet's published view (servers with their health); every write goes
//! through the `Fleet` handle, which writes to its store and publishes the new view.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{json, Value};

use tenement_fleet::{Fleet, FleetError, FleetView, NewServer, Tenant};

use super::{parse_body, Api, ApiError, ApiResult};
use crate::wire::{LogsQuery, MigrateArgs, ServerArgs, TenantArgs};

/// Per-server budget for `/api/fleet/metrics` and `/api/fleet/logs`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The most lines `/api/fleet/logs` answers (a larger `limit`, or 0, is this).
pub(crate) const FLEET_LOGS_MAX_LIMIT: usize = 10_000;

/// `/api/fleet/logs`'s line count: 100 when not given, at most [`FLEET_LOGS_MAX_LIMIT`].
fn fleet_logs_limit(limit: Option<i64>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) => {
            let n = usize::try_from(n)
                .map_err(|_| ApiError::bad(format!("limit: expected a number, got \"{n}\"")))?;
            Ok(if n == 0 {
                FLEET_LOGS_MAX_LIMIT
            } else {
                n.min(FLEET_LOGS_MAX_LIMIT)
            })
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        let status = match &e {
            FleetError::Invalid(_) => StatusCode::BAD_REQUEST,
            FleetError::NotFound(_) => StatusCode::NOT_FOUND,
            FleetError::Conflict(_) => StatusCode::CONFLICT,
            FleetError::Db(_) | FleetError::Schema(_) => StatusCode::INTERNAL_SERVER_ERROR,
            FleetError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

pub(super) fn server_json(view: &FleetView, id: &str) -> ApiResult {
    let s = view.server(id).ok_or_else(|| {
        ApiError::not_found(format!("unknown server {id:?} (see `ten server list`)"))
    })?;
    Ok((StatusCode::OK, json!(s)))
}

pub(super) fn add_server(fleet: &Fleet, body: &[u8]) -> ApiResult {
    let req: NewServer = parse_body::<ServerArgs>(body)?.into();
    let added = fleet.add_server(&req)?;
    tracing::info!("fleet: server {} added ({})", added.id, added.url);
    let (_, v) = server_json(&fleet.view(), &added.id)?;
    Ok((StatusCode::CREATED, v))
}

pub(super) fn remove_server(fleet: &Fleet, id: &str) -> ApiResult {
    fleet.remove_server(id)?;
    tracing::info!("fleet: server {id} removed");
    Ok((StatusCode::NO_CONTENT, Value::Null))
}

pub(super) fn add_tenant(fleet: &Fleet, body: &[u8]) -> ApiResult {
    let req: Tenant = parse_body::<TenantArgs>(body)?.into();
    let t = fleet.add_tenant(&req)?;
    tracing::info!(
        "fleet: tenant {} added: {} -> {}:{} on {}",
        t.id,
        t.domain,
        t.process,
        t.instance,
        t.server
    );
    Ok((StatusCode::CREATED, json!(t)))
}

pub(super) fn remove_tenant(fleet: &Fleet, id: &str) -> ApiResult {
    fleet.remove_tenant(id)?;
    tracing::info!("fleet: tenant {id} removed");
    Ok((StatusCode::NO_CONTENT, Value::Null))
}

/// A tenant as the API shows it: its fields, `home` (= `server`) and `served_at`, where its
/// requests go now (its home, the server it is placed on while home is offline, or null while
/// it is being placed or has nowhere to go).
fn tenant_json(t: &Tenant, served_at: Option<&Option<String>>) -> Value {
    let mut v = json!(t);
    if let Value::Object(m) = &mut v {
        m.insert("home".into(), json!(t.server));
        m.insert("served_at".into(), json!(served_at.cloned().flatten()));
    }
    v
}

/// `GET /api/tenants`.
pub(super) fn list_tenants(fleet: &Fleet, view: &FleetView) -> ApiResult {
    let at = fleet.served_at(view);
    let list = view
        .tenants
        .iter()
        .map(|t| tenant_json(t, at.get(&t.id)))
        .collect();
    Ok((StatusCode::OK, Value::Array(list)))
}

/// `GET /api/tenants/{id}`.
pub(super) fn get_tenant(fleet: &Fleet, view: &FleetView, id: &str) -> ApiResult {
    let t = fleet.store().tenant(id)?;
    Ok((
        StatusCode::OK,
        tenant_json(&t, fleet.served_at(view).get(id)),
    ))
}

pub(super) fn migrate_tenant(fleet: &Fleet, id: &str, body: &[u8]) -> ApiResult {
    let req: MigrateArgs = parse_body(body)?;
    let before = fleet.store().tenant(id)?;
    let t = fleet.migrate_tenant(id, &req.server)?;
    tracing::info!(
        "fleet: tenant {id} migrated from {} to {}",
        before.server,
        t.server
    );
    Ok((StatusCode::OK, json!(t)))
}

fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    tenement_fleet::rfc3339_ms(ms)
}

/// `GET /api/fleet/logs`: the same filters as `/api/logs`, forwarded to every server's
/// `/api/logs`, merged newest first with a `server` field. A server that cannot be read
/// contributes one line saying why (process "ten", stream stderr) instead of silence.
pub(super) async fn fleet_logs(fleet: &Fleet, q: Option<&str>) -> ApiResult {
    let query = LogsQuery::parse(q).map_err(ApiError::bad)?;
    let limit = fleet_logs_limit(query.limit)?;
    // Forward the caller's filters (never the caller's own credentials).
    let forwarded = query.to_query();
    let path = if forwarded.is_empty() {
        "/api/logs".to_string()
    } else {
        format!("/api/logs?{forwarded}")
    };
    let servers: Vec<_> = fleet
        .view()
        .servers
        .iter()
        .map(|s| s.server.clone())
        .collect();
    let results = tenement_fleet::fetch_all(&servers, &path, FETCH_TIMEOUT).await;
    let mut per_server = Vec::with_capacity(results.len());
    for (id, r) in results {
        let lines = r.and_then(|text| {
            serde_json::from_str::<Vec<Value>>(&text)
                .map_err(|e| format!("its /api/logs answered something else than lines ({e})"))
        });
        match lines {
            Ok(lines) => per_server.push((id, lines)),
            Err(e) => {
                tracing::warn!("fleet logs: cannot read the logs of server {id}: {e}");
                let line = json!({
                    "timestamp": now_rfc3339(),
                    "process": "ten",
                    "instance": "fleet",
                    "stream": "stderr",
                    "message": format!("cannot read the logs of server {id}: {e}"),
                });
                per_server.push((id, vec![line]));
            }
        }
    }
    let merged = tenement_fleet::merge_logs(per_server, limit);
    Ok((StatusCode::OK, Value::Array(merged)))
}

impl Api {
    /// The fleet's view once the table built from it is live: what a read shows (a server
    /// `offline`, a tenant's `served_at`) is what the proxy already routes by. A table build
    /// that takes longer than 5 s does not hold the read: it answers from the view as it is.
    pub(super) async fn live_view(&self, fleet: &Fleet) -> Arc<FleetView> {
        let view = fleet.view();
        let settled = self.publisher.settle_fleet(view.generation);
        if tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .is_err()
        {
            tracing::warn!(
                generation = view.generation,
                "fleet read: the routing table has not caught up with the fleet's view in 5 s"
            );
        }
        view
    }

    /// A fleet write's answer, given once the table that routes by it is live (the fleet
    /// publishes its view before the write returns; the publisher builds from it).
    pub(super) async fn routed(&self, fleet: &Fleet, answer: ApiResult) -> ApiResult {
        if answer.is_ok() {
            // A server just added is resolved by the fleet first, so its tenants route at once.
            fleet.resolve_pending(Duration::from_secs(5)).await;
            self.publisher.settle_fleet(fleet.view().generation).await;
        }
        answer
    }

    pub(super) fn fleet_or_off(&self) -> Result<&Fleet, ApiError> {
        self.fleet.as_ref().ok_or_else(|| {
            ApiError(
                StatusCode::CONFLICT,
                "fleet routing is off: add a [fleet] section to the config".into(),
            )
        })
    }

    /// Every server's `/metrics`, merged with a `server_id` label (Prometheus text).
    pub(crate) async fn fleet_metrics_text(&self) -> Result<String, ApiError> {
        let fleet = self.fleet_or_off()?;
        let servers: Vec<_> = fleet
            .view()
            .servers
            .iter()
            .map(|s| s.server.clone())
            .collect();
        let scrapes = tenement_fleet::fetch_all(&servers, "/metrics", FETCH_TIMEOUT).await;
        for (id, r) in &scrapes {
            if let Err(e) = r {
                tracing::warn!("fleet metrics: cannot scrape server {id}: {e}");
            }
        }
        Ok(tenement_fleet::merge_metrics(&scrapes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review L4: `limit` was not capped (0 meant every line of every server).
    #[test]
    fn the_fleet_logs_limit_is_capped() {
        let limit = |n| fleet_logs_limit(n).ok();
        assert_eq!(limit(None), Some(100));
        assert_eq!(limit(Some(5)), Some(5));
        assert_eq!(limit(Some(10_000)), Some(10_000));
        assert_eq!(limit(Some(10_001)), Some(FLEET_LOGS_MAX_LIMIT));
        assert_eq!(limit(Some(i64::MAX)), Some(FLEET_LOGS_MAX_LIMIT));
        assert_eq!(limit(Some(0)), Some(FLEET_LOGS_MAX_LIMIT));
        assert_eq!(limit(Some(-1)), None);
    }
}
