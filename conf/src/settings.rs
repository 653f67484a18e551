//! `[settings]` and `[fleet]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Cx;
use crate::names;
use crate::parse::resolve_path;
use crate::tree::{Field, Tbl, Val};
use crate::{AccessLog, Acme, AcmeChallenge, CertFiles, Fleet, Settings, Tls, LETS_ENCRYPT};

const SETTINGS_KEYS: &[&str] = &[
    "domain",
    "listen",
    "admin_listen",
    "data_dir",
    "health_check_interval",
    "drain_timeout",
    "max_body",
    "tls",
    "acme",
    "access_log",
    "metrics_token",
    "metrics",
    "admin_loopback_trusted",
    "trusted_proxies",
    "log_retention",
    "log_max_rows",
    "log_max_line",
    "log_max_bytes",
    "header_timeout",
    "keepalive_timeout",
    "max_connections",
    "threads",
    "preserve_header_case",
    "max_restarts",
    "restart_window",
    "backoff_base_ms",
    "backoff_max_ms",
    "cpu_shares",
    "storage_quota_mb",
    "storage_persist",
    "user",
];

const TLS_KEYS: &[&str] = &["listen", "cert", "key", "certs", "http2"];

const CERT_KEYS: &[&str] = &["cert", "key"];

const ACME_KEYS: &[&str] = &["email", "directory", "challenge", "ca_cert"];

const FLEET_KEYS: &[&str] = &[
    "health_interval",
    "unhealthy_after",
    "degraded_latency",
    "failover",
    "failover_linger",
    "placement_timeout",
    "webhook",
    "webhook_after",
    "store",
];

/// The most worker threads `threads` may ask for.
pub(crate) const MAX_THREADS: u32 = 1024;

/// The most `max_connections` may be (per listener).
pub(crate) const MAX_CONNECTIONS: u32 = 1_000_000;

/// The shortest `log_max_line`: lines are cut there, so keep a useful line whole.
pub(crate) const MIN_LOG_LINE: u64 = 256;

/// The most a `*_ms` setting may be: one year, as every duration.
pub(crate) const MAX_MILLIS: u64 = crate::units::MAX_DURATION.as_secs() * 1_000;

/// The most a `storage_quota_mb` may be: 1 TiB, as every size.
pub(crate) const MAX_QUOTA_MB: u64 = crate::units::MAX_SIZE >> 20;

/// The most a `cpu_shares` (cgroup v2 `cpu.weight`) may be.
pub(crate) const MAX_CPU_SHARES: u32 = 10_000;

impl Settings {
    /// Every default, with `data_dir` = `{base_dir}/tenement-data`.
    pub fn defaults(base_dir: &Path) -> Settings {
        Settings {
            domain: "localhost".to_string(),
            listen: vec!["0.0.0.0:8080".to_string()],
            admin_listen: None,
            data_dir: base_dir.join("tenement-data"),
            health_check_interval: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_body: 10_000_000,
            tls: None,
            acme: None,
            access_log: AccessLog::Off,
            metrics_token: None,
            metrics: true,
            admin_loopback_trusted: false,
            trusted_proxies: Vec::new(),
            log_retention: Duration::from_secs(7 * 86_400),
            log_max_rows: 1_000_000,
            log_max_line: 16_000,
            log_max_bytes: 1_000_000_000,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            threads: None,
            preserve_header_case: false,
            max_restarts: 5,
            restart_window: Duration::from_secs(300),
            backoff_base: Duration::from_millis(1_000),
            backoff_max: Duration::from_millis(60_000),
            cpu_shares: None,
            storage_quota_mb: None,
            storage_persist: true,
            user: None,
        }
    }
}

/// `data_dir`, resolved against the config's folder, into `dir` (left as is when absent or bad).
fn data_dir(cx: &mut Cx, t: &Tbl<'_, '_>, dir: &mut PathBuf) {
    if let Some(f) = t.get("data_dir") {
        if let Some(d) = non_empty(cx, &f) {
            *dir = resolve_path(&cx.base_dir, d);
        }
    }
}

