//! `ten reload [--dry-run]`: ask the running `ten serve` to re-read its config file and apply
//! it (SPEC §11); prints one line per change, the errors on stderr, exit 1 on any error.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::client::cli::Global;
use crate::wire::ReloadArgs;

/// Re-read the config file ten serve was started with and apply it without a restart
#[derive(Debug, Args)]
#[command(
    long_about = "Re-read the config file `ten serve` was started with (its --port, --domain and \
--data-dir stay in force) and apply it while serving: routes, plugins, limits and timeouts in the \
next routing table; new processes and [instances] spawned; removed processes drained and stopped; \
processes whose spawn definition changed (command, env, directory, ...) replaced one instance at \
a time, each new copy healthy before it takes the old one's traffic; new listen addresses \
opened, removed ones closed. Instances of unchanged processes keep running (same PID).\n\n\
An invalid file changes nothing: every error is printed as `ten config check` prints them and \
the command exits 1. So does a change of data_dir. A replacement that never gets healthy is \
stopped, the old instance keeps serving, and the command exits 1. SIGHUP to `ten serve` does \
the same (its result goes to the server's log).\n\nExamples:\n  ten reload --dry-run\n  ten reload"
)]
pub struct Reload {
    #[command(flatten)]
    pub args: ReloadArgs,
}

impl Reload {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let client = global.client()?;
        let body = serde_json::to_value(&self.args)?;
        let reply = client.request("POST", "/api/reload", Some(&body))?;
        let lines = |key: &str| -> Vec<String> {
            reply.body[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (changes, errors) = (lines("changes"), lines("errors"));
        for c in &changes {
            println!("{c}");
        }
        if let Some(e) = reply.body.get("error").and_then(Value::as_str) {
            eprintln!("ten: {e}");
            return Ok(ExitCode::from(1));
        }
        for e in &errors {
            eprintln!("{e}");
        }
        if !errors.is_empty() {
            eprintln!("{} error(s): reload not applied as a whole", errors.len());
            return Ok(ExitCode::from(1));
        }
        if changes.is_empty() {
            println!("no change");
        } else if self.args.dry_run {
            println!("dry run: nothing changed");
        }
        Ok(ExitCode::SUCCESS)
    }
}
