//! Per-process plugins (SPEC §8): a [`Plugin`] trait whose hooks map onto Pingora phases, and
//! the [`Chain`] of a process's plugins in config order.
//!
//! | hook                    | Pingora phase             |
//! |-------------------------|---------------------------|
//! | `on_request`            | `request_filter`          |
//! | `on_body`               | `request_body_filter`     |
//! | `on_upstream_request`   | `upstream_request_filter` |
//! | `on_response`           | `response_filter`         |
//! | `on_log`                | `logging`                 |
//!
//! A process without plugins carries no chain at all (`Chain::build` returns `None`), so its
//! requests pay nothing for the mechanism: no allocation, no dynamic call.
//!
//! Hooks are synchronous; a request check that needs slow work (`basic_auth`'s Argon2) returns
//! [`Check::Later`] from [`Plugin::check_request`], a future the proxy awaits: the work itself
//! runs off the workers (see [`crate::password`]), and only requests that need it pay for it.

mod basic_auth;
mod headers;
mod ip_filter;
mod max_body;
mod rate_limit;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use tenement_conf::PluginConf;

pub use basic_auth::BasicAuth;
pub use headers::Headers;
pub use ip_filter::IpFilter;
pub use max_body::MaxBody;
pub use rate_limit::RateLimit;

/// What a plugin may answer early with.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Reply {
    /// A short plain-text reply (`msg` plus a newline) with a `content-type` header.
    pub fn text(status: u16, msg: &str) -> Reply {
        Reply {
            status,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            body: Bytes::from(format!("{msg}\n")),
        }
    }

    /// Add a header (builder style).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// What [`Plugin::check_request`] decided.
pub enum Check<'a> {
    /// On to the next plugin.
    Pass,
    /// Answer the request with this now.
    Reply(Reply),
    /// Not known yet: the answer needs slow work (password hashing) that runs off the worker;
    /// await it (None: on to the next plugin).
    Later(Pin<Box<dyn Future<Output = Option<Reply>> + Send + 'a>>),
}

/// The request as plugins see it (built once per request by the proxy).
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The client address (`Ctx::client_ip`): the TCP peer, or for a peer in `trusted_proxies`
    /// the right-most untrusted `X-Forwarded-For` entry. None on a Unix-socket listener.
    pub client_ip: Option<IpAddr>,
    pub header: &'a RequestHeader,
}

/// The finished request, for logging hooks.
#[derive(Debug, Clone, Copy)]
pub struct LogInfo<'a> {
    pub process: &'a str,
    /// The status sent to the client (499 when none was: the client went away).
    pub status: u16,
    pub latency: Duration,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    pub client_ip: Option<IpAddr>,
    pub path: &'a str,
}

/// A plugin: every hook has a no-op default, implement the ones you need.
///
/// Hooks are synchronous and run on the proxy's hot path: keep them short and never block on
/// I/O or burn CPU (a slow check returns [`Check::Later`] instead). Shared state needs interior mutability (`Mutex`, atomics): one plugin value serves
/// every request of its process, on every worker thread.
pub trait Plugin: Send + Sync + 'static {
    /// The kind, as written in the config (`"rate_limit"`).
    fn name(&self) -> &'static str;
    /// Before routing to an upstream; Some(reply) answers the request right away.
    fn on_request(&self, _req: &RequestInfo<'_>) -> Option<Reply> {
        None
    }
    /// What the chain calls before routing: [`Plugin::on_request`]'s answer, unless the plugin
    /// overrides it to defer slow work ([`Check::Later`]).
    fn check_request<'a>(&'a self, req: &RequestInfo<'_>) -> Check<'a> {
        match self.on_request(req) {
            Some(reply) => Check::Reply(reply),
            None => Check::Pass,
        }
    }
    /// Whether [`Plugin::on_body`] does anything: the chain only counts body chunks for the
    /// plugins that ask.
    fn wants_body(&self) -> bool {
        false
    }
    /// Streamed request body chunk; `seen_so_far` counts every body byte read so far,
    /// this chunk included. Some(reply) aborts with that reply.
    fn on_body(&self, _seen_so_far: u64) -> Option<Reply> {
        None
    }
    /// Edit the request sent upstream.
    fn on_upstream_request(&self, _req: &mut RequestHeader) {}
    /// Edit the response sent to the client (proxied responses only, not ten's own errors).
    fn on_response(&self, _resp: &mut ResponseHeader) {}
    /// After the response is finished (or the client went away).
    fn on_log(&self, _info: &LogInfo<'_>) {}
}

