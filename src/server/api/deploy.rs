//! `/api/deploy`, `/api/route`, `/api/deploys`: blue/green and canary.
//!
//! deploy: spawn `process:version` at weight 0, wait until healthy (else stop it and change
//! nothing else), then set the requested weight. route: `to` = 100 and `from` = 0 in ONE table
//! swap; `from` keeps running for rollback until stopped.

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use tenement_conf::{check_duration, parse_duration, DurationError, InstanceName};
use tenement_supervisor::State;

use super::instances::check_weight;
use super::{parse_body, parse_name, query_param, Api, ApiError, ApiResult};
use crate::wire::{DeployArgs, RouteArgs};

pub(super) fn timeout_of(v: &Option<Value>) -> Result<Option<Duration>, ApiError> {
    let too_long = |e: DurationError| ApiError::bad(format!("timeout: {e}"));
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_u64().filter(|s| *s > 0).ok_or_else(|| {
                ApiError::bad(format!(
                    "timeout must be a positive number of seconds, got {n}"
                ))
            })?;
            check_duration(Duration::from_secs(secs), &n.to_string())
                .map(Some)
                .map_err(too_long)
        }
        Some(Value::String(s)) => match parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            Err(e @ DurationError::TooLong { .. }) => Err(too_long(e)),
            _ => Err(ApiError::bad(format!(
                "timeout: expected a duration like \"60s\", got {s:?}"
            ))),
        },
        Some(other) => Err(ApiError::bad(format!(
            "timeout: expected a duration like \"60s\", got {other}"
        ))),
    }
}

impl Api {
    pub(crate) async fn deploy(&self, body: &[u8]) -> ApiResult {
        let req: DeployArgs = parse_body(body)?;
        let name = parse_name(&format!(
            "{}:{}",
            req.target.unwrap_or_default(),
            req.version.unwrap_or_default()
        ))?;
        let weight = check_weight(req.weight.unwrap_or(0))?;
        let timeout = timeout_of(&req.timeout)?;
        // An external upstream is refused as before (by spawn, with its audit row), not as
        // an existing instance.
        let exists = self
            .supervisor
            .instance(&name)
            .is_some_and(|v| v.kind == tenement_supervisor::Kind::Spawned);
        if exists {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("{name} already exists: route to it with `ten route` or stop it first"),
            ));
        }
        let spawned = self.supervisor.spawn_with(&name, 0, timeout).await;
        if let Err(e) = spawned {
            self.audit
                .record("deploy", &name.process, &name.id, &format!("failed: {e}"));
            return Err(e.into());
        }
        if weight > 0 {
            self.supervisor
                .set_weights(&[(name.clone(), weight)])
                .await?;
        }
        self.audit.record(
            "deploy",
            &name.process,
            &name.id,
            &format!("ok: healthy, weight {weight}"),
        );
        let v = self
            .supervisor
            .instance(&name)
            .ok_or_else(|| ApiError::not_found(format!("{name} vanished")))?;
        Ok((StatusCode::CREATED, self.instance_json(&v)))
    }

    pub(crate) async fn route_traffic(&self, body: &[u8]) -> ApiResult {
        let req: RouteArgs = parse_body(body)?;
        let from = parse_name(&format!("{}:{}", req.process, req.from))?;
        let to = parse_name(&format!("{}:{}", req.process, req.to))?;
        if from == to {
            return Err(ApiError::bad("--from and --to name the same instance"));
        }
        let Some(target) = self.supervisor.instance(&to) else {
            return Err(ApiError::not_found(format!("unknown instance {to}")));
        };
        if self.supervisor.instance(&from).is_none() {
            return Err(ApiError::not_found(format!("unknown instance {from}")));
        }
        if target.state != State::Healthy {
            let msg = format!(
                "{to} is not healthy (state {}): not routing to it",
                target.state.as_str()
            );
            self.audit.record(
                "route",
                &req.process,
                &format!("{} -> {}", req.from, req.to),
                &format!("refused: {msg}"),
            );
            return Err(ApiError(StatusCode::CONFLICT, msg));
        }
        self.supervisor
            .set_weights(&[(to.clone(), 100), (from.clone(), 0)])
            .await?;
        self.audit.record(
            "route",
            &req.process,
            &format!("{} -> {}", req.from, req.to),
            "ok",
        );
        Ok((
            StatusCode::OK,
            json!({ "process": req.process, "from": self.weight_json(&from), "to": self.weight_json(&to) }),
        ))
    }

    fn weight_json(&self, name: &InstanceName) -> Value {
        let w = self.supervisor.instance(name).map(|v| v.weight);
        json!({ "instance": name.to_string(), "weight": w })
    }

    pub(crate) fn history(&self, query: Option<&str>) -> ApiResult {
        let process = query_param(query, "process");
        let limit = match query_param(query, "limit") {
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| ApiError::bad(format!("limit: expected a number, got {l:?}")))?,
            None => 100,
        };
        let rows = self
            .audit
            .history(process.as_deref(), limit.min(10_000))
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok((StatusCode::OK, Value::Array(rows)))
    }
}
