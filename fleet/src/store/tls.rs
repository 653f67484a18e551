//! TLS to PostgreSQL for the shared store (managed PostgreSQL, Neon, RDS, ... requires it):
//! `sslmode` and `sslrootcert` in the store URL, as libpq means them, on rustls (ring, the
//! provider Pingora builds).
//!
//! tokio-postgres knows `sslmode=disable | prefer | require` only, and no `sslrootcert`, so both
//! are taken out of the URL here ([`split_url`]) and the connector ([`MakeRustls`], a small
//! `MakeTlsConnect` over tokio-rustls) checks the server as the mode says:
//! - `disable`: plain TCP. `prefer` (the default, as libpq's): TLS when the server offers it,
//!   its certificate not checked. `require`: TLS or no connection, the certificate not checked.
//!   With `sslrootcert=PATH`, both check the chain as `verify-ca` does, as libpq does (and
//!   `prefer` then never falls back to a plain session when the check fails).
//! - `verify-ca`: the chain must lead to a root of `sslrootcert=PATH` (required). `verify-full`:
//!   and the certificate must name the host of the URL.
//! - Roots: the PEM file `sslrootcert=PATH`; with `verify-full` only, no `sslrootcert` (or
//!   `sslrootcert=system`) means the Mozilla roots of `webpki-roots`, which the remote CLI uses
//!   too. Any public CA certifies any domain, so as libpq, the other modes refuse them.
//!
//! SCRAM channel binding is not offered (the server is told so; libpq's default `prefer`
//! accepts that).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as PgMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// `sslmode`, as libpq means it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` (plain first, TLS if refused) is not offered: say so.
            other => {
                return Err(format!(
                    "sslmode={other:?} is not supported \
                     (disable, prefer, require, verify-ca or verify-full)"
                ))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres does on the wire: no TLS, TLS if offered, TLS or nothing.
    fn wire(self) -> PgMode {
        match self {
            SslMode::Disable => PgMode::Disable,
            SslMode::Prefer => PgMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgMode::Require,
        }
    }
}

/// The TLS parameters of a store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted roots, or `system`.
    pub root_cert: Option<String>,
}

/// The URL without `sslmode` and `sslrootcert`, and those two. The mode is also set on the
/// returned config by the caller ([`TlsParams::wire_mode`]).
pub(crate) fn split_url(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    // The query starts after the user info (a password may hold a '?', unencoded). The user
    // info ends at the first '@' of the authority (after `://`, before the path's '/'), as
    // tokio-postgres reads it: an '@' in the query (`application_name=ten@web1`) is not one.
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let after_at = url[start..end].find('@').map_or(start, |i| start + i + 1);
    let Some(q) = url[after_at..].find('?').map(|i| after_at + i) else {
        return Ok((url.to_string(), params));
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => params.mode = SslMode::parse(&decode(value))?,
            "sslrootcert" => params.root_cert = Some(decode(value)),
            // An '@' left in the query would end tokio-postgres's user info (it takes the
            // first '@' of the URL): encoded, it means the same (values are decoded).
            _ => kept.push(pair.replace('@', "%40")),
        }
    }
    let url = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    Ok((url, params))
}

impl TlsParams {
    pub(crate) fn wire_mode(&self) -> PgMode {
        self.mode.wire()
    }
}

