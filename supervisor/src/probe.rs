//! Readiness and health probes over an instance's TCP port or unix socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub use tenement_conf::Addr;

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(addr: &Addr) -> std::io::Result<Box<dyn Io>> {
    Ok(match addr {
        Addr::Tcp(a) => Box::new(TcpStream::connect(a).await?),
        Addr::Unix(p) => Box::new(UnixStream::connect(p).await?),
    })
}

/// One probe: a connection (no `health` path) or `GET path` answered 2xx, within `timeout`.
pub async fn probe(addr: &Addr, health: Option<&str>, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_inner(addr, health)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", humanize(timeout))),
    }
}

async fn probe_inner(addr: &Addr, health: Option<&str>) -> Result<(), String> {
    let mut io = connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let Some(path) = health else {
        return Ok(());
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: ten-health\r\nConnection: close\r\n\r\n"
    );
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = io
            .read(&mut buf[n..])
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP response"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}

pub(crate) fn humanize(d: Duration) -> String {
    if !d.as_millis().is_multiple_of(1000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}
