//! TLS certificates chosen per handshake by SNI (SPEC §13): [`Certs`], one `ArcSwap`'d
//! [`CertSet`] (files from `[settings.tls]` and certificates ACME issued) read by rustls's
//! resolver on every handshake; [`Certs::reload_files`] rebuilds the file part (for `ten
//! reload`). The resolver picks the exact name, then a wildcard one label up, then the default.
//!
//! On-demand issuance: [`SniHook`], Pingora's pre-TLS callback, reads the ClientHello's SNI
//! (then un-reads it) and, when no loaded certificate covers the name, awaits
//! [`OnDemand::ensure`] (bounded) before the handshake proceeds; what to order and whether
//! the name is routed is the implementor's call. [`Challenges`] holds the HTTP-01 answers the
//! plain listeners serve at `/.well-known/acme-challenge/` before routing.
//!
//! TLS-ALPN-01 (RFC 8737) is answered by the same hook: a ClientHello offering ALPN
//! `acme-tls/1` for a name with a pending challenge ([`OnDemand::tls_alpn_answer`]) gets the
//! challenge certificate and `acme-tls/1` in a handshake the hook runs itself (its own rustls
//! `ServerConfig`), then the connection is closed. Not through the listener's resolver: Pingora's
//! `TlsSettings` sets one ALPN list (`h2`, `http/1.1`) and no callback can extend it per
//! handshake, and rustls refuses a client whose ALPN offer has nothing in common with the
//! server's list (`no_application_protocol`) before the certificate matters.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};
use tokio::io::AsyncReadExt;

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    File,
    Acme,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::File => "file",
            CertSource::Acme => "acme",
        }
    }
}

/// A loaded certificate chain and key, with what `ten certs` shows.
#[derive(Debug)]
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (subject alternative names, lower-cased; `*.x` for wildcards).
    pub names: Vec<String>,
    /// The issuer's common name (else its whole DN).
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub source: CertSource,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{origin}: cannot load certificate {cert} / key {key}: {why}")]
    Load {
        origin: String,
        cert: String,
        key: String,
        why: String,
    },
}

impl Cert {
    /// Load a PEM chain and key; `origin` names the config entry in errors.
    pub fn load(
        cert: &Path,
        key: &Path,
        source: CertSource,
        origin: &str,
    ) -> Result<Cert, TlsError> {
        let fail = |why: String| TlsError::Load {
            origin: origin.to_string(),
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            why,
        };
        pingora_rustls::install_default_crypto_provider();
        let (chain, private) = match pingora_rustls::load_certs_and_key_files(
            &cert.to_string_lossy(),
            &key.to_string_lossy(),
        ) {
            Ok(Some(pair)) => pair,
            Ok(None) => return Err(fail("no certificate or no private key in the files".into())),
            Err(e) => return Err(fail(e.to_string())),
        };
        let provider = CryptoProvider::get_default()
            .ok_or_else(|| fail("no rustls crypto provider".into()))?;
        let signer = provider
            .key_provider
            .load_private_key(private)
            .map_err(|e| fail(format!("unusable private key: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| fail("no certificate".into()))?
            .clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| fail(format!("cannot parse the certificate: {e}")))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            if let Some(cn) = parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
            {
                names.push(cn.to_ascii_lowercase());
            }
        }
        let issuer = parsed
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| parsed.issuer().to_string());
        let not_after = parsed.validity().not_after.timestamp();
        let key = CertifiedKey::new(chain, signer);
        key.keys_match()
            .map_err(|e| fail(format!("the key does not match the certificate: {e}")))?;
        Ok(Cert {
            key: Arc::new(key),
            names,
            issuer,
            not_after,
            source,
        })
    }
}

/// The certificates of one moment, indexed by name. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct CertSet {
    default: Option<Arc<Cert>>,
    files: Vec<Arc<Cert>>,
    acme: Vec<Arc<Cert>>,
    exact: HashMap<String, Arc<Cert>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<Cert>>,
}

