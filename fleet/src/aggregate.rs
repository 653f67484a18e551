//! Fleet-wide views: every server's `/metrics` merged under a `server_id` label, every
//! server's `/api/logs` merged by time, and the parallel fetcher both use. A server's answer
//! is read up to [`MAX_BODY`] bytes: a longer one is that server's error ("answer over 8 MiB,
//! not merged"), never the router's memory.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;

use crate::prom::{parse_line, write_sample, Line, Sample};
use crate::Server;

/// The family added by [`merge_metrics`]: 1 when the server's scrape worked.
pub const SCRAPE_UP: &str = "tenement_fleet_scrape_up";

/// The most bytes read from one server's answer (`/metrics`, `/api/logs`): 8 MiB.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: String,
}

#[derive(Default)]
struct Families {
    order: Vec<String>,
    by_name: HashMap<String, Family>,
}

impl Families {
    fn get(&mut self, name: &str) -> &mut Family {
        if !self.by_name.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.by_name
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help: None,
                kind: None,
                samples: String::new(),
            })
    }

    fn kind(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).and_then(|f| f.kind.as_deref())
    }
}

/// The family a sample belongs to: its own name when declared, else the histogram or summary
/// its `_bucket`/`_sum`/`_count` suffix points at, else its own name (untyped).
fn family_of<'a>(name: &'a str, local: &'a HashMap<String, String>, all: &Families) -> &'a str {
    let kind = |n: &str| local.get(n).map(String::as_str).or_else(|| all.kind(n));
    if kind(name).is_some() {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            let histogram_like = matches!(kind(base), Some("histogram" | "summary"));
            if histogram_like && (suffix != "_bucket" || kind(base) == Some("histogram")) {
                return base;
            }
        }
    }
    name
}

/// Keeps the labels Prometheus owns on every target (`instance`, `job`; SPEC §10) out of the
/// merged exposition: a server running a ten from before the `id` label still says
/// `instance="prod"`, merged as `id` (as `exported_instance` if it also has an `id`); a `job`
/// becomes `exported_job`, the name Prometheus itself would give it.
fn owned_labels(s: &mut Sample) {
    let has_id = s.labels.iter().any(|(k, _)| k == "id");
    for (k, _) in &mut s.labels {
        match k.as_str() {
            "instance" if has_id => *k = "exported_instance".into(),
            "instance" => *k = "id".into(),
            "job" => *k = "exported_job".into(),
            _ => {}
        }
    }
}

/// Merges scrapes (`(server_id, text or error)`) into one exposition: `server_id="<id>"` is
/// the first label of every sample (a scraped `server_id` label becomes `exported_server_id`,
/// an `instance` label `id`: see [`owned_labels`]),
/// one `# HELP`/`# TYPE` per family (the first seen wins) followed by that family's samples from
/// every server, plus the gauge `tenement_fleet_scrape_up{server_id}`. Unparseable lines are
/// dropped. A failed scrape is 0 in that gauge and a comment at the top naming the server and
/// why (`# server X: answer over 8 MiB, not merged`).
pub fn merge_metrics(scrapes: &[(String, Result<String, String>)]) -> String {
    let mut out = String::new();
    for (id, scrape) in scrapes {
        if let Err(e) = scrape {
            let why: String = e
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            out.push_str(&format!("# server {id}: {why}\n"));
        }
    }
    let mut families = Families::default();
    let up = families.get(SCRAPE_UP);
    up.help = Some("1 when the server's /metrics was scraped, 0 when the scrape failed".into());
    up.kind = Some("gauge".into());
    for (id, scrape) in scrapes {
        let up_sample = Sample {
            name: SCRAPE_UP.into(),
            labels: vec![("server_id".into(), id.clone())],
            value: if scrape.is_ok() { "1" } else { "0" }.into(),
            timestamp: None,
        };
        write_sample(&mut families.get(SCRAPE_UP).samples, &up_sample);
        let Ok(text) = scrape else {
            continue;
        };
        let mut local: HashMap<String, String> = HashMap::new();
        let mut dropped = 0usize;
        for line in text.lines() {
            match parse_line(line) {
                Ok(Line::Help { name, text }) => {
                    families.get(&name).help.get_or_insert(text);
                }
                Ok(Line::Type { name, kind }) => {
                    families.get(&name).kind.get_or_insert_with(|| kind.clone());
                    local.insert(name, kind);
                }
                Ok(Line::Sample(mut s)) => {
                    let family = family_of(&s.name, &local, &families).to_string();
                    for (k, _) in s.labels.iter_mut().filter(|(k, _)| k == "server_id") {
                        *k = "exported_server_id".into();
                    }
                    owned_labels(&mut s);
                    s.labels.insert(0, ("server_id".into(), id.clone()));
                    write_sample(&mut families.get(&family).samples, &s);
                }
                Ok(Line::Skip) => {}
                Err(_) => dropped += 1,
            }
        }
        if dropped > 0 {
            tracing::debug!("fleet metrics: {dropped} unparseable lines from server {id} dropped");
        }
    }
    for name in &families.order {
        let Some(f) = families.by_name.get(name) else {
            continue;
        };
        if let Some(help) = &f.help {
            out.push_str(&format!("# HELP {name} {help}\n"));
        }
        if let Some(kind) = &f.kind {
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        }
        out.push_str(&f.samples);
    }
    out
}

