//! The management API in the proxy crate: the seam (a [`Management`] implementation, provided
//! by the `ten` binary), [`serve`] (one management request on a Pingora session, for the
//! proxy's bare domain and the app below), and [`ManagementApp`], the small Pingora HTTP app
//! that serves it alone on `admin_listen` and the control socket.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::HeaderValue;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_error::{ErrorType, Result};
use pingora_http::ResponseHeader;

use crate::ctx::Closing;
use crate::forwarded::{peer_ip, request_id, X_REQUEST_ID};
use crate::respond::{keepalive_after, plain, status_for};

/// A response body: whole, or streamed (SSE) until the sender is dropped.
pub enum Body {
    Full(Bytes),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(b)
    }
}

/// What the management handler sees.
pub struct Request {
    pub head: http::request::Parts,
    pub body: Bytes,
    /// The client's address (None over the control socket).
    pub client: Option<IpAddr>,
    /// True for the control socket: no token needed.
    pub trusted: bool,
}

pub type Response = http::Response<Body>;

#[async_trait]
pub trait Management: Send + Sync + 'static {
    async fn handle(&self, req: Request) -> Response;
}

/// Wakes an idle-stopped instance (scale to zero), or waits for a fleet tenant being placed on
/// another server; implemented by the `ten` binary.
#[async_trait]
pub trait Waker: Send + Sync + 'static {
    /// Resolves once the instance is healthy (and a new table is published), or with why not.
    async fn wake(&self, process: &str, id: &str) -> Result<(), String>;

    /// Resolves once fleet tenant `tenant` is served somewhere (and the table that routes it
    /// is published), or with why not.
    async fn place(&self, tenant: &str) -> Result<(), String> {
        Err(format!("tenant {tenant}: no fleet to place it"))
    }
}

/// Largest management request body read (JSON commands are small).
pub const MAX_BODY: usize = 1 << 20;

/// How long one write of a streamed answer (SSE) may wait for the client to read: a client
/// that stops reading (a zero TCP window) is dropped after it instead of holding its task and
/// the stream's producer forever.
pub const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A management implementation that only answers `/health`, for tests and benches.
pub struct HealthOnly;

