//! One test per kind of error, each pinning the exact message.

use super::{error, errors};

#[test]
fn syntax_error_is_one_error_with_its_line() {
    assert_eq!(
        error("[settings]\ndomain = \"example.com\"\nlisten = \n"),
        "tenement.toml:3: invalid TOML: invalid string; expected `\"`, `'`"
    );
}

#[test]
fn duplicate_toml_key_is_a_syntax_error() {
    let e = error("[settings]\ndomain = \"a.com\"\ndomain = \"b.com\"\n");
    assert!(
        e.starts_with("tenement.toml:3: invalid TOML: duplicate key"),
        "{e}"
    );
}

#[test]
fn unknown_key_names_path_line_and_valid_keys() {
    let e = error("[process.api]\ncommand = \"./api\"\nhelth = \"/health\"\n");
    assert!(
        e.starts_with(
            "tenement.toml:3: process.api.helth: unknown key \"helth\", did you mean \"health\"? (expected one of: command, args, directory,"
        ),
        "{e}"
    );
}

#[test]
fn unknown_top_level_table() {
    assert_eq!(
        error("[proces.api]\ncommand = \"x\"\n"),
        "tenement.toml:1: proces: unknown key \"proces\", did you mean \"process\"? (expected one of: settings, process, service, routes, instances, fleet)"
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        error("[settings]\ndrain_timeout = \"30 parsecs\"\n"),
        "tenement.toml:2: settings.drain_timeout: expected a duration like \"500ms\", \"10s\", \"5m\", \"1h30m\" or a whole number of seconds, got \"30 parsecs\""
    );
}

#[test]
fn zero_interval_must_be_positive() {
    assert_eq!(
        error("[settings]\nhealth_check_interval = \"0s\"\n"),
        "tenement.toml:2: settings.health_check_interval: must be greater than 0, got \"0s\""
    );
}

#[test]
fn bad_size() {
    assert_eq!(
        error("[settings]\nmax_body = \"10 megs\"\n"),
        "tenement.toml:2: settings.max_body: expected a size like \"10MB\", \"512KB\", \"1GiB\" or a number of bytes, got \"10 megs\""
    );
}

#[test]
fn bad_listen_address() {
    assert_eq!(
        error("[settings]\nlisten = [\"0.0.0.0:8080\", \"localhost:80\"]\n"),
        "tenement.toml:2: settings.listen[1]: expected an address like \"0.0.0.0:8080\" or \"[::1]:8080\", got \"localhost:80\""
    );
}

#[test]
fn bad_domain() {
    assert_eq!(
        error("[settings]\ndomain = \"exa mple.com\"\n"),
        "tenement.toml:2: settings.domain: expected a hostname like \"example.com\" (letters, digits, '-' and dots), got \"exa mple.com\""
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        error("[settings]\nstorage_persist = \"no\"\n"),
        "tenement.toml:2: settings.storage_persist: expected true or false, got \"no\""
    );
}

#[test]
fn health_without_slash() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\n\nhealth = \"health\"\n"),
        "tenement.toml:4: process.api.health: expected a path starting with '/', got \"health\""
    );
}

#[test]
fn unknown_template_placeholder() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api --port {prot}\"\n"),
        "tenement.toml:2: process.api.command: unknown placeholder {prot} in \"./api --port {prot}\" (expected one of: {process}, {name}, {id}, {version}, {data_dir}, {socket}, {port})"
    );
}

#[test]
fn port_placeholder_in_socket_mode() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\nargs = [\"--port\", \"{port}\"]\nlisten = \"socket\"\n"),
        "tenement.toml:3: process.api.args[1]: {port} cannot be used with listen = \"socket\" (use {socket}, or set listen = \"port\")"
    );
}

#[test]
fn socket_placeholder_in_port_mode() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\nenv = { SOCK = \"{socket}\" }\n"),
        "tenement.toml:3: process.api.env.SOCK: {socket} cannot be used with listen = \"port\" (use {port}, or set listen = \"socket\")"
    );
}

#[test]
fn route_to_unknown_process() {
    assert_eq!(
        error("[process.web]\ncommand = \"./web\"\n[routes]\n\"example.com\" = \"wbe\"\n"),
        "tenement.toml:4: routes.\"example.com\": route to unknown process \"wbe\" (declared: web)"
    );
}

#[test]
fn duplicate_route_names_both_lines() {
    let text = "[process.web]\ncommand = \"./web\"\n[routes]\n\"example.com/api\" = \"web\"\n\"www.example.com\" = \"web\"\n\"Example.COM/api/\" = { to = \"web\" }\n";
    assert_eq!(
        error(text),
        "tenement.toml:6: routes.\"Example.COM/api/\": duplicate route for \"example.com/api\" (also defined at line 4)"
    );
}

