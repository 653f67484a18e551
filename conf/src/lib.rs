//! `tenement.toml`: types, parsing and validation. The leaf crate: no tokio, no pingora.
//!
//! [`Config::load`] / [`Config::parse`] walk the whole TOML tree by hand and report every
//! problem at once ([`ConfigErrors`]), each with its file, line and key path.

mod error;
mod isolation;
mod model;
mod names;
mod parse;
mod plugins;
mod process;
mod routes;
mod settings;
pub mod template;
mod tree;
mod units;

pub use error::{ConfigError, ConfigErrors};
pub use isolation::{is_env_name, root_warnings, DYNAMIC_UIDS};
pub use model::*;
pub use names::{
    check_hostname, check_instance_id, check_process_name, is_header_name, is_label, parse_cidr,
    InstanceNameError,
};
pub use parse::{find_config_path, CONFIG_ENV};
pub use process::{DEFAULT_SOCKET, ISOLATED_SOCKET};
pub use routes::parse_route_key;
pub use units::{
    check_duration, check_size, parse_duration, parse_size, rfc3339_ms, DurationError, SizeError,
    MAX_DURATION, MAX_SIZE,
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
