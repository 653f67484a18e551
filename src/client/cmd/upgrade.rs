//! `ten upgrade [--binary PATH]`: ask the running `ten serve` to hand its sockets and its
//! running instances to a new `ten serve` started from PATH (SPEC §11); prints the old and new
//! pid, or why the new one did not take over (exit 1; the old one still serves).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::client::cli::Global;
use crate::wire::UpgradeArgs;

/// Replace the running ten serve by a new binary without closing a socket or stopping an app
#[derive(Debug, Args)]
#[command(
    long_about = "Replace the running `ten serve` by a new one started from --binary (default: the \
binary at the running server's path, e.g. after a package upgrade) with the same config file and \
flags. The new process takes over the listening sockets, the control socket and the running \
instances (same PIDs, weights, health and log capture); the old one stops accepting, answers the \
requests still in flight (Connection: close) and exits 0 without stopping any instance. Prints \
the old and the new pid once the new one serves.\n\nIf the new binary fails to start or to take \
over, it is stopped, the old one keeps serving with its instances untouched, and the command \
exits 1 with the reason. Works over the control socket only.\n\nExamples:\n  ten upgrade\n  \
ten upgrade --binary /usr/local/bin/ten"
)]
pub struct Upgrade {
    #[command(flatten)]
    pub args: UpgradeArgs,
}

impl Upgrade {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let client = global.client()?;
        let mut args = self.args;
        // The server runs it from its own working directory: make the path absolute here.
        if let Some(b) = &args.binary {
            args.binary = Some(std::path::absolute(b).unwrap_or_else(|_| b.clone()));
        }
        let body = serde_json::to_value(&args)?;
        let reply = client.request("POST", "/api/upgrade", Some(&body))?;
        if let Some(e) = reply.body.get("error").and_then(Value::as_str) {
            eprintln!("ten: upgrade failed: {e}");
            return Ok(ExitCode::from(1));
        }
        let pid = |k: &str| reply.body[k].as_u64().unwrap_or(0);
        println!(
            "upgraded: ten serve pid {} -> pid {} (the old one drains and exits)",
            pid("old_pid"),
            pid("new_pid")
        );
        Ok(ExitCode::SUCCESS)
    }
}