impl CertSet {
    fn build(default: Option<Arc<Cert>>, files: Vec<Arc<Cert>>, acme: Vec<Arc<Cert>>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        // Later inserts win: ACME first, then the default, then the listed files (first wins
        // among them: inserted in reverse).
        let ordered = acme.iter().chain(default.iter()).chain(files.iter().rev());
        for cert in ordered {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_string(), cert.clone()),
                    None => exact.insert(name.clone(), cert.clone()),
                };
            }
        }
        CertSet {
            default,
            files,
            acme,
            exact,
            wildcard,
        }
    }

    /// The certificate covering `name` (exact, then wildcard one label up), not the default.
    pub fn find(&self, name: &str) -> Option<&Arc<Cert>> {
        if let Some(c) = self.exact.get(name) {
            return Some(c);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// What a handshake for `sni` gets.
    pub fn resolve(&self, sni: Option<&str>) -> Option<&Arc<Cert>> {
        sni.and_then(|n| self.find(n)).or(self.default.as_ref())
    }

    /// Every certificate: default, files, then ACME's.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Cert>> {
        self.default
            .iter()
            .chain(self.files.iter())
            .chain(self.acme.iter())
    }

    /// ACME's certificates.
    pub fn acme(&self) -> &[Arc<Cert>] {
        &self.acme
    }
}

/// The live certificate set (one `ArcSwap`), shared by every TLS listener and by ACME.
#[derive(Debug, Default)]
pub struct Certs {
    set: ArcSwap<CertSet>,
}

impl Certs {
    /// Load the default (optional) and the listed certificates; errors name the entry.
    pub fn load(tls: &tenement_conf::Tls) -> Result<Arc<Certs>, TlsError> {
        let certs = Arc::new(Certs::default());
        certs.reload_files(tls)?;
        Ok(certs)
    }

    /// Rebuild the file certificates from `tls` (ACME's are kept); nothing changes on error.
    pub fn reload_files(&self, tls: &tenement_conf::Tls) -> Result<(), TlsError> {
        let load = |f: &tenement_conf::CertFiles| {
            Cert::load(&f.cert, &f.key, CertSource::File, &f.origin).map(Arc::new)
        };
        let default = tls.default.as_ref().map(load).transpose()?;
        let files = tls.certs.iter().map(load).collect::<Result<Vec<_>, _>>()?;
        self.set.rcu(|old| {
            Arc::new(CertSet::build(
                default.clone(),
                files.clone(),
                old.acme.clone(),
            ))
        });
        Ok(())
    }

    /// Add (or replace, by its first name) a certificate ACME issued.
    pub fn put_acme(&self, cert: Arc<Cert>) {
        self.set.rcu(|old| {
            let mut acme: Vec<Arc<Cert>> = old
                .acme
                .iter()
                .filter(|c| c.names.first() != cert.names.first())
                .cloned()
                .collect();
            acme.push(cert.clone());
            Arc::new(CertSet::build(old.default.clone(), old.files.clone(), acme))
        });
    }

    /// The current set.
    pub fn load_set(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    /// The rustls resolver reading this set.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }
}

#[derive(Debug)]
struct Resolver(Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.0.set.load();
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        set.resolve(sni.as_deref()).map(|c| c.key.clone())
    }
}

/// Issues certificates on demand: called before a handshake for `name`, which no loaded
/// certificate covers. Returns when a certificate is in [`Certs`] or it gave up; decides
/// itself whether `name` may be ordered (routed names only).
#[async_trait]
pub trait OnDemand: Send + Sync {
    async fn ensure(&self, name: &str);

