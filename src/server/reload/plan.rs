//! What a reload changes: the pure difference between the running config and the file's
//! ([`plan`]), one human line per change, and what each kind of change needs (a table swap,
//! spawns, replacements, stops, listeners). No I/O: unit-tested on parsed configs.
//!
//! A process's keys are of two kinds. The table's ([`TABLE_KEYS`]: plugins, request_timeout,
//! max_body) apply in the next table swap. Every other key is its spawn definition: a change
//! replaces its instances. That second set is "everything but the table's", compared through
//! `Process: PartialEq`, so a key added to `Process` later is covered without touching this file.

use std::collections::BTreeSet;

use tenement_conf::{Config, InstanceName, Process, Route, Settings};

/// The process keys that only the routing table reads.
pub const TABLE_KEYS: &[&str] = &["plugins", "request_timeout", "max_body"];

/// What a reload does, computed before anything changes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// One line per change, in the order they are applied.
    pub lines: Vec<String>,
    /// Keys that cannot change at runtime: the reload is refused (nothing changes).
    pub refused: Vec<String>,
    /// Keys that apply at the next start of `ten serve` (the reload goes on), each with why.
    pub later: Vec<(String, &'static str)>,
    /// New processes to start: spawned ones get their `[instances]`, external ones their
    /// upstreams.
    pub added: Vec<String>,
    /// Processes gone from the file: their instances are drained and stopped.
    pub removed: Vec<String>,
    /// Spawned processes whose spawn definition changed: instances replaced one at a time.
    pub replaced: Vec<String>,
    /// External processes whose upstreams or health check changed: restarted checks.
    pub externals_changed: Vec<String>,
    /// Instances to spawn: new `[instances]` entries not running yet (new processes' included).
    pub spawn: Vec<InstanceName>,
    pub listen_added: Vec<String>,
    pub listen_removed: Vec<String>,
    /// `header_timeout`, `keepalive_timeout` or `max_connections` changed: the listeners get
    /// the new limits.
    pub limits: bool,
    /// `log_retention`, `log_max_rows` or `log_max_bytes` changed: the log store gets them.
    pub log_limits: bool,
    /// `admin_listen` changed: (running, new).
    pub admin: Option<(Option<String>, Option<String>)>,
    /// The TLS listener's address changed (or `[settings.tls]` was removed): (running, new).
    pub tls_listen: Option<(String, Option<String>)>,
    /// Only `[settings.tls] http2` changed: the TLS listener is replaced on its socket.
    pub tls_http2: bool,
    /// Something the routing table reads changed (routes, domain, a process's table keys, a
    /// process added or removed).
    pub table: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The process keys that differ between `old` and `new`, named; a difference in a key this
/// list does not name (added to `Process` later) is reported as "definition".
pub fn changed_keys(old: &Process, new: &Process) -> Vec<&'static str> {
    let mut probe = old.clone();
    let mut out = Vec::new();
    macro_rules! keys {
        ($($k:ident),*) => {$(
            if probe.$k != new.$k {
                out.push(stringify!($k));
                probe.$k = new.$k.clone();
            }
        )*};
    }
    keys!(
        command,
        directory,
        env,
        listen,
        socket,
        health,
        startup_timeout,
        stop_timeout,
        restart,
        max_restarts,
        restart_window,
        backoff_base,
        backoff_max,
        idle_timeout,
        memory_limit_mb,
        cpu_shares,
        storage_quota_mb,
        storage_persist,
        upstreams,
        plugins,
        request_timeout,
        max_body,
        user,
        env_inherit,
        isolation
    );
    if probe != *new {
        out.push("definition");
    }
    out
}

fn route_line(sign: char, r: &Route) -> String {
    let host = if r.prefix == "/" {
        r.host.clone()
    } else {
        format!("{}{}", r.host, r.prefix)
    };
    let target = match &r.instance {
        Some(id) => format!("{}:{id}", r.process),
        None => r.process.clone(),
    };
    format!("route {sign} {host} -> {target}")
}

