//! `/api/logs` (newest first) and `/api/logs/stream` (SSE, with `lagged` events).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use tenement_proxy::management::{Body, Response};
use tenement_supervisor::logs::{LogError, LogLine, LogQuery};

use super::{Api, ApiError, ApiResult};
use crate::wire::LogsQuery;

/// Whether `l` passes the live stream's filters (process, id, stream).
fn matches(f: &LogsQuery, l: &LogLine) -> bool {
    f.process.as_ref().is_none_or(|p| *p == l.process)
        && f.id.as_ref().is_none_or(|i| *i == l.instance)
        && f.stream.is_none_or(|s| s.as_str() == l.stream)
}

impl Api {
    pub(crate) fn logs(&self, q: Option<&str>) -> ApiResult {
        let q = LogsQuery::parse(q).map_err(ApiError::bad)?;
        let query = LogQuery {
            process: q.process,
            instance: q.id,
            stream: q.stream,
            search: q.search,
            since: q.since.and_then(|d| SystemTime::now().checked_sub(d)),
            before_id: q.before_id,
            limit: q.limit.map(|n| n.max(0) as usize).unwrap_or(0),
        };
        match self.logs.query(&query) {
            Ok(lines) => Ok((
                StatusCode::OK,
                serde_json::to_value(lines).unwrap_or(Value::Null),
            )),
            Err(e @ LogError::BadSearch { .. }) => Err(ApiError::bad(e.to_string())),
            Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }

    /// Server-sent events: `data: {line}` per new line, `event: lagged` with the count a slow
    /// client missed, a keep-alive comment every 15 s.
    pub(crate) fn logs_stream(&self, q: Option<&str>) -> Result<Response, ApiError> {
        let f = LogsQuery::parse(q).map_err(ApiError::bad)?.stream_filters();
        let mut rx = self.logs.subscribe();
        let (tx, body) = tokio::sync::mpsc::channel::<Bytes>(64);
        tokio::spawn(async move {
            if tx
                .send(Bytes::from_static(b": connected\n\n"))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let event = tokio::select! {
                    r = rx.recv() => match r {
                        Ok(line) if matches(&f, &line) => format!("data: {}\n\n", json!(*line)),
                        Ok(_) => continue,
                        Err(RecvError::Lagged(n)) => format!("event: lagged\ndata: {}\n\n", json!({ "missed": n })),
                        Err(RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(Duration::from_secs(15)) => ": keep-alive\n\n".to_string(),
                    _ = tx.closed() => return,
                };
                if tx.send(Bytes::from(event)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        let mut resp = http::Response::new(Body::Stream(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }
}
