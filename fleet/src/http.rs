//! The HTTP client the fleet uses (health checks, webhooks, aggregation, placement) and short
//! error texts.

use std::time::Duration;

use crate::Server;

/// The client for health checks and webhooks: no proxy from the environment, no redirects.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tenement-fleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|e| {
            tracing::error!("fleet: cannot build the HTTP client ({e}); using the default one");
            reqwest::Client::new()
        })
}

/// A short reason for a failed request: "connection refused", "no answer within 5000ms", ...
pub(crate) fn error_text(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}ms", timeout.as_millis());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                _ => io.to_string(),
            };
        }
        last = s.to_string();
        source = s.source();
    }
    last
}

/// `GET {url}{path}` on a server: with its token as `Authorization: Bearer`, and its domain as
/// the `Host` header when the url's host differs (a `ten` server answers `/health`, `/metrics`
/// and `/api/*` only on its bare domain: `http://10.0.0.7:8080` with domain `eu1.example.com`
/// must be asked for `Host: eu1.example.com`).
pub(crate) fn get(
    client: &reqwest::Client,
    s: &Server,
    path: &str,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    request(client, reqwest::Method::GET, s, path, timeout)
}

/// `{method} {url}{path}` on a server, with its token and Host as [`get`] sends them.
pub(crate) fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    s: &Server,
    path: &str,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let mut req = client
        .request(method, format!("{}{path}", s.url))
        .timeout(timeout);
    if let Some(t) = &s.token {
        req = req.bearer_auth(t);
    }
    if url_host(&s.url) != Some(s.domain.as_str()) {
        req = req.header(reqwest::header::HOST, s.domain.as_str());
    }
    req
}

/// The host of a stored (normalized) url: `http://h:1` -> `h`, `http://[::1]:1` -> `[::1]`.
fn url_host(url: &str) -> Option<&str> {
    let authority = url.split_once("://")?.1;
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next();
    }
    authority.split(':').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("http://a.example.com"), Some("a.example.com"));
        assert_eq!(url_host("https://10.0.0.7:8443"), Some("10.0.0.7"));
        assert_eq!(url_host("http://[::1]:8080"), Some("[::1]"));
        assert_eq!(url_host("nope"), None);
    }
}