/// Settings: which changed, and what happens to each. Returns (live lines, later, refused).
fn settings(old: &Settings, new: &Settings, plan: &mut Plan) {
    let mut probe = old.clone();
    macro_rules! key {
        ($k:ident, $what:expr) => {
            if probe.$k != new.$k {
                probe.$k = new.$k.clone();
                match $what {
                    Some(line) => plan
                        .lines
                        .push(format!("setting ~ {}: {line}", stringify!($k))),
                    None => plan.later.push((stringify!($k).to_string(), READ_ONCE)),
                }
            }
        };
    }
    if old.data_dir != new.data_dir {
        plan.refused.push(format!(
            "data_dir cannot change while ten serve runs ({} -> {}): restart ten serve to move it",
            old.data_dir.display(),
            new.data_dir.display()
        ));
        probe.data_dir = new.data_dir.clone();
    }
    if probe.domain != new.domain {
        plan.lines.push(format!(
            "setting ~ domain: {} -> {}",
            probe.domain, new.domain
        ));
        plan.table = true;
        probe.domain = new.domain.clone();
    }
    // Listeners are diffed by address below.
    probe.listen = new.listen.clone();
    key!(drain_timeout, Some("applies to the next drains"));
    key!(
        health_check_interval,
        Some("applies to instances started from now on")
    );
    key!(metrics_token, Some("applies to the next requests"));
    // Defaults of every process: a change shows up as the processes' own change.
    key!(max_body, Some("the processes' default (see below)"));
    key!(max_restarts, Some("the processes' default (see below)"));
    key!(restart_window, Some("the processes' default (see below)"));
    key!(backoff_base, Some("the processes' default (see below)"));
    key!(backoff_max, Some("the processes' default (see below)"));
    key!(cpu_shares, Some("the processes' default (see below)"));
    key!(storage_quota_mb, Some("the processes' default (see below)"));
    key!(storage_persist, Some("the processes' default (see below)"));
    key!(user, Some("the processes' default (see below)"));
    // The admin listener: bound (a bind failure refuses the reload) or closed.
    if probe.admin_listen != new.admin_listen {
        // They differ, so one of the two is set.
        let line = match (&probe.admin_listen, &new.admin_listen) {
            (_, Some(a)) => format!("setting ~ admin_listen: listening on {a}"),
            (old, None) => format!(
                "setting ~ admin_listen: {} closed",
                old.as_deref().unwrap_or_default()
            ),
        };
        plan.lines.push(line);
        plan.admin = Some((probe.admin_listen.clone(), new.admin_listen.clone()));
        probe.admin_listen = new.admin_listen.clone();
    }
    // [settings.tls]: the certificate files apply at once (the set is rebuilt on every
    // reload, so certificates renewed in place are picked up too); a new `listen` is bound
    // (the old one closed after the table swap), a new `http2` replaces the listener on its
    // socket. Turning TLS on needs the certificate set and ACME, made at start only.
    if probe.tls != new.tls {
        match (&probe.tls, &new.tls) {
            (Some(o), Some(n)) => {
                if o.default != n.default || o.certs != n.certs {
                    plan.lines
                        .push("setting ~ tls: certificates (cert, key, certs) reloaded".into());
                }
                if o.listen != n.listen {
                    plan.lines.push(format!(
                        "setting ~ tls.listen: {} -> {} (the old one stops accepting, open connections drain)",
                        o.listen, n.listen
                    ));
                    plan.tls_listen = Some((o.listen.clone(), Some(n.listen.clone())));
                } else if o.http2 != n.http2 {
                    plan.tls_http2 = true;
                }
                if o.http2 != n.http2 {
                    plan.lines.push(format!(
                        "setting ~ tls.http2: {} for new connections",
                        if n.http2 { "on" } else { "off" }
                    ));
                }
            }
            (Some(o), None) => {
                plan.lines.push(format!(
                    "setting ~ tls: removed, {} stops accepting, open connections drain",
                    o.listen
                ));
                plan.tls_listen = Some((o.listen.clone(), None));
            }
            (None, _) => plan.later.push((
                "tls".into(),
                "the certificate set and ACME are set up when ten serve starts",
            )),
        }
        probe.tls = new.tls.clone();
    }
    key!(acme, None::<&str>);
    // access_log: another path (or stdout) applies at once; turning it on or off is read once.
    if probe.access_log != new.access_log {
        if access_log_applies(&probe, new) {
            plan.lines.push(format!(
                "setting ~ access_log: the next lines go to {}",
                access_log_name(&new.access_log)
            ));
        } else {
            plan.later.push((
                "access_log".into(),
                "the access log writer exists only if it was on at start",
            ));
        }
        probe.access_log = new.access_log.clone();
    }
    key!(metrics, None::<&str>);
    key!(admin_loopback_trusted, None::<&str>);
    key!(threads, None::<&str>);
    key!(
        preserve_header_case,
        Some(if new.preserve_header_case {
            "on for the headers read from now on"
        } else {
            "off for the headers read from now on"
        })
    );
    // The log store's retention limits: its writer applies them in its next pass.
    if probe.log_retention != new.log_retention
        || probe.log_max_rows != new.log_max_rows
        || probe.log_max_bytes != new.log_max_bytes
    {
        plan.log_limits = true;
    }
    key!(log_retention, Some("applies in the log store's next pass"));
    key!(log_max_rows, Some("applies in the log store's next pass"));
    key!(log_max_bytes, Some("applies in the log store's next pass"));
    key!(log_max_line, None::<&str>);
    // The limits of client connections: new connections get them; open ones keep theirs.
    if probe.header_timeout != new.header_timeout
        || probe.keepalive_timeout != new.keepalive_timeout
        || probe.max_connections != new.max_connections
    {
        plan.limits = true;
    }
    key!(
        header_timeout,
        Some("applies to connections accepted from now on")
    );
    key!(
        keepalive_timeout,
        Some("applies to connections accepted from now on")
    );
    key!(
        max_connections,
        Some("every listener, at once (no open connection is cut)")
    );
    if probe.trusted_proxies != new.trusted_proxies {
        plan.table = true;
    }
    key!(trusted_proxies, Some("applies in the next table"));
    if probe != *new {
        // A setting added after this list was written: safe side, applied at the next start.
        plan.later.push(("settings (other keys)".into(), READ_ONCE));
    }
}

