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
use crate::trust::TrustedProxies;

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
    /// Speak h2c (HTTP/2 by prior knowledge) to its instances (`upstream_http2`).
    pub upstream_http2: bool,
}

#[derive(Debug)]
pub struct ProcessMetrics {
    pub in_flight: prometheus::IntGauge,
    /// Requests answered without an instance (no healthy instance, body too large): id="-".
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
    if opts.upstream_http2 {
        // Plaintext with min version 2: Pingora speaks h2c by prior knowledge.
        peer.options.set_http_version(2, 2);
    }
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
    /// Its home is offline and it is being placed on another server: a request waits (see
    /// [`crate::management::Waker::place`]).
    pub placing: bool,
    /// Why it cannot be served (None: the default message).
    pub why: Option<Box<str>>,
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
            placing: false,
            why: None,
            peer: Some(peer),
        }
    }

    /// A tenant with nowhere to go (its home is offline and no other server is online).
    pub fn unavailable(tenant: &str) -> Self {
        Remote {
            tenant: tenant.into(),
            server: None,
            host: Box::from(""),
            placing: false,
            why: None,
            peer: None,
        }
    }

    /// A tenant with nowhere to go, and why (the 503's message).
    pub fn unavailable_because(tenant: &str, why: &str) -> Self {
        Remote {
            why: Some(why.into()),
            ..Remote::unavailable(tenant)
        }
    }

    /// A tenant being placed on another server: requests wait for it.
    pub fn placing(tenant: &str) -> Self {
        Remote {
            placing: true,
            ..Remote::unavailable(tenant)
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

/// Host entries whose index has this bit point into the table's [`TenantTargets`] (the rest of
/// the index is the tenant's position).
const FLEET: u32 = 1 << 31;

/// Remote tenants' targets per chunk: a change copies the chunks it touches, not the list.
/// 256 x 16 bytes: a chunk copy is a few microseconds.
const CHUNK: usize = 256;

/// The fleet's tenants as tables take them: each tenant's domain, whether it is served here
/// (`Local`, routed through this build's pools) or elsewhere, and the remote ones' targets.
///
/// Built once by the composer and shared by every table built from it: a table whose tenants
/// have the same shape shares its host index, and takes these targets as they are (one `Arc`),
/// so a fleet status change costs the tenants it touches ([`TenantTargets::with`]), not one
/// target per tenant. The targets live in chunks of [`CHUNK`], copied on write.
#[derive(Debug, Clone, Default)]
pub struct TenantTargets {
    /// Domain (lower-case) and shape by position; shared while no tenant changes between
    /// local and remote.
    shape: Arc<[(Box<str>, TenantShape)]>,
    /// Target by position (a local tenant's is a placeholder the host index never names).
    chunks: Arc<[Arc<[Target]>]>,
}

impl TenantTargets {
    /// Every tenant's domain and target, in order (a domain listed twice: the last wins).
    /// O(tenants): the composer makes one when the tenants change, and [`TenantTargets::with`]
    /// for a status change.
    pub fn new(list: Vec<(String, TenantTarget)>) -> Self {
        TenantTargets::default().extended(list)
    }

    /// These tenants and then `more` (a new shape: O(tenants)).
    fn extended(&self, more: Vec<(String, TenantTarget)>) -> Self {
        let placeholder = placeholder();
        let mut shape = self.shape.to_vec();
        let mut targets: Vec<Target> = self.chunks.iter().flat_map(|c| c.iter().cloned()).collect();
        shape.reserve(more.len());
        targets.reserve(more.len());
        for (domain, t) in more {
            let (s, target) = split(t, &placeholder);
            shape.push((domain.to_ascii_lowercase().into_boxed_str(), s));
            targets.push(target);
        }
        let chunks = targets
            .chunks(CHUNK)
            .map(Arc::<[Target]>::from)
            .collect::<Vec<_>>()
            .into();
        TenantTargets {
            shape: shape.into(),
            chunks,
        }
    }

    pub fn len(&self) -> usize {
        self.shape.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shape.is_empty()
    }

    /// Target `i` (a placeholder for a local tenant).
    #[inline]
    fn get(&self, i: usize) -> Option<&Target> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The same tenants with the targets at these positions replaced (positions out of range
    /// are ignored): the chunks they fall in are copied, the others shared; so is the shape,
    /// unless a tenant changes between local and remote (then a table built with the result
    /// makes its host index again).
    pub fn with(&self, changes: Vec<(usize, TenantTarget)>) -> Self {
        if changes.is_empty() {
            return self.clone();
        }
        let placeholder = placeholder();
        let mut chunks: Vec<Arc<[Target]>> = self.chunks.to_vec();
        let mut copied: Vec<Option<Vec<Target>>> = vec![None; chunks.len()];
        let mut shape: Option<Vec<(Box<str>, TenantShape)>> = None;
        for (i, t) in changes {
            let (Some(chunk), Some((domain, old))) = (chunks.get(i / CHUNK), self.shape.get(i))
            else {
                continue;
            };
            let (s, target) = split(t, &placeholder);
            if *old != s {
                let shape = shape.get_or_insert_with(|| self.shape.to_vec());
                if let Some(slot) = shape.get_mut(i) {
                    *slot = (domain.clone(), s);
                }
            }
            let Some(slot) = copied.get_mut(i / CHUNK) else {
                continue;
            };
            let chunk = slot.get_or_insert_with(|| chunk.to_vec());
            if let Some(x) = chunk.get_mut(i % CHUNK) {
                *x = target;
            }
        }
        for (at, c) in copied.into_iter().enumerate() {
            if let (Some(c), Some(slot)) = (c, chunks.get_mut(at)) {
                *slot = c.into();
            }
        }
        TenantTargets {
            shape: shape.map_or_else(|| self.shape.clone(), Into::into),
            chunks: chunks.into(),
        }
    }

    /// Whether `other` shares this one's shape (no host index to make again).
    pub fn same_shape(&self, other: &TenantTargets) -> bool {
        Arc::ptr_eq(&self.shape, &other.shape)
    }
}

/// What stands at a local tenant's position (never routed to: its host names an instance).
fn placeholder() -> Target {
    Target::Remote(Arc::new(Remote::unavailable("")))
}

fn split(t: TenantTarget, placeholder: &Target) -> (TenantShape, Target) {
    match t {
        TenantTarget::Local { process, instance } => (
            TenantShape::Local { process, instance },
            placeholder.clone(),
        ),
        TenantTarget::Remote(r) => (TenantShape::Remote, Target::Remote(Arc::from(r))),
    }
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
            Target::Remote(r) => match (&r.peer, &r.why) {
                (Some(_), _) => Ok(u64::MAX),
                (None, _) if r.placing => Err(format!(
                    "tenant {}: its server is offline and it is being placed on another",
                    r.tenant
                )),
                (None, Some(why)) => Err(format!("tenant {}: {why}", r.tenant)),
                (None, None) => Err(format!(
                    "tenant {}: its server is offline and no other server is online",
                    r.tenant
                )),
            },
            Target::Management => Ok(u64::MAX),
        }
    }
}

/// A path-prefix route of a host; its target is an index into the table's targets.
#[derive(Debug, Clone, PartialEq)]
struct PrefixRoute {
    /// "/api" (no trailing slash; never "/").
    prefix: Box<str>,
    strip: bool,
    target: u32,
}

impl PrefixRoute {
    /// Whether the route takes `path` (normalised, without its query).
    fn matches(&self, path: &str) -> bool {
        let p = &*self.prefix;
        p == "/"
            || (path.starts_with(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
    }
}

/// Everything routed for one exact host, by target index (see [`Table`]).
#[derive(Debug, Clone, Default, PartialEq)]
struct HostEntry {
    /// Longest prefix first; never "/" (a "/" route is the fallback: it matches every path).
    routes: Box<[PrefixRoute]>,
    /// What the host gets when no prefix matches.
    fallback: Option<u32>,
}

impl HostEntry {
    /// Add a prefix route (not "/": that one is the fallback), replacing one with the same
    /// prefix; longest prefix first, equal lengths in the order added. Rare (most hosts have
    /// no prefix route), so the slice is rebuilt each time.
    fn add_route(&mut self, route: PrefixRoute) {
        let mut routes = Vec::from(std::mem::take(&mut self.routes));
        routes.retain(|x| x.prefix != route.prefix);
        routes.push(route);
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        self.routes = routes.into_boxed_slice();
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
    /// The normalised path and the query, when the route strips its prefix and the request's
    /// path was not normal (`/api/../api/x`): the upstream gets this, less the prefix, as the
    /// prefix cannot be cut from the original. None otherwise: the upstream gets the original.
    pub rewrite: Option<Box<str>>,
}

/// Why a request has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No host (or no fallback and no matching prefix) routes it: 404.
    NoRoute,
    /// The host has prefix routes and the path climbs above `/`: 400.
    AboveRoot,
    /// The host has prefix routes and the path's encoded slashes (`%2F`, `%5C`) would take it
    /// to another route for a backend that decodes them before resolving `..`: 400.
    EncodedSlash,
}

/// The host index: every host name and what it routes to, by target index.
type Hosts = HashMap<HostKey, HostEntry, FastState>;

/// The whole routing table.
///
/// Hosts map to indexes into `targets` rather than to targets: a table whose shape (hosts,
/// instance ids, tenants, routes) is the previous table's shares its host index, and a rebuild
/// for a weight, health, address or failover change only makes the targets again — O(pools +
/// instances), not O(hosts) ([`TableBuilder::build_on`]). Targets are laid out as: the
/// management API, each pool, each pool's instances, then the extras the shape lists.
#[derive(Debug, Default)]
pub struct Table {
    domain: Box<str>,
    hosts: Arc<Hosts>,
    targets: Box<[Target]>,
    /// The remote fleet tenants' targets, shared with the composer's [`TenantTargets`] (an
    /// index with [`FLEET`] set points here).
    fleet: TenantTargets,
    /// Every pool by process name (for the API and retries).
    pools: HashMap<Box<str>, Arc<Pool>, FastState>,
    shape: Arc<Shape>,
    /// `[settings] trusted_proxies`: in the table so that a reload changes it with the routes
    /// and a request reads it from the table it routes by (no second load).
    trusted: Arc<TrustedProxies>,
}

impl Table {
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Who may say who the client is (`[settings] trusted_proxies`).
    #[inline]
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// Route a normalised host (lower-case, no port) and a path (with its query): see
    /// [`Table::route`]; None for either miss.
    #[inline]
    pub fn lookup<'a>(&'a self, host: &str, path: &str) -> Option<Routed<'a>> {
        self.route(host, path).ok()
    }

    /// Route a normalised host (lower-case, no port) and a path (with its query). A host
    /// without prefix routes (nearly all) never looks at the path. A host with some matches
    /// them against the normalised path ([`crate::path::normalize`]), so an encoded or dotted
    /// spelling cannot walk around a prefix's route.
    #[inline]
    pub fn route<'a>(&'a self, host: &str, path: &str) -> Result<Routed<'a>, Miss> {
        let entry = self.hosts.get(host.as_bytes()).ok_or(Miss::NoRoute)?;
        if !entry.routes.is_empty() {
            if let Some(routed) = self.route_prefix(entry, path)? {
                return Ok(routed);
            }
        }
        let target = entry
            .fallback
            .and_then(|i| self.target(i))
            .ok_or(Miss::NoRoute)?;
        Ok(Routed {
            target,
            strip: None,
            rewrite: None,
        })
    }

    /// The prefix route of `entry` that the normalised `path` takes, if any.
    fn route_prefix<'a>(
        &'a self,
        entry: &'a HostEntry,
        path: &str,
    ) -> Result<Option<Routed<'a>>, Miss> {
        let (only_path, query) = match path.find('?') {
            Some(i) => path.split_at(i),
            None => (path, ""),
        };
        let normal = crate::path::normalize(only_path).map_err(|_| Miss::AboveRoot)?;
        let at = entry.routes.iter().position(|r| r.matches(&normal));
        // `%2F` / `%5C` stay encoded when matching (an encoded slash is no separator), but a
        // backend that decodes them before resolving `..` would see another path
        // (`/x%2F..%2Fadmin` = `/admin`): refuse a path whose two readings route apart.
        if crate::path::has_encoded_slash(only_path) {
            let slashed = crate::path::decode_slashes(only_path);
            let alt = crate::path::normalize(&slashed).map_err(|_| Miss::EncodedSlash)?;
            if entry.routes.iter().position(|r| r.matches(&alt)) != at {
                return Err(Miss::EncodedSlash);
            }
        }
        let Some(r) = at.and_then(|i| entry.routes.get(i)) else {
            return Ok(None);
        };
        let Some(target) = self.target(r.target) else {
            return Ok(None);
        };
        let rewrite = match normal {
            Cow::Owned(mut p) if r.strip => {
                p.push_str(query);
                Some(p.into_boxed_str())
            }
            _ => None,
        };
        Ok(Some(Routed {
            target,
            strip: r.strip.then_some(&*r.prefix),
            rewrite,
        }))
    }

    /// Target `i` of a host entry: one of this build's, or a remote tenant's ([`FLEET`] set).
    #[inline]
    fn target(&self, i: u32) -> Option<&Target> {
        if i & FLEET == 0 {
            self.targets.get(i as usize)
        } else {
            self.fleet.get((i & !FLEET) as usize)
        }
    }

    /// Whether `host` (normalised) is a host this table routes at all (any path): a routes
    /// host, a tenant domain, an instance or process host, the bare domain.
    pub fn routes_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host.as_bytes())
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

    /// Whether `other` shares this table's host index (built on it with the same shape).
    pub fn shares_hosts_with(&self, other: &Table) -> bool {
        Arc::ptr_eq(&self.hosts, &other.hosts)
    }
}

