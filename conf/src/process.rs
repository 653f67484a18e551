//! `[process.NAME]` (alias `[service.NAME]`).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::error::Cx;
use crate::isolation;
use crate::names;
use crate::parse::resolve_path;
use crate::plugins::parse_plugins;
use crate::settings::{backoff, MAX_CPU_SHARES, MAX_QUOTA_MB};
use crate::template;
use crate::tree::{describe, Field, Tbl, Val};
use crate::{Isolation, ListenMode, Process, RestartPolicy, Settings, Upstream};

const KEYS: &[&str] = &[
    "command",
    "args",
    "directory",
    "workdir",
    "env",
    "listen",
    "socket",
    "health",
    "startup_timeout",
    "stop_timeout",
    "restart",
    "max_restarts",
    "restart_window",
    "backoff_base_ms",
    "backoff_max_ms",
    "idle_timeout",
    "request_timeout",
    "memory_limit_mb",
    "cpu_shares",
    "storage_quota_mb",
    "storage_persist",
    "max_body",
    "plugins",
    "upstream_http2",
    "upstreams",
    "isolation",
    "user",
    "env_inherit",
];

/// The socket of an instance when `socket` is not set.
pub const DEFAULT_SOCKET: &str = "{data_dir}/{process}-{id}.sock";

/// The socket of an instance with `user` or `isolation = "namespace"` when `socket` is not set:
/// in a directory of its own, which belongs to the instance's uid (SPEC §12).
pub const ISOLATED_SOCKET: &str = "{data_dir}/run/{process}/{id}/app.sock";

/// `{data_dir}/NAME`: a socket template whose directory is data_dir itself.
fn directly_in_data_dir(socket: &str) -> bool {
    socket
        .strip_prefix("{data_dir}/")
        .is_some_and(|rest| !rest.contains('/'))
}

/// Every `[process.*]` and `[service.*]` table, in file order. A name declared in both (or
/// twice) is reported and kept once.
pub(crate) fn parse_processes(cx: &mut Cx, top: &Tbl<'_, '_>, settings: &Settings) -> Vec<Process> {
    let mut declared = Vec::new();
    for section in ["process", "service"] {
        let Some(f) = top.get(section) else { continue };
        let Some(t) = cx.table(&f) else { continue };
        for entry in t.entries {
            declared.push((section, entry.key, entry.key_line, t.field(entry)));
        }
    }
    declared.sort_by_key(|(_, _, line, _)| line.unwrap_or(usize::MAX));

    let mut seen: HashMap<&str, (&str, Option<usize>)> = HashMap::new();
    let mut processes = Vec::new();
    for (section, name, line, f) in &declared {
        let Some(t) = cx.table(f) else { continue };
        let process = parse_process(cx, name, &t, settings);
        if let Some((first_section, first_line)) = seen.get(name) {
            let at = first_line
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default();
            let message = format!(
                "process {name:?} is declared twice: [{}]{at} and [{}] (service is an alias of process)",
                crate::tree::child(first_section, name),
                crate::tree::child(section, name),
            );
            cx.err(*line, &f.path, message);
            continue;
        }
        seen.insert(name, (section, *line));
        processes.push(process);
    }
    processes
}

/// A template value and where it was written.
struct TemplateUse {
    path: String,
    line: Option<usize>,
    value: String,
}