/// Why most `later` keys wait for the next start.
const READ_ONCE: &str = "read once when ten serve starts";

/// Whether a reload from `old` to `new` may rebuild the certificate set from `new`'s files:
/// both have `[settings.tls]` (the set exists only if TLS was on at start).
pub fn tls_files_apply(old: &Settings, new: &Settings) -> bool {
    matches!((&old.tls, &new.tls), (Some(_), Some(_)))
}

/// Whether a reload from `old` to `new` switches the access log to `new`'s target: it was on
/// at start and stays on, elsewhere (the proxy's log exists only if it was on at start).
pub fn access_log_applies(old: &Settings, new: &Settings) -> bool {
    use tenement_conf::AccessLog::Off;
    old.access_log != new.access_log && old.access_log != Off && new.access_log != Off
}

fn access_log_name(a: &tenement_conf::AccessLog) -> String {
    match a {
        tenement_conf::AccessLog::Off => "off".into(),
        tenement_conf::AccessLog::Stdout => "stdout".into(),
        tenement_conf::AccessLog::File(p) => p.display().to_string(),
    }
}

/// What runs after a reload keeps the values of the keys read once at start (they apply at the
/// next start), so the running config says what is in force and the next reload reports them
/// again. (A settings key this list does not name is taken from the file.)
pub fn keep_read_once(old: &Config, new: &mut Config) {
    let (o, n) = (&old.settings, &mut new.settings);
    // `[settings.tls]` changed or removed applies (see `settings`); added, it is read once.
    if o.tls.is_none() {
        n.tls = None;
    }
    n.acme = o.acme.clone();
    if !access_log_applies(o, n) {
        n.access_log = o.access_log.clone();
    }
    n.metrics = o.metrics;
    n.admin_loopback_trusted = o.admin_loopback_trusted;
    // The async runtime's workers are made before anything else.
    n.threads = o.threads;
    // The capture buffers and the log queue are sized by it at start.
    n.log_max_line = o.log_max_line;
    new.fleet = old.fleet.clone();
}

