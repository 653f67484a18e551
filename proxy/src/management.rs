//! The seam between the proxy and the management API: the proxy hands requests for the bare
//! domain to a [`Management`] implementation (provided by the `ten` binary, which also serves
//! it on `admin_listen` and the control socket), then writes its answer back.

use std::net::IpAddr;

use async_trait::async_trait;
use bytes::Bytes;

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

/// Wakes an idle-stopped instance (scale to zero); implemented by the `ten` binary.
#[async_trait]
pub trait Waker: Send + Sync + 'static {
    /// Resolves once the instance is healthy (and a new table is published), or with why not.
    async fn wake(&self, process: &str, id: &str) -> Result<(), String>;
}

/// Largest management request body read (JSON commands are small).
pub const MAX_BODY: usize = 1 << 20;

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
