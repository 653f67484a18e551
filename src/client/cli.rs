//! The command line: `ten serve` and `ten config ...`. Parsing only; each command lives in
//! its own module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::client::cmd::config as config_cmd;
use crate::client::cmd::{deploy, fleet, instances, logs, token};
use crate::client::control::Client;
use crate::server::serve;

#[derive(Debug, Parser)]
#[command(
    name = "ten",
    version,
    about = "tenement: a Pingora proxy, a process supervisor and a fleet router in one binary",
    long_about = "tenement: a Pingora proxy, a process supervisor and a fleet router in one binary.\n\n\
`ten serve` runs everything; the other commands are clients of it or work on the config file.\n\n\
Examples:\n  ten serve --config examples/demo/tenement.toml\n  ten config check tenement.toml\n  \
curl -H 'Host: prod.hello.localhost' localhost:8080/"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Config file [default: $TENEMENT_CONFIG, else ./tenement.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Data directory (control socket, database, sockets) [default: the config's data_dir]
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "TENEMENT_DATA_DIR",
        hide_env_values = true
    )]
    pub data_dir: Option<PathBuf>,
}

impl Global {
    /// The client of the running `ten serve`: its data dir is --data-dir, $TENEMENT_DATA_DIR,
    /// or the config's `[settings] data_dir` (read alone: the rest of the file may be invalid).
    pub fn client(&self) -> Result<Client> {
        let data_dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => {
                let path = tenement_conf::find_config_path(self.config.as_deref());
                tenement_conf::Config::load_data_dir(&path)
                    .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))
                    .context("cannot find the control socket: pass --data-dir, set TENEMENT_DATA_DIR, or point --config at the server's config")?
            }
        };
        Ok(Client::locate(&data_dir))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, the supervisor and the management API
    #[command(
        long_about = "Run the proxy, the supervisor and the management API.\n\n\
Spawns the [instances] of the config, routes by Host, and on SIGTERM or SIGINT stops accepting,\n\
drains in-flight requests (drain_timeout), stops every instance and exits 0.\n\n\
Examples:\n  ten serve\n  ten serve --config /etc/ten/tenement.toml --port 80 --domain example.com"
    )]
    Serve(ServeArgs),
    /// Check or show the config file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Start an instance and wait until it is healthy
    #[command(
        long_about = "Start an instance of a process declared in the config and wait until it is \
healthy (its health path answers 2xx, or it accepts connections) within startup_timeout. On failure it \
is stopped again and its last output lines are shown.\n\nExamples:\n  ten spawn api:prod\n  \
ten spawn api --id prod\n  ten spawn app:user123 --weight 0"
    )]
    Spawn {
        /// process:id, or a process with --id
        target: String,
        /// The instance id (with a bare process name)
        #[arg(long)]
        id: Option<String>,
        /// Routing weight 0..100 [default: 100]
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        weight: Option<u32>,
    },
    /// Stop an instance: out of routing, drain in-flight requests, SIGTERM, SIGKILL after stop_timeout
    #[command(
        long_about = "Stop an instance: it leaves the routing table at once, in-flight requests \
finish (at most drain_timeout), then its process group gets SIGTERM and SIGKILL after stop_timeout.\n\n\
Example:\n  ten stop api:v1"
    )]
    Stop {
        /// The instance, as process:id
        #[arg(value_parser = parse_instance)]
        instance: String,
    },
    /// Stop and start an instance again (same weight)
    #[command(
        long_about = "Stop and start an instance again with the same weight.\n\nExample:\n  ten restart api:prod"
    )]
    Restart {
        /// The instance, as process:id
        #[arg(value_parser = parse_instance)]
        instance: String,
    },
    /// List instances: INSTANCE STATE HEALTH WEIGHT PID UPTIME RESTARTS REQUESTS
    #[command(
        long_about = "List every instance with its state, health, weight, pid, uptime, restarts \
and requests served.\n\nExamples:\n  ten ps\n  ten ps --json | jq '.[] | select(.state != \"healthy\")'"
    )]
    Ps {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show an instance's health; exit 0 when healthy, 1 otherwise
    #[command(
        long_about = "Show an instance's state and health; exit 0 when healthy, 1 otherwise.\n\n\
Example:\n  ten health api:prod && echo up"
    )]
    Health {
        /// The instance, as process:id
        #[arg(value_parser = parse_instance)]
        instance: String,
    },
    /// Set an instance's routing weight (0..100) for {process}.{domain}
    #[command(
        long_about = "Set an instance's share of the weighted route {process}.{domain}: 0..100. \
0 keeps it reachable only at {id}.{process}.{domain}.\n\nExamples:\n  ten weight api:v2 10   # canary\n  \
ten weight api:v2 100"
    )]
    Weight {
        /// The instance, as process:id
        #[arg(value_parser = parse_instance)]
        instance: String,
        /// Share of {process}.{domain}, 0..100
        #[arg(value_parser = clap::value_parser!(u32).range(0..=100))]
        weight: u32,
    },
    /// Create an API token: printed once, only its Argon2 hash is stored
    #[command(
        name = "token-gen",
        long_about = "Create an API token for the management HTTP API \
(Authorization: Bearer <token>). It is printed once; the server keeps only its Argon2 hash.\n\n\
Example:\n  TOKEN=$(ten token-gen)\n  curl -H \"Authorization: Bearer $TOKEN\" -H 'Host: example.com' localhost:8080/api/instances"
    )]
    TokenGen,
    /// Deploy a new version: spawn it at weight 0, wait until healthy, then set --weight
    #[command(
        long_about = "Deploy a new version of a process (blue/green or canary): spawn \
process:version at weight 0 and wait until it is healthy (within --timeout, default the process's \
startup_timeout). If it fails it is stopped, the command exits 1 with its last output lines, and \
nothing else changes. Then its weight is set to --weight (default 0: reachable only at \
{version}.{process}.{domain} until you `ten route`). {version} in command, directory and env lets \
each version run its own code.\n\nExamples:\n  ten deploy api --version v2\n  ten deploy api:v2 --weight 10 \
--timeout 60s\n  ten deploy --history"
    )]
    Deploy {
        /// process (with --version) or process:version
        #[arg(required_unless_present = "history")]
        target: Option<String>,
        /// The new version (its instance id)
        #[arg(long)]
        version: Option<String>,
        /// Weight once healthy, 0..100 [default: 0]
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        weight: Option<u32>,
        /// How long to wait until healthy, e.g. 60s [default: startup_timeout]
        #[arg(long, value_parser = parse_timeout)]
        timeout: Option<String>,
        /// Show the deploy audit log instead (deploys, routes, weights, stops)
        #[arg(long, conflicts_with_all = ["version", "weight", "timeout"])]
        history: bool,
        /// With --history: machine-readable output
        #[arg(long, requires = "history")]
        json: bool,
    },
    /// Show captured output of instances (and ten's own events), or follow it live
    #[command(
        long_about = "Show the captured stdout/stderr lines of instances, newest last, from \
the log store (SQLite with full-text search). `ten` itself logs its events (spawn, crash, restart, \
health, deploy) as process \"ten\". With -f, keep printing new lines until Ctrl-C.\n\n\
Examples:\n  ten logs api:prod\n  ten logs api --search 'timeout OR refused' --since 1h\n  \
ten logs -f --stream stderr\n  ten logs ten --search crash"
    )]
    Logs {
        /// process or process:id (default: everything)
        target: Option<String>,
        /// Follow new lines as they arrive
        #[arg(short, long)]
        follow: bool,
        /// Full-text search (SQLite FTS5: words, "phrases", prefix*, AND/OR/NOT)
        #[arg(long)]
        search: Option<String>,
        /// Only stdout or stderr
        #[arg(long, value_parser = ["stdout", "stderr"])]
        stream: Option<String>,
        /// Only lines newer than this, e.g. 10m, 2h
        #[arg(long, value_parser = parse_timeout)]
        since: Option<String>,
        /// How many lines [default: 100; 10 with -f]
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Fleet: register other tenement servers (needs a [fleet] section)
    #[command(subcommand)]
    Server(ServerCommand),
    /// Fleet: route a tenant's domain to a server (needs a [fleet] section)
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Move all traffic of a process from one version to another in one atomic swap
    #[command(
        long_about = "Set --to to weight 100 and --from to weight 0 in ONE routing table swap: \
every request goes to one or the other, none is lost. --from keeps running so that rolling back is \
`ten route` the other way; `ten stop process:from` drains it and stops it. Refused if --to is not \
healthy.\n\nExamples:\n  ten route api --from v1 --to v2\n  ten route api --from v2 --to v1   # rollback"
    )]
    Route {
        /// The process whose traffic moves
        process: String,
        /// The version (instance id) that gives up its traffic (weight 0)
        #[arg(long)]
        from: String,
        /// The version that takes all traffic (weight 100); must be healthy
        #[arg(long)]
        to: String,
    },
}