#[test]
fn route_key_with_port() {
    assert_eq!(
        error("[process.web]\ncommand = \"./web\"\n[routes]\n\"example.com:8080\" = \"web\"\n"),
        "tenement.toml:4: routes.\"example.com:8080\": a route host cannot have a port (the port is ignored when routing), got \"example.com:8080\""
    );
}

#[test]
fn route_to_bad_instance_id() {
    assert_eq!(
        error("[process.web]\ncommand = \"./web\"\n[routes]\n\"a.com\" = { to = \"web:-x\", strip_prefix = true }\n"),
        "tenement.toml:4: routes.\"a.com\".to: invalid instance id \"-x\": use letters, digits, '_', '.' and '-', starting with a letter or digit"
    );
}

#[test]
fn instances_for_unknown_process() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\n[instances]\napi = [\"prod\"]\nweb = [\"a\"]\n"),
        "tenement.toml:5: instances.web: instances for unknown process \"web\" (declared: api)"
    );
}

#[test]
fn duplicate_instance_id() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\n[instances]\napi = [\"prod\", \"prod\"]\n"),
        "tenement.toml:4: instances.api[1]: duplicate instance id \"prod\" for process \"api\""
    );
}

#[test]
fn instances_of_an_external_process() {
    assert_eq!(
        error("[process.legacy]\nupstreams = [\"127.0.0.1:3000\"]\n[instances]\nlegacy = [\"a\"]\n"),
        "tenement.toml:4: instances.legacy: process \"legacy\" is external (upstreams): its instances are its upstreams and cannot be listed here"
    );
}

#[test]
fn process_and_service_with_the_same_name() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\n\n[service.api]\ncommand = \"./api\"\n"),
        "tenement.toml:4: service.api: process \"api\" is declared twice: [process.api] at line 1 and [service.api] (service is an alias of process)"
    );
}

#[test]
fn invalid_process_name() {
    assert_eq!(
        error("[process.\"my.App\"]\ncommand = \"./api\"\n"),
        "tenement.toml:1: process.\"my.App\": invalid process name \"my.App\": use lower-case letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters (it becomes a DNS label)"
    );
}

#[test]
fn workdir_and_directory() {
    assert_eq!(
        error("[service.api]\ncommand = \"./api\"\ndirectory = \"/srv\"\nworkdir = \"/srv\"\n"),
        "tenement.toml:4: service.api.workdir: both \"directory\" and \"workdir\" are set (workdir is an alias of directory): keep one"
    );
}

#[test]
fn unsupported_isolation() {
    assert_eq!(
        error("[service.api]\ncommand = \"./api\"\nisolation = \"vm\"\n"),
        "tenement.toml:3: service.api.isolation: isolation \"vm\" is not supported (only \"process\" or \"namespace\")"
    );
}

#[test]
fn upstreams_and_command() {
    assert_eq!(
        error("[process.legacy]\ncommand = \"./x\"\nupstreams = [\"127.0.0.1:3000\"]\n"),
        "tenement.toml:2: process.legacy.command: a process with upstreams is not spawned by ten: remove \"command\" or \"upstreams\""
    );
}

#[test]
fn bad_upstream() {
    assert_eq!(
        error("[process.legacy]\nupstreams = [\"unix:run/legacy.sock\"]\n"),
        "tenement.toml:2: process.legacy.upstreams[0]: expected \"host:port\" or \"unix:/absolute/path\", got \"unix:run/legacy.sock\""
    );
}

#[test]
fn missing_command() {
    assert_eq!(
        error("[process.api]\nhealth = \"/health\"\n"),
        "tenement.toml:1: process.api: missing command (expected command = \"...\", or upstreams = [...] for a service ten does not spawn)"
    );
}

#[test]
fn unsplittable_command() {
    assert_eq!(
        error("[process.api]\ncommand = \"python3 'app.py\"\n"),
        "tenement.toml:2: process.api.command: cannot split \"python3 'app.py\" into words: missing closing quote"
    );
}

#[test]
fn env_value_must_be_a_string() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\nenv = { WORKERS = 4 }\n"),
        "tenement.toml:3: process.api.env.WORKERS: expected a string, got 4 (quote it: \"4\")"
    );
}

#[test]
fn backoff_max_below_base() {
    assert_eq!(
        error("[settings]\nbackoff_max_ms = 500\n"),
        "tenement.toml:2: settings.backoff_max_ms: must be >= backoff_base_ms (1000), got 500"
    );
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\nbackoff_base_ms = 120000\n"),
        "tenement.toml:3: process.api.backoff_base_ms: must be <= backoff_max_ms (60000 from [settings]), got 120000"
    );
}

#[test]
fn cpu_shares_out_of_range() {
    assert_eq!(
        error("[settings]\ncpu_shares = 0\n"),
        "tenement.toml:2: settings.cpu_shares: must be between 1 and 10000, got 0"
    );
}

