//! The parsed TOML as a small tree with line numbers, and typed accessors that report every
//! mismatch to the [`Cx`] instead of stopping at the first.
//!
//! `toml_edit` distinguishes standard tables, inline tables and arrays of tables; the checks do
//! not care, so the document is first flattened into [`Node`]s.

use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, Table, Value};

use crate::error::Cx;
use crate::units;

/// Byte offset -> 1-based line.
pub(crate) struct Lines {
    newlines: Vec<usize>,
}

impl Lines {
    pub fn new(text: &str) -> Self {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'\n')
            .map(|(i, _)| i)
            .collect();
        Lines { newlines }
    }

    pub fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }

    fn of(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.map(|s| self.line(s.start))
    }
}

pub(crate) enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node<'a>>),
    Table(Vec<Entry<'a>>),
}

pub(crate) struct Node<'a> {
    /// Where the value (or the table's header) starts.
    pub line: Option<usize>,
    pub val: Val<'a>,
}

pub(crate) struct Entry<'a> {
    pub key: &'a str,
    pub key_line: Option<usize>,
    pub node: Node<'a>,
}

/// The entries of a table; an implicit table (no header of its own) takes its key's line.
pub(crate) fn table_entries<'a>(table: &'a Table, lines: &Lines) -> Vec<Entry<'a>> {
    table
        .iter()
        .filter_map(|(key, item)| {
            let key_line = lines.of(table.key(key).and_then(|k| k.span()));
            let node = item_node(item, lines, key_line)?;
            Some(Entry {
                key,
                key_line,
                node,
            })
        })
        .collect()
}

fn item_node<'a>(item: &'a Item, lines: &Lines, fallback: Option<usize>) -> Option<Node<'a>> {
    match item {
        Item::None => None,
        Item::Value(v) => Some(value_node(v, lines, fallback)),
        Item::Table(t) => Some(Node {
            line: lines.of(t.span()).or(fallback),
            val: Val::Table(table_entries(t, lines)),
        }),
        Item::ArrayOfTables(a) => Some(Node {
            line: lines.of(a.span()).or(fallback),
            val: Val::Array(
                a.iter()
                    .map(|t| Node {
                        line: lines.of(t.span()).or(fallback),
                        val: Val::Table(table_entries(t, lines)),
                    })
                    .collect(),
            ),
        }),
    }
}

fn value_node<'a>(v: &'a Value, lines: &Lines, fallback: Option<usize>) -> Node<'a> {
    let line = lines.of(v.span()).or(fallback);
    let val = match v {
        Value::String(s) => Val::Str(s.value()),
        Value::Integer(i) => Val::Int(*i.value()),
        Value::Float(f) => Val::Float(*f.value()),
        Value::Boolean(b) => Val::Bool(*b.value()),
        Value::Datetime(_) => Val::Datetime,
        Value::Array(a) => Val::Array(a.iter().map(|v| value_node(v, lines, line)).collect()),
        Value::InlineTable(t) => Val::Table(
            t.iter()
                .map(|(key, v)| {
                    let key_line = lines.of(t.key(key).and_then(|k| k.span())).or(line);
                    Entry {
                        key,
                        key_line,
                        node: value_node(v, lines, key_line),
                    }
                })
                .collect(),
        ),
    };
    Node { line, val }
}

/// How a value is shown after "got".
pub(crate) fn describe(node: &Node<'_>) -> String {
    match &node.val {
        Val::Str(s) => format!("{s:?}"),
        Val::Int(i) => i.to_string(),
        Val::Float(f) => f.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Datetime => "a date-time".to_string(),
        Val::Array(_) => "an array".to_string(),
        Val::Table(_) => "a table".to_string(),
    }
}

/// `parent.key`, quoting keys that are not bare TOML keys: `routes."example.com/api"`.
pub(crate) fn child(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// A value and its key path.
pub(crate) struct Field<'n, 'a> {
    pub path: String,
    pub node: &'n Node<'a>,
}

impl Field<'_, '_> {
    pub fn line(&self) -> Option<usize> {
        self.node.line
    }
}

/// A table and its key path.
pub(crate) struct Tbl<'n, 'a> {
    pub path: String,
    pub line: Option<usize>,
    pub entries: &'n [Entry<'a>],
}

