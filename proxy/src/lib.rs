//! The proxy: Pingora `ProxyHttp`, the arc-swapped routing table, hot-path accounting, and the
//! management API's own Pingora app (`admin_listen`, the control socket), and the client
//! connection limits (`Edge`).
//!
//! The hot path takes no lock: one `ArcSwap::load()` of one immutable [`Table`] (routes,
//! weights and health together), a hash lookup, a thread-local random choice.

pub mod access;
mod admit;
mod ctx;
mod edge;
mod forwarded;
pub mod host;
pub mod management;
pub mod metrics;
pub mod password;
pub mod path;
mod peer;
pub mod plugins;
mod respond;
mod router;
mod select;
mod service;
pub mod table;
pub mod tls;
mod trust;

pub use ctx::{Ctx, Traffic};
pub use edge::{h2_server_options, ConnLimit, Edge, EdgeLimits, LiveLimits};
pub use management::ManagementApp;
pub use router::Router;
pub use service::TenProxy;
pub use table::{
    Availability, Backend, InstanceStats, Pool, ProcessMetrics, ProcessOpts, Remote, Table,
    TableBuilder, Target, TenantTarget, TenantTargets,
};
pub use trust::TrustedProxies;