    /// The TLS-ALPN-01 challenge certificate for `name` while an order for it is being
    /// validated (RFC 8737), else None (the default: no TLS-ALPN-01).
    fn tls_alpn_answer(&self, _name: &str) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pingora's pre-TLS callback: the SNI name from the ClientHello, on-demand issuance for it.
pub struct SniHook {
    certs: Arc<Certs>,
    on_demand: Arc<dyn OnDemand>,
    /// How long a handshake waits for an order (then it gets the default certificate).
    wait: Duration,
}

impl SniHook {
    pub fn new(certs: Arc<Certs>, on_demand: Arc<dyn OnDemand>, wait: Duration) -> Arc<SniHook> {
        Arc::new(SniHook {
            certs,
            on_demand,
            wait,
        })
    }
}

/// The largest ClientHello record read ahead (one TLS record holds at most 16 KiB).
const MAX_HELLO: usize = 16 * 1024 + 5;

#[async_trait]
impl PreTlsProcess for SniHook {
    async fn process(&self, stream: &mut L4Stream) -> pingora_error::Result<()> {
        // Read the first record (bounded by the handshake timeout of the listener), then put
        // it back for rustls.
        let mut head = [0u8; 5];
        let read = tokio::time::timeout(self.wait, stream.read_exact(&mut head)).await;
        if !matches!(read, Ok(Ok(_))) {
            stream.rewind(&head[..0]);
            return Ok(()); // rustls fails the handshake on its own
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if head[0] != 0x16 || len + 5 > MAX_HELLO {
            stream.rewind(&head);
            return Ok(());
        }
        let mut record = vec![0u8; 5 + len];
        record[..5].copy_from_slice(&head);
        let body = tokio::time::timeout(self.wait, stream.read_exact(&mut record[5..])).await;
        let complete = matches!(body, Ok(Ok(_)));
        if !complete {
            // Nothing more will come in time: hand rustls the header alone.
            stream.rewind(&head);
            return Ok(());
        }
        stream.rewind(&record);
        let Some(hello) = hello_of(&record) else {
            return Ok(());
        };
        let Some(name) = hello.sni else {
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        if hello.acme_tls {
            // A TLS-ALPN-01 validation (never an order: the order is what is being validated).
            return self.answer_tls_alpn(stream, &name).await;
        }
        if self.certs.set.load().find(&name).is_some() {
            return Ok(());
        }
        if tokio::time::timeout(self.wait, self.on_demand.ensure(&name))
            .await
            .is_err()
        {
            tracing::info!(name, wait = ?self.wait, "no certificate in time: handshake gets the default");
        }
        Ok(())
    }
}

impl SniHook {
    /// Answer a ClientHello offering `acme-tls/1` for `name`: the challenge certificate and
    /// `acme-tls/1` when an order for `name` is being validated, then close. Always `Err`, so
    /// that Pingora drops the connection instead of running its own handshake.
    async fn answer_tls_alpn(
        &self,
        stream: &mut L4Stream,
        name: &str,
    ) -> pingora_error::Result<()> {
        use pingora_error::{Error, ErrorType};
        let Some(key) = self.on_demand.tls_alpn_answer(name) else {
            tracing::debug!(
                name,
                "acme-tls/1 offered for a name with no pending challenge"
            );
            return Error::e_explain(
                ErrorType::HandshakeError,
                "acme-tls/1 offered but no TLS-ALPN-01 challenge is pending for this name",
            );
        };
        let config = challenge_config(key);
        let acceptor = pingora_rustls::TlsAcceptor::from(Arc::new(config));
        match tokio::time::timeout(self.wait, acceptor.accept(&mut *stream)).await {
            Ok(Ok(mut tls)) => {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(self.wait, tls.shutdown()).await;
                tracing::info!(name, "acme: tls-alpn-01 challenge answered");
            }
            Ok(Err(e)) => tracing::info!(name, error = %e, "acme: tls-alpn-01 handshake failed"),
            Err(_) => tracing::info!(name, "acme: tls-alpn-01 handshake timed out"),
        }
        Error::e_explain(
            ErrorType::HandshakeError,
            "TLS-ALPN-01 validation answered; connection closed",
        )
    }
}

/// The rustls config of a TLS-ALPN-01 answer: the challenge certificate, ALPN `acme-tls/1`
/// only (RFC 8737 §3: TLS 1.2 or later).
pub fn challenge_config(key: Arc<CertifiedKey>) -> pingora_rustls::ServerConfig {
    pingora_rustls::install_default_crypto_provider();
    let mut config = pingora_rustls::ServerConfig::builder_with_protocol_versions(&[
        &pingora_rustls::version::TLS13,
        &pingora_rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(One(key)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    config
}

/// A resolver serving one certificate, whatever the ClientHello.
#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl ResolvesServerCert for One {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What the pre-TLS hook reads from a ClientHello.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The SNI host name.
    pub sni: Option<&'a str>,
    /// Whether the ALPN offer includes `acme-tls/1`.
    pub acme_tls: bool,
}

/// The SNI host name of a TLS record holding a ClientHello (`None` if absent or malformed).
pub fn sni_of(record: &[u8]) -> Option<&str> {
    hello_of(record)?.sni
}

/// The SNI name and the `acme-tls/1` offer of a TLS record holding a ClientHello (`None` if
/// it is not one or is malformed).
pub fn hello_of(record: &[u8]) -> Option<Hello<'_>> {
    let mut r = Reader(record);
    if r.u8()? != 0x16 {
        return None;
    }
    r.take(4)?; // version, length
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut hello = Reader(r.take(len)?);
    hello.take(2 + 32)?; // version, random
    let sid = usize::from(hello.u8()?);
    hello.take(sid)?;
    let suites = usize::from(hello.u16()?);
    hello.take(suites)?;
    let comp = usize::from(hello.u8()?);
    hello.take(comp)?;
    let ext_len = usize::from(hello.u16()?);
    let mut exts = Reader(hello.take(ext_len)?);
    let mut out = Hello::default();
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        match kind {
            // server_name
            0 => {
                let mut sn = Reader(data);
                let list = usize::from(sn.u16()?);
                let mut list = Reader(sn.take(list)?);
                while !list.0.is_empty() {
                    let t = list.u8()?;
                    let n = usize::from(list.u16()?);
                    let name = list.take(n)?;
                    if t == 0 {
                        out.sni = std::str::from_utf8(name).ok();
                        break;
                    }
                }
            }
            // application_layer_protocol_negotiation
            16 => {
                let mut a = Reader(data);
                let list = usize::from(a.u16()?);
                let mut list = Reader(a.take(list)?);
                while !list.0.is_empty() {
                    let n = usize::from(list.u8()?);
                    if list.take(n)? == ACME_TLS_ALPN {
                        out.acme_tls = true;
                    }
                }
            }
            _ => {}
        }
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// HTTP-01 answers: token → key authorization, served at `/.well-known/acme-challenge/{token}`
/// on the plain listeners before routing. Empty unless an order is being validated.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: ArcSwap<HashMap<String, String>>,
}

/// The HTTP-01 path prefix.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

impl Challenges {
    pub fn put(&self, token: &str, key_auth: &str) {
        self.tokens.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.insert(token.to_string(), key_auth.to_string());
            m
        });
    }

    pub fn remove(&self, token: &str) {
        self.tokens.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.remove(token);
            m
        });
    }

