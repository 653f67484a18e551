//! Path normalisation for prefix routing (review M3): the copy of a request path that
//! `[routes]` prefixes are matched against, so `/%61dmin`, `/x/../admin` and `//admin` all take
//! the `/admin` route and its plugins, as the upstream (which decodes them) would see them.
//!
//! The rules (RFC 3986 §6.2.2, plus `//` collapsed as nginx's `merge_slashes` does):
//! - `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!   escape (`%2F`, `%3F`, `%25`, ...) stays encoded with upper-case hex; a `%` that starts no
//!   valid escape becomes `%25`;
//! - `.` and `..` segments are resolved (after decoding: `%2e%2e` is `..`) and empty segments
//!   dropped; a trailing `/` (or a trailing `.`/`..` segment) leaves a trailing `/`;
//! - a path that would climb above `/` (`/..`, `/a/../../x`) is an error: answered 400.
//!
//! Only the path is normalised (the caller splits off the query). A path that does not start
//! with `/` (`*`, the empty target) is returned as it is: no prefix can match it. An already
//! normal path is returned borrowed after one scan, without allocating.

use std::borrow::Cow;

/// The path climbs above the root (`/..`): no route can be chosen for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AboveRoot;

impl std::fmt::Display for AboveRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the path climbs above the root")
    }
}

impl std::error::Error for AboveRoot {}

/// Whether `path` holds an encoded slash or backslash (`%2F`, `%5C`, any case).
pub fn has_encoded_slash(path: &str) -> bool {
    let b = path.as_bytes();
    b.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    })
}

/// `path` with `%2F` and `%5C` (any case) read as `/`: how a backend that decodes them before
/// resolving dot segments sees it.
pub fn decode_slashes(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b.get(i) == Some(&b'%') && has_encoded_slash(path.get(i..i + 3).unwrap_or("")) {
            out.push('/');
            i += 3;
        } else {
            let ch = path[i..].chars().next().unwrap_or('/');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The normalised form of `path` (see the module doc): borrowed when it already is normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, AboveRoot> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes());
    resolve(&decoded).map(Cow::Owned)
}

/// Unreserved characters (RFC 3986 §2.3): an escape of one of these means the character.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The byte a `%XX` escape at the start of `rest` (which begins after the `%`) stands for.
fn escape(rest: &[u8]) -> Option<u8> {
    match rest {
        [h, l, ..] => Some(hex(*h)? << 4 | hex(*l)?),
        _ => None,
    }
}

/// The fast path: true when [`normalize`] would return `path` unchanged. `path` starts with '/'.
fn is_normal(path: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b'%' => {
                let rest = path.get(i + 1..).unwrap_or_default();
                match escape(rest) {
                    // Decoded, or a lower-case hex digit to upper-case: not normal.
                    Some(c) if unreserved(c) => return false,
                    Some(_) if rest[..2].iter().any(u8::is_ascii_lowercase) => return false,
                    Some(_) => i += 3,
                    // A stray '%' becomes "%25".
                    None => return false,
                }
            }
            b'/' => {
                // The segment after this '/': empty (but not the root or a trailing '/'),
                // "." or ".." are not normal.
                let seg = &path[i + 1..];
                let end = seg.iter().position(|&c| c == b'/').unwrap_or(seg.len());
                match &seg[..end] {
                    b"." | b".." => return false,
                    b"" if end < seg.len() => return false,
                    _ => {}
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    true
}

/// `path` with unreserved escapes decoded, other escapes' hex upper-cased and stray '%'s
/// escaped as "%25". Only ASCII is replaced by ASCII, so the result stays UTF-8.
fn decode_unreserved(path: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len() + 2);
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        match escape(path.get(i + 1..).unwrap_or_default()) {
            Some(c) if unreserved(c) => out.push(c),
            Some(c) => {
                out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]])
            }
            None => {
                out.extend_from_slice(b"%25");
                i += 1;
                continue;
            }
        }
        i += 3;
    }
    // Only ASCII bytes were replaced, by ASCII bytes: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Resolve dot segments and drop empty ones in `path` (which starts with '/').
