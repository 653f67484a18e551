//! Scoped API tokens (SPEC §12, tenement 0.2's `--tenant`): a token bound to one process
//! (`api`) or one instance (`api:user123`) sees and acts on that part only: its instances,
//! their logs and numbers, restart and weight. Every other route answers 403.

use http::StatusCode;
use serde_json::Value;

use tenement_conf::InstanceName;

use super::route::ApiRoute;
use super::{parse_name, ApiError};
use crate::wire::LogsQuery;

/// What a scoped token may touch: a process, or one instance of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub process: String,
    pub id: Option<String>,
}

impl Scope {
    /// `PROCESS` or `PROCESS:ID`, checked as the config checks names.
    pub fn parse(s: &str) -> Result<Scope, String> {
        let s = s.trim();
        let (process, id) = match s.split_once(':') {
            Some((p, id)) => (p, Some(id)),
            None => (s, None),
        };
        tenement_conf::check_process_name(process)
            .map_err(|e| format!("bad scope {s:?}: {e} (expected PROCESS or PROCESS:ID)"))?;
        if let Some(id) = id {
            tenement_conf::check_instance_id(id)
                .map_err(|e| format!("bad scope {s:?}: {e} (expected PROCESS or PROCESS:ID)"))?;
        }
        Ok(Scope {
            process: process.to_string(),
            id: id.map(str::to_string),
        })
    }

    /// Whether the instance `process:id` is inside the scope.
    pub fn allows(&self, process: &str, id: &str) -> bool {
        self.process == process && self.id.as_deref().is_none_or(|mine| mine == id)
    }

    fn allows_name(&self, name: &InstanceName) -> bool {
        self.allows(&name.process, &name.id)
    }

    /// Keep the instances (`[{process, id, ...}]`) inside the scope.
    pub fn filter_instances(&self, list: Value) -> Value {
        match list {
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .filter(|v| {
                        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
                        self.allows(s("process"), s("id"))
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// Whether `route` is open to this scope; for the log routes, the query narrowed to it.
    /// Ok(None): allowed as asked. Err: 403 (or 400 for a bad log query).
    pub fn gate(
        &self,
        route: &ApiRoute<'_>,
        query: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        use ApiRoute as R;
        match route {
            R::ListInstances | R::WhoAmI => Ok(None),
            R::GetInstance(n) | R::RestartInstance(n) | R::SetWeight(n) => {
                let name = parse_name(n)?;
                match self.allows_name(&name) {
                    true => Ok(None),
                    false => Err(self.forbidden(&format!("instance {name}"))),
                }
            }
            R::Logs | R::LogsStream => {
                let mut q = LogsQuery::parse(query).map_err(ApiError::bad)?;
                if q.process.as_ref().is_some_and(|p| *p != self.process) {
                    return Err(self.forbidden("another process's logs"));
                }
                if let (Some(mine), Some(asked)) = (&self.id, &q.id) {
                    if mine != asked {
                        return Err(self.forbidden("another instance's logs"));
                    }
                }
                q.process = Some(self.process.clone());
                if self.id.is_some() {
                    q.id = self.id.clone();
                }
                Ok(Some(q.to_query()))
            }
            _ => Err(self.forbidden("this route")),
        }
    }

    fn forbidden(&self, what: &str) -> ApiError {
        ApiError(
            StatusCode::FORBIDDEN,
            format!("forbidden: this token is scoped to {self} and may not use {what}"),
        )
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{}:{id}", self.process),
            None => f.write_str(&self.process),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::Method;

    fn gate(
        scope: &str,
        method: Method,
        path: &'static str,
        q: Option<&str>,
    ) -> Result<Option<String>, u16> {
        let route = ApiRoute::parse(&method, path);
        Scope::parse(scope)
            .unwrap()
            .gate(&route, q)
            .map_err(|e| e.0.as_u16())
    }

    #[test]
    fn scopes_parse_as_names() {
        assert_eq!(Scope::parse("app").unwrap().to_string(), "app");
        assert_eq!(
            Scope::parse(" app:user1 ").unwrap().to_string(),
            "app:user1"
        );
        for bad in ["", "App Name", "app:", "app:a b", ":x"] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_instance_scope_reaches_its_instance_only() {
        let s = "app:u1";
        assert_eq!(gate(s, Method::GET, "/api/instances", None), Ok(None));
        assert_eq!(gate(s, Method::GET, "/api/whoami", None), Ok(None));
        assert_eq!(
            gate(s, Method::POST, "/api/instances/app:u1/restart", None),
            Ok(None)
        );
        assert_eq!(
            gate(s, Method::PUT, "/api/instances/app:u1/weight", None),
            Ok(None)
        );
        assert_eq!(
            gate(s, Method::GET, "/api/instances/app:u1", None),
            Ok(None)
        );
        assert_eq!(
            gate(s, Method::POST, "/api/instances/app:u2/restart", None),
            Err(403)
        );
        assert_eq!(
            gate(s, Method::PUT, "/api/instances/other:u1/weight", None),
            Err(403)
        );
        for (m, p) in [
            (Method::POST, "/api/instances"),
            (Method::DELETE, "/api/instances/app:u1"),
            (Method::POST, "/api/deploy"),
            (Method::POST, "/api/route"),
            (Method::GET, "/api/deploys"),
            (Method::GET, "/api/tokens"),
            (Method::POST, "/api/tokens"),
            (Method::DELETE, "/api/tokens/1"),
            (Method::GET, "/api/servers"),
            (Method::GET, "/api/tenants"),
            (Method::GET, "/api/fleet/metrics"),
        ] {
            assert_eq!(gate(s, m.clone(), p, None), Err(403), "{m} {p}");
        }
    }

    #[test]
    fn log_queries_are_narrowed_to_the_scope() {
        assert_eq!(
            gate("app:u1", Method::GET, "/api/logs", Some("limit=5"))
                .unwrap()
                .unwrap(),
            LogsQuery::parse(Some("process=app&id=u1&limit=5"))
                .unwrap()
                .to_query()
        );
        assert_eq!(
            gate("app", Method::GET, "/api/logs", Some("id=u2"))
                .unwrap()
                .unwrap(),
            LogsQuery::parse(Some("process=app&id=u2"))
                .unwrap()
                .to_query()
        );
        assert_eq!(
            gate("app", Method::GET, "/api/logs", Some("process=ten")),
            Err(403)
        );
        assert_eq!(
            gate("app:u1", Method::GET, "/api/logs/stream", Some("id=u2")),
            Err(403)
        );
    }

    #[test]
    fn instance_lists_are_filtered() {
        let list = serde_json::json!([
            {"process": "app", "id": "u1"}, {"process": "app", "id": "u2"}, {"process": "web", "id": "u1"}
        ]);
        let one = Scope::parse("app:u1")
            .unwrap()
            .filter_instances(list.clone());
        assert_eq!(one, serde_json::json!([{"process": "app", "id": "u1"}]));
        let app = Scope::parse("app").unwrap().filter_instances(list);
        assert_eq!(app.as_array().unwrap().len(), 2);
    }
}
