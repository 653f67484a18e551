//! `ten serve`: load the config, apply --port / --domain, and hand over to the server program
//! (`server::serve`) on a fresh tokio runtime.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::client::cli::Global;
use crate::server::reload::Source;
use crate::server::serve;

/// Run the proxy, the supervisor and the management API
#[derive(Debug, Args)]
#[command(
    long_about = "Run the proxy, the supervisor and the management API.\n\n\
Spawns the [instances] of the config, routes by Host, and on SIGTERM or SIGINT stops accepting,\n\
drains in-flight requests (drain_timeout), stops every instance and exits 0.\n\n\
Examples:\n  ten serve\n  ten serve --config /etc/ten/tenement.toml --port 80 --domain example.com"
)]
pub struct Serve {
    /// Listen on this port (replaces the port of the first [settings] listen address)
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Base domain for {process}.{domain} routing (overrides [settings] domain)
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// Started by `ten upgrade`: take over from the server on this inherited socket
    #[arg(long, value_name = "FD", hide = true)]
    pub takeover_fd: Option<i32>,
}

impl Serve {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        // The file and these flags, kept: every reload reads the file again and applies them.
        let source = Source {
            path: tenement_conf::find_config_path(global.config.as_deref()),
            data_dir: global.data_dir.clone(),
            port: self.port,
            domain: self.domain,
        };
        let config = source.load().map_err(|e| {
            let e = anyhow::anyhow!(
                "invalid config {}:
{}",
                source.path.display(),
                e.join("\n")
            );
            if let Some(fd) = self.takeover_fd {
                // Started by `ten upgrade`: the old server says why in its answer.
                crate::server::upgrade::takeover::refuse(fd, &format!("{e:#}"));
            }
            e
        })?;
        serve::init_tracing();
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = config.settings.threads {
            builder.worker_threads(n as usize);
        }
        let rt = builder
            .enable_all()
            .thread_name("ten")
            .build()
            .context("cannot start the async runtime")?;
        tracing::info!(
            workers = rt.metrics().num_workers(),
            "async runtime started ([settings] threads, else one worker per CPU)"
        );
        rt.block_on(serve::run(source, config, self.takeover_fd))?;
        // Connections still open after the drain are closed by exiting.
        rt.shutdown_timeout(std::time::Duration::from_millis(100));
        Ok(ExitCode::SUCCESS)
    }
}
