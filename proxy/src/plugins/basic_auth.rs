//! `basic_auth` {users = {name = "$argon2id$..."}}: HTTP Basic authentication -> 401.
//!
//! Hashes are parsed once, at build time. Argon2 is slow on purpose (tens of milliseconds), so
//! each verdict is cached, keyed by the SHA-256 of the whole `Authorization` value (no password
//! is kept in memory): a client pays for Argon2 once per credential, not once per request.
//! Successes and failures have separate caches of 1024 entries, each cleared when full, so a
//! flood of wrong passwords cannot push out the good ones. An unknown user is checked against a
//! real hash all the same, so response times do not tell which user names exist.
//! The `Authorization` header is passed on upstream (remove it with the `headers` plugin).
//!
//! A request without credentials, or whose credentials are cached, is answered on the spot. A
//! new credential is checked off the workers by the process's [`HashRunner`] ([`Check::Later`]):
//! 503 with `Retry-After: 1` when every hash slot is busy. Its attempt is counted for the
//! client (IPv4 address or IPv6 /64) before the hash runs: 5 wrong passwords within a minute,
//! then 429 for 30 s (a cached right password still passes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHashString, PasswordVerifier};
use argon2::Argon2;
use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};

use super::{Check, Plugin, Reply, RequestInfo};
use crate::password::{HashRunner, Lockout, SingleFlight};

pub(crate) const KIND: &str = "basic_auth";
const CACHE_CAP: usize = 1024;

type Fingerprint = [u8; 32];

/// HTTP Basic authentication against Argon2 PHC hashes.
#[derive(Debug)]
pub struct BasicAuth {
    users: HashMap<String, PasswordHashString>,
    /// Verified for unknown users, so they cost as much as a wrong password.
    decoy: PasswordHashString,
    granted: Mutex<HashSet<Fingerprint>>,
    denied: Mutex<HashSet<Fingerprint>>,
    runner: Arc<HashRunner>,
    lockout: Lockout,
    /// New credentials being checked: parallel requests with one share one hash.
    flights: SingleFlight<Option<Reply>>,
}

/// Parse and check one PHC string; the message never quotes it (it may be a secret).
fn parse_hash(phc: &str) -> Result<PasswordHashString, String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("invalid Argon2 PHC string: {e}"))?;
    argon2::Algorithm::try_from(hash.algorithm).map_err(|e| format!("not an Argon2 hash: {e}"))?;
    argon2::Params::try_from(&hash).map_err(|e| format!("invalid Argon2 parameters: {e}"))?;
    let (Some(salt), Some(_)) = (hash.salt, &hash.hash) else {
        return Err("invalid Argon2 PHC string: the salt or the hash is missing".into());
    };
    let mut buf = [0u8; 64];
    let salt_len = salt.decode_b64(&mut buf).map_or(0, |s| s.len());
    if salt_len < argon2::MIN_SALT_LEN {
        return Err(format!(
            "invalid Argon2 hash: the salt must be at least {} bytes",
            argon2::MIN_SALT_LEN
        ));
    }
    Ok(hash.serialize())
}

fn remember(cache: &Mutex<HashSet<Fingerprint>>, fp: Fingerprint) {
    let mut set = cache.lock().unwrap_or_else(|p| p.into_inner());
    if set.len() >= CACHE_CAP {
        set.clear();
    }
    set.insert(fp);
}

fn knows(cache: &Mutex<HashSet<Fingerprint>>, fp: &Fingerprint) -> bool {
    cache.lock().unwrap_or_else(|p| p.into_inner()).contains(fp)
}

/// `Basic base64(user:pass)` -> (user, pass).
fn credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?.to_string();
    Some((user, decoded[colon + 1..].to_vec()))
}

impl BasicAuth {
    /// `users`: name -> Argon2 PHC string. Hashes run on the process's shared runner.
    pub fn new(users: &BTreeMap<String, String>) -> Result<BasicAuth, String> {
        BasicAuth::with_runner(users, HashRunner::shared())
    }

    /// As [`BasicAuth::new`], hashing on `runner`.
    pub fn with_runner(
        users: &BTreeMap<String, String>,
        runner: Arc<HashRunner>,
    ) -> Result<BasicAuth, String> {
        let mut parsed = HashMap::with_capacity(users.len());
        for (name, phc) in users {
            let hash = parse_hash(phc).map_err(|e| format!("user {name}: {e}"))?;
            parsed.insert(name.clone(), hash);
        }
        let decoy = parsed
            .values()
            .next()
            .cloned()
            .ok_or_else(|| "no users: add at least one".to_string())?;
        Ok(BasicAuth {
            users: parsed,
            decoy,
            granted: Mutex::default(),
            denied: Mutex::default(),
            runner,
            lockout: Lockout::standard(),
            flights: SingleFlight::default(),
        })
    }