/// The plan that turns `old` (running) into `new` (the file, flags applied). `running`: the
/// spawned instances that exist now (any state).
pub fn plan(old: &Config, new: &Config, running: &[InstanceName]) -> Plan {
    let mut plan = Plan::default();
    settings(&old.settings, &new.settings, &mut plan);
    if old.fleet != new.fleet {
        plan.later.push((
            "fleet".into(),
            "the fleet's store and loops are set up when ten serve starts",
        ));
    }

    // Listen addresses (as written).
    for a in &new.settings.listen {
        if !old.settings.listen.contains(a) {
            plan.lines.push(format!("listen + {a}"));
            plan.listen_added.push(a.clone());
        }
    }
    for a in &old.settings.listen {
        if !new.settings.listen.contains(a) {
            plan.lines.push(format!(
                "listen - {a}: stops accepting, open connections drain"
            ));
            plan.listen_removed.push(a.clone());
        }
    }

    // Processes.
    let count = |p: &str| running.iter().filter(|n| n.process == p).count();
    for p in &new.processes {
        match old.process(&p.name) {
            None => {
                let what = if p.is_external() {
                    format!("{} upstream(s)", p.upstreams.len())
                } else {
                    let n = new.instances.iter().filter(|i| i.process == p.name).count();
                    format!("{n} instance(s) at start")
                };
                plan.lines.push(format!("process + {}: {what}", p.name));
                plan.added.push(p.name.clone());
                plan.table = true;
            }
            Some(o) if o == p => {}
            Some(o) => {
                let keys = changed_keys(o, p);
                let table: Vec<_> = keys
                    .iter()
                    .filter(|k| TABLE_KEYS.contains(k))
                    .copied()
                    .collect();
                if !table.is_empty() {
                    plan.table = true;
                }
                let spawn: Vec<_> = keys
                    .iter()
                    .filter(|k| !TABLE_KEYS.contains(k))
                    .copied()
                    .collect();
                let list = |ks: &[&str]| ks.join(", ");
                if !spawn.is_empty() && (p.is_external() || o.is_external()) {
                    plan.lines.push(format!(
                        "process ~ {}: {} changed, restarting its upstream checks",
                        p.name,
                        list(&spawn)
                    ));
                    plan.externals_changed.push(p.name.clone());
                } else if !spawn.is_empty() {
                    plan.lines.push(format!(
                        "process ~ {}: {} changed, replacing {} instance(s)",
                        p.name,
                        list(&spawn),
                        count(&p.name)
                    ));
                    plan.replaced.push(p.name.clone());
                }
                if !table.is_empty() {
                    plan.lines.push(format!(
                        "process ~ {}: {} changed (next table)",
                        p.name,
                        list(&table)
                    ));
                }
            }
        }
    }
    for p in &old.processes {
        if new.process(&p.name).is_none() {
            let what = if p.is_external() {
                "its upstream checks stop".to_string()
            } else {
                format!("draining and stopping {} instance(s)", count(&p.name))
            };
            plan.lines.push(format!("process - {}: {what}", p.name));
            plan.removed.push(p.name.clone());
            plan.table = true;
        }
    }

    // New [instances] (of processes that stay or are new) not running yet.
    let old_instances: BTreeSet<_> = old.instances.iter().collect();
    for i in &new.instances {
        if !old_instances.contains(i) && !running.contains(i) {
            plan.lines.push(format!("instance + {i}"));
            plan.spawn.push(i.clone());
        }
    }

    // Routes, keyed by (host, prefix).
    let key = |r: &Route| (r.host.clone(), r.prefix.clone());
    for r in new.routes.iter() {
        match old.routes.iter().find(|o| key(o) == key(r)) {
            None => plan.lines.push(route_line('+', r)),
            Some(o) if o == r => continue,
            Some(_) => plan.lines.push(route_line('~', r)),
        }
        plan.table = true;
    }
    for r in old.routes.iter() {
        if !new.routes.iter().any(|n| key(n) == key(r)) {
            plan.lines.push(route_line('-', r));
            plan.table = true;
        }
    }
    if old.routes.iter().map(key).collect::<Vec<_>>()
        != new.routes.iter().map(key).collect::<Vec<_>>()
    {
        plan.table = true;
    }
    for (k, why) in &plan.later {
        plan.lines.push(format!(
            "setting ~ {k}: applies at the next start of ten serve ({why})"
        ));
    }
    plan
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "tenement.toml", std::path::Path::new("/srv")).unwrap()
    }

    fn name(s: &str) -> InstanceName {
        s.parse().unwrap()
    }

    const BASE: &str = "[settings]\nlisten = [\"127.0.0.1:0\"]\n\
        [process.web]\ncommand = \"web\"\n[process.api]\ncommand = \"api\"\n\
        [instances]\nweb = [\"1\"]\napi = [\"1\", \"2\"]\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let c = config(BASE);
        let p = plan(&c, &c.clone(), &[name("web:1"), name("api:1")]);
        assert!(p.is_empty(), "{p:?}");
        assert!(!p.table);
    }

    #[test]
    fn a_route_a_process_and_a_command_each_get_their_line_and_action() {
        let old = config(BASE);
        let new = config(
            "[settings]\nlisten = [\"127.0.0.1:0\"]\n\
            [process.web]\ncommand = \"web\"\n[process.api]\ncommand = \"api2\"\n\
            [process.worker]\ncommand = \"w\"\n\
            [routes]\n\"a.test\" = \"web\"\n\
            [instances]\nweb = [\"1\"]\napi = [\"1\", \"2\"]\nworker = [\"1\"]\n",
        );
        let running = [name("web:1"), name("api:1"), name("api:2")];
        let p = plan(&old, &new, &running);
        assert_eq!(
            p.lines,
            [
                "process ~ api: command changed, replacing 2 instance(s)",
                "process + worker: 1 instance(s) at start",
                "instance + worker:1",
                "route + a.test -> web",
            ]
        );
        assert_eq!(p.replaced, ["api"]);
        assert_eq!(p.added, ["worker"]);
        assert_eq!(p.spawn, [name("worker:1")]);
        assert!(p.table);
        assert!(p.refused.is_empty());
    }

    #[test]
    fn table_keys_change_the_table_only() {
        let old = config(BASE);
        let new = config(&BASE.replace(
            "command = \"api\"\n",
            "command = \"api\"\nrequest_timeout = \"5s\"\n",
        ));
        let p = plan(&old, &new, &[name("api:1")]);
        assert!(p.replaced.is_empty(), "{p:?}");
        assert!(p.table);
        assert_eq!(
            p.lines,
            ["process ~ api: request_timeout changed (next table)"]
        );
    }

    #[test]
    fn any_key_outside_the_table_keys_is_a_spawn_change() {
        let old = config(BASE);
        for key in [
            "env = { A = \"1\" }",
            "health = \"/h\"",
            "idle_timeout = \"1m\"",
        ] {
            let new = config(&BASE.replace(
                "command = \"api\"\n",
                &format!("command = \"api\"\n{key}\n"),
            ));
            let p = plan(&old, &new, &[]);
            assert_eq!(p.replaced, ["api"], "{key}: {p:?}");
        }
        // A key the list in `changed_keys` does not name is still a spawn change.
        let a = old.process("api").unwrap().clone();
        let mut b = a.clone();
        b.name = "other".into();
        assert_eq!(changed_keys(&a, &b), ["definition"]);
    }

    /// SPEC §12 keys: a spawn change named by its key; `[settings] user` as the processes'.
    #[test]
    fn user_env_inherit_and_isolation_are_named_spawn_changes() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "needs root (CI runs as root)"
        );
        let old = config(BASE);
        for (key, named) in [
            ("user = \"dynamic\"", "user"),
            ("env_inherit = [\"AWS_REGION\"]", "env_inherit"),
            ("isolation = \"namespace\"", "isolation"),
        ] {
            let new = config(&BASE.replace(
                "command = \"api\"\n",
                &format!("command = \"api\"\n{key}\n"),
            ));
            let p = plan(&old, &new, &[name("api:1")]);
            assert_eq!(p.replaced, ["api"], "{key}: {p:?}");
            assert!(
                p.lines
                    .iter()
                    .any(|l| l.contains(named) && !l.contains("definition")),
                "{key}: {p:?}"
            );
        }
        let new = config(&BASE.replace("[process.web]", "user = \"dynamic\"\n[process.web]"));
        let p = plan(&old, &new, &[name("web:1"), name("api:1")]);
        assert!(p.later.is_empty(), "{p:?}");
        assert!(
            p.lines.iter().any(|l| l.starts_with("setting ~ user:")),
            "{p:?}"
        );
        assert_eq!(p.replaced, ["web", "api"]);
    }

    fn later(p: &Plan) -> Vec<&str> {
        p.later.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn data_dir_is_refused_by_name_and_read_once_keys_apply_later() {
        let old = config(BASE);
        let new = config(&BASE.replace(
            "[settings]\n",
            "[settings]\ndata_dir = \"/elsewhere\"\nlog_max_line = \"4KB\"\n",
        ));
        let p = plan(&old, &new, &[]);
        assert_eq!(p.refused.len(), 1);
        assert!(p.refused[0].starts_with("data_dir cannot change"), "{p:?}");
        assert_eq!(later(&p), ["log_max_line"]);
        assert!(p.lines.contains(
            &"setting ~ log_max_line: applies at the next start of ten serve \
              (read once when ten serve starts)"
                .into()
        ));
        // What runs keeps the old value: the same file reports it again.
        let mut applied = new.clone();
        keep_read_once(&old, &mut applied);
        assert_eq!(applied.settings.log_max_line, old.settings.log_max_line);
        assert_eq!(later(&plan(&applied, &new, &[])), ["log_max_line"]);
    }

    #[test]
    fn threads_is_read_once() {
        let old = config(BASE);
        let new = config(&BASE.replace("[settings]\n", "[settings]\nthreads = 3\n"));
        assert_eq!(new.settings.threads, Some(3));
        let p = plan(&old, &new, &[]);
        assert_eq!(later(&p), ["threads"]);
        let mut applied = new.clone();
        keep_read_once(&old, &mut applied);
        assert_eq!(applied.settings.threads, None);
    }

    #[test]
    fn preserve_header_case_applies_live() {
        let old = config(BASE);
        let new =
            config(&BASE.replace("[settings]\n", "[settings]\npreserve_header_case = true\n"));
        let p = plan(&old, &new, &[]);
        assert!(later(&p).is_empty(), "{p:?}");
        assert!(
            p.lines.iter().any(|l| l
                == "setting ~ preserve_header_case: on for the headers read from now on"),
            "{p:?}"
        );
        let mut applied = new.clone();
        keep_read_once(&old, &mut applied);
        assert!(applied.settings.preserve_header_case);
    }

    #[test]
    fn log_retention_limits_apply_live() {
        let old = config(BASE);
        let new = config(&BASE.replace(
            "[settings]\n",
            "[settings]\nlog_max_rows = 5000\nlog_retention = \"1d\"\nlog_max_bytes = \"10MB\"\n",
        ));
        let p = plan(&old, &new, &[]);
        assert!(p.log_limits, "{p:?}");
        assert!(later(&p).is_empty(), "{p:?}");
        for k in ["log_max_rows", "log_retention", "log_max_bytes"] {
            assert!(
                p.lines.contains(&format!(
                    "setting ~ {k}: applies in the log store's next pass"
                )),
                "{k}: {p:?}"
            );
        }
        let mut applied = new.clone();
        keep_read_once(&old, &mut applied);
        assert_eq!(applied.settings.log_max_rows, 5000);
        assert!(!plan(&applied, &new, &[]).log_limits);
    }

    /// Issue 20: the client connection limits and trusted_proxies apply live, by name.
    #[test]
    fn connection_limits_and_trusted_proxies_apply_live() {
        let old = config(BASE);
        let new = config(&BASE.replace(
            "[settings]\n",
            "[settings]\nheader_timeout = \"3s\"\nkeepalive_timeout = \"5s\"\n\
             max_connections = 7\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        ));
        let p = plan(&old, &new, &[]);
        assert!(p.later.is_empty(), "{p:?}");
        assert!(p.limits && p.table, "{p:?}");
        assert_eq!(
            p.lines,
            [
                "setting ~ header_timeout: applies to connections accepted from now on",
                "setting ~ keepalive_timeout: applies to connections accepted from now on",
                "setting ~ max_connections: every listener, at once (no open connection is cut)",
                "setting ~ trusted_proxies: applies in the next table",
            ]
        );
        // What runs is the file's: the same file again changes nothing.
        let mut applied = new.clone();
        keep_read_once(&old, &mut applied);
        assert!(plan(&applied, &new, &[]).is_empty());
        // trusted_proxies alone: a table, not the listeners.
        let only = config(&BASE.replace(
            "[settings]\n",
            "[settings]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        ));
        let p = plan(&old, &only, &[]);
        assert!(p.table && !p.limits, "{p:?}");
    }

    /// Issue 20: admin_listen bound and closed; the TLS listener moved, its http2 replaced,
    /// removed; turned on, it waits for the next start (with the reason).
    #[test]
    fn admin_listen_and_the_tls_listener_apply_live() {
        let old = config(BASE);
        let admin = config(&BASE.replace(
            "[settings]\n",
            "[settings]\nadmin_listen = \"127.0.0.1:9\"\n",
        ));
        let p = plan(&old, &admin, &[]);
        assert_eq!(p.admin, Some((None, Some("127.0.0.1:9".into()))));
        assert!(p.later.is_empty(), "{p:?}");
        assert_eq!(
            plan(&admin, &old, &[]).admin,
            Some((Some("127.0.0.1:9".into()), None))
        );
        // A real certificate and key (the config parser reads them).
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        let tls = |listen: &str, http2: bool| {
            config(&BASE.replace(
                "[process.web]",
                &format!(
                    "[settings.tls]\nlisten = \"{listen}\"\ncert = \"{}\"\n\
                     key = \"{}\"\nhttp2 = {http2}\n[process.web]",
                    c.display(),
                    k.display()
                ),
            ))
        };
        let a = tls("127.0.0.1:1", true);
        let p = plan(&a, &tls("127.0.0.1:2", true), &[]);
        assert_eq!(
            p.tls_listen,
            Some(("127.0.0.1:1".into(), Some("127.0.0.1:2".into())))
        );
        assert!(!p.tls_http2 && p.later.is_empty(), "{p:?}");
        let p = plan(&a, &tls("127.0.0.1:1", false), &[]);
        assert!(p.tls_http2 && p.tls_listen.is_none(), "{p:?}");
        assert!(p
            .lines
            .contains(&"setting ~ tls.http2: off for new connections".into()));
        let p = plan(&a, &old, &[]);
        assert_eq!(p.tls_listen, Some(("127.0.0.1:1".into(), None)));
        let p = plan(&old, &a, &[]);
        assert_eq!(later(&p), ["tls"]);
        let mut applied = a.clone();
        keep_read_once(&old, &mut applied);
        assert_eq!(applied.settings.tls, None);
    }

    #[test]
    fn an_access_log_path_change_applies_and_turning_it_on_waits() {
        let with = |v: &str| config(&BASE.replace("[settings]\n", &format!("[settings]\n{v}\n")));
        let a = with("access_log = \"/var/log/a.log\"");
        let b = with("access_log = \"/var/log/b.log\"");
        let p = plan(&a, &b, &[]);
        assert!(p.later.is_empty(), "{p:?}");
        assert!(
            p.lines
                .contains(&"setting ~ access_log: the next lines go to /var/log/b.log".into()),
            "{p:?}"
        );
        let mut applied = b.clone();
        keep_read_once(&a, &mut applied);
        assert_eq!(applied.settings.access_log, b.settings.access_log);
        let stdout = with("access_log = \"stdout\"");
        assert!(access_log_applies(&a.settings, &stdout.settings));
        // Off at start: no log to switch, applies at the next start (and the reverse).
        let off = config(BASE);
        assert_eq!(later(&plan(&off, &a, &[])), ["access_log"]);
        assert_eq!(later(&plan(&a, &off, &[])), ["access_log"]);
        let mut applied = a.clone();
        keep_read_once(&off, &mut applied);
        assert_eq!(applied.settings.access_log, off.settings.access_log);
    }

    #[test]
    fn listen_and_removed_processes() {
        let old = config(BASE);
        let new = config(
            "[settings]\nlisten = [\"127.0.0.1:9\"]\n[process.web]\ncommand = \"web\"\n\
            [instances]\nweb = [\"1\"]\n",
        );
        let p = plan(&old, &new, &[name("api:1"), name("api:2")]);
        assert_eq!(p.listen_added, ["127.0.0.1:9"]);
        assert_eq!(p.listen_removed, ["127.0.0.1:0"]);
        assert_eq!(p.removed, ["api"]);
        assert!(p
            .lines
            .contains(&"process - api: draining and stopping 2 instance(s)".to_string()));
    }

    #[test]
    fn external_upstream_changes_restart_their_checks_not_a_replacement() {
        let ext = "[process.legacy]\nupstreams = [\"127.0.0.1:9\"]\n";
        let old = config(&format!("{BASE}{ext}"));
        let new = config(&format!("{BASE}{}", ext.replace(":9", ":10")));
        let p = plan(&old, &new, &[]);
        assert_eq!(p.externals_changed, ["legacy"], "{p:?}");
        assert!(p.replaced.is_empty());
        assert_eq!(
            p.lines,
            ["process ~ legacy: upstreams changed, restarting its upstream checks"]
        );
        let gone = plan(&old, &config(BASE), &[]);
        assert_eq!(gone.removed, ["legacy"]);
        assert_eq!(gone.lines, ["process - legacy: its upstream checks stop"]);
    }
}
