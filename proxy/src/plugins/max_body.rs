//! `max_body` {limit}: request bodies larger than `limit` bytes -> 413.
//!
//! A declared `Content-Length` over the limit is refused before anything reaches the upstream;
//! a body without one (chunked) is counted as it streams and cut off once it passes the limit.
//! This comes on top of the process's own `max_body` setting: the smaller limit wins.

use super::{content_length, Plugin, Reply, RequestInfo};

pub(crate) const KIND: &str = "max_body";

/// Refuse request bodies larger than a limit.
#[derive(Debug)]
pub struct MaxBody {
    limit: u64,
}

impl MaxBody {
    pub fn new(limit: u64) -> MaxBody {
        MaxBody { limit }
    }

    fn too_large(&self) -> Reply {
        let msg = format!(
            "payload too large: request body larger than {} bytes",
            self.limit
        );
        Reply::text(413, &msg)
    }
}

impl Plugin for MaxBody {
    fn name(&self) -> &'static str {
        KIND
    }

    fn on_request(&self, req: &RequestInfo<'_>) -> Option<Reply> {
        match content_length(req.header) {
            Some(n) if n > self.limit => Some(self.too_large()),
            _ => None,
        }
    }

    fn wants_body(&self) -> bool {
        true
    }

    fn on_body(&self, seen_so_far: u64) -> Option<Reply> {
        (seen_so_far > self.limit).then(|| self.too_large())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plugins::tests::{get, info};

    #[test]
    fn content_length_over_the_limit() {
        let m = MaxBody::new(1024);
        let mut req = get("/upload");
        assert!(m.on_request(&info(&req, "::1")).is_none(), "no body");
        req.insert_header("content-length", "1024").unwrap();
        assert!(
            m.on_request(&info(&req, "::1")).is_none(),
            "exactly the limit"
        );
        req.insert_header("content-length", "1025").unwrap();
        let reply = m.on_request(&info(&req, "::1")).unwrap();
        assert_eq!(reply.status, 413);
        assert!(String::from_utf8_lossy(&reply.body).contains("1024 bytes"));
    }

    #[test]
    fn streamed_body_over_the_limit() {
        let m = MaxBody::new(10);
        assert!(m.wants_body());
        assert!(m.on_body(0).is_none());
        assert!(m.on_body(10).is_none());
        assert_eq!(m.on_body(11).unwrap().status, 413);
    }

    #[test]
    fn zero_means_no_body_at_all() {
        let m = MaxBody::new(0);
        let mut req = get("/");
        req.insert_header("content-length", "0").unwrap();
        assert!(m.on_request(&info(&req, "::1")).is_none());
        assert!(m.on_body(1).is_some());
    }
}
