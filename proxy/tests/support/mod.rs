//! Helpers shared by the tests of the vendored Pingora patches: a current-thread runtime, a TCP
//! pair on 127.0.0.1, a client session with an answer read, an allocator that counts.
#![allow(dead_code)] // each test binary uses some of them

pub mod counting;

use pingora_core::protocols::http::v1::client::HttpSession as ClientSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A current-thread runtime: everything the test drives runs on the test's thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Both ends of a TCP connection on 127.0.0.1: (client, server).
pub async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// A client session that sent `GET /` to a server answering `raw` and then closing; nothing
/// of the answer read yet.
pub async fn answered(raw: &'static [u8]) -> ClientSession {
    let (client, mut server) = pair().await;
    let mut session = ClientSession::new(Box::new(L4Stream::from(client)));
    let req = RequestHeader::build("GET", b"/", None).unwrap();
    session.write_request_header(Box::new(req)).await.unwrap();
    let mut head = [0u8; 1024];
    let _ = server.read(&mut head).await.unwrap();
    server.write_all(raw).await.unwrap();
    session
}
