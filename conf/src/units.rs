//! Durations and sizes as written in `tenement.toml` (and accepted by the CLI).

use std::time::Duration;

/// The longest duration ten takes anywhere (config, CLI, API): one year. Anything longer is a
/// mistake, and bounding it keeps every `Instant + duration` in range.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The largest size ten takes anywhere: 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;

/// A string that is not a duration, or one over [`MAX_DURATION`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "expected a duration like \"500ms\", \"10s\", \"5m\", \"1h30m\" or a whole number of seconds, got {input:?}"
    )]
    Malformed { input: String },
    #[error("{input:?} is too long: a duration is at most 1 year (\"365d\")")]
    TooLong { input: String },
}

/// A string that is not a size, or one over [`MAX_SIZE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error(
        "expected a size like \"10MB\", \"512KB\", \"1GiB\" or a number of bytes, got {input:?}"
    )]
    Malformed { input: String },
    #[error("{input:?} is too large: a size is at most 1 TiB")]
    TooLarge { input: String },
}

/// `d` if it is at most [`MAX_DURATION`]; `input` is what the user wrote (for the message).
pub fn check_duration(d: Duration, input: &str) -> Result<Duration, DurationError> {
    if d > MAX_DURATION {
        return Err(DurationError::TooLong {
            input: input.to_string(),
        });
    }
    Ok(d)
}

/// `n` if it is at most [`MAX_SIZE`]; `input` is what the user wrote (for the message).
pub fn check_size(n: u64, input: &str) -> Result<u64, SizeError> {
    if n > MAX_SIZE {
        return Err(SizeError::TooLarge {
            input: input.to_string(),
        });
    }
    Ok(n)
}

/// Parse `"500ms"`, `"10s"`, `"5m"`, `"7d"`, `"1h30m"` (humantime syntax) or a whole number of
/// seconds (`"30"`). Surrounding whitespace is ignored; negative values are rejected, and so
/// is anything over [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Malformed {
        input: s.to_string(),
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let d = if t.bytes().all(|b| b.is_ascii_digit()) {
        match t.parse::<u64>() {
            Ok(n) => Duration::from_secs(n),
            // All digits but beyond u64: a number, just far too long.
            Err(_) => return check_duration(Duration::MAX, s),
        }
    } else {
        humantime::parse_duration(t).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => DurationError::TooLong {
                input: s.to_string(),
            },
            _ => bad(),
        })?
    };
    check_duration(d, s)
}

/// Parse a size in bytes: `"1048576"` (bytes), `"512KB"`, `"10MB"`, `"1GB"`, `"1TB"` (powers of
/// 1000), `"512KiB"`, `"10MiB"`, `"1GiB"`, `"1TiB"` (powers of 1024), `"100B"`. Units are
/// case-insensitive and may follow a space; a decimal number (`"1.5GB"`) is allowed with a unit
/// and rounded to the nearest byte. At most [`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    parse_size_unbounded(s).and_then(|n| check_size(n, s))
}