#[async_trait]
impl Management for HealthOnly {
    async fn handle(&self, req: Request) -> Response {
        let (status, body) = if req.head.uri.path() == "/health" {
            (200, &b"{\"status\":\"ok\"}"[..])
        } else {
            (404, &b"{\"error\":\"not found\"}"[..])
        };
        let mut resp = http::Response::new(Body::Full(Bytes::from_static(body)));
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// Who may use the management API without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// Nobody: the proxy's bare domain, `admin_listen`.
    Token,
    /// Loopback clients (`admin_loopback_trusted`).
    Loopback,
    /// Everyone: the control socket (mode 0600; peers other than root and ten's own uid are
    /// dropped before their request is read, see `peer.rs`).
    Always,
}

/// What `admin_loopback_trusted` makes of a request from a loopback client (review M1).
#[derive(Debug, PartialEq, Eq)]
enum Loopback {
    /// No token needed.
    Trusted,
    /// A token is needed, as from anywhere else (a Host that is not loopback: DNS rebinding).
    Token,
    /// Refused outright: a cross-site browser request, or a write that is not JSON (a form or
    /// a no-cors `text/plain` POST needs no CORS preflight).
    Refuse(u16, &'static str),
}

/// A `Host` (or `Origin` authority) naming this machine's loopback: `localhost`,
/// `127.0.0.0/8`, `[::1]`, each with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Check a loopback client's request on an `admin_loopback_trusted` listener: a loopback
/// `Host`, no cross-site `Origin` or `Sec-Fetch-Site`, JSON on writes.
fn loopback_request(head: &pingora_http::RequestHeader) -> Loopback {
    let header = |name: http::header::HeaderName| {
        head.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}").trim())
    };
    let Some(host) = header(http::header::HOST).or(head.uri.authority().map(|a| a.as_str())) else {
        return Loopback::Token;
    };
    if !loopback_host(host) {
        return Loopback::Token;
    }
    let site = head.headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if matches!(site, Some(b"cross-site" | b"same-site")) {
        return Loopback::Refuse(403, "forbidden: cross-site request");
    }
    if let Some(origin) = header(http::header::ORIGIN) {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !authority.is_some_and(|a| a.eq_ignore_ascii_case(host)) {
            return Loopback::Refuse(403, "forbidden: cross-origin request");
        }
    }
    let write = !matches!(
        head.method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let has_body = head.headers.contains_key(http::header::CONTENT_LENGTH)
        && header(http::header::CONTENT_LENGTH) != Some("0")
        || head.headers.contains_key(http::header::TRANSFER_ENCODING);
    // A write with a body (or a declared type) must be JSON; a body-less one (the dashboard's
    // restart) carries no type. Browsers send a cross-site one's Origin, refused above.
    let content_type = header(http::header::CONTENT_TYPE);
    let json = content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if write && (has_body || content_type.is_some()) && !json {
        return Loopback::Refuse(
            415,
            "unsupported media type: writes need Content-Type: application/json",
        );
    }
    Loopback::Trusted
}

/// A short plain-text answer written straight to the session.
async fn write_plain(
    session: &mut ServerSession,
    request_id: &HeaderValue,
    status: u16,
    msg: &str,
) -> Result<()> {
    let (resp, body) = plain(status, msg, request_id)?;
    session.set_keepalive(keepalive_after(status));
    session.write_response_header(resp).await?;
    session.write_response_body(body, true).await
}

/// An API error (`{"error": msg}`) written straight to the session, the connection closed.
async fn write_json_error(
    session: &mut ServerSession,
    request_id: &HeaderValue,
    status: u16,
    msg: &'static str,
) -> Result<()> {
    // `msg` is one of this file's fixed messages: no character needs escaping.
    let body = Bytes::from(format!("{{\"error\":\"{msg}\"}}"));
    let mut head = ResponseHeader::build(status, Some(4))?;
    head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    head.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    head.insert_header_name(X_REQUEST_ID, request_id.clone())?;
    // The body was not read: the connection cannot be reused.
    session.set_keepalive(None);
    session.write_response_header(Box::new(head)).await?;
    session.write_response_body(body, true).await
}

/// Serve one management request whose header has been read: read its body (up to
/// [`MAX_BODY`]), hand it to `management`, write the answer (streamed chunked for
/// [`Body::Stream`]), with the request id. A stream ends when `closing` is set (shutdown) and
/// fails when one write waits longer than [`STREAM_WRITE_TIMEOUT`].
pub(crate) async fn serve(
    management: &dyn Management,
    session: &mut ServerSession,
    request_id: &HeaderValue,
    client: Option<IpAddr>,
    trust: Trust,
    closing: &Closing,
) -> Result<()> {
    let trusted = match trust {
        Trust::Token => false,
        Trust::Always => true,
        Trust::Loopback if !client.is_some_and(|ip| ip.to_canonical().is_loopback()) => false,
        Trust::Loopback => match loopback_request(session.req_header()) {
            Loopback::Trusted => true,
            Loopback::Token => false,
            Loopback::Refuse(status, msg) => {
                return write_json_error(session, request_id, status, msg).await;
            }
        },
    };
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > MAX_BODY {
            return write_plain(session, request_id, 413, "request body too large").await;
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
        return write_plain(session, request_id, 400, "bad request").await;
    };
    let (head, ()) = request.into_parts();
    let resp = management
        .handle(Request {
            head,
            body: Bytes::from(body),
            client,
            trusted,
        })
        .await;
    let (parts, body) = resp.into_parts();
    let mut head = ResponseHeader::build(parts.status, Some(parts.headers.len() + 1))?;
    for (k, v) in parts.headers.iter() {
        head.append_header(k.clone(), v.clone())?;
    }
    head.insert_header_name(X_REQUEST_ID, request_id.clone())?;
    match body {
        Body::Full(b) => {
            head.insert_header(http::header::CONTENT_LENGTH, b.len())?;
            session.write_response_header(Box::new(head)).await?;
            session.write_response_body(b, true).await?;
        }
        Body::Stream(mut rx) => {
            // Chunked, so the connection can be reused and clients see the framing.
            head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            session.write_response_header(Box::new(head)).await?;
            write_stream(session, &mut rx, closing, STREAM_WRITE_TIMEOUT).await?;
        }
    }
    Ok(())
}

/// Write `rx`'s chunks until it ends or `closing` is set, then the last (empty) chunk; each
/// write bounded by `write_timeout`. On shutdown the connection is not reused.
async fn write_stream(
    session: &mut ServerSession,
    rx: &mut tokio::sync::mpsc::Receiver<Bytes>,
    closing: &Closing,
    write_timeout: Duration,
) -> Result<()> {
    let stalled = || {
        pingora_error::Error::explain(
            ErrorType::WriteTimedout,
            format!("stream client read nothing for {write_timeout:?}"),
        )
    };
    loop {
        let chunk = tokio::select! {
            biased;
            () = closing.closed() => {
                session.set_keepalive(None);
                break;
            }
            chunk = rx.recv() => match chunk {
                Some(chunk) => chunk,
                None => break,
            },
        };
        tokio::time::timeout(write_timeout, session.write_response_body(chunk, false))
            .await
            .map_err(|_| stalled())??;
    }
    tokio::time::timeout(
        write_timeout,
        session.write_response_body(Bytes::new(), true),
    )
    .await
    .map_err(|_| stalled())?
}

/// The management API alone, as a Pingora HTTP app: `admin_listen` (a token unless
/// `admin_loopback_trusted` and the client is local) and the control socket (trusted).
/// HTTP/1.1 keep-alive as the proxy's listeners; answers stream (SSE).
pub struct ManagementApp {
    management: Arc<dyn Management>,
    trust: Trust,
    /// Set once the service stops: idle keep-alive reads give up, open streams end.
    closing: Closing,
}

impl ManagementApp {
    /// The control socket: every client is trusted (the socket is mode 0600).
    pub fn control(management: Arc<dyn Management>) -> Self {
        Self::new(management, Trust::Always)
    }

