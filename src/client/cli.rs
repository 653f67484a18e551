//! The command line: `Cli`, the global flags, the `Command` enum and its dispatch. Each
//! command's arguments (with its help text) and its `run` live in its own `cmd/` module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::client::cmd::{
    certs, config, deploy, fleet, generate, init, instances, logs, reload, serve, token, upgrade,
};
use crate::client::control::Client;

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
    /// A remote ten serve's management API instead of the control socket: its admin_listen
    /// (http://10.0.0.5:9090) or its proxy listener by its domain (https://example.com).
    /// Given before the command: `ten --server URL --token T ps`
    #[arg(
        long,
        value_name = "URL",
        env = "TENEMENT_SERVER",
        hide_env_values = true
    )]
    pub server: Option<String>,
    /// The API token for --server (see `ten token-gen`; ignored without --server)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TENEMENT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A PEM CA (or self-signed) certificate to trust for an https:// --server, besides the
    /// Mozilla roots
    #[arg(
        long,
        value_name = "PEM",
        env = "TENEMENT_CA_CERT",
        requires = "server"
    )]
    pub ca_cert: Option<PathBuf>,
}

impl Global {
    /// The client of the running `ten serve`: `--server` (remote, over HTTP with `--token`), else
    /// its control socket, whose data dir is --data-dir, $TENEMENT_DATA_DIR,
    /// or the config's `[settings] data_dir` (read alone: the rest of the file may be invalid).
    pub fn client(&self) -> Result<Client> {
        if let Some(url) = &self.server {
            return Client::remote(url, self.token.clone(), self.ca_cert.as_deref());
        }
        let data_dir = self
            .data_dir()
            .context("cannot find the control socket: pass --data-dir, set TENEMENT_DATA_DIR, or point --config at the server's config")?;
        Ok(Client::locate(&data_dir))
    }

    /// The local data dir: --data-dir, $TENEMENT_DATA_DIR, or the config's `[settings]
    /// data_dir` (read alone: the rest of the file may be invalid).
    pub fn data_dir(&self) -> Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => {
                let path = tenement_conf::find_config_path(self.config.as_deref());
                tenement_conf::Config::load_data_dir(&path)
                    .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Serve(serve::Serve),
    Reload(reload::Reload),
    Upgrade(upgrade::Upgrade),
    Init(init::Init),
    /// Check or show the config file
    #[command(subcommand)]
    Config(config::ConfigCommand),
    Spawn(instances::Spawn),
    Stop(instances::Stop),
    Restart(instances::Restart),
    Ps(instances::Ps),
    Health(instances::Health),
    Weight(instances::Weight),
    #[command(name = "token-gen")]
    TokenGen(token::Gen),
    /// API tokens: list or revoke
    #[command(subcommand)]
    Token(token::TokenCommand),
    Deploy(deploy::Deploy),
    Logs(logs::Logs),
    /// Fleet: register other tenement servers (needs a [fleet] section)
    #[command(subcommand)]
    Server(fleet::ServerCommand),
    /// Fleet: route a tenant's domain to a server (needs a [fleet] section)
    #[command(subcommand)]
    Tenant(fleet::TenantCommand),
    /// Fleet: the store several routers share (copy the SQLite fleet into PostgreSQL)
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    Route(deploy::Route),
    Certs(certs::Certs),
    #[command(hide = true)]
    Completions(generate::Completions),
    /// Print the man page ten(1) (roff)
    #[command(hide = true)]
    Man,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_in_pipes();
    }
    let g = &cli.global;
    match cli.command {
        Command::Serve(c) => c.run(g),
        Command::Reload(c) => c.run(g),
        Command::Upgrade(c) => c.run(g),
        Command::Init(c) => c.run(g),
        Command::Config(c) => c.run(g),
        Command::Spawn(c) => c.run(g),
        Command::Stop(c) => c.run(g),
        Command::Restart(c) => c.run(g),
        Command::Ps(c) => c.run(g),
        Command::Health(c) => c.run(g),
        Command::Weight(c) => c.run(g),
        Command::TokenGen(c) => c.run(g),
        Command::Token(c) => c.run(g),
        Command::Deploy(c) => c.run(g),
        Command::Logs(c) => c.run(g),
        Command::Server(c) => c.run(g),
        Command::Tenant(c) => c.run(g),
        Command::Fleet(c) => c.run(g),
        Command::Route(c) => c.run(g),
        Command::Certs(c) => c.run(g),
        Command::Completions(c) => c.run(),
        Command::Man => generate::man(),
    }
}

/// A client command whose reader goes away (`ten ps --json | head -1`) ends quietly, killed by
/// SIGPIPE like other Unix tools, instead of panicking in `println!`: the Rust runtime ignores
/// SIGPIPE, this puts back the default. Not for `ten serve`, which must outlive its clients'
/// closed connections. The control socket's writes do not raise it (`Client::send`).
fn quiet_in_pipes() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler code; no other thread exists yet.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Validate `process:id` at parse time (a bad spelling is a usage error, exit 2).
pub fn parse_instance(s: &str) -> Result<String, String> {
    s.parse::<tenement_conf::InstanceName>()
        .map(|n| n.to_string())
        .map_err(|e| e.to_string())
}

/// A usage error: clap's format, exit 2.
pub fn usage(msg: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::InvalidValue, msg)
        .exit()
}
