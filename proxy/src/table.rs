//! The routing table: ONE immutable snapshot of routes, weights and health together.
//!
//! Built off the hot path by [`TableBuilder`] and published whole through an `ArcSwap`
//! (see [`crate::Router`]); a request does one `load()`, one hash probe on the host, a short
//! prefix scan, and a lock-free weighted choice.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use tenement_conf::{Addr, Route};

use crate::metrics::InstanceMetrics;
use crate::select::WeightedSet;

/// Live counters of one instance. They outlive table swaps: the composer hands the same `Arc`
/// to every table it builds, so drains and idle checks see every request.
#[derive(Debug, Default)]
pub struct InstanceStats {
    in_flight: AtomicU64,
    requests: AtomicU64,
    /// Milliseconds since the proxy's epoch of the last request start (0 = never).
    last_request_ms: AtomicU64,
    /// Prometheus handles (None when metrics are off).
    pub metrics: Option<InstanceMetrics>,
}

impl InstanceStats {
    pub fn with_metrics(metrics: Option<InstanceMetrics>) -> Self {
        InstanceStats {
            metrics,
            ..Default::default()
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Time since the proxy started when the last request began, if any did.
    pub fn last_request(&self) -> Option<Duration> {
        match self.last_request_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
    pub(crate) fn begin(self: &Arc<Self>, now_ms: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Never backwards: a request that waited for a wake may begin after a newer one.
        let now_ms = now_ms.max(1);
        if now_ms > self.last_request_ms.load(Ordering::Relaxed) {
            self.last_request_ms.store(now_ms, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }
}

/// Counts one request in flight on an instance until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<InstanceStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an instance can be reached right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Listening; `healthy` says whether it passes its checks.
    Up { healthy: bool },
    /// Stopped for idleness; a request to it directly wakes it.
    Idle,
    /// Starting, stopped, failed or draining: nothing to send to.
    Down,
}

/// Per-process proxy settings, shared by its pool and instances.
#[derive(Debug)]
pub struct ProcessOpts {
    pub name: Arc<str>,
    pub request_timeout: Duration,
    pub max_body: u64,
    /// In-flight gauge and the counters of requests no instance took (503s).
    pub metrics: Option<ProcessMetrics>,
    /// The process's plugins (None: no plugins, nothing to pay on the hot path).
    pub plugins: Option<Arc<crate::plugins::Chain>>,
}

#[derive(Debug)]
pub struct ProcessMetrics {
    pub in_flight: prometheus::IntGauge,
    /// Requests answered without an instance (no healthy instance, body too large): instance="-".
    pub unrouted: InstanceMetrics,
}

/// One instance (or external upstream) as the proxy sees it in this table.
#[derive(Debug)]
pub struct Backend {
    /// `process:id`
    pub key: Arc<str>,
    pub id: Arc<str>,
    pub opts: Arc<ProcessOpts>,
    pub addr: Option<Addr>,
    pub weight: u32,
    pub availability: Availability,
    pub stats: Arc<InstanceStats>,
    /// Pre-built peer, cloned per request (no parsing on the hot path).
    pub(crate) peer: Option<HttpPeer>,
}

impl Backend {
    pub fn new(
        opts: Arc<ProcessOpts>,
        id: &str,
        addr: Option<Addr>,
        weight: u32,
        availability: Availability,
        stats: Arc<InstanceStats>,
    ) -> Self {
        let peer = addr.as_ref().and_then(|a| build_peer(a, &opts));
        Backend {
            key: format!("{}:{}", opts.name, id).into(),
            id: id.into(),
            opts,
            addr,
            weight,
            availability,
            stats,
            peer,
        }
    }

    /// In the weighted set: up, healthy, weight > 0.
    pub fn eligible(&self) -> bool {
        self.weight > 0
            && self.availability == (Availability::Up { healthy: true })
            && self.peer.is_some()
    }
}

fn build_peer(addr: &Addr, opts: &ProcessOpts) -> Option<HttpPeer> {
    let mut peer = match addr {
        Addr::Tcp(sa) => HttpPeer::new(*sa, false, String::new()),
        Addr::Unix(path) => HttpPeer::new_uds(path.to_str()?, false, String::new()).ok()?,
    };
    peer.options.connection_timeout = Some(Duration::from_secs(3));
    peer.options.read_timeout = Some(opts.request_timeout);
    peer.options.write_timeout = Some(opts.request_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    Some(peer)
}

/// All instances of a process, with the weighted set of the eligible ones.
#[derive(Debug)]
pub struct Pool {
    pub opts: Arc<ProcessOpts>,
    pub backends: Box<[Arc<Backend>]>,
    pub(crate) set: WeightedSet,
}

impl Pool {
    /// Pick an eligible backend, skipping those in `tried` (a bitmask of indexes into
    /// `backends`, for retries). None when nothing is left.
    pub fn choose(&self, tried: u64) -> Option<(usize, &Arc<Backend>)> {
        let i = self.set.choose(tried)?;
        self.backends.get(i).map(|b| (i, b))
    }
}

/// A fleet tenant served by another tenement server.
#[derive(Debug)]
pub struct Remote {
    /// The tenant's id (for messages).
    pub tenant: Box<str>,
    /// The server it goes to (None: no server online).
    pub server: Option<Box<str>>,
    /// The Host header to send: `{instance}.{process}.{server domain}`.
    pub host: Box<str>,
    pub(crate) peer: Option<HttpPeer>,
}

impl Remote {
    /// A tenant going to `addr` (TLS when `tls`, with `host` as SNI).
    pub fn to(
        tenant: &str,
        server: &str,
        host: String,
        addr: SocketAddr,
        tls: bool,
        sni: &str,
    ) -> Self {
        let mut peer = HttpPeer::new(addr, tls, sni.to_string());
        peer.options.connection_timeout = Some(Duration::from_secs(3));
        peer.options.read_timeout = Some(Duration::from_secs(60));
        peer.options.write_timeout = Some(Duration::from_secs(60));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Remote {
            tenant: tenant.into(),
            server: Some(server.into()),
            host: host.into(),
            peer: Some(peer),
        }
    }

    /// A tenant with nowhere to go (its home is offline and no other server is online).
    pub fn unavailable(tenant: &str) -> Self {
        Remote {
            tenant: tenant.into(),
            server: None,
            host: Box::from(""),
            peer: None,
        }
    }
}

/// Where a fleet tenant's domain goes.
#[derive(Debug)]
pub enum TenantTarget {
    /// Served by this server: `process:instance` here.
    Local {
        process: String,
        instance: String,
    },
    Remote(Box<Remote>),
}

/// What a host (+ prefix) routes to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Weighted across a process's healthy instances.
    Pool(Arc<Pool>),
    /// One instance directly.
    Instance(Arc<Backend>),
    /// The management API, dashboard and /metrics.
    Management,
    /// A fleet tenant on another server.
    Remote(Arc<Remote>),
}

impl Target {
    /// The process this target belongs to (None for the management API and a remote tenant).
    #[inline]
    pub fn opts(&self) -> Option<&Arc<ProcessOpts>> {
        match self {
            Target::Pool(p) => Some(&p.opts),
            Target::Instance(b) => Some(&b.opts),
            Target::Management | Target::Remote(_) => None,
        }
    }

    /// Whether a request can go to this target now: its request body limit, or why not (the
    /// message of a 503). The management API takes everything here (it reads its own bodies).
    #[inline]
    pub fn admission(&self) -> Result<u64, String> {
        match self {
            Target::Pool(pool) => match pool.set.is_empty() {
                false => Ok(pool.opts.max_body),
                true => Err(format!("no healthy instance of \"{}\"", pool.opts.name)),
            },
            Target::Instance(b) => match b.availability {
                Availability::Up { .. } if b.peer.is_some() => Ok(b.opts.max_body),
                Availability::Idle => Err(format!("instance {} is idle", b.key)),
                _ => Err(format!("instance {} is not running", b.key)),
            },
            Target::Remote(r) => match r.peer {
                Some(_) => Ok(u64::MAX),
                None => Err(format!(
                    "tenant {}: its server is offline and no other server is online",
                    r.tenant
                )),
            },
            Target::Management => Ok(u64::MAX),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PrefixRoute {
    /// "/" or "/api" (no trailing slash).
    pub prefix: Box<str>,
    pub strip: bool,
    pub target: Target,
}

impl PrefixRoute {
    fn matches(&self, path: &str) -> bool {
        let p = &*self.prefix;
        p == "/"
            || (path.starts_with(p)
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/') | Some(b'?')))
    }
}

/// Everything routed for one exact host.
#[derive(Debug, Clone, Default)]
pub struct HostEntry {
    /// Longest prefix first; never "/" (a "/" route is the fallback: it matches every path).
    routes: Box<[PrefixRoute]>,
    /// What the host gets when no prefix matches.
    fallback: Option<Target>,
}

/// What the builder collects for one host.
#[derive(Debug, Default)]
struct HostRules {
    routes: Vec<PrefixRoute>,
    fallback: Option<Target>,
}

impl HostRules {
    /// Longest prefix first; a "/" route (it matches every path, and stripping "/" is a no-op)
    /// replaces the lower-priority fallback, so most lookups never read a route list.
    fn finish(mut self) -> HostEntry {
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        if self.routes.last().is_some_and(|r| &*r.prefix == "/") {
            self.fallback = self.routes.pop().map(|r| r.target);
        }
        HostEntry {
            routes: self.routes.into_boxed_slice(),
            fallback: self.fallback,
        }
    }
}

/// Longest host name stored inline in its table slot.
const INLINE_HOST: usize = 30;

/// A host name as a table key: inline when short (nearly all are), so a probe compares it in
/// the slot it already loaded instead of following a pointer; with the entry beside it, a
/// lookup in a table of 100k hosts touches one slot, not three scattered allocations.
#[derive(Clone)]
enum HostKey {
    Inline { len: u8, buf: [u8; INLINE_HOST] },
    Heap(Box<[u8]>),
}

impl HostKey {
    fn new(host: &str) -> HostKey {
        let b = host.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE_HOST => {
                let mut buf = [0; INLINE_HOST];
                buf[..b.len()].copy_from_slice(b);
                HostKey::Inline { len, buf }
            }
            _ => HostKey::Heap(b.into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            HostKey::Inline { len, buf } => &buf[..usize::from(*len)],
            HostKey::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.bytes()))
    }
}

// Hash and Eq agree with `[u8]`'s, so a lookup borrows the request's host bytes.
impl std::hash::Hash for HostKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

impl PartialEq for HostKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for HostKey {}

impl std::borrow::Borrow<[u8]> for HostKey {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

/// Seeded per process, fast on short keys (SipHash, std's default, cost ~2x a probe here).
type FastState = foldhash::fast::RandomState;

/// The result of a lookup.
#[derive(Debug, Clone)]
pub struct Routed<'a> {
    pub target: &'a Target,
    /// Some(prefix) when the matched route strips it.
    pub strip: Option<&'a str>,
}

/// The whole routing table.
#[derive(Debug, Default)]
pub struct Table {
    domain: Box<str>,
    hosts: HashMap<HostKey, HostEntry, FastState>,
    /// Every pool by process name (for the API and retries).
    pools: HashMap<Box<str>, Arc<Pool>>,
}

impl Table {
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Route a normalised host (lower-case, no port) and path.
    pub fn lookup<'a>(&'a self, host: &str, path: &str) -> Option<Routed<'a>> {
        let entry = self.hosts.get(host.as_bytes())?;
        for r in &entry.routes {
            if r.matches(path) {
                let strip = (r.strip && &*r.prefix != "/").then_some(&*r.prefix);
                return Some(Routed {
                    target: &r.target,
                    strip,
                });
            }
        }
        entry.fallback.as_ref().map(|target| Routed {
            target,
            strip: None,
        })
    }

    pub fn pool(&self, process: &str) -> Option<&Arc<Pool>> {
        self.pools.get(process)
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }
}

/// One instance of a pool; one not spawned (yet) still answers, with 503 "not running".
/// The rules of `host` (created empty).
fn rules<'m>(
    hosts: &'m mut HashMap<HostKey, HostRules, FastState>,
    host: &str,
) -> &'m mut HostRules {
    hosts.entry(HostKey::new(host)).or_default()
}

fn instance_target(pool: &Arc<Pool>, id: &str) -> Target {
    match pool.backends.iter().find(|b| &*b.id == id) {
        Some(b) => Target::Instance(b.clone()),
        None => Target::Instance(Arc::new(Backend::new(
            pool.opts.clone(),
            id,
            None,
            0,
            Availability::Down,
            Arc::default(),
        ))),
    }
}

/// Builds a [`Table`] by SPEC §3 precedence: routes > tenants > instance > process > domain.
/// Routes may be borrowed (from the config, which outlives the build) or owned.
#[derive(Debug)]
pub struct TableBuilder<'a> {
    domain: String,
    pools: Vec<Arc<Pool>>,
    routes: Vec<Cow<'a, Route>>,
    tenants: Vec<(String, TenantTarget)>,
}

impl<'a> TableBuilder<'a> {
    pub fn new(domain: &str) -> Self {
        TableBuilder {
            domain: domain.to_ascii_lowercase(),
            pools: Vec::new(),
            routes: Vec::new(),
            tenants: Vec::new(),
        }
    }

    /// A fleet tenant's exact domain (below `[routes]`, above the implicit host rules).
    pub fn tenant(&mut self, domain: &str, target: TenantTarget) -> &mut Self {
        self.tenants.push((domain.to_ascii_lowercase(), target));
        self
    }

    /// Add a process and all its instances (in display order).
    pub fn process(&mut self, opts: Arc<ProcessOpts>, backends: Vec<Arc<Backend>>) -> &mut Self {
        let set = WeightedSet::new(
            backends
                .iter()
                .map(|b| if b.eligible() { b.weight } else { 0 }),
        );
        self.pools.push(Arc::new(Pool {
            opts,
            backends: backends.into_boxed_slice(),
            set,
        }));
        self
    }

    pub fn route(&mut self, spec: Route) -> &mut Self {
        self.routes.push(Cow::Owned(spec));
        self
    }

    /// A route borrowed from a config that outlives the build (no copy).
    pub fn route_ref(&mut self, spec: &'a Route) -> &mut Self {
        self.routes.push(Cow::Borrowed(spec));
        self
    }

    pub fn build(self) -> Table {
        let domain = self.domain;
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        let capacity = 1 + self.pools.len() + backends + self.tenants.len() + self.routes.len();
        // Keyed as the final table is (no String per host, one cheap hash), then finished in
        // one pass.
        let mut hosts: HashMap<HostKey, HostRules, FastState> =
            HashMap::with_capacity_and_hasher(capacity, FastState::default());
        let mut key = String::with_capacity(64);
        // Lowest priority first; a higher rule replaces the fallback of the same host.
        rules(&mut hosts, &domain).fallback = Some(Target::Management);
        let mut pools = HashMap::with_capacity(self.pools.len());
        for pool in &self.pools {
            let name = &*pool.opts.name;
            key.clear();
            let _ = write!(key, "{name}.{domain}");
            rules(&mut hosts, &key).fallback = Some(Target::Pool(pool.clone()));
            pools.insert(Box::from(name), pool.clone());
        }
        for pool in &self.pools {
            let name = &*pool.opts.name;
            for b in pool.backends.iter() {
                // Hosts are matched lower-cased, so ids are too.
                key.clear();
                key.push_str(&b.id);
                key.make_ascii_lowercase();
                let _ = write!(key, ".{name}.{domain}");
                rules(&mut hosts, &key).fallback = Some(Target::Instance(b.clone()));
            }
        }
        for (domain, t) in self.tenants {
            let target = match t {
                TenantTarget::Local { process, instance } => match pools.get(process.as_str()) {
                    Some(pool) => instance_target(pool, &instance),
                    None => Target::Remote(Arc::new(Remote::unavailable(&domain))),
                },
                TenantTarget::Remote(r) => Target::Remote(Arc::from(r)),
            };
            rules(&mut hosts, &domain).fallback = Some(target);
        }
        for r in &self.routes {
            let Some(pool) = pools.get(r.process.as_str()) else {
                continue; // validated by conf; an unknown process is never routed
            };
            let target = match &r.instance {
                None => Target::Pool(pool.clone()),
                Some(id) => instance_target(pool, id),
            };
            key.clear();
            key.push_str(&r.host);
            key.make_ascii_lowercase();
            let entry = rules(&mut hosts, &key);
            entry.routes.retain(|x| *x.prefix != *r.prefix);
            entry.routes.push(PrefixRoute {
                prefix: r.prefix.as_str().into(),
                strip: r.strip_prefix,
                target,
            });
        }
        let table = hosts
            .into_iter()
            .map(|(host, rules)| (host, rules.finish()))
            .collect();
        Table {
            domain: domain.into(),
            hosts: table,
            pools,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(name: &str) -> Arc<ProcessOpts> {
        Arc::new(ProcessOpts {
            name: name.into(),
            request_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            metrics: None,
            plugins: None,
        })
    }

    fn backend(o: &Arc<ProcessOpts>, id: &str, port: u16) -> Arc<Backend> {
        Arc::new(Backend::new(
            o.clone(),
            id,
            Some(Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))),
            100,
            Availability::Up { healthy: true },
            Arc::default(),
        ))
    }

    fn table() -> Table {
        let api = opts("api");
        let web = opts("web");
        let mut b = TableBuilder::new("Example.com");
        b.process(
            api.clone(),
            vec![backend(&api, "prod", 1), backend(&api, "v2", 2)],
        );
        b.process(web.clone(), vec![backend(&web, "a", 3)]);
        b.route(Route {
            host: "example.com".into(),
            prefix: "/api".into(),
            process: "api".into(),
            instance: Some("prod".into()),
            strip_prefix: true,
        });
        b.route(Route {
            host: "www.example.com".into(),
            prefix: "/".into(),
            process: "web".into(),
            instance: None,
            strip_prefix: false,
        });
        b.build()
    }

    fn key(r: Option<Routed<'_>>) -> String {
        match r.map(|r| r.target) {
            Some(Target::Pool(p)) => format!("pool {}", p.opts.name),
            Some(Target::Instance(b)) => format!("instance {}", b.key),
            Some(Target::Management) => "management".into(),
            Some(Target::Remote(r)) => format!("remote {}", r.host),
            None => "none".into(),
        }
    }

    #[test]
    fn host_rules_in_order() {
        let t = table();
        assert_eq!(
            key(t.lookup("prod.api.example.com", "/")),
            "instance api:prod"
        );
        assert_eq!(key(t.lookup("api.example.com", "/")), "pool api");
        assert_eq!(key(t.lookup("example.com", "/")), "management");
        assert_eq!(key(t.lookup("www.example.com", "/x")), "pool web");
        assert_eq!(key(t.lookup("nope.example.com", "/")), "none");
        assert_eq!(key(t.lookup("x.api.example.com", "/")), "none");
    }

    #[test]
    fn mixed_case_ids_are_reachable_and_unspawned_route_targets_answer() {
        let api = opts("api");
        let mut b = TableBuilder::new("d");
        b.process(api.clone(), vec![backend(&api, "User123", 1)]);
        b.route(Route {
            host: "x.com".into(),
            prefix: "/".into(),
            process: "api".into(),
            instance: Some("later".into()),
            strip_prefix: false,
        });
        let t = b.build();
        assert_eq!(key(t.lookup("user123.api.d", "/")), "instance api:User123");
        assert_eq!(key(t.lookup("x.com", "/")), "instance api:later");
    }

    #[test]
    fn long_hosts_and_slash_routes_over_a_host_rule() {
        let api = opts("api");
        let web = opts("web");
        let long = format!("{}.example.com", "a".repeat(50)); // beyond the inline key
        let mut b = TableBuilder::new("d");
        b.process(api.clone(), vec![backend(&api, "1", 1)]);
        b.process(web.clone(), vec![backend(&web, "1", 1)]);
        for (host, prefix, process) in [
            (long.as_str(), "/", "api"),
            (long.as_str(), "/web", "web"),
            ("api.d", "/", "web"), // a "/" route beats the implicit process host
        ] {
            b.route(Route {
                host: host.into(),
                prefix: prefix.into(),
                process: process.into(),
                instance: None,
                strip_prefix: true,
            });
        }
        let t = b.build();
        let r = t.lookup(&long, "/anything");
        assert_eq!(
            r.as_ref().and_then(|r| r.strip),
            None,
            "stripping / is a no-op"
        );
        assert_eq!(key(r), "pool api");
        let r = t.lookup(&long, "/web/x");
        assert_eq!(r.as_ref().and_then(|r| r.strip), Some("/web"));
        assert_eq!(key(r), "pool web");
        assert_eq!(key(t.lookup(&long[1..], "/")), "none");
        assert_eq!(key(t.lookup("api.d", "/")), "pool web");
    }

    #[test]
    fn prefix_routes_win_and_fall_back() {
        let t = table();
        let r = t.lookup("example.com", "/api/users");
        assert_eq!(r.as_ref().and_then(|r| r.strip), Some("/api"));
        assert_eq!(key(r), "instance api:prod");
        assert_eq!(key(t.lookup("example.com", "/api")), "instance api:prod");
        assert_eq!(
            key(t.lookup("example.com", "/api?x=1")),
            "instance api:prod"
        );
        // "/apix" is not under "/api"
        assert_eq!(key(t.lookup("example.com", "/apix")), "management");
    }
}
