//! The CLI's client of `ten serve`: HTTP/1.1 + JSON over the control socket, or over TCP
//! (`http://`) or TLS (`https://`, rustls) to a remote server's management API with a bearer
//! token (`ten --server URL --token T`, SPEC §12). One hand-written HTTP/1.1 exchange for all
//! three, so every command has the same output and exit codes whichever way it goes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub struct Client {
    target: Target,
}

/// Where the client's requests go.
enum Target {
    /// The control socket: trusted, no token.
    Socket(PathBuf),
    Remote(Remote),
}

/// A remote server's management API (`admin_listen`, or the proxy listener by its domain).
struct Remote {
    /// As given, for messages.
    url: String,
    host: String,
    port: u16,
    /// `Host:` (the URL's authority).
    authority: String,
    /// The URL's path, without a trailing `/` (prefixed to every API path).
    prefix: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<String>,
}

/// A connection the exchange reads and writes: a socket, or TLS over one.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A response: status and parsed JSON body (Null when empty).
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// The client of the `ten serve` whose data dir is `data_dir`.
    pub fn locate(data_dir: &Path) -> Client {
        Client {
            target: Target::Socket(crate::wire::control_socket(data_dir)),
        }
    }

    /// The client of a remote `ten serve`'s HTTP API at `url` (`http://` or `https://`,
    /// optionally with a path prefix), authenticating with `token`; `ca_cert` (PEM) is trusted
    /// besides the Mozilla roots.
    pub fn remote(url: &str, token: Option<String>, ca_cert: Option<&Path>) -> Result<Client> {
        let bad = |why: &str| {
            anyhow!("bad --server URL {url:?}: {why} (expected http://HOST[:PORT] or https://HOST[:PORT])")
        };
        let (tls, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(bad("the scheme must be http or https")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("no host"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                let port = match after.strip_prefix(':') {
                    Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                    None if after.is_empty() => default_port,
                    None => return Err(bad("junk after ]")),
                };
                (h.to_string(), port)
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), default_port),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let tls = match tls {
            true => Some(Arc::new(tls_config(ca_cert)?)),
            false => None,
        };
        Ok(Client {
            target: Target::Remote(Remote {
                url: url.to_string(),
                host,
                port,
                authority: authority.to_string(),
                prefix: path.trim_end_matches('/').to_string(),
                tls,
                token: token.filter(|t| !t.is_empty()),
            }),
        })
    }

    fn connect(&self, read_timeout: Option<Duration>) -> Result<Box<dyn Conn>> {
        match &self.target {
            Target::Socket(sock) => {
                let s = UnixStream::connect(sock).map_err(|_| {
                    anyhow!(
                        "ten serve is not running (no control socket at {})",
                        sock.display()
                    )
                })?;
                s.set_read_timeout(read_timeout)?;
                Ok(Box::new(NoSigPipe(s)))
            }
            Target::Remote(r) => {
                let s = TcpStream::connect((r.host.as_str(), r.port))
                    .with_context(|| format!("cannot reach ten serve at {}", r.url))?;
                s.set_read_timeout(read_timeout)?;
                let Some(config) = &r.tls else {
                    return Ok(Box::new(NoSigPipe(s)));
                };
                let name = rustls::pki_types::ServerName::try_from(r.host.clone())
                    .map_err(|e| anyhow!("bad --server host {:?}: {e}", r.host))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)?;
                Ok(Box::new(rustls::StreamOwned::new(conn, NoSigPipe(s))))
            }
        }
    }

    /// What messages call the server's address.
    fn place(&self) -> String {
        match &self.target {
            Target::Socket(sock) => sock.display().to_string(),
            Target::Remote(r) => r.url.clone(),
        }
    }

    fn send(&self, s: &mut dyn Conn, method: &str, path: &str, body: Option<&Value>) -> Result<()> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (host, prefix, auth) = match &self.target {
            Target::Socket(_) => ("ten", "", String::new()),
            Target::Remote(r) => (
                r.authority.as_str(),
                r.prefix.as_str(),
                r.token
                    .as_ref()
                    .map(|t| format!("Authorization: Bearer {t}\r\n"))
                    .unwrap_or_default(),
            ),
        };
        let req = format!(
            "{method} {prefix}{path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .and_then(|()| s.flush())
            .with_context(|| format!("sending to {}", self.place()))
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
        self.send(&mut *s, method, path, body)?;
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r)?;
        let raw = read_body(&mut r, &headers)?;
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
        self.send(&mut *s, "GET", path, None)?;
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r)?;
        if status != 200 {
            let raw = read_body(&mut r, &headers)?;
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
            let n = match r.read(&mut buf) {
                Ok(n) => n,
                // TLS without close_notify: the server closed the stream.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 || !f(&buf[..n]) {
                return Ok(());
            }
        }
    }
}

