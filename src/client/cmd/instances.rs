//! `ten spawn | stop | restart | ps | health | weight`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};

use super::table::{cell, table};
use crate::client::control::Client;

pub fn spawn(c: &Client, name: &str, weight: Option<u32>) -> Result<ExitCode> {
    let (process, id) = name.split_once(':').unwrap_or((name, ""));
    let mut body = json!({ "process": process, "id": id });
    if let Some(w) = weight {
        body["weight"] = json!(w);
    }
    let v = c.call("POST", "/api/instances", Some(&body))?;
    println!(
        "{} {} (pid {}, {})",
        v["name"].as_str().unwrap_or(name),
        v["state"].as_str().unwrap_or("?"),
        v["pid"],
        v["address"].as_str().unwrap_or("-")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn stop(c: &Client, name: &str) -> Result<ExitCode> {
    c.call("DELETE", &format!("/api/instances/{name}"), None)?;
    println!("{name} stopped");
    Ok(ExitCode::SUCCESS)
}

pub fn restart(c: &Client, name: &str) -> Result<ExitCode> {
    let v = c.call("POST", &format!("/api/instances/{name}/restart"), None)?;
    println!(
        "{name} restarted (pid {}, {})",
        v["pid"],
        v["state"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn weight(c: &Client, name: &str, weight: u32) -> Result<ExitCode> {
    let v = c.call(
        "PUT",
        &format!("/api/instances/{name}/weight"),
        Some(&json!({ "weight": weight })),
    )?;
    println!("{name} weight {}", v["weight"]);
    Ok(ExitCode::SUCCESS)
}

pub fn ps(c: &Client, as_json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/api/instances", None)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!(
            "{}",
            ps_table(v.as_array().map(Vec::as_slice).unwrap_or_default())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `ten health api:prod`: exit 0 when healthy, 1 otherwise.
pub fn health(c: &Client, name: &str) -> Result<ExitCode> {
    let v = c.call("GET", &format!("/api/instances/{name}"), None)?;
    let state = v["state"].as_str().unwrap_or("?");
    let mut line = format!("{name}: {state}");
    if let Some(pid) = v["pid"].as_u64() {
        let _ = write!(line, ", pid {pid}");
    }
    if let Some(up) = v["uptime_secs"].as_u64() {
        let _ = write!(line, ", up {}", human_secs(up));
    }
    let _ = write!(line, ", restarts {}, weight {}", v["restarts"], v["weight"]);
    if let Some(e) = v["last_error"].as_str() {
        let _ = write!(line, "\n  last error: {e}");
    }
    println!("{line}");
    Ok(if state == "healthy" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

/// The `ten ps` table: INSTANCE STATE HEALTH WEIGHT PID UPTIME RESTARTS REQUESTS, aligned.
pub fn ps_table(rows: &[Value]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            let mut state = cell(&r["state"]);
            if r["idle"].as_bool() == Some(true) {
                state.push_str(" (idle)");
            }
            if r["kind"].as_str() == Some("external") {
                state.push_str(" (external)");
            }
            vec![
                cell(&r["name"]),
                state,
                cell(&r["health"]),
                cell(&r["weight"]),
                cell(&r["pid"]),
                r["uptime_secs"]
                    .as_u64()
                    .map(human_secs)
                    .unwrap_or_else(|| "-".into()),
                cell(&r["restarts"]),
                cell(&r["requests"]),
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
mod tests {
    use super::*;

    #[test]
    fn ps_table_is_aligned() {
        let rows = vec![
            json!({"name":"api:prod","state":"healthy","health":"passing","weight":100,"pid":4242,"uptime_secs":192,"restarts":0,"requests":1234,"idle":false,"kind":"spawned"}),
            json!({"name":"app:user123","state":"stopped","health":"-","weight":100,"pid":null,"uptime_secs":null,"restarts":2,"requests":7,"idle":true,"kind":"spawned"}),
            json!({"name":"legacy:0","state":"healthy","health":"passing","weight":50,"pid":null,"uptime_secs":null,"restarts":0,"requests":0,"idle":false,"kind":"external"}),
        ];
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
