//! `ten deploy`, `ten deploy --history`, `ten route`: their arguments and what they do.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::client::cli::{parse_instance, usage, Global};
use crate::client::control::Client;
use crate::wire::{DeployArgs, InstanceInfo, RouteArgs};

/// Deploy a new version: spawn it at weight 0, wait until healthy, then set --weight
#[derive(Debug, Args)]
#[command(
    long_about = "Deploy a new version of a process (blue/green or canary): spawn \
process:version at weight 0 and wait until it is healthy (within --timeout, default the process's \
startup_timeout). If it fails it is stopped, the command exits 1 with its last output lines, and \
nothing else changes. Then its weight is set to --weight (default 0: reachable only at \
{version}.{process}.{domain} until you `ten route`). {version} in command, directory and env lets \
each version run its own code.\n\nExamples:\n  ten deploy api --version v2\n  ten deploy api:v2 --weight 10 \
--timeout 60s\n  ten deploy --history"
)]
pub struct Deploy {
    #[command(flatten)]
    pub args: DeployArgs,
    /// Show the deploy audit log instead (deploys, routes, weights, stops)
    #[arg(long, conflicts_with_all = ["version", "weight", "timeout"])]
    pub history: bool,
    /// With --history: machine-readable output
    #[arg(long, requires = "history")]
    pub json: bool,
}

/// Move all traffic of a process from one version to another in one atomic swap
#[derive(Debug, Args)]
#[command(
    long_about = "Set --to to weight 100 and --from to weight 0 in ONE routing table swap: \
every request goes to one or the other, none is lost. --from keeps running so that rolling back is \
`ten route` the other way; `ten stop process:from` drains it and stops it. Refused if --to is not \
healthy.\n\nExamples:\n  ten route api --from v1 --to v2\n  ten route api --from v2 --to v1   # rollback"
)]
pub struct Route {
    #[command(flatten)]
    pub args: RouteArgs,
}

impl Deploy {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        if self.history {
            return history(&global.client()?, self.json);
        }
        let DeployArgs {
            target,
            version,
            weight,
            timeout,
        } = self.args;
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
        let name = parse_instance(&format!("{process}:{version}")).unwrap_or_else(|e| usage(&e));
        let (process, version) = name.split_once(':').unwrap_or_default();
        let c = global.client()?;
        let body = DeployArgs {
            target: Some(process.to_string()),
            version: Some(version.to_string()),
            weight,
            timeout,
        };
        let v: InstanceInfo = c.exchange("POST", "/api/deploy", Some(&body))?;
        let w = v.weight;
        println!(
            "{process}:{version} deployed: healthy, weight {w}, pid {}",
            v.pid.map_or_else(|| "null".into(), |p| p.to_string())
        );
        if w == 0 {
            println!(
                "reachable at {} only; send it traffic with `ten route {process} --from <old> --to {version}` or `ten weight {process}:{version} 10`",
                v.host.as_deref().unwrap_or("its own host")
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Route {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let body = serde_json::to_value(&self.args)?;
        global.client()?.call("POST", "/api/route", Some(&body))?;
        let RouteArgs { process, from, to } = self.args;
        println!("{process}: {to} now takes all traffic (weight 100), {from} weight 0 (still running: `ten stop {process}:{from}` when done, or route back to roll back)");
        Ok(ExitCode::SUCCESS)
    }
}

fn history(c: &Client, as_json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/api/deploys", None)?;
    let rows = v.as_array().cloned().unwrap_or_default();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::from("TIME                      ACTION  PROCESS  INSTANCE  RESULT\n");
    for r in rows.iter().rev() {
        let s = |k: &str| {
            r[k].as_str()
                .map(str::to_string)
                .unwrap_or_else(|| Value::to_string(&r[k]))
        };
        let _ = writeln!(
            out,
            "{:<25} {:<7} {:<8} {:<9} {}",
            s("time"),
            s("action"),
            s("process"),
            s("instance"),
            s("result")
        );
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
