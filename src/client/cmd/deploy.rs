//! `ten deploy`, `ten deploy --history`, `ten route`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};

use crate::client::control::Client;

pub fn deploy(
    c: &Client,
    process: &str,
    version: &str,
    weight: Option<u32>,
    timeout: Option<&str>,
) -> Result<ExitCode> {
    let mut body = json!({ "process": process, "version": version });
    if let Some(w) = weight {
        body["weight"] = json!(w);
    }
    if let Some(t) = timeout {
        body["timeout"] = json!(t);
    }
    let v = c.call("POST", "/api/deploy", Some(&body))?;
    let w = v["weight"].as_u64().unwrap_or(0);
    println!(
        "{process}:{version} deployed: healthy, weight {w}, pid {}",
        v["pid"]
    );
    if w == 0 {
        println!(
            "reachable at {} only; send it traffic with `ten route {process} --from <old> --to {version}` or `ten weight {process}:{version} 10`",
            v["host"].as_str().unwrap_or("its own host")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn route(c: &Client, process: &str, from: &str, to: &str) -> Result<ExitCode> {
    c.call(
        "POST",
        "/api/route",
        Some(&json!({ "process": process, "from": from, "to": to })),
    )?;
    println!("{process}: {to} now takes all traffic (weight 100), {from} weight 0 (still running: `ten stop {process}:{from}` when done, or route back to roll back)");
    Ok(ExitCode::SUCCESS)
}

pub fn history(c: &Client, as_json: bool) -> Result<ExitCode> {
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
