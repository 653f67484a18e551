//! The commands: one module per group, each owning its clap arguments (with their help text)
//! and its `run`; the client commands are thin calls to `ten serve`'s API.

pub mod certs;
pub mod config;
pub mod deploy;
pub mod fleet;
pub mod generate;
pub mod init;
pub mod instances;
pub mod logs;
pub mod reload;
pub mod serve;
pub mod table;
pub mod token;
pub mod upgrade;
