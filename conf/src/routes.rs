//! `[routes]` and `[instances]`.

use std::collections::HashMap;

use crate::error::Cx;
use crate::names;
use crate::tree::{describe, Field, Val};
use crate::{InstanceName, Process, Route};

/// Parse a route key: `host` or `host/prefix` -> (lower-cased host, normalised prefix).
///
/// The prefix always starts with '/' and has no trailing '/' (no prefix = "/"); empty segments
/// are dropped (`a.com//api/` = `a.com/api`). A `:port` on the host is an error: routing ignores
/// the port.
pub fn parse_route_key(key: &str) -> Result<(String, String), String> {
    let (host, path) = match key.find('/') {
        Some(i) => key.split_at(i),
        None => (key, ""),
    };
    let host = host.trim().to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!(
            "expected a route key like \"example.com\" or \"example.com/api\", got {key:?}"
        ));
    }
    if host.contains(':') {
        return Err(format!(
            "a route host cannot have a port (the port is ignored when routing), got {key:?}"
        ));
    }
    names::check_hostname(&host)?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(bad) = segments
        .iter()
        .find(|s| s.contains(|c: char| c.is_whitespace() || c == '?' || c == '#'))
    {
        return Err(format!(
            "a route prefix cannot contain spaces, '?' or '#', got {bad:?} in {key:?}"
        ));
    }
    // Requests are matched in normalised form (escapes of unreserved characters decoded, dot
    // segments resolved): a prefix written otherwise could never match.
    if let Some(bad) = segments.iter().find(|s| **s == "." || **s == "..") {
        return Err(format!(
            "a route prefix cannot have a {bad:?} segment (paths are matched with dot segments resolved), got {key:?}"
        ));
    }
    if let Some(bad) = segments.iter().find(|s| s.contains('%')) {
        return Err(format!(
            "a route prefix is written decoded, without %-escapes (requests are matched decoded), got {bad:?} in {key:?}"
        ));
    }
    Ok((host, format!("/{}", segments.join("/"))))
}

fn declared_list(processes: &[Process]) -> String {
    if processes.is_empty() {
        return "no process is declared".to_string();
    }
    let names: Vec<&str> = processes.iter().map(|p| p.name.as_str()).collect();
    format!("declared: {}", names.join(", "))
}

/// The paths ten answers itself on `{domain}` (SPEC §14): a route may not take them over.
pub const MANAGEMENT_PATHS: &[&str] = &["/api", "/assets", "/metrics", "/health"];

/// The management path a route with `prefix` would take over, if any: the prefix is one of
/// them, or lies under one.
fn shadowed(prefix: &str) -> Option<&'static str> {
    MANAGEMENT_PATHS
        .iter()
        .copied()
        .find(|m| prefix == *m || prefix.strip_prefix(m).is_some_and(|r| r.starts_with('/')))
}

pub(crate) fn parse_routes(
    cx: &mut Cx,
    f: Option<Field<'_, '_>>,
    processes: &[Process],
    domain: &str,
) -> Vec<Route> {
    let Some(t) = f.and_then(|f| cx.table(&f)) else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    let mut seen: HashMap<(String, String), Option<usize>> = HashMap::new();
    // Routes on the management domain: (line, path, prefix).
    let mut on_domain = Vec::new();
    for entry in t.entries {
        let f = t.field(entry);
        let key = match parse_route_key(entry.key) {
            Ok(key) => Some(key),
            Err(message) => {
                cx.err(entry.key_line, &f.path, message);
                None
            }
        };
        let target = route_target(cx, &f, processes);
        let Some((host, prefix)) = key else { continue };
        if let Some(first) = seen.get(&(host.clone(), prefix.clone())) {
            let shown = if prefix == "/" {
                host.clone()
            } else {
                format!("{host}{prefix}")
            };
            let at = first
                .map(|l| format!(" (also defined at line {l})"))
                .unwrap_or_default();
            cx.err(
                entry.key_line,
                &f.path,
                format!("duplicate route for {shown:?}{at}"),
            );
            continue;
        }
        seen.insert((host.clone(), prefix.clone()), entry.key_line);
        if host == domain {
            on_domain.push((entry.key_line, f.path.clone(), prefix.clone()));
        }
        if let Some((process, instance, strip_prefix)) = target {
            routes.push(Route {
                host,
                prefix,
                process,
                instance,
                strip_prefix,
            });
        }
    }
    // A "/" route gives the whole domain to an app: ten then serves no dashboard there (only
    // on admin_listen and the control socket), so nothing of ten's can be shadowed. Without
    // one, the dashboard is at "/" and a prefix over one of ten's paths would hand the
    // dashboard's token (or its script origin) to an app.
    if !on_domain.iter().any(|(_, _, p)| p == "/") {
        for (line, path, prefix) in on_domain {
            if let Some(m) = shadowed(&prefix) {
                cx.err(
                    line,
                    &path,
                    format!(
                        "would take over ten's own {m} on the management domain {domain:?}, \
                         where the dashboard is served: route another host, a prefix outside \
                         /api, /assets, /metrics and /health, or the whole domain (\"{domain}\" = ...)"
                    ),
                );
            }
        }
        routes.retain(|r| r.host != domain || shadowed(&r.prefix).is_none());
    }
    routes
}