    /// The check of one request: on the spot unless a new credential must be hashed.
    fn check<'a>(
        &'a self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
    ) -> Check<'a> {
        let Some(value) = authorization else {
            return Check::Reply(challenge());
        };
        let fp: Fingerprint = Sha256::digest(value.as_bytes()).into();
        if knows(&self.granted, &fp) {
            return Check::Pass;
        }
        if knows(&self.denied, &fp) {
            return Check::Reply(challenge());
        }
        let Some((user, password)) = credentials(value.as_bytes()) else {
            return Check::Reply(challenge()); // cheap to find out again: not cached
        };
        Check::Later(Box::pin(
            self.flights
                .run(fp, move || self.verify_new(fp, user, password, client)),
        ))
    }

    /// Argon2 for a credential not seen yet: counted first, then hashed off the worker.
    async fn verify_new(
        &self,
        fp: Fingerprint,
        user: String,
        password: Vec<u8>,
        client: Option<IpAddr>,
    ) -> Option<Reply> {
        let attempt = match self.lockout.reserve(client) {
            Ok(attempt) => attempt,
            Err(secs) => return Some(locked_out(secs)),
        };
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (self.decoy.clone(), false),
        };
        match self.runner.run(move || verify(&hash, &password)).await {
            Err(_busy) => {
                attempt.refund();
                Some(
                    Reply::text(503, "busy: too many password checks at once, retry shortly")
                        .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                )
            }
            Ok(ok) => {
                let ok = ok && known;
                remember(if ok { &self.granted } else { &self.denied }, fp);
                if ok {
                    attempt.refund();
                    None
                } else {
                    Some(challenge())
                }
            }
        }
    }
}

/// 401 with the Basic challenge.
fn challenge() -> Reply {
    Reply::text(401, "unauthorized: valid credentials required").with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tenement\""),
    )
}

/// 429: too many wrong passwords from this client.
fn locked_out(secs: u64) -> Reply {
    let reply = Reply::text(
        429,
        &format!("too many failed logins from your address: retry in {secs}s"),
    );
    match HeaderValue::from_str(&secs.to_string()) {
        Ok(v) => reply.with_header(http::header::RETRY_AFTER, v),
        Err(_) => reply,
    }
}

