//! `ten spawn | stop | restart | ps | health | weight`: their arguments and what they do.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::table::table;
use crate::client::cli::{parse_instance, usage, Global};
use crate::wire::{InstanceInfo, SpawnArgs, WeightArgs};

/// Start an instance and wait until it is healthy
#[derive(Debug, Args)]
#[command(
    long_about = "Start an instance of a process declared in the config and wait until it is \
healthy (its health path answers 2xx, or it accepts connections) within startup_timeout. On failure it \
is stopped again and its last output lines are shown.\n\nExamples:\n  ten spawn api:prod\n  \
ten spawn api --id prod\n  ten spawn app:user123 --weight 0"
)]
pub struct Spawn {
    #[command(flatten)]
    pub args: SpawnArgs,
}

/// Stop an instance: out of routing, drain in-flight requests, SIGTERM, SIGKILL after stop_timeout
#[derive(Debug, Args)]
#[command(
    long_about = "Stop an instance: it leaves the routing table at once, in-flight requests \
finish (at most drain_timeout), then its process group gets SIGTERM and SIGKILL after stop_timeout.\n\n\
Example:\n  ten stop api:v1"
)]
pub struct Stop {
    /// The instance, as process:id
    #[arg(value_parser = parse_instance)]
    pub instance: String,
}

/// Stop and start an instance again (same weight)
#[derive(Debug, Args)]
#[command(
    long_about = "Stop and start an instance again with the same weight.\n\nExample:\n  ten restart api:prod"
)]
pub struct Restart {
    /// The instance, as process:id
    #[arg(value_parser = parse_instance)]
    pub instance: String,
}

/// List instances: INSTANCE STATE HEALTH WEIGHT PID UPTIME RESTARTS REQUESTS
#[derive(Debug, Args)]
#[command(
    long_about = "List every instance with its state, health, weight, pid, uptime, restarts \
and requests served.\n\nExamples:\n  ten ps\n  ten ps --json | jq '.[] | select(.state != \"healthy\")'"
)]
pub struct Ps {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

/// Show an instance's health; exit 0 when healthy, 1 otherwise
#[derive(Debug, Args)]
#[command(
    long_about = "Show an instance's state and health; exit 0 when healthy, 1 otherwise.\n\n\
Example:\n  ten health api:prod && echo up"
)]
pub struct Health {
    /// The instance, as process:id
    #[arg(value_parser = parse_instance)]
    pub instance: String,
}

/// Set an instance's routing weight (0..100) for {process}.{domain}
#[derive(Debug, Args)]
#[command(
    long_about = "Set an instance's share of the weighted route {process}.{domain}: 0..100. \
0 keeps it reachable only at {id}.{process}.{domain}.\n\nExamples:\n  ten weight api:v2 10   # canary\n  \
ten weight api:v2 100"
)]
pub struct Weight {
    /// The instance, as process:id
    #[arg(value_parser = parse_instance)]
    pub instance: String,
    #[command(flatten)]
    pub args: WeightArgs,
}

/// A pid as the answer's JSON printed it: `null` when there is none.
fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "null".into(), |p| p.to_string())
}

/// `s`, or `fallback` when the answer left it empty.
fn or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() {
        fallback
    } else {
        s
    }
}

