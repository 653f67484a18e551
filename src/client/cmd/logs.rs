//! `ten logs [process[:id]] [-f] [--search TEXT] [--stream stdout|stderr] [--since 10m] [--limit N]`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::builder::TypedValueParser as _;
use clap::Args;
use serde_json::Value;

use tenement_supervisor::logs::LiveSearch;
use tenement_supervisor::Stream;

use crate::client::cli::Global;
use crate::wire::{parse_timeout, LogsQuery};

/// `--stream`: stdout or stderr (clap lists both in help and errors).
fn parse_stream() -> impl clap::builder::TypedValueParser<Value = Stream> {
    clap::builder::PossibleValuesParser::new(["stdout", "stderr"]).map(|s| match s.as_str() {
        "stderr" => Stream::Stderr,
        _ => Stream::Stdout,
    })
}

/// `--since`: a duration > 0 (`10m`, `2h`).
fn parse_since(s: &str) -> Result<Duration, String> {
    parse_timeout(s)?;
    tenement_conf::parse_duration(s).map_err(|e| e.to_string())
}

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
    /// Full-text search (SQLite FTS5: words, "exact phrases", AND/OR/NOT; a bare word is a prefix: crash finds crashed)
    #[arg(long)]
    pub search: Option<String>,
    /// Only stdout or stderr
    #[arg(long, value_parser = parse_stream())]
    pub stream: Option<Stream>,
    /// Only lines newer than this, e.g. 10m, 2h
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Duration>,
    /// How many lines [default: 100; 10 with -f]
    #[arg(long)]
    pub limit: Option<usize>,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

/// One line as `time instance stream message`, coloured by stream on a terminal. What the
/// app printed is shown, not obeyed: control characters are escaped (review L9).
fn render(v: &Value, color: bool) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("");
    let who = format!("{}:{}", s("process"), s("instance"));
    let line = format!(
        "{} {who} {:<6} {}",
        s("timestamp"),
        s("stream"),
        s("message")
    );
    let line = escape_controls(&line).into_owned();
    if !color {
        return line;
    }
    match (s("process"), s("stream")) {
        ("ten", _) => format!("\x1b[36m{line}\x1b[0m"),
        (_, "stderr") => format!("\x1b[31m{line}\x1b[0m"),
        _ => line,
    }
}

/// `text` with its control characters visible instead of acted on by the terminal: C0 (but
/// tab) and DEL as `\x1b`, C1 as `\u{9b}` (ESC and CSI start the sequences that move the
/// cursor, recolour, set the title or the clipboard). Borrowed when there are none.
fn escape_controls(text: &str) -> Cow<'_, str> {
    let control = |c: char| c.is_control() && c != '\t';
    if !text.contains(control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !control(c) => out.push(c),
            c if u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

impl Logs {
    pub fn run(self, global: &Global) -> Result<ExitCode> {
        logs(global, self)
    }
}

fn logs(global: &Global, a: Logs) -> Result<ExitCode> {
    let c = global.client()?;
    let (process, id) = match a.target.as_deref().map(|t| t.split_once(':')) {
        Some(Some((p, id))) => (Some(p.to_string()), Some(id.to_string())),
        Some(None) => (a.target.clone(), None),
        None => (None, None),
    };
    let query = LogsQuery {
        process,
        id,
        stream: a.stream,
        search: a.search.clone(),
        since: a.since,
        limit: Some(
            i64::try_from(a.limit.unwrap_or(if a.follow { 10 } else { 100 })).unwrap_or(i64::MAX),
        ),
        ..LogsQuery::default()
    };
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
    let recent = c.call("GET", &format!("/api/logs?{}", query.to_query()), None)?;
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
    // Follow: the live stream has no full-text index, so --search is applied here, to each
    // line, with the store's meaning (the query above already refused a malformed one).
    let live = a
        .search
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(LiveSearch::new);
    let mut pending = String::new();
    c.stream(
        &format!("/api/logs/stream?{}", query.stream_filters().to_query()),
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
                    let msg = v["message"].as_str().unwrap_or("");
                    if live.as_ref().is_none_or(|s| s.matches(msg)) && !print(&v) {
                        return false;
                    }
                }
            }
            true
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed_review_l9() {
        assert!(matches!(escape_controls("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("\x1b]0;pwned\x07\x1b[31mred\x1b[0m\r\x7f\u{9b}2J\tok\0"),
            "\\x1b]0;pwned\\x07\\x1b[31mred\\x1b[0m\\x0d\\x7f\\u{9b}2J\tok\\x00"
        );
        let v = serde_json::json!({
            "timestamp": "t", "process": "api", "instance": "a", "stream": "stdout",
            "message": "\x1b[2Jgone",
        });
        assert_eq!(render(&v, false), "t api:a stdout \\x1b[2Jgone");
        // On a terminal the colour is ten's own, around the escaped text.
        let v = serde_json::json!({
            "timestamp": "t", "process": "api", "instance": "a", "stream": "stderr",
            "message": "\x1b[2J",
        });
        assert_eq!(render(&v, true), "\x1b[31mt api:a stderr \\x1b[2J\x1b[0m");
    }
}
