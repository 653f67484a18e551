//! `ten token-gen`, `ten token list` and `ten token revoke`: API tokens (SPEC §12).

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::table::{cell, table};
use crate::client::cli::Global;
use crate::client::control::Client;

/// Create an API token: printed once, only its Argon2 hash is stored
#[derive(Debug, Args)]
#[command(long_about = "Create an API token for the management HTTP API \
(Authorization: Bearer <token>). It is printed once; the server keeps only its Argon2 hash.\n\n\
A token made with --scope PROCESS (or PROCESS:ID) sees and acts on that process (or instance) \
only: its instances, their logs, restart and weight; every other route answers 403. tenement \
0.2's --tenant ID is the same as --scope ID.\n\n\
Examples:\n  TOKEN=$(ten token-gen --name ci)\n  ten token-gen --name acme --scope app:acme\n  \
curl -H \"Authorization: Bearer $TOKEN\" -H 'Host: example.com' localhost:8080/api/instances")]
pub struct Gen {
    /// A name to recognise the token by in `ten token list`
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Limit the token to a process or one instance (PROCESS or PROCESS:ID)
    #[arg(long, value_name = "PROCESS[:ID]", conflicts_with = "tenant")]
    scope: Option<String>,
    /// tenement 0.2's spelling of --scope
    #[arg(long, value_name = "ID")]
    tenant: Option<String>,
}

impl Gen {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let c = global.client()?;
        let body = json!({ "name": self.name, "scope": self.scope.or(self.tenant) });
        let v = c.call("POST", "/api/tokens", Some(&body))?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| anyhow!("ten serve returned no token"))?;
        println!("{token}");
        let scope = match v["scope"].as_str() {
            Some(s) => format!(" It is scoped to {s}."),
            None => String::new(),
        };
        eprintln!(
            "Store it now: it is shown once (only its Argon2 hash is kept). Use it as `Authorization: Bearer <token>`.{scope} Token id {} (ten token revoke {}).",
            v["id"], v["id"]
        );
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List API tokens: id, name, scope, created, last used (never the token)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token by id (see `ten token list`): it stops working at once
    Revoke { id: String },
}

impl TokenCommand {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let c = global.client()?;
        match self {
            TokenCommand::List { json } => list(&c, json),
            TokenCommand::Revoke { id } => {
                c.call(
                    "DELETE",
                    &format!("/api/tokens/{}", super::table::encode(&id)),
                    None,
                )?;
                println!("revoked token {id}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn list(c: &Client, as_json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/api/tokens", None)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!(
            "{}",
            tokens_table(v.as_array().map(Vec::as_slice).unwrap_or_default())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A time in milliseconds since the epoch, as RFC 3339 (UTC, seconds); `-` when absent.
fn when(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

/// `ten token list`: ID NAME SCOPE CREATED LAST_USED (SCOPE `*`: the whole API).
pub fn tokens_table(rows: &[Value]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            let scope = match &r["scope"] {
                Value::Null => "*".to_string(),
                s => cell(s),
            };
            vec![
                cell(&r["id"]),
                cell(&r["name"]),
                scope,
                when(&r["created_ms"]),
                when(&r["last_used_ms"]),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "SCOPE", "CREATED", "LAST_USED"],
        rows,
        Some("(no tokens: make one with `ten token-gen`)"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn token_table_is_aligned_and_shows_no_secret() {
        let rows = serde_json::json!([
            {"id": 1, "name": "ci", "scope": null, "created_ms": 0, "last_used_ms": null},
            {"id": 12, "name": "", "scope": "app:acme", "created_ms": 1000, "last_used_ms": 61000},
        ]);
        assert_eq!(
            tokens_table(rows.as_array().unwrap()),
            "ID  NAME  SCOPE     CREATED               LAST_USED\n\
             1   ci    *         1970-01-01T00:00:00Z  -\n\
             12  -     app:acme  1970-01-01T00:00:01Z  1970-01-01T00:01:01Z\n"
        );
        assert_eq!(
            tokens_table(&[]),
            "ID  NAME  SCOPE  CREATED  LAST_USED\n(no tokens: make one with `ten token-gen`)\n"
        );
    }
}