fn parse_size_unbounded(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError::Malformed {
        input: s.to_string(),
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    if !number.contains('.') {
        // Only digits here, so a parse error is an overflow: too large, not malformed.
        let n: u64 = number.parse().unwrap_or(u64::MAX);
        return Ok(n.saturating_mul(multiplier)); // too large either way: parse_size says so
    }
    if multiplier == 1 {
        return Err(bad()); // no fractional bytes
    }
    let n: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (n * multiplier as f64).round();
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(bad());
    }
    if bytes >= u64::MAX as f64 {
        return Ok(u64::MAX);
    }
    Ok(bytes as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1h30m", Duration::from_secs(5_400)),
            ("1h 30m", Duration::from_secs(5_400)),
            ("30", Duration::from_secs(30)),
            (" 0 ", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (input, want) in ok {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
        for bad in ["", "-5", "10 parsecs", "ten", "1.5", "5m-"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        for long in [
            "366d",
            "31536001",
            "18446744073709551615",
            "99999999999999999999",
            "9999999999999999999y",
        ] {
            assert_eq!(
                parse_duration(long),
                Err(DurationError::TooLong { input: long.into() }),
                "{long}"
            );
        }
        assert_eq!(
            parse_duration("2y").map_err(|e| e.to_string()),
            Err("\"2y\" is too long: a duration is at most 1 year (\"365d\")".to_string())
        );
        assert_eq!(
            parse_duration("ten").map_err(|e| e.to_string()),
            Err("expected a duration like \"500ms\", \"10s\", \"5m\", \"1h30m\" or a whole number of seconds, got \"ten\"".to_string())
        );
    }

    #[test]
    fn sizes() {
        let ok = [
            ("1048576", 1_048_576),
            ("0", 0),
            ("100B", 100),
            ("512KB", 512_000),
            ("10MB", 10_000_000),
            ("10mb", 10_000_000),
            ("1GB", 1_000_000_000),
            ("10MiB", 10 * 1_048_576),
            ("1 GiB", 1 << 30),
            ("2KiB", 2_048),
            ("1.5GB", 1_500_000_000),
            ("1TB", 1_000_000_000_000),
        ];
        for (input, want) in ok {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
        for bad in [
            "",
            "MB",
            "10XB",
            "-1",
            "1.5",
            "1..5MB",
            ".5MB",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("1TiB"), Ok(MAX_SIZE));
        for big in ["1.5TiB", "2TB", "99999999999999999999", "20000000TiB"] {
            assert_eq!(
                parse_size(big),
                Err(SizeError::TooLarge { input: big.into() }),
                "{big}"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Text that looks like a duration or a size: digits (maybe very many), a fraction, a
    /// sign, spaces, a unit from either family or a made-up one.
    fn unit_text() -> impl Strategy<Value = String> {
        (
            "[-+ ]?[0-9]{0,25}(\\.[0-9]{0,4})?",
            " ?",
            prop_oneof![
                Just(""),
                Just("ms"),
                Just("s"),
                Just("m"),
                Just("h"),
                Just("d"),
                Just("w"),
                Just("y"),
                Just("ns"),
                Just("B"),
                Just("kb"),
                Just("MB"),
                Just("GiB"),
                Just("TiB"),
                Just("tb"),
                Just("xb"),
            ],
            prop::collection::vec("[0-9]{1,6}[a-z]{1,2}", 0..3),
        )
            .prop_map(|(n, sp, u, more)| format!("{n}{sp}{u}{}", more.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn durations_never_panic_and_stay_bounded(s in prop_oneof![unit_text(), "\\PC{0,30}"]) {
            match parse_duration(&s) {
                Ok(d) => prop_assert!(d <= MAX_DURATION, "{s:?} -> {d:?}"),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn sizes_never_panic_and_stay_bounded(s in prop_oneof![unit_text(), "\\PC{0,30}"]) {
            match parse_size(&s) {
                Ok(n) => prop_assert!(n <= MAX_SIZE, "{s:?} -> {n}"),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn durations_round_trip(ms in 0u64..=(MAX_DURATION.as_millis() as u64 + 10_000)) {
            let d = Duration::from_millis(ms);
            let written = humantime::format_duration(d).to_string();
            let secs = format!("{}", ms / 1000);
            if d <= MAX_DURATION {
                prop_assert_eq!(parse_duration(&written), Ok(d), "{}", written);
                prop_assert_eq!(parse_duration(&secs), Ok(Duration::from_secs(ms / 1000)));
            } else {
                let too_long = matches!(parse_duration(&written), Err(DurationError::TooLong { .. }));
                prop_assert!(too_long, "{}", written);
            }
        }

        #[test]
        fn sizes_round_trip(n in 0u64..=(MAX_SIZE + 4096), unit in 0usize..5) {
            let (suffix, scale) = [("", 1), ("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("kb", 1000)][unit];
            let k = n / scale;
            let written = format!("{k}{suffix}");
            match k * scale <= MAX_SIZE {
                true => prop_assert_eq!(parse_size(&written), Ok(k * scale)),
                false => {
                    let too_large = matches!(parse_size(&written), Err(SizeError::TooLarge { .. }));
                    prop_assert!(too_large, "{}", written);
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds:
/// `2026-11-23T11:20:49.540Z`. (Shared by the log store, the audit log and the fleet.)
pub fn rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, min, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod rfc3339_tests {
    use super::rfc3339_ms;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_432_849_540), "2026-11-23T11:20:49.540Z");
        assert_eq!(rfc3339_ms(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_107_542_400_001), "2100-03-01T00:00:00.001Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
