//! `ten serve`: the proxy, the supervisor and the fleet wired together, the table composer,
//! external upstreams, the audit log and the management API.

pub mod api;
pub mod audit;
pub mod compose;
pub mod externals;
pub mod serve;
