//! The CLI's client of `ten serve`: HTTP/1.1 + JSON over the control socket.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub struct Client {
    sock: PathBuf,
}

/// A response: status and parsed JSON body (Null when empty).
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// The client of the `ten serve` whose data dir is `data_dir`.
    pub fn locate(data_dir: &Path) -> Client {
        Client {
            sock: crate::wire::control_socket(data_dir),
        }
    }

    fn connect(&self, read_timeout: Option<Duration>) -> Result<UnixStream> {
        let s = UnixStream::connect(&self.sock).map_err(|_| {
            anyhow!(
                "ten serve is not running (no control socket at {})",
                self.sock.display()
            )
        })?;
        s.set_read_timeout(read_timeout)?;
        Ok(s)
    }

    fn send(
        &self,
        s: &mut UnixStream,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<()> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: ten\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        send_all(s, req.as_bytes()).with_context(|| format!("sending to {}", self.sock.display()))
    }

    /// One request; non-2xx answers become errors carrying the server's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let reply = self.request(method, path, body)?;
        if !(200..300).contains(&reply.status) {
            let msg = reply
                .body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string);
            bail!(
                "{}",
                msg.unwrap_or_else(|| format!("ten serve answered {}", reply.status))
            );
        }
        Ok(reply.body)
    }

    /// One request with a typed body (a `wire` type) and a typed answer.
    pub fn exchange<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R> {
        // Through `Value`, whose map keeps keys sorted: the bytes sent stay what they were.
        let body = body.map(serde_json::to_value).transpose()?;
        let v = self.call(method, path, body.as_ref())?;
        serde_json::from_value(v).map_err(|e| anyhow!("bad answer from ten serve ({e})"))
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        // Spawns and deploys wait for health: allow for startup_timeout and more.
        let mut s = self.connect(Some(Duration::from_secs(600)))?;
        self.send(&mut s, method, path, body)?;
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r)?;
        let mut raw = Vec::new();
        if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            read_chunks(&mut r, |c| {
                raw.extend_from_slice(c);
                true
            })?;
        } else {
            r.read_to_end(&mut raw)?;
        }
        let body = if raw.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&raw).map_err(|e| anyhow!("bad answer from ten serve ({e})"))?
        };
        Ok(Reply { status, body })
    }

    /// Follow a streamed (chunked) response, handing each chunk to `f` until it returns false
    /// or the stream ends.
    pub fn stream(&self, path: &str, mut f: impl FnMut(&[u8]) -> bool) -> Result<()> {
        let mut s = self.connect(None)?;
        self.send(&mut s, "GET", path, None)?;
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r)?;
        if status != 200 {
            let mut raw = Vec::new();
            r.read_to_end(&mut raw)?;
            let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            bail!(
                "{}",
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("stream refused")
            );
        }
        if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            return read_chunks(&mut r, f);
        }
        // Close-delimited: hand over bytes as they arrive.
        let mut buf = [0u8; 8192];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 || !f(&buf[..n]) {
                return Ok(());
            }
        }
    }
}

/// `write_all` on the control socket that reports a server gone away as an error (EPIPE)
/// rather than raising SIGPIPE, which kills a client command (see `cli::quiet_in_pipes`).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn send_all(s: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes and the fd is open (owned by `s`).
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn send_all(mut s: &UnixStream, buf: &[u8]) -> std::io::Result<()> {
    std::io::Write::write_all(&mut s, buf)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn read_head(r: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)
        .context("reading the answer of ten serve")?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad answer from ten serve: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn read_chunks(r: &mut impl BufRead, mut f: impl FnMut(&[u8]) -> bool) -> Result<()> {
    loop {
        let mut size = String::new();
        if r.read_line(&mut size)? == 0 {
            return Ok(());
        }
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| anyhow!("bad chunk from ten serve"))?;
        if n == 0 {
            return Ok(());
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk)?;
        if !f(&chunk[..n]) {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gone_away_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        send_all(&a, b"hello").unwrap();
        drop(b);
        let e = send_all(&a, b"more").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
