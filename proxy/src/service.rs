//! `TenProxy`: the Pingora `ProxyHttp` implementation (the hot path), one method per phase.
//! What a phase decides or rewrites lives beside it: the context in `ctx.rs`, the routing
//! decision in `admit.rs`, the forwarding headers in `forwarded.rs`, the answers in
//! `respond.rs`, the management API in `management.rs`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access::AccessLog;
use crate::admit::{self, Decision};
use crate::ctx::{Ctx, GaugeGuard, Traffic};
use crate::forwarded::{
    peer_ip, request_id, set_forwarded, strip_hop_by_hop, strip_prefix, X_REQUEST_ID,
};
use crate::management::{self, Management, Trust, Waker};
use crate::plugins::{LogInfo, RequestInfo};
use crate::respond::{
    error_kind, http_status, respond, respond_reply, status_code, status_message,
};
use crate::router::Router;
use crate::table::{Table, Target};
use crate::tls::{Challenges, CHALLENGE_PREFIX};

/// The proxy: routes by Host through the current [`Router`] table.
pub struct TenProxy {
    router: Arc<Router>,
    management: Arc<dyn Management>,
    waker: Option<Arc<dyn Waker>>,
    traffic: Arc<Traffic>,
    epoch: Instant,
    /// `[settings] access_log` (None: off, nothing paid per request).
    access: Option<Arc<AccessLog>>,
    /// HTTP-01 answers while ACME validates (None: no ACME).
    challenges: Option<Arc<Challenges>>,
}

impl TenProxy {
    pub fn new(
        router: Arc<Router>,
        management: Arc<dyn Management>,
        waker: Option<Arc<dyn Waker>>,
    ) -> Self {
        TenProxy {
            epoch: router.epoch(),
            router,
            management,
            waker,
            traffic: Arc::default(),
            access: None,
            challenges: None,
        }
    }

    /// Write one access log line per request to `log`.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access = log;
        self
    }

    /// Answer ACME HTTP-01 challenges from `challenges` on plain connections, before routing.
    pub fn with_challenges(mut self, challenges: Option<Arc<Challenges>>) -> Self {
        self.challenges = challenges;
        self
    }

    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }
}

