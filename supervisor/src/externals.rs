//! External upstreams (`upstreams = [...]`): services ten does not spawn or stop, kept as
//! instances of kind [`Kind::External`] (`legacy:0`, `legacy:1`, ...) in the same registry as
//! spawned ones: same weight path, same views, same state table. Their runner only resolves
//! and health-checks: the address is resolved again on every check (a failure is never
//! cached: the last good address is kept), and [`UNHEALTHY_AFTER`] failed checks in a row take
//! it out of routing until one passes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use tenement_conf::{Addr, InstanceName};

use crate::probe;
use crate::registry::Registry;
use crate::runner::{Stop, UNHEALTHY_AFTER};
use crate::view::State;

/// `host:port` -> its first address; a socket path as it is.
pub(crate) async fn resolve(u: &tenement_conf::Upstream) -> Result<Addr, String> {
    match u {
        tenement_conf::Upstream::Unix(p) => Ok(Addr::Unix(p.clone())),
        tenement_conf::Upstream::Tcp(hp) => match tokio::net::lookup_host(hp.as_str()).await {
            Ok(mut addrs) => addrs
                .next()
                .map(Addr::Tcp)
                .ok_or_else(|| format!("{hp}: no address")),
            Err(e) => Err(format!("{hp}: {e}")),
        },
    }
}

/// The state an external upstream starts in: healthy until checks say otherwise (connect
/// failures are retried by the proxy anyway), failed while it has no address.
pub(crate) fn initial_state(addr: &Option<Addr>) -> State {
    match addr {
        Some(_) => State::Healthy,
        None => State::Failed,
    }
}

/// What an external upstream's runner watches.
pub(crate) struct Upstream {
    pub name: InstanceName,
    pub upstream: tenement_conf::Upstream,
    pub health: Option<String>,
    /// Its address as resolved at boot (None: it did not resolve, and that was logged).
    pub addr: Option<Addr>,
}

/// One external upstream's health loop, until it is stopped (shutdown).
pub(crate) async fn run(
    reg: Arc<Registry>,
    me: Upstream,
    mut stop: watch::Receiver<Stop>,
    done: watch::Sender<bool>,
) {
    let Upstream {
        name,
        upstream,
        health,
        addr: mut last,
    } = me;
    let mut unresolved_logged = last.is_none();
    let every = reg.health_interval();
    let timeout = every.min(Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fails = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s != Stop::No) => break,
        }
        let addr = match resolve(&upstream).await {
            Ok(a) => {
                unresolved_logged = false;
                if last.as_ref() != Some(&a) {
                    // A first address also makes it routable (it was failed without one).
                    let first = last.is_none();
                    reg.route(&name, |r, _| {
                        r.addr = Some(a.clone());
                        if first {
                            r.state = State::Healthy;
                        }
                    });
                    last = Some(a.clone());
                }
                a
            }
            Err(why) => {
                if !unresolved_logged {
                    tracing::error!(upstream = %name, "cannot resolve upstream address; it is left out of routing ({why})");
                    unresolved_logged = true;
                }
                match &last {
                    Some(a) => a.clone(), // keep the last good address
                    None => continue,
                }
            }
        };
        match probe::probe(&addr, health.as_deref(), timeout).await {
            Ok(()) => {
                if fails >= UNHEALTHY_AFTER {
                    tracing::info!(upstream = %name, "external upstream healthy again");
                    reg.set_state(&name, State::Healthy, None);
                }
                fails = 0;
            }
            // ten's own lack of resources says nothing about the upstream: skipped.
            Err(why) if why.is_ours() => {
                tracing::warn!(upstream = %name, "health check skipped: {why}");
            }
            Err(why) => {
                fails = fails.saturating_add(1);
                if fails == UNHEALTHY_AFTER {
                    tracing::warn!(upstream = %name, "external upstream unhealthy: {why}");
                    reg.set_state(&name, State::Unhealthy, None);
                }
            }
        }
    }
    reg.forget_slot(&name);
    let _ = done.send(true);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tenement_conf::Upstream;

    #[tokio::test]
    async fn resolves_literals_and_paths_and_reports_failures() {
        let a = resolve(&Upstream::Tcp("127.0.0.1:3000".into()))
            .await
            .unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:3000");
        let u = resolve(&Upstream::Unix("/run/x.sock".into()))
            .await
            .unwrap();
        assert_eq!(u.to_string(), "unix:/run/x.sock");
        let e = resolve(&Upstream::Tcp("no-such-host.invalid:80".into()))
            .await
            .unwrap_err();
        assert!(e.starts_with("no-such-host.invalid:80"), "{e}");
        assert_eq!(initial_state(&None), State::Failed);
        assert_eq!(initial_state(&Some(a)), State::Healthy);
    }
}