/// What a tenant's host routes to, as far as the host index is concerned.
#[derive(Debug, Clone, PartialEq)]
enum TenantShape {
    Local { process: String, instance: String },
    Remote,
}

/// A target after the pools: made again on every build from its recipe.
#[derive(Debug, Clone, PartialEq)]
enum Extra {
    /// An instance a route or tenant names: its backend, or, while it is not in its pool, one
    /// that answers 503 "not running". (Resolved per build, so the host index does not depend
    /// on which instances exist.)
    Instance { pool: usize, id: Box<str> },
    /// A local tenant whose process this server does not have.
    Unavailable(Box<str>),
}

/// Everything the host index depends on. Two builds with equal shapes have equal host indexes.
#[derive(Debug, Default)]
struct Shape {
    domain: String,
    /// Process names and their instance ids, in order.
    pools: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// Shared with the [`TenantTargets`] the table was built with.
    tenants: Arc<[(Box<str>, TenantShape)]>,
    routes: Arc<[Route]>,
    /// Derived from the above when the index was built (not compared).
    extras: Vec<Extra>,
}

impl Shape {
    fn same(&self, other: &Shape) -> bool {
        self.pools == other.pools && self.same_but_instances(other)
    }

    /// The same but for which instances the pools have (same processes, in the same order).
    fn same_but_instances(&self, other: &Shape) -> bool {
        self.domain == other.domain
            && self.pools.len() == other.pools.len()
            && self.pools.iter().zip(&other.pools).all(|(a, b)| a.0 == b.0)
            && (Arc::ptr_eq(&self.tenants, &other.tenants) || self.tenants == other.tenants)
            && (Arc::ptr_eq(&self.routes, &other.routes) || self.routes == other.routes)
    }
}

