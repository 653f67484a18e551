//! The management API: ONE set of handlers for the bare domain on the proxy listener,
//! `admin_listen`, and the control socket (trusted: no token).

mod auth;
mod dashboard;
mod deploy;
mod fleet;
mod instances;
mod logs;
mod metrics;
#[cfg(test)]
mod props;
mod reload;
mod route;
mod scope;
mod upgrade;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use tenement_conf::InstanceName;
use tenement_proxy::management::{Body, Management, Request, Response};
use tenement_supervisor::Supervisor;

use crate::server::compose::Publisher;

pub use auth::Auth;
pub use metrics::register_process_collector;
pub use route::ApiRoute;
pub use scope::Scope;

pub struct Api {
    /// The running config is the supervisor's (`supervisor.config()`): one place, replaced
    /// whole by a reload.
    pub supervisor: Supervisor,
    pub publisher: Arc<Publisher>,
    pub auth: Auth,
    pub audit: crate::server::audit::Audit,
    pub logs: tenement_supervisor::logs::LogStore,
    /// The fleet (None without a `[fleet]` section).
    pub fleet: Option<tenement_fleet::Fleet>,
    /// The hot-path registry (None when `[settings] metrics = false`).
    pub metrics: Option<Arc<tenement_proxy::metrics::Metrics>>,
    /// The last `/metrics` render, shared by scrapes that waited for it.
    pub rendered: metrics::LastRender,
    /// Set once the listeners are open (`POST /api/reload` answers 503 before).
    pub reloader: std::sync::OnceLock<Arc<crate::server::reload::Reloader>>,
    /// Set once the listeners are open (`POST /api/upgrade` answers 503 before).
    pub upgrader: std::sync::OnceLock<Arc<crate::server::upgrade::Upgrader>>,
    /// The TLS certificates (None without `[settings.tls]`), for `GET /api/certs`.
    pub certs: Option<Arc<tenement_proxy::tls::Certs>>,
}

impl Api {
    /// `GET /api/certs`: every certificate ten serves, `{name, names, issuer, not_after
    /// (RFC 3339), source (file|acme)}`, sorted by name.
    fn list_certs(&self) -> Value {
        let Some(certs) = &self.certs else {
            return json!([]);
        };
        let set = certs.load_set();
        let mut rows: Vec<Value> = set
            .all()
            .map(|c| {
                let not_after = u64::try_from(c.not_after)
                    .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default();
                json!({
                    "name": c.names.first().cloned().unwrap_or_default(),
                    "names": c.names,
                    "issuer": c.issuer,
                    "not_after": not_after,
                    "source": c.source.as_str(),
                })
            })
            .collect();
        rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!(rows)
    }
}

/// An API error: status + message, rendered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, msg.into())
    }
}

impl From<tenement_supervisor::Error> for ApiError {
    fn from(e: tenement_supervisor::Error) -> Self {
        use tenement_supervisor::Error as E;
        let status = match &e {
            E::UnknownProcess(_) | E::UnknownInstance(_) => StatusCode::NOT_FOUND,
            E::AlreadyRunning(_) | E::External(_) => StatusCode::CONFLICT,
            // ten itself is out of descriptors or memory: try again later (SPEC §14).
            E::ShuttingDown | E::Upgrading | E::Resources(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::StartupFailed { .. } | E::Spawn(_) | E::Wake(..) | E::State(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string())
    }
}

pub type ApiResult = Result<(StatusCode, Value), ApiError>;

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = http::Response::new(Body::Full(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: ApiError) -> Response {
    json_response(e.0, &json!({ "error": e.1 }))
}

/// Parse a JSON body into `T`, naming what is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `POST /api/tokens` `{name?, scope?}` (an empty body: an unnamed full token).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenArgs {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl Api {
    fn create_token(&self, body: &[u8]) -> ApiResult {
        let args: TokenArgs = match body.iter().all(u8::is_ascii_whitespace) {
            true => TokenArgs::default(),
            false => parse_body(body)?,
        };
        let name = args.name.unwrap_or_default();
        if name.len() > 100 || name.chars().any(char::is_control) {
            return Err(ApiError::bad("name: at most 100 printable characters"));
        }
        let scope = args
            .scope
            .filter(|s| !s.trim().is_empty())
            .map(|s| Scope::parse(&s))
            .transpose()
            .map_err(ApiError::bad)?;
        let (id, token) = self
            .auth
            .generate(&name, scope.as_ref())
            .map_err(internal)?;
        Ok((
            StatusCode::CREATED,
            json!({ "id": id, "name": name, "scope": scope.map(|s| s.to_string()), "token": token }),
        ))
    }
}

/// `process:id` from a path segment.
pub fn parse_name(s: &str) -> Result<InstanceName, ApiError> {
    s.parse::<InstanceName>().map_err(|e| {
        ApiError::bad(format!(
            "bad instance name {s:?}: {e} (expected process:id)"
        ))
    })
}

/// Equal without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &Request) -> Option<String> {
    if let Some(v) = req
        .head
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        return v
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string());
    }
    // SSE clients (EventSource) cannot send headers: ?token= on stream endpoints.
    if req.head.uri.path().ends_with("/stream") {
        return query_param(req.head.uri.query(), "token");
    }
    None
}

