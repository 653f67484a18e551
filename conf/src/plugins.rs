//! `plugins = [...]` of a process (SPEC §8).

use std::collections::BTreeMap;

use crate::error::Cx;
use crate::names;
use crate::tree::{describe, Field, Tbl, Val};
use crate::{PluginConf, RateLimitKey};

const KINDS: &[&str] = &[
    "rate_limit",
    "ip_filter",
    "headers",
    "basic_auth",
    "max_body",
];

pub(crate) fn parse_plugins(cx: &mut Cx, f: &Field<'_, '_>) -> Vec<PluginConf> {
    let Some(items) = cx.array(f) else {
        return Vec::new();
    };
    items.iter().filter_map(|item| plugin(cx, item)).collect()
}

fn plugin(cx: &mut Cx, f: &Field<'_, '_>) -> Option<PluginConf> {
    let t = cx.table(f)?;
    let Some(kind_field) = t.get("kind") else {
        t.missing(
            cx,
            format!("missing kind (expected one of: {})", KINDS.join(", ")),
        );
        return None;
    };
    let kind = cx.str(&kind_field)?;
    match kind {
        "rate_limit" => rate_limit(cx, &t),
        "ip_filter" => ip_filter(cx, &t),
        "headers" => headers(cx, &t),
        "basic_auth" => basic_auth(cx, &t),
        "max_body" => {
            t.check_keys(cx, &["kind", "limit"]);
            let Some(f) = t.get("limit") else {
                t.missing(cx, "missing limit (e.g. limit = \"1MB\")");
                return None;
            };
            cx.size(&f).map(|limit| PluginConf::MaxBody { limit })
        }
        other => {
            let message = format!(
                "unknown plugin kind {other:?} (expected one of: {})",
                KINDS.join(", ")
            );
            cx.err(kind_field.line(), &kind_field.path, message);
            None
        }
    }
}

fn rate_limit(cx: &mut Cx, t: &Tbl<'_, '_>) -> Option<PluginConf> {
    t.check_keys(cx, &["kind", "rps", "burst", "key"]);
    let rps = match t.get("rps") {
        None => {
            t.missing(cx, "missing rps (requests per second, e.g. rps = 100)");
            None
        }
        Some(f) => {
            let value = match f.node.val {
                Val::Int(i) => Some(i as f64),
                Val::Float(x) => Some(x),
                _ => None,
            };
            match value {
                Some(x) if x.is_finite() && x > 0.0 => Some(x),
                Some(_) => {
                    let message = format!("must be > 0, got {}", describe(f.node));
                    cx.err(f.line(), &f.path, message);
                    None
                }
                None => {
                    let message = format!("expected a number, got {}", describe(f.node));
                    cx.err(f.line(), &f.path, message);
                    None
                }
            }
        }
    };
    // Outer None: not set; inner None: invalid (already reported).
    let burst = t.get("burst").map(|f| cx.u32(&f, 1, u32::MAX));
    let key = match t.get("key") {
        None => Some(RateLimitKey::ClientIp),
        Some(f) => match cx.str(&f) {
            Some("client_ip") => Some(RateLimitKey::ClientIp),
            Some(s) => match s.strip_prefix("header:") {
                Some(name) if names::is_header_name(name) => {
                    Some(RateLimitKey::Header(name.to_ascii_lowercase()))
                }
                _ => {
                    let message = format!("expected \"client_ip\" or \"header:<name>\", got {s:?}");
                    cx.err(f.line(), &f.path, message);
                    None
                }
            },
            None => None,
        },
    };
    let (rps, key) = (rps?, key?);
    let burst = match burst {
        Some(burst) => burst?,
        None => rps.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
    };
    Some(PluginConf::RateLimit { rps, burst, key })
}