/// `{id}.{process}.{domain}`, lower-cased, into `key`.
fn instance_host(key: &mut String, id: &str, process: &str, domain: &str) {
    key.clear();
    key.push_str(id);
    key.make_ascii_lowercase();
    let _ = write!(key, ".{process}.{domain}");
}

/// `prev`'s host index for a shape that differs from `prev`'s only in the instances: the old
/// instance hosts out, the new ones in — O(instances) after one sequential copy, instead of a
/// random insert per host. None when an instance host is not plainly its own (a route or a
/// tenant on the same name, two ids that differ only in case): then the index is built.
fn patch_hosts(prev: &Table, shape: &Shape) -> Option<Hosts> {
    let mut hosts = (*prev.hosts).clone();
    let first = 1 + shape.pools.len() + prev.shape.extras.len();
    let domain = &shape.domain;
    let mut key = String::with_capacity(64);
    let mut at = first;
    for (process, ids) in &prev.shape.pools {
        for id in ids {
            instance_host(&mut key, id, process, domain);
            match hosts.remove(key.as_bytes()) {
                Some(e) if e.fallback == Some(index(at)) && e.routes.is_empty() => {}
                _ => return None,
            }
            at += 1;
        }
    }
    let mut at = first;
    for (process, ids) in &shape.pools {
        for id in ids {
            instance_host(&mut key, id, process, domain);
            let entry = HostEntry {
                routes: Box::default(),
                fallback: Some(index(at)),
            };
            if hosts.insert(HostKey::new(&key), entry).is_some() {
                return None;
            }
            at += 1;
        }
    }
    Some(hosts)
}