#[test]
fn bad_plugin_rps() {
    let text = "[process.api]\ncommand = \"./api\"\nplugins = [\n  { kind = \"max_body\", limit = \"1MB\" },\n  { kind = \"rate_limit\", rps = 0 },\n]\n";
    assert_eq!(
        error(text),
        "tenement.toml:5: process.api.plugins[1].rps: must be > 0, got 0"
    );
}

#[test]
fn unknown_plugin_kind() {
    assert_eq!(
        error("[process.api]\ncommand = \"./api\"\nplugins = [{ kind = \"gzip\" }]\n"),
        "tenement.toml:3: process.api.plugins[0].kind: unknown plugin kind \"gzip\" (expected one of: rate_limit, ip_filter, headers, basic_auth, max_body)"
    );
}

#[test]
fn bad_cidr() {
    let text = "[process.api]\ncommand = \"./api\"\nplugins = [{ kind = \"ip_filter\", allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"] }]\n";
    assert_eq!(
        error(text),
        "tenement.toml:3: process.api.plugins[0].allow[1]: invalid CIDR \"10.0.0.0/33\": the prefix length must be 0..=32"
    );
}

#[test]
fn bad_trusted_proxies() {
    let text = "[settings]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1/129\", \"router\"]\n";
    assert_eq!(
        errors(text),
        [
            "tenement.toml:2: settings.trusted_proxies[1]: invalid CIDR \"::1/129\": the prefix length must be 0..=128",
            "tenement.toml:2: settings.trusted_proxies[2]: expected a CIDR like \"10.0.0.0/8\", \"2001:db8::/32\" or an IP address, got \"router\""
        ]
    );
    assert!(
        error("[settings]\ntrusted_proxies = \"10.0.0.0/8\"\n")
            .starts_with("tenement.toml:2: settings.trusted_proxies: expected"),
        "a string is not a list"
    );
}

#[test]
fn basic_auth_hash_is_not_echoed() {
    let text = "[process.api]\ncommand = \"./api\"\nplugins = [{ kind = \"basic_auth\", users = { alice = \"hunter2\" } }]\n";
    let e = error(text);
    assert_eq!(
        e,
        "tenement.toml:3: process.api.plugins[0].users.alice: expected an Argon2 PHC string starting with $argon2 (the value is not shown)"
    );
    assert!(!e.contains("hunter2"));
}

#[test]
fn bad_header_name_and_unknown_plugin_key() {
    let text = "[process.api]\ncommand = \"./api\"\nplugins = [{ kind = \"headers\", request_set = { \"X Bad\" = \"1\" }, colour = 1 }]\n";
    assert_eq!(
        errors(text),
        vec![
            "tenement.toml:3: process.api.plugins[0].colour: unknown key \"colour\" (expected one of: kind, request_set, request_remove, response_set, response_remove)",
            "tenement.toml:3: process.api.plugins[0].request_set.\"X Bad\": invalid header name \"X Bad\"",
        ]
    );
}

#[test]
fn bad_fleet_webhook() {
    assert_eq!(
        error("[fleet]\nwebhook = \"ftp://hooks.example.com\"\n"),
        "tenement.toml:2: fleet.webhook: expected an http:// or https:// URL, got \"ftp://hooks.example.com\""
    );
    assert_eq!(
        error("[fleet]\nplacement_timeout = 0\n"),
        "tenement.toml:2: fleet.placement_timeout: must be greater than 0, got 0"
    );
    assert!(error("[fleet]\nfailover_linger = \"soon\"\n")
        .starts_with("tenement.toml:2: fleet.failover_linger: "));
}

#[test]
fn bad_fleet_store_is_refused_without_echoing_it() {
    let e = error("[fleet]\nstore = \"mysql://u:pw123@db/x\"\n");
    assert_eq!(
        e,
        "tenement.toml:2: fleet.store: expected a postgres:// URL (leave store out for the SQLite file in data_dir)"
    );
    assert!(!e.contains("pw123"));
}

