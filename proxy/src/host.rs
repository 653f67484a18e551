//! Host header normalisation: lower-case, port removed, validated as a DNS name or IP literal.

use std::borrow::Cow;

/// Why a Host value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("missing Host header")]
    Missing,
    #[error("malformed Host header")]
    Malformed,
}

/// Normalise a Host header value: `Example.COM:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
/// Borrows when the value is already lower-case (the common case: no allocation).
pub fn normalize(raw: &[u8]) -> Result<Cow<'_, str>, HostError> {
    if raw.is_empty() {
        return Err(HostError::Missing);
    }
    if raw.len() > 255 {
        return Err(HostError::Malformed);
    }
    let mut upper = false;
    let host = if raw[0] == b'[' {
        // IPv6 literal, optional :port after the ']'
        let end = raw
            .iter()
            .position(|&c| c == b']')
            .ok_or(HostError::Malformed)?;
        let rest = &raw[end + 1..];
        if !rest.is_empty() && !valid_port(rest.strip_prefix(b":").ok_or(HostError::Malformed)?) {
            return Err(HostError::Malformed);
        }
        let inner = &raw[1..end];
        let valid = std::str::from_utf8(inner)
            .ok()
            .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !valid {
            return Err(HostError::Malformed);
        }
        upper = inner.iter().any(u8::is_ascii_uppercase);
        &raw[..=end]
    } else {
        // One pass over the name (this runs on every request): allowed characters, no empty
        // label, note upper case; a ':' ends the name and starts the port.
        let mut end = raw.len();
        let mut prev_dot = true; // a leading '.' is an empty label
        for (i, &c) in raw.iter().enumerate() {
            match c {
                b'.' if prev_dot => return Err(HostError::Malformed),
                b'.' => prev_dot = true,
                b':' => {
                    end = i;
                    break;
                }
                c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' => {
                    upper |= c.is_ascii_uppercase();
                    prev_dot = false;
                }
                _ => return Err(HostError::Malformed),
            }
        }
        if end < raw.len() && !valid_port(&raw[end + 1..]) {
            return Err(HostError::Malformed);
        }
        let name = &raw[..end];
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() {
            return Err(HostError::Malformed);
        }
        name
    };
    // Only ASCII reaches here, so from_utf8 cannot fail; map defensively anyway.
    let s = std::str::from_utf8(host).map_err(|_| HostError::Malformed)?;
    if upper {
        Ok(Cow::Owned(s.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(s))
    }
}

fn valid_port(p: &[u8]) -> bool {
    !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_port_and_lowercases() {
        assert_eq!(normalize(b"Example.COM:8080").as_deref(), Ok("example.com"));
        assert_eq!(
            normalize(b"prod.api.localhost").as_deref(),
            Ok("prod.api.localhost")
        );
        assert_eq!(normalize(b"example.com.").as_deref(), Ok("example.com"));
        assert_eq!(normalize(b"[::1]:8080").as_deref(), Ok("[::1]"));
        assert_eq!(normalize(b"127.0.0.1:80").as_deref(), Ok("127.0.0.1"));
        assert_eq!(normalize(b"[::FFFF:1]").as_deref(), Ok("[::ffff:1]"));
        assert_eq!(
            normalize(b"My_Host-1.Example").as_deref(),
            Ok("my_host-1.example")
        );
        assert_eq!(normalize(b"example.com.:443").as_deref(), Ok("example.com"));
    }

    #[test]
    fn borrows_when_already_normal() {
        assert!(matches!(normalize(b"a.b"), Ok(Cow::Borrowed("a.b"))));
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(normalize(b""), Err(HostError::Missing));
        for bad in [
            &b"exa mple.com"[..],
            b"a..b",
            b".a",
            b"a:port",
            b"a:123456",
            b"[::1",
            b"[zz]",
            b"[:]",
            b"[1:2]",
            b"[]",
            b"a/b",
            b"a\xffb",
            b":80",
            b"a:80:80",
            b"a.b:",
            b"a..",
            b".",
        ] {
            assert_eq!(
                normalize(bad),
                Err(HostError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(normalize(&[b'a'; 300]), Err(HostError::Malformed));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A DNS-ish name in mixed case, maybe with a trailing dot and a port.
        fn host() -> impl Strategy<Value = (String, String)> {
            (
                prop::collection::vec("[a-zA-Z0-9_-]{1,12}", 1..6),
                any::<bool>(),
                prop::option::of(0u32..100_000),
            )
                .prop_map(|(labels, dot, port)| {
                    let name = labels.join(".");
                    let mut raw = name.clone();
                    if dot {
                        raw.push('.');
                    }
                    if let Some(p) = port {
                        raw.push_str(&format!(":{p}"));
                    }
                    (raw, name.to_ascii_lowercase())
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn never_panics_and_gives_a_bare_lower_case_name(
                raw in prop::collection::vec(any::<u8>(), 0..300)
            ) {
                if let Ok(h) = normalize(&raw) {
                    prop_assert!(!h.is_empty() && h.len() <= 255, "{h:?}");
                    prop_assert!(!h.bytes().any(|b| b.is_ascii_uppercase()), "{h:?}");
                    prop_assert!(h.starts_with('[') || !h.contains(':'), "{h:?}");
                    // Normal already: borrowed and unchanged the second time.
                    let again = normalize(h.as_bytes());
                    prop_assert!(matches!(again, Ok(Cow::Borrowed(a)) if a == h), "{h:?}");
                }
            }

            #[test]
            fn names_lose_their_port_dot_and_case((raw, want) in host()) {
                let got = normalize(raw.as_bytes());
                if raw.len() > 255 || raw.rsplit_once(':').is_some_and(|(_, p)| p.len() > 5) {
                    prop_assert_eq!(got, Err(HostError::Malformed));
                } else {
                    prop_assert_eq!(got.as_deref(), Ok(want.as_str()));
                }
            }

            #[test]
            fn ipv6_literals_are_kept_lower_case(
                segs in prop::array::uniform8(any::<u16>()), port in prop::option::of(0u16..)
            ) {
                let ip = std::net::Ipv6Addr::from(segs);
                let mut raw = format!("[{}]", format!("{ip}").to_ascii_uppercase());
                if let Some(p) = port {
                    raw.push_str(&format!(":{p}"));
                }
                let (got, want) = (normalize(raw.as_bytes()), format!("[{ip}]"));
                prop_assert_eq!(got.as_deref(), Ok(want.as_str()));
            }
        }
    }
}
