//! Client commands: one module per group, each a thin call to `ten serve`'s API.

pub mod instances;
pub mod token;