pub use crate::wire::query_param;

#[async_trait]
impl Management for Api {
    async fn handle(&self, req: Request) -> Response {
        let path = req.head.uri.path().to_string();
        if matches!(path.as_str(), "/health" | "/metrics") && !req.trusted {
            if let Some(want) = &self.supervisor.config().settings.metrics_token {
                let got = bearer(&req).unwrap_or_default();
                if !constant_time_eq(got.as_bytes(), want.as_bytes()) {
                    let mut resp = error_response(ApiError(
                        StatusCode::UNAUTHORIZED,
                        "metrics_token is set: send Authorization: Bearer <metrics_token>".into(),
                    ));
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"tenement\""),
                    );
                    return resp;
                }
            }
        }
        match path.as_str() {
            "/health" => return json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/metrics" => {
                let mut resp = http::Response::new(Body::Full(self.metrics_body().await));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return resp;
            }
            // The dashboard: fixed embedded files only (anything else under /assets/ is 404).
            p if p == "/" || p == "/index.html" || p.starts_with("/assets/") => {
                return dashboard::asset(p).unwrap_or_else(|| {
                    error_response(ApiError::not_found(format!("no such page: {p}")))
                });
            }
            _ => {}
        }
        if !path.starts_with("/api/") {
            return error_response(ApiError::not_found(format!("no such page: {path}")));
        }
        let mut scope = None;
        if !req.trusted {
            match self.auth.check(bearer(&req).as_deref(), req.client).await {
                auth::Verdict::Ok(s) => scope = s,
                auth::Verdict::Denied(msg) => {
                    let mut resp = error_response(ApiError(StatusCode::UNAUTHORIZED, msg));
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"tenement\""),
                    );
                    return resp;
                }
                auth::Verdict::TooMany {
                    retry_after,
                    message,
                } => {
                    let mut resp = error_response(ApiError(StatusCode::TOO_MANY_REQUESTS, message));
                    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                        resp.headers_mut().insert(header::RETRY_AFTER, v);
                    }
                    return resp;
                }
            }
        }
        let route = ApiRoute::parse(&req.head.method, &path);
        // A scoped token: only its part (403 elsewhere), log queries narrowed to it.
        let mut query = req.head.uri.query().map(str::to_string);
        if let Some(s) = &scope {
            match s.gate(&route, query.as_deref()) {
                Ok(Some(narrowed)) => query = Some(narrowed),
                Ok(None) => {}
                Err(e) => return error_response(e),
            }
        }
        let query = query.as_deref();
        match route {
            ApiRoute::FleetMetrics => {
                return match self.fleet_metrics_text().await {
                    Ok(text) => {
                        let mut resp = http::Response::new(Body::Full(Bytes::from(text)));
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        resp
                    }
                    Err(e) => error_response(e),
                };
            }
            ApiRoute::LogsStream => {
                return self.logs_stream(query).unwrap_or_else(error_response);
            }
            _ => {}
        }
        match self
            .dispatch(&req, &path, route, query, scope.as_ref())
            .await
        {
            Ok((status, body)) if status == StatusCode::NO_CONTENT => {
                let _ = body;
                let mut resp = http::Response::new(Body::Full(Bytes::new()));
                *resp.status_mut() = status;
                resp
            }
            Ok((status, body)) => json_response(status, &body),
            Err(e) => {
                let allow = route
                    .allow()
                    .filter(|_| e.0 == StatusCode::METHOD_NOT_ALLOWED);
                let mut resp = error_response(e);
                if let Some(allow) = allow {
                    resp.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static(allow));
                }
                resp
            }
        }
    }
}

