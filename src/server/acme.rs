//! ACME (`[settings.acme]`, SPEC §13): certificates on demand for the names ten routes, with
//! instant-acme; the HTTP-01 challenge answered on the plain listeners, or TLS-ALPN-01 (RFC
//! 8737) on the TLS listener (a self-signed challenge certificate made with rcgen, served by
//! the proxy's pre-TLS hook to a ClientHello offering `acme-tls/1`).
//!
//! - A TLS handshake for a name no loaded certificate covers calls [`Acme::ensure`] (through
//!   the proxy's pre-TLS hook, which waits at most `HANDSHAKE_WAIT`). Only names the current
//!   routing table routes are ordered ([`tenement_proxy::Table::routes_host`]: `[routes]`
//!   hosts, tenant domains, instance and process hosts, the bare domain), never an arbitrary
//!   SNI.
//! - At most one order per name at a time: later handshakes wait for the same order. An order
//!   runs in its own task, so it completes (and is stored) even when the handshake that started
//!   it stopped waiting.
//! - A failed order is logged and the name is not ordered again before its backoff passes
//!   (30 s, doubled per failure, at most 6 h).
//! - The account key and every certificate live in `{data_dir}/acme/` (0600), loaded at start:
//!   a restart serves them without a new order.
//! - A background task renews a certificate 30 days before it expires (checked at start and
//!   every 12 hours).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use parking_lot::Mutex;
use pingora_rustls::sign::CertifiedKey;
use tokio::sync::{watch, OnceCell};

use tenement_conf::AcmeChallenge;
use tenement_proxy::tls::{Cert, CertSource, Certs, Challenges, OnDemand};
use tenement_proxy::Router;

/// How long a handshake waits for an order before it gets the default certificate.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// Renew this long before a certificate expires.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// How often the renewal task looks.
const RENEW_EVERY: Duration = Duration::from_secs(12 * 3600);

const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// Tests only: ten's ACME clock runs this far ahead (a humantime duration), so a fresh
/// certificate can look near its expiry.
pub const CLOCK_OFFSET_ENV: &str = "TEN_ACME_TEST_CLOCK_OFFSET";

enum NameState {
    /// An order is running; resolves to true when it ends.
    Ordering(watch::Receiver<bool>),
    /// The last order failed: not again before `retry_at`.
    Failed {
        retry_at: Instant,
        backoff: Duration,
    },
}

pub struct Acme {
    conf: tenement_conf::Acme,
    dir: PathBuf,
    certs: Arc<Certs>,
    challenges: Arc<Challenges>,
    /// TLS-ALPN-01 challenge certificates by name, while their order is validated.
    alpn_answers: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    router: Arc<Router>,
    account: OnceCell<Account>,
    names: Mutex<HashMap<String, NameState>>,
    clock_offset: Duration,
    /// Orders started since start (for tests and logs).
    started: std::sync::atomic::AtomicU64,
    me: Weak<Acme>,
    /// The main runtime: an order asked for by a handshake on a proxy worker runs there.
    main: tokio::runtime::Handle,
}

impl Acme {
    /// Prepare `{data_dir}/acme/` and load the certificates stored there into `certs`. Call
    /// it on the main runtime (orders are spawned there).
    pub fn new(
        conf: tenement_conf::Acme,
        data_dir: &Path,
        certs: Arc<Certs>,
        challenges: Arc<Challenges>,
        router: Arc<Router>,
    ) -> Result<Arc<Acme>> {
        let dir = data_dir.join("acme");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        set_mode(&dir, 0o700)?;
        let clock_offset = match std::env::var(CLOCK_OFFSET_ENV) {
            Ok(v) if !v.is_empty() => humantime::parse_duration(&v)
                .with_context(|| format!("{CLOCK_OFFSET_ENV}: bad duration {v:?}"))?,
            _ => Duration::ZERO,
        };
        let acme = Arc::new_cyclic(|me| Acme {
            conf,
            dir,
            certs,
            challenges,
            alpn_answers: Mutex::new(HashMap::new()),
            router,
            account: OnceCell::new(),
            names: Mutex::new(HashMap::new()),
            clock_offset,
            started: Default::default(),
            me: me.clone(),
            main: tokio::runtime::Handle::current(),
        });
        acme.load_stored();
        Ok(acme)
    }

