//! `headers` {request_set, request_remove, response_set, response_remove}: edit the request sent
//! upstream and the response sent back. In each direction removals run first, then sets, so
//! a header both removed and set ends up with the set value. A set replaces every existing
//! value of that header. Names and values are checked once, at build time.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

use super::Plugin;

pub(crate) const KIND: &str = "headers";

/// Header edits for one direction.
#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    fn new(set: &BTreeMap<String, String>, remove: &[String], side: &str) -> Result<Self, String> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{side}: invalid header name {n:?}"))
        };
        let remove = remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?;
        let set = set
            .iter()
            .map(|(n, v)| {
                // from_bytes (not from_str): non-ASCII UTF-8 is allowed as obs-text.
                let value = HeaderValue::from_bytes(v.as_bytes()).map_err(|_| {
                    format!("{side}: header {n}: the value has a control character")
                })?;
                Ok((name(n)?, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Edits { remove, set })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }
}

/// Set and remove headers on the upstream request and the client response.
#[derive(Debug)]
pub struct Headers {
    request: Edits,
    response: Edits,
}

impl Headers {
    pub fn new(
        request_set: &BTreeMap<String, String>,
        request_remove: &[String],
        response_set: &BTreeMap<String, String>,
        response_remove: &[String],
    ) -> Result<Headers, String> {
        Ok(Headers {
            request: Edits::new(request_set, request_remove, "request")?,
            response: Edits::new(response_set, response_remove, "response")?,
        })
    }
}

impl Plugin for Headers {
    fn name(&self) -> &'static str {
        KIND
    }

    fn on_upstream_request(&self, req: &mut RequestHeader) {
        if self.request.is_empty() {
            return;
        }
        for name in &self.request.remove {
            req.remove_header(name);
        }
        for (name, value) in &self.request.set {
            if let Err(e) = req.insert_header(name.clone(), value.clone()) {
                tracing::debug!(header = %name, error = %e, "headers plugin: cannot set");
            }
        }
    }

    fn on_response(&self, resp: &mut ResponseHeader) {
        if self.response.is_empty() {
            return;
        }
        for name in &self.response.remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.response.set {
            if let Err(e) = resp.insert_header(name.clone(), value.clone()) {
                tracing::debug!(header = %name, error = %e, "headers plugin: cannot set");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plugins::tests::get;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn edits_the_upstream_request() {
        let h = Headers::new(
            &map(&[("X-Env", "prod"), ("x-multi", "one")]),
            &list(&["Cookie", "x-multi"]),
            &BTreeMap::new(),
            &[],
        )
        .unwrap();
        let mut req = get("/");
        req.insert_header("cookie", "a=b").unwrap();
        req.append_header("x-multi", "1").unwrap();
        req.append_header("x-multi", "2").unwrap();
        req.insert_header("x-keep", "yes").unwrap();
        h.on_upstream_request(&mut req);
        assert!(req.headers.get("cookie").is_none());
        assert_eq!(req.headers.get("x-env").unwrap(), "prod");
        let multi: Vec<_> = req.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one"], "removed, then set once");
        assert_eq!(req.headers.get("x-keep").unwrap(), "yes");
    }

    #[test]
    fn edits_the_response() {
        let h = Headers::new(
            &BTreeMap::new(),
            &[],
            &map(&[
                ("x-frame-options", "DENY"),
                ("x-note", "héllo, wörld; \"q\""),
            ]),
            &list(&["server"]),
        )
        .unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("server", "gunicorn").unwrap();
        resp.insert_header("x-frame-options", "SAMEORIGIN").unwrap();
        h.on_response(&mut resp);
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers.get("x-frame-options").unwrap(), "DENY");
        let note = resp.headers.get("x-note").unwrap().as_bytes();
        assert_eq!(note, "héllo, wörld; \"q\"".as_bytes());
        // The request direction is untouched.
        let mut req = get("/");
        h.on_upstream_request(&mut req);
        assert!(req.headers.is_empty());
    }

    #[test]
    fn rejects_what_http_cannot_carry() {
        let bad_value = Headers::new(&map(&[("x-a", "a\u{1}b")]), &[], &BTreeMap::new(), &[]);
        assert!(bad_value.unwrap_err().starts_with("request: header x-a"));
        let bad_name = Headers::new(&BTreeMap::new(), &[], &BTreeMap::new(), &list(&["a b"]));
        assert!(bad_name
            .unwrap_err()
            .starts_with("response: invalid header name"));
    }
}
