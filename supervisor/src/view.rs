//! What the supervisor publishes and what it reads back.
//!
//! An instance has two kinds of fields: what routing reads ([`Routed`]: address, weight, state,
//! idle) and status only people read ([`Status`]: pid, uptime, restarts, last error, storage).
//! Only a change of the first kind publishes a new [`RoutingView`] and so rebuilds the routing
//! table; status is read on demand ([`crate::Supervisor::view`]).

use std::sync::Arc;
use std::time::Instant;

use tenement_conf::{Addr, InstanceName};

/// Instance states (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Healthy,
    Unhealthy,
    Draining,
    Stopped,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Draining => "draining",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// What an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A process ten spawns, watches and stops.
    Spawned,
    /// An external upstream (`upstreams = [...]`): only health-checked and weighted.
    External,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Spawned => "spawned",
            Kind::External => "external",
        }
    }
}

/// What routing reads of one instance. A change here publishes a new [`RoutingView`].
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub name: InstanceName,
    pub kind: Kind,
    pub state: State,
    pub weight: u32,
    pub addr: Option<Addr>,
    /// Stopped for idleness: a request wakes it.
    pub idle: bool,
}

/// What only people read. Changing it publishes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub pid: Option<u32>,
    pub started: Option<Instant>,
    pub restarts: u32,
    /// Why it is not healthy, when known.
    pub last_error: Option<String>,
    /// Size of its DATA_DIR at the last check (when `storage_quota_mb` is set).
    pub storage_bytes: Option<u64>,
}

/// Every instance as routing sees it, in spawn order. `generation` grows by one with each
/// publication: whoever builds tables from these views acknowledges the generation its table
/// contains, and callers that changed something wait for that
/// ([`crate::Supervisor::settle`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingView {
    pub generation: u64,
    pub instances: Vec<Arc<Routed>>,
}

/// One instance with everything known about it (routing and status), as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub name: InstanceName,
    pub kind: Kind,
    pub state: State,
    pub weight: u32,
    pub pid: Option<u32>,
    pub addr: Option<Addr>,
    pub started: Option<Instant>,
    pub restarts: u32,
    /// Stopped for idleness: a request wakes it.
    pub idle: bool,
    /// Why it is not healthy, when known.
    pub last_error: Option<String>,
    /// Size of its DATA_DIR at the last check (when `storage_quota_mb` is set).
    pub storage_bytes: Option<u64>,
}

impl InstanceView {
    pub(crate) fn of(r: &Routed, s: &Status) -> Self {
        InstanceView {
            name: r.name.clone(),
            kind: r.kind,
            state: r.state,
            weight: r.weight,
            pid: s.pid,
            addr: r.addr.clone(),
            started: s.started,
            restarts: s.restarts,
            idle: r.idle,
            last_error: s.last_error.clone(),
            storage_bytes: s.storage_bytes,
        }
    }
}

/// Every instance, in spawn order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub instances: Vec<InstanceView>,
}

/// What the supervisor learns from the proxy.
pub trait TrafficProbe: Send + Sync + 'static {
    fn in_flight(&self, name: &InstanceName) -> u64;
    /// When the last request to it started, if any.
    fn last_request(&self, name: &InstanceName) -> Option<Instant>;
}