fn ip_filter(cx: &mut Cx, t: &Tbl<'_, '_>) -> Option<PluginConf> {
    t.check_keys(cx, &["kind", "allow", "deny"]);
    let mut ok = true;
    let mut list = |cx: &mut Cx, key: &str| -> Vec<String> {
        let Some(f) = t.get(key) else {
            return Vec::new();
        };
        let Some(items) = cx.strings(&f) else {
            ok = false;
            return Vec::new();
        };
        let mut out = Vec::new();
        for (item, s) in items {
            match names::parse_cidr(s.trim()) {
                Ok((ip, len)) => out.push(format!("{ip}/{len}")),
                Err(message) => {
                    cx.err(item.line(), &item.path, message);
                    ok = false;
                }
            }
        }
        out
    };
    let allow = list(cx, "allow");
    let deny = list(cx, "deny");
    if ok && allow.is_empty() && deny.is_empty() {
        t.missing(
            cx,
            "ip_filter needs at least one CIDR in allow or deny (e.g. allow = [\"10.0.0.0/8\"])",
        );
        return None;
    }
    ok.then_some(PluginConf::IpFilter { allow, deny })
}

fn headers(cx: &mut Cx, t: &Tbl<'_, '_>) -> Option<PluginConf> {
    t.check_keys(
        cx,
        &[
            "kind",
            "request_set",
            "request_remove",
            "response_set",
            "response_remove",
        ],
    );
    let mut ok = true;
    let mut set = |cx: &mut Cx, key: &str| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(table) = t.get(key).and_then(|f| cx.table(&f)) else {
            ok &= t.get(key).is_none();
            return out;
        };
        for entry in table.entries {
            let f = table.field(entry);
            if !names::is_header_name(entry.key) {
                let message = format!("invalid header name {:?}", entry.key);
                cx.err(entry.key_line, &f.path, message);
                ok = false;
            }
            match cx.str(&f) {
                Some(v) if v.contains(['\r', '\n', '\0']) => {
                    let message =
                        format!("a header value cannot contain line breaks or NUL, got {v:?}");
                    cx.err(f.line(), &f.path, message);
                    ok = false;
                }
                Some(v) => {
                    out.insert(entry.key.to_string(), v.to_string());
                }
                None => ok = false,
            }
        }
        out
    };
    let request_set = set(cx, "request_set");
    let response_set = set(cx, "response_set");
    let mut remove = |cx: &mut Cx, key: &str| -> Vec<String> {
        let Some(f) = t.get(key) else {
            return Vec::new();
        };
        let Some(items) = cx.strings(&f) else {
            ok = false;
            return Vec::new();
        };
        let mut out = Vec::new();
        for (item, name) in items {
            if names::is_header_name(name) {
                out.push(name.to_string());
            } else {
                cx.err(
                    item.line(),
                    &item.path,
                    format!("invalid header name {name:?}"),
                );
                ok = false;
            }
        }
        out
    };
    let request_remove = remove(cx, "request_remove");
    let response_remove = remove(cx, "response_remove");
    ok.then_some(PluginConf::Headers {
        request_set,
        request_remove,
        response_set,
        response_remove,
    })
}

fn basic_auth(cx: &mut Cx, t: &Tbl<'_, '_>) -> Option<PluginConf> {
    t.check_keys(cx, &["kind", "users"]);
    let Some(f) = t.get("users") else {
        t.missing(
            cx,
            "missing users (e.g. users = { alice = \"$argon2id$v=19$...\" })",
        );
        return None;
    };
    let users_table = cx.table(&f)?;
    if users_table.entries.is_empty() {
        cx.err(f.line(), &f.path, "expected at least one user, got {}");
        return None;
    }
    let mut users = BTreeMap::new();
    let mut ok = true;
    for entry in users_table.entries {
        let f = users_table.field(entry);
        if entry.key.is_empty() || entry.key.contains(':') {
            let message = format!("invalid user name {:?} (non-empty, without ':')", entry.key);
            cx.err(entry.key_line, &f.path, message);
            ok = false;
        }
        // The value is never quoted back: it may be a plain-text password written by mistake.
        match f.node.val {
            Val::Str(hash) if hash.starts_with("$argon2") => {
                users.insert(entry.key.to_string(), hash.to_string());
            }
            _ => {
                cx.err(
                    f.line(),
                    &f.path,
                    "expected an Argon2 PHC string starting with $argon2 (the value is not shown)",
                );
                ok = false;
            }
        }
    }
    ok.then_some(PluginConf::BasicAuth { users })
}