fn verify(hash: &PasswordHashString, password: &[u8]) -> bool {
    Argon2::default()
        .verify_password(password, &hash.password_hash())
        .is_ok()
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        KIND
    }

    /// Without the hash: a cached right credential passes, anything else is refused. (The
    /// chain calls [`Plugin::check_request`], which also checks new credentials.)
    fn on_request(&self, req: &RequestInfo<'_>) -> Option<Reply> {
        match self.check(req.header.headers.get(http::header::AUTHORIZATION), None) {
            Check::Pass => None,
            Check::Reply(reply) => Some(reply),
            Check::Later(_) => Some(challenge()),
        }
    }

    fn check_request<'a>(&'a self, req: &RequestInfo<'_>) -> Check<'a> {
        self.check(
            req.header.headers.get(http::header::AUTHORIZATION),
            req.client_ip,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plugins::tests::{block_on, get, info};
    use argon2::password_hash::rand_core::OsRng;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Params, Version};

    /// A real Argon2id hash with small parameters (tests run unoptimised).
    fn hash(password: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        let params = Params::new(1024, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn basic(user_pass: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(user_pass);
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    fn users() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("alice".to_string(), hash("s3cret:with:colons")),
            ("bob".to_string(), hash("hunter2")),
        ])
    }

    fn auth() -> BasicAuth {
        BasicAuth::with_runner(&users(), Arc::new(HashRunner::new(4))).unwrap()
    }

    /// The whole check of one request from `client`: Some(status) when refused.
    async fn verdict(a: &BasicAuth, v: Option<&HeaderValue>, client: &str) -> Option<u16> {
        let reply = match a.check(v, Some(client.parse().unwrap())) {
            Check::Pass => None,
            Check::Reply(r) => Some(r),
            Check::Later(answer) => answer.await,
        };
        reply.map(|r| r.status)
    }

    fn check(a: &BasicAuth, v: Option<&HeaderValue>) -> bool {
        block_on(verdict(a, v, "192.0.2.1")).is_none()
    }

    #[test]
    fn right_password_passes_and_is_cached() {
        let a = auth();
        let good = basic("alice:s3cret:with:colons");
        assert!(check(&a, Some(&good)));
        assert!(knows(&a.granted, &Sha256::digest(good.as_bytes()).into()));
        assert!(check(&a, Some(&good)));
        assert!(check(&a, Some(&basic("bob:hunter2"))));
        let lower = HeaderValue::from_str(&format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:hunter2")
        ))
        .unwrap();
        assert!(check(&a, Some(&lower)), "the scheme is case-insensitive");
    }

    #[test]
    fn wrong_or_missing_credentials_fail() {
        let a = auth();
        let wrong = basic("alice:nope");
        assert!(!check(&a, Some(&wrong)));
        assert!(knows(&a.denied, &Sha256::digest(wrong.as_bytes()).into()));
        assert!(!check(&a, Some(&wrong)), "cached refusal");
        assert!(
            !check(&a, Some(&basic("bob:s3cret:with:colons"))),
            "alice's"
        );
        assert!(!check(&a, Some(&basic("mallory:hunter2"))), "unknown user");
        assert!(!check(&a, Some(&basic("alice"))), "no colon");
        assert!(!check(&a, None));
        let bearer = HeaderValue::from_static("Bearer abc");
        assert!(!check(&a, Some(&bearer)));
        let garbage = HeaderValue::from_static("Basic !!!");
        assert!(!check(&a, Some(&garbage)));
    }

    #[test]
    fn replies_401_with_a_challenge() {
        let a = auth();
        let mut req = get("/");
        let Check::Reply(reply) = a.check_request(&info(&req, "::1")) else {
            panic!("no credentials: answered on the spot");
        };
        assert_eq!(reply.status, 401);
        let challenge = reply.headers.iter().find(|(n, _)| n == "www-authenticate");
        assert_eq!(challenge.unwrap().1, "Basic realm=\"tenement\"");
        req.insert_header("authorization", basic("bob:hunter2"))
            .unwrap();
        assert_eq!(
            a.on_request(&info(&req, "::1")).unwrap().status,
            401,
            "the synchronous hook never passes an unverified credential"
        );
        let Check::Later(answer) = a.check_request(&info(&req, "::1")) else {
            panic!("a new credential is hashed later");
        };
        assert!(block_on(answer).is_none());
        assert!(matches!(a.check_request(&info(&req, "::1")), Check::Pass));
        assert!(a.on_request(&info(&req, "::1")).is_none(), "cached");
    }

    /// SPEC §14: Argon2 never runs on the calling (worker) thread. On a current-thread
    /// runtime a ticker task progresses while a new credential is being verified; were the
    /// hash run inside `poll`, the check would finish before the ticker ever ran.
    #[test]
    fn verification_leaves_the_worker_free() {
        let a = auth();
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = block_on(async {
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            });
            let v = verdict(&a, Some(&basic("alice:wrong")), "192.0.2.9").await;
            let seen = ticks.load(std::sync::atomic::Ordering::Relaxed);
            ticker.abort();
            assert_eq!(v, Some(401));
            seen
        });
        assert!(seen > 0, "the worker was blocked for the whole hash");
        assert_eq!(a.runner.started(), 1);
    }

    #[test]
    fn busy_runner_answers_503_and_counts_nothing() {
        let runner = Arc::new(HashRunner::new(1));
        let a = BasicAuth::with_runner(&users(), runner.clone()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        block_on(async {
            // Hold the only slot.
            let held = {
                let runner = runner.clone();
                tokio::spawn(async move { runner.run(move || rx.recv()).await })
            };
            while runner.started() < 1 {
                tokio::task::yield_now().await;
            }
            for i in 0..8 {
                let v = verdict(&a, Some(&basic(&format!("alice:x{i}"))), "192.0.2.1").await;
                assert_eq!(v, Some(503), "{i}");
            }
            tx.send(()).unwrap();
            held.await.unwrap().unwrap().unwrap();
            // Busy answers were refunded: this client may still try (and succeed).
            let ok = basic("alice:s3cret:with:colons");
            assert_eq!(verdict(&a, Some(&ok), "192.0.2.1").await, None);
        });
        assert_eq!(runner.refused(), 8);
    }

    #[test]
    fn wrong_passwords_are_counted_before_hashing_per_64() {
        let runner = Arc::new(HashRunner::new(64));
        let a = BasicAuth::with_runner(&users(), runner.clone()).unwrap();
        let statuses = block_on(async {
            // 20 new wrong passwords at once from one /64: only the first 5 are hashed.
            let checks = (0..20).map(|i| {
                let v = basic(&format!("alice:bad{i}"));
                let a = &a;
                async move { verdict(a, Some(&v), &format!("2001:db8::{i:x}")).await }
            });
            let mut statuses = Vec::new();
            for s in futures::future::join_all(checks).await {
                statuses.push(s.unwrap());
            }
            statuses
        });
        assert_eq!(
            statuses.iter().filter(|s| **s == 401).count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 429).count(),
            15,
            "{statuses:?}"
        );
        assert_eq!(runner.started(), 5);
        // Another /64 is not affected; a cached right password passes even when locked out.
        assert!(check(&a, Some(&basic("bob:hunter2"))));
        let ok = basic("bob:hunter2");
        assert_eq!(block_on(verdict(&a, Some(&ok), "2001:db8::1")), None);
    }

    #[test]
    fn cache_stays_bounded() {
        let a = auth();
        for i in 0..CACHE_CAP as u32 + 10 {
            remember(&a.denied, Sha256::digest(i.to_be_bytes()).into());
        }
        assert!(a.denied.lock().unwrap().len() <= CACHE_CAP);
    }

    #[test]
    fn unparsable_hashes_fail_the_build() {
        for bad in [
            "$argon2id$nope",
            "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ",
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "plain",
        ] {
            let users = BTreeMap::from([("alice".to_string(), bad.to_string())]);
            let e = BasicAuth::new(&users).unwrap_err();
            assert!(e.starts_with("user alice: "), "{e}");
            assert!(!e.contains(bad), "{e}");
        }
        assert!(BasicAuth::new(&BTreeMap::new()).is_err());
    }
}
