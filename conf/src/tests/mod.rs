//! Whole-file tests: every error kind, the valid configs, the example files.

mod data_dir;
mod edge;
mod errors;
mod examples;
mod isolation;
mod props;
mod valid;

use std::path::Path;

use crate::{Config, ConfigErrors};

pub(crate) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "tenement.toml", Path::new("/srv/app"))
}

pub(crate) fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// Every error, displayed.
pub(crate) fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// The only error, displayed.
pub(crate) fn error(text: &str) -> String {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}
