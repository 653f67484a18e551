//! The outage webhook: `POST {"server", "status": "offline", "since"}` once per outage.
//!
//! The health loop decides WHEN (offline longer than `webhook_after`, not yet sent for this
//! outage); this sender only delivers, retrying a failed POST with exponential backoff.

use std::time::Duration;

use serde::Serialize;

/// The JSON body.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct OutagePayload {
    pub server: String,
    pub status: &'static str,
    /// When the server went offline, RFC 3339.
    pub since: String,
}

impl OutagePayload {
    pub fn offline(server: &str, since: String) -> Self {
        OutagePayload {
            server: server.to_string(),
            status: "offline",
            since,
        }
    }
}

#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
    url: String,
    /// Wait before the 2nd try; doubled after each failure.
    pub first_backoff: Duration,
    /// Tries in all (the first POST included).
    pub tries: u32,
    /// Per-try timeout.
    pub timeout: Duration,
}

impl WebhookSender {
    /// 5 tries, waiting 1s, 2s, 4s, 8s between them, 10s per try.
    pub fn new(url: &str) -> Self {
        WebhookSender {
            client: crate::http::client(),
            url: url.to_string(),
            first_backoff: Duration::from_secs(1),
            tries: 5,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Delivers one payload: Ok(the number of tries it took) on a 2xx, else the last error
    /// after `tries` attempts.
    pub async fn send(&self, payload: &OutagePayload) -> Result<u32, String> {
        let mut backoff = self.first_backoff;
        let mut last = String::new();
        let tries = self.tries.max(1);
        for attempt in 1..=tries {
            match self.post(payload).await {
                Ok(()) => return Ok(attempt),
                Err(e) => last = e,
            }
            if attempt < tries {
                tracing::debug!(url = %self.url, attempt, error = %last, "webhook failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(format!("{last} ({tries} tries)"))
    }

    async fn post(&self, payload: &OutagePayload) -> Result<(), String> {
        let resp = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(payload)
            .send()
            .await
            .map_err(|e| crate::http::error_text(&e, self.timeout))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::testing::{Answer, TestServer};

    fn payload() -> OutagePayload {
        OutagePayload::offline("s2", "2026-11-23T11:20:49.540Z".into())
    }

    /// Answers `fail` times with `status`, then 200.
    async fn receiver(fail: u32, status: u16) -> TestServer {
        let n = Arc::new(AtomicU32::new(0));
        TestServer::start(move |_| {
            if n.fetch_add(1, Ordering::SeqCst) < fail {
                Answer::status(status)
            } else {
                Answer::status(200)
            }
        })
        .await
    }

    #[tokio::test]
    async fn posts_the_json_once_on_success() {
        let rx = receiver(0, 200).await;
        let sender = WebhookSender::new(&format!("{}/hook", rx.url()));
        assert_eq!(sender.send(&payload()).await, Ok(1));
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            (reqs[0].method.as_str(), reqs[0].path.as_str()),
            ("POST", "/hook")
        );
        assert_eq!(reqs[0].header("content-type"), Some("application/json"));
        assert_eq!(
            reqs[0].json(),
            serde_json::json!({"server": "s2", "status": "offline", "since": "2026-11-23T11:20:49.540Z"})
        );
    }

    #[tokio::test]
    async fn retries_failures_with_backoff_then_stops() {
        // Two 500s, then 200: three tries, waiting 20ms + 40ms between them.
        let rx = receiver(2, 500).await;
        let mut sender = WebhookSender::new(&rx.url());
        sender.first_backoff = Duration::from_millis(20);
        let start = std::time::Instant::now();
        assert_eq!(sender.send(&payload()).await, Ok(3));
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert_eq!(rx.requests().len(), 3);

        // Always failing: exactly `tries` POSTs, then an error naming the last failure.
        let rx = receiver(u32::MAX, 503).await;
        let mut sender = WebhookSender::new(&rx.url());
        sender.first_backoff = Duration::from_millis(1);
        let err = sender.send(&payload()).await.unwrap_err();
        assert!(err.contains("503") && err.contains("5 tries"), "{err}");
        assert_eq!(rx.requests().len(), 5);
    }

    #[tokio::test]
    async fn an_unreachable_receiver_is_an_error() {
        let mut sender = WebhookSender::new(&crate::testing::closed_url().await);
        sender.first_backoff = Duration::from_millis(1);
        sender.tries = 2;
        let err = sender.send(&payload()).await.unwrap_err();
        assert!(err.contains("refused") && err.contains("2 tries"), "{err}");
    }
}