/// How long an upgraded (WebSocket) connection may stay silent before it is closed.
const UPGRADED_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl TenProxy {
    /// One routing pass: look the request up in `table` (the current one), count it in its
    /// process's gauge, run the plugins (first pass only: a refused request never wakes an
    /// instance), then admit it. Sets `ctx.target` and `ctx.strip` when routed.
    async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        woken: bool,
        table: arc_swap::Guard<Arc<Table>>,
    ) -> Decision {
        let looked_up = admit::lookup(&table, session.req_header_mut());
        // Not held across the plugins' awaits.
        drop(table);
        let target = match looked_up {
            Ok((target, strip)) => {
                ctx.strip = strip;
                &*ctx.target.insert(target)
            }
            Err(answer) => return answer,
        };
        let req = session.req_header();
        let opts = target.opts();
        if ctx.gauge.is_none() {
            if let Some(m) = opts.and_then(|o| o.metrics.as_ref()) {
                ctx.gauge = Some(GaugeGuard::enter(&m.in_flight));
            }
        }
        if !woken {
            if let Some(chain) = opts.and_then(|o| o.plugins.as_ref()) {
                let reply = chain
                    .on_request(&RequestInfo {
                        client_ip: ctx.client_ip,
                        header: req,
                    })
                    .await;
                ctx.plugins = Some(chain.clone());
                if let Some(reply) = reply {
                    return Decision::Reply(reply);
                }
            }
        }
        let content_length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        admit::admit(target, content_length, !woken && self.waker.is_some())
    }

    /// Route the request by `table` (loaded by `request_filter`); Ok(true) when a response was
    /// already sent. Every answer the proxy gives before going upstream is written here.
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        table: arc_swap::Guard<Arc<Table>>,
    ) -> Result<bool> {
        // At most one wake per request: look up, wake an idle instance, look up again (in the
        // table current then).
        let mut woken = false;
        let mut first = Some(table);
        let decision = loop {
            let table = first.take().unwrap_or_else(|| self.router.load());
            match self.decide(session, ctx, woken, table).await {
                Decision::Wake(b) => {
                    woken = true;
                    if let Some(waker) = &self.waker {
                        if let Err(e) = waker.wake(&b.opts.name, &b.id).await {
                            let msg = format!("instance {} could not be woken: {e}", b.key);
                            break Decision::Answer(503, msg);
                        }
                    }
                }
                Decision::Place(r) => {
                    woken = true;
                    if let Some(waker) = &self.waker {
                        if let Err(e) = waker.place(&r.tenant).await {
                            break Decision::Answer(503, format!("tenant {}: {e}", r.tenant));
                        }
                    }
                }
                decision => break decision,
            }
        };
        match decision {
            Decision::Proxy { max_body } => {
                ctx.max_body = max_body;
                return Ok(false);
            }
            Decision::Answer(status, msg) => respond(session, ctx, status, &msg).await?,
            Decision::Reply(reply) => respond_reply(session, ctx, reply).await?,
            Decision::Management => {
                management::serve(
                    &*self.management,
                    session,
                    &ctx.request_id,
                    ctx.client_ip,
                    Trust::Token,
                    self.traffic.closing(),
                )
                .await?
            }
            // Not returned after a wake; as `admit` answers an instance still idle.
            Decision::Wake(b) => {
                respond(session, ctx, 503, &format!("instance {} is idle", b.key)).await?
            }
            Decision::Place(r) => {
                let msg = format!("tenant {} is being placed", r.tenant);
                respond(session, ctx, 503, &msg).await?
            }
        }
        Ok(true)
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
        // Called once the request head is read: its header_timeout no longer applies.
        crate::edge::head_read();
        Box::new(Ctx::new(&self.traffic))
    }

    /// None: ten compresses no response. Pingora's default adds a disabled compression module,
    /// whose context and three boxed hook futures were made on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = request_id(req);
        // The one table load of this request: who may speak for the client, then the route.
        let table = self.router.load();
        ctx.peer = table.trusted().resolve(peer_ip(session), req);
        ctx.client_ip = ctx.peer.ip;
        if let Some(c) = &self.challenges {
            if let Some(token) = session
                .req_header()
                .uri
                .path()
                .strip_prefix(CHALLENGE_PREFIX)
            {
                let plain = session.digest().is_none_or(|d| d.ssl_digest.is_none());
                if plain {
                    drop(table);
                    match c.answer(token) {
                        Some(key_auth) => {
                            // The key authorization exactly (no trailing newline).
                            let reply = crate::plugins::Reply {
                                status: 200,
                                headers: vec![(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("application/octet-stream"),
                                )],
                                body: Bytes::from(key_auth),
                            };
                            respond_reply(session, ctx, reply).await?
                        }
                        None => respond(session, ctx, 404, "no such ACME challenge").await?,
                    }
                    return Ok(true);
                }
            }
        }
        self.route(session, ctx, table).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(b) = body {
            // Pingora passes an upgraded connection's bytes (WebSocket frames) through here
            // too: they are not a request body, so neither max_body nor a plugin limits them.
            if session.was_upgraded() {
                return Ok(());
            }
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
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        set_forwarded(upstream, session.req_header(), ctx.peer, tls)?;
        upstream.insert_header_name(X_REQUEST_ID, ctx.request_id.clone())?;
        if let Some(Target::Remote(r)) = &ctx.target {
            upstream.insert_header_name(http::header::HOST, &*r.host)?;
        }
        if ctx.strip > 0 {
            strip_prefix(upstream, ctx.strip)?;
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
        resp.insert_header_name(X_REQUEST_ID, ctx.request_id.clone())?;
        strip_hop_by_hop(resp);
        if let Some(c) = &ctx.plugins {
            c.on_response(resp);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        // No response written: the client went away first (nginx's 499).
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(499);
        // One clock read for the metrics, the plugins and the access log.
        let elapsed = ctx.start.elapsed();
        match &ctx.backend {
            Some(b) => {
                if let Some(m) = &b.stats.metrics {
                    m.observe(status, elapsed);
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
                    .and_then(Target::opts)
                    .and_then(|o| o.metrics.as_ref())
                {
                    m.unrouted.observe(status, elapsed);
                }
            }
        }
        if let Some(c) = &ctx.plugins {
            c.on_log(&LogInfo {
                process: ctx
                    .target
                    .as_ref()
                    .and_then(Target::opts)
                    .map(|o| &*o.name)
                    .unwrap_or(""),
                status,
                latency: elapsed,
                request_bytes: ctx.body_seen,
                client_ip: ctx.client_ip,
                path: session.req_header().uri.path(),
            });
        }
        if let Some(log) = &self.access {
            log.log(&crate::access::entry(
                session,
                ctx.client_ip,
                status,
                elapsed,
                ctx.backend.as_ref().map(|b| &*b.key),
                ctx.request_id.as_bytes(),
            ));
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let code = status_code(e);
        if code > 0 && session.response_written().is_none() {
            let msg = ctx
                .error_msg
                .take()
                .unwrap_or_else(|| status_message(code, ctx.backend.as_deref()));
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