fn parse_process(cx: &mut Cx, name: &str, t: &Tbl<'_, '_>, s: &Settings) -> Process {
    t.check_keys(cx, KEYS);
    if let Err(message) = names::check_process_name(name) {
        cx.err(t.line, &t.path, message);
    }
    let mut templates = Vec::new();
    let mut p = Process {
        name: name.to_string(),
        command: Vec::new(),
        directory: None,
        env: BTreeMap::new(),
        listen: ListenMode::Port,
        socket: DEFAULT_SOCKET.to_string(),
        health: None,
        startup_timeout: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(10),
        restart: RestartPolicy::OnFailure,
        max_restarts: s.max_restarts,
        restart_window: s.restart_window,
        backoff_base: s.backoff_base,
        backoff_max: s.backoff_max,
        idle_timeout: Duration::ZERO,
        request_timeout: Duration::from_secs(30),
        memory_limit_mb: None,
        cpu_shares: s.cpu_shares,
        storage_quota_mb: s.storage_quota_mb,
        storage_persist: s.storage_persist,
        max_body: s.max_body,
        plugins: Vec::new(),
        upstream_http2: false,
        upstreams: Vec::new(),
        user: s.user.clone(),
        env_inherit: Vec::new(),
        isolation: Isolation::Process,
    };

    let command = t.get("command");
    if let Some(f) = &command {
        p.command = parse_command(cx, f, &mut templates);
    }
    if let Some(f) = t.get("args") {
        for (item, arg) in cx.strings(&f).unwrap_or_default() {
            templates.push(use_of(&item, arg));
            p.command.push(arg.to_string());
        }
    }
    p.directory = directory(cx, t, &mut templates);
    if let Some(f) = t.get("env") {
        p.env = env(cx, &f, &mut templates);
    }
    let socket = t.get("socket");
    p.listen = match t.get("listen") {
        Some(f) => match cx.str(&f) {
            Some("port") => ListenMode::Port,
            Some("socket") => ListenMode::Socket,
            Some(other) => {
                let message = format!("expected \"port\" or \"socket\", got {other:?}");
                cx.err(f.line(), &f.path, message);
                ListenMode::Port
            }
            None => ListenMode::Port,
        },
        None if socket.is_some() => ListenMode::Socket,
        None => ListenMode::Port,
    };
    if let Some(f) = &socket {
        if let Some(value) = cx.str(f) {
            check_socket_template(cx, f, value);
            p.socket = config_relative(cx, value);
        }
    }
    if let Some(f) = t.get("health") {
        if let Some(h) = cx.str(&f) {
            if h.starts_with('/') {
                p.health = Some(h.to_string());
            } else {
                cx.err(
                    f.line(),
                    &f.path,
                    format!("expected a path starting with '/', got {h:?}"),
                );
            }
        }
    }
    let duration = |cx: &mut Cx, key: &str, positive: bool, value: &mut Duration| {
        if let Some(d) = t.get(key).and_then(|f| cx.duration(&f, positive)) {
            *value = d;
        }
    };
    duration(cx, "startup_timeout", true, &mut p.startup_timeout);
    duration(cx, "stop_timeout", true, &mut p.stop_timeout);
    duration(cx, "restart_window", true, &mut p.restart_window);
    duration(cx, "idle_timeout", false, &mut p.idle_timeout);
    duration(cx, "request_timeout", true, &mut p.request_timeout);
    if let Some(f) = t.get("restart") {
        p.restart = match cx.str(&f) {
            Some("always") => RestartPolicy::Always,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("never") => RestartPolicy::Never,
            Some(other) => {
                let message =
                    format!("expected \"always\", \"on-failure\" or \"never\", got {other:?}");
                cx.err(f.line(), &f.path, message);
                RestartPolicy::OnFailure
            }
            None => RestartPolicy::OnFailure,
        };
    }
    if let Some(n) = t.get("max_restarts").and_then(|f| cx.u32(&f, 0, u32::MAX)) {
        p.max_restarts = n;
    }
    (p.backoff_base, p.backoff_max) =
        backoff(cx, t, s.backoff_base, s.backoff_max, " from [settings]");
    p.memory_limit_mb = t.get("memory_limit_mb").and_then(|f| cx.u64(&f, 1));
    if let Some(f) = t.get("cpu_shares") {
        p.cpu_shares = cx.u32(&f, 1, MAX_CPU_SHARES).or(p.cpu_shares);
    }
    if let Some(n) = t
        .get("storage_quota_mb")
        .and_then(|f| cx.u64_within(&f, 1, MAX_QUOTA_MB))
    {
        p.storage_quota_mb = Some(n);
    }
    if let Some(b) = t.get("storage_persist").and_then(|f| cx.bool(&f)) {
        p.storage_persist = b;
    }
    if let Some(b) = t.get("upstream_http2").and_then(|f| cx.bool(&f)) {
        p.upstream_http2 = b;
    }
    if let Some(n) = t.get("max_body").and_then(|f| cx.size(&f)) {
        p.max_body = n;
    }
    if let Some(f) = t.get("plugins") {
        p.plugins = parse_plugins(cx, &f);
    }
    if let Some(f) = t.get("isolation") {
        p.isolation = isolation::parse_isolation(cx, &f).unwrap_or_default();
    }
    if let Some(f) = t.get("user") {
        p.user = isolation::parse_user(cx, &f);
    }
    if let Some(f) = t.get("env_inherit") {
        p.env_inherit = isolation::parse_env_inherit(cx, &f);
    }
    if p.user.is_some() || p.isolation == Isolation::Namespace {
        // data_dir (0711, ten's) is no place an app under its own uid, or in its own mount
        // namespace, can make a socket in: it gets a directory of its own.
        match &socket {
            None => p.socket = ISOLATED_SOCKET.to_string(),
            Some(f) if directly_in_data_dir(&p.socket) => {
                let message = format!(
                    "with user or isolation = \"namespace\", the socket needs a directory of its own, not data_dir itself (e.g. {ISOLATED_SOCKET:?}), got {:?}",
                    p.socket
                );
                cx.err(f.line(), &f.path, message);
            }
            Some(_) => {}
        }
    }
    let upstreams = t.get("upstreams");
    if let Some(f) = &upstreams {
        p.upstreams = parse_upstreams(cx, f);
    }

    match (&command, &upstreams) {
        (Some(f), Some(_)) => cx.err(
            f.line(),
            &f.path,
            "a process with upstreams is not spawned by ten: remove \"command\" or \"upstreams\"",
        ),
        (None, None) => t.missing(
            cx,
            "missing command (expected command = \"...\", or upstreams = [...] for a service ten does not spawn)",
        ),
        _ => {}
    }
    if upstreams.is_none() {
        check_templates(cx, &templates, p.listen);
    }
    p
}