/// `"process"`, `"process:id"` or `{ to = "...", strip_prefix = bool }`.
fn route_target(
    cx: &mut Cx,
    f: &Field<'_, '_>,
    processes: &[Process],
) -> Option<(String, Option<String>, bool)> {
    match &f.node.val {
        Val::Str(to) => {
            let (process, instance) = target(cx, f, to, processes)?;
            Some((process, instance, false))
        }
        Val::Table(_) => {
            let t = cx.table(f)?;
            t.check_keys(cx, &["to", "strip_prefix"]);
            let strip = t.get("strip_prefix").map(|f| cx.bool(&f));
            let Some(to_field) = t.get("to") else {
                t.missing(cx, "missing to (e.g. to = \"api\" or to = \"api:prod\")");
                return None;
            };
            let to = cx.str(&to_field)?;
            let (process, instance) = target(cx, &to_field, to, processes)?;
            let strip_prefix = match strip {
                Some(b) => b?,
                None => false,
            };
            Some((process, instance, strip_prefix))
        }
        _ => {
            let message = format!(
                "expected a process (\"web\" or \"api:prod\") or a table {{ to = \"...\", strip_prefix = true }}, got {}",
                describe(f.node)
            );
            cx.err(f.line(), &f.path, message);
            None
        }
    }
}

fn target(
    cx: &mut Cx,
    f: &Field<'_, '_>,
    to: &str,
    processes: &[Process],
) -> Option<(String, Option<String>)> {
    let (name, id) = match to.split_once(':') {
        Some((name, id)) => (name, Some(id)),
        None => (to, None),
    };
    let Some(process) = processes.iter().find(|p| p.name == name) else {
        let message = format!(
            "route to unknown process {name:?} ({})",
            declared_list(processes)
        );
        cx.err(f.line(), &f.path, message);
        return None;
    };
    if let Some(id) = id {
        if let Err(message) = names::check_instance_id(id) {
            cx.err(f.line(), &f.path, message);
            return None;
        }
        if process.is_external()
            && id
                .parse::<usize>()
                .map_or(true, |i| i >= process.upstreams.len())
        {
            let message = format!(
                "process {name:?} is external: its instances are its upstreams, {name}:0 to {name}:{}, got {to:?}",
                process.upstreams.len().saturating_sub(1)
            );
            cx.err(f.line(), &f.path, message);
            return None;
        }
    }
    Some((name.to_string(), id.map(str::to_string)))
}

pub(crate) fn parse_instances(
    cx: &mut Cx,
    f: Option<Field<'_, '_>>,
    processes: &[Process],
) -> Vec<InstanceName> {
    let Some(t) = f.and_then(|f| cx.table(&f)) else {
        return Vec::new();
    };
    let mut instances = Vec::new();
    for entry in t.entries {
        let f = t.field(entry);
        let process = processes.iter().find(|p| p.name == entry.key);
        match process {
            None => {
                let message = format!(
                    "instances for unknown process {:?} ({})",
                    entry.key,
                    declared_list(processes)
                );
                cx.err(entry.key_line, &f.path, message);
            }
            Some(p) if p.is_external() => {
                let message = format!(
                    "process {:?} is external (upstreams): its instances are its upstreams and cannot be listed here",
                    entry.key
                );
                cx.err(entry.key_line, &f.path, message);
            }
            Some(_) => {}
        }
        let Some(ids) = cx.strings(&f) else { continue };
        let mut seen: Vec<&str> = Vec::new();
        for (item, id) in ids {
            if let Err(message) = names::check_instance_id(id) {
                cx.err(item.line(), &item.path, message);
            } else if seen.contains(&id) {
                let message = format!("duplicate instance id {id:?} for process {:?}", entry.key);
                cx.err(item.line(), &item.path, message);
            } else {
                seen.push(id);
                if process.is_some_and(|p| !p.is_external()) {
                    instances.push(InstanceName {
                        process: entry.key.to_string(),
                        id: id.to_string(),
                    });
                }
            }
        }
    }
    instances
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn route_keys() {
        let k = |s: &str| parse_route_key(s).map_err(|_| s.to_string());
        assert_eq!(k("example.com"), Ok(("example.com".into(), "/".into())));
        assert_eq!(
            k("example.com/api"),
            Ok(("example.com".into(), "/api".into()))
        );
        assert_eq!(
            k("Example.COM/api/"),
            Ok(("example.com".into(), "/api".into()))
        );
        assert_eq!(k("a.com//v1//x/"), Ok(("a.com".into(), "/v1/x".into())));
        assert_eq!(k("a.com/"), Ok(("a.com".into(), "/".into())));
        for bad in [
            "",
            "/api",
            "example.com:8080",
            "example.com:8080/api",
            "a b.com",
            "a.com/a b",
        ] {
            assert!(parse_route_key(bad).is_err(), "{bad}");
        }
    }
}
