//! The answers the proxy writes itself: short plain-text responses, plugin replies, and the
//! mapping from a failed request's error to its status code and message (`status_for`).

use bytes::Bytes;
use http::header::HeaderValue;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::ctx::Ctx;
use crate::forwarded::X_REQUEST_ID;
use crate::plugins::Reply;
use crate::table::Backend;

/// An error that makes Pingora answer with `code` (through `fail_to_proxy`).
#[inline]
pub(crate) fn http_status(code: u16) -> Box<Error> {
    Error::new(ErrorType::HTTPStatus(code))
}

/// The head and body of a short plain-text answer (`msg` plus a newline), with the request id.
#[inline]
pub(crate) fn plain(
    status: u16,
    msg: &str,
    request_id: &HeaderValue,
) -> Result<(Box<ResponseHeader>, Bytes)> {
    let body = Bytes::from(format!("{msg}\n"));
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header_name(X_REQUEST_ID, request_id.clone())?;
    if status == 429 || status == 503 {
        resp.insert_header(http::header::RETRY_AFTER, "1")?;
    }
    Ok((Box::new(resp), body))
}

/// The keep-alive after answering `status` ourselves: none after a server error.
#[inline]
pub(crate) fn keepalive_after(status: u16) -> Option<u64> {
    if status >= 500 {
        None
    } else {
        Some(60)
    }
}

/// A short plain-text response, with the request id.
pub(crate) async fn respond(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    msg: &str,
) -> Result<()> {
    let (resp, body) = plain(status, msg, &ctx.request_id)?;
    session.set_keepalive(keepalive_after(status));
    session.write_response_header(resp, false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// A plugin's reply, with the request id (its own headers kept: Retry-After, WWW-Authenticate).
pub(crate) async fn respond_reply(session: &mut Session, ctx: &Ctx, reply: Reply) -> Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    for (k, v) in reply.headers {
        resp.append_header(k, v)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
    resp.insert_header_name(X_REQUEST_ID, ctx.request_id.clone())?;
    // A 413 leaves an unread body behind: do not reuse the connection.
    session.set_keepalive(if reply.status == 413 || reply.status >= 500 {
        None
    } else {
        Some(60)
    });
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(reply.body), true).await?;
    Ok(())
}

/// The metric kind of an upstream error.
pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError => "connect",
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        ErrorType::ConnectionClosed
        | ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::H1Error
        | ErrorType::InvalidHTTPHeader => "broken",
        _ => "other",
    }
}

/// The status code a failed request is answered with; 0 when the client is gone (nothing to
/// write).
pub(crate) fn status_code(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        ErrorType::ConnectTimedout => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// The message for a `code` answer when no phase left a better one, naming the `backend` the
/// request went to.
pub(crate) fn status_message(code: u16, backend: Option<&Backend>) -> String {
    match code {
        504 => match backend {
            Some(b) => format!("gateway timeout: {} did not answer in time", b.key),
            None => "gateway timeout".into(),
        },
        502 => match backend {
            Some(b) => format!("bad gateway: {} failed", b.key),
            None => "bad gateway".into(),
        },
        400 => "bad request".into(),
        413 => "request body too large".into(),
        _ => http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_ascii_lowercase(),
    }
}

/// A failed request's answer: its status code (0: the client is gone, write nothing) and
/// message. `fail_to_proxy` takes the code first and builds the message only when a phase left
/// none.
pub(crate) fn status_for(e: &Error, backend: Option<&Backend>) -> (u16, String) {
    let code = status_code(e);
    (code, status_message(code, backend))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::table::{Availability, ProcessOpts};

    fn backend() -> Backend {
        let opts = Arc::new(ProcessOpts {
            name: "api".into(),
            request_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            metrics: None,
            plugins: None,
            upstream_http2: false,
        });
        Backend::new(opts, "prod", None, 100, Availability::Down, Arc::default())
    }

    fn err(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        let mut e = Error::new(etype);
        match source {
            ErrorSource::Upstream => e = e.into_up(),
            ErrorSource::Downstream => e = e.into_down(),
            ErrorSource::Internal => e = e.into_in(),
            ErrorSource::Unset => {}
        }
        e
    }

    #[test]
    fn explicit_statuses_pass_through_with_their_reason() {
        let b = backend();
        assert_eq!(
            status_for(&http_status(503), Some(&b)),
            (503, "service unavailable".into())
        );
        assert_eq!(
            status_for(&http_status(429), None),
            (429, "too many requests".into())
        );
        assert_eq!(
            status_for(&http_status(413), None),
            (413, "request body too large".into())
        );
        assert_eq!(
            status_for(&http_status(400), None),
            (400, "bad request".into())
        );
        assert_eq!(status_for(&http_status(599), None), (599, "error".into()));
    }

    #[test]
    fn upstream_timeouts_are_504_naming_the_instance() {
        let b = backend();
        for t in [
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
            ErrorType::ConnectTimedout,
        ] {
            let e = err(t, ErrorSource::Upstream);
            assert_eq!(
                status_for(&e, Some(&b)),
                (
                    504,
                    "gateway timeout: api:prod did not answer in time".into()
                )
            );
            assert_eq!(status_for(&e, None), (504, "gateway timeout".into()));
        }
        // A connect timeout is a 504 whatever its source; a client's read timeout is not.
        assert_eq!(
            status_code(&err(ErrorType::ConnectTimedout, ErrorSource::Unset)),
            504
        );
        assert_eq!(
            status_code(&err(ErrorType::ReadTimedout, ErrorSource::Downstream)),
            400
        );
    }

    #[test]
    fn other_upstream_failures_are_502() {
        let b = backend();
        for t in [
            ErrorType::ConnectRefused,
            ErrorType::ConnectionClosed,
            ErrorType::H1Error,
        ] {
            let e = err(t, ErrorSource::Upstream);
            assert_eq!(
                status_for(&e, Some(&b)),
                (502, "bad gateway: api:prod failed".into())
            );
            assert_eq!(status_for(&e, None), (502, "bad gateway".into()));
        }
    }

    #[test]
    fn a_client_gone_gets_nothing_a_bad_client_request_a_400() {
        for t in [
            ErrorType::WriteError,
            ErrorType::ReadError,
            ErrorType::ConnectionClosed,
        ] {
            assert_eq!(status_code(&err(t, ErrorSource::Downstream)), 0);
        }
        let e = err(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream);
        assert_eq!(status_for(&e, None), (400, "bad request".into()));
    }

    #[test]
    fn internal_errors_are_500() {
        for s in [ErrorSource::Internal, ErrorSource::Unset] {
            let e = err(ErrorType::InternalError, s);
            assert_eq!(status_for(&e, None), (500, "internal server error".into()));
        }
    }

    #[test]
    fn plain_answers_carry_the_request_id_and_retry_after_when_busy() {
        let id = HeaderValue::from_static("abc");
        let (head, body) = plain(503, "no healthy instance", &id).unwrap();
        assert_eq!(body, "no healthy instance\n");
        assert_eq!(head.status, 503);
        assert_eq!(head.headers["x-request-id"], "abc");
        assert_eq!(head.headers["content-length"], "20");
        assert_eq!(head.headers["retry-after"], "1");
        let (head, _) = plain(404, "no route", &id).unwrap();
        assert!(head.headers.get("retry-after").is_none());
        assert_eq!(keepalive_after(404), Some(60));
        assert_eq!(keepalive_after(503), None);
    }
}