/// The entry of `host` (created empty).
fn entry<'m>(hosts: &'m mut Hosts, host: &str) -> &'m mut HostEntry {
    hosts.entry(HostKey::new(host)).or_default()
}

fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Builds a [`Table`] by SPEC §3 precedence: routes > tenants > instance > process > domain.
#[derive(Debug)]
pub struct TableBuilder {
    domain: String,
    pools: Vec<Arc<Pool>>,
    /// Routes shared with the config (compared by pointer when a build reuses a host index).
    shared: Option<Arc<[Route]>>,
    routes: Vec<Route>,
    /// Added one by one ([`TableBuilder::tenant`]), after `fleet`'s.
    tenants: Vec<(String, TenantTarget)>,
    fleet: Option<TenantTargets>,
    trusted: Arc<TrustedProxies>,
}

impl TableBuilder {
    pub fn new(domain: &str) -> Self {
        TableBuilder {
            domain: domain.to_ascii_lowercase(),
            pools: Vec::new(),
            shared: None,
            routes: Vec::new(),
            tenants: Vec::new(),
            fleet: None,
            trusted: Arc::default(),
        }
    }

    /// The fleet's tenants, shared (see [`TenantTargets`]): replaces those given before.
    pub fn tenants(&mut self, tenants: TenantTargets) -> &mut Self {
        self.fleet = Some(tenants);
        self.tenants.clear();
        self
    }

    /// `[settings] trusted_proxies` (default: nobody).
    pub fn trusted(&mut self, trusted: Arc<TrustedProxies>) -> &mut Self {
        self.trusted = trusted;
        self
    }

