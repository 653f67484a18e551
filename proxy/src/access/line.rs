//! One access log line (SPEC §13), formatted by hand into the writer thread's batch buffer:
//! `{ts, client_ip, method, host, path, status, bytes_sent, duration_ms, upstream,
//! request_id}` and a newline. No `fmt` machinery and no allocation on the common path: the
//! timestamp's date and seconds are made once per second ([`Lines`] caches them), integers
//! and IPv4 addresses are written digit by digit, the duration in integer microseconds.
//! The output is byte for byte what the first version made with `humantime` and `{:.3}`
//! (the tests compare the two over a spread of values).

use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Entry;

/// The line formatter of the writer thread: remembers the last second's text.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// Seconds since the epoch of `prefix`, plus one (0: nothing cached yet).
    cached: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of that second.
    prefix: [u8; 19],
}

/// The last second humantime formats (year 9999); later times are written as this one.
const MAX_SECS: u64 = 253_402_300_799;

impl Lines {
    /// Append the line of `e` (with its newline) to `out`.
    pub(crate) fn push(&mut self, e: &Entry<'_>, out: &mut Vec<u8>) {
        // Room for the whole line at once: the fixed text and numbers fit in 256 bytes, the
        // strings are as long as they are (escaping may still grow it).
        out.reserve(
            256 + e.method.len()
                + e.host.map_or(0, <[u8]>::len)
                + e.path.len()
                + e.upstream.map_or(0, str::len)
                + e.request_id.len(),
        );
        out.extend_from_slice(b"{\"ts\":\"");
        self.timestamp(e.ts, out);
        out.extend_from_slice(b"\",\"client_ip\":");
        match e.client_ip {
            Some(IpAddr::V4(ip)) => {
                out.push(b'"');
                for (i, o) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    uint(out, u64::from(o));
                }
                out.push(b'"');
            }
            Some(ip @ IpAddr::V6(_)) => {
                let _ = write!(out, "\"{ip}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        string(out, e.method.as_bytes());
        out.extend_from_slice(b",\"host\":");
        match &e.host {
            Some(h) => string(out, h),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"path\":");
        string(out, e.path.as_bytes());
        out.extend_from_slice(b",\"status\":");
        uint(out, u64::from(e.status));
        out.extend_from_slice(b",\"bytes_sent\":");
        uint(out, e.bytes_sent as u64);
        out.extend_from_slice(b",\"duration_ms\":");
        duration_ms(out, e.duration);
        out.extend_from_slice(b",\"upstream\":");
        match &e.upstream {
            Some(u) => string(out, u.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"request_id\":");
        string(out, e.request_id);
        out.extend_from_slice(b"}\n");
    }

    /// RFC 3339 UTC with milliseconds (truncated), as `humantime::format_rfc3339_millis`.
    /// A time before the epoch is written as the epoch.
    fn timestamp(&mut self, ts: SystemTime, out: &mut Vec<u8>) {
        let since = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs().min(MAX_SECS);
        if self.cached != secs + 1 {
            let mut text = Vec::with_capacity(20);
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(at));
            if let Some(p) = text.get(..19) {
                self.prefix.copy_from_slice(p);
                self.cached = secs + 1;
            }
        }
        out.extend_from_slice(&self.prefix);
        let ms = since.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// Decimal digits of `n` (two digits per step: `itoa`).
fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals, as `{:.3}` of `as_secs_f64() * 1000.0` writes them.
/// In integer microseconds (rounded half up) below a million seconds and off an exact half
/// microsecond, where the float's error (under 1e-6 ms there) cannot move the rounding;
/// else through the float itself, so that ties round as the float does.
fn duration_ms(out: &mut Vec<u8>, d: Duration) {
    let nanos = d.subsec_nanos();
    if d.as_secs() >= 1_000_000 || nanos % 1000 == 500 {
        let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
        return;
    }
    let micros = d.as_secs() * 1_000_000 + u64::from((nanos + 500) / 1000);
    uint(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Whether `bytes` are printable ASCII other than `"` and `\\` (nothing to escape): eight
/// bytes at a time.
fn plain(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    /// Some byte of `x` is zero.
    fn zero(x: u64) -> bool {
        x.wrapping_sub(ONES) & !x & HIGH != 0
    }
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        let x = u64::from_ne_bytes(word);
        // A byte >= 0x80, < 0x20 (`x - 0x20` borrows into the high bit of a byte that was
        // below 0x20), 0x7f, `"` or `\\`.
        if x & HIGH != 0
            || x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0
            || zero(x ^ (ONES * 0x7f))
            || zero(x ^ (ONES * u64::from(b'"')))
            || zero(x ^ (ONES * u64::from(b'\\')))
        {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A JSON string of (possibly non-UTF-8) bytes: escapes, invalid bytes as U+FFFD.
pub(crate) fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    // The common case (a method, host, path, request id): printable ASCII with nothing to
    // escape, copied at once.
    if plain(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first formatter (humantime, `{:.3}`, `fmt` into a `String`): what the lines must
    /// stay, byte for byte.
    fn reference(e: &Entry<'_>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let ts = humantime::format_rfc3339_millis(e.ts);
        let _ = write!(out, "{{\"ts\":\"{ts}\",\"client_ip\":");
        match e.client_ip {
            Some(ip) => {
                let _ = write!(out, "\"{ip}\"");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"method\":");
        reference_string(&mut out, e.method.as_bytes());
        out.push_str(",\"host\":");
        match &e.host {
            Some(h) => reference_string(&mut out, h),
            None => out.push_str("null"),
        }
        out.push_str(",\"path\":");
        reference_string(&mut out, e.path.as_bytes());
        let _ = write!(
            out,
            ",\"status\":{},\"bytes_sent\":{},\"duration_ms\":{:.3},\"upstream\":",
            e.status,
            e.bytes_sent,
            e.duration.as_secs_f64() * 1000.0
        );
        match &e.upstream {
            Some(u) => reference_string(&mut out, u.as_bytes()),
            None => out.push_str("null"),
        }
        out.push_str(",\"request_id\":");
        reference_string(&mut out, e.request_id);
        out.push_str("}\n");
        out
    }

    fn reference_string(out: &mut String, bytes: &[u8]) {
        use std::fmt::Write as _;
        out.push('"');
        for c in String::from_utf8_lossy(bytes).chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn ours(lines: &mut Lines, e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        lines.push(e, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn entry(ts_ns: u128, duration: Duration) -> Entry<'static> {
        let mut e = crate::access::tests::sample();
        let secs = u64::try_from(ts_ns / 1_000_000_000).unwrap();
        e.ts = UNIX_EPOCH + Duration::new(secs, (ts_ns % 1_000_000_000) as u32);
        e.duration = duration;
        e
    }

    #[test]
    fn lines_match_the_first_formatter_across_dates_durations_and_escapes() {
        const DAY: u128 = 86_400 * 1_000_000_000;
        let mut lines = Lines::default();
        // Timestamps: the epoch, day, month, (leap) year and century boundaries, each a
        // nanosecond before and after; milliseconds truncated, not rounded.
        let mut stamps = vec![0u128, 999_999, 1_000_000, 999_999_999];
        for secs in [
            86_399u128,           // 1970-01-01T23:59:59
            951_782_399,          // 2000-02-28T23:59:59
            951_868_799,          // 2000-02-29T23:59:59 (leap, century by 400)
            1_709_251_199,        // 2024-02-29T23:59:59
            1_735_689_599,        // 2024-12-31T23:59:59
            4_107_542_399,        // 2100-02-28T23:59:59 (no leap day)
            253_402_300_799 - 60, // late 9999
        ] {
            let ns = secs * 1_000_000_000;
            stamps.extend([ns, ns + 999_999_999, ns + 1_000_000_000, ns + 1_000_999_999]);
        }
        stamps.extend((0..400).map(|d| 1_700_000_000_123_456_789 + d * 37 * DAY));
        let durations = [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(499),
            Duration::from_nanos(500),
            Duration::from_nanos(501),
            Duration::from_nanos(1_500),
            Duration::from_nanos(2_500),
            Duration::from_nanos(4_500),
            Duration::from_nanos(999_499),
            Duration::from_nanos(999_500),
            Duration::from_nanos(999_999),
            Duration::from_micros(1500),
            Duration::from_millis(999),
            Duration::new(1, 999_999_500),
            Duration::new(59, 123_456_789),
            Duration::new(3 * 3600, 1),
            Duration::new(999_999, 999_999_499),
            Duration::new(1_000_000, 500),
            Duration::new(40 * 86_400, 987_654_321),
        ];
        for (i, &ts) in stamps.iter().enumerate() {
            for d in durations {
                let e = entry(ts, d);
                assert_eq!(ours(&mut lines, &e), reference(&e), "ts {ts} ns, {d:?}");
            }
            // Alternate the cached second with another one.
            let e = entry(
                stamps[(i * 7) % stamps.len()],
                durations[i % durations.len()],
            );
            assert_eq!(ours(&mut lines, &e), reference(&e));
        }
        // Fields: escapes, invalid UTF-8, IPv6, nulls, large numbers.
        let mut e = entry(1_700_000_000_000_000_000, Duration::from_micros(7));
        e.host = Some(b"h\"o\\st\t\xc3\xa9");
        e.path = "/a%20b/\"x\"?y=%5C&z=1";
        e.upstream = Some("api:\n\t\r\u{1}");
        e.request_id = b"id\xff\xfe";
        e.method = "PROPFIND";
        e.client_ip = Some("2001:db8::ffff:1.2.3.4".parse().unwrap());
        e.status = 65535;
        e.bytes_sent = usize::MAX;
        assert_eq!(ours(&mut lines, &e), reference(&e));
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.20.3",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            e.client_ip = Some(ip.parse().unwrap());
            assert_eq!(ours(&mut lines, &e), reference(&e), "{ip}");
        }
        e.client_ip = None;
        e.host = None;
        e.upstream = None;
        e.status = 0;
        e.bytes_sent = 0;
        assert_eq!(ours(&mut lines, &e), reference(&e));
    }

    proptest! {
        #[test]
        fn any_time_and_duration_formats_as_the_first_formatter(
            ts_ns in 0u64..=u64::MAX,
            secs in prop_oneof![0u64..10, 0u64..100_000, 0u64..2_000_000],
            nanos in prop_oneof![0u32..1_000_000_000, (0u32..1_000_000).prop_map(|n| n * 1000 + 500)],
            status in 0u16..=u16::MAX,
            bytes in 0usize..=usize::MAX,
            ip in any::<[u8; 4]>(),
        ) {
            let mut e = entry(u128::from(ts_ns), Duration::new(secs, nanos));
            e.status = status;
            e.bytes_sent = bytes;
            e.client_ip = Some(IpAddr::from(ip));
            prop_assert_eq!(ours(&mut Lines::default(), &e), reference(&e));
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_escaped_as_the_first_formatter(
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
            printable in "[ -~]{0,40}",
        ) {
            for b in [&bytes[..], printable.as_bytes()] {
                let mut ours = Vec::new();
                string(&mut ours, b);
                let mut theirs = String::new();
                reference_string(&mut theirs, b);
                prop_assert_eq!(String::from_utf8(ours).unwrap(), theirs);
            }
        }
    }

    #[test]
    fn strings_are_copied_plain_or_escaped() {
        let json = |b: &[u8]| {
            let mut out = Vec::new();
            string(&mut out, b);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(json(b"/a/b?c=d"), "\"/a/b?c=d\"");
        assert_eq!(json(b"a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(json(b"x\ny\x01"), "\"x\\ny\\u0001\"");
        assert_eq!(json(b"\xffz"), "\"\u{fffd}z\"");
        assert_eq!(json("é".as_bytes()), "\"é\"");
        // Each byte that needs escaping, at each place of an 8-byte word and in the tail.
        for bad in [0u8, 0x1f, b'"', b'\\', 0x7f, 0x80, 0xff] {
            for at in 0..19 {
                let mut b = b"abcdefghijklmnopqrs".to_vec();
                b[at] = bad;
                assert!(!plain(&b), "{bad:#x} at {at}");
            }
        }
        assert!(plain(b" !#$%&'()*+,-./0123456789:;<=>?@AZ[]^_`az{|}~"));
    }
}