/// Only `[settings] data_dir` (default `{base_dir}/tenement-data`); the rest is not looked at.
pub(crate) fn parse_data_dir(cx: &mut Cx, field: Option<Field<'_, '_>>) -> PathBuf {
    let mut dir = Settings::defaults(&cx.base_dir).data_dir;
    if let Some(t) = field.and_then(|f| cx.table(&f)) {
        data_dir(cx, &t, &mut dir);
    }
    dir
}

pub(crate) fn parse_settings(cx: &mut Cx, field: Option<Field<'_, '_>>) -> Settings {
    let mut s = Settings::defaults(&cx.base_dir);
    let Some(t) = field.and_then(|f| cx.table(&f)) else {
        return s;
    };
    t.check_keys(cx, SETTINGS_KEYS);
    if let Some(f) = t.get("domain") {
        if let Some(domain) = domain(cx, &f) {
            s.domain = domain;
        }
    }
    if let Some(f) = t.get("listen") {
        if let Some(listen) = listeners(cx, &f) {
            s.listen = listen;
        }
    }
    if let Some(f) = t.get("admin_listen") {
        s.admin_listen = socket_addr(cx, &f);
    }
    data_dir(cx, &t, &mut s.data_dir);
    let duration = |cx: &mut Cx, key: &str, positive: bool, value: &mut Duration| {
        if let Some(d) = t.get(key).and_then(|f| cx.duration(&f, positive)) {
            *value = d;
        }
    };
    duration(
        cx,
        "health_check_interval",
        true,
        &mut s.health_check_interval,
    );
    duration(cx, "drain_timeout", false, &mut s.drain_timeout);
    duration(cx, "log_retention", true, &mut s.log_retention);
    duration(cx, "restart_window", true, &mut s.restart_window);
    duration(cx, "header_timeout", true, &mut s.header_timeout);
    duration(cx, "keepalive_timeout", true, &mut s.keepalive_timeout);
    if let Some(n) = t
        .get("max_connections")
        .and_then(|f| cx.u32(&f, 1, MAX_CONNECTIONS))
    {
        s.max_connections = n;
    }
    if let Some(n) = t.get("threads").and_then(|f| cx.u32(&f, 1, MAX_THREADS)) {
        s.threads = Some(n);
    }
    if let Some(n) = t.get("max_body").and_then(|f| cx.size(&f)) {
        s.max_body = n;
    }
    s.acme = t.get("acme").and_then(|f| acme(cx, &f));
    let acme_set = t.get("acme").is_some();
    s.tls = t.get("tls").and_then(|f| tls(cx, &f, acme_set));
    if let (Some(f), None) = (t.get("acme"), &s.tls) {
        if t.get("tls").is_none() {
            cx.err(
                f.line(),
                &f.path,
                "acme needs [settings.tls] (the listener its certificates are served on)",
            );
        }
    }
    if let Some(f) = t.get("access_log") {
        if let Some(v) = non_empty(cx, &f) {
            s.access_log = match v.trim() {
                "off" => AccessLog::Off,
                "stdout" => AccessLog::Stdout,
                path => AccessLog::File(resolve_path(&cx.base_dir, path)),
            };
        }
    }
    s.metrics_token = t
        .get("metrics_token")
        .and_then(|f| non_empty(cx, &f).map(str::to_string));
    if let Some(b) = t.get("metrics").and_then(|f| cx.bool(&f)) {
        s.metrics = b;
    }
    if let Some(b) = t.get("preserve_header_case").and_then(|f| cx.bool(&f)) {
        s.preserve_header_case = b;
    }
    if let Some(b) = t.get("admin_loopback_trusted").and_then(|f| cx.bool(&f)) {
        s.admin_loopback_trusted = b;
    }
    if let Some(f) = t.get("trusted_proxies") {
        if let Some(nets) = cidrs(cx, &f) {
            s.trusted_proxies = nets;
        }
    }
    if let Some(n) = t.get("log_max_rows").and_then(|f| cx.u64(&f, 1)) {
        s.log_max_rows = n;
    }
    if let Some(f) = t.get("log_max_line") {
        if let Some(n) = cx.size(&f) {
            if n < MIN_LOG_LINE {
                cx.err(
                    f.line(),
                    &f.path,
                    format!("must be at least {MIN_LOG_LINE} bytes, got {n}"),
                );
            } else {
                s.log_max_line = n;
            }
        }
    }
    if let Some(n) = t.get("log_max_bytes").and_then(|f| cx.size(&f)) {
        s.log_max_bytes = n;
    }
    if let Some(n) = t.get("max_restarts").and_then(|f| cx.u32(&f, 0, u32::MAX)) {
        s.max_restarts = n;
    }
    let (base, max) = backoff(cx, &t, s.backoff_base, s.backoff_max, "");
    s.backoff_base = base;
    s.backoff_max = max;
    s.cpu_shares = t
        .get("cpu_shares")
        .and_then(|f| cx.u32(&f, 1, MAX_CPU_SHARES));
    s.storage_quota_mb = t
        .get("storage_quota_mb")
        .and_then(|f| cx.u64_within(&f, 1, MAX_QUOTA_MB));
    if let Some(b) = t.get("storage_persist").and_then(|f| cx.bool(&f)) {
        s.storage_persist = b;
    }
    if let Some(f) = t.get("user") {
        s.user = crate::isolation::parse_user(cx, &f);
    }
    s
}

