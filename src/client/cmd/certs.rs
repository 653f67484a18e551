//! `ten certs`: the TLS certificates `ten serve` serves (files and ACME's).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::client::cli::Global;
use crate::client::cmd::table::{cell, table};

/// List TLS certificates: NAME ISSUER NOT_AFTER SOURCE
#[derive(Debug, Args)]
#[command(
    long_about = "List the TLS certificates ten serve has loaded: from files ([settings.tls] \
cert/key and certs) and issued by ACME ([settings.acme]), with their issuer and expiry.\n\n\
Examples:\n  ten certs\n  ten certs --json | jq '.[] | select(.source == \"acme\")'"
)]
pub struct Certs {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

impl Certs {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let v = global.client()?.call("GET", "/api/certs", None)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", certs_table(&v));
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn certs_table(v: &Value) -> String {
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    ["name", "issuer", "not_after", "source"]
                        .iter()
                        .map(|k| cell(&c[*k]))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["NAME", "ISSUER", "NOT_AFTER", "SOURCE"],
        rows,
        Some("(no certificates)"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_certificate() {
        let v = serde_json::json!([
            {"name": "a.example.com", "issuer": "Pebble Intermediate CA", "not_after": "2031-01-01T00:00:00Z", "source": "acme"},
            {"name": "b.example.com", "issuer": "b.example.com", "not_after": "2030-01-01T00:00:00Z", "source": "file"},
        ]);
        insta::assert_snapshot!(certs_table(&v), @r"
        NAME           ISSUER                  NOT_AFTER             SOURCE
        a.example.com  Pebble Intermediate CA  2031-01-01T00:00:00Z  acme
        b.example.com  b.example.com           2030-01-01T00:00:00Z  file
        ");
        assert!(certs_table(&serde_json::json!([])).contains("(no certificates)"));
    }
}
