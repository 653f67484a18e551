//! The command line: `ten serve` and `ten config ...`. Parsing only; each command lives in
//! its own module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{config_cmd, serve};

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
    #[arg(long, global = true, value_name = "DIR", env = "TENEMENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
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
    Show,
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
        Command::Config(ConfigCommand::Show) => {
            let config = config_cmd::load(&cli.global)?;
            print!("{}", config_cmd::show(&config));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