impl<'n, 'a> Tbl<'n, 'a> {
    pub fn get(&self, key: &str) -> Option<Field<'n, 'a>> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| self.field(e))
    }

    pub fn field(&self, entry: &'n Entry<'a>) -> Field<'n, 'a> {
        Field {
            path: child(&self.path, entry.key),
            node: &entry.node,
        }
    }

    /// Report every key not in `allowed`.
    pub fn check_keys(&self, cx: &mut Cx, allowed: &[&str]) {
        for e in self.entries {
            if allowed.contains(&e.key) {
                continue;
            }
            let hint = allowed
                .iter()
                .find(|k| edit_distance(k, e.key) <= 2)
                .map(|k| format!(", did you mean {k:?}?"))
                .unwrap_or_default();
            cx.err(
                e.key_line,
                &child(&self.path, e.key),
                format!(
                    "unknown key {:?}{hint} (expected one of: {})",
                    e.key,
                    allowed.join(", ")
                ),
            );
        }
    }

    /// Report `message` about a missing key at the table.
    pub fn missing(&self, cx: &mut Cx, message: impl std::fmt::Display) {
        cx.err(self.line, &self.path, message);
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Typed accessors: each reports a mismatch (with the value it got) and returns `None`.
impl Cx {
    fn mismatch(&mut self, f: &Field<'_, '_>, expected: &str) {
        self.err(
            f.line(),
            &f.path,
            format!("expected {expected}, got {}", describe(f.node)),
        );
    }

    pub fn str<'a>(&mut self, f: &Field<'_, 'a>) -> Option<&'a str> {
        match f.node.val {
            Val::Str(s) => Some(s),
            _ => {
                self.mismatch(f, "a string");
                None
            }
        }
    }

    pub fn bool(&mut self, f: &Field<'_, '_>) -> Option<bool> {
        match f.node.val {
            Val::Bool(b) => Some(b),
            _ => {
                self.mismatch(f, "true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, f: &Field<'_, '_>, min: i64, max: i64) -> Option<i64> {
        let Val::Int(i) = f.node.val else {
            self.mismatch(f, "an integer");
            return None;
        };
        if (min..=max).contains(&i) {
            return Some(i);
        }
        let unbounded = max == i64::MAX || max == i64::from(u32::MAX);
        let rule = match min {
            1 if unbounded => "must be > 0".to_string(),
            _ if unbounded => format!("must be >= {min}"),
            _ => format!("must be between {min} and {max}"),
        };
        self.err(f.line(), &f.path, format!("{rule}, got {i}"));
        None
    }

    pub fn u32(&mut self, f: &Field<'_, '_>, min: u32, max: u32) -> Option<u32> {
        let i = self.int(f, i64::from(min), i64::from(max))?;
        u32::try_from(i).ok()
    }

    /// An integer in `min..=max`.
    pub fn u64_within(&mut self, f: &Field<'_, '_>, min: u64, max: u64) -> Option<u64> {
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let i = self.int(f, min, max)?;
        u64::try_from(i).ok()
    }

    pub fn u64(&mut self, f: &Field<'_, '_>, min: u64) -> Option<u64> {
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        let i = self.int(f, min, i64::MAX)?;
        u64::try_from(i).ok()
    }

    /// A duration string or a non-negative integer (seconds); `positive` rejects zero.
    pub fn duration(&mut self, f: &Field<'_, '_>, positive: bool) -> Option<Duration> {
        let parsed = match f.node.val {
            Val::Int(i) if i >= 0 => units::check_duration(
                Duration::from_secs(i.unsigned_abs()),
                &i.to_string(),
            )
            .map_err(|e| e.to_string()),
            Val::Str(s) => units::parse_duration(s).map_err(|e| e.to_string()),
            _ => Err(format!(
                "expected a duration like \"500ms\", \"10s\", \"5m\" or a whole number of seconds, got {}",
                describe(f.node)
            )),
        };
        match parsed {
            Ok(d) if positive && d.is_zero() => {
                self.err(
                    f.line(),
                    &f.path,
                    format!("must be greater than 0, got {}", describe(f.node)),
                );
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.err(f.line(), &f.path, message);
                None
            }
        }
    }

    /// A size string or an integer (bytes), greater than 0.
    pub fn size(&mut self, f: &Field<'_, '_>) -> Option<u64> {
        let parsed = match f.node.val {
            Val::Int(i) if i >= 0 => {
                units::check_size(i.unsigned_abs(), &i.to_string()).map_err(|e| e.to_string())
            }
            Val::Str(s) => units::parse_size(s).map_err(|e| e.to_string()),
            _ => Err(format!(
                "expected a size like \"10MB\", \"512KB\", \"1GiB\" or a number of bytes, got {}",
                describe(f.node)
            )),
        };
        match parsed {
            Ok(0) => {
                self.err(
                    f.line(),
                    &f.path,
                    format!("must be greater than 0, got {}", describe(f.node)),
                );
                None
            }
            Ok(n) => Some(n),
            Err(message) => {
                self.err(f.line(), &f.path, message);
                None
            }
        }
    }

    pub fn table<'n, 'a>(&mut self, f: &Field<'n, 'a>) -> Option<Tbl<'n, 'a>> {
        match &f.node.val {
            Val::Table(entries) => Some(Tbl {
                path: f.path.clone(),
                line: f.line(),
                entries,
            }),
            _ => {
                self.mismatch(f, "a table");
                None
            }
        }
    }

    /// The items of an array, each with its `path[i]`.
    pub fn array<'n, 'a>(&mut self, f: &Field<'n, 'a>) -> Option<Vec<Field<'n, 'a>>> {
        match &f.node.val {
            Val::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, node)| Field {
                        path: format!("{}[{i}]", f.path),
                        node,
                    })
                    .collect(),
            ),
            _ => {
                self.mismatch(f, "an array");
                None
            }
        }
    }

    /// An array of strings: each item with its field. `None` when anything is wrong.
    pub fn strings<'n, 'a>(&mut self, f: &Field<'n, 'a>) -> Option<Vec<(Field<'n, 'a>, &'a str)>> {
        let items = self.array(f)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.str(&item) {
                Some(s) => out.push((item, s)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}
