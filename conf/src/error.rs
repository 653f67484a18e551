//! Config errors: every problem found in a file, each with its file, line and key path.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config file.
///
/// Displays as `tenement.toml:12: process.api.health: expected a path starting with '/', got
/// "health"`: the file name as given, the 1-based line (when known), the key path (dots, and
/// `[i]` for array items) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(self))]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// Key path such as `process.api.plugins[1].rps`; empty for file-level errors.
    pub path: String,
    pub message: String,
}

fn render(e: &ConfigError) -> String {
    let mut out = e.file.clone();
    if let Some(line) = e.line {
        out.push_str(&format!(":{line}"));
    }
    out.push_str(": ");
    if !e.path.is_empty() {
        out.push_str(&e.path);
        out.push_str(": ");
    }
    out.push_str(&e.message);
    out
}

/// Every error found in one config file, in line order. Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all(&self.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render_all(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The validation context: where errors are collected while the whole tree is walked.
pub(crate) struct Cx {
    pub file: String,
    /// Absolute, lexically normalised folder that relative paths are resolved against.
    pub base_dir: PathBuf,
    errors: Vec<ConfigError>,
}

impl Cx {
    pub fn new(file: &str, base_dir: PathBuf) -> Self {
        Cx {
            file: file.to_string(),
            base_dir,
            errors: Vec::new(),
        }
    }

    pub fn err(&mut self, line: Option<usize>, path: &str, message: impl fmt::Display) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            path: path.to_string(),
            message: message.to_string(),
        });
    }

    /// `Ok(value)` when nothing was reported, else every error sorted by line (stable).
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        let mut errors = self.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(ConfigErrors(errors))
    }
}