/// `backoff_base_ms` / `backoff_max_ms` of `t` over the given defaults; checks max >= base
/// whenever `t` sets either. `inherited` names where the defaults come from, for messages.
pub(crate) fn backoff(
    cx: &mut Cx,
    t: &Tbl<'_, '_>,
    base: Duration,
    max: Duration,
    inherited: &str,
) -> (Duration, Duration) {
    let ms = |cx: &mut Cx, key: &str| {
        let f = t.get(key)?;
        let n = cx.u64_within(&f, 1, MAX_MILLIS)?;
        Some((f, Duration::from_millis(n)))
    };
    let base_set = ms(cx, "backoff_base_ms");
    let max_set = ms(cx, "backoff_max_ms");
    let new_base = base_set.as_ref().map_or(base, |(_, d)| *d);
    let new_max = max_set.as_ref().map_or(max, |(_, d)| *d);
    if new_max < new_base {
        match (&base_set, &max_set) {
            (_, Some((f, _))) => cx.err(
                f.line(),
                &f.path,
                format!(
                    "must be >= backoff_base_ms ({}{}), got {}",
                    new_base.as_millis(),
                    if base_set.is_some() { "" } else { inherited },
                    new_max.as_millis()
                ),
            ),
            (Some((f, _)), None) => cx.err(
                f.line(),
                &f.path,
                format!(
                    "must be <= backoff_max_ms ({}{inherited}), got {}",
                    new_max.as_millis(),
                    new_base.as_millis()
                ),
            ),
            (None, None) => {}
        }
    }
    (new_base, new_max.max(new_base))
}

