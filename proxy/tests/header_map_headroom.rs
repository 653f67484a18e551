//! Header maps of received HTTP/1 messages have room for the fields a proxy adds (vendored
//! pingora-core patch 0005, issue 23): a request read by the server session and a response read
//! by the client session, and clones of them, can take a few more fields without the map being
//! rehashed and its index reallocated. Through Pingora's public v1 sessions over TCP on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use pingora_core::protocols::http::v1::client::HttpSession as ClientSession;
use pingora_core::protocols::http::v1::server::HttpSession as ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What ten adds to a forwarded request (`X-Forwarded-For`, `-Proto`, `-Host`, `X-Request-Id`)
/// and at most to a response; the patch's headroom.
const ADDED: usize = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

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
        let (client, mut server) = pair().await;
        let mut session = ClientSession::new(Box::new(L4Stream::from(client)));
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        session.write_request_header(Box::new(req)).await.unwrap();
        let mut head = [0u8; 1024];
        let _ = server.read(&mut head).await.unwrap();
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\n")
            .await
            .unwrap();
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
