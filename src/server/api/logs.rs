//! `/api/logs` (newest first) and `/api/logs/stream` (SSE, with `lagged` events).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use tenement_conf::parse_duration;
use tenement_proxy::management::{Body, Response};
use tenement_supervisor::logs::{LogError, LogLine, LogQuery};
use tenement_supervisor::Stream;

use super::{query_param, Api, ApiError, ApiResult};

/// Filters shared by the query and the stream.
struct Filter {
    process: Option<String>,
    instance: Option<String>,
    stream: Option<Stream>,
}

impl Filter {
    fn parse(q: Option<&str>) -> Result<Self, ApiError> {
        let stream = match query_param(q, "stream").as_deref() {
            None | Some("") => None,
            Some("stdout") => Some(Stream::Stdout),
            Some("stderr") => Some(Stream::Stderr),
            Some(other) => {
                return Err(ApiError::bad(format!(
                    "stream: expected stdout or stderr, got {other:?}"
                )))
            }
        };
        Ok(Filter {
            process: query_param(q, "process").filter(|s| !s.is_empty()),
            instance: query_param(q, "id").filter(|s| !s.is_empty()),
            stream,
        })
    }

    fn matches(&self, l: &LogLine) -> bool {
        self.process.as_ref().is_none_or(|p| *p == l.process)
            && self.instance.as_ref().is_none_or(|i| *i == l.instance)
            && self.stream.is_none_or(|s| s.as_str() == l.stream)
    }
}

impl Api {
    pub(crate) fn logs(&self, q: Option<&str>) -> ApiResult {
        let f = Filter::parse(q)?;
        let since = match query_param(q, "since").filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let d = parse_duration(&s).map_err(|_| {
                    ApiError::bad(format!(
                        "since: expected a duration like \"10m\", got {s:?}"
                    ))
                })?;
                Some(SystemTime::now() - d)
            }
        };
        let num = |key: &str| -> Result<Option<i64>, ApiError> {
            query_param(q, key)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<i64>()
                        .map_err(|_| ApiError::bad(format!("{key}: expected a number, got {s:?}")))
                })
                .transpose()
        };
        let query = LogQuery {
            process: f.process,
            instance: f.instance,
            stream: f.stream,
            search: query_param(q, "search"),
            since,
            before_id: num("before_id")?,
            limit: num("limit")?.map(|n| n.max(0) as usize).unwrap_or(0),
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
        let f = Filter::parse(q)?;
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
                        Ok(line) if f.matches(&line) => format!("data: {}\n\n", json!(*line)),
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