/// A list of CIDRs, each checked (every bad one reported), normalised to `addr/len`.
fn cidrs(cx: &mut Cx, f: &Field<'_, '_>) -> Option<Vec<String>> {
    let items = cx.strings(f)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (item, s) in items {
        match names::parse_cidr(s.trim()) {
            Ok((ip, len)) => out.push(format!("{ip}/{len}")),
            Err(message) => {
                cx.err(item.line(), &item.path, message);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn domain(cx: &mut Cx, f: &Field<'_, '_>) -> Option<String> {
    let domain = cx.str(f)?.trim().to_ascii_lowercase();
    match names::check_hostname(&domain) {
        Ok(()) => Some(domain),
        Err(message) => {
            cx.err(f.line(), &f.path, message);
            None
        }
    }
}

fn listeners(cx: &mut Cx, f: &Field<'_, '_>) -> Option<Vec<String>> {
    if let Val::Str(_) = f.node.val {
        return socket_addr(cx, f).map(|a| vec![a]);
    }
    if !matches!(f.node.val, Val::Array(_)) {
        cx.err(
            f.line(),
            &f.path,
            format!(
                "expected an address like \"0.0.0.0:8080\" or an array of them, got {}",
                crate::tree::describe(f.node)
            ),
        );
        return None;
    }
    let items = cx.strings(f)?;
    if items.is_empty() {
        cx.err(f.line(), &f.path, "expected at least one address, got []");
        return None;
    }
    let count = items.len();
    let addrs: Vec<String> = items
        .iter()
        .filter_map(|(item, _)| socket_addr(cx, item))
        .collect();
    (addrs.len() == count).then_some(addrs)
}

/// A socket address, kept as written (trimmed).
pub(crate) fn socket_addr(cx: &mut Cx, f: &Field<'_, '_>) -> Option<String> {
    let s = cx.str(f)?.trim();
    match names::check_socket_addr(s) {
        Ok(_) => Some(s.to_string()),
        Err(message) => {
            cx.err(f.line(), &f.path, message);
            None
        }
    }
}

fn non_empty<'a>(cx: &mut Cx, f: &Field<'_, 'a>) -> Option<&'a str> {
    let s = cx.str(f)?;
    if s.trim().is_empty() {
        cx.err(f.line(), &f.path, "must not be empty");
        return None;
    }
    Some(s)
}

fn tls(cx: &mut Cx, f: &Field<'_, '_>, acme: bool) -> Option<Tls> {
    let t = cx.table(f)?;
    t.check_keys(cx, TLS_KEYS);
    let mut complete = true;
    // cert and key: required together; optional only when ACME provides certificates.
    let required: &[&str] = if acme {
        &["listen"]
    } else {
        &["listen", "cert", "key"]
    };
    for key in required {
        if t.get(key).is_none() {
            t.missing(
                cx,
                format!("missing {key} (tls needs listen, cert and key)"),
            );
            complete = false;
        }
    }
    let listen = t.get("listen").and_then(|f| socket_addr(cx, &f));
    let default = match (t.get("cert"), t.get("key")) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let origin = t.path.clone();
            match (cert_file(cx, &c, true), cert_file(cx, &k, false)) {
                (Some(cert), Some(key)) => Some(CertFiles { cert, key, origin }),
                _ => {
                    complete = false;
                    None
                }
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            if acme {
                t.missing(cx, "cert and key go together");
            }
            complete = false;
            None
        }
    };
    let mut certs = Vec::new();
    if let Some(list) = t.get("certs").and_then(|f| cx.array(&f)) {
        for item in list {
            let Some(e) = cx.table(&item) else {
                complete = false;
                continue;
            };
            e.check_keys(cx, CERT_KEYS);
            let (Some(c), Some(k)) = (e.get("cert"), e.get("key")) else {
                e.missing(cx, "missing cert or key (each entry needs both)");
                complete = false;
                continue;
            };
            match (cert_file(cx, &c, true), cert_file(cx, &k, false)) {
                (Some(cert), Some(key)) => certs.push(CertFiles {
                    cert,
                    key,
                    origin: item.path.clone(),
                }),
                _ => complete = false,
            }
        }
    }
    let http2 = t.get("http2").and_then(|f| cx.bool(&f)).unwrap_or(true);
    match listen {
        Some(listen) if complete => Some(Tls {
            listen,
            default,
            certs,
            http2,
        }),
        _ => None,
    }
}

/// A PEM certificate chain (`cert`) or private key file that exists and looks like one (the
/// full parse happens when `ten serve` loads it, naming the same entry on failure).
fn cert_file(cx: &mut Cx, f: &Field<'_, '_>, cert: bool) -> Option<PathBuf> {
    let path = existing_file(cx, f)?;
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            cx.err(
                f.line(),
                &f.path,
                format!("cannot read {}: {e}", path.display()),
            );
            return None;
        }
    };
    let ok = if cert {
        text.contains("-----BEGIN CERTIFICATE-----")
    } else {
        text.contains("PRIVATE KEY-----")
    };
    if !ok {
        let what = if cert {
            "a PEM certificate (-----BEGIN CERTIFICATE-----)"
        } else {
            "a PEM private key (-----BEGIN ... PRIVATE KEY-----)"
        };
        cx.err(
            f.line(),
            &f.path,
            format!("expected {what} in {}", path.display()),
        );
        return None;
    }
    Some(path)
}

fn acme(cx: &mut Cx, f: &Field<'_, '_>) -> Option<Acme> {
    let t = cx.table(f)?;
    t.check_keys(cx, ACME_KEYS);
    let mut ok = true;
    let email = t
        .get("email")
        .and_then(|f| non_empty(cx, &f).map(|s| s.trim().to_string()));
    let directory = match t.get("directory") {
        None => LETS_ENCRYPT.to_string(),
        Some(f) => match cx.str(&f).map(str::trim) {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                url.to_string()
            }
            Some(url) => {
                cx.err(
                    f.line(),
                    &f.path,
                    format!("expected the ACME directory's https:// URL, got {url:?}"),
                );
                ok = false;
                String::new()
            }
            None => {
                ok = false;
                String::new()
            }
        },
    };
    let challenge = match t.get("challenge") {
        None => AcmeChallenge::Http01,
        Some(f) => match cx.str(&f).map(str::trim) {
            Some("http-01") => AcmeChallenge::Http01,
            Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
            Some(other) => {
                cx.err(
                    f.line(),
                    &f.path,
                    format!("expected \"http-01\" or \"tls-alpn-01\", got {other:?}"),
                );
                ok = false;
                AcmeChallenge::Http01
            }
            None => {
                ok = false;
                AcmeChallenge::Http01
            }
        },
    };
    let ca_cert = match t.get("ca_cert") {
        None => None,
        Some(f) => {
            let p = cert_file(cx, &f, true);
            ok &= p.is_some();
            p
        }
    };
    ok.then_some(Acme {
        email,
        directory,
        challenge,
        ca_cert,
    })
}

