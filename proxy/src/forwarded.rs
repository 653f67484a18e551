//! The headers the proxy adds or strips on the way through: the request id, `X-Forwarded-*`,
//! the `strip_prefix` URI rewrite and the hop-by-hop response headers. Pure functions over
//! Pingora's header types (no session), so each rule is unit-tested here.
//!
//! The names ten adds are `HeaderName` constants, inserted with `insert_header_name`: no parse
//! and no copy of the name per message (vendor/pingora-http patch 0001).

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use pingora_core::protocols::http::ServerSession;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::respond::http_status;
use crate::trust::Client;

/// Sent upstream and back to the client with every request.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The TCP peer's IP address, IPv4-mapped IPv6 unmapped (None on a Unix-socket listener).
/// Who the client is, is decided from it by `trust.rs`.
#[inline]
pub(crate) fn peer_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// 128 random bits as 32 lower-case hex digits (no formatting machinery: this runs per request).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, n) in [fastrand::u64(..), fastrand::u64(..)]
        .into_iter()
        .enumerate()
    {
        for i in 0..16 {
            buf[half * 16 + 15 - i] = HEX[((n >> (4 * i)) & 0xf) as usize];
        }
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Keep a client-sent id if it is sane (printable, bounded), else make one.
pub(crate) fn request_id(req: &RequestHeader) -> HeaderValue {
    match req.headers.get(X_REQUEST_ID) {
        Some(v)
            if !v.is_empty()
                && v.len() <= 200
                && v.as_bytes().iter().all(|c| c.is_ascii_graphic()) =>
        {
            v.clone()
        }
        _ => new_request_id(),
    }
}

/// An IP address as a header value; IPv4 without the formatting machinery (per request).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 15];
    let mut n = 0;
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => {
            return HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        }
    };
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + (o / 10) % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Which `X-Forwarded-*` headers the request already carries: one pass over the names (a
/// request has few headers), instead of a hashed lookup per name.
fn forwarded_present(req: &RequestHeader) -> (bool, bool, bool) {
    let (mut xff, mut proto, mut host) = (false, false, false);
    for k in req.headers.keys() {
        let k = k.as_str().as_bytes();
        if k.len() >= 15 && k.starts_with(b"x-forwarded-") {
            match &k[12..] {
                b"for" => xff = true,
                b"proto" => proto = true,
                b"host" => host = true,
                _ => {}
            }
        }
    }
    (xff, proto, host)
}

/// Set `X-Forwarded-For`, `-Proto` and `-Host` on the request going `upstream`, from the
/// `downstream` request as the client sent it, who sent it and whether it came over TLS
/// (SPEC §12). A peer in `trusted_proxies` may supply all three: its `X-Forwarded-For` lines
/// are kept and its address appended, its `-Proto` and `-Host` kept when present. From any
/// other peer the three are replaced: `X-Forwarded-For` is the peer alone, `-Proto` and `-Host`
/// ten's own values. A 400 when a trusted `X-Forwarded-For` cannot be extended.
#[inline]
pub(crate) fn set_forwarded(
    upstream: &mut RequestHeader,
    downstream: &RequestHeader,
    client: Client,
    tls: bool,
) -> Result<()> {
    let (has_xff, has_proto, has_host) = forwarded_present(upstream);
    let keep = client.trusted;
    match client.peer {
        Some(ip) => {
            // Every X-Forwarded-For line the proxy sent, in order, then the proxy's address.
            let prev = match has_xff && keep {
                true => upstream
                    .headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .collect::<Vec<_>>()
                    .join(", "),
                false => String::new(),
            };
            let xff = match prev.is_empty() {
                false => {
                    HeaderValue::from_str(&format!("{prev}, {ip}")).map_err(|_| http_status(400))?
                }
                true => ip_value(ip),
            };
            upstream.insert_header_name(X_FORWARDED_FOR, xff)?;
        }
        // A Unix-socket peer has no address to state, and no say either.
        None if has_xff => {
            upstream.remove_header(&X_FORWARDED_FOR);
        }
        None => {}
    }
    if !(keep && has_proto) {
        upstream.insert_header_name(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        )?;
    }
    if !(keep && has_host) {
        // The Host header, or an HTTP/2 request's :authority.
        let host = match downstream.headers.get(http::header::HOST) {
            Some(h) => Some(h.clone()),
            None => downstream
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        match host {
            Some(h) => upstream.insert_header_name(X_FORWARDED_HOST, h)?,
            // Never pass on an untrusted client's claim.
            None if has_host => {
                upstream.remove_header(&X_FORWARDED_HOST);
            }
            None => {}
        }
    }
    Ok(())
}

/// Drop the first `strip` bytes of the path (a matched `strip_prefix` route), keeping the
/// query and a leading `/`. A 400 when what is left is not a valid URI.
#[inline]
pub(crate) fn strip_prefix(upstream: &mut RequestHeader, strip: usize) -> Result<()> {
    let pq = upstream
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let rest = pq.get(strip..).unwrap_or("");
    let new = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    match new.parse::<http::Uri>() {
        Ok(uri) => {
            upstream.set_uri(uri);
            Ok(())
        }
        Err(_) => Err(http_status(400)),
    }
}

/// Remove the hop-by-hop headers an upstream may send: a scan of the few names beats two
/// hashed removals on every response.
#[inline]
pub(crate) fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let hop = resp.headers.keys().any(|k| {
        let k = k.as_str();
        k == "keep-alive" || k == "proxy-connection"
    });
    if hop {
        resp.remove_header("keep-alive");
        resp.remove_header("proxy-connection");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn get(req: &RequestHeader, name: &str) -> Option<String> {
        let all: Vec<_> = req.headers.get_all(name).iter().collect();
        assert!(all.len() <= 1, "{name} set more than once");
        all.first().map(|v| v.to_str().unwrap().to_string())
    }

    /// vendor/pingora-http 0001 (`insert_header_name`) and pingora-core 0003/0004: a header
    /// inserted by its parsed name replaces any of that name, and the message goes on the wire
    /// with the client's spelling kept when it keeps case, in canonical case when it does not.
    #[test]
    fn names_inserted_by_parsed_name_are_on_the_wire_with_or_without_case() {
        let wire = |keep: bool| {
            let build = match keep {
                true => RequestHeader::build,
                false => RequestHeader::build_no_case,
            };
            let mut req = build("GET", b"/", None).unwrap();
            req.append_header("X-Request-ID", "old").unwrap();
            req.append_header("user-agent", "t").unwrap();
            req.append_header("content-type", "text/plain").unwrap();
            req.insert_header_name(X_REQUEST_ID, "new").unwrap();
            req.insert_header_name(http::header::HOST, "h").unwrap();
            assert_eq!(get(&req, "x-request-id").as_deref(), Some("new"));
            let mut buf = Vec::new();
            req.header_to_h1_wire(&mut buf);
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(
            wire(true),
            "x-request-id: new\r\nuser-agent: t\r\ncontent-type: text/plain\r\nHost: h\r\n",
            "the client's spelling kept, ten's names as inserted"
        );
        assert_eq!(
            wire(false),
            "x-request-id: new\r\nuser-agent: t\r\nContent-Type: text/plain\r\nHost: h\r\n",
            "the few names Pingora knows in title case, others in lower case"
        );
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("X-Served-By", "app").unwrap();
        resp.insert_header_name(X_REQUEST_ID, "id").unwrap();
        let mut buf = Vec::new();
        resp.header_to_h1_wire(&mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "X-Served-By: app\r\nx-request-id: id\r\n"
        );
    }

    fn request(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/a/b?q=1", None).unwrap();
        for (k, v) in headers {
            req.append_header(*k, *v).unwrap();
        }
        req
    }

    fn peer(ip: Option<&str>, trusted: bool) -> Client {
        let ip = ip.map(|c| c.parse().unwrap());
        Client {
            ip,
            peer: ip,
            trusted,
        }
    }

    /// From a peer that is not in `trusted_proxies`.
    fn forwarded(
        headers: &[(&'static str, &str)],
        client: Option<&str>,
        tls: bool,
    ) -> RequestHeader {
        forwarded_by(headers, peer(client, false), tls)
    }

    /// From a peer in `trusted_proxies` (a proxy in front).
    fn via_proxy(headers: &[(&'static str, &str)], client: &str, tls: bool) -> RequestHeader {
        forwarded_by(headers, peer(Some(client), true), tls)
    }

    fn forwarded_by(headers: &[(&'static str, &str)], client: Client, tls: bool) -> RequestHeader {
        let downstream = request(headers);
        let mut upstream = downstream.clone();
        set_forwarded(&mut upstream, &downstream, client, tls).unwrap();
        upstream
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert!(!a.as_bytes().iter().any(u8::is_ascii_uppercase));
        assert_ne!(a, b);
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "fe80::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(parsed).to_str().unwrap(), parsed.to_string());
        }
    }

    #[test]
    fn forwarded_headers_are_found_in_any_case() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(forwarded_present(&req), (false, false, false));
        req.insert_header("X-Forwarded-Proto", "https").unwrap();
        assert_eq!(forwarded_present(&req), (false, true, false));
        req.insert_header("x-forwarded-for", "1.2.3.4").unwrap();
        req.insert_header("X-FORWARDED-HOST", "a.b").unwrap();
        req.insert_header("x-forwarded-port", "80").unwrap();
        assert_eq!(forwarded_present(&req), (true, true, true));
    }

    #[test]
    fn client_request_ids_are_kept_only_when_sane() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Request-Id", "abc-123").unwrap();
        assert_eq!(request_id(&req), "abc-123");
        req.insert_header("X-Request-Id", "has space").unwrap();
        assert_eq!(request_id(&req).len(), 32);
        req.insert_header("X-Request-Id", "").unwrap();
        assert_eq!(request_id(&req).len(), 32);
        req.insert_header("X-Request-Id", "a".repeat(201)).unwrap();
        assert_eq!(request_id(&req).len(), 32);
        req.insert_header("X-Request-Id", "a".repeat(200)).unwrap();
        assert_eq!(request_id(&req).len(), 200);
    }

    #[test]
    fn plain_http_sets_all_three_from_the_request() {
        let up = forwarded(&[("host", "app.example.com")], Some("10.0.0.7"), false);
        assert_eq!(get(&up, "x-forwarded-for").unwrap(), "10.0.0.7");
        assert_eq!(get(&up, "x-forwarded-proto").unwrap(), "http");
        assert_eq!(get(&up, "x-forwarded-host").unwrap(), "app.example.com");
    }

    #[test]
    fn every_trusted_forwarded_for_line_is_kept_in_order_then_the_peer() {
        let up = via_proxy(
            &[
                ("host", "a.example.com"),
                ("x-forwarded-for", " 1.1.1.1 , 2.2.2.2"),
                ("X-Forwarded-For", ""),
                ("x-forwarded-for", "3.3.3.3"),
            ],
            "10.0.0.7",
            false,
        );
        assert_eq!(
            get(&up, "x-forwarded-for").unwrap(),
            "1.1.1.1 , 2.2.2.2, 3.3.3.3, 10.0.0.7"
        );
    }

    #[test]
    fn without_a_client_address_forwarded_for_is_dropped() {
        // A Unix-socket listener: nothing to append, and the client's claim is not trusted.
        let up = forwarded(
            &[("host", "a"), ("x-forwarded-for", "1.1.1.1")],
            None,
            false,
        );
        assert_eq!(get(&up, "x-forwarded-for"), None);
        let up = forwarded(&[("host", "a")], None, false);
        assert_eq!(get(&up, "x-forwarded-for"), None);
    }

    #[test]
    fn ipv6_clients_are_appended_as_displayed() {
        let up = forwarded(&[("host", "a")], Some("fe80::1"), false);
        assert_eq!(get(&up, "x-forwarded-for").unwrap(), "fe80::1");
        let up = via_proxy(
            &[("host", "a"), ("x-forwarded-for", "1.1.1.1")],
            "::1",
            false,
        );
        assert_eq!(get(&up, "x-forwarded-for").unwrap(), "1.1.1.1, ::1");
    }

    #[test]
    fn a_trusted_proxy_keeps_the_proto_and_host_it_sent() {
        for tls in [false, true] {
            let up = via_proxy(
                &[
                    ("host", "inner.example.com"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "outer.example.com"),
                ],
                "10.0.0.7",
                tls,
            );
            assert_eq!(get(&up, "x-forwarded-proto").unwrap(), "https");
            assert_eq!(get(&up, "x-forwarded-host").unwrap(), "outer.example.com");
        }
        // What it did not send, ten states.
        let up = via_proxy(&[("host", "inner.example.com")], "10.0.0.7", false);
        assert_eq!(get(&up, "x-forwarded-proto").unwrap(), "http");
        assert_eq!(get(&up, "x-forwarded-host").unwrap(), "inner.example.com");
    }

    /// Regression (issue 18): on plain HTTP a client's X-Forwarded-Proto/Host passed through,
    /// and its X-Forwarded-For was extended, so any client could pick its address.
    #[test]
    fn an_untrusted_peers_forwarded_headers_are_replaced() {
        let up = forwarded(
            &[
                ("host", "inner.example.com"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example.com"),
            ],
            Some("10.0.0.7"),
            false,
        );
        assert_eq!(get(&up, "x-forwarded-for").unwrap(), "10.0.0.7");
        assert_eq!(get(&up, "x-forwarded-proto").unwrap(), "http");
        assert_eq!(get(&up, "x-forwarded-host").unwrap(), "inner.example.com");
    }

    #[test]
    fn tls_states_proto_and_host_itself() {
        let up = forwarded(
            &[
                ("host", "app.example.com"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "evil.example.com"),
            ],
            Some("10.0.0.7"),
            true,
        );
        assert_eq!(get(&up, "x-forwarded-proto").unwrap(), "https");
        assert_eq!(get(&up, "x-forwarded-host").unwrap(), "app.example.com");
    }

    #[test]
    fn tls_without_a_host_drops_the_clients_forwarded_host() {
        let up = forwarded(&[("x-forwarded-host", "evil.example.com")], None, true);
        assert_eq!(get(&up, "x-forwarded-host"), None);
        // On plain HTTP too: no peer address, no trust.
        let up = forwarded(&[("x-forwarded-host", "outer.example.com")], None, false);
        assert_eq!(get(&up, "x-forwarded-host"), None);
    }

    #[test]
    fn forwarded_host_falls_back_to_the_authority() {
        let mut downstream = RequestHeader::build("GET", b"/x", None).unwrap();
        downstream.set_uri("https://h2.example.com/x".parse().unwrap());
        let mut upstream = downstream.clone();
        set_forwarded(&mut upstream, &downstream, Client::default(), true).unwrap();
        assert_eq!(
            get(&upstream, "x-forwarded-host").unwrap(),
            "h2.example.com"
        );
    }

    #[test]
    fn strip_prefix_keeps_the_query_and_a_leading_slash() {
        for (path, strip, want) in [
            ("/api/users?x=1", 4, "/users?x=1"),
            ("/api", 4, "/"),
            ("/api?x=1", 4, "/?x=1"),
            ("/apiv2/x", 4, "/v2/x"),
            ("/a", 10, "/"),
        ] {
            let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
            strip_prefix(&mut req, strip).unwrap();
            assert_eq!(req.uri.to_string(), want, "{path} minus {strip}");
        }
    }

    #[test]
    fn hop_by_hop_response_headers_are_removed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("Keep-Alive", "timeout=5").unwrap();
        resp.append_header("Proxy-Connection", "keep-alive")
            .unwrap();
        resp.append_header("x-other", "1").unwrap();
        strip_hop_by_hop(&mut resp);
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("proxy-connection").is_none());
        assert_eq!(resp.headers.get("x-other").unwrap(), "1");
        let mut plain = ResponseHeader::build(204, None).unwrap();
        strip_hop_by_hop(&mut plain);
        assert!(plain.headers.is_empty());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// What a client can put in a header value: visible ASCII, spaces, tabs and obs-text.
        fn value() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                prop_oneof![0x20u8..0x7f, Just(b'\t'), Just(b','), 0x80u8..=0xff],
                0..40,
            )
        }

        fn client() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u16; 8]>().prop_map(IpAddr::from),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            /// Whatever X-Forwarded-For lines a trusted proxy sends, one goes out: its (trimmed,
            /// non-empty, visible ASCII) lines in order, then the peer; or a 400.
            #[test]
            fn x_forwarded_for_is_extended_never_panics(
                lines in prop::collection::vec(value(), 0..4), ip in client(), tls: bool
            ) {
                let mut down = RequestHeader::build("GET", b"/", None).unwrap();
                for l in &lines {
                    down.append_header(X_FORWARDED_FOR, HeaderValue::from_bytes(l).unwrap()).unwrap();
                }
                let mut up = down.clone();
                let via = Client { ip: Some(ip), peer: Some(ip), trusted: true };
                if set_forwarded(&mut up, &down, via, tls).is_ok() {
                    let all: Vec<_> = up.headers.get_all(X_FORWARDED_FOR).iter().collect();
                    prop_assert_eq!(all.len(), 1);
                    let mut want: Vec<String> = lines
                        .iter()
                        // A line with other bytes (obs-text) is not text: left out.
                        .filter(|l| l.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)))
                        .filter_map(|l| std::str::from_utf8(l).ok())
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect();
                    want.push(ip.to_string());
                    let want = want.join(", ");
                    prop_assert_eq!(all[0].as_bytes(), want.as_bytes());
                }
            }

            /// A client's X-Request-Id is kept only when sane; else a fresh one.
            #[test]
            fn request_ids_are_always_sane(v in value()) {
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                req.append_header(X_REQUEST_ID, HeaderValue::from_bytes(&v).unwrap()).unwrap();
                let id = request_id(&req);
                prop_assert!(!id.is_empty() && id.len() <= 200);
                prop_assert!(id.as_bytes().iter().all(u8::is_ascii_graphic));
            }
        }
    }
}
