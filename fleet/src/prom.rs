//! A line parser and writer for the Prometheus text exposition format (0.0.4): `# HELP`,
//! `# TYPE`, comments, and samples with or without labels (label values with `\\`, `\"`, `\n`
//! escapes), an optional timestamp.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    /// `# HELP name text` (text kept escaped, as written).
    Help {
        name: String,
        text: String,
    },
    /// `# TYPE name kind`.
    Type {
        name: String,
        kind: String,
    },
    Sample(Sample),
    /// Blank lines and other comments.
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    /// Label values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: String,
    pub timestamp: Option<String>,
}

const KINDS: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub(crate) fn parse_line(line: &str) -> Result<Line, String> {
    let line = line.trim_end_matches('\r');
    let trimmed = line.trim_start();
    if trimmed.is_empty() {
        return Ok(Line::Skip);
    }
    if let Some(comment) = trimmed.strip_prefix('#') {
        let comment = comment.trim_start();
        let (keyword, rest) = comment.split_once([' ', '\t']).unwrap_or((comment, ""));
        let rest = rest.trim_start();
        let (name, tail) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        return Ok(match keyword {
            "HELP" if is_metric_name(name) => Line::Help {
                name: name.to_string(),
                text: tail.to_string(),
            },
            "TYPE" if is_metric_name(name) => {
                let kind = tail.trim();
                if !KINDS.contains(&kind) {
                    return Err(format!("unknown metric type {kind:?} for {name}"));
                }
                Line::Type {
                    name: name.to_string(),
                    kind: kind.to_string(),
                }
            }
            "HELP" | "TYPE" => return Err(format!("bad metric name {name:?}")),
            _ => Line::Skip,
        });
    }
    parse_sample(trimmed).map(Line::Sample)
}

fn parse_sample(s: &str) -> Result<Sample, String> {
    let end = s.find(['{', ' ', '\t']).unwrap_or(s.len());
    let name = &s[..end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &s[end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("no value for {name}"))?;
    if value.parse::<f64>().is_err() {
        return Err(format!("bad value {value:?} for {name}"));
    }
    let timestamp = fields.next();
    if timestamp.is_some_and(|t| t.parse::<i64>().is_err()) || fields.next().is_some() {
        return Err(format!("junk after the value of {name}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: value.to_string(),
        timestamp: timestamp.map(str::to_string),
    })
}

/// Parses `a="x",b="y"}` (after the `{`); returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("a label without '='")?;
        let key = s[..eq].trim();
        if !is_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: the value must be quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("label {key}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("label {key}: unterminated value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((key.to_string(), value));
        s = s[close + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {key}"));
        }
    }
}

fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One sample line, with a newline.
pub(crate) fn write_sample(out: &mut String, s: &Sample) {
    out.push_str(&s.name);
    if !s.labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in s.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(v, out);
            out.push('"');
        }
        out.push('}');
    }
    let _ = write!(out, " {}", s.value);
    if let Some(t) = &s.timestamp {
        let _ = write!(out, " {t}");
    }
    out.push('\n');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(line: &str) -> Sample {
        match parse_line(line).unwrap() {
            Line::Sample(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_every_kind_of_line() {
        assert_eq!(
            parse_line("# HELP x_total Things \\\\ done.\\n").unwrap(),
            Line::Help {
                name: "x_total".into(),
                text: "Things \\\\ done.\\n".into()
            }
        );
        assert_eq!(
            parse_line("# TYPE x_total counter").unwrap(),
            Line::Type {
                name: "x_total".into(),
                kind: "counter".into()
            }
        );
        assert_eq!(parse_line("# just a comment").unwrap(), Line::Skip);
        assert_eq!(parse_line("   ").unwrap(), Line::Skip);
        let s = sample("up 1");
        assert_eq!((s.name.as_str(), s.value.as_str()), ("up", "1"));
        assert!(s.labels.is_empty() && s.timestamp.is_none());
        let s = sample(r#"http_x{a="1", b = "q\"uo\\te\nnl",} -Inf 1700000000000"#);
        assert_eq!(
            s.labels,
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "q\"uo\\te\nnl".to_string())
            ]
        );
        assert_eq!(s.value, "-Inf");
        assert_eq!(s.timestamp.as_deref(), Some("1700000000000"));
        assert_eq!(sample("x{} NaN").value, "NaN");
        assert_eq!(sample(r#"x{p="a,b}c"} 2"#).labels[0].1, "a,b}c");
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "1x 2",
            "x",
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x{a=\"1\"} two",
            "x 1 2 3",
            "x{1a=\"1\"} 2",
            "# TYPE x widget",
            "x{a=\"1\"b=\"2\"} 1",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writing_round_trips() {
        let line = r#"x{a="C:\\dir\\",b="say \"hi\"",c="a\nb"} 1.5 17"#;
        let s = sample(line);
        let mut out = String::new();
        write_sample(&mut out, &s);
        assert_eq!(out, format!("{line}\n"));
        assert_eq!(sample(out.trim_end()), s);
    }
}