impl Api {
    /// Answer one JSON route (the streamed and plain-text ones are answered in `handle`).
    /// `query` is the request's, narrowed to `scope` for a scoped token.
    async fn dispatch(
        &self,
        req: &Request,
        path: &str,
        route: ApiRoute<'_>,
        query: Option<&str>,
        scope: Option<&Scope>,
    ) -> ApiResult {
        use ApiRoute as R;
        let m = &req.head.method;
        let body = &req.body;
        let fleet = if route.is_fleet() {
            Some(self.fleet_or_off()?)
        } else {
            None
        };
        match (route, fleet) {
            (R::ListInstances, _) => {
                let list = self.list_instances();
                let list = match scope {
                    Some(s) => s.filter_instances(list),
                    None => list,
                };
                Ok((StatusCode::OK, list))
            }
            (R::SpawnInstance, _) => self.spawn_instance(body).await,
            (R::GetInstance(name), _) => self.get_instance(name),
            (R::StopInstance(name), _) => self.stop_instance(name).await,
            (R::RestartInstance(name), _) => self.restart_instance(name).await,
            (R::SetWeight(name), _) => self.set_weight(name, body).await,
            (R::Deploy, _) => self.deploy(body).await,
            (R::Route, _) => self.route_traffic(body).await,
            (R::History, _) => self.history(query),
            (R::Reload, _) => self.reload(body).await,
            (R::Upgrade, _) => self.upgrade(body, req.trusted).await,
            (R::Logs, _) => self.logs(query),
            (R::CreateToken, _) => {
                if !req.trusted {
                    return Err(ApiError(
                        StatusCode::FORBIDDEN,
                        "tokens are created only over the control socket (ten token-gen)".into(),
                    ));
                }
                self.create_token(body)
            }
            (R::WhoAmI, _) => Ok((
                StatusCode::OK,
                json!({ "scope": scope.map(ToString::to_string) }),
            )),
            (R::ListTokens, _) => {
                let list = self.auth.list().map_err(internal)?;
                Ok((StatusCode::OK, json!(list)))
            }
            (R::RevokeToken(id), _) => {
                let n: i64 = id.parse().map_err(|_| {
                    ApiError::bad(format!(
                        "bad token id {id:?}: expected a number (see ten token list)"
                    ))
                })?;
                match self.auth.revoke(n).map_err(internal)? {
                    true => Ok((StatusCode::NO_CONTENT, Value::Null)),
                    false => Err(ApiError::not_found(format!(
                        "no token with id {n} (see ten token list)"
                    ))),
                }
            }
            (R::ListCerts, _) => Ok((StatusCode::OK, self.list_certs())),
            (R::ListServers, Some(f)) => {
                Ok((StatusCode::OK, json!(self.live_view(f).await.servers)))
            }
            (R::AddServer, Some(f)) => self.routed(f, fleet::add_server(f, body)).await,
            (R::GetServer(id), Some(f)) => fleet::server_json(&*self.live_view(f).await, id),
            (R::RemoveServer(id), Some(f)) => self.routed(f, fleet::remove_server(f, id)).await,
            (R::ListTenants, Some(f)) => fleet::list_tenants(f, &*self.live_view(f).await),
            (R::AddTenant, Some(f)) => self.routed(f, fleet::add_tenant(f, body)).await,
            (R::GetTenant(id), Some(f)) => fleet::get_tenant(f, &*self.live_view(f).await, id),
            (R::RemoveTenant(id), Some(f)) => self.routed(f, fleet::remove_tenant(f, id)).await,
            (R::MigrateTenant(id), Some(f)) => {
                self.routed(f, fleet::migrate_tenant(f, id, body)).await
            }
            (R::FleetMetrics, Some(_)) => self
                .fleet_metrics_text()
                .await
                .map(|text| (StatusCode::OK, Value::String(text))),
            (R::FleetLogs, Some(f)) => fleet::fleet_logs(f, query).await,
            (R::WrongMethod { fleet: true, .. }, _) => Err(ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {m} not allowed on {path}"),
            )),
            (R::WrongMethod { allow, .. }, _) => Err(ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {m} not allowed on {path} (allowed: {allow})"),
            )),
            // LogsStream is answered in `handle`; a fleet route always has its fleet here.
            (R::Unknown | R::LogsStream, _) | (_, None) => Err(ApiError::not_found(format!(
                "no such API route: {m} {path}"
            ))),
        }
    }
}
