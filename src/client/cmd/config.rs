//! `ten config check` and `ten config show`, and loading the config (`ten serve`, `ten config
//! show`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Subcommand;
use tenement_conf::{
    find_config_path, Config, Isolation, ListenMode, PluginConf, RestartPolicy, RunAs, Upstream,
};

use crate::client::cli::Global;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: every error at once (exit 1), or a summary (exit 0)
    #[command(
        long_about = "Validate a config file and print every error at once with its line and key \
path (exit 1), or a summary of what it would serve (exit 0).\n\nExamples:\n  ten config check\n  \
ten config check /etc/ten/tenement.toml"
    )]
    Check {
        /// The file [default: --config, $TENEMENT_CONFIG, else ./tenement.toml]
        path: Option<PathBuf>,
    },
    /// Print the resolved config: every default filled in, paths made absolute
    #[command(
        long_about = "Print the resolved config: every default filled in, paths made absolute.\n\n\
With --routes, print instead every route ten would serve, in precedence order (like `nginx -T`): \
[routes] entries, then {id}.{process}.{domain}, {process}.{domain} and the management domain.\n\n\
Examples:\n  ten config show\n  ten config show --routes"
    )]
    Show {
        /// Explain the routes instead: host, path prefix, target
        #[arg(long)]
        routes: bool,
    },
}

