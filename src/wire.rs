//! The control API's messages, ONE type each, shared by both programs: clap parses them from
//! the command line, the client sends them as JSON, the API handlers deserialize them; and
//! `InstanceInfo`, the answer about one instance.
//!
//! The JSON is the API's public contract (tests and users post it directly): field names,
//! optional fields and defaults are those the handlers have always accepted, and the client
//! sends keys in sorted order as it always has (see `control.rs`). Flags that only the CLI
//! has are `#[serde(skip)]`. Where a CLI form is looser than the wire (`ten spawn api --id x`
//! versus `api:x`), the command normalizes before sending, and the field is required on the
//! wire even though it is an `Option` for clap (`required`).

use clap::Args;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Where the control socket of a data dir is: where the server binds it and the client looks.
pub fn control_socket(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("ten.sock")
}

/// A field that is optional for clap but required on the wire: a missing one is serde's own
/// "missing field" error, as when the field was a plain `String`.
fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `--timeout` / `--since`: a duration (`60s`, `10m`), > 0; kept as written.
pub fn parse_timeout(s: &str) -> Result<String, String> {
    tenement_conf::parse_duration(s)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            if d.is_zero() {
                Err("must be > 0".into())
            } else {
                Ok(s.to_string())
            }
        })
}

/// `--timeout` as sent: the duration text (the API also takes a number of seconds).
fn parse_timeout_value(s: &str) -> Result<Value, String> {
    parse_timeout(s).map(Value::String)
}

// `POST /api/instances` (`ten spawn`). No doc comment on the struct: it would become the
// `about` of the command that flattens it.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnArgs {
    /// process:id, or a process with --id
    #[serde(rename = "process")]
    pub target: String,
    /// The instance id (with a bare process name)
    #[arg(long)]
    #[serde(deserialize_with = "required", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Routing weight 0..100 [default: 100]
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

// `PUT /api/instances/{process:id}/weight` (`ten weight`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightArgs {
    /// Share of {process}.{domain}, 0..100
    #[arg(value_parser = clap::value_parser!(u32).range(0..=100))]
    pub weight: u32,
}

// `POST /api/deploy` (`ten deploy`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployArgs {
    /// process (with --version) or process:version
    #[arg(required_unless_present = "history")]
    #[serde(
        rename = "process",
        deserialize_with = "required",
        skip_serializing_if = "Option::is_none"
    )]
    pub target: Option<String>,
    /// The new version (its instance id)
    #[arg(long)]
    #[serde(deserialize_with = "required", skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Weight once healthy, 0..100 [default: 0]
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    // On the wire: duration text ("60s") or a number of seconds.
    /// How long to wait until healthy, e.g. 60s [default: startup_timeout]
    #[arg(long, value_parser = parse_timeout_value)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
}

// `POST /api/route` (`ten route`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteArgs {
    /// The process whose traffic moves
    pub process: String,
    /// The version (instance id) that gives up its traffic (weight 0)
    #[arg(long)]
    pub from: String,
    /// The version that takes all traffic (weight 100); must be healthy
    #[arg(long)]
    pub to: String,
}

// `POST /api/servers` (`ten server add`); the handler hands it to the fleet as `NewServer`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerArgs {
    pub id: String,
    pub url: String,
    /// Its base domain [default: the URL's host]
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Failover prefers servers of the same region
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Its API token, to read its /metrics and /api/logs for fleet aggregation
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<ServerArgs> for tenement_fleet::NewServer {
    fn from(a: ServerArgs) -> Self {
        tenement_fleet::NewServer {
            id: a.id,
            url: a.url,
            domain: a.domain,
            region: a.region,
            token: a.token,
        }
    }
}

// `POST /api/tenants` (`ten tenant add`); the handler hands it to the fleet as a `Tenant`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantArgs {
    pub id: String,
    pub domain: String,
    pub server: String,
    pub process: String,
    pub instance: String,
}

impl From<TenantArgs> for tenement_fleet::Tenant {
    fn from(a: TenantArgs) -> Self {
        tenement_fleet::Tenant {
            id: a.id,
            domain: a.domain,
            server: a.server,
            process: a.process,
            instance: a.instance,
        }
    }
}

// `POST /api/tenants/{id}/migrate` (`ten tenant migrate`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateArgs {
    pub server: String,
}

/// One instance as the API shows it (`GET /api/instances`, spawn, restart, weight, deploy).
/// Every field defaults when absent, so a client reads an older or newer server's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceInfo {
    /// `process:id`.
    pub name: String,
    pub process: String,
    pub id: String,
    /// `spawned` or `external`.
    pub kind: String,
    /// `{id}.{process}.{domain}`; absent for external upstreams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub state: String,
    /// `passing`, `failing` or `-`.
    pub health: String,
    pub weight: u32,
    pub pid: Option<u32>,
    pub address: Option<String>,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    pub requests: u64,
    pub in_flight: u64,
    pub idle: bool,
    pub last_error: Option<String>,
    pub storage_bytes: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spawn_body_is_what_the_api_always_took() {
        let body = SpawnArgs {
            target: "api".into(),
            id: Some("x".into()),
            weight: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"process": "api", "id": "x"})
        );
        let parsed: SpawnArgs =
            serde_json::from_value(json!({"process": "api", "id": "x", "weight": 3})).unwrap();
        assert_eq!(
            (parsed.target.as_str(), parsed.id.as_deref(), parsed.weight),
            ("api", Some("x"), Some(3))
        );
        let missing = serde_json::from_str::<SpawnArgs>(r#"{"process":"api"}"#).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "missing field `id` at line 1 column 17"
        );
        let null = serde_json::from_str::<SpawnArgs>(r#"{"process":"api","id":null}"#);
        assert!(null.unwrap_err().to_string().contains("invalid type: null"));
        let unknown = serde_json::from_str::<SpawnArgs>(r#"{"process":"a","id":"z","bogus":1}"#)
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with("unknown field `bogus`, expected one of `process`, `id`, `weight`"),
            "{unknown}"
        );
    }

    #[test]
    fn deploy_body_keeps_cli_only_flags_off_the_wire() {
        let parsed: DeployArgs =
            serde_json::from_value(json!({"process": "api", "version": "v2", "timeout": 5}))
                .unwrap();
        assert_eq!(parsed.timeout, Some(json!(5)));
        let unknown = serde_json::from_str::<DeployArgs>(
            r#"{"process":"api","version":"v2","history":true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("expected one of `process`, `version`, `weight`, `timeout`"),
            "{unknown}"
        );
        let missing = serde_json::from_str::<DeployArgs>(r#"{"process":"api"}"#).unwrap_err();
        assert!(missing.to_string().contains("missing field `version`"));
    }

    #[test]
    fn instance_info_round_trips_and_reads_partial_rows() {
        let info = InstanceInfo {
            name: "api:x".into(),
            process: "api".into(),
            id: "x".into(),
            kind: "spawned".into(),
            host: Some("x.api.localhost".into()),
            state: "healthy".into(),
            health: "passing".into(),
            weight: 100,
            pid: Some(42),
            ..InstanceInfo::default()
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["pid"], 42);
        assert_eq!(v["address"], Value::Null);
        assert_eq!(serde_json::from_value::<InstanceInfo>(v).unwrap(), info);
        let external = InstanceInfo {
            host: None,
            ..info.clone()
        };
        assert!(serde_json::to_value(&external)
            .unwrap()
            .get("host")
            .is_none());
        let partial: InstanceInfo = serde_json::from_value(json!({"name": "a:b"})).unwrap();
        assert_eq!(partial.name, "a:b");
    }
}