fn resolve(path: &str) -> Result<String, AboveRoot> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in path.split('/').skip(1) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(AboveRoot)?;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> Result<String, AboveRoot> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn the_review_bypasses_all_normalise_to_admin() {
        for p in [
            "/%61dmin",
            "/%61%64%6D%69%6e",
            "/x/../admin",
            "//admin",
            "/./admin",
            "/x/%2e%2e/admin",
            "/x/%2E./admin",
            "///admin",
        ] {
            assert_eq!(norm(p).unwrap(), "/admin", "{p}");
        }
        assert_eq!(norm("/admin//x/./y/").unwrap(), "/admin/x/y/");
    }

    #[test]
    fn reserved_escapes_stay_encoded_with_upper_case_hex() {
        assert_eq!(norm("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(norm("/a%2Fb").unwrap(), "/a%2Fb");
        assert_eq!(norm("/a%3f%25%20").unwrap(), "/a%3F%25%20");
        assert_eq!(norm("/100%").unwrap(), "/100%25");
        assert_eq!(norm("/%zz%4").unwrap(), "/%25zz%254");
        assert_eq!(norm("/%7e%7E%2D%5f").unwrap(), "/~~-_");
        // Non-ASCII is left alone.
        assert_eq!(norm("/é/../ü").unwrap(), "/ü");
    }

    #[test]
    fn dot_segments_and_trailing_slashes() {
        for (p, want) in [
            ("/", "/"),
            ("/.", "/"),
            ("/./", "/"),
            ("//", "/"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/a/..", "/"),
            ("/a/...", "/a/..."),
            ("/a/.b/..c", "/a/.b/..c"),
        ] {
            assert_eq!(norm(p).unwrap(), want, "{p}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_an_error() {
        for p in [
            "/..",
            "/../",
            "/../x",
            "/a/../../x",
            "//..",
            "/%2e%2e/admin",
            "/a/./../..",
        ] {
            assert_eq!(norm(p), Err(AboveRoot), "{p}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/admin", "/a/b/", "/a%2Fb", "/x.y/..z", "/é", "*", ""] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        for p in ["/a/./b", "//a", "/%41", "/%2f"] {
            assert!(matches!(normalize(p), Ok(Cow::Owned(_))), "{p}");
        }
    }

    // ---- properties

    /// A path from pieces that exercise every rule.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%".to_string()),
            Just("%2e".to_string()),
            Just("%2F".to_string()),
            Just("%2f".to_string()),
            "%[0-9a-fA-F]{2}",
            "[a-zA-Z0-9._~%/-]{1,3}",
            "\\PC{1,2}",
        ];
        prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    /// The reference: decode escapes of unreserved characters (each `%XX` decoded alone,
    /// independently of the code above), upper-case the rest, "%25" for a stray '%'.
    fn reference_decode(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let tail = &rest[at + 1..];
            let code = tail
                .get(..2)
                .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match code {
                Some(c) if c.is_ascii_alphanumeric() || "-._~".contains(char::from(c)) => {
                    out.push(char::from(c));
                    rest = &tail[2..];
                }
                Some(c) => {
                    out.push_str(&format!("%{c:02X}"));
                    rest = &tail[2..];
                }
                None => {
                    out.push_str("%25");
                    rest = tail;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// RFC 3986 §5.2.4 remove_dot_segments, literally (clamping at the root), after `//`s
    /// are merged; and whether a `..` climbed above the root on the way.
    fn reference_resolve(s: &str) -> (String, bool) {
        let mut merged = String::new();
        for c in s.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        let mut input = merged.as_str();
        let mut output = String::new();
        let mut climbed = false;
        while !input.is_empty() {
            if let Some(r) = input.strip_prefix("/./") {
                input = &input[input.len() - r.len() - 1..];
            } else if input == "/." {
                input = "/";
            } else if let Some(r) = input.strip_prefix("/../") {
                climbed |= output.is_empty();
                output.truncate(output.rfind('/').unwrap_or(0));
                input = &input[input.len() - r.len() - 1..];
            } else if input == "/.." {
                climbed |= output.is_empty();
                output.truncate(output.rfind('/').unwrap_or(0));
                input = "/";
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..].find('/').map_or(input.len(), |e| e + start);
                output.push_str(&input[..end]);
                input = &input[end..];
            }
        }
        (output, climbed)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn normalize_never_panics(s in "\\PC{0,40}") {
            let _ = normalize(&s);
            let _ = normalize(&format!("/{s}"));
        }

        #[test]
        fn normal_form_is_rooted_and_idempotent(p in path()) {
            if let Ok(n) = normalize(&p) {
                prop_assert!(n.starts_with('/'), "{p:?} -> {n:?}");
                prop_assert!(!n.contains("//"), "{p:?} -> {n:?}");
                prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{p:?} -> {n:?}");
                let again = normalize(&n);
                prop_assert!(matches!(again, Ok(Cow::Borrowed(_))), "{n:?} -> {again:?}");
            }
        }

        #[test]
        fn normal_form_matches_the_reference(p in path()) {
            let (want, climbed) = reference_resolve(&reference_decode(&p));
            match normalize(&p) {
                Ok(n) => {
                    prop_assert!(!climbed, "{p:?} climbs but gave {n:?}");
                    prop_assert_eq!(n.as_ref(), want.as_str(), "{:?}", p);
                }
                Err(AboveRoot) => prop_assert!(climbed, "{p:?} refused, reference {want:?}"),
            }
        }

        #[test]
        fn plain_segments_decode_like_the_reference(seg in "([a-zA-Z0-9~_-]|%[0-9a-fA-F]{2})*") {
            // Without dots or slashes only the decoding can change a segment.
            prop_assume!(!matches!(reference_decode(&seg).as_str(), "." | ".."));
            let p = format!("/{seg}");
            let n = normalize(&p).unwrap();
            prop_assert_eq!(n.as_ref(), format!("/{}", reference_decode(&seg)));
        }
    }
}