/// Why a process's plugins could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// `plugins[2] basic_auth: user alice: ...`
    #[error("plugins[{index}] {kind}: {message}")]
    Invalid {
        /// Position in the process's `plugins = [...]`.
        index: usize,
        kind: &'static str,
        message: String,
    },
}

/// A process's plugins in config order; built once per config, shared by every table.
///
/// Stateful plugins (rate_limit buckets, the basic_auth cache) live here, so a chain must
/// outlive table rebuilds: build it when the config is loaded, not per table.
pub struct Chain {
    plugins: Box<[Box<dyn Plugin>]>,
    has_body: bool,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// The `kind` of a plugin config, for messages.
pub fn kind_of(conf: &PluginConf) -> &'static str {
    match conf {
        PluginConf::RateLimit { .. } => rate_limit::KIND,
        PluginConf::IpFilter { .. } => ip_filter::KIND,
        PluginConf::Headers { .. } => headers::KIND,
        PluginConf::BasicAuth { .. } => basic_auth::KIND,
        PluginConf::MaxBody { .. } => max_body::KIND,
    }
}

/// One built-in from its config; `Err(message)` is wrapped with its position by the caller.
fn build_one(conf: &PluginConf) -> Result<Box<dyn Plugin>, String> {
    Ok(match conf {
        PluginConf::RateLimit { rps, burst, key } => {
            Box::new(RateLimit::new(*rps, *burst, key.clone())?)
        }
        PluginConf::IpFilter { allow, deny } => Box::new(IpFilter::new(allow, deny)?),
        PluginConf::Headers {
            request_set,
            request_remove,
            response_set,
            response_remove,
        } => Box::new(Headers::new(
            request_set,
            request_remove,
            response_set,
            response_remove,
        )?),
        PluginConf::BasicAuth { users } => Box::new(BasicAuth::new(users)?),
        PluginConf::MaxBody { limit } => Box::new(MaxBody::new(*limit)),
    })
}

impl Chain {
    /// The built-ins of `confs`, in order. `None` when `confs` is empty.
    pub fn build(confs: &[PluginConf]) -> Result<Option<Arc<Chain>>, PluginError> {
        let mut plugins = Vec::with_capacity(confs.len());
        for (index, conf) in confs.iter().enumerate() {
            let plugin = build_one(conf).map_err(|message| PluginError::Invalid {
                index,
                kind: kind_of(conf),
                message,
            })?;
            plugins.push(plugin);
        }
        Ok(Chain::from_plugins(plugins))
    }

    /// A chain of already-built plugins (custom ones included). `None` when empty.
    pub fn from_plugins(plugins: Vec<Box<dyn Plugin>>) -> Option<Arc<Chain>> {
        if plugins.is_empty() {
            return None;
        }
        let has_body = plugins.iter().any(|p| p.wants_body());
        Some(Arc::new(Chain {
            plugins: plugins.into_boxed_slice(),
            has_body,
        }))
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().map(|p| p.name())
    }

    /// In order; the first reply wins and the later plugins do not run. Awaits only when a
    /// plugin deferred its check ([`Check::Later`]).
    pub async fn on_request(&self, req: &RequestInfo<'_>) -> Option<Reply> {
        for p in self.plugins.iter() {
            match p.check_request(req) {
                Check::Pass => {}
                Check::Reply(reply) => return Some(reply),
                Check::Later(answer) => {
                    if let Some(reply) = answer.await {
                        return Some(reply);
                    }
                }
            }
        }
        None
    }

    /// Whether any plugin looks at the request body ([`Chain::on_body`] is a no-op otherwise).
    pub fn wants_body(&self) -> bool {
        self.has_body
    }

    /// In order; the first Some wins.
    pub fn on_body(&self, seen: u64) -> Option<Reply> {
        if !self.has_body {
            return None;
        }
        self.plugins
            .iter()
            .filter(|p| p.wants_body())
            .find_map(|p| p.on_body(seen))
    }

    /// Every plugin, in order (a later plugin sees the earlier ones' edits).
    pub fn on_upstream_request(&self, req: &mut RequestHeader) {
        for p in self.plugins.iter() {
            p.on_upstream_request(req);
        }
    }

