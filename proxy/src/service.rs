//! `TenProxy`: the Pingora `ProxyHttp` implementation (the hot path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::host::{self, HostError};
use crate::management::{self, Body, Management, Waker};
use crate::plugins::{Chain, LogInfo, Reply, RequestInfo};
use crate::table::{Availability, Backend, InFlight, ProcessOpts, Target};
use crate::Router;

/// Counts every request the proxy is handling, for the shutdown drain.
#[derive(Debug, Default)]
pub struct Traffic {
    in_flight: AtomicU64,
}

impl Traffic {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

struct TrafficGuard(Arc<Traffic>);

impl Drop for TrafficGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request state.
pub struct Ctx {
    _traffic: Option<TrafficGuard>,
    /// Sent upstream and back to the client (one shared buffer, cloned by reference count).
    request_id: HeaderValue,
    target: Option<Target>,
    /// Bytes of the path to strip (a matched `strip_prefix` route).
    strip: usize,
    backend: Option<Arc<Backend>>,
    /// Bitmask of pool indexes already tried (connect retries).
    tried: u64,
    in_flight: Option<InFlight>,
    max_body: u64,
    body_seen: u64,
    /// A message for the error response, set where the cause is known best.
    error_msg: Option<String>,
    start: Instant,
    /// Counts this request in its process's in-flight gauge until dropped.
    _gauge: Option<GaugeGuard>,
    /// The target process's plugins, when it has any.
    plugins: Option<Arc<Chain>>,
    /// A plugin's answer to send instead of an error (a body over a plugin's limit).
    reply: Option<Reply>,
}

struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process a target belongs to.
fn opts_of(target: &Target) -> Option<&Arc<ProcessOpts>> {
    match target {
        Target::Pool(p) => Some(&p.opts),
        Target::Instance(b) => Some(&b.opts),
        Target::Management | Target::Remote(_) => None,
    }
}

/// The metric kind of an upstream error.
fn error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError => "connect",
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        ErrorType::ConnectionClosed
        | ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::H1Error
        | ErrorType::InvalidHTTPHeader => "broken",
        _ => "other",
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The proxy: route by Host.
    Proxy,
    /// `admin_listen`: every request goes to the management API (token required).
    Admin,
    /// The control socket: the management API, trusted (no token; the socket is mode 0600).
    Control,
}

/// The proxy: routes by Host through the current [`Router`] table.
pub struct TenProxy {
    mode: Mode,
    /// Admin mode: a loopback client needs no token (`admin_loopback_trusted`).
    trust_loopback: bool,
    router: Arc<Router>,
    management: Arc<dyn Management>,
    waker: Option<Arc<dyn Waker>>,
    traffic: Arc<Traffic>,
    epoch: Instant,
}

impl TenProxy {
    pub fn new(
        router: Arc<Router>,
        management: Arc<dyn Management>,
        waker: Option<Arc<dyn Waker>>,
    ) -> Self {
        TenProxy {
            mode: Mode::Proxy,
            trust_loopback: false,
            epoch: router.epoch(),
            router,
            management,
            waker,
            traffic: Arc::default(),
        }
    }

    /// The same handlers, serving only the management API (admin listener, control socket).
    pub fn management_only(
        router: Arc<Router>,
        management: Arc<dyn Management>,
        mode: Mode,
    ) -> Self {
        let mut p = TenProxy::new(router, management, None);
        p.mode = mode;
        p
    }

    /// Admin mode: let loopback clients in without a token.
    pub fn trust_loopback(mut self, yes: bool) -> Self {
        self.trust_loopback = yes && self.mode == Mode::Admin;
        self
    }

    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }
}

