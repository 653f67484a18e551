//! Valid configs: the SPEC §2 example, a tenement 0.2 config, the defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{errors, ok};
use crate::{
    Config, InstanceName, ListenMode, PluginConf, RateLimitKey, RestartPolicy, Route, Settings,
    Upstream,
};

const SPEC_EXAMPLE: &str = r#"
[settings]
domain = "example.com"          # default "localhost"
listen = "0.0.0.0:8080"         # HTTP proxy listener (repeatable as a list)
admin_listen = "127.0.0.1:9090" # optional: management API + /metrics on its own port
data_dir = "./tenement-data"    # holds ten.sock, tenement.db, instance sockets
health_check_interval = "10s"
drain_timeout = "30s"           # in-flight requests get this long on stop/route/deploy
max_body = "10MB"               # 413 above it; per-process override
[settings.tls]                  # optional TLS termination (cert + key files; ACME later)
listen = "0.0.0.0:8443"
cert = "CERT"
key = "KEY"

[process.api]
command = "python3 app.py --port {port}"       # shell-split; or command + args = [...]
directory = "/srv/api/{version}"                # alias: workdir
env = { APP_ENV = "production" }
listen = "port"           # "port" (default: TCP 127.0.0.1:{port}, env PORT) or "socket" (unix socket at
                          # `socket`, env SOCKET_PATH; the default when `socket` is set explicitly)
socket = "{data_dir}/{process}-{id}.sock"
health = "/health"        # GET over the instance's socket/port; any 2xx passes. No health: connect check.
startup_timeout = "10s"   # spawn fails if not healthy by then (error includes the last log lines)
stop_timeout = "10s"      # SIGTERM to the process group, SIGKILL after this
restart = "on-failure"    # "always" | "on-failure" | "never"
max_restarts = 5          # within restart_window, then state "failed" (no restart loop)
restart_window = "5m"
idle_timeout = "0"        # >0: stop an instance idle that long (scale to zero); it wakes on its next request
request_timeout = "30s"   # upstream response timeout -> 504
memory_limit_mb = 512     # optional, cgroup v2 memory.max when available, else clear warning
plugins = [ { kind = "rate_limit", rps = 100, burst = 200 } ]   # see §8

[process.legacy]           # an existing service ten does not spawn: health-checked and routed like an
upstreams = ["127.0.0.1:3000", "unix:/run/legacy.sock"]   # instance each: legacy:0, legacy:1
health = "/up"

[routes]                   # any host, optional path prefix; longest prefix wins
"example.com" = "web"                     # weighted across web's instances
"www.example.com" = "web"
"example.com/api" = { to = "api:prod", strip_prefix = true }

