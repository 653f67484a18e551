//! The control API's messages, ONE type each, shared by both programs: clap parses them from
//! the command line, the client sends them as JSON, the API handlers deserialize them; and
//! `InstanceInfo`, the answer about one instance; `LogsQuery`, the log filters as a query string
//! (with the one percent-encoding both sides use).
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

// `POST /api/reload` (`ten reload`); an empty body is a reload.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadArgs {
    /// Print what would change and change nothing
    #[arg(long)]
    #[serde(default)]
    pub dry_run: bool,
}

// `POST /api/upgrade` (`ten upgrade`); an empty body upgrades to the binary at the running
// server's path.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeArgs {
    /// The new binary [default: the running server's path, e.g. after a package upgrade]
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub binary: Option<std::path::PathBuf>,
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

// ---- Query strings -------------------------------------------------------------------------

/// Percent-encode a path segment or query value (unreserved characters kept).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One query parameter, percent-decoded (`+` is a space; a broken escape stays as written).
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /api/logs`, `/api/logs/stream` and `/api/fleet/logs` (`ten logs`): the filters as one
/// type, written as a query string by the client (and by the fleet, forwarding to its
/// servers) and read back by the API. Empty values mean "not given", as they always have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogsQuery {
    pub process: Option<String>,
    /// The instance id (`id=`).
    pub id: Option<String>,
    pub stream: Option<tenement_supervisor::Stream>,
    /// Full-text search (FTS5 syntax). Not used by the live stream.
    pub search: Option<String>,
    /// Only lines newer than this (`since=10m`). Not used by the live stream.
    pub since: Option<std::time::Duration>,
    /// Only lines with a smaller id (paging back). Not used by the live stream.
    pub before_id: Option<i64>,
    /// At most this many lines (the store's default when absent or 0; negative is 0).
    pub limit: Option<i64>,
}

impl LogsQuery {
    /// Read a query string; the error names the parameter and the value.
    pub fn parse(q: Option<&str>) -> Result<Self, String> {
        use tenement_supervisor::Stream;
        let given = |key: &str| query_param(q, key).filter(|s| !s.is_empty());
        let stream = match given("stream").as_deref() {
            None => None,
            Some("stdout") => Some(Stream::Stdout),
            Some("stderr") => Some(Stream::Stderr),
            Some(other) => return Err(format!("stream: expected stdout or stderr, got {other:?}")),
        };
        let since = given("since")
            .map(|s| {
                tenement_conf::parse_duration(&s).map_err(|e| match e {
                    tenement_conf::DurationError::TooLong { .. } => format!("since: {e}"),
                    _ => format!("since: expected a duration like \"10m\", got {s:?}"),
                })
            })
            .transpose()?;
        let num = |key: &str| -> Result<Option<i64>, String> {
            given(key)
                .map(|s| {
                    s.parse::<i64>()
                        .map_err(|_| format!("{key}: expected a number, got {s:?}"))
                })
                .transpose()
        };
        Ok(LogsQuery {
            process: given("process"),
            id: given("id"),
            stream,
            search: query_param(q, "search"),
            since,
            before_id: num("before_id")?,
            limit: num("limit")?,
        })
    }

    /// The query string (without `?`), keys in a fixed order; empty when nothing is set.
    pub fn to_query(&self) -> String {
        let mut out = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(format!("{k}={}", encode(&v)));
            }
        };
        put("process", self.process.clone());
        put("id", self.id.clone());
        put("stream", self.stream.map(|s| s.as_str().to_string()));
        put("search", self.search.clone());
        put(
            "since",
            self.since.map(|d| match d.subsec_millis() {
                0 => d.as_secs().to_string(),
                _ => format!("{}ms", d.as_millis()),
            }),
        );
        put("before_id", self.before_id.map(|n| n.to_string()));
        put("limit", self.limit.map(|n| n.to_string()));
        out.join("&")
    }

    /// The filters the live stream applies (process, id, stream).
    pub fn stream_filters(&self) -> LogsQuery {
        LogsQuery {
            process: self.process.clone(),
            id: self.id.clone(),
            stream: self.stream,
            ..LogsQuery::default()
        }
    }
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

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&token=x%2By+z"), "token").as_deref(),
            Some("x+y z")
        );
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(Some("t=%"), "t").as_deref(), Some("%"));
        assert_eq!(query_param(Some("t=%4"), "t").as_deref(), Some("%4"));
    }

    #[test]
    fn logs_query_round_trips_and_names_bad_values() {
        let q = LogsQuery {
            process: Some("api".into()),
            id: Some("user 1".into()),
            stream: Some(tenement_supervisor::Stream::Stderr),
            search: Some("timeout OR \"refused here\"".into()),
            since: Some(std::time::Duration::from_millis(90_500)),
            before_id: Some(42),
            limit: Some(10),
        };
        let text = q.to_query();
        assert_eq!(LogsQuery::parse(Some(&text)).unwrap(), q);
        assert_eq!(LogsQuery::default().to_query(), "");
        assert_eq!(
            LogsQuery::parse(Some("process=&stream=&since=&limit=")).unwrap(),
            LogsQuery {
                search: None,
                ..LogsQuery::default()
            }
        );
        assert_eq!(
            LogsQuery::parse(Some("stream=both")).unwrap_err(),
            "stream: expected stdout or stderr, got \"both\""
        );
        assert_eq!(
            LogsQuery::parse(Some("since=soon")).unwrap_err(),
            "since: expected a duration like \"10m\", got \"soon\""
        );
        assert_eq!(
            LogsQuery::parse(Some("since=18446744073709551615")).unwrap_err(),
            "since: \"18446744073709551615\" is too long: a duration is at most 1 year (\"365d\")"
        );
        assert_eq!(
            LogsQuery::parse(Some("limit=ten")).unwrap_err(),
            "limit: expected a number, got \"ten\""
        );
        assert_eq!(
            q.stream_filters().to_query(),
            "process=api&id=user%201&stream=stderr"
        );
    }
}
