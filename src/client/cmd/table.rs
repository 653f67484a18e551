//! Aligned text tables and cells for the CLI's listings.

use std::fmt::Write as _;

use serde_json::Value;

/// A JSON value as a table cell: `-` for null or empty.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns aligned by two spaces, trailing spaces trimmed; `empty` is printed under the header
/// when there are no rows.
pub fn table(header: &[&str], rows: Vec<Vec<String>>, empty: Option<&str>) -> String {
    let no_rows = rows.is_empty();
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    all.extend(rows);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            all.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if let (true, Some(empty)) = (no_rows, empty) {
        let _ = writeln!(out, "{empty}");
    }
    out
}

pub use crate::wire::encode;