/// A response body: `Content-Length` bytes, chunks, or up to the close.
fn read_body(r: &mut impl BufRead, headers: &[(String, String)]) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunks(r, |c| {
            raw.extend_from_slice(c);
            true
        })?;
    } else if let Some(n) = header(headers, "content-length").and_then(|v| v.parse::<u64>().ok()) {
        r.take(n).read_to_end(&mut raw)?;
    } else {
        match r.read_to_end(&mut raw) {
            Ok(_) => {}
            // TLS without close_notify: the body ends at the close.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(raw)
}

/// The TLS client settings: the Mozilla roots (webpki-roots), plus the PEM certificates of
/// `ca_cert` (a private CA or a self-signed server certificate).
fn tls_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_cert {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow!("--ca-cert {}: {e}", path.display()))?;
        if certs.is_empty() {
            bail!("--ca-cert {}: no PEM certificate in it", path.display());
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow!("--ca-cert {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A socket whose writes never raise SIGPIPE (a server gone away is an EPIPE error instead),
/// as the CLI restores SIGPIPE's default (see `cli::quiet_in_pipes`).
struct NoSigPipe<S>(S);

impl<S: Read> Read for NoSigPipe<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: AsRawFd> Write for NoSigPipe<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        send_some(&self.0, buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        send_all(&self.0, buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One `send(2)` on a socket that reports a server gone away as an error (EPIPE) rather
/// than raising SIGPIPE, which kills a client command (see `cli::quiet_in_pipes`).
fn send_some(s: &impl AsRawFd, buf: &[u8]) -> std::io::Result<usize> {
    use nix::libc;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    const FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    const FLAGS: libc::c_int = 0;
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes and the fd is open (owned by `s`).
        let n = unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), FLAGS) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// `write_all` with [`send_some`].
fn send_all(s: &impl AsRawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = send_some(s, buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = buf.get(n..).unwrap_or_default();
    }
    Ok(())
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

    fn remote(url: &str) -> Result<(String, u16, String, String)> {
        match Client::remote(url, Some("t".into()), None)?.target {
            Target::Remote(r) => Ok((r.host, r.port, r.authority, r.prefix)),
            Target::Socket(_) => panic!("not remote"),
        }
    }

    #[test]
    fn server_urls_parse() {
        let r = |h: &str, p: u16, a: &str, pre: &str| (h.into(), p, a.into(), pre.into());
        assert_eq!(
            remote("http://10.0.0.5:9090").unwrap(),
            r("10.0.0.5", 9090, "10.0.0.5:9090", "")
        );
        assert_eq!(
            remote("https://example.com/").unwrap(),
            r("example.com", 443, "example.com", "")
        );
        assert_eq!(
            remote("http://example.com/ten/").unwrap(),
            r("example.com", 80, "example.com", "/ten")
        );
        assert_eq!(
            remote("http://[::1]:8080").unwrap(),
            r("::1", 8080, "[::1]:8080", "")
        );
        for bad in [
            "example.com",
            "ftp://x",
            "http://",
            "http://:80",
            "http://x:port",
            "http://[::1",
            "http://u@x",
        ] {
            let e = remote(bad).unwrap_err().to_string();
            assert!(e.contains("bad --server URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_peer_gone_away_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        send_all(&a, b"hello").unwrap();
        drop(b);
        let e = send_all(&a, b"more").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
