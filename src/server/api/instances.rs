//! `/api/instances`: list, spawn, inspect, stop, restart, weight.

use http::StatusCode;
use serde_json::Value;

use tenement_conf::InstanceName;
use tenement_supervisor::{InstanceView, Kind, State};

use super::{parse_body, parse_name, Api, ApiError, ApiResult};
use crate::wire::{InstanceInfo, SpawnArgs, WeightArgs};

fn health(state: State) -> &'static str {
    match state {
        State::Healthy | State::Draining => "passing",
        State::Unhealthy => "failing",
        State::Starting | State::Stopped | State::Failed => "-",
    }
}

fn result_text<T>(r: &Result<T, tenement_supervisor::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("failed: {e}"),
    }
}

pub fn check_weight(w: u32) -> Result<u32, ApiError> {
    if w > 100 {
        return Err(ApiError::bad(format!(
            "weight must be within 0..100, got {w}"
        )));
    }
    Ok(w)
}

impl Api {
    pub(crate) fn instance_info(&self, v: &InstanceView) -> InstanceInfo {
        let stats = self.publisher.stats(&v.name);
        InstanceInfo {
            name: v.name.to_string(),
            process: v.name.process.clone(),
            id: v.name.id.clone(),
            kind: v.kind.as_str().into(),
            // An external upstream has no host of its own: it is reached through its process.
            host: (v.kind == Kind::Spawned).then(|| {
                format!(
                    "{}.{}.{}",
                    v.name.id.to_ascii_lowercase(),
                    v.name.process,
                    self.supervisor.config().settings.domain
                )
            }),
            state: v.state.as_str().into(),
            health: health(v.state).into(),
            weight: v.weight,
            pid: v.pid,
            address: v.addr.as_ref().map(|a| a.to_string()),
            uptime_secs: v.started.map(|s| s.elapsed().as_secs()),
            restarts: v.restarts,
            requests: stats.as_ref().map(|s| s.requests()).unwrap_or(0),
            in_flight: stats.as_ref().map(|s| s.in_flight()).unwrap_or(0),
            idle: v.idle,
            last_error: v.last_error.clone(),
            storage_bytes: v.storage_bytes,
        }
    }

    /// An instance as the JSON the API answers (keys in sorted order, as `serde_json::Value`
    /// keeps them).
    pub(crate) fn instance_json(&self, v: &InstanceView) -> Value {
        serde_json::to_value(self.instance_info(v)).unwrap_or(Value::Null)
    }

    pub(crate) fn list_instances(&self) -> Value {
        let view = self.supervisor.view();
        Value::Array(
            view.instances
                .iter()
                .map(|v| self.instance_json(v))
                .collect(),
        )
    }

    pub(crate) async fn spawn_instance(&self, body: &[u8]) -> ApiResult {
        let req: SpawnArgs = parse_body(body)?;
        let id = req.id.unwrap_or_default();
        let name = parse_name(&format!("{}:{id}", req.target))?;
        let weight = check_weight(req.weight.unwrap_or(100))?;
        let v = self.supervisor.spawn(&name, weight).await?;
        Ok((StatusCode::CREATED, self.instance_json(&v)))
    }

    fn view_of(&self, name: &InstanceName) -> Result<InstanceView, ApiError> {
        self.supervisor
            .instance(name)
            .ok_or_else(|| ApiError::not_found(format!("unknown instance {name}")))
    }

    pub(crate) fn get_instance(&self, name: &str) -> ApiResult {
        let name = parse_name(name)?;
        let v = self.view_of(&name)?;
        Ok((StatusCode::OK, self.instance_json(&v)))
    }

    pub(crate) async fn stop_instance(&self, name: &str) -> ApiResult {
        let name = parse_name(name)?;
        let r = self.supervisor.stop(&name).await;
        self.audit
            .record("stop", &name.process, &name.id, &result_text(&r));
        r?;
        Ok((StatusCode::NO_CONTENT, Value::Null))
    }

    pub(crate) async fn restart_instance(&self, name: &str) -> ApiResult {
        let name = parse_name(name)?;
        let v = self.supervisor.restart(&name).await?;
        Ok((StatusCode::OK, self.instance_json(&v)))
    }

    pub(crate) async fn set_weight(&self, name: &str, body: &[u8]) -> ApiResult {
        let name = parse_name(name)?;
        let req: WeightArgs = parse_body(body)?;
        let w = check_weight(req.weight)?;
        let v = self.view_of(&name)?;
        self.supervisor.set_weights(&[(name.clone(), w)]).await?;
        let what = match v.kind {
            Kind::External => format!("ok: weight {w} (external)"),
            Kind::Spawned => format!("ok: weight {w}"),
        };
        self.audit.record("weight", &name.process, &name.id, &what);
        let v = self.view_of(&name)?;
        Ok((StatusCode::OK, self.instance_json(&v)))
    }
}