fn use_of(f: &Field<'_, '_>, value: &str) -> TemplateUse {
    TemplateUse {
        path: f.path.clone(),
        line: f.line(),
        value: value.to_string(),
    }
}

/// A string (shell-split) or an array of strings; never empty.
fn parse_command(cx: &mut Cx, f: &Field<'_, '_>, templates: &mut Vec<TemplateUse>) -> Vec<String> {
    let words = match f.node.val {
        Val::Str(s) => match shell_words::split(s) {
            Ok(words) => {
                templates.push(use_of(f, s));
                words
            }
            Err(e) => {
                let message = format!("cannot split {s:?} into words: {e}");
                cx.err(f.line(), &f.path, message);
                return Vec::new();
            }
        },
        Val::Array(_) => {
            let Some(items) = cx.strings(f) else {
                return Vec::new();
            };
            if let Some((first, program)) = items.first() {
                if program.trim().is_empty() {
                    cx.err(first.line(), &first.path, "the program must not be empty");
                }
            }
            templates.extend(items.iter().map(|(item, s)| use_of(item, s)));
            items.into_iter().map(|(_, s)| s.to_string()).collect()
        }
        _ => {
            let message = format!(
                "expected a command line or an array of strings, got {}",
                describe(f.node)
            );
            cx.err(f.line(), &f.path, message);
            return Vec::new();
        }
    };
    if words.is_empty() {
        cx.err(f.line(), &f.path, "must not be empty");
    }
    words
}

/// `directory`, alias `workdir`: relative paths (not starting with a placeholder) are resolved
/// against the config's folder.
fn directory(cx: &mut Cx, t: &Tbl<'_, '_>, templates: &mut Vec<TemplateUse>) -> Option<String> {
    let f = match (t.get("directory"), t.get("workdir")) {
        (Some(_), Some(w)) => {
            cx.err(
                w.line(),
                &w.path,
                "both \"directory\" and \"workdir\" are set (workdir is an alias of directory): keep one",
            );
            return None;
        }
        (Some(f), None) | (None, Some(f)) => f,
        (None, None) => return None,
    };
    let dir = cx.str(&f)?;
    if dir.trim().is_empty() {
        cx.err(f.line(), &f.path, "must not be empty");
        return None;
    }
    templates.push(use_of(&f, dir));
    Some(config_relative(cx, dir))
}

/// A path template: kept when absolute or starting with a placeholder (`{data_dir}/...`),
/// else resolved against the config's folder.
fn config_relative(cx: &Cx, template: &str) -> String {
    if template.starts_with('{') || Path::new(template).is_absolute() {
        return template.to_string();
    }
    resolve_path(&cx.base_dir, template).display().to_string()
}

