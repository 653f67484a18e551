//! What an idle keep-alive connection holds on the heap while [`Edge`] waits for its next
//! request (issue 23, part 3): counted by a global allocator that keeps, per thread, the bytes
//! allocated and not yet freed. The connection is served on a current-thread runtime on the
//! test's own thread, so every allocation it makes is counted there and nothing else is.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use tenement_proxy::{Edge, EdgeLimits, LiveLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::counting::{live, Counting};
// A current-thread runtime: the connections' allocations are all made on the test's thread.
use support::runtime;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A proxy that answers every request itself (204, keep-alive): no upstream involved.
struct Answer;

#[async_trait]
impl ProxyHttp for Answer {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<bool> {
        let mut resp = ResponseHeader::build(204, Some(1))?;
        resp.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }
    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        unreachable!("request_filter answers every request")
    }
}

/// Let the runtime run every task that is ready (bounded: a handful of scheduler turns), so
/// the connections settle where they wait.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// One request on `client`, its answer (the 204 of [`Answer`]) read to the end of its head.
async fn one_request(client: &mut tokio::net::TcpStream) {
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 204"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// The answering proxy and ten's `Edge` around it, its head and idle limits both `limit`.
fn answering_edge(
    limit: Duration,
) -> (
    Arc<pingora_proxy::HttpProxy<Answer>>,
    Edge<pingora_proxy::HttpProxy<Answer>>,
) {
    let conf = Arc::new(ServerConf::default());
    let app = Arc::new(pingora_proxy::http_proxy(&conf, Answer));
    let limits = EdgeLimits {
        header_timeout: limit,
        keepalive_timeout: limit,
    };
    (app.clone(), Edge::new(app, LiveLimits::new(limits), None))
}

/// Heap bytes a connection's task holds while it waits for the client: before its first
/// request, and kept alive after one. Pingora's per-request state (the boxed
/// `process_new_http` future, ~14 KB in a release build and more in this debug one, and the
/// 4 KiB head buffer) is made only once bytes arrive, so an idle connection keeps little more
/// than its stream and the connection task's own future.
#[test]
fn an_idle_connection_holds_no_request_state() {
    runtime().block_on(async {
        let (_app, edge) = answering_edge(Duration::from_secs(30));
        let edge = Arc::new(edge);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);

        let before = live();
        let stream: pingora_core::protocols::Stream = Box::new(L4Stream::from(server));
        let task = tokio::spawn(async move { edge.process_new(stream, &shutdown).await });
        settle().await;
        let fresh = live() - before;

        one_request(&mut client).await;
        settle().await;
        let kept_alive = live() - before;

        // Without the change these were 20+ KB each (the request future and head buffer).
        assert!(fresh < 8 * 1024, "a fresh connection holds {fresh} bytes");
        assert!(
            kept_alive < 8 * 1024,
            "an idle keep-alive connection holds {kept_alive} bytes"
        );
        drop(client);
        assert!(
            task.await.unwrap().is_none(),
            "the connection ends when the client closes"
        );
    });
}

/// A connection parked waiting for its first bytes still ends when the proxy's
/// `http_cleanup` runs (shutdown, the end of an upgrade's drain), as Pingora's own
/// `read_request` wait does: through `HttpProxy::await_shutdown`, public by
/// vendor/patches/pingora-proxy/0002.
#[test]
fn a_parked_connection_ends_at_http_cleanup() {
    use pingora_core::apps::HttpServerApp;
    runtime().block_on(async {
        let (app, edge) = answering_edge(Duration::from_secs(3600));
        let edge = Arc::new(edge);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let stream: pingora_core::protocols::Stream = Box::new(L4Stream::from(server));
        let task = tokio::spawn(async move { edge.process_new(stream, &shutdown).await });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !task.is_finished(),
            "the connection waits for its first request"
        );
        app.http_cleanup().await;
        // Bounded: the deadlines above are an hour away, so only the cleanup can end it.
        let ended = tokio::time::timeout(Duration::from_secs(30), task).await;
        assert!(ended
            .expect("still parked after http_cleanup")
            .unwrap()
            .is_none());
        drop(client);
    });
}

/// Heap bytes per idle keep-alive connection accepted by Pingora's listening service (its
/// accept loop, the connection's tokio task, the L4 stream and its buffers) and served by
/// [`Edge`]: what `make bench` measures as RSS per connection, counted on a current-thread
/// runtime so every allocation of the connections is made on this thread. Each of `N`
/// connections has made one request and waits for the next.
#[test]
fn an_idle_connection_through_the_listener_holds_little() {
    use pingora_core::apps::HttpServerApp;
    use pingora_core::listeners::ListenerConfig;
    use pingora_core::protocols::l4::stream::L4BufferSettings;
    use pingora_core::server::{Fds, ListenFds};
    use pingora_core::services::listening::Service;
    use pingora_core::services::Service as _;
    use std::os::fd::IntoRawFd;

    const N: usize = 50;
    runtime().block_on(async {
        let (app, edge) = answering_edge(Duration::from_secs(3600));
        // ten's listener (src/server/listeners.rs): bound here, no L4 read buffer.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap().to_string();
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
        fds.lock().add(addr.clone(), std_listener.into_raw_fd());
        let mut service = Service::new("idle".to_string(), edge);
        service.add_listener(
            ListenerConfig::tcp(addr.clone()).l4_buffer(L4BufferSettings {
                read: Some(0),
                write: None,
            }),
        );
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let served =
            tokio::spawn(async move { service.start_service(Some(fds), stop_rx, 1).await });

        // One connection first, so one-off state (the accept loop's, per-thread spares,
        // lazily made statics) is not counted against the N below.
        let mut warm = tokio::net::TcpStream::connect(&addr).await.unwrap();
        one_request(&mut warm).await;
        settle().await;

        let mut clients = Vec::new();
        let before = live();
        for _ in 0..N {
            let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
            one_request(&mut c).await;
            clients.push(c);
        }
        settle().await;
        // The clients' own sockets (tokio registrations) are counted too: subtract what N
        // client streams cost, measured the same way.
        let with_conns = live() - before;
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let before_clients = live();
        let mut probes = Vec::new();
        for _ in 0..N {
            let c = tokio::net::TcpStream::connect(probe.local_addr().unwrap())
                .await
                .unwrap();
            probes.push(c);
        }
        let clients_cost = live() - before_clients;
        let per_conn = (with_conns - clients_cost) / N as isize;
        // Before vendor/patches/pingora-core/0002 the connection's task carried room for a
        // TLS handshake on a plain listener too: 12.7 KB here (debug build), 5.6 KB after.
        assert!(
            per_conn < 8 * 1024,
            "an idle keep-alive connection holds {per_conn} bytes"
        );
        drop(probes);
        drop(clients);
        drop(warm);
        stop.send_replace(true);
        app.http_cleanup().await;
        let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
    });
}