[instances]                # spawned at boot, in this order
api = ["prod"]
"#;

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "tenement-conf-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn spec_example_parses_with_its_values() {
    let dir = TempDir::new("spec");
    std::fs::create_dir_all(dir.0.join("tls")).unwrap();
    std::fs::write(dir.0.join("tls/cert.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(dir.0.join("tls/key.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    // The example routes to `web`, which it never declares: declare it.
    let text = SPEC_EXAMPLE
        .replace("\"CERT\"", "\"tls/cert.pem\"")
        .replace("\"KEY\"", "\"./tls/key.pem\"")
        + "\n[process.web]\ncommand = [\"./web\", \"--socket\", \"{socket}\"]\nsocket = \"/run/web-{id}.sock\"\n";
    let path = dir.0.join("tenement.toml");
    std::fs::write(&path, text).unwrap();
    let c = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.source.as_deref(), Some(path.as_path()));

    let s = &c.settings;
    assert_eq!(s.domain, "example.com");
    assert_eq!(s.listen, vec!["0.0.0.0:8080"]);
    assert_eq!(s.admin_listen.as_deref(), Some("127.0.0.1:9090"));
    assert_eq!(s.data_dir, dir.0.join("tenement-data"));
    assert_eq!(s.max_body, 10_000_000);
    let tls = s.tls.as_ref().unwrap();
    assert_eq!(tls.listen, "0.0.0.0:8443");
    let default = tls.default.as_ref().unwrap();
    assert_eq!(default.cert, dir.0.join("tls/cert.pem"));
    assert_eq!(default.key, dir.0.join("tls/key.pem"));
    assert!(tls.certs.is_empty());
    assert!(tls.http2, "HTTP/2 is offered by default");

    let names: Vec<&str> = c.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["api", "legacy", "web"]);
    let api = c.process("api").unwrap();
    assert_eq!(api.command, ["python3", "app.py", "--port", "{port}"]);
    assert_eq!(api.directory.as_deref(), Some("/srv/api/{version}"));
    assert_eq!(
        api.env.get("APP_ENV").map(String::as_str),
        Some("production")
    );
    assert_eq!(api.listen, ListenMode::Port);
    assert_eq!(api.health.as_deref(), Some("/health"));
    assert_eq!(api.restart, RestartPolicy::OnFailure);
    assert_eq!(api.restart_window, Duration::from_secs(300));
    assert_eq!(api.idle_timeout, Duration::ZERO);
    assert_eq!(api.memory_limit_mb, Some(512));
    assert_eq!(api.max_body, 10_000_000);
    assert_eq!(
        api.plugins,
        [PluginConf::RateLimit {
            rps: 100.0,
            burst: 200,
            key: RateLimitKey::ClientIp
        }]
    );
    assert!(!api.is_external());

    let legacy = c.process("legacy").unwrap();
    assert!(legacy.command.is_empty());
    assert_eq!(
        legacy.upstreams,
        [
            Upstream::Tcp("127.0.0.1:3000".into()),
            Upstream::Unix("/run/legacy.sock".into())
        ]
    );
    let web = c.process("web").unwrap();
    assert_eq!(web.listen, ListenMode::Socket);
    assert_eq!(web.socket, "/run/web-{id}.sock");

    let route = |host: &str, prefix: &str, process: &str, instance: Option<&str>, strip| Route {
        host: host.into(),
        prefix: prefix.into(),
        process: process.into(),
        instance: instance.map(Into::into),
        strip_prefix: strip,
    };
    assert_eq!(
        *c.routes,
        [
            route("example.com", "/", "web", None, false),
            route("www.example.com", "/", "web", None, false),
            route("example.com", "/api", "api", Some("prod"), true),
        ]
    );
    assert_eq!(
        c.instances,
        [InstanceName {
            process: "api".into(),
            id: "prod".into()
        }]
    );
    assert_eq!(c.fleet, None);
}