    /// `admin_listen`: a token is required, except from loopback when `loopback_trusted`.
    pub fn admin(management: Arc<dyn Management>, loopback_trusted: bool) -> Self {
        let trust = match loopback_trusted {
            true => Trust::Loopback,
            false => Trust::Token,
        };
        Self::new(management, trust)
    }

    fn new(management: Arc<dyn Management>, trust: Trust) -> Self {
        ManagementApp {
            management,
            trust,
            closing: Closing::default(),
        }
    }

    /// A Pingora service named `name` running this app (listeners to be added).
    pub fn into_service(self, name: &str) -> Service<ManagementApp> {
        Service::new(name.to_string(), self)
    }
}

#[async_trait]
impl HttpServerApp for ManagementApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if self.trust == Trust::Always && !crate::peer::control_peer_allowed(&session) {
            return None; // dropped: the connection closes unanswered
        }
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            // Stopping: drop an idle keep-alive connection.
            () = self.closing.closed() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            // Logged as Pingora's proxy service logs them (these services used to be one).
            Err(mut e) => {
                e.as_down();
                let kind = session.session_type();
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    tracing::debug!("Fail to proxy: {e}, downstream session type: {kind}");
                    if let Err(e) = session.respond_error(400).await {
                        tracing::error!("failed to send error response to downstream: {e}");
                    }
                } else {
                    tracing::error!("Fail to proxy: {e}, downstream session type: {kind}");
                }
                session.shutdown().await;
                return None;
            }
        }
        if session.req_header().method == http::Method::CONNECT {
            if let Err(e) = session.respond_error(405).await {
                tracing::error!("failed to send error response to downstream: {e}");
            }
            session.shutdown().await;
            return None;
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let id = request_id(session.req_header());
        let client = peer_ip(&session);
        match serve(
            &*self.management,
            &mut session,
            &id,
            client,
            self.trust,
            &self.closing,
        )
        .await
        {
            Ok(()) => {
                let settings = HttpPersistentSettings::for_session(&session);
                session
                    .finish()
                    .await
                    .ok()
                    .flatten()
                    .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
            }
            Err(e) => {
                let (code, msg) = status_for(&e, None);
                if code > 0 && session.response_written().is_none() {
                    if let Err(err) = write_plain(&mut session, &id, code, &msg).await {
                        tracing::debug!(error = %err, "could not send error response");
                    }
                }
                let summary = session.request_summary();
                tracing::error!("Fail to filter request: {e}, status: {code}, {summary}");
                session.on_proxy_failure(e);
                None
            }
        }
    }

    async fn http_cleanup(&self) {
        self.closing.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A session whose request head has been read and whose streamed answer has begun, over
    /// an in-memory pipe with a 1 KiB window; the client end is returned unread.
    async fn streaming_session() -> (ServerSession, tokio::io::DuplexStream) {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /api/logs/stream HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut session = ServerSession::new_http1(Box::new(server));
        assert!(session.read_request().await.unwrap());
        let mut head = ResponseHeader::build(200, None).unwrap();
        head.insert_header(http::header::TRANSFER_ENCODING, "chunked")
            .unwrap();
        session.write_response_header(Box::new(head)).await.unwrap();
        (session, client)
    }

    fn head(method: &str, headers: &[(&'static str, &str)]) -> pingora_http::RequestHeader {
        let mut req = pingora_http::RequestHeader::build(method, b"/api/instances", None).unwrap();
        for (k, v) in headers {
            req.append_header(*k, *v).unwrap();
        }
        req
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST:9090",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "attacker.example",
            "localhost.attacker.example",
            "10.0.0.1:9090",
            "[::2]:80",
            "[::1]x",
            "",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    /// Regression (review M1): any Host, Origin and Content-Type were trusted from loopback.
    #[test]
    fn loopback_trust_needs_a_loopback_host_same_origin_and_json_writes() {
        let host = ("host", "127.0.0.1:9090");
        assert_eq!(loopback_request(&head("GET", &[host])), Loopback::Trusted);
        assert_eq!(
            loopback_request(&head("GET", &[("host", "attacker.example")])),
            Loopback::Token,
            "DNS rebinding"
        );
        assert_eq!(loopback_request(&head("GET", &[])), Loopback::Token);
        let json = ("content-type", "application/json; charset=utf-8");
        let len = ("content-length", "2");
        assert_eq!(
            loopback_request(&head("POST", &[host, json, len])),
            Loopback::Trusted
        );
        let same = ("origin", "http://127.0.0.1:9090");
        assert_eq!(
            loopback_request(&head("POST", &[host, same, json, len])),
            Loopback::Trusted
        );
        for bad in [
            vec![host, ("origin", "https://attacker.example"), json, len],
            vec![host, ("origin", "null"), json, len],
            vec![host, ("origin", "http://127.0.0.1:9091"), json, len],
            vec![host, ("sec-fetch-site", "cross-site"), json, len],
        ] {
            assert!(
                matches!(
                    loopback_request(&head("POST", &bad)),
                    Loopback::Refuse(403, _)
                ),
                "{bad:?}"
            );
        }
        for bad in [
            vec![host, ("content-type", "text/plain"), len],
            vec![host, len],
            vec![host, ("content-type", "application/x-www-form-urlencoded")],
        ] {
            assert!(
                matches!(
                    loopback_request(&head("POST", &bad)),
                    Loopback::Refuse(415, _)
                ),
                "{bad:?}"
            );
        }
        // A body-less DELETE needs no content type; one with a body does.
        assert_eq!(
            loopback_request(&head("DELETE", &[host])),
            Loopback::Trusted
        );
        assert!(matches!(
            loopback_request(&head("PUT", &[host, len])),
            Loopback::Refuse(415, _)
        ));
    }

    #[tokio::test]
    async fn a_stream_client_that_reads_nothing_is_dropped_after_the_write_timeout() {
        let (mut session, _client) = streaming_session().await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move { while tx.send(Bytes::from(vec![b'x'; 1024])).await.is_ok() {} });
        let closing = Closing::default();
        let timeout = Duration::from_millis(300);
        let e = tokio::time::timeout(
            Duration::from_secs(20),
            write_stream(&mut session, &mut rx, &closing, timeout),
        )
        .await
        .expect("a stalled stream client was not dropped")
        .unwrap_err();
        assert_eq!(e.etype(), &ErrorType::WriteTimedout);
    }

    #[tokio::test]
    async fn a_stream_ends_on_shutdown() {
        let (mut session, _client) = streaming_session().await;
        let (_tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let closing = Arc::new(Closing::default());
        let c = closing.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.close();
        });
        // The producer (`_tx`) is still alive: only the shutdown ends the stream.
        tokio::time::timeout(
            Duration::from_secs(20),
            write_stream(&mut session, &mut rx, &closing, Duration::from_secs(30)),
        )
        .await
        .expect("the stream did not end on shutdown")
        .unwrap();
    }
}