    /// The key authorization for `token`.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.tokens.load().get(token).cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, written under `dir` as `{tag}.pem` / `{tag}.key`.
    fn cert(dir: &Path, tag: &str, names: &[&str]) -> Arc<Cert> {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let (cp, kp) = (
            dir.join(format!("{tag}.pem")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&cp, c.cert.pem()).unwrap();
        std::fs::write(&kp, c.key_pair.serialize_pem()).unwrap();
        Arc::new(Cert::load(&cp, &kp, CertSource::File, tag).unwrap())
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ten-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let d = tmp("pick");
        let default = cert(&d, "default", &["default.test"]);
        let exact = cert(&d, "exact", &["a.example.com"]);
        let wild = cert(&d, "wild", &["*.example.com"]);
        let set = CertSet::build(
            Some(default.clone()),
            vec![wild.clone(), exact.clone()],
            vec![],
        );
        assert!(Arc::ptr_eq(
            set.resolve(Some("a.example.com")).unwrap(),
            &exact
        ));
        assert!(Arc::ptr_eq(
            set.resolve(Some("b.example.com")).unwrap(),
            &wild
        ));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(
            set.resolve(Some("x.b.example.com")).unwrap(),
            &default
        ));
        assert!(Arc::ptr_eq(
            set.resolve(Some("example.com")).unwrap(),
            &default
        ));
        assert!(Arc::ptr_eq(set.resolve(None).unwrap(), &default));
        assert!(set.find("other.test").is_none());
        assert_eq!(exact.source, CertSource::File);
        assert!(exact.not_after > 0);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_bad_file_names_its_entry() {
        let d = tmp("bad");
        std::fs::write(d.join("x.pem"), "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
        std::fs::write(d.join("x.key"), "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
        let e = Cert::load(
            &d.join("x.pem"),
            &d.join("x.key"),
            CertSource::File,
            "settings.tls.certs[2]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("settings.tls.certs[2]: cannot load certificate"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn acme_certs_are_added_beside_the_files() {
        let d = tmp("acme");
        let certs = Certs::default();
        let a = cert(&d, "a", &["a.test"]);
        certs.put_acme(a.clone());
        assert!(Arc::ptr_eq(certs.load_set().find("a.test").unwrap(), &a));
        let a2 = cert(&d, "a2", &["a.test"]);
        certs.put_acme(a2.clone());
        assert_eq!(certs.load_set().acme().len(), 1, "replaced, not added");
        assert!(Arc::ptr_eq(certs.load_set().find("a.test").unwrap(), &a2));
        let _ = std::fs::remove_dir_all(d);
    }

    /// A real ClientHello (rustls's) for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        client_hello_alpn(name, &[])
    }

    /// A real ClientHello (rustls's) for `name` offering `alpn`.
    fn client_hello_alpn(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        pingora_rustls::install_default_crypto_provider();
        let mut config = pingora_rustls::ClientConfig::builder()
            .with_root_certificates(pingora_rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            pingora_rustls::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn sni_is_read_from_a_client_hello() {
        assert_eq!(
            sni_of(&client_hello("app.example.com")),
            Some("app.example.com")
        );
        let hello = client_hello("x.test");
        assert_eq!(sni_of(&hello[..hello.len() - 3]), None, "truncated");
        assert_eq!(sni_of(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(sni_of(&[]), None);
    }

    #[test]
    fn the_acme_tls_alpn_offer_is_read_from_a_client_hello() {
        let offered = client_hello_alpn("a.test", &[b"acme-tls/1"]);
        assert_eq!(
            hello_of(&offered),
            Some(Hello {
                sni: Some("a.test"),
                acme_tls: true
            })
        );
        let browser = client_hello_alpn("a.test", &[b"h2", b"http/1.1"]);
        assert_eq!(
            hello_of(&browser),
            Some(Hello {
                sni: Some("a.test"),
                acme_tls: false
            })
        );
        assert!(!hello_of(&client_hello("a.test")).unwrap().acme_tls);
    }

    /// An `OnDemand` with one pending TLS-ALPN-01 answer, counting `ensure` calls.
    struct Pending {
        name: &'static str,
        key: Arc<CertifiedKey>,
        ensured: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl OnDemand for Pending {
        async fn ensure(&self, _name: &str) {
            self.ensured
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn tls_alpn_answer(&self, name: &str) -> Option<Arc<CertifiedKey>> {
            (name == self.name).then(|| self.key.clone())
        }
    }

    /// Run the hook on one accepted connection while a client offering `alpn` for `sni`
    /// handshakes; the hook's result, and the client's (negotiated ALPN, leaf certificate).
    async fn hook_vs_client(
        hook: Arc<SniHook>,
        sni: &'static str,
        alpn: &[&[u8]],
    ) -> (
        pingora_error::Result<()>,
        Option<(Option<Vec<u8>>, Vec<u8>)>,
    ) {
        pingora_rustls::install_default_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = pingora_rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let client = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = pingora_rustls::ServerName::try_from(sni).unwrap();
            let tls = pingora_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .ok()?;
            let (_, conn) = tls.get_ref();
            Some((
                conn.alpn_protocol().map(<[u8]>::to_vec),
                conn.peer_certificates()?[0].to_vec(),
            ))
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream: L4Stream = tcp.into();
        let r = hook.process(&mut stream).await;
        drop(stream);
        (r, client.await.unwrap())
    }

    #[derive(Debug)]
    struct AnyCert;

    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &pingora_rustls::CertificateDer<'_>,
            _: &[pingora_rustls::CertificateDer<'_>],
            _: &pingora_rustls::ServerName<'_>,
            _: &[u8],
            _: pingora_rustls::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &pingora_rustls::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &pingora_rustls::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[tokio::test]
    async fn the_hook_answers_acme_tls_1_with_the_challenge_cert_only_when_pending() {
        let d = tmp("alpn");
        let challenge = cert(&d, "challenge", &["a.test"]);
        let pending = Arc::new(Pending {
            name: "a.test",
            key: challenge.key.clone(),
            ensured: Default::default(),
        });
        let hook = SniHook::new(
            Arc::new(Certs::default()),
            pending.clone(),
            Duration::from_secs(5),
        );
        // The validator: the challenge certificate and acme-tls/1, then the hook ends the
        // connection (Err: Pingora must not run its own handshake on it).
        let (r, got) = hook_vs_client(hook.clone(), "a.test", &[ACME_TLS_ALPN]).await;
        assert!(r.is_err());
        let (alpn, leaf) = got.expect("the validator's handshake completes");
        assert_eq!(alpn.as_deref(), Some(ACME_TLS_ALPN));
        assert_eq!(leaf, challenge.key.cert[0].to_vec());
        // No pending challenge for the name: refused, and no order started by it.
        let (r, got) = hook_vs_client(hook.clone(), "b.test", &[ACME_TLS_ALPN]).await;
        assert!(r.is_err() && got.is_none());
        assert_eq!(
            pending.ensured.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn challenges_answer_their_tokens_only() {
        let c = Challenges::default();
        c.put("tok", "tok.thumb");
        assert_eq!(c.answer("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.answer("other"), None);
        c.remove("tok");
        assert_eq!(c.answer("tok"), None);
    }
}
