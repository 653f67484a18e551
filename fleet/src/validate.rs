//! Input checks for servers and tenants: ids and server urls.

use tenement_conf::{check_hostname, is_label};

use crate::FleetError;

/// Server and tenant ids: `[a-z0-9][a-z0-9_-]*`, at most 63 characters (used in paths and
/// labels): the same check as process names, [`is_label`].
pub(crate) fn check_id(kind: &str, id: &str) -> Result<(), FleetError> {
    if !is_label(id) {
        return Err(FleetError::Invalid(format!(
            "invalid {kind} id {id:?}: use lower-case letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters"
        )));
    }
    Ok(())
}

/// `http(s)://host[:port][/]` -> (the url without a trailing slash, lower-cased; its host).
/// The host is a name, an IPv4 address or a bracketed IPv6 address.
pub(crate) fn normalize_url(url: &str) -> Result<(String, String), FleetError> {
    let bad = |why: &str| {
        FleetError::Invalid(format!(
            "invalid server url {url:?}: {why} (expected http(s)://host[:port], e.g. \"https://eu1.example.com\")"
        ))
    };
    let trimmed = url.trim();
    let lower = trimmed.to_ascii_lowercase();
    let (scheme, rest) = if let Some(r) = lower.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = lower.strip_prefix("https://") {
        ("https", r)
    } else {
        return Err(bad("the scheme must be http or https"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(bad("no path, query or fragment"));
    }
    if authority.contains('@') {
        return Err(bad("no user info; pass the token separately"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in the host"))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("bad IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (format!("[{addr}]"), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !host.starts_with('[') {
        check_hostname(&host).map_err(|_| bad("bad host"))?;
    }
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0);
        if !ok {
            return Err(bad("the port must be 1..65535"));
        }
    }
    let url = match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    };
    Ok((url, host))
}