fn env(
    cx: &mut Cx,
    f: &Field<'_, '_>,
    templates: &mut Vec<TemplateUse>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(t) = cx.table(f) else {
        return out;
    };
    for entry in t.entries {
        let item = t.field(entry);
        if entry.key.is_empty() || entry.key.contains(['=', '\0']) {
            let message = format!(
                "invalid environment variable name {:?} (must be non-empty, without '=')",
                entry.key
            );
            cx.err(entry.key_line, &item.path, message);
        }
        match item.node.val {
            Val::Str(value) => {
                templates.push(use_of(&item, value));
                out.insert(entry.key.to_string(), value.to_string());
            }
            Val::Int(_) | Val::Float(_) | Val::Bool(_) => {
                let got = describe(item.node);
                let message = format!("expected a string, got {got} (quote it: \"{got}\")");
                cx.err(item.line(), &item.path, message);
            }
            _ => {
                let message = format!("expected a string, got {}", describe(item.node));
                cx.err(item.line(), &item.path, message);
            }
        }
    }
    out
}

fn check_socket_template(cx: &mut Cx, f: &Field<'_, '_>, value: &str) {
    if value.trim().is_empty() {
        cx.err(f.line(), &f.path, "must not be empty");
        return;
    }
    check_unknown(cx, &use_of(f, value));
    for name in template::placeholders(value) {
        if name == "socket" || name == "port" {
            let message = format!("{{{name}}} cannot be used in socket, got {value:?}");
            cx.err(f.line(), &f.path, message);
        }
    }
}

fn check_unknown(cx: &mut Cx, u: &TemplateUse) {
    for name in template::unknown_names(&u.value) {
        let valid: Vec<String> = template::NAMES.iter().map(|n| format!("{{{n}}}")).collect();
        let message = format!(
            "unknown placeholder {{{name}}} in {:?} (expected one of: {})",
            u.value,
            valid.join(", ")
        );
        cx.err(u.line, &u.path, message);
    }
}

fn check_templates(cx: &mut Cx, uses: &[TemplateUse], mode: ListenMode) {
    for u in uses {
        check_unknown(cx, u);
        let names = template::placeholders(&u.value);
        let wrong = match mode {
            ListenMode::Socket if names.iter().any(|n| n == "port") => {
                Some(("port", "socket", "use {socket}, or set listen = \"port\""))
            }
            ListenMode::Port if names.iter().any(|n| n == "socket") => {
                Some(("socket", "port", "use {port}, or set listen = \"socket\""))
            }
            _ => None,
        };
        if let Some((name, listen, fix)) = wrong {
            let message = format!("{{{name}}} cannot be used with listen = \"{listen}\" ({fix})");
            cx.err(u.line, &u.path, message);
        }
    }
}

fn parse_upstreams(cx: &mut Cx, f: &Field<'_, '_>) -> Vec<Upstream> {
    let Some(items) = cx.strings(f) else {
        return Vec::new();
    };
    if items.is_empty() {
        cx.err(f.line(), &f.path, "expected at least one upstream, got []");
    }
    let mut out = Vec::new();
    for (item, s) in items {
        match parse_upstream(s.trim()) {
            Ok(u) => out.push(u),
            Err(message) => cx.err(item.line(), &item.path, message),
        }
    }
    out
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let expected = format!("expected \"host:port\" or \"unix:/absolute/path\", got {s:?}");
    if let Some(path) = s.strip_prefix("unix:") {
        return if Path::new(path).is_absolute() {
            Ok(Upstream::Unix(path.into()))
        } else {
            Err(expected)
        };
    }
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return if addr.port() == 0 {
            Err(format!("expected a port between 1 and 65535, got {s:?}"))
        } else {
            Ok(Upstream::Tcp(s.to_string()))
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(expected);
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = names::check_hostname(&host.to_ascii_lowercase()).is_ok();
    if port_ok && host_ok {
        Ok(Upstream::Tcp(s.to_string()))
    } else {
        Err(expected)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn upstreams() {
        assert_eq!(
            parse_upstream("127.0.0.1:3000"),
            Ok(Upstream::Tcp("127.0.0.1:3000".into()))
        );
        assert_eq!(
            parse_upstream("backend.internal:80"),
            Ok(Upstream::Tcp("backend.internal:80".into()))
        );
        assert_eq!(
            parse_upstream("unix:/run/legacy.sock"),
            Ok(Upstream::Unix("/run/legacy.sock".into()))
        );
        for bad in [
            "unix:run.sock",
            "localhost",
            "x:0",
            "127.0.0.1:0",
            "a b:80",
            ":80",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}