impl ConfigCommand {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        match self {
            ConfigCommand::Check { path } => {
                Ok(check(path.as_deref().or(global.config.as_deref())))
            }
            ConfigCommand::Show { routes: true } => {
                print!("{}", routes(&load(global)?));
                Ok(ExitCode::SUCCESS)
            }
            ConfigCommand::Show { routes: false } => {
                print!("{}", show(&load(global)?));
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Load the config named by --config / $TENEMENT_CONFIG / ./tenement.toml, with --data-dir
/// applied. Errors list every problem, one per line.
pub fn load(global: &Global) -> Result<Config> {
    let path = find_config_path(global.config.as_deref());
    let mut config =
        Config::load(&path).map_err(|e| anyhow!("invalid config {}:\n{e}", path.display()))?;
    if let Some(dir) = &global.data_dir {
        config.settings.data_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
    }
    Ok(config)
}

/// Print every error (exit 1) or a summary (exit 0).
pub fn check(explicit: Option<&Path>) -> ExitCode {
    let path = find_config_path(explicit);
    match Config::load(&path) {
        Ok(c) => {
            // Plugins are built as `ten serve` builds them (Argon2 hashes parsed, ...).
            let bad: Vec<String> = c
                .processes
                .iter()
                .filter_map(|p| {
                    tenement_proxy::plugins::Chain::build(&p.plugins)
                        .err()
                        .map(|e| format!("{}: process.{}.{e}", path.display(), p.name))
                })
                .collect();
            if !bad.is_empty() {
                eprintln!("{}", bad.join("\n"));
                eprintln!("{}: {} error(s)", path.display(), bad.len());
                return ExitCode::from(1);
            }
            for w in tenement_conf::root_warnings(&c) {
                eprintln!("warning: {w}");
            }
            let instances = c.instances.len();
            println!(
                "{}: ok: {} process(es), {} route(s), {} instance(s) at boot, domain {}",
                path.display(),
                c.processes.len(),
                c.routes.len(),
                instances,
                c.settings.domain
            );
            print!("{}", routes(&c));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            ExitCode::from(1)
        }
    }
}

/// Every route ten would serve, in precedence order (SPEC §3), as an aligned table.
pub fn routes(c: &Config) -> String {
    let d = &c.settings.domain;
    let mut rows: Vec<[String; 4]> = Vec::new();
    for r in c.routes.iter() {
        let target = match &r.instance {
            Some(id) => format!("instance {}:{id}", r.process),
            None => format!("process {} (weighted)", r.process),
        };
        let note = if r.strip_prefix && r.prefix != "/" {
            "strip_prefix"
        } else {
            ""
        };
        rows.push([
            r.host.clone(),
            r.prefix.clone(),
            target,
            format!("[routes] {note}").trim_end().to_string(),
        ]);
    }
    for p in &c.processes {
        let ids = if p.is_external() {
            (0..p.upstreams.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
        } else {
            vec!["{id}".to_string()]
        };
        for id in ids {
            rows.push([
                format!("{id}.{}.{d}", p.name),
                "/".into(),
                format!("instance {}:{id}", p.name),
                "direct".into(),
            ]);
        }
        let kind = if p.is_external() {
            "external upstreams"
        } else {
            "healthy instances, weight > 0"
        };
        rows.push([
            format!("{}.{d}", p.name),
            "/".into(),
            format!("process {} (weighted)", p.name),
            kind.into(),
        ]);
    }
    rows.push([
        d.clone(),
        "/".into(),
        "management".into(),
        "/health /metrics /api/".into(),
    ]);
    // Implicit rules whose whole host a [routes] entry takes over.
    for row in rows.iter_mut().skip(c.routes.len()) {
        if c.routes.iter().any(|r| r.host == row[0] && r.prefix == "/") {
            row[3] = "shadowed by [routes]".into();
        }
    }
    rows.push([
        "*".into(),
        "".into(),
        "404 no route for host".into(),
        "".into(),
    ]);
    let rows = rows.into_iter().map(Vec::from).collect();
    crate::client::cmd::table::table(&["HOST", "PREFIX", "TARGET", "NOTE"], rows, None)
}

fn dur(d: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(d))
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// The resolved config as TOML: every default filled in, paths absolute.
pub fn show(c: &Config) -> String {
    let s = &c.settings;
    let mut o = String::new();
    let _ = writeln!(o, "[settings]");
    let _ = writeln!(o, "domain = {}", q(&s.domain));
    let listen: Vec<_> = s.listen.iter().map(|l| q(l)).collect();
    let _ = writeln!(o, "listen = [{}]", listen.join(", "));
    if let Some(a) = &s.admin_listen {
        let _ = writeln!(o, "admin_listen = {}", q(a));
    }
    let _ = writeln!(o, "data_dir = {}", q(&s.data_dir.to_string_lossy()));
    let _ = writeln!(
        o,
        "health_check_interval = {}",
        dur(s.health_check_interval)
    );
    let _ = writeln!(o, "drain_timeout = {}", dur(s.drain_timeout));
    let _ = writeln!(o, "max_body = {}", s.max_body);
    let _ = writeln!(o, "log_retention = {}", dur(s.log_retention));
    let _ = writeln!(o, "log_max_rows = {}", s.log_max_rows);
    if s.metrics_token.is_some() {
        let _ = writeln!(o, "metrics_token = \"(set)\"");
    }
    if let Some(t) = &s.tls {
        let _ = writeln!(o, "\n[settings.tls]");
        let _ = writeln!(o, "listen = {}", q(&t.listen));
        if let Some(d) = &t.default {
            let _ = writeln!(o, "cert = {}", q(&d.cert.to_string_lossy()));
            let _ = writeln!(o, "key = {}", q(&d.key.to_string_lossy()));
        }
        if !t.certs.is_empty() {
            let certs: Vec<_> = t
                .certs
                .iter()
                .map(|c| {
                    format!(
                        "{{cert = {}, key = {}}}",
                        q(&c.cert.to_string_lossy()),
                        q(&c.key.to_string_lossy())
                    )
                })
                .collect();
            let _ = writeln!(o, "certs = [{}]", certs.join(", "));
        }
        if !t.http2 {
            let _ = writeln!(o, "http2 = false");
        }
    }
    for p in &c.processes {
        let _ = writeln!(o, "\n[process.{}]", p.name);
        if p.is_external() {
            let ups: Vec<_> = p
                .upstreams
                .iter()
                .map(|u| match u {
                    Upstream::Tcp(a) => q(a),
                    Upstream::Unix(path) => q(&format!("unix:{}", path.display())),
                })
                .collect();
            let _ = writeln!(o, "upstreams = [{}]", ups.join(", "));
        } else {
            let cmd: Vec<_> = p.command.iter().map(|a| q(a)).collect();
            let _ = writeln!(o, "command = [{}]", cmd.join(", "));
            if let Some(d) = &p.directory {
                let _ = writeln!(o, "directory = {}", q(d));
            }
            if !p.env.is_empty() {
                let env: Vec<_> = p
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", q(v)))
                    .collect();
                let _ = writeln!(o, "env = {{ {} }}", env.join(", "));
            }
            if !p.env_inherit.is_empty() {
                let names: Vec<_> = p.env_inherit.iter().map(|n| q(n)).collect();
                let _ = writeln!(o, "env_inherit = [{}]", names.join(", "));
            }
            match &p.user {
                Some(RunAs::User { name, uid, .. }) => {
                    let _ = writeln!(o, "user = {} # uid {uid}", q(name));
                }
                Some(RunAs::Dynamic) => {
                    let _ = writeln!(o, "user = \"dynamic\"");
                }
                None => {}
            }
            if p.isolation == Isolation::Namespace {
                let _ = writeln!(o, "isolation = \"namespace\"");
            }
            match p.listen {
                ListenMode::Port => {
                    let _ = writeln!(o, "listen = \"port\"");
                }
                ListenMode::Socket => {
                    let _ = writeln!(o, "listen = \"socket\"\nsocket = {}", q(&p.socket));
                }
            }
        }
        if let Some(h) = &p.health {
            let _ = writeln!(o, "health = {}", q(h));
        }
        let restart = match p.restart {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        };
        let _ = writeln!(o, "startup_timeout = {}", dur(p.startup_timeout));
        let _ = writeln!(o, "stop_timeout = {}", dur(p.stop_timeout));
        let _ = writeln!(o, "restart = \"{restart}\"");
        let _ = writeln!(o, "max_restarts = {}", p.max_restarts);
        let _ = writeln!(o, "restart_window = {}", dur(p.restart_window));
        let _ = writeln!(o, "idle_timeout = {}", dur(p.idle_timeout));
        let _ = writeln!(o, "request_timeout = {}", dur(p.request_timeout));
        let _ = writeln!(o, "max_body = {}", p.max_body);
        if let Some(m) = p.memory_limit_mb {
            let _ = writeln!(o, "memory_limit_mb = {m}");
        }
        if !p.plugins.is_empty() {
            let kinds: Vec<_> = p
                .plugins
                .iter()
                .map(|pl| match pl {
                    PluginConf::RateLimit { .. } => "rate_limit",
                    PluginConf::IpFilter { .. } => "ip_filter",
                    PluginConf::Headers { .. } => "headers",
                    PluginConf::BasicAuth { .. } => "basic_auth",
                    PluginConf::MaxBody { .. } => "max_body",
                })
                .collect();
            let _ = writeln!(o, "# plugins: {}", kinds.join(", "));
        }
    }
    if !c.routes.is_empty() {
        let _ = writeln!(o, "\n[routes]");
        for r in c.routes.iter() {
            let key = if r.prefix == "/" {
                r.host.clone()
            } else {
                format!("{}{}", r.host, r.prefix)
            };
            let to = match &r.instance {
                Some(id) => format!("{}:{id}", r.process),
                None => r.process.clone(),
            };
            let _ = writeln!(
                o,
                "{} = {{ to = {}, strip_prefix = {} }}",
                q(&key),
                q(&to),
                r.strip_prefix
            );
        }
    }
    if !c.instances.is_empty() {
        let _ = writeln!(o, "\n[instances]");
        let mut order: Vec<&str> = Vec::new();
        for i in &c.instances {
            if !order.contains(&i.process.as_str()) {
                order.push(&i.process);
            }
        }
        for p in order {
            let ids: Vec<_> = c
                .instances
                .iter()
                .filter(|i| i.process == p)
                .map(|i| q(&i.id))
                .collect();
            let _ = writeln!(o, "{p} = [{}]", ids.join(", "));
        }
    }
    o
}