    /// A fleet tenant's exact domain (below `[routes]`, above the implicit host rules), after
    /// those of [`TableBuilder::tenants`].
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
        self.routes.push(spec);
        self
    }

    /// The config's routes, shared (no copy), before any added with [`TableBuilder::route`].
    pub fn routes(&mut self, routes: Arc<[Route]>) -> &mut Self {
        self.shared = Some(routes);
        self
    }

    pub fn build(self) -> Table {
        self.build_on(None)
    }

    /// Build, sharing `prev`'s host index when the shape is the same (a weight, health,
    /// address or failover change): then the cost is O(pools + instances), not O(hosts).
    pub fn build_on(self, prev: Option<&Table>) -> Table {
        let fleet = match (self.fleet, self.tenants.is_empty()) {
            (Some(f), true) => f,
            (None, _) => TenantTargets::new(self.tenants),
            (Some(f), false) => f.extended(self.tenants),
        };
        let routes: Arc<[Route]> = match (self.shared, self.routes.is_empty()) {
            (Some(shared), true) => shared,
            (None, _) => self.routes.into(),
            (Some(shared), false) => shared.iter().cloned().chain(self.routes).collect(),
        };
        let mut shape = Shape {
            domain: self.domain,
            pools: self
                .pools
                .iter()
                .map(|p| {
                    let ids = p.backends.iter().map(|b| b.id.clone()).collect();
                    (p.opts.name.clone(), ids)
                })
                .collect(),
            tenants: fleet.shape.clone(),
            routes,
            extras: Vec::new(),
        };
        let reused = prev.filter(|p| p.shape.same(&shape));
        let patched = match prev {
            Some(p) if reused.is_none() && p.shape.same_but_instances(&shape) => {
                patch_hosts(p, &shape).map(|hosts| (hosts, p.shape.extras.clone()))
            }
            _ => None,
        };
        let (hosts, shape) = match (reused, patched) {
            (Some(p), _) => (p.hosts.clone(), p.shape.clone()),
            (None, Some((hosts, extras))) => {
                shape.extras = extras;
                #[cfg(debug_assertions)]
                {
                    // Every debug build (the whole test suite) checks the patch against a
                    // full build.
                    let (full, extras) = index_hosts(&shape, &self.pools);
                    debug_assert!(full == hosts && extras == shape.extras);
                }
                (Arc::new(hosts), Arc::new(shape))
            }
            (None, None) => {
                let (hosts, extras) = index_hosts(&shape, &self.pools);
                shape.extras = extras;
                (Arc::new(hosts), Arc::new(shape))
            }
        };
        let targets = make_targets(&self.pools, &shape.extras);
        let mut pools: HashMap<Box<str>, Arc<Pool>, FastState> =
            HashMap::with_capacity_and_hasher(self.pools.len(), FastState::default());
        for p in self.pools {
            pools.insert(Box::from(&*p.opts.name), p);
        }
        Table {
            domain: shape.domain.as_str().into(),
            hosts,
            targets,
            fleet,
            pools,
            shape,
            trusted: self.trusted,
        }
    }
}