    /// Every plugin, in order.
    pub fn on_response(&self, resp: &mut ResponseHeader) {
        for p in self.plugins.iter() {
            p.on_response(resp);
        }
    }

    /// Every plugin, in order.
    pub fn on_log(&self, info: &LogInfo<'_>) {
        for p in self.plugins.iter() {
            p.on_log(info);
        }
    }
}

/// Parse a `Content-Length` header, if present and valid.
pub(crate) fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tenement_conf::RateLimitKey;

    pub(crate) fn get(path: &str) -> RequestHeader {
        RequestHeader::build("GET", path.as_bytes(), None).unwrap()
    }

    /// Run a future to its end on a current-thread runtime (blocking work still goes to the
    /// runtime's blocking pool).
    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    pub(crate) fn info<'a>(req: &'a RequestHeader, ip: &str) -> RequestInfo<'a> {
        RequestInfo {
            client_ip: Some(ip.parse().unwrap()),
            header: req,
        }
    }

    #[test]
    fn no_plugins_no_chain() {
        assert!(Chain::build(&[]).unwrap().is_none());
        assert!(Chain::from_plugins(Vec::new()).is_none());
    }

    #[test]
    fn first_reply_wins_in_config_order() {
        let confs = [
            PluginConf::IpFilter {
                allow: vec![],
                deny: vec!["10.0.0.0/8".into()],
            },
            PluginConf::MaxBody { limit: 10 },
        ];
        let chain = Chain::build(&confs).unwrap().unwrap();
        assert_eq!(chain.names().collect::<Vec<_>>(), ["ip_filter", "max_body"]);
        assert!(chain.wants_body());
        let mut req = get("/");
        req.insert_header("content-length", "100").unwrap();
        assert_eq!(
            block_on(chain.on_request(&info(&req, "10.1.1.1")))
                .unwrap()
                .status,
            403
        );
        assert_eq!(
            block_on(chain.on_request(&info(&req, "192.0.2.1")))
                .unwrap()
                .status,
            413
        );
        assert_eq!(chain.on_body(11).unwrap().status, 413);
        assert!(chain.on_body(10).is_none());
        assert_eq!(format!("{chain:?}"), r#"["ip_filter", "max_body"]"#);
    }

    #[test]
    fn edits_apply_in_order() {
        let h = |set: &str| PluginConf::Headers {
            request_set: BTreeMap::from([("x-a".to_string(), set.to_string())]),
            request_remove: vec![],
            response_set: BTreeMap::new(),
            response_remove: vec![],
        };
        let chain = Chain::build(&[h("1"), h("2")]).unwrap().unwrap();
        assert!(!chain.wants_body());
        assert!(chain.on_body(u64::MAX).is_none());
        let mut req = get("/");
        chain.on_upstream_request(&mut req);
        assert_eq!(req.headers.get("x-a").unwrap(), "2");
    }

    #[test]
    fn build_error_names_position_and_kind() {
        let confs = [
            PluginConf::MaxBody { limit: 1 },
            PluginConf::RateLimit {
                rps: 1.0,
                burst: 1,
                key: RateLimitKey::ClientIp,
            },
            PluginConf::BasicAuth {
                users: BTreeMap::from([("alice".to_string(), "$argon2id$nope".to_string())]),
            },
        ];
        let e = Chain::build(&confs).unwrap_err().to_string();
        assert!(e.starts_with("plugins[2] basic_auth: user alice: "), "{e}");
        assert!(!e.contains("nope"), "the hash is not quoted back: {e}");
    }

    struct Counter(Arc<AtomicU64>);

    impl Plugin for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn on_log(&self, info: &LogInfo<'_>) {
            self.0.fetch_add(info.request_bytes, Ordering::Relaxed);
        }
    }

    #[test]
    fn custom_plugins_and_logging() {
        let n = Arc::new(AtomicU64::new(0));
        let chain = Chain::from_plugins(vec![Box::new(Counter(n.clone()))]).unwrap();
        let log = LogInfo {
            process: "api",
            status: 200,
            latency: Duration::from_millis(1),
            request_bytes: 7,
            client_ip: None,
            path: "/",
        };
        chain.on_log(&log);
        chain.on_log(&log);
        assert_eq!(n.load(Ordering::Relaxed), 14);
        assert!(block_on(chain.on_request(&info(&get("/"), "::1"))).is_none());
    }
}
