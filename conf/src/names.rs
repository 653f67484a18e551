//! Names and addresses: process names, instance ids, hostnames, socket addresses, CIDRs and
//! header names. Each check returns the reason a value is rejected, ready for a message.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::InstanceName;

/// A name used as a DNS label (process names; fleet server and tenant ids):
/// `[a-z0-9][a-z0-9_-]*`, at most 63 characters. Each caller words its own message.
pub fn is_label(name: &str) -> bool {
    let valid_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let valid_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    valid_start && valid_rest && name.len() <= 63
}

/// A process name becomes a DNS label (`{process}.{domain}`): see [`is_label`].
pub fn check_process_name(name: &str) -> Result<(), String> {
    if !is_label(name) {
        return Err(format!(
            "invalid process name {name:?}: use lower-case letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters (it becomes a DNS label)"
        ));
    }
    Ok(())
}

/// An instance id: `[a-zA-Z0-9][a-zA-Z0-9_.-]*` (no ':').
pub fn check_instance_id(id: &str) -> Result<(), String> {
    let valid_start = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let valid_rest = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !valid_start || !valid_rest {
        return Err(format!(
            "invalid instance id {id:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// The reason an `InstanceName` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InstanceNameError(String);

impl FromStr for InstanceName {
    type Err = InstanceNameError;

    /// Parse `process:id`, checking both parts.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((process, id)) = s.split_once(':') else {
            return Err(InstanceNameError(format!(
                "expected an instance as \"process:id\" (e.g. \"api:prod\"), got {s:?}"
            )));
        };
        check_process_name(process).map_err(InstanceNameError)?;
        check_instance_id(id).map_err(InstanceNameError)?;
        Ok(InstanceName {
            process: process.to_string(),
            id: id.to_string(),
        })
    }
}

/// A hostname (already lower-cased): dot-separated labels of `[a-z0-9-]`, 1..=63 characters,
/// not starting or ending with '-'; at most 253 characters in all.
pub fn check_hostname(host: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "expected a hostname like \"example.com\" (letters, digits, '-' and dots), got {host:?}"
        ));
    }
    Ok(())
}

/// A listen address: `host:port` with an IP host (`0.0.0.0:8080`, `[::1]:8080`); port 0 is fine.
pub fn check_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("expected an address like \"0.0.0.0:8080\" or \"[::1]:8080\", got {s:?}")
    })
}

/// Parse a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (= `/32` or `/128`).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!(
            "expected a CIDR like \"10.0.0.0/8\", \"2001:db8::/32\" or an IP address, got {s:?}"
        )
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => match len.parse::<u8>() {
            Ok(n) if n <= max && len.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "invalid CIDR {s:?}: the prefix length must be 0..={max}"
                ))
            }
        },
    };
    Ok((ip, len))
}

/// An HTTP header name: an RFC 9110 token.
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn process_names() {
        for ok in ["api", "web-2", "a_b", "0x"] {
            assert!(check_process_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Api", "my.app", "-x", "_x", "a b", &"a".repeat(64)] {
            assert!(check_process_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids_and_names() {
        for ok in ["prod", "v2", "User123", "1.2.3", "a_b-c"] {
            assert!(check_instance_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a:b", "a b", "é"] {
            assert!(check_instance_id(bad).is_err(), "{bad}");
        }
        let name: InstanceName = "api:prod".parse().unwrap();
        assert_eq!(name.to_string(), "api:prod");
        assert!("api".parse::<InstanceName>().is_err());
        assert!("Api:prod".parse::<InstanceName>().is_err());
        assert!("api:pr:od".parse::<InstanceName>().is_err());
    }

    #[test]
    fn hostnames() {
        for ok in ["localhost", "example.com", "a-b.example.com", "127.0.0.1"] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Example.com",
            "a..b",
            "-a.com",
            "a_b.com",
            "example.com.",
            "*.x.com",
        ] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr("10.1.2.3").unwrap().1, 32);
        assert_eq!(parse_cidr("::1").unwrap().1, 128);
        assert_eq!(parse_cidr("2001:db8::/32").unwrap().1, 32);
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_names() {
        assert!(is_header_name("X-Request-Id"));
        assert!(!is_header_name("X Request"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("a:b"));
    }
}
