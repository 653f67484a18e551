//! `ten server add | list | rm`, `ten tenant add | list | migrate | rm` and
//! `ten fleet migrate-store`: their arguments and what they do.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use super::table::{cell, encode, table};
use crate::client::cli::Global;
use crate::client::control::Client;
use crate::wire::{MigrateArgs, ServerArgs, TenantArgs};

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Register a tenement server by its URL; it is health-checked from then on
    #[command(
        long_about = "Register a tenement server by its URL. The fleet health loop checks \
GET {url}/health from then on. Its domain (default: the URL's host) is used to rewrite the Host of \
its tenants' requests to {instance}.{process}.{domain}. A server whose domain is this server's own \
domain is this server: its tenants are served locally.\n\nExamples:\n  \
ten server add eu1 http://10.0.0.5:8080 --domain eu1.example.com --region eu"
    )]
    Add(ServerArgs),
    /// List servers with their status (unknown, online, degraded, offline) and last seen
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a server (refused while it is the home of tenants)
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Route a tenant's domain to process:instance on its home server
    #[command(
        long_about = "Route a tenant's domain to `process:instance` on its home server. \
Requests for the domain go to the home server with Host rewritten to {instance}.{process}.{server \
domain}; if home is offline and [fleet] failover is on, to another online server; none: 503.\n\n\
Example:\n  ten tenant add acme acme.example.com eu1 app acme"
    )]
    Add(TenantArgs),
    /// List tenants: home server and where each is served now (SERVED_AT)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Move a tenant to another home server, atomically for new requests
    Migrate {
        id: String,
        #[command(flatten)]
        args: MigrateArgs,
    },
    /// Remove a tenant
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Copy this data dir's SQLite fleet (servers with their tokens, tenants, placements) into
    /// an empty PostgreSQL store, then print the [fleet] store line to set
    #[command(
        name = "migrate-store",
        long_about = "Copy the fleet of this data dir's tenement.db (servers with their tokens, \
tenants, failover placements) into a PostgreSQL store, in one transaction, for several routers to \
share. The store's tables are created if needed. A store that already holds servers or tenants is \
refused unless --force, which replaces its contents. Then set `store = \"postgres://...\"` in \
[fleet] and restart ten serve (every router of the fleet points at the same URL).\n\nExample:\n  \
ten fleet migrate-store postgres://ten:PASSWORD@db.example.com/fleet"
    )]
    MigrateStore {
        /// postgres://user:password@host[:port]/database
        url: String,
        /// Replace the contents of a store that is not empty
        #[arg(long)]
        force: bool,
    },
}

impl FleetCommand {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        match self {
            FleetCommand::MigrateStore { url, force } => migrate_store(global, &url, force),
        }
    }
}

fn migrate_store(global: &Global, url: &str, force: bool) -> Result<ExitCode> {
    use tenement_fleet::FleetStore;
    let name = tenement_fleet::store_display_name(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = global.data_dir()?.join("tenement.db");
    if !db.exists() {
        anyhow::bail!("no fleet to copy: {} does not exist", db.display());
    }
    let from = FleetStore::open(&db).map_err(|e| anyhow::anyhow!("{}: {e}", db.display()))?;
    let to = FleetStore::open_conf(Some(url), &db, std::time::Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = to
        .copy_from(&from, force)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "copied {} servers, {} tenants and {} placements from {} into {name}",
        n.servers,
        n.tenants,
        n.placements,
        db.display()
    );
    println!(
        "now set in [fleet] of every router (with the password), then restart ten serve:\n  store = \"{name}\""
    );
    Ok(ExitCode::SUCCESS)
}

impl ServerCommand {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let c = global.client()?;
        match self {
            ServerCommand::Add(args) => server_add(&c, &args),
            ServerCommand::List { json } => server_list(&c, json),
            ServerCommand::Rm { id } => server_rm(&c, &id),
        }
    }
}

impl TenantCommand {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        let c = global.client()?;
        match self {
            TenantCommand::Add(args) => tenant_add(&c, &args),
            TenantCommand::List { json } => tenant_list(&c, json),
            TenantCommand::Migrate { id, args } => tenant_migrate(&c, &id, &args),
            TenantCommand::Rm { id } => tenant_rm(&c, &id),
        }
    }
}

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

/// `ten tenant list`: ID DOMAIN PROCESS INSTANCE HOME SERVED_AT (`-`: being placed, or
/// nowhere to go).
pub fn tenants_table(rows: &[Value]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            ["id", "domain", "process", "instance", "home", "served_at"]
                .iter()
                .map(|k| cell(&r[*k]))
                .collect()
        })
        .collect();
    table(
        &["ID", "DOMAIN", "PROCESS", "INSTANCE", "HOME", "SERVED_AT"],
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

fn server_add(c: &Client, a: &ServerArgs) -> Result<ExitCode> {
    let v = c.call("POST", "/api/servers", Some(&serde_json::to_value(a)?))?;
    let mut line = format!(
        "server {} added: {} (domain {}",
        v["id"].as_str().unwrap_or(&a.id),
        v["url"].as_str().unwrap_or(&a.url),
        v["domain"].as_str().unwrap_or("?")
    );
    if let Some(r) = v["region"].as_str() {
        let _ = write!(line, ", region {r}");
    }
    line.push_str("); status unknown until its first health check");
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn server_list(c: &Client, as_json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/api/servers", None)?;
    print_list(&v, as_json, servers_table)
}

fn server_rm(c: &Client, id: &str) -> Result<ExitCode> {
    c.call("DELETE", &format!("/api/servers/{}", encode(id)), None)?;
    println!("server {id} removed");
    Ok(ExitCode::SUCCESS)
}

fn tenant_add(c: &Client, a: &TenantArgs) -> Result<ExitCode> {
    let v = c.call("POST", "/api/tenants", Some(&serde_json::to_value(a)?))?;
    println!(
        "tenant {} added: {} -> {}:{} on server {}",
        a.id,
        v["domain"].as_str().unwrap_or(&a.domain),
        a.process,
        a.instance,
        a.server
    );
    Ok(ExitCode::SUCCESS)
}

fn tenant_list(c: &Client, as_json: bool) -> Result<ExitCode> {
    let v = c.call("GET", "/api/tenants", None)?;
    print_list(&v, as_json, tenants_table)
}

fn tenant_migrate(c: &Client, id: &str, a: &MigrateArgs) -> Result<ExitCode> {
    let v = c.call(
        "POST",
        &format!("/api/tenants/{}/migrate", encode(id)),
        Some(&serde_json::to_value(a)?),
    )?;
    println!(
        "tenant {id} ({}) now served by server {}; requests in flight finish where they started",
        v["domain"].as_str().unwrap_or("?"),
        a.server
    );
    Ok(ExitCode::SUCCESS)
}

fn tenant_rm(c: &Client, id: &str) -> Result<ExitCode> {
    c.call("DELETE", &format!("/api/tenants/{}", encode(id)), None)?;
    println!("tenant {id} removed");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            json!({"id":"acme","domain":"acme.com","server":"eu1","process":"app","instance":"acme","home":"eu1","served_at":"eu2"}),
            json!({"id":"globex","domain":"globex.com","server":"eu1","process":"app","instance":"globex","home":"eu1","served_at":null}),
        ];
        assert_eq!(
            tenants_table(&rows),
            "\
ID      DOMAIN      PROCESS  INSTANCE  HOME  SERVED_AT
acme    acme.com    app      acme      eu1   eu2
globex  globex.com  app      globex    eu1   -
"
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
