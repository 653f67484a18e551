//! The keep-alive pool of upstream connections (vendored pingora-core patch 0001, issue 23):
//! idle connections are kept in a list, not watched by a task each, and still reused, dropped
//! when the server closed them, and closed after their idle timeout. Driven through Pingora's
//! public `TransportConnector` against a plain TCP server on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream as L4Stream;
use pingora_core::upstreams::peer::{BasicPeer, Peer};

/// A server that accepts connections and keeps them (counted), never writing.
struct Server {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let (a, c) = (accepted.clone(), conns.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            c.lock().unwrap().push(s);
            a.fetch_add(1, Ordering::SeqCst);
        }
    });
    Server {
        addr,
        accepted,
        conns,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Wait (bounded: 10 s) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connector with one connection to `srv`, accepted there, not yet released.
async fn connected(srv: &Server) -> (TransportConnector, BasicPeer, L4Stream) {
    let connector = TransportConnector::new(None);
    let peer = BasicPeer::new(&srv.addr.to_string());
    let s = connector.new_stream(&peer).await.unwrap();
    until("accepted", || srv.accepted.load(Ordering::SeqCst) == 1).await;
    (connector, peer, s)
}

#[test]
fn released_connections_are_reused_without_a_task_each() {
    let srv = server();
    let rt = runtime();
    rt.block_on(async {
        let connector = TransportConnector::new(None);
        let peer = BasicPeer::new(&srv.addr.to_string());
        let key = peer.reuse_hash();
        let mut streams = Vec::new();
        for _ in 0..10 {
            streams.push(connector.new_stream(&peer).await.unwrap());
        }
        until("10 accepted", || srv.accepted.load(Ordering::SeqCst) == 10).await;
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for s in streams {
            connector.release_stream(s, key, Some(Duration::from_secs(60)));
        }
        // One sweeper for the pool, not one watcher per idle connection (Pingora's own pool
        // spawned ten tasks here).
        let after = metrics.num_alive_tasks();
        assert!(
            after <= before + 1,
            "{} tasks for 10 idle connections",
            after - before
        );
        for i in 0..10 {
            assert!(
                connector.reused_stream(&peer).await.is_some(),
                "idle connection {i} not reused"
            );
        }
        assert!(connector.reused_stream(&peer).await.is_none(), "only 10");
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 10, "no new connection");
        // An empty pool has no task left (no wake-ups while nothing is pooled).
        until("the sweeper of the empty pool ends", || {
            metrics.num_alive_tasks() == before
        })
        .await;
    });
}

#[test]
fn a_connection_the_server_closed_is_not_reused() {
    let srv = server();
    let rt = runtime();
    rt.block_on(async {
        let (connector, peer, s) = connected(&srv).await;
        connector.release_stream(s, peer.reuse_hash(), Some(Duration::from_secs(60)));
        srv.conns.lock().unwrap().clear(); // the server closes its end
                                           // Taken while the close is still in flight, a connection may look usable: give it back
                                           // and look again. Once the close arrived it is dropped, never handed out again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connector.reused_stream(&peer).await {
                None => break,
                Some(s) => {
                    assert!(
                        Instant::now() < deadline,
                        "a closed connection kept being reused"
                    );
                    connector.release_stream(s, peer.reuse_hash(), Some(Duration::from_secs(60)));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
}

#[test]
fn an_idle_connection_is_closed_after_its_timeout() {
    let srv = server();
    let rt = runtime();
    rt.block_on(async {
        let (connector, peer, s) = connected(&srv).await;
        connector.release_stream(s, peer.reuse_hash(), Some(Duration::from_millis(300)));
        // The server sees the proxy close it (EOF), without any further call into the pool.
        let mut conn = srv.conns.lock().unwrap().pop().unwrap();
        let read = tokio::task::spawn_blocking(move || {
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 1];
            conn.read(&mut buf)
        })
        .await
        .unwrap();
        assert_eq!(
            read.unwrap(),
            0,
            "closed by the pool after its idle timeout"
        );
        assert!(connector.reused_stream(&peer).await.is_none());
    });
}

/// On single-threaded runtimes (ten's proxy workers), a thread takes back only the
/// connections it released: another runtime's connection is driven by that runtime's thread.
#[test]
fn a_single_threaded_runtime_takes_back_only_its_own_connections() {
    let srv = server();
    let connector = Arc::new(TransportConnector::new(None));
    let peer = BasicPeer::new(&srv.addr.to_string());
    let key = peer.reuse_hash();
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // Another thread, with a runtime of its own (alive until the end), releases a connection
    // into the pool.
    let (c, p) = (connector.clone(), peer.clone());
    let (released_tx, released) = std::sync::mpsc::channel();
    let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
    let other = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let s = c.new_stream(&p).await.unwrap();
            c.release_stream(s, key, Some(Duration::from_secs(60)));
            released_tx.send(()).unwrap();
            let _ = done_rx.await;
        })
    });
    released.recv_timeout(Duration::from_secs(10)).unwrap();
    current_thread().block_on(async {
        until("1 accepted", || srv.accepted.load(Ordering::SeqCst) == 1).await;
        assert!(
            connector.reused_stream(&peer).await.is_none(),
            "another single-threaded runtime's connection was taken"
        );
        let s = connector.new_stream(&peer).await.unwrap();
        connector.release_stream(s, key, Some(Duration::from_secs(60)));
        assert!(
            connector.reused_stream(&peer).await.is_some(),
            "its own connection is reused"
        );
    });
    let _ = done.send(());
    other.join().unwrap();
}
