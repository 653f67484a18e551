//! `ten logs [process[:id]] [-f] [--search TEXT] [--stream stdout|stderr] [--since 10m] [--limit N]`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::table::encode;
use crate::client::cli::Global;
use crate::wire::parse_timeout;

/// Show captured output of instances (and ten's own events), or follow it live
#[derive(Debug, Args)]
#[command(
    long_about = "Show the captured stdout/stderr lines of instances, newest last, from \
the log store (SQLite with full-text search). `ten` itself logs its events (spawn, crash, restart, \
health, deploy) as process \"ten\". With -f, keep printing new lines until Ctrl-C.\n\n\
Examples:\n  ten logs api:prod\n  ten logs api --search 'timeout OR refused' --since 1h\n  \
ten logs -f --stream stderr\n  ten logs ten --search crash"
)]
pub struct Logs {
    /// process or process:id (default: everything)
    pub target: Option<String>,
    /// Follow new lines as they arrive
    #[arg(short, long)]
    pub follow: bool,
    /// Full-text search (SQLite FTS5: words, "phrases", prefix*, AND/OR/NOT)
    #[arg(long)]
    pub search: Option<String>,
    /// Only stdout or stderr
    #[arg(long, value_parser = ["stdout", "stderr"])]
    pub stream: Option<String>,
    /// Only lines newer than this, e.g. 10m, 2h
    #[arg(long, value_parser = parse_timeout)]
    pub since: Option<String>,
    /// How many lines [default: 100; 10 with -f]
    #[arg(long)]
    pub limit: Option<usize>,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

/// One line as `time instance stream message`, coloured by stream on a terminal.
fn render(v: &Value, color: bool) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("");
    let who = format!("{}:{}", s("process"), s("instance"));
    let line = format!(
        "{} {who} {:<6} {}",
        s("timestamp"),
        s("stream"),
        s("message")
    );
    if !color {
        return line;
    }
    match (s("process"), s("stream")) {
        ("ten", _) => format!("\x1b[36m{line}\x1b[0m"),
        (_, "stderr") => format!("\x1b[31m{line}\x1b[0m"),
        _ => line,
    }
}

impl Logs {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        logs(global, self)
    }
}

fn logs(global: &Global, a: Logs) -> Result<ExitCode> {
    let c = global.client()?;
    let mut filters = Vec::new();
    if let Some(t) = &a.target {
        match t.split_once(':') {
            Some((p, id)) => {
                filters.push(format!("process={}", encode(p)));
                filters.push(format!("id={}", encode(id)));
            }
            None => filters.push(format!("process={}", encode(t))),
        }
    }
    if let Some(s) = &a.stream {
        filters.push(format!("stream={}", encode(s)));
    }
    let mut query = filters.clone();
    if let Some(s) = &a.search {
        query.push(format!("search={}", encode(s)));
    }
    if let Some(s) = &a.since {
        query.push(format!("since={}", encode(s)));
    }
    let limit = a.limit.unwrap_or(if a.follow { 10 } else { 100 });
    query.push(format!("limit={limit}"));
    let color = std::io::stdout().is_terminal() && !a.json;
    let out = std::io::stdout();
    let print = |v: &Value| {
        let text = if a.json {
            v.to_string()
        } else {
            render(v, color)
        };
        let mut o = out.lock();
        writeln!(o, "{text}").and_then(|_| o.flush()).is_ok()
    };
    let recent = c.call("GET", &format!("/api/logs?{}", query.join("&")), None)?;
    for v in recent
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .rev()
    {
        print(v);
    }
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Follow: the live stream has no full-text index, so --search keeps lines containing every word.
    let words: Vec<String> = a
        .search
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_lowercase)
        .collect();
    let mut pending = String::new();
    c.stream(
        &format!("/api/logs/stream?{}", filters.join("&")),
        |chunk| {
            pending.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    if event.starts_with("event: lagged") {
                        eprintln!(
                            "ten logs: {} line(s) missed (the stream fell behind)",
                            v["missed"]
                        );
                        continue;
                    }
                    let msg = v["message"].as_str().unwrap_or("").to_lowercase();
                    if words.iter().all(|w| msg.contains(w.as_str())) && !print(&v) {
                        return false;
                    }
                }
            }
            true
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
