//! `ApiRoute`: every route of the management API under `/api/`, parsed ONCE from (method,
//! path). It drives the dispatch in `mod.rs` and the `Allow` header of 405 answers, so the
//! list of paths and their methods lives in one place.

use http::Method;

/// One API route; `&str` fields are raw path segments (an instance `process:id`, a server or
/// tenant id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRoute<'a> {
    ListInstances,
    SpawnInstance,
    GetInstance(&'a str),
    StopInstance(&'a str),
    RestartInstance(&'a str),
    SetWeight(&'a str),
    Deploy,
    Route,
    History,
    Reload,
    /// `ten upgrade` (control socket only).
    Upgrade,
    Logs,
    LogsStream,
    CreateToken,
    ListTokens,
    /// What the caller's token may see (`{"scope"}`), for the dashboard.
    WhoAmI,
    RevokeToken(&'a str),
    ListCerts,
    ListServers,
    AddServer,
    GetServer(&'a str),
    RemoveServer(&'a str),
    ListTenants,
    AddTenant,
    GetTenant(&'a str),
    RemoveTenant(&'a str),
    MigrateTenant(&'a str),
    FleetMetrics,
    FleetLogs,
    /// A known path asked with a method it does not take: 405 with `Allow: allow`.
    WrongMethod {
        allow: &'static str,
        fleet: bool,
    },
    /// No such path: 404.
    Unknown,
}

impl<'a> ApiRoute<'a> {
    /// The route of `method` on `path` (the whole path, `/api/...`).
    pub fn parse(method: &Method, path: &'a str) -> Self {
        use ApiRoute as R;
        let segments: Vec<&'a str> = path.trim_start_matches("/api/").split('/').collect();
        let segs = segments.as_slice();
        let Some((allow, fleet)) = allowed(segs) else {
            return R::Unknown;
        };
        match (method, segs) {
            (&Method::GET, ["instances"]) => R::ListInstances,
            (&Method::POST, ["instances"]) => R::SpawnInstance,
            (&Method::GET, ["instances", name]) => R::GetInstance(name),
            (&Method::DELETE, ["instances", name]) => R::StopInstance(name),
            (&Method::POST, ["instances", name, "restart"]) => R::RestartInstance(name),
            (&Method::PUT, ["instances", name, "weight"]) => R::SetWeight(name),
            (&Method::POST, ["deploy"]) => R::Deploy,
            (&Method::POST, ["route"]) => R::Route,
            (&Method::GET, ["deploys"]) => R::History,
            (&Method::POST, ["reload"]) => R::Reload,
            (&Method::POST, ["upgrade"]) => R::Upgrade,
            (&Method::GET, ["logs"]) => R::Logs,
            (&Method::GET, ["logs", "stream"]) => R::LogsStream,
            (&Method::POST, ["tokens"]) => R::CreateToken,
            (&Method::GET, ["tokens"]) => R::ListTokens,
            (&Method::GET, ["whoami"]) => R::WhoAmI,
            (&Method::DELETE, ["tokens", id]) => R::RevokeToken(id),
            (&Method::GET, ["certs"]) => R::ListCerts,
            (&Method::GET, ["servers"]) => R::ListServers,
            (&Method::POST, ["servers"]) => R::AddServer,
            (&Method::GET, ["servers", id]) => R::GetServer(id),
            (&Method::DELETE, ["servers", id]) => R::RemoveServer(id),
            (&Method::GET, ["tenants"]) => R::ListTenants,
            (&Method::POST, ["tenants"]) => R::AddTenant,
            (&Method::GET, ["tenants", id]) => R::GetTenant(id),
            (&Method::DELETE, ["tenants", id]) => R::RemoveTenant(id),
            (&Method::POST, ["tenants", id, "migrate"]) => R::MigrateTenant(id),
            (&Method::GET, ["fleet", "metrics"]) => R::FleetMetrics,
            (&Method::GET, ["fleet", "logs"]) => R::FleetLogs,
            _ => R::WrongMethod { allow, fleet },
        }
    }

    /// A fleet route (these answer 409 while the config has no `[fleet]` section, whatever
    /// the method).
    pub fn is_fleet(&self) -> bool {
        use ApiRoute as R;
        match self {
            R::ListServers
            | R::AddServer
            | R::GetServer(_)
            | R::RemoveServer(_)
            | R::ListTenants
            | R::AddTenant
            | R::GetTenant(_)
            | R::RemoveTenant(_)
            | R::MigrateTenant(_)
            | R::FleetMetrics
            | R::FleetLogs => true,
            R::WrongMethod { fleet, .. } => *fleet,
            _ => false,
        }
    }

    /// The `Allow` header of a 405 answer on this route.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            ApiRoute::WrongMethod { allow, .. } => Some(*allow),
            _ => None,
        }
    }
}

/// The methods a path takes and whether it is a fleet path; None for unknown paths.
fn allowed(segments: &[&str]) -> Option<(&'static str, bool)> {
    Some(match segments {
        ["instances"] => ("GET, POST", false),
        ["instances", _] => ("GET, DELETE", false),
        ["instances", _, "restart"] | ["deploy"] | ["route"] | ["reload"] | ["upgrade"] => {
            ("POST", false)
        }
        ["tokens"] => ("GET, POST", false),
        ["tokens", _] => ("DELETE", false),
        ["instances", _, "weight"] => ("PUT", false),
        ["deploys"] | ["logs"] | ["logs", "stream"] | ["whoami"] | ["certs"] => ("GET", false),
        ["servers"] | ["tenants"] => ("GET, POST", true),
        ["servers", _] | ["tenants", _] => ("GET, DELETE", true),
        ["tenants", _, "migrate"] => ("POST", true),
        ["fleet", "metrics" | "logs"] => ("GET", true),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApiRoute as R;

    fn parse(method: &str, path: &'static str) -> ApiRoute<'static> {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        ApiRoute::parse(&m, path)
    }

    #[test]
    fn every_route_parses() {
        let table = [
            ("GET", "/api/instances", R::ListInstances),
            ("POST", "/api/instances", R::SpawnInstance),
            ("GET", "/api/instances/api:x", R::GetInstance("api:x")),
            ("DELETE", "/api/instances/api:x", R::StopInstance("api:x")),
            (
                "POST",
                "/api/instances/api:x/restart",
                R::RestartInstance("api:x"),
            ),
            ("PUT", "/api/instances/api:x/weight", R::SetWeight("api:x")),
            ("POST", "/api/deploy", R::Deploy),
            ("POST", "/api/route", R::Route),
            ("GET", "/api/deploys", R::History),
            ("POST", "/api/reload", R::Reload),
            ("POST", "/api/upgrade", R::Upgrade),
            ("GET", "/api/logs", R::Logs),
            ("GET", "/api/logs/stream", R::LogsStream),
            ("POST", "/api/tokens", R::CreateToken),
            ("GET", "/api/tokens", R::ListTokens),
            ("GET", "/api/whoami", R::WhoAmI),
            ("DELETE", "/api/tokens/3", R::RevokeToken("3")),
            ("GET", "/api/certs", R::ListCerts),
            ("GET", "/api/servers", R::ListServers),
            ("POST", "/api/servers", R::AddServer),
            ("GET", "/api/servers/eu1", R::GetServer("eu1")),
            ("DELETE", "/api/servers/eu1", R::RemoveServer("eu1")),
            ("GET", "/api/tenants", R::ListTenants),
            ("POST", "/api/tenants", R::AddTenant),
            ("GET", "/api/tenants/acme", R::GetTenant("acme")),
            ("DELETE", "/api/tenants/acme", R::RemoveTenant("acme")),
            (
                "POST",
                "/api/tenants/acme/migrate",
                R::MigrateTenant("acme"),
            ),
            ("GET", "/api/fleet/metrics", R::FleetMetrics),
            ("GET", "/api/fleet/logs", R::FleetLogs),
        ];
        for (method, path, want) in table {
            let got = parse(method, path);
            assert_eq!(got, want, "{method} {path}");
            assert_eq!(got.allow(), None, "{method} {path}");
            let fleet =
                path.contains("/servers") || path.contains("/tenants") || path.contains("/fleet/");
            assert_eq!(got.is_fleet(), fleet, "{method} {path}");
        }
    }

    #[test]
    fn a_known_path_with_another_method_says_which_methods_it_takes() {
        let table = [
            ("DELETE", "/api/instances", "GET, POST", false),
            ("PATCH", "/api/instances/api:x", "GET, DELETE", false),
            ("GET", "/api/instances/api:x/restart", "POST", false),
            ("POST", "/api/instances/api:x/weight", "PUT", false),
            ("PUT", "/api/tokens", "GET, POST", false),
            ("GET", "/api/tokens/3", "DELETE", false),
            ("GET", "/api/deploy", "POST", false),
            ("GET", "/api/route", "POST", false),
            ("POST", "/api/deploys", "GET", false),
            ("GET", "/api/reload", "POST", false),
            ("GET", "/api/upgrade", "POST", false),
            ("POST", "/api/logs", "GET", false),
            ("POST", "/api/logs/stream", "GET", false),
            ("PUT", "/api/servers", "GET, POST", true),
            ("POST", "/api/servers/eu1", "GET, DELETE", true),
            ("DELETE", "/api/tenants", "GET, POST", true),
            ("PUT", "/api/tenants/acme", "GET, DELETE", true),
            ("GET", "/api/tenants/acme/migrate", "POST", true),
            ("POST", "/api/fleet/metrics", "GET", true),
            ("DELETE", "/api/fleet/logs", "GET", true),
        ];
        for (method, path, allow, fleet) in table {
            let got = parse(method, path);
            assert_eq!(got, R::WrongMethod { allow, fleet }, "{method} {path}");
            assert_eq!(got.allow(), Some(allow), "{method} {path}");
            assert_eq!(got.is_fleet(), fleet, "{method} {path}");
        }
    }

    #[test]
    fn unknown_paths_are_unknown_whatever_the_method() {
        for path in [
            "/api/nothing-here",
            "/api/",
            "/api/instances/api:x/logs",
            "/api/instances/a/b/c",
            "/api/fleet",
            "/api/fleet/other",
            "/api/logs/stream/x",
            "/health",
        ] {
            for method in ["GET", "POST", "DELETE"] {
                assert_eq!(parse(method, path), R::Unknown, "{method} {path}");
            }
        }
    }
}