/// A path (relative to the config's folder) that must name an existing file.
fn existing_file(cx: &mut Cx, f: &Field<'_, '_>) -> Option<PathBuf> {
    let raw = non_empty(cx, f)?;
    let path = resolve_path(&cx.base_dir, raw);
    let problem = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => return Some(path),
        Ok(_) => format!("expected a file, got a directory: {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("file not found: {}", path.display())
        }
        Err(e) => format!("cannot read {}: {e}", path.display()),
    };
    cx.err(f.line(), &f.path, problem);
    None
}

pub(crate) fn parse_fleet(cx: &mut Cx, f: &Field<'_, '_>) -> Fleet {
    let mut fleet = Fleet::default();
    let Some(t) = cx.table(f) else {
        return fleet;
    };
    t.check_keys(cx, FLEET_KEYS);
    let duration = |cx: &mut Cx, key: &str, positive: bool, value: &mut Duration| {
        if let Some(d) = t.get(key).and_then(|f| cx.duration(&f, positive)) {
            *value = d;
        }
    };
    duration(cx, "health_interval", true, &mut fleet.health_interval);
    duration(cx, "degraded_latency", true, &mut fleet.degraded_latency);
    duration(cx, "webhook_after", false, &mut fleet.webhook_after);
    duration(cx, "failover_linger", false, &mut fleet.failover_linger);
    duration(cx, "placement_timeout", true, &mut fleet.placement_timeout);
    if let Some(n) = t
        .get("unhealthy_after")
        .and_then(|f| cx.u32(&f, 1, u32::MAX))
    {
        fleet.unhealthy_after = n;
    }
    if let Some(b) = t.get("failover").and_then(|f| cx.bool(&f)) {
        fleet.failover = b;
    }
    fleet.webhook = t.get("webhook").and_then(|f| webhook(cx, &f));
    fleet.store = t.get("store").and_then(|f| store(cx, &f));
    fleet
}

/// `store`: a `postgres://` (or `postgresql://`) URL; the fleet crate parses the rest.
fn store(cx: &mut Cx, f: &Field<'_, '_>) -> Option<String> {
    let url = cx.str(f)?.trim();
    let ok = ["postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
        && !url.contains(char::is_whitespace);
    if ok {
        return Some(url.to_string());
    }
    // Never repeat the value: it may hold a password.
    cx.err(
        f.line(),
        &f.path,
        "expected a postgres:// URL (leave store out for the SQLite file in data_dir)".to_string(),
    );
    None
}

fn webhook(cx: &mut Cx, f: &Field<'_, '_>) -> Option<String> {
    let url = cx.str(f)?.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    match host {
        Some(h) if !h.is_empty() && !url.contains(char::is_whitespace) => Some(url.to_string()),
        _ => {
            cx.err(
                f.line(),
                &f.path,
                format!("expected an http:// or https:// URL, got {url:?}"),
            );
            None
        }
    }
}
