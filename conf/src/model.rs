//! The resolved configuration: what the rest of `ten` consumes.
//!
//! These types are produced by [`crate::Config::parse`] after every check has passed; they hold
//! no raw TOML. Templates (`{port}`, `{id}`, ...) are kept unexpanded: they are filled in per
//! instance by [`crate::template::expand`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A whole `tenement.toml`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, if any (for messages).
    pub source: Option<PathBuf>,
    pub settings: Settings,
    /// Processes in declaration order (`[process.X]` and `[service.X]` alike).
    pub processes: Vec<Process>,
    /// `[routes]` in declaration order; shared (not copied) by every routing table.
    pub routes: Arc<[Route]>,
    /// `[instances]`: spawned at boot, in this order.
    pub instances: Vec<InstanceName>,
    /// `[fleet]`, when present.
    pub fleet: Option<Fleet>,
}

impl Config {
    /// The process called `name`.
    pub fn process(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Lower-cased; default "localhost".
    pub domain: String,
    /// HTTP proxy listeners, `host:port` (port may be 0). Default `["0.0.0.0:8080"]`.
    pub listen: Vec<String>,
    /// Management API + /metrics on their own port.
    pub admin_listen: Option<String>,
    /// Absolute (relative paths are resolved against the config file's folder). Default
    /// `./tenement-data` next to the config file.
    pub data_dir: PathBuf,
    pub health_check_interval: Duration,
    pub drain_timeout: Duration,
    /// Bytes; default 10 MB.
    pub max_body: u64,
    pub tls: Option<Tls>,
    /// `[settings.acme]`: certificates on demand for routed names (needs `[settings.tls]`).
    pub acme: Option<Acme>,
    /// One JSON line per request (default off).
    pub access_log: AccessLog,
    pub metrics_token: Option<String>,
    /// Per-request metrics on the hot path (default true; false only for benchmarking the cost).
    pub metrics: bool,
    /// Requests from a loopback address on `admin_listen` need no API token (default false).
    pub admin_loopback_trusted: bool,
    /// Peers that may supply `X-Forwarded-For/Proto/Host` (SPEC §12), as CIDRs normalised to
    /// `addr/len` (a bare address becomes `/32` or `/128`); default none.
    pub trusted_proxies: Vec<String>,
    pub log_retention: Duration,
    pub log_max_rows: u64,
    /// Longest captured line, bytes (longer lines are cut and marked); default 16 KB.
    pub log_max_line: u64,
    /// Most bytes of log lines kept in the store (oldest dropped first); default 1 GB.
    pub log_max_bytes: u64,
    /// The whole request head must arrive within this (SPEC §14); default 10 s.
    pub header_timeout: Duration,
    /// An idle keep-alive client connection is closed after this; default 60 s.
    pub keepalive_timeout: Duration,
    /// Open client connections per listener; beyond it new ones wait in the backlog.
    /// Default 10,000.
    pub max_connections: u32,
    /// The proxy's worker threads (a runtime each) and the main runtime's workers (the API, the
    /// supervisor); None: one per CPU ten may run on. Read once at start.
    pub threads: Option<u32>,
    /// Keep each HTTP/1 header name's case as received (a second map per message); default
    /// false: well-known names are sent in title case, others in lower case.
    pub preserve_header_case: bool,
    // tenement 0.2 defaults for every process:
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub cpu_shares: Option<u32>,
    pub storage_quota_mb: Option<u64>,
    pub storage_persist: bool,
    /// `user`: the default of every process (SPEC §12); None: ten's own user.
    pub user: Option<RunAs>,
}

/// Who an instance runs as (`user`, SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// A user of this system (looked up when the config was loaded) and its primary group.
    User { name: String, uid: u32, gid: u32 },
    /// `user = "dynamic"`: a uid/gid of its own per instance, stable per `process:id`.
    Dynamic,
}

/// `isolation` (SPEC §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// No namespaces (the default).
    #[default]
    Process,
    /// New PID, mount, IPC and UTS namespaces; private /tmp; data_dir hidden but for the
    /// instance's own DATA_DIR and socket directory.
    Namespace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub listen: String,
    /// The default certificate (served when no other covers the SNI name). Optional only with
    /// `[settings.acme]`: without one, a handshake for a name no certificate covers fails.
    pub default: Option<CertFiles>,
    /// More certificates, chosen by SNI (`certs = [{cert, key}, ...]`), in declaration order.
    pub certs: Vec<CertFiles>,
    /// Offer HTTP/2 by ALPN (default true).
    pub http2: bool,
}

/// A certificate chain and its private key (PEM files).
#[derive(Debug, Clone, PartialEq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where it was configured, for messages: `settings.tls` or `settings.tls.certs[1]`.
    pub origin: String,
}

