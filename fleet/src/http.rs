//! The HTTP client the fleet uses (health checks, webhooks, aggregation) and short error texts.

use std::time::Duration;

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