/// `%XX` decoded (a path in a URL); an invalid escape stays as written.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The store's TLS connector: one rustls config, made once from the URL's parameters.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// The connector for `params`. Err: the root file cannot be read or holds no certificate
    /// (the message names the file); the public roots (no `sslrootcert`, or `system`) with a
    /// mode that does not check the host name (libpq refuses both; the message names the
    /// `sslmode` and the `sslrootcert`).
    pub(crate) fn new(params: &TlsParams) -> Result<MakeRustls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let system = params.root_cert.as_deref() == Some("system");
        let file = params.root_cert.as_deref().filter(|_| !system);
        let mode = match (params.mode, file) {
            // Any public CA issues certificates for any domain: the chain alone proves
            // nothing, only the name does.
            (m, _) if system && m != SslMode::VerifyFull => {
                return Err(format!(
                    "sslmode={} may not be used with sslrootcert=system: the public roots \
                     authenticate the server only with its name checked (sslmode=verify-full)",
                    m.as_str()
                ))
            }
            (SslMode::VerifyCa, None) => {
                return Err(
                    "sslmode=verify-ca needs sslrootcert=PATH, the PEM file of the CA \
                     that issued the server's certificate (for the public roots, use \
                     sslmode=verify-full, which checks the name too)"
                        .into(),
                )
            }
            // libpq: with a root file, `prefer` and `require` check the chain (as verify-ca).
            (SslMode::Prefer | SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let config = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(roots(params.root_cert.as_deref())?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS: {e}"))?;
                match mode {
                    SslMode::VerifyFull => {
                        builder.with_webpki_verifier(webpki).with_no_client_auth()
                    }
                    _ => builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                        .with_no_client_auth(),
                }
            }
        };
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

/// The trusted roots: the PEM file at `path`, else (or `system`) the Mozilla roots (for
/// `verify-full` only: [`MakeRustls::new`] refuses them to the other modes).
fn roots(path: Option<&str>) -> Result<RootCertStore, String> {
    let Some(path) = path.filter(|p| *p != "system") else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("sslrootcert {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("sslrootcert {path}: no PEM certificate in it"));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    Ok(roots)
}

/// `prefer` and `require`: any certificate (the session is encrypted, the server not
/// authenticated, as libpq does); the handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked against the roots, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's handshake.
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            connector
                .connect(self.name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS session to PostgreSQL.
pub(crate) struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url_and_default_to_prefer() {
        let (url, p) = split_url("postgres://u:p@h:5432/db").unwrap();
        assert_eq!(url, "postgres://u:p@h:5432/db");
        assert_eq!(p.mode, SslMode::Prefer);
        let (url, p) = split_url(
            "postgres://u:p?w@h/db?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca%20x.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p?w@h/db?connect_timeout=3");
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some("/tmp/ca x.pem"));
        for (s, m, wire) in [
            ("disable", SslMode::Disable, PgMode::Disable),
            ("require", SslMode::Require, PgMode::Require),
            ("verify-ca", SslMode::VerifyCa, PgMode::Require),
        ] {
            let (url, p) = split_url(&format!("postgres://h/db?sslmode={s}")).unwrap();
            assert_eq!(url, "postgres://h/db");
            assert_eq!(p.mode, m);
            assert!(
                matches!((p.wire_mode(), wire), (a, b) if format!("{a:?}") == format!("{b:?}"))
            );
        }
        let e = split_url("postgres://u:secret@h/db?sslmode=allow").unwrap_err();
        assert!(e.contains("sslmode=\"allow\" is not supported"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn an_at_sign_in_the_query_is_not_the_user_info() {
        use std::str::FromStr;
        use tokio_postgres::config::Host;
        let q = "application_name=ten@web1&sslmode=verify-full&sslrootcert=/ca.pem";
        for (url, rest) in [
            (
                format!("postgres://u:p@h:5432/db?{q}"),
                "postgres://u:p@h:5432/db?application_name=ten%40web1",
            ),
            (
                format!("postgres://h/db?{q}"),
                "postgres://h/db?application_name=ten%40web1",
            ),
            (
                format!("postgres://u:p@h?{q}"),
                "postgres://u:p@h?application_name=ten%40web1",
            ),
        ] {
            let (u, p) = split_url(&url).unwrap();
            assert_eq!(u, rest, "{url}");
            assert_eq!(p.mode, SslMode::VerifyFull, "{url}");
            assert_eq!(p.root_cert.as_deref(), Some("/ca.pem"), "{url}");
            // tokio-postgres reads what is left as written.
            let c = tokio_postgres::Config::from_str(&u).unwrap();
            assert_eq!(c.get_application_name(), Some("ten@web1"), "{url}");
            assert_eq!(c.get_hosts(), [Host::Tcp("h".into())], "{url}");
        }
    }

    #[test]
    fn the_public_roots_need_verify_full() {
        let params = |mode, root: Option<&str>| TlsParams {
            mode,
            root_cert: root.map(str::to_string),
        };
        // sslrootcert=system: any mode but verify-full is refused, naming both (as libpq).
        for (mode, name) in [
            (SslMode::Disable, "disable"),
            (SslMode::Prefer, "prefer"),
            (SslMode::Require, "require"),
            (SslMode::VerifyCa, "verify-ca"),
        ] {
            let e = MakeRustls::new(&params(mode, Some("system")))
                .err()
                .unwrap();
            assert!(
                e.contains(&format!("sslmode={name} ")) && e.contains("sslrootcert=system"),
                "{e}"
            );
        }
        // verify-ca checks no name: it needs the CA file, never the public roots.
        let e = MakeRustls::new(&params(SslMode::VerifyCa, None))
            .err()
            .unwrap();
        assert!(
            e.contains("sslmode=verify-ca") && e.contains("sslrootcert=PATH"),
            "{e}"
        );
        // verify-full takes them; the weak modes without sslrootcert check nothing.
        for (mode, root) in [
            (SslMode::VerifyFull, Some("system")),
            (SslMode::VerifyFull, None),
            (SslMode::Disable, None),
            (SslMode::Prefer, None),
            (SslMode::Require, None),
        ] {
            assert!(MakeRustls::new(&params(mode, root)).is_ok(), "{mode:?}");
        }
    }

    #[test]
    fn a_root_file_that_is_missing_or_empty_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let params = |path: &std::path::Path| TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: Some(path.display().to_string()),
        };
        let e = MakeRustls::new(&params(&empty)).err().unwrap();
        assert!(e.contains("empty.pem: no PEM certificate"), "{e}");
        let e = MakeRustls::new(&params(&dir.path().join("nope.pem")))
            .err()
            .unwrap();
        assert!(e.contains("sslrootcert") && e.contains("nope.pem"), "{e}");
        // prefer and require read the file too: they check the chain with it.
        for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let e = MakeRustls::new(&TlsParams {
                mode,
                root_cert: Some(empty.display().to_string()),
            })
            .err()
            .unwrap();
            assert!(e.contains("empty.pem: no PEM certificate"), "{mode:?}: {e}");
        }
        // No file: the Mozilla roots.
        assert!(MakeRustls::new(&TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: None
        })
        .is_ok());
    }
}