#[test]
fn tls_files_must_exist() {
    let text = "[settings.tls]\nlisten = \"0.0.0.0:8443\"\ncert = \"/nonexistent/ten/cert.pem\"\nkey = \"keys/key.pem\"\n";
    assert_eq!(
        errors(text),
        vec![
            "tenement.toml:3: settings.tls.cert: file not found: /nonexistent/ten/cert.pem",
            "tenement.toml:4: settings.tls.key: file not found: /srv/app/keys/key.pem",
        ]
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"[settings]
domain = "Example.com"
listen = "nowhere"
drain_timeout = "soon"

[process.api]
command = "./api --port {prot}"
health = "health"
restart = "sometimes"

[process.web]
health = "/up"

[routes]
"example.com" = "nope"

[instances]
ghost = ["a"]
"#;
    let all = errors(text);
    assert_eq!(all.len(), 8, "{all:#?}");
    assert_eq!(
        all[0],
        "tenement.toml:3: settings.listen: expected an address like \"0.0.0.0:8080\" or \"[::1]:8080\", got \"nowhere\""
    );
    assert_eq!(
        all[3],
        "tenement.toml:8: process.api.health: expected a path starting with '/', got \"health\""
    );
    assert_eq!(
        all[5],
        "tenement.toml:11: process.web: missing command (expected command = \"...\", or upstreams = [...] for a service ten does not spawn)"
    );
    assert_eq!(
        all[7],
        "tenement.toml:18: instances.ghost: instances for unknown process \"ghost\" (declared: api, web)"
    );
    let display = super::parse(text).map(|_| ()).unwrap_err().to_string();
    assert_eq!(display.lines().count(), 8);
    assert_eq!(display.lines().next(), Some(all[0].as_str()));
}

#[test]
fn routes_cannot_take_over_the_management_paths() {
    let tail = "where the dashboard is served: route another host, a prefix outside /api, /assets, /metrics and /health, or the whole domain (\"ten.example\" = ...)";
    let text = "[settings]\ndomain = \"ten.example\"\n[process.web]\ncommand = \"./web\"\n[routes]\n\"ten.example/api\" = \"web\"\n\"ten.example/assets/x\" = \"web\"\n\"ten.example/blog\" = \"web\"\n\"ten.example/apiary\" = \"web\"\n\"other.example/api\" = \"web\"\n";
    assert_eq!(
        errors(text),
        [
            format!("tenement.toml:6: routes.\"ten.example/api\": would take over ten's own /api on the management domain \"ten.example\", {tail}"),
            format!("tenement.toml:7: routes.\"ten.example/assets/x\": would take over ten's own /assets on the management domain \"ten.example\", {tail}"),
        ]
    );
    // The whole domain routed to an app: no dashboard there, so its prefixes are the app's.
    let whole = format!("{text}\"ten.example\" = \"web\"\n");
    assert_eq!(super::ok(&whole).routes.len(), 6);
}

#[test]
fn durations_and_sizes_are_bounded() {
    assert_eq!(
        error("[settings]\ndrain_timeout = 9223372036854775807\n"),
        "tenement.toml:2: settings.drain_timeout: \"9223372036854775807\" is too long: a duration is at most 1 year (\"365d\")"
    );
    assert_eq!(
        error("[settings]\nlog_retention = \"400d\"\n"),
        "tenement.toml:2: settings.log_retention: \"400d\" is too long: a duration is at most 1 year (\"365d\")"
    );
    assert_eq!(
        error("[settings]\nmax_body = \"2TiB\"\n"),
        "tenement.toml:2: settings.max_body: \"2TiB\" is too large: a size is at most 1 TiB"
    );
    assert_eq!(
        error("[settings]\nbackoff_max_ms = 99999999999999\n"),
        "tenement.toml:2: settings.backoff_max_ms: must be between 1 and 31536000000, got 99999999999999"
    );
    assert_eq!(
        error("[process.a]\ncommand = \"x\"\nstorage_quota_mb = 9999999999\n"),
        "tenement.toml:3: process.a.storage_quota_mb: must be between 1 and 1048576, got 9999999999"
    );
}

#[test]
fn hostile_traffic_limits_are_checked() {
    assert_eq!(
        error("[settings]\nheader_timeout = \"0s\"\n"),
        "tenement.toml:2: settings.header_timeout: must be greater than 0, got \"0s\""
    );
    assert_eq!(
        error("[settings]\nmax_connections = 0\n"),
        "tenement.toml:2: settings.max_connections: must be between 1 and 1000000, got 0"
    );
    assert_eq!(
        error("[settings]\nthreads = 0\n"),
        "tenement.toml:2: settings.threads: must be between 1 and 1024, got 0"
    );
    assert_eq!(
        error("[settings]\nlog_max_line = \"100B\"\n"),
        "tenement.toml:2: settings.log_max_line: must be at least 256 bytes, got 100"
    );
}

#[test]
fn route_prefixes_are_written_normalised() {
    assert_eq!(
        error("[process.web]\ncommand = \"./web\"\n[routes]\n\"a.com/%61dmin\" = \"web\"\n"),
        "tenement.toml:4: routes.\"a.com/%61dmin\": a route prefix is written decoded, without %-escapes (requests are matched decoded), got \"%61dmin\" in \"a.com/%61dmin\""
    );
    assert_eq!(
        error("[process.web]\ncommand = \"./web\"\n[routes]\n\"a.com/x/../admin\" = \"web\"\n"),
        "tenement.toml:4: routes.\"a.com/x/../admin\": a route prefix cannot have a \"..\" segment (paths are matched with dot segments resolved), got \"a.com/x/../admin\""
    );
}