/// The host index for `shape`, and the extra targets it numbered. Targets are numbered:
/// the management API (0), each pool, the extras (what tenants and routes name beyond a pool),
/// then every instance — so tenants' and routes' entries do not depend on which instances
/// exist, and a change of instances only moves instance hosts ([`patch_hosts`]).
fn index_hosts(shape: &Shape, pools: &[Arc<Pool>]) -> (Hosts, Vec<Extra>) {
    let domain = &shape.domain;
    let backends: usize = pools.iter().map(|p| p.backends.len()).sum();
    let mut by_name: HashMap<&str, usize, FastState> =
        HashMap::with_capacity_and_hasher(pools.len(), FastState::default());
    for (i, p) in pools.iter().enumerate() {
        by_name.insert(&p.opts.name, i);
    }
    let base = 1 + pools.len();
    let extra = |extras: &mut Vec<Extra>, e: Extra| -> u32 {
        extras.push(e);
        index(base + extras.len() - 1)
    };
    let capacity = 1 + pools.len() + backends + shape.tenants.len() + shape.routes.len();
    let mut hosts: Hosts = HashMap::with_capacity_and_hasher(capacity, FastState::default());
    // Tenants' and routes' rules first (they number the extras), applied after the implicit
    // hosts below, which they outrank.
    let mut extras = Vec::new();
    let mut rules: Vec<(&str, Option<PrefixRoute>, u32)> = Vec::new();
    for (t, (tenant_domain, s)) in shape.tenants.iter().enumerate() {
        let target = match s {
            TenantShape::Local {
                process,
                instance: id,
            } => match by_name.get(process.as_str()) {
                Some(&pool) => extra(
                    &mut extras,
                    Extra::Instance {
                        pool,
                        id: id.as_str().into(),
                    },
                ),
                None => extra(&mut extras, Extra::Unavailable(Box::from(&**tenant_domain))),
            },
            TenantShape::Remote => FLEET | index(t),
        };
        rules.push((tenant_domain, None, target));
    }
    // Routes mostly name the same few processes: remember the last one looked up.
    let mut last: Option<(&str, usize)> = None;
    for r in shape.routes.iter() {
        let pool = match last {
            Some((name, pool)) if name == r.process => pool,
            _ => match by_name.get(r.process.as_str()) {
                Some(&pool) => {
                    last = Some((r.process.as_str(), pool));
                    pool
                }
                None => continue, // validated by conf; an unknown process is never routed
            },
        };
        let target = match &r.instance {
            None => index(1 + pool),
            Some(id) => extra(
                &mut extras,
                Extra::Instance {
                    pool,
                    id: id.as_str().into(),
                },
            ),
        };
        // A "/" route matches every path and stripping "/" is a no-op: it IS the host's
        // fallback (above every implicit rule), so most lookups never read a route list.
        let prefix = (r.prefix != "/").then(|| PrefixRoute {
            prefix: r.prefix.as_str().into(),
            strip: r.strip_prefix,
            target,
        });
        rules.push((&r.host, prefix, target));
    }
    let mut key = String::with_capacity(64);
    // Lowest priority first; a higher rule replaces the fallback of the same host.
    entry(&mut hosts, domain).fallback = Some(0);
    for (i, pool) in pools.iter().enumerate() {
        key.clear();
        let _ = write!(key, "{}.{domain}", pool.opts.name);
        entry(&mut hosts, &key).fallback = Some(index(1 + i));
    }
    let mut at = base + extras.len();
    for pool in pools {
        for b in pool.backends.iter() {
            // Hosts are matched lower-cased, so ids are too.
            instance_host(&mut key, &b.id, &pool.opts.name, domain);
            entry(&mut hosts, &key).fallback = Some(index(at));
            at += 1;
        }
    }
    for (host, prefix, target) in rules {
        key.clear();
        key.push_str(host);
        key.make_ascii_lowercase();
        let entry = entry(&mut hosts, &key);
        match prefix {
            None => entry.fallback = Some(target),
            Some(route) => entry.add_route(route),
        }
    }
    (hosts, extras)
}

/// The targets of one build, in the order [`index_hosts`] numbered them.
fn make_targets(pools: &[Arc<Pool>], extras: &[Extra]) -> Box<[Target]> {
    let backends: usize = pools.iter().map(|p| p.backends.len()).sum();
    let mut targets = Vec::with_capacity(1 + pools.len() + backends + extras.len());
    targets.push(Target::Management);
    targets.extend(pools.iter().map(|p| Target::Pool(p.clone())));
    let mut by_id: InstanceIndex<'_> = HashMap::default();
    if extras.iter().any(|e| matches!(e, Extra::Instance { .. })) {
        for (i, p) in pools.iter().enumerate() {
            for b in p.backends.iter() {
                // The first of equal ids wins, as a scan would find it.
                by_id.entry((i, &*b.id)).or_insert(b);
            }
        }
    }
    for e in extras {
        targets.push(match e {
            Extra::Instance { pool, id } => instance_of(pools, &by_id, *pool, id),
            Extra::Unavailable(d) => Target::Remote(Arc::new(Remote::unavailable(d))),
        });
    }
    for p in pools {
        targets.extend(p.backends.iter().map(|b| Target::Instance(b.clone())));
    }
    targets.into_boxed_slice()
}

/// Instance `id` of pool `pool`: its backend, or one that answers 503 "not running".
fn instance_of(pools: &[Arc<Pool>], by_id: &InstanceIndex<'_>, pool: usize, id: &str) -> Target {
    if let Some(b) = by_id.get(&(pool, id)) {
        return Target::Instance((*b).clone());
    }
    match pools.get(pool) {
        Some(p) => Target::Instance(Arc::new(Backend::new(
            p.opts.clone(),
            id,
            None,
            0,
            Availability::Down,
            Arc::default(),
        ))),
        None => Target::Management, // unreachable: the shape matched these pools
    }
}

