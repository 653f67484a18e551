//! `ten serve`: the proxy, the supervisor and the fleet wired together, the table publisher,
//! the audit log and the management API.

pub mod api;
pub mod audit;
pub mod compose;
pub mod data_dir;
pub mod serve;