/// `[settings.acme]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    pub email: Option<String>,
    /// The ACME directory URL; default Let's Encrypt production.
    pub directory: String,
    pub challenge: AcmeChallenge,
    /// A PEM CA bundle to trust for the directory (a private or test CA such as Pebble).
    pub ca_cert: Option<PathBuf>,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// Answered on every plain listener at `/.well-known/acme-challenge/`.
    Http01,
    /// RFC 8737: answered on the TLS listener, to a ClientHello offering ALPN `acme-tls/1`.
    TlsAlpn01,
}

/// `[settings] access_log`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLog {
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenMode {
    /// TCP on 127.0.0.1:{port}, env PORT.
    Port,
    /// Unix socket at `socket`, env SOCKET_PATH.
    Socket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// Where something listens, resolved: an instance, an external upstream, a fleet server. The
/// one address type the proxy, the supervisor and the composer share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An external upstream as written in the config: a name to resolve (`host:port`), or a
/// socket path (already an [`Addr`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// `host:port`
    Tcp(String),
    /// `unix:/path`
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub name: String,
    /// Program then arguments, templates unexpanded. Empty for an external process (`upstreams`).
    pub command: Vec<String>,
    /// Working directory template (`directory`, alias `workdir`). A relative path (not starting
    /// with a placeholder) is resolved against the config file's folder at parse time.
    pub directory: Option<String>,
    pub env: BTreeMap<String, String>,
    pub listen: ListenMode,
    /// Socket path template; default `{data_dir}/{process}-{id}.sock`. A relative path (not
    /// starting with a placeholder) is resolved against the config file's folder at parse time.
    pub socket: String,
    /// Health path starting with '/'; None = connect check.
    pub health: Option<String>,
    pub startup_timeout: Duration,
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Zero = never idle-stop.
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub memory_limit_mb: Option<u64>,
    pub cpu_shares: Option<u32>,
    pub storage_quota_mb: Option<u64>,
    pub storage_persist: bool,
    /// Bytes (settings.max_body unless overridden).
    pub max_body: u64,
    pub plugins: Vec<PluginConf>,
    /// Talk HTTP/2 cleartext (h2c, prior knowledge) to the app (gRPC); default false.
    pub upstream_http2: bool,
    /// Non-empty: an external service ten does not spawn.
    pub upstreams: Vec<Upstream>,
    /// Who its instances run as (`user`, else `[settings] user`); None: ten's own user.
    pub user: Option<RunAs>,
    /// Names of ten's own environment passed on (beside the allow-list, SPEC §12).
    pub env_inherit: Vec<String>,
    pub isolation: Isolation,
}

impl Process {
    pub fn is_external(&self) -> bool {
        !self.upstreams.is_empty()
    }
}

/// `process:id`
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName {
    pub process: String,
    pub id: String,
}

impl std::fmt::Display for InstanceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.process, self.id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Lower-cased host, no port.
    pub host: String,
    /// Path prefix starting with '/', no trailing '/' except the root itself ("/" = whole host).
    pub prefix: String,
    pub process: String,
    /// `Some(id)`: one instance; `None`: weighted across the process's instances.
    pub instance: Option<String>,
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RateLimitKey {
    ClientIp,
    /// The header name, lower-cased.
    Header(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PluginConf {
    RateLimit {
        rps: f64,
        /// Default: `ceil(rps)`.
        burst: u32,
        key: RateLimitKey,
    },
    /// CIDRs normalised to `addr/len` (a bare address becomes `/32` or `/128`).
    IpFilter {
        allow: Vec<String>,
        deny: Vec<String>,
    },
    Headers {
        request_set: BTreeMap<String, String>,
        request_remove: Vec<String>,
        response_set: BTreeMap<String, String>,
        response_remove: Vec<String>,
    },
    BasicAuth {
        users: BTreeMap<String, String>,
    },
    MaxBody {
        limit: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub health_interval: Duration,
    pub unhealthy_after: u32,
    pub degraded_latency: Duration,
    pub failover: bool,
    /// Home back online: the failover copy is stopped after this long without traffic.
    pub failover_linger: Duration,
    /// How long a request for a tenant being placed waits (the copy's spawn included).
    pub placement_timeout: Duration,
    pub webhook: Option<String>,
    pub webhook_after: Duration,
    /// Where servers, tenants and placements live: a `postgres://` URL shared by several
    /// routers; None: the SQLite file in `data_dir`.
    pub store: Option<String>,
}

impl Default for Fleet {
    /// An empty `[fleet]`.
    fn default() -> Self {
        Fleet {
            health_interval: Duration::from_secs(5),
            unhealthy_after: 3,
            degraded_latency: Duration::from_millis(500),
            failover: true,
            failover_linger: Duration::from_secs(600),
            placement_timeout: Duration::from_secs(30),
            webhook: None,
            webhook_after: Duration::from_secs(300),
            store: None,
        }
    }
}
