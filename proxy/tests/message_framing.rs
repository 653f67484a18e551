//! How received HTTP/1 messages are framed (vendored pingora-core patch 0006, issue 23): the
//! server and client sessions note which framing fields (`Transfer-Encoding`, `Content-Length`)
//! a message carries while reading its header instead of looking each up again; the framing
//! decisions must stay what they were. Each case goes through Pingora's public v1 sessions over
//! TCP on 127.0.0.1: the body read (or the error), and what is kept of the header.
#![allow(clippy::unwrap_used)]

use pingora_core::protocols::http::v1::server::HttpSession as ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use tokio::io::AsyncWriteExt;

mod support;
use support::{answered, pair, runtime};

/// What the server session made of a request.
#[derive(Debug, PartialEq)]
enum Read {
    /// The body, whether the session would keep the connection, whether it kept a
    /// `Content-Length` field
    Body(Vec<u8>, bool, bool),
    Rejected,
}

/// `raw` sent by a client that then stays open (keep-alive), read by the server session.
fn serve(raw: &'static [u8]) -> Read {
    runtime().block_on(async {
        let (mut client, server) = pair().await;
        client.write_all(raw).await.unwrap();
        let mut session = ServerSession::new(Box::new(L4Stream::from(server)));
        match session.read_request().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no request read from {raw:?}"),
            Err(_) => return Read::Rejected,
        }
        let mut body = Vec::new();
        while let Some(b) = session.read_body_bytes().await.unwrap() {
            body.extend_from_slice(&b);
        }
        let cl = session.get_header(http::header::CONTENT_LENGTH).is_some();
        Read::Body(body, session.will_keepalive(), cl)
    })
}

#[test]
fn requests_are_framed_by_their_fields_in_any_case() {
    let body = |b: &[u8], keep: bool, cl: bool| Read::Body(b.to_vec(), keep, cl);
    let cases: &[(&[u8], Read)] = &[
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", body(b"", true, false)),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            body(b"hello", true, true),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nCONTENT-length: 5\r\n\r\nhello",
            body(b"hello", true, true),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            body(b"hello", true, true),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-ENCODING: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            body(b"hello", true, false),
        ),
        // Both: the chunked coding frames it, Content-Length is dropped, the connection closes.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            body(b"hello", false, false),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello",
            Read::Rejected,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: x\r\n\r\nhello",
            Read::Rejected,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            Read::Rejected,
        ),
        (
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Read::Rejected,
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(
            &serve(raw),
            want,
            "request {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

/// `raw` answered (then the server closes) to a GET written by the client session.
fn fetch(raw: &'static [u8]) -> Read {
    runtime().block_on(async {
        let mut session = answered(raw).await;
        if session.read_response().await.is_err() {
            return Read::Rejected;
        }
        let mut body = Vec::new();
        while let Some(b) = session.read_body_bytes().await.unwrap() {
            body.extend_from_slice(&b);
        }
        let cl = session.get_header(http::header::CONTENT_LENGTH).is_some();
        // The close-delimited body ends at the close; keep-alive is decided at release.
        session.respect_keepalive();
        Read::Body(body, session.will_keepalive(), cl)
    })
}

#[test]
fn responses_are_framed_by_their_fields_in_any_case() {
    let body = |b: &[u8], keep: bool, cl: bool| Read::Body(b.to_vec(), keep, cl);
    let cases: &[(&[u8], Read)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            body(b"hello", true, true),
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 5\r\n\r\nhello, and more",
            body(b"hello", false, true),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTRANSFER-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            body(b"hello", true, false),
        ),
        // Both: the chunked coding frames it and Content-Length is dropped.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            body(b"hello", true, false),
        ),
        // Neither: the body runs to the close.
        (
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello",
            body(b"hello", false, false),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            Read::Rejected,
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            body(b"", true, true),
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(
            &fetch(raw),
            want,
            "response {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}
