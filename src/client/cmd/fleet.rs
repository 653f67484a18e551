//! `ten server add | list | rm` and `ten tenant add | list | migrate | rm`.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::{json, Value};

use std::fmt::Write as _;

use super::table::{cell, encode, table};
use crate::client::control::Client;

/// `ten server list`: ID URL DOMAIN REGION STATUS LAST_SEEN.
pub fn servers_table(rows: &[Value]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            ["id", "url", "domain", "region", "status", "last_seen"]
                .iter()
                .map(|k| cell(&r[*k]))
                .collect()
        })
        .collect();
    table(
        &["ID", "URL", "DOMAIN", "REGION", "STATUS", "LAST_SEEN"],
        rows,
        Some("(no servers: add one with `ten server add <id> <url>`)"),
    )
}

/// `ten tenant list`: ID DOMAIN SERVER PROCESS INSTANCE.
pub fn tenants_table(rows: &[Value]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            ["id", "domain", "server", "process", "instance"]
                .iter()
                .map(|k| cell(&r[*k]))
                .collect()
        })
        .collect();
    table(
        &["ID", "DOMAIN", "SERVER", "PROCESS", "INSTANCE"],
        rows,
        Some("(no tenants)"),
    )
}

fn print_list(v: &Value, as_json: bool, render: fn(&[Value]) -> String) -> Result<ExitCode> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!(
            "{}",
            render(v.as_array().map(Vec::as_slice).unwrap_or_default())
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn server_add(
    c: &Client,
    id: &str,
    url: &str,
    domain: Option<&str>,
    region: Option<&str>,
    token: Option<&str>,
) -> Result<ExitCode> {
    let mut body = json!({ "id": id, "url": url });
    if let Some(d) = domain {
        body["domain"] = json!(d);
    }
    if let Some(r) = region {
        body["region"] = json!(r);
    }
    if let Some(t) = token {
        body["token"] = json!(t);
    }
    let v = c.call("POST", "/api/servers", Some(&body))?;
    let mut line = format!(
        "server {} added: {} (domain {}",
        v["id"].as_str().unwrap_or(id),
        v["url"].as_str().unwrap_or(url),
        v["domain"].as_str().unwrap_or("?")
    );
    if let Some(r) = v["region"].as_str() {
        let _ = write!(line, ", region {r}");
    }
    line.push_str("); status unknown until its first health check");
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

pub fn server_list(c: &Client, as_json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/api/servers", None)?;
    print_list(&v, as_json, servers_table)
}

pub fn server_rm(c: &Client, id: &str) -> Result<ExitCode> {
    c.call("DELETE", &format!("/api/servers/{}", encode(id)), None)?;
    println!("server {id} removed");
    Ok(ExitCode::SUCCESS)
}

pub fn tenant_add(
    c: &Client,
    id: &str,
    domain: &str,
    server: &str,
    process: &str,
    instance: &str,
) -> Result<ExitCode> {
    let body = json!({
        "id": id, "domain": domain, "server": server, "process": process, "instance": instance,
    });
    let v = c.call("POST", "/api/tenants", Some(&body))?;
    println!(
        "tenant {id} added: {} -> {process}:{instance} on server {server}",
        v["domain"].as_str().unwrap_or(domain)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn tenant_list(c: &Client, as_json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/api/tenants", None)?;
    print_list(&v, as_json, tenants_table)
}

pub fn tenant_migrate(c: &Client, id: &str, server: &str) -> Result<ExitCode> {
    let v = c.call(
        "POST",
        &format!("/api/tenants/{}/migrate", encode(id)),
        Some(&json!({ "server": server })),
    )?;
    println!(
        "tenant {id} ({}) now served by server {server}; requests in flight finish where they started",
        v["domain"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn tenant_rm(c: &Client, id: &str) -> Result<ExitCode> {
    c.call("DELETE", &format!("/api/tenants/{}", encode(id)), None)?;
    println!("tenant {id} removed");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_table_is_aligned() {
        let rows = vec![
            json!({"id":"eu1","url":"https://eu1.example.com","domain":"eu1.example.com","region":"eu","status":"online","last_seen":"2026-11-23T11:20:49.540Z","latency_ms":12}),
            json!({"id":"us1","url":"http://10.0.0.7:8080","domain":"us1.example.com","region":null,"status":"unknown","last_seen":null}),
        ];
        let expected = "\
ID   URL                      DOMAIN           REGION  STATUS   LAST_SEEN
eu1  https://eu1.example.com  eu1.example.com  eu      online   2026-11-23T11:20:49.540Z
us1  http://10.0.0.7:8080     us1.example.com  -       unknown  -
";
        assert_eq!(servers_table(&rows), expected);
        assert_eq!(
            servers_table(&[]),
            "ID  URL  DOMAIN  REGION  STATUS  LAST_SEEN\n(no servers: add one with `ten server add <id> <url>`)\n"
        );
    }

    #[test]
    fn tenant_table_is_aligned() {
        let rows = vec![
            json!({"id":"acme","domain":"acme.com","server":"eu1","process":"app","instance":"acme"}),
        ];
        assert_eq!(
            tenants_table(&rows),
            "ID    DOMAIN    SERVER  PROCESS  INSTANCE\nacme  acme.com  eu1     app      acme\n"
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
