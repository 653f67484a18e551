//! Hooks for `benches/fleet.rs` (not used by `ten`): a fleet whose view is set directly (no
//! store writes: 100k tenants in a moment), and one health tick driven by hand, as the health
//! loop applies its results, so the bench times the very code the loop runs without sockets.

use std::net::SocketAddr;
use std::time::Duration;

use crate::health::Health;
use crate::{Fleet, FleetStore, Server, ServerAddr, Tenant};

/// A fleet over `store` showing `servers` and `tenants` (the store is not written).
pub fn fleet_with(
    store: FleetStore,
    conf: tenement_conf::Fleet,
    servers: Vec<Server>,
    tenants: Vec<Tenant>,
) -> Fleet {
    let fleet = Fleet::new(store, conf, std::sync::Arc::new(|_: &str| {}));
    {
        let mut rt = fleet.inner.lock();
        for s in &servers {
            rt.health.insert(s.id.clone(), Health::default());
        }
        fleet
            .inner
            .publish(&mut rt, servers, Some(tenants), Vec::new());
    }
    fleet
}

/// One health tick: every server answers `GET /health` (in `latency`) and resolves to
/// `addr_of(i)`, each result applied as the loop applies it, then the tick's publish.
pub fn health_tick(fleet: &Fleet, latency: Duration, addr_of: impl Fn(usize) -> SocketAddr) {
    let view = fleet.view();
    for (i, s) in view.servers.iter().enumerate() {
        let addr = ServerAddr {
            addr: addr_of(i),
            tls: false,
            host: s.server.domain.clone(),
        };
        fleet
            .inner
            .apply_for_bench(&s.server.id, &s.server.url, Ok(addr), Ok(latency));
    }
    fleet.inner.tick_for_bench();
}

/// A health check of server `id` fails (`unhealthy_after` of them mark it offline).
pub fn check_fails(fleet: &Fleet, id: &str) {
    let view = fleet.view();
    if let Some(s) = view.server(id) {
        fleet
            .inner
            .apply_result_for_bench(id, &s.server.url, Err("refused".into()));
    }
}