impl Spawn {
    /// `process:id`, or a bare process with --id: one `process:id` on the wire.
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let SpawnArgs { target, id, weight } = self.args;
        let name = match (target.split_once(':'), id) {
            (Some(_), Some(_)) => usage("give either process:id or a process with --id, not both"),
            (Some(_), None) => target,
            (None, Some(id)) => format!("{target}:{id}"),
            (None, None) => usage("expected process:id (e.g. api:prod) or a process with --id"),
        };
        let name = parse_instance(&name).unwrap_or_else(|e| usage(&e));
        let c = global.client()?;
        let (process, id) = name.split_once(':').unwrap_or((&name, ""));
        let body = SpawnArgs {
            target: process.to_string(),
            id: Some(id.to_string()),
            weight,
        };
        let v: InstanceInfo = c.exchange("POST", "/api/instances", Some(&body))?;
        println!(
            "{} {} (pid {}, {})",
            or(&v.name, &name),
            or(&v.state, "?"),
            pid_text(v.pid),
            v.address.as_deref().unwrap_or("-")
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl Stop {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let name = self.instance;
        global
            .client()?
            .call("DELETE", &format!("/api/instances/{name}"), None)?;
        println!("{name} stopped");
        Ok(ExitCode::SUCCESS)
    }
}

impl Restart {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let name = self.instance;
        let v: InstanceInfo = global.client()?.exchange::<Value, _>(
            "POST",
            &format!("/api/instances/{name}/restart"),
            None,
        )?;
        println!(
            "{name} restarted (pid {}, {})",
            pid_text(v.pid),
            or(&v.state, "?")
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl Weight {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let name = self.instance;
        let v: InstanceInfo = global.client()?.exchange(
            "PUT",
            &format!("/api/instances/{name}/weight"),
            Some(&self.args),
        )?;
        println!("{name} weight {}", v.weight);
        Ok(ExitCode::SUCCESS)
    }
}

impl Ps {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let v = global.client()?.call("GET", "/api/instances", None)?;
        if self.json {
            // As the server sent it (every key, in its order).
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            let rows: Vec<InstanceInfo> = serde_json::from_value(v)
                .map_err(|e| anyhow::anyhow!("bad answer from ten serve ({e})"))?;
            print!("{}", ps_table(&rows));
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Health {
    /// `ten health api:prod`: exit 0 when healthy, 1 otherwise.
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let name = self.instance;
        let v: InstanceInfo = global.client()?.exchange::<Value, _>(
            "GET",
            &format!("/api/instances/{name}"),
            None,
        )?;
        let state = or(&v.state, "?");
        let mut line = format!("{name}: {state}");
        if let Some(pid) = v.pid {
            let _ = write!(line, ", pid {pid}");
        }
        if let Some(up) = v.uptime_secs {
            let _ = write!(line, ", up {}", human_secs(up));
        }
        let _ = write!(line, ", restarts {}, weight {}", v.restarts, v.weight);
        if let Some(e) = &v.last_error {
            let _ = write!(line, "\n  last error: {e}");
        }
        println!("{line}");
        Ok(if state == "healthy" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// `5s`, `3m12s`, `2h05m`, `3d04h`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A text cell: `-` when empty.
fn text(s: &str) -> String {
    or(s, "-").to_string()
}

/// An optional cell: `-` when absent.
fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The `ten ps` table: INSTANCE STATE HEALTH WEIGHT PID UPTIME RESTARTS REQUESTS, aligned.
pub fn ps_table(rows: &[InstanceInfo]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            let mut state = text(&r.state);
            if r.idle {
                state.push_str(" (idle)");
            }
            if r.kind == "external" {
                state.push_str(" (external)");
            }
            vec![
                text(&r.name),
                state,
                text(&r.health),
                r.weight.to_string(),
                opt(r.pid),
                r.uptime_secs.map_or_else(|| "-".into(), human_secs),
                r.restarts.to_string(),
                r.requests.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "INSTANCE", "STATE", "HEALTH", "WEIGHT", "PID", "UPTIME", "RESTARTS", "REQUESTS",
        ],
        rows,
        Some("(no instances)"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Rows as the API sends them.
    fn rows(v: Value) -> Vec<InstanceInfo> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ps_table_is_aligned() {
        let rows = rows(json!([
            {"name":"api:prod","state":"healthy","health":"passing","weight":100,"pid":4242,"uptime_secs":192,"restarts":0,"requests":1234,"idle":false,"kind":"spawned"},
            {"name":"app:user123","state":"stopped","health":"-","weight":100,"pid":null,"uptime_secs":null,"restarts":2,"requests":7,"idle":true,"kind":"spawned"},
            {"name":"legacy:0","state":"healthy","health":"passing","weight":50,"pid":null,"uptime_secs":null,"restarts":0,"requests":0,"idle":false,"kind":"external"},
        ]));
        let expected = "\
INSTANCE     STATE               HEALTH   WEIGHT  PID   UPTIME  RESTARTS  REQUESTS
api:prod     healthy             passing  100     4242  3m12s   0         1234
app:user123  stopped (idle)      -        100     -     -       2         7
legacy:0     healthy (external)  passing  50      -     -       0         0
";
        assert_eq!(ps_table(&rows), expected);
        assert_eq!(
            ps_table(&[]),
            "INSTANCE  STATE  HEALTH  WEIGHT  PID  UPTIME  RESTARTS  REQUESTS\n(no instances)\n"
        );
    }

    #[test]
    fn uptime_is_human() {
        assert_eq!(human_secs(5), "5s");
        assert_eq!(human_secs(3661), "1h01m");
        assert_eq!(human_secs(90_000), "1d01h");
    }
}