    /// The HTTP-01 answers its orders publish (the proxy serves them).
    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    /// Every `{name}.crt` with its `{name}.key` in the acme dir, into the cert set.
    fn load_stored(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("crt") {
                continue;
            }
            let key = path.with_extension("key");
            match Cert::load(&path, &key, CertSource::Acme, "acme") {
                Ok(cert) => {
                    tracing::info!(names = ?cert.names, "acme: stored certificate loaded");
                    self.certs.put_acme(Arc::new(cert));
                }
                Err(e) => tracing::warn!(error = %e, "acme: stored certificate not usable"),
            }
        }
    }

    /// Seconds since the epoch on ten's ACME clock.
    fn now(&self) -> i64 {
        let now = SystemTime::now() + self.clock_offset;
        now.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// The renewal loop (until the process ends).
    pub async fn renew_loop(self: Arc<Self>) {
        loop {
            self.renew_due().await;
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Renew every ACME certificate within `RENEW_BEFORE` of its expiry.
    pub async fn renew_due(&self) {
        let due: Vec<String> = self
            .certs
            .load_set()
            .acme()
            .iter()
            .filter(|c| c.not_after - self.now() < RENEW_BEFORE.as_secs() as i64)
            .filter_map(|c| c.names.first().cloned())
            .collect();
        for name in due {
            tracing::info!(name, "acme: certificate due for renewal");
            self.order_once(&name).await;
        }
    }

    /// Start (or join) the one order for `name` and wait for it to end. Nothing while a
    /// failed order's backoff runs.
    async fn order_once(&self, name: &str) {
        let mut done = {
            let mut names = self.names.lock();
            let backoff = match names.get(name) {
                Some(NameState::Ordering(rx)) => Some(rx.clone()),
                Some(NameState::Failed { retry_at, .. }) if Instant::now() < *retry_at => {
                    tracing::debug!(name, "acme: last order failed, backing off");
                    return;
                }
                _ => None,
            };
            match backoff {
                Some(rx) => rx,
                None => {
                    let previous = match names.get(name) {
                        Some(NameState::Failed { backoff, .. }) => Some(*backoff),
                        _ => None,
                    };
                    let (tx, rx) = watch::channel(false);
                    self.started
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    names.insert(name.to_string(), NameState::Ordering(rx.clone()));
                    let Some(me) = self.me.upgrade() else {
                        return;
                    };
                    let name = name.to_string();
                    self.main
                        .spawn(async move { me.run_order(name, previous, tx).await });
                    rx
                }
            }
        };
        let _ = done.wait_for(|d| *d).await;
    }

    async fn run_order(
        self: Arc<Self>,
        name: String,
        previous: Option<Duration>,
        tx: watch::Sender<bool>,
    ) {
        tracing::info!(name, directory = %self.conf.directory, "acme: ordering a certificate");
        match self.order(&name).await {
            Ok(cert) => {
                tracing::info!(
                    name,
                    issuer = %cert.issuer,
                    not_after = cert.not_after,
                    "acme: certificate issued"
                );
                self.certs.put_acme(Arc::new(cert));
                self.names.lock().remove(&name);
            }
            Err(e) => {
                let backoff = previous.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                tracing::warn!(name, error = %format!("{e:#}"), retry_in = ?backoff, "acme: order failed");
                self.names.lock().insert(
                    name,
                    NameState::Failed {
                        retry_at: Instant::now() + backoff,
                        backoff,
                    },
                );
            }
        }
        let _ = tx.send(true);
    }

    /// The account: stored credentials, else a new account (stored, 0600).
    async fn account(&self) -> Result<&Account> {
        self.account
            .get_or_try_init(|| async {
                let builder = || match &self.conf.ca_cert {
                    Some(ca) => Account::builder_with_root(ca),
                    None => Account::builder(),
                };
                let path = self.dir.join("account.json");
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let creds: AccountCredentials = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not an ACME account", path.display()))?;
                    return builder()?
                        .from_credentials(creds)
                        .await
                        .context("cannot restore the ACME account");
                }
                let contact = self.conf.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.conf.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| {
                        format!("cannot create an ACME account at {}", self.conf.directory)
                    })?;
                write_private(&path, serde_json::to_string(&creds)?.as_bytes())?;
                tracing::info!(directory = %self.conf.directory, "acme: account created");
                Ok(account)
            })
            .await
    }

    /// One order for `name` (the configured challenge), stored under the acme dir.
    async fn order(&self, name: &str) -> Result<Cert> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(name.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut tokens = Vec::new();
        let mut authzs = order.authorizations();
        let mut ready = Ok(());
        let (kind, label) = match self.conf.challenge {
            AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
            AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        };
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("authorization is {other:?}"),
            }
            let Some(mut ch) = a.challenge(kind.clone()) else {
                bail!("the ACME server offers no {label} challenge");
            };
            let key_auth = ch.key_authorization();
            match self.conf.challenge {
                AcmeChallenge::Http01 => {
                    self.challenges.put(&ch.token, key_auth.as_str());
                    tokens.push(ch.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cert = challenge_cert(name, key_auth.digest().as_ref())?;
                    self.alpn_answers.lock().insert(name.to_string(), cert);
                }
            }
            if let Err(e) = ch.set_ready().await {
                ready = Err(e);
                break;
            }
        }
        let status = match ready {
            Ok(()) => {
                order
                    .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(60)))
                    .await
            }
            Err(e) => Err(e),
        };
        for t in &tokens {
            self.challenges.remove(t);
        }
        self.alpn_answers.lock().remove(name);
        let status = status?;
        if status != OrderStatus::Ready {
            let port = match self.conf.challenge {
                AcmeChallenge::Http01 => "port 80",
                AcmeChallenge::TlsAlpn01 => "port 443 (the TLS listener)",
            };
            bail!(
                "order is {status:?}, not ready (was the {label} challenge reachable on {port}?)"
            );
        }
        let key_pem = order.finalize().await?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
            .await?;
        let file = file_name(name)?;
        let (crt, key) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        write_private(&key, key_pem.as_bytes())?;
        write_private(&crt, chain.as_bytes())?;
        Cert::load(&crt, &key, CertSource::Acme, "acme").map_err(|e| anyhow!("{e}"))
    }
}