/// A short plain-text response, with the request id.
async fn respond(session: &mut Session, ctx: &Ctx, status: u16, msg: &str) -> Result<()> {
    let body = Bytes::from(format!("{msg}\n"));
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header("x-request-id", ctx.request_id.clone())?;
    if status == 429 || status == 503 {
        resp.insert_header(http::header::RETRY_AFTER, "1")?;
    }
    session.set_keepalive(if status >= 500 { None } else { Some(60) });
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// How long an upgraded (WebSocket) connection may stay silent before it is closed.
const UPGRADED_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a table lookup found.
enum Lookup {
    Routed,
    BadHost(HostError),
    NoRoute(String),
}

/// A plugin's reply, with the request id (its own headers kept: Retry-After, WWW-Authenticate).
async fn respond_reply(session: &mut Session, ctx: &Ctx, reply: Reply) -> Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    for (k, v) in reply.headers {
        resp.append_header(k, v)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
    resp.insert_header("x-request-id", ctx.request_id.clone())?;
    // A 413 leaves an unread body behind: do not reuse the connection.
    session.set_keepalive(if reply.status == 413 || reply.status >= 500 {
        None
    } else {
        Some(60)
    });
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(reply.body), true).await?;
    Ok(())
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// 128 random bits as 32 lower-case hex digits (no formatting machinery: this runs per request).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, n) in [fastrand::u64(..), fastrand::u64(..)]
        .into_iter()
        .enumerate()
    {
        for i in 0..16 {
            buf[half * 16 + 15 - i] = HEX[((n >> (4 * i)) & 0xf) as usize];
        }
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Keep a client-sent id if it is sane (printable, bounded), else make one.
fn request_id(req: &RequestHeader) -> HeaderValue {
    match req.headers.get(X_REQUEST_ID) {
        Some(v)
            if !v.is_empty()
                && v.len() <= 200
                && v.as_bytes().iter().all(|c| c.is_ascii_graphic()) =>
        {
            v.clone()
        }
        _ => new_request_id(),
    }
}

/// An IP address as a header value; IPv4 without the formatting machinery (per request).
fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    let mut buf = [0u8; 15];
    let mut n = 0;
    let v4 = match ip {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(_) => {
            return HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        }
    };
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Which `X-Forwarded-*` headers the request already carries: one pass over the names (a
/// request has few headers), instead of a hashed lookup per name.
fn forwarded_present(req: &RequestHeader) -> (bool, bool, bool) {
    let (mut xff, mut proto, mut host) = (false, false, false);
    for k in req.headers.keys() {
        let k = k.as_str().as_bytes();
        if k.len() >= 15 && k.starts_with(b"x-forwarded-") {
            match &k[12..] {
                b"for" => xff = true,
                b"proto" => proto = true,
                b"host" => host = true,
                _ => {}
            }
        }
    }
    (xff, proto, host)
}

fn http_status(code: u16) -> Box<Error> {
    Error::new(ErrorType::HTTPStatus(code))
}

impl TenProxy {
    async fn serve_management(&self, session: &mut Session, ctx: &Ctx) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > management::MAX_BODY {
                return respond(session, ctx, 413, "request body too large").await;
            }
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(req.uri.clone());
        for (k, v) in req.headers.iter() {
            builder = builder.header(k, v);
        }
        let Ok(request) = builder.body(()) else {
            return respond(session, ctx, 400, "bad request").await;
        };
        let (head, ()) = request.into_parts();
        let resp = self
            .management
            .handle(management::Request {
                head,
                body: Bytes::from(body),
                client,
                trusted: self.mode == Mode::Control
                    || (self.trust_loopback && client.is_some_and(|ip| ip.is_loopback())),
            })
            .await;
        let (parts, body) = resp.into_parts();
        let mut head = ResponseHeader::build(parts.status, Some(parts.headers.len() + 1))?;
        for (k, v) in parts.headers.iter() {
            head.append_header(k.clone(), v.clone())?;
        }
        head.insert_header("x-request-id", ctx.request_id.clone())?;
        match body {
            Body::Full(b) => {
                head.insert_header(http::header::CONTENT_LENGTH, b.len())?;
                session.write_response_header(Box::new(head), false).await?;
                session.write_response_body(Some(b), true).await?;
            }
            Body::Stream(mut rx) => {
                // Chunked, so the connection can be reused and clients see the framing.
                head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                session.write_response_header(Box::new(head), false).await?;
                while let Some(chunk) = rx.recv().await {
                    session.write_response_body(Some(chunk), false).await?;
                }
                session.write_response_body(None, true).await?;
            }
        }
        Ok(())
    }

    /// Look the request up in the current table, borrowing its Host and path (no allocation
    /// unless there is no route). Sets `ctx.target` and `ctx.strip` when routed.
    fn lookup(&self, req: &RequestHeader, ctx: &mut Ctx) -> Lookup {
        let raw_host: &[u8] = match req.headers.get(http::header::HOST) {
            Some(h) => h.as_bytes(),
            None => req
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .unwrap_or_default(),
        };
        let host = match host::normalize(raw_host) {
            Ok(h) => h,
            Err(e) => return Lookup::BadHost(e),
        };
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let table = self.router.load();
        match table.lookup(&host, path) {
            Some(routed) => {
                ctx.strip = routed.strip.map(str::len).unwrap_or(0);
                ctx.target = Some(routed.target.clone());
                Lookup::Routed
            }
            None => Lookup::NoRoute(host.into_owned()),
        }
    }

    /// Route the request; Ok(true) when a response was already sent.
    async fn route(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // At most one wake per request: look up, wake an idle instance, look up again.
        let mut woken = false;
        loop {
            match self.lookup(session.req_header(), ctx) {
                Lookup::Routed => {}
                Lookup::BadHost(e) => {
                    respond(session, ctx, 400, &format!("bad request: {e}")).await?;
                    return Ok(true);
                }
                Lookup::NoRoute(host) => {
                    respond(session, ctx, 404, &format!("no route for host \"{host}\"")).await?;
                    return Ok(true);
                }
            }
            if ctx._gauge.is_none() {
                let gauge = ctx
                    .target
                    .as_ref()
                    .and_then(opts_of)
                    .and_then(|o| o.metrics.as_ref());
                if let Some(m) = gauge {
                    m.in_flight.inc();
                    ctx._gauge = Some(GaugeGuard(m.in_flight.clone()));
                }
            }
            // Plugins answer first: a refused request never wakes an instance.
            if !woken {
                let chain = ctx
                    .target
                    .as_ref()
                    .and_then(opts_of)
                    .and_then(|o| o.plugins.clone());
                if let Some(chain) = chain {
                    let client_ip = session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip());
                    let reply = chain.on_request(&RequestInfo {
                        client_ip,
                        header: session.req_header(),
                    });
                    ctx.plugins = Some(chain);
                    if let Some(reply) = reply {
                        respond_reply(session, ctx, reply).await?;
                        return Ok(true);
                    }
                }
            }
            let idle = match &ctx.target {
                Some(Target::Instance(b)) if b.availability == Availability::Idle => {
                    Some(b.clone())
                }
                _ => None,
            };
            match (idle, &self.waker) {
                (Some(b), Some(waker)) if !woken => {
                    woken = true;
                    if let Err(e) = waker.wake(&b.opts.name, &b.id).await {
                        respond(
                            session,
                            ctx,
                            503,
                            &format!("instance {} could not be woken: {e}", b.key),
                        )
                        .await?;
                        return Ok(true);
                    }
                }
                _ => break,
            }
        }
        let content_length = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match &ctx.target {
            Some(Target::Management) => {
                self.serve_management(session, ctx).await?;
                return Ok(true);
            }
            Some(Target::Pool(pool)) => {
                ctx.max_body = pool.opts.max_body;
                if pool.set.is_empty() {
                    let msg = format!("no healthy instance of \"{}\"", pool.opts.name);
                    respond(session, ctx, 503, &msg).await?;
                    return Ok(true);
                }
            }
            Some(Target::Instance(b)) => {
                ctx.max_body = b.opts.max_body;
                let msg = match b.availability {
                    Availability::Up { .. } if b.peer.is_some() => None,
                    Availability::Idle => Some(format!("instance {} is idle", b.key)),
                    _ => Some(format!("instance {} is not running", b.key)),
                };
                if let Some(msg) = msg {
                    respond(session, ctx, 503, &msg).await?;
                    return Ok(true);
                }
            }
            Some(Target::Remote(r)) => {
                if r.peer.is_none() {
                    let msg = format!(
                        "tenant {}: its server is offline and no other server is online",
                        r.tenant
                    );
                    respond(session, ctx, 503, &msg).await?;
                    return Ok(true);
                }
            }
            None => return Ok(false),
        }
        if content_length.is_some_and(|n| n > ctx.max_body) {
            let msg = format!("request body larger than {} bytes", ctx.max_body);
            respond(session, ctx, 413, &msg).await?;
            return Ok(true);
        }
        Ok(false)
    }
}

#[async_trait]
impl ProxyHttp for TenProxy {
    /// Boxed: Pingora keeps the context inside the request's future, which it moves into a
    /// fresh `Box` on every request and holds for as long as a keep-alive connection idles;
    /// a pointer there instead of the 232-byte struct (stored more than once) makes both
    /// cheaper (BENCHMARKS.md).
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        self.traffic.in_flight.fetch_add(1, Ordering::Relaxed);
        Box::new(Ctx {
            _traffic: Some(TrafficGuard(self.traffic.clone())),
            request_id: HeaderValue::from_static(""),
            target: None,
            strip: 0,
            backend: None,
            tried: 0,
            in_flight: None,
            max_body: u64::MAX,
            body_seen: 0,
            error_msg: None,
            start: Instant::now(),
            _gauge: None,
            plugins: None,
            reply: None,
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        ctx.request_id = request_id(session.req_header());
        if self.mode != Mode::Proxy {
            self.serve_management(session, ctx).await?;
            return Ok(true);
        }
        self.route(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > ctx.max_body {
                ctx.error_msg = Some(format!("request body larger than {} bytes", ctx.max_body));
                return Err(http_status(413));
            }
            if let Some(c) = ctx.plugins.as_ref().filter(|c| c.wants_body()) {
                if let Some(r) = c.on_body(ctx.body_seen) {
                    let status = r.status;
                    ctx.reply = Some(r);
                    return Err(http_status(status));
                }
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        if let Some(Target::Remote(r)) = &ctx.target {
            // Another tenement server: its own proxy routes the rewritten Host.
            return match &r.peer {
                Some(peer) => Ok(Box::new(peer.clone())),
                None => Err(http_status(503)),
            };
        }
        let backend = match &ctx.target {
            Some(Target::Instance(b)) => b.clone(),
            Some(Target::Pool(pool)) => match pool.choose(ctx.tried) {
                Some((i, b)) => {
                    if i < 64 {
                        ctx.tried |= 1 << i;
                    }
                    b.clone()
                }
                None => {
                    ctx.error_msg = Some(format!(
                        "bad gateway: no instance of \"{}\" accepted the connection",
                        pool.opts.name
                    ));
                    return Err(http_status(502));
                }
            },
            _ => return Err(http_status(500)),
        };
        let Some(peer) = backend.peer.clone() else {
            ctx.error_msg = Some(format!("instance {} is not running", backend.key));
            return Err(http_status(503));
        };
        let mut peer = Box::new(peer);
        if session.is_upgrade_req() {
            // A WebSocket lives on after its response: request_timeout would cut quiet ones.
            peer.options.read_timeout = Some(UPGRADED_IDLE_TIMEOUT);
            peer.options.write_timeout = Some(UPGRADED_IDLE_TIMEOUT);
        }
        // The request's start time, in the table's epoch (no second clock read).
        let now_ms = ctx.start.saturating_duration_since(self.epoch).as_millis();
        ctx.in_flight = Some(
            backend
                .stats
                .begin(u64::try_from(now_ms).unwrap_or(u64::MAX)),
        );
        ctx.backend = Some(backend);
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.in_flight = None;
        // No byte was sent: another healthy instance may take it.
        if let Some(Target::Pool(pool)) = &ctx.target {
            if pool.set.choose(ctx.tried).is_some() {
                e.set_retry(true);
            }
        }
        if let Some(b) = &ctx.backend {
            if let Some(m) = &b.stats.metrics {
                m.error("connect");
            }
            tracing::warn!(instance = %b.key, error = %e, "connect to upstream failed");
            ctx.error_msg = Some(format!("bad gateway: cannot connect to {}", b.key));
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let (has_xff, has_proto, has_host) = forwarded_present(upstream);
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            // Every X-Forwarded-For line the client sent, in order, then the client's address.
            let prev = match has_xff {
                true => upstream
                    .headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .collect::<Vec<_>>()
                    .join(", "),
                false => String::new(),
            };
            let xff = match prev.is_empty() {
                false => {
                    HeaderValue::from_str(&format!("{prev}, {ip}")).map_err(|_| http_status(400))?
                }
                true => ip_value(ip),
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        // On a TLS listener ten is the edge: it states proto and host itself. On plain HTTP it
        // may sit behind another proxy (a fleet router): values that came with the request are
        // kept (kamal-proxy's rule). X-Forwarded-For is always appended.
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if tls || !has_proto {
            upstream.insert_header(
                "x-forwarded-proto",
                HeaderValue::from_static(if tls { "https" } else { "http" }),
            )?;
        }
        if tls || !has_host {
            // The Host header, or an HTTP/2 request's :authority.
            let req = session.req_header();
            let host = match req.headers.get(http::header::HOST) {
                Some(h) => Some(h.clone()),
                None => req
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            };
            match host {
                Some(h) => upstream.insert_header("x-forwarded-host", h)?,
                // Never pass on a client's claim where ten is the edge.
                None if tls => {
                    upstream.remove_header("x-forwarded-host");
                }
                None => {}
            }
        }
        upstream.insert_header("x-request-id", ctx.request_id.clone())?;
        if let Some(Target::Remote(r)) = &ctx.target {
            upstream.insert_header(http::header::HOST, &*r.host)?;
        }
        if ctx.strip > 0 {
            let pq = upstream
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let rest = pq.get(ctx.strip..).unwrap_or("");
            let new = if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
            match new.parse::<http::Uri>() {
                Ok(uri) => upstream.set_uri(uri),
                Err(_) => return Err(http_status(400)),
            }
        }
        if let Some(c) = &ctx.plugins {
            c.on_upstream_request(upstream);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        // Hop-by-hop headers an upstream may send: a scan of the few names beats two hashed
        // removals on every response.
        let hop = resp.headers.keys().any(|k| {
            let k = k.as_str();
            k == "keep-alive" || k == "proxy-connection"
        });
        if hop {
            resp.remove_header("keep-alive");
            resp.remove_header("proxy-connection");
        }
        if let Some(c) = &ctx.plugins {
            c.on_response(resp);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        if self.mode != Mode::Proxy {
            return;
        }
        // No response written: the client went away first (nginx's 499).
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(499);
        match &ctx.backend {
            Some(b) => {
                if let Some(m) = &b.stats.metrics {
                    m.observe(status, ctx.start.elapsed());
                    if let Some(e) = e.filter(|e| e.esource() == &ErrorSource::Upstream) {
                        let kind = error_kind(e);
                        if kind != "connect" {
                            m.error(kind); // connect failures are counted per attempt
                        }
                    }
                }
            }
            None => {
                if let Some(m) = ctx
                    .target
                    .as_ref()
                    .and_then(opts_of)
                    .and_then(|o| o.metrics.as_ref())
                {
                    m.unrouted.observe(status, ctx.start.elapsed());
                }
            }
        }
        if let Some(c) = &ctx.plugins {
            c.on_log(&LogInfo {
                process: ctx
                    .target
                    .as_ref()
                    .and_then(opts_of)
                    .map(|o| &*o.name)
                    .unwrap_or(""),
                status,
                latency: ctx.start.elapsed(),
                request_bytes: ctx.body_seen,
                client_ip: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                path: session.req_header().uri.path(),
            });
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            ErrorType::ConnectTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let msg = ctx.error_msg.take().unwrap_or_else(|| match code {
                504 => match &ctx.backend {
                    Some(b) => format!("gateway timeout: {} did not answer in time", b.key),
                    None => "gateway timeout".into(),
                },
                502 => match &ctx.backend {
                    Some(b) => format!("bad gateway: {} failed", b.key),
                    None => "bad gateway".into(),
                },
                400 => "bad request".into(),
                413 => "request body too large".into(),
                _ => http::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_ascii_lowercase(),
            });
            let sent = match ctx.reply.take() {
                Some(reply) => respond_reply(session, ctx, reply).await,
                None => respond(session, ctx, code, &msg).await,
            };
            if let Err(err) = sent {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert!(!a.as_bytes().iter().any(u8::is_ascii_uppercase));
        assert_ne!(a, b);
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "fe80::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(parsed).to_str().unwrap(), parsed.to_string());
        }
    }

    #[test]
    fn forwarded_headers_are_found_in_any_case() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(forwarded_present(&req), (false, false, false));
        req.insert_header("X-Forwarded-Proto", "https").unwrap();
        assert_eq!(forwarded_present(&req), (false, true, false));
        req.insert_header("x-forwarded-for", "1.2.3.4").unwrap();
        req.insert_header("X-FORWARDED-HOST", "a.b").unwrap();
        req.insert_header("x-forwarded-port", "80").unwrap();
        assert_eq!(forwarded_present(&req), (true, true, true));
    }

    #[test]
    fn client_request_ids_are_kept_only_when_sane() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Request-Id", "abc-123").unwrap();
        assert_eq!(request_id(&req), "abc-123");
        req.insert_header("X-Request-Id", "has space").unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }
}