#[test]
fn tenement_02_config_loads() {
    let c = ok(r#"
[settings]
data_dir = "/var/lib/tenement"
max_restarts = 3
restart_window = "10m"
backoff_base_ms = 500
backoff_max_ms = 30000
cpu_shares = 200
storage_quota_mb = 1024
storage_persist = false

[service.api]
command = "./api"
workdir = "api"
isolation = "process"
health = "/health"
env = { RUST_LOG = "info", DB = "{data_dir}/db.sqlite" }

[service.worker]
command = "./worker"
backoff_max_ms = 90000
storage_persist = true

[instances]
api = ["prod", "staging"]
worker = ["1"]
"#);
    assert_eq!(c.settings.data_dir, Path::new("/var/lib/tenement"));
    let api = c.process("api").unwrap();
    assert_eq!(api.directory.as_deref(), Some("/srv/app/api"));
    assert_eq!(api.max_restarts, 3);
    assert_eq!(api.restart_window, Duration::from_secs(600));
    assert_eq!(api.backoff_base, Duration::from_millis(500));
    assert_eq!(api.backoff_max, Duration::from_millis(30_000));
    assert_eq!(api.cpu_shares, Some(200));
    assert_eq!(api.storage_quota_mb, Some(1024));
    assert!(!api.storage_persist);
    let worker = c.process("worker").unwrap();
    assert_eq!(worker.backoff_max, Duration::from_millis(90_000));
    assert!(worker.storage_persist);
    let instances: Vec<String> = c.instances.iter().map(ToString::to_string).collect();
    assert_eq!(instances, ["api:prod", "api:staging", "worker:1"]);
}

#[test]
fn defaults_without_settings() {
    let c = ok("[process.app]\ncommand = \"./app\"\n");
    assert_eq!(c.settings, Settings::defaults(Path::new("/srv/app")));
    assert_eq!(c.settings.domain, "localhost");
    assert_eq!(c.settings.listen, ["0.0.0.0:8080"]);
    assert_eq!(c.settings.data_dir, Path::new("/srv/app/tenement-data"));
    assert_eq!(c.settings.log_retention, Duration::from_secs(7 * 86_400));
    let app = c.process("app").unwrap();
    assert_eq!(app.listen, ListenMode::Port);
    assert_eq!(app.socket, crate::DEFAULT_SOCKET);
    assert_eq!(app.startup_timeout, Duration::from_secs(10));
    assert_eq!(app.stop_timeout, Duration::from_secs(10));
    assert_eq!(app.request_timeout, Duration::from_secs(30));
    assert_eq!(app.restart, RestartPolicy::OnFailure);
    assert_eq!(app.max_restarts, 5);
    assert_eq!(app.backoff_base, Duration::from_secs(1));
    assert_eq!(app.backoff_max, Duration::from_secs(60));
    assert!(app.storage_persist);
    assert!(c.routes.is_empty() && c.instances.is_empty() && c.fleet.is_none());
    assert!(ok("").processes.is_empty());
}

#[test]
fn fleet_failover_linger_and_placement_timeout() {
    let c = ok("[fleet]\nfailover_linger = \"2s\"\nplacement_timeout = \"45s\"\n");
    let fleet = c.fleet.unwrap();
    assert_eq!(fleet.failover_linger, Duration::from_secs(2));
    assert_eq!(fleet.placement_timeout, Duration::from_secs(45));
    assert_eq!(
        ok("[fleet]\nfailover_linger = 0\n")
            .fleet
            .unwrap()
            .failover_linger,
        Duration::ZERO,
        "0: stop the copy at the first tick without traffic"
    );
    assert_eq!(ok("[fleet]\n").fleet, Some(crate::Fleet::default()));
}

#[test]
fn settings_forms_and_units() {
    let c = ok(r#"
[settings]
domain = "Apps.Example.COM"
listen = ["0.0.0.0:80", "[::1]:0"]
max_body = 1048576
drain_timeout = 0
log_retention = "1h30m"
metrics_token = "s3cret"
trusted_proxies = ["10.0.0.0/8", " ::1 ", "192.0.2.7"]

[fleet]
health_interval = 2
webhook = "https://hooks.example.com/ten"
failover = false

[process.big]
command = "./big"
max_body = "10MiB"
plugins = [
  { kind = "rate_limit", rps = 2.5, key = "header:X-Api-Key" },
  { kind = "ip_filter", deny = ["10.0.0.1", "2001:db8::/32"] },
  { kind = "headers", request_set = { X-Env = "prod" }, response_remove = ["Server"] },
  { kind = "basic_auth", users = { alice = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA" } },
  { kind = "max_body", limit = "512KB" },
]
"#);
    let s = &c.settings;
    assert_eq!(s.domain, "apps.example.com");
    assert_eq!(s.listen, ["0.0.0.0:80", "[::1]:0"]);
    assert_eq!(s.max_body, 1_048_576);
    assert_eq!(s.drain_timeout, Duration::ZERO);
    assert_eq!(s.log_retention, Duration::from_secs(5_400));
    assert_eq!(s.metrics_token.as_deref(), Some("s3cret"));
    assert_eq!(s.trusted_proxies, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
    assert!(
        ok("").settings.trusted_proxies.is_empty(),
        "nobody by default"
    );
    let fleet = c.fleet.as_ref().unwrap();
    assert_eq!(fleet.health_interval, Duration::from_secs(2));
    assert_eq!(fleet.unhealthy_after, 3);
    assert_eq!(fleet.degraded_latency, Duration::from_millis(500));
    assert!(!fleet.failover);
    assert_eq!(fleet.webhook_after, Duration::from_secs(300));
    assert_eq!(fleet.failover_linger, Duration::from_secs(600));
    assert_eq!(fleet.placement_timeout, Duration::from_secs(30));
    assert_eq!(fleet.store, None, "SQLite by default");
    let shared = ok("[fleet]\nstore = \"postgres://ten:pw@db.example.com/fleet\"\n");
    assert_eq!(
        shared.fleet.unwrap().store.as_deref(),
        Some("postgres://ten:pw@db.example.com/fleet")
    );
    let big = c.process("big").unwrap();
    assert_eq!(big.max_body, 10 * 1_048_576);
    assert_eq!(
        big.plugins[0],
        PluginConf::RateLimit {
            rps: 2.5,
            burst: 3,
            key: RateLimitKey::Header("x-api-key".into())
        }
    );
    assert_eq!(
        big.plugins[1],
        PluginConf::IpFilter {
            allow: vec![],
            deny: vec!["10.0.0.1/32".into(), "2001:db8::/32".into()]
        }
    );
    assert!(
        matches!(&big.plugins[2], PluginConf::Headers { request_set, .. } if request_set["X-Env"] == "prod")
    );
    assert!(
        matches!(&big.plugins[3], PluginConf::BasicAuth { users } if users.contains_key("alice"))
    );
    assert_eq!(big.plugins[4], PluginConf::MaxBody { limit: 512_000 });
}

#[test]
fn plugins_as_an_array_of_tables() {
    let c = ok("[process.api]\ncommand = \"./api\"\n[[process.api.plugins]]\nkind = \"max_body\"\nlimit = \"1MB\"\n");
    assert_eq!(
        c.process("api").unwrap().plugins,
        [PluginConf::MaxBody { limit: 1_000_000 }]
    );
    assert_eq!(
        errors("[process.api]\ncommand = \"./api\"\n[[process.api.plugins]]\nkind = \"max_body\"\nlimit = 0\n"),
        ["tenement.toml:5: process.api.plugins[0].limit: must be greater than 0, got 0"]
    );
}

#[test]
fn processes_keep_file_order_across_process_and_service() {
    let c = ok("[service.b]\ncommand = \"b\"\n[process.a]\ncommand = \"a\"\n[service.c]\ncommand = \"c\"\n");
    let names: Vec<&str> = c.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
}

#[test]
fn route_to_an_upstream_of_an_external_process() {
    let text = "[process.legacy]\nupstreams = [\"127.0.0.1:3000\", \"unix:/run/l.sock\"]\n[routes]\n\"a.com\" = \"legacy:1\"\n";
    assert_eq!(ok(text).routes[0].instance.as_deref(), Some("1"));
    assert_eq!(
        errors(&text.replace("legacy:1", "legacy:2")),
        ["tenement.toml:4: routes.\"a.com\": process \"legacy\" is external: its instances are its upstreams, legacy:0 to legacy:1, got \"legacy:2\""]
    );
}

#[test]
fn overrides() {
    let mut c = ok("[settings]\nlisten = [\"127.0.0.1:8080\", \"[::1]:8081\"]\n");
    c.apply_overrides(Some(9000), Some(" Dev.Example.com "));
    assert_eq!(c.settings.listen, ["127.0.0.1:9000", "[::1]:8081"]);
    assert_eq!(c.settings.domain, "dev.example.com");
    c.settings.listen.clear();
    c.apply_overrides(Some(7000), None);
    assert_eq!(c.settings.listen, ["0.0.0.0:7000"]);
    assert_eq!(c.settings.domain, "dev.example.com");
}

#[test]
fn unreadable_file_is_one_error() {
    let e = Config::load(Path::new("/nonexistent/tenement.toml")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/tenement.toml: cannot read the config file: "),
        "{e}"
    );
}

#[test]
fn relative_socket_and_directory_follow_the_config_file() {
    let c = ok("[process.a]\ncommand = \"./a\"\nsocket = \"run/../sock/{id}.sock\"\ndirectory = \"{data_dir}/a\"\n");
    let a = c.process("a").unwrap();
    assert_eq!(a.socket, "/srv/app/sock/{id}.sock");
    assert_eq!(a.listen, ListenMode::Socket);
    assert_eq!(a.directory.as_deref(), Some("{data_dir}/a"));
}