#[async_trait]
impl OnDemand for Acme {
    async fn ensure(&self, name: &str) {
        if !self.router.load().routes_host(name) {
            tracing::debug!(name, "acme: not a routed name, no order");
            return;
        }
        self.order_once(name).await;
    }

    fn tls_alpn_answer(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn_answers.lock().get(name).cloned()
    }
}

/// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737 §3): self-signed, the name as
/// its only SAN, the critical acmeIdentifier extension holding the SHA-256 `digest` of the
/// key authorization. Its key is a fresh P-256 key, used for this challenge only.
fn challenge_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>> {
    if digest.len() != 32 {
        bail!(
            "a key authorization digest of {} bytes (expected 32)",
            digest.len()
        );
    }
    let key = rcgen::KeyPair::generate().context("cannot make a challenge key")?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .context("cannot make a challenge certificate")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .context("cannot sign the challenge certificate")?;
    pingora_rustls::install_default_crypto_provider();
    let provider = pingora_rustls::CryptoProvider::get_default()
        .ok_or_else(|| anyhow!("no rustls crypto provider"))?;
    let der = pingora_rustls::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| anyhow!("unusable challenge key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// A host name as a file name (host names hold no '/'; refuse anything odd).
fn file_name(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        bail!("not a host name: {name:?}");
    }
    Ok(name)
}

/// Write `bytes` to `path` (0600) through a temp file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// ACME against a directory nothing listens on, with a table routing `ten.test` (the bare
    /// domain) only.
    fn unreachable(dir: &Path) -> Arc<Acme> {
        let conf = tenement_conf::Acme {
            email: None,
            directory: "http://127.0.0.1:9/dir".into(),
            challenge: tenement_conf::AcmeChallenge::Http01,
            ca_cert: None,
        };
        let table = tenement_proxy::TableBuilder::new("ten.test").build();
        Acme::new(
            conf,
            dir,
            Arc::new(Certs::default()),
            Arc::new(Challenges::default()),
            Arc::new(Router::new(table)),
        )
        .unwrap()
    }

    fn started(a: &Acme) -> u64 {
        a.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test]
    async fn unrouted_names_are_never_ordered_and_failures_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let acme = unreachable(dir.path());
        acme.ensure("evil.example.org").await;
        assert_eq!(started(&acme), 0, "an unrouted SNI orders nothing");
        // Two handshakes at once for a routed name: one order.
        tokio::join!(acme.ensure("ten.test"), acme.ensure("ten.test"));
        assert_eq!(started(&acme), 1);
        // It failed (nothing listens): backing off, no new order.
        acme.ensure("ten.test").await;
        assert_eq!(started(&acme), 1, "a failed name waits for its backoff");
        match acme.names.lock().get("ten.test") {
            Some(NameState::Failed { backoff, .. }) => assert_eq!(*backoff, FIRST_BACKOFF),
            _ => panic!("expected a failed state"),
        }
        // Past the backoff: ordered again, and the next backoff doubles.
        if let Some(NameState::Failed { retry_at, .. }) = acme.names.lock().get_mut("ten.test") {
            *retry_at = Instant::now();
        }
        acme.ensure("ten.test").await;
        assert_eq!(started(&acme), 2);
        match acme.names.lock().get("ten.test") {
            Some(NameState::Failed { backoff, .. }) => assert_eq!(*backoff, FIRST_BACKOFF * 2),
            _ => panic!("expected a failed state"),
        }
        // The acme dir is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("acme"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_challenge_cert_names_the_host_and_carries_the_digest_critically() {
        let digest = [7u8; 32];
        let key = challenge_cert("a.example.com", &digest).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [x509_parser::extensions::GeneralName::DNSName(
                "a.example.com"
            )]
        );
        let id = c
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(id.critical);
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&digest);
        assert_eq!(id.value, &der[..], "an OCTET STRING holding the digest");
        assert!(challenge_cert("a.example.com", &[1, 2]).is_err());
    }

    #[test]
    fn only_host_names_become_file_names() {
        assert_eq!(file_name("a.example.com").unwrap(), "a.example.com");
        assert!(file_name("../etc/passwd").is_err());
        assert!(file_name("a/b").is_err());
        assert!(file_name("").is_err());
        assert!(file_name(".hidden").is_err());
    }
}
