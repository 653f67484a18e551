//! Client commands: one module per group, each a thin call to `ten serve`'s API.

pub mod config;
pub mod deploy;
pub mod fleet;
pub mod instances;
pub mod logs;
pub mod table;
pub mod token;