/// Adds `"server": id` to every line (JSON objects; anything else is dropped) and merges them
/// newest first by `timestamp` (RFC 3339 UTC strings sort as text); at most `limit` lines
/// (0 = all). Lines with the same timestamp keep their server's order.
pub fn merge_logs(per_server: Vec<(String, Vec<Value>)>, limit: usize) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    for (id, lines) in per_server {
        for mut line in lines {
            if let Some(obj) = line.as_object_mut() {
                obj.insert("server".into(), Value::String(id.clone()));
                all.push(line);
            }
        }
    }
    let ts = |v: &Value| v["timestamp"].as_str().unwrap_or("").to_string();
    all.sort_by_cached_key(|v| std::cmp::Reverse(ts(v)));
    if limit > 0 {
        all.truncate(limit);
    }
    all
}

/// `GET {url}{path_and_query}` on every server at once (`Authorization: Bearer <token>` when the
/// server has one), each within `timeout`. Results in the order of `servers`; a non-2xx answer is
/// an error naming the status.
pub async fn fetch_all(
    servers: &[Server],
    path_and_query: &str,
    timeout: Duration,
) -> Vec<(String, Result<String, String>)> {
    let client = crate::http::client();
    let mut set = JoinSet::new();
    for (i, s) in servers.iter().enumerate() {
        let req = crate::http::get(&client, s, path_and_query, timeout);
        set.spawn(async move { (i, fetch(req, timeout).await) });
    }
    let mut results: Vec<Option<Result<String, String>>> = vec![None; servers.len()];
    while let Some(done) = set.join_next().await {
        if let Ok((i, r)) = done {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(r);
            }
        }
    }
    servers
        .iter()
        .zip(results)
        .map(|(s, r)| {
            let r = r.unwrap_or_else(|| Err("the request task failed".into()));
            (s.id.clone(), r)
        })
        .collect()
}

async fn fetch(req: reqwest::RequestBuilder, timeout: Duration) -> Result<String, String> {
    let resp = req
        .send()
        .await
        .map_err(|e| crate::http::error_text(&e, timeout))?;
    let status = resp.status();
    let body = read_capped(resp, MAX_BODY, timeout).await?;
    if !status.is_success() {
        let excerpt: String = body.trim().chars().take(200).collect();
        return Err(if excerpt.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {excerpt}")
        });
    }
    Ok(body)
}

/// The body as text (lossy UTF-8), or an error once it passes `cap` bytes (announced by
/// `Content-Length` or counted while reading): at most `cap` bytes are ever held.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
    timeout: Duration,
) -> Result<String, String> {
    let too_big = || format!("answer over {} MiB, not merged", cap / (1024 * 1024));
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(cap).unwrap_or(u64::MAX))
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| crate::http::error_text(&e, timeout))?
    {
        if body.len() + chunk.len() > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
