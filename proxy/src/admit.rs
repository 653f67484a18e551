//! The routing decision, without I/O: where the table sends a request (`lookup`) and what to
//! do with it there (`admit`). The proxy's `request_filter` runs these, wakes an idle
//! instance (or waits for a fleet tenant being placed) when told to, and writes every answer
//! in one place.

use std::sync::Arc;

use pingora_http::RequestHeader;

use crate::host;
use crate::plugins::Reply;
use crate::table::{Availability, Backend, Miss, Remote, Table, Target};

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Send it upstream; its body may be up to `max_body` bytes.
    Proxy { max_body: u64 },
    /// Answer with this status and a plain-text message.
    Answer(u16, String),
    /// A plugin's answer.
    Reply(Reply),
    /// Serve the management API.
    Management,
    /// Wake this idle instance, then route again.
    Wake(Arc<Backend>),
    /// Wait while this fleet tenant is placed on another server, then route again.
    Place(Arc<Remote>),
}

/// Route `req` by its Host (or `:authority`) and path, borrowing both (no allocation unless
/// there is no route, or a prefix host's path is not normal): the target and how many path
/// bytes to strip, or the answer. When a stripping prefix route matched a path that was not
/// normal, `req`'s URI becomes the normalised path (and query) the bytes are stripped from;
/// otherwise `req` is left as it came.
#[inline]
pub(crate) fn lookup(table: &Table, req: &mut RequestHeader) -> Result<(Target, usize), Decision> {
    let raw_host: &[u8] = match req.headers.get(http::header::HOST) {
        Some(h) => h.as_bytes(),
        None => req
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .unwrap_or_default(),
    };
    let host = match host::normalize(raw_host) {
        Ok(h) => h,
        Err(e) => return Err(Decision::Answer(400, format!("bad request: {e}"))),
    };
    let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let (target, strip, rewrite) = match table.route(&host, path) {
        Ok(routed) => (
            routed.target.clone(),
            routed.strip.map(str::len).unwrap_or(0),
            routed.rewrite,
        ),
        Err(Miss::NoRoute) => {
            return Err(Decision::Answer(
                404,
                format!("no route for host \"{host}\""),
            ))
        }
        Err(Miss::EncodedSlash) => {
            return Err(Decision::Answer(
                400,
                "bad request: an encoded slash (%2F or %5C) in the path would change its route"
                    .to_string(),
            ))
        }
        Err(Miss::AboveRoot) => {
            return Err(Decision::Answer(
                400,
                "bad request: the path climbs above the root".to_string(),
            ))
        }
    };
    if let Some(path) = rewrite {
        rewrite_path(req, &path)?;
    }
    Ok((target, strip))
}

/// Replace `req`'s path and query with `path` (normalised), keeping its scheme and authority.
#[cold]
fn rewrite_path(req: &mut RequestHeader, path: &str) -> Result<(), Decision> {
    let bad = |e: &dyn std::fmt::Display| Decision::Answer(400, format!("bad request: {e}"));
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(path.parse().map_err(|e| bad(&e))?);
    req.set_uri(http::Uri::from_parts(parts).map_err(|e| bad(&e))?);
    Ok(())
}

