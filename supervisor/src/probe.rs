//! Readiness and health probes over an instance's TCP port or unix socket: a connection, or an
//! HTTP/1.1 `GET` through hyper's client whose whole answer (up to [`MAX_BODY`]) is read before
//! the connection is closed, so the app never sees a reset. A probe that fails because ten
//! itself is out of resources (see [`crate::resource`]) says so: its result is unknown, never
//! the app's failure.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

pub use tenement_conf::Addr;

use crate::resource::{self, Op};

/// The most of a health answer's body that is read; the rest is left unread.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a probe did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The app did not answer, or answered wrong: counts as a failed check.
    App(String),
    /// ten itself could not probe (EMFILE, ENOMEM, ...): the result is unknown.
    Ours(String),
}

impl ProbeError {
    pub fn is_ours(&self) -> bool {
        matches!(self, ProbeError::Ours(_))
    }

    pub fn message(&self) -> &str {
        match self {
            ProbeError::App(m) | ProbeError::Ours(m) => m,
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// One probe: a connection (no `health` path) or `GET path` answered 2xx, within `timeout`.
pub async fn probe(addr: &Addr, health: Option<&str>, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, probe_inner(addr, health)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::App(format!(
            "no answer within {}",
            humanize(timeout)
        ))),
    }
}

async fn probe_inner(addr: &Addr, health: Option<&str>) -> Result<(), ProbeError> {
    let refused = |e: std::io::Error| {
        let text = format!("connect to {addr}: {e}");
        if resource::ours(&e, Op::Connect) {
            ProbeError::Ours(format!("ten is out of resources: {text}"))
        } else {
            ProbeError::App(text)
        }
    };
    match addr {
        Addr::Tcp(a) => {
            let io = TcpStream::connect(a).await.map_err(refused)?;
            match health {
                Some(path) => get(io, path).await.map_err(ProbeError::App),
                None => Ok(()),
            }
        }
        Addr::Unix(p) => {
            let io = UnixStream::connect(p).await.map_err(refused)?;
            match health {
                Some(path) => get(io, path).await.map_err(ProbeError::App),
                None => Ok(()),
            }
        }
    }
}

/// `GET path` with `Connection: close` over `io`: 2xx passes. The body is read to its end (at
/// most [`MAX_BODY`]) before the connection closes.
async fn get<T>(io: T, path: &str) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let what = |e: &dyn fmt::Display| format!("GET {path}: {e}");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| what(&e))?;
    let req = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "ten-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| what(&e))?;
    let exchange = async move {
        let resp = sender.send_request(req).await.map_err(|e| what(&e))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut read = 0usize;
        while read < MAX_BODY {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    read = read.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                }
                Some(Err(e)) => return Err(what(&e)),
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("GET {path} answered {}", status.as_u16()))
        }
    };
    // The connection is driven beside the exchange; it ends once the answer is read (or the
    // exchange gave up and dropped its side).
    let (answer, _) = tokio::join!(exchange, conn);
    answer
}

pub(crate) fn humanize(d: Duration) -> String {
    if !d.as_millis().is_multiple_of(1000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// How the upstream saw the prober leave.
    #[derive(Debug, PartialEq)]
    enum Close {
        Clean,
        Reset,
        Other(String),
    }

    /// Serve one request: status line and headers, a pause, then the body in a second write;
    /// then wait for the prober to close and report how it did.
    async fn serve_split<S>(mut s: S, status: &str, body: &str, done: oneshot::Sender<Close>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the prober closed before its request was complete");
            head.extend_from_slice(&buf[..n]);
        }
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let wrote = s.write_all(body.as_bytes()).await;
        // Give a reset (if the prober closed early) the time to come back.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let close = match (wrote, s.read(&mut buf).await) {
            (Err(e), _) | (Ok(()), Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Close::Reset
            }
            (Err(e), _) if e.kind() == std::io::ErrorKind::BrokenPipe => Close::Reset,
            (Ok(()), Ok(0)) => Close::Clean,
            (w, r) => Close::Other(format!("{w:?} {r:?}")),
        };
        let _ = done.send(close);
    }

    #[tokio::test]
    async fn reads_a_body_written_separately_and_closes_cleanly() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Addr::Tcp(l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve_split(s, "200 OK", "ok, I am healthy\n", tx).await;
        });
        let r = probe(&addr, Some("/health"), Duration::from_secs(5)).await;
        assert_eq!(r, Ok(()));
        assert_eq!(
            rx.await.unwrap(),
            Close::Clean,
            "the app saw its peer reset"
        );
    }

    #[tokio::test]
    async fn unix_socket_health_and_non_2xx_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let addr = Addr::Unix(path);
        let (tx, rx) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            serve_split(s, "200 OK", "fine", tx).await;
            let (s, _) = l.accept().await.unwrap();
            serve_split(s, "503 Service Unavailable", "not yet", tx2).await;
        });
        assert_eq!(
            probe(&addr, Some("/health"), Duration::from_secs(5)).await,
            Ok(())
        );
        assert_eq!(rx.await.unwrap(), Close::Clean);
        let e = probe(&addr, Some("/health"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e, ProbeError::App("GET /health answered 503".into()));
        assert_eq!(rx2.await.unwrap(), Close::Clean);
    }

    #[tokio::test]
    async fn a_refused_connection_is_the_apps_failure() {
        // Bind then drop: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = probe(&Addr::Tcp(port), None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!e.is_ours(), "{e}");
        assert!(e.message().starts_with("connect to "), "{e}");
    }

    #[tokio::test]
    async fn a_non_http_answer_fails() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Addr::Tcp(l.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(b"SSH-2.0-OpenSSH\r\n").await.unwrap();
        });
        let e = probe(&addr, Some("/health"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.message().starts_with("GET /health: "), "{e}");
    }
}