fn parse_timeout(s: &str) -> Result<String, String> {
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

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Register a tenement server by its URL; it is health-checked from then on
    #[command(
        long_about = "Register a tenement server by its URL. The fleet health loop checks \
GET {url}/health from then on. Its domain (default: the URL's host) is used to rewrite the Host of \
its tenants' requests to {instance}.{process}.{domain}. A server whose domain is this server's own \
domain is this server: its tenants are served locally.\n\nExamples:\n  \
ten server add eu1 http://10.0.0.5:8080 --domain eu1.example.com --region eu"
    )]
    Add {
        id: String,
        url: String,
        /// Its base domain [default: the URL's host]
        #[arg(long)]
        domain: Option<String>,
        /// Failover prefers servers of the same region
        #[arg(long)]
        region: Option<String>,
        /// Its API token, to read its /metrics and /api/logs for fleet aggregation
        #[arg(long)]
        token: Option<String>,
    },
    /// List servers with their status (unknown, online, degraded, offline) and last seen
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a server (refused while it is the home of tenants)
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Route a tenant's domain to process:instance on its home server
    #[command(
        long_about = "Route a tenant's domain to `process:instance` on its home server. \
Requests for the domain go to the home server with Host rewritten to {instance}.{process}.{server \
domain}; if home is offline and [fleet] failover is on, to another online server; none: 503.\n\n\
Example:\n  ten tenant add acme acme.example.com eu1 app acme"
    )]
    Add {
        id: String,
        domain: String,
        server: String,
        process: String,
        instance: String,
    },
    /// List tenants
    List {
        #[arg(long)]
        json: bool,
    },
    /// Move a tenant to another home server, atomically for new requests
    Migrate { id: String, server: String },
    /// Remove a tenant
    Rm { id: String },
}