/// Every instance by (pool, id), for tenants and routes that name one.
type InstanceIndex<'a> = HashMap<(usize, &'a str), &'a Arc<Backend>, FastState>;

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
            upstream_http2: false,
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

    fn weighted(o: &Arc<ProcessOpts>, id: &str, weight: u32) -> Arc<Backend> {
        Arc::new(Backend::new(
            o.clone(),
            id,
            Some(Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 4000)))),
            weight,
            Availability::Up { healthy: true },
            Arc::default(),
        ))
    }

    fn shaped(ids: &[&str], weight: u32, routes: &Arc<[Route]>, far: u16) -> TableBuilder {
        let api = opts("api");
        let mut b = TableBuilder::new("t.test");
        b.process(
            api.clone(),
            ids.iter().map(|id| weighted(&api, id, weight)).collect(),
        );
        b.tenant(
            "remote.example",
            TenantTarget::Remote(Box::new(Remote::to(
                "remote",
                "far",
                "remote.api.far.test".into(),
                SocketAddr::from(([127, 0, 0, 1], far)),
                false,
                "far.test",
            ))),
        );
        b.routes(routes.clone());
        b
    }

    fn weight_of(t: &Table, host: &str) -> u32 {
        match t.lookup(host, "/").map(|r| r.target) {
            Some(Target::Instance(b)) => b.weight,
            other => panic!("{host}: {other:?}"),
        }
    }

    #[test]
    fn same_shape_shares_the_host_index_with_new_targets() {
        let routes: Arc<[Route]> = vec![
            Route {
                host: "x.example".into(),
                prefix: "/".into(),
                process: "api".into(),
                instance: Some("a".into()),
                strip_prefix: false,
            },
            Route {
                host: "x.example".into(),
                prefix: "/gone".into(),
                process: "api".into(),
                instance: Some("nope".into()),
                strip_prefix: true,
            },
        ]
        .into();
        let t1 = shaped(&["a", "b"], 100, &routes, 5000).build();
        let t2 = shaped(&["a", "b"], 7, &routes, 5001).build_on(Some(&t1));
        assert!(t2.shares_hosts_with(&t1));
        // The targets are the new ones: weights, the tenant's new peer, the route's instance.
        assert_eq!(weight_of(&t2, "a.api.t.test"), 7);
        assert_eq!(weight_of(&t2, "x.example"), 7);
        assert_eq!(weight_of(&t1, "x.example"), 100);
        match t2.lookup("remote.example", "/").map(|r| r.target) {
            Some(Target::Remote(r)) => {
                assert_eq!(&*r.host, "remote.api.far.test");
                let peer = r.peer.as_ref().map(|p| p._address.to_string());
                assert_eq!(peer.as_deref(), Some("127.0.0.1:5001"), "the new peer");
            }
            other => panic!("{other:?}"),
        }
        // A route to an instance that does not exist still answers "not running".
        let gone = t2.lookup("x.example", "/gone/y").expect("routed");
        assert_eq!(gone.strip, Some("/gone"));
        match gone.target {
            Target::Instance(b) => assert_eq!(b.availability, Availability::Down),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t2.lookup("api.t.test", "/").map(|r| r.target),
            Some(Target::Pool(p)) if p.backends[0].weight == 7
        ));
        assert!(matches!(
            t2.lookup("t.test", "/").map(|r| r.target),
            Some(Target::Management)
        ));
    }

    #[test]
    fn a_new_shape_builds_a_new_host_index() {
        let routes: Arc<[Route]> = Vec::new().into();
        let t1 = shaped(&["a", "b"], 100, &routes, 5000).build();
        let t2 = shaped(&["a", "b", "c"], 100, &routes, 5000).build_on(Some(&t1));
        assert!(!t2.shares_hosts_with(&t1));
        assert!(t2.lookup("c.api.t.test", "/").is_some());
        assert!(t1.lookup("c.api.t.test", "/").is_none());
        let t3 = shaped(&["b", "c"], 100, &routes, 5000).build_on(Some(&t2));
        assert!(!t3.shares_hosts_with(&t2));
        assert!(t3.lookup("a.api.t.test", "/").is_none());
        // Equal routes in another allocation are the same shape.
        let copy: Arc<[Route]> = routes.iter().cloned().collect();
        let t4 = shaped(&["b", "c"], 50, &copy, 5000).build_on(Some(&t3));
        assert!(t4.shares_hosts_with(&t3));
        assert_eq!(weight_of(&t4, "c.api.t.test"), 50);
    }

    #[test]
    fn a_change_of_instances_patches_the_index_like_a_full_build() {
        let routes: Arc<[Route]> = vec![
            Route {
                host: "x.example".into(),
                prefix: "/".into(),
                process: "api".into(),
                instance: Some("c".into()),
                strip_prefix: false,
            },
            // A route on an instance's own host: that host is not plainly the instance's.
            Route {
                host: "b.api.t.test".into(),
                prefix: "/admin".into(),
                process: "api".into(),
                instance: None,
                strip_prefix: false,
            },
        ]
        .into();
        let t1 = shaped(&["a", "b"], 100, &routes, 5000).build();
        // "b" stays (its host has a route: the index is built), then only "a"/"c" change.
        let t2 = shaped(&["a", "b", "c"], 100, &routes, 5000).build_on(Some(&t1));
        let t3 = shaped(&["b", "c", "d"], 60, &routes, 5000).build_on(Some(&t2));
        let full = shaped(&["b", "c", "d"], 60, &routes, 5000).build();
        for host in [
            "a.api.t.test",
            "b.api.t.test",
            "c.api.t.test",
            "d.api.t.test",
            "x.example",
            "api.t.test",
            "t.test",
            "remote.example",
        ] {
            for path in ["/", "/admin/x"] {
                let (got, want) = (t3.lookup(host, path), full.lookup(host, path));
                assert_eq!(got.is_some(), want.is_some(), "{host}{path}");
                if let (Some(g), Some(w)) = (got, want) {
                    assert_eq!(g.strip, w.strip, "{host}{path}");
                    let name = |t: &Target| match t {
                        Target::Instance(b) => format!("instance {} {}", b.key, b.weight),
                        Target::Pool(p) => format!("pool {}", p.opts.name),
                        Target::Management => "management".into(),
                        Target::Remote(r) => format!("remote {}", r.host),
                    };
                    assert_eq!(name(g.target), name(w.target), "{host}{path}");
                }
            }
        }
        // The route that names "c" now reaches it; "a" is gone.
        assert_eq!(weight_of(&t2, "x.example"), 100);
        assert!(t3.lookup("a.api.t.test", "/").is_none());
        assert_eq!(weight_of(&t3, "d.api.t.test"), 60);
        // With no route on an instance host, a change of instances is patched.
        let plain: Arc<[Route]> = Vec::new().into();
        let p1 = shaped(&["a", "b"], 100, &plain, 5000).build();
        let p2 = shaped(&["a", "c"], 100, &plain, 5000).build_on(Some(&p1));
        assert!(patch_hosts(&p1, &p2.shape).is_some());
        assert_eq!(weight_of(&p2, "c.api.t.test"), 100);
        assert!(p2.lookup("b.api.t.test", "/").is_none());
        // Ids equal but for case are not patched (the index is built).
        let q = shaped(&["a", "A"], 100, &plain, 5000).build_on(Some(&p1));
        assert!(patch_hosts(&p1, &q.shape).is_none());
        assert!(q.lookup("a.api.t.test", "/").is_some());
    }

    #[test]
    fn tenant_targets_copy_only_the_chunks_a_change_touches() {
        let remote = |t: &str, port: u16| {
            TenantTarget::Remote(Box::new(Remote::to(
                t,
                "far",
                format!("{t}.api.far.test"),
                SocketAddr::from(([127, 0, 0, 1], port)),
                false,
                "far.test",
            )))
        };
        let n = 3 * CHUNK;
        let list = (0..n)
            .map(|i| (format!("T{i}.example"), remote(&format!("t{i}"), 5000)))
            .collect();
        let all = TenantTargets::new(list);
        let build = |tenants: &TenantTargets, prev: Option<&Table>| {
            let api = opts("api");
            let mut b = TableBuilder::new("t.test");
            b.process(api.clone(), vec![backend(&api, "t1", 1)]);
            b.tenants(tenants.clone());
            b.build_on(prev)
        };
        let t1 = build(&all, None);
        let peer = |t: &Table, host: &str| match t.lookup(host, "/").map(|r| r.target) {
            Some(Target::Remote(r)) => r.peer.as_ref().map(|p| p._address.to_string()),
            Some(Target::Instance(b)) => Some(format!("local {}", b.key)),
            other => panic!("{host}: {other:?}"),
        };
        assert_eq!(peer(&t1, "t7.example").as_deref(), Some("127.0.0.1:5000"));
        // Tenant 7 moves: its chunk is copied, the two others are shared, so is the shape.
        let moved = all.with(vec![(7, remote("t7", 5001)), (n + 5, remote("x", 1))]);
        assert!(moved.same_shape(&all));
        assert!(!Arc::ptr_eq(&moved.chunks[0], &all.chunks[0]));
        assert!(Arc::ptr_eq(&moved.chunks[1], &all.chunks[1]));
        assert!(Arc::ptr_eq(&moved.chunks[2], &all.chunks[2]));
        let t2 = build(&moved, Some(&t1));
        assert!(t2.shares_hosts_with(&t1));
        assert_eq!(peer(&t2, "t7.example").as_deref(), Some("127.0.0.1:5001"));
        assert_eq!(peer(&t1, "t7.example").as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(peer(&t2, "t8.example").as_deref(), Some("127.0.0.1:5000"));
        // Tenant 300 is now served here: a new shape, a new host index, routed locally.
        let local = moved.with(vec![(
            300,
            TenantTarget::Local {
                process: "api".into(),
                instance: "t1".into(),
            },
        )]);
        assert!(!local.same_shape(&moved));
        let t3 = build(&local, Some(&t2));
        assert!(!t3.shares_hosts_with(&t2));
        assert_eq!(peer(&t3, "t300.example").as_deref(), Some("local api:t1"));
        assert_eq!(peer(&t3, "t301.example").as_deref(), Some("127.0.0.1:5000"));
    }
}