/// What to do with a request routed to `target` that declares `content_length` body bytes.
/// `may_wake`: an idle instance may be woken, or a tenant being placed waited for (there is a
/// waker and this request has not waited yet); otherwise it is answered 503.
#[inline]
pub(crate) fn admit(target: &Target, content_length: Option<u64>, may_wake: bool) -> Decision {
    match target {
        Target::Management => Decision::Management,
        Target::Instance(b) if may_wake && b.availability == Availability::Idle => {
            Decision::Wake(b.clone())
        }
        Target::Remote(r) if may_wake && r.placing => Decision::Place(r.clone()),
        _ => match target.admission() {
            Ok(max_body) if content_length.is_some_and(|n| n > max_body) => {
                Decision::Answer(413, format!("request body larger than {max_body} bytes"))
            }
            Ok(max_body) => Decision::Proxy { max_body },
            Err(msg) => Decision::Answer(503, msg),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::table::{ProcessOpts, Remote, TableBuilder, TenantTarget};
    use tenement_conf::{Addr, Route};

    fn opts(name: &str, max_body: u64) -> Arc<ProcessOpts> {
        Arc::new(ProcessOpts {
            name: name.into(),
            request_timeout: Duration::from_secs(30),
            max_body,
            metrics: None,
            plugins: None,
            upstream_http2: false,
        })
    }

    fn backend(o: &Arc<ProcessOpts>, id: &str, port: u16, a: Availability) -> Arc<Backend> {
        let addr = (port > 0).then(|| Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        Arc::new(Backend::new(o.clone(), id, addr, 100, a, Arc::default()))
    }

    /// `api` (two healthy instances, 1 KiB bodies), `web` (idle `a`, down `b`, nothing
    /// eligible), `/api` on `example.com` stripped to `api:prod`, two fleet tenants.
    fn table() -> Table {
        let api = opts("api", 1024);
        let web = opts("web", 1 << 20);
        let up = Availability::Up { healthy: true };
        let mut b = TableBuilder::new("example.com");
        b.process(
            api.clone(),
            vec![backend(&api, "prod", 1, up), backend(&api, "v2", 2, up)],
        );
        b.process(
            web.clone(),
            vec![
                backend(&web, "a", 3, Availability::Idle),
                backend(&web, "b", 0, Availability::Down),
            ],
        );
        b.route(Route {
            host: "example.com".into(),
            prefix: "/api".into(),
            process: "api".into(),
            instance: Some("prod".into()),
            strip_prefix: true,
        });
        b.route(Route {
            host: "example.com".into(),
            prefix: "/admin".into(),
            process: "api".into(),
            instance: None,
            strip_prefix: false,
        });
        b.tenant(
            "acme.test",
            TenantTarget::Remote(Box::new(Remote::to(
                "acme",
                "s2",
                "acme.app.s2.example.com".into(),
                SocketAddr::from(([127, 0, 0, 1], 9)),
                false,
                "",
            ))),
        );
        b.tenant(
            "gone.test",
            TenantTarget::Remote(Box::new(Remote::unavailable("gone"))),
        );
        b.tenant(
            "moving.test",
            TenantTarget::Remote(Box::new(Remote::placing("moving"))),
        );
        b.tenant(
            "failed.test",
            TenantTarget::Remote(Box::new(Remote::unavailable_because(
                "failed",
                "placing it on s3 failed: HTTP 500",
            ))),
        );
        b.build()
    }

    fn req(host: Option<&str>, path: &str, content_length: Option<u64>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        if let Some(n) = content_length {
            r.insert_header("content-length", n).unwrap();
        }
        r
    }

    /// What `request_filter` decides on its first pass, as text.
    fn decide(
        table: &Table,
        host: Option<&str>,
        path: &str,
        len: Option<u64>,
        wake: bool,
    ) -> String {
        let mut r = req(host, path, len);
        match lookup(table, &mut r) {
            Err(d) => show(d),
            Ok((target, strip)) => format!("{} strip={strip}", show(admit(&target, len, wake))),
        }
    }

    fn show(d: Decision) -> String {
        match d {
            Decision::Proxy { max_body } => format!("proxy max_body={max_body}"),
            Decision::Answer(status, msg) => format!("{status} {msg}"),
            Decision::Reply(r) => format!("reply {}", r.status),
            Decision::Management => "management".into(),
            Decision::Wake(b) => format!("wake {}", b.key),
            Decision::Place(r) => format!("place {}", r.tenant),
        }
    }

    #[test]
    fn a_healthy_pool_is_proxied_with_its_body_limit() {
        let t = table();
        assert_eq!(
            decide(&t, Some("api.example.com"), "/x", None, true),
            "proxy max_body=1024 strip=0"
        );
        assert_eq!(
            decide(&t, Some("API.Example.com:8080"), "/", Some(1024), false),
            "proxy max_body=1024 strip=0"
        );
        assert_eq!(
            decide(&t, Some("prod.api.example.com"), "/", None, true),
            "proxy max_body=1024 strip=0"
        );
    }

    #[test]
    fn a_prefix_route_reports_the_bytes_to_strip() {
        let t = table();
        assert_eq!(
            decide(&t, Some("example.com"), "/api/users", None, true),
            "proxy max_body=1024 strip=4"
        );
        // The rest of the bare domain is the management API.
        assert_eq!(
            decide(&t, Some("example.com"), "/apiary", None, true),
            "management strip=0"
        );
        assert_eq!(
            decide(&t, Some("example.com"), "/", Some(1 << 30), true),
            "management strip=0"
        );
    }

    /// The path the upstream is sent (before the prefix is stripped) and the decision.
    fn forwarded(table: &Table, host: &str, path: &str) -> (String, String) {
        let mut r = req(Some(host), path, None);
        let d = match lookup(table, &mut r) {
            Err(d) => show(d),
            Ok((target, strip)) => format!("{} strip={strip}", show(admit(&target, None, true))),
        };
        (r.uri.to_string(), d)
    }

    #[test]
    fn prefix_routes_match_the_normalised_path_review_m3() {
        let t = table();
        // Not stripped: matched normalised, forwarded as it came.
        for p in ["/%61dmin/x", "/x/../admin/x", "//admin/x", "/./%61dmin//x"] {
            assert_eq!(
                forwarded(&t, "example.com", p),
                (p.to_string(), "proxy max_body=1024 strip=0".to_string()),
                "{p}"
            );
        }
        // Stripped: the normalised path (and the query) loses the prefix.
        for (p, sent) in [
            ("/%61pi/users", "/api/users"),
            ("/x/../api?q=%2e", "/api?q=%2e"),
            ("/api/./users/../me?a=1", "/api/me?a=1"),
            ("/api//users", "/api/users"),
        ] {
            assert_eq!(
                forwarded(&t, "example.com", p),
                (sent.to_string(), "proxy max_body=1024 strip=4".to_string()),
                "{p}"
            );
        }
        // A normal path is left alone; a miss of every prefix goes as it came.
        assert_eq!(
            forwarded(&t, "example.com", "/api/users?x=1").0,
            "/api/users?x=1"
        );
        assert_eq!(
            forwarded(&t, "example.com", "/%61piary"),
            ("/%61piary".to_string(), "management strip=0".to_string())
        );
        assert_eq!(
            forwarded(&t, "example.com", "/a%2Fpi/x").1,
            "management strip=0",
            "an encoded '/' is not a separator"
        );
    }

    #[test]
    fn a_path_above_the_root_is_400_on_a_host_with_prefix_routes() {
        let t = table();
        for p in ["/../admin", "/a/../../api", "/%2e%2e/x", "/..?x"] {
            assert_eq!(
                decide(&t, Some("example.com"), p, None, true),
                "400 bad request: the path climbs above the root",
                "{p}"
            );
        }
        // A host without prefix routes never looks at the path: its upstream judges it.
        assert_eq!(
            forwarded(&t, "api.example.com", "/../x"),
            (
                "/../x".to_string(),
                "proxy max_body=1024 strip=0".to_string()
            )
        );
    }

    #[test]
    fn encoded_slashes_that_would_change_the_route_are_400() {
        let t = table();
        // A backend that decodes %2F before resolving `..` reads these as /admin/...
        for p in [
            "/x%2F..%2Fadmin",
            "/x%2f..%2fadmin/y",
            "/x%5C..%5Cadmin",
            "/api%2F..%2F..%2Fx",
        ] {
            assert_eq!(
                decide(&t, Some("example.com"), p, None, true),
                "400 bad request: an encoded slash (%2F or %5C) in the path would change its route",
                "{p}"
            );
        }
        // Both readings take the same route: forwarded as it came.
        for p in ["/admin/a%2Fb", "/api/x%2F..%2Fy", "/a%2Fpi/x"] {
            assert_eq!(forwarded(&t, "example.com", p).0, p, "{p}");
        }
    }

    #[test]
    fn bodies_over_the_limit_are_refused_before_anything_is_sent() {
        let t = table();
        assert_eq!(
            decide(&t, Some("api.example.com"), "/", Some(1025), true),
            "413 request body larger than 1024 bytes strip=0"
        );
    }

    #[test]
    fn misses_are_answered_400_or_404() {
        let t = table();
        assert_eq!(
            decide(&t, None, "/", None, true),
            "400 bad request: missing Host header"
        );
        assert_eq!(
            decide(&t, Some("a b"), "/", None, true),
            "400 bad request: malformed Host header"
        );
        assert_eq!(
            decide(&t, Some("nope.example.com"), "/", None, true),
            "404 no route for host \"nope.example.com\""
        );
        // HTTP/2: no Host header, the :authority routes.
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.set_uri("https://api.example.com/x".parse().unwrap());
        assert!(matches!(lookup(&t, &mut r), Ok((Target::Pool(_), 0))));
    }

    #[test]
    fn an_idle_instance_is_woken_once_then_answered_503() {
        let t = table();
        assert_eq!(
            decide(&t, Some("a.web.example.com"), "/", None, true),
            "wake web:a strip=0"
        );
        assert_eq!(
            decide(&t, Some("a.web.example.com"), "/", None, false),
            "503 instance web:a is idle strip=0"
        );
        // A pool is never woken through: it answers with what it has.
        assert_eq!(
            decide(&t, Some("web.example.com"), "/", None, true),
            "503 no healthy instance of \"web\" strip=0"
        );
    }

    #[test]
    fn down_instances_and_lost_tenants_are_503() {
        let t = table();
        assert_eq!(
            decide(&t, Some("b.web.example.com"), "/", None, true),
            "503 instance web:b is not running strip=0"
        );
        // The limit is not checked when there is nowhere to send the body.
        assert_eq!(
            decide(&t, Some("b.web.example.com"), "/", Some(1 << 30), true),
            "503 instance web:b is not running strip=0"
        );
        assert_eq!(
            decide(&t, Some("gone.test"), "/", None, true),
            "503 tenant gone: its server is offline and no other server is online strip=0"
        );
    }

    #[test]
    fn a_tenant_being_placed_is_waited_for_once_then_answered_503_never_404() {
        let t = table();
        assert_eq!(
            decide(&t, Some("moving.test"), "/", None, true),
            "place moving strip=0"
        );
        assert_eq!(
            decide(&t, Some("moving.test"), "/", None, false),
            "503 tenant moving: its server is offline and it is being placed on another strip=0"
        );
        assert_eq!(
            decide(&t, Some("failed.test"), "/", None, true),
            "503 tenant failed: placing it on s3 failed: HTTP 500 strip=0"
        );
    }

    #[test]
    fn remote_tenants_are_proxied_without_a_body_limit() {
        let t = table();
        assert_eq!(
            decide(&t, Some("acme.test"), "/", Some(1 << 40), true),
            format!("proxy max_body={} strip=0", u64::MAX)
        );
    }
}
