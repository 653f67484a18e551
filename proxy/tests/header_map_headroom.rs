//! Header maps of received HTTP/1 messages have room for the fields a proxy adds (vendored
//! pingora-core patch 0005, issue 23): a request read by the server session and a response read
//! by the client session, and clones of them, can take a few more fields without the map being
//! rehashed and its index reallocated. Through Pingora's public v1 sessions over TCP on 127.0.0.1.
//!
//! And the message that goes on (pingora-core patch 0007, pingora-proxy patch 0006) is the one
//! read, not its clone: a clone's entries are allocated for exactly the fields it holds, so
//! adding a field to it reallocates them. Counted by a global allocator per thread: adding
//! ten's fields to the response the client session hands out, and to the request Pingora sends
//! upstream (in `upstream_request_filter`, through a whole proxy), allocates nothing.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::v1::server::HttpSession as ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use tenement_proxy::{Edge, EdgeLimits, LiveLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::counting::{allocations, Counting};
use support::{answered, pair, runtime};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Names made once, as ten's are: inserting them parses and copies nothing.
static NAMES: [HeaderName; 4] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-request-id"),
];

/// Allocations made by adding `n` of ten's fields to `headers`.
fn allocations_to_add(n: usize, mut insert: impl FnMut(HeaderName, HeaderValue)) -> usize {
    let before = allocations();
    for name in NAMES.iter().take(n) {
        insert(name.clone(), HeaderValue::from_static("v"));
    }
    allocations() - before
}

/// What ten adds to a forwarded request (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Request-Id`)
/// and at most to a response; the patch's headroom.
const ADDED: usize = 4;

/// Three fields read: without the headroom the map holds exactly three (an index of four
/// slots at its load limit), and the first added field regrows it.
#[test]
fn a_read_request_and_its_clone_have_room_for_added_fields() {
    runtime().block_on(async {
        let (mut client, server) = pair().await;
        client
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n")
            .await
            .unwrap();
        let mut session = ServerSession::new(Box::new(L4Stream::from(server)));
        session.read_request().await.unwrap().unwrap();
        let req: &RequestHeader = session.req_header();
        assert_eq!(req.headers.len(), 3);
        assert!(
            req.headers.capacity() >= 3 + ADDED,
            "room for {} fields",
            req.headers.capacity()
        );
        let forwarded = req.clone();
        assert!(
            forwarded.headers.capacity() >= 3 + ADDED,
            "the clone has room for {} fields",
            forwarded.headers.capacity()
        );
    });
}

#[test]
fn a_read_response_and_its_copy_have_room_for_added_fields() {
    runtime().block_on(async {
        let mut session = answered(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\n",
        )
        .await;
        // the copy the proxy forwards (read_response_task hands out the same)
        let resp: Box<ResponseHeader> = session.read_resp_header_parts().await.unwrap();
        assert_eq!(resp.headers.len(), 3);
        assert!(
            resp.headers.capacity() >= 3 + ADDED,
            "room for {} fields",
            resp.headers.capacity()
        );
        let kept = session.resp_header().unwrap();
        assert!(kept.headers.capacity() >= 3 + ADDED);
    });
}

/// The response the client session hands out takes ten's fields without reallocating.
#[test]
fn the_response_handed_out_takes_added_fields_without_allocating() {
    pingora_core::protocols::http::v1::common::set_keep_header_case(false);
    runtime().block_on(async {
        let mut session = answered(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let mut resp: Box<ResponseHeader> = session.read_resp_header_parts().await.unwrap();
        let n = allocations_to_add(ADDED, |k, v| resp.insert_header_name(k, v).unwrap());
        assert_eq!(
            n, 0,
            "adding {ADDED} fields to the response allocated {n} times"
        );
        // the session keeps an equal header for itself
        assert_eq!(session.resp_header().unwrap().headers.len(), 1);
        assert_eq!(session.get_status().unwrap(), 200);
    });
}

/// Allocations `upstream_request_filter` made adding ten's fields to the upstream request.
static UPSTREAM_ADD_ALLOCATIONS: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A proxy to one upstream that adds ten's four fields to each upstream request.
struct AddFields(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for AddFields {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> pingora_error::Result<()> {
        let n = allocations_to_add(ADDED, |k, v| upstream.insert_header_name(k, v).unwrap());
        UPSTREAM_ADD_ALLOCATIONS.store(n, Ordering::SeqCst);
        Ok(())
    }
}

/// The request Pingora forwards takes ten's fields without reallocating. On a current-thread
/// runtime: the filter runs on the test's thread, where the allocations are counted.
#[test]
fn the_request_forwarded_upstream_takes_added_fields_without_allocating() {
    pingora_core::protocols::http::v1::common::set_keep_header_case(false);
    runtime().block_on(async {
        // the upstream: reads one request head, answers 200 "ok"
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut s, _) = up.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the proxy closed before its request");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });

        let conf = Arc::new(ServerConf::default());
        let app = Arc::new(pingora_proxy::http_proxy(&conf, AddFields(up_addr)));
        let limits = EdgeLimits {
            header_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(30),
        };
        let edge = Arc::new(Edge::new(app, LiveLimits::new(limits), None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let stream: pingora_core::protocols::Stream = Box::new(L4Stream::from(server));
        let proxy = tokio::spawn(async move { edge.process_new(stream, &shutdown).await });

        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        let forwarded = upstream.await.unwrap().to_ascii_lowercase();
        for name in &NAMES {
            assert!(forwarded.contains(name.as_str()), "{forwarded}");
        }
        let n = UPSTREAM_ADD_ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(n, 0, "adding {ADDED} fields upstream allocated {n} times");
        drop(client);
        proxy.await.unwrap();
    });
}