/// Validate `process:id` at parse time (a bad spelling is a usage error, exit 2).
fn parse_instance(s: &str) -> Result<String, String> {
    s.parse::<tenement_conf::InstanceName>()
        .map(|n| n.to_string())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen on this port (replaces the port of the first [settings] listen address)
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Base domain for {process}.{domain} routing (overrides [settings] domain)
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
}

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

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = config_cmd::load(&cli.global)?;
            config.apply_overrides(args.port, args.domain.as_deref());
            init_tracing();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ten")
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(serve::run(config))?;
            // Connections still open after the drain are closed by exiting.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { path }) => Ok(config_cmd::check(
            path.as_deref().or(cli.global.config.as_deref()),
        )),
        Command::Config(ConfigCommand::Show { routes }) => {
            let config = config_cmd::load(&cli.global)?;
            if routes {
                print!("{}", config_cmd::routes(&config));
            } else {
                print!("{}", config_cmd::show(&config));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Spawn { target, id, weight } => {
            let name = match (target.split_once(':'), id) {
                (Some(_), Some(_)) => {
                    usage("give either process:id or a process with --id, not both")
                }
                (Some(_), None) => target,
                (None, Some(id)) => format!("{target}:{id}"),
                (None, None) => usage("expected process:id (e.g. api:prod) or a process with --id"),
            };
            let name = parse_instance(&name).unwrap_or_else(|e| usage(&e));
            instances::spawn(&cli.global.client()?, &name, weight)
        }
        Command::Stop { instance } => instances::stop(&cli.global.client()?, &instance),
        Command::Restart { instance } => instances::restart(&cli.global.client()?, &instance),
        Command::Ps { json } => instances::ps(&cli.global.client()?, json),
        Command::Health { instance } => instances::health(&cli.global.client()?, &instance),
        Command::Weight { instance, weight } => {
            instances::weight(&cli.global.client()?, &instance, weight)
        }
        Command::TokenGen => token::generate(&cli.global.client()?),
        Command::Deploy {
            history: true,
            json,
            ..
        } => deploy::history(&cli.global.client()?, json),
        Command::Deploy {
            target,
            version,
            weight,
            timeout,
            ..
        } => {
            let target = target.unwrap_or_default();
            let (process, version) = match (target.split_once(':'), version) {
                (Some(_), Some(_)) => {
                    usage("give either process:version or a process with --version, not both")
                }
                (Some((p, v)), None) => (p.to_string(), v.to_string()),
                (None, Some(v)) => (target.clone(), v),
                (None, None) => {
                    usage("expected process:version (e.g. api:v2) or a process with --version")
                }
            };
            let name =
                parse_instance(&format!("{process}:{version}")).unwrap_or_else(|e| usage(&e));
            let (process, version) = name.split_once(':').unwrap_or_default();
            deploy::deploy(
                &cli.global.client()?,
                process,
                version,
                weight,
                timeout.as_deref(),
            )
        }
        Command::Logs {
            target,
            follow,
            search,
            stream,
            since,
            limit,
            json,
        } => logs::logs(
            &cli.global.client()?,
            logs::LogsArgs {
                target,
                follow,
                search,
                stream,
                since,
                limit,
                json,
            },
        ),
        Command::Server(cmd) => {
            let c = cli.global.client()?;
            match cmd {
                ServerCommand::Add {
                    id,
                    url,
                    domain,
                    region,
                    token,
                } => fleet::server_add(
                    &c,
                    &id,
                    &url,
                    domain.as_deref(),
                    region.as_deref(),
                    token.as_deref(),
                ),
                ServerCommand::List { json } => fleet::server_list(&c, json),
                ServerCommand::Rm { id } => fleet::server_rm(&c, &id),
            }
        }
        Command::Tenant(cmd) => {
            let c = cli.global.client()?;
            match cmd {
                TenantCommand::Add {
                    id,
                    domain,
                    server,
                    process,
                    instance,
                } => fleet::tenant_add(&c, &id, &domain, &server, &process, &instance),
                TenantCommand::List { json } => fleet::tenant_list(&c, json),
                TenantCommand::Migrate { id, server } => fleet::tenant_migrate(&c, &id, &server),
                TenantCommand::Rm { id } => fleet::tenant_rm(&c, &id),
            }
        }
        Command::Route { process, from, to } => {
            deploy::route(&cli.global.client()?, &process, &from, &to)
        }
    }
}

/// A usage error: clap's format, exit 2.
fn usage(msg: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::InvalidValue, msg)
        .exit()
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
