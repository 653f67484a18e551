//! `basic_auth` {users = {name = "$argon2id$..."}}: HTTP Basic authentication -> 401.
//!
//! Hashes are parsed once, at build time. Argon2 is slow on purpose (tens of milliseconds), so
//! each verdict is cached, keyed by the SHA-256 of the whole `Authorization` value (no password
//! is kept in memory): a client pays for Argon2 once per credential, not once per request.
//! Successes and failures have separate caches of 1024 entries, each cleared when full, so a
//! flood of wrong passwords cannot push out the good ones. An unknown user is checked against a
//! real hash all the same, so response times do not tell which user names exist.
//! The `Authorization` header is passed on upstream (remove it with the `headers` plugin).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHashString, PasswordVerifier};
use argon2::Argon2;
use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};

use super::{Plugin, Reply, RequestInfo};

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
    /// `users`: name -> Argon2 PHC string.
    pub fn new(users: &BTreeMap<String, String>) -> Result<BasicAuth, String> {
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
        })
    }

    /// Whether an `Authorization` header value grants access.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let fp: Fingerprint = Sha256::digest(value.as_bytes()).into();
        if knows(&self.granted, &fp) {
            return true;
        }
        if knows(&self.denied, &fp) {
            return false;
        }
        let Some((user, password)) = credentials(value.as_bytes()) else {
            return false; // cheap to find out again: not cached
        };
        let ok = match self.users.get(&user) {
            Some(hash) => verify(hash, &password),
            None => {
                verify(&self.decoy, &password);
                false
            }
        };
        remember(if ok { &self.granted } else { &self.denied }, fp);
        ok
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

    fn on_request(&self, req: &RequestInfo<'_>) -> Option<Reply> {
        if self.check(req.header.headers.get(http::header::AUTHORIZATION)) {
            return None;
        }
        Some(
            Reply::text(401, "unauthorized: valid credentials required").with_header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tenement\""),
            ),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plugins::tests::{get, info};
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

    fn auth() -> BasicAuth {
        let users = BTreeMap::from([
            ("alice".to_string(), hash("s3cret:with:colons")),
            ("bob".to_string(), hash("hunter2")),
        ]);
        BasicAuth::new(&users).unwrap()
    }

    #[test]
    fn right_password_passes_and_is_cached() {
        let a = auth();
        let good = basic("alice:s3cret:with:colons");
        assert!(a.check(Some(&good)));
        assert!(knows(&a.granted, &Sha256::digest(good.as_bytes()).into()));
        assert!(a.check(Some(&good)));
        assert!(a.check(Some(&basic("bob:hunter2"))));
        let lower = HeaderValue::from_str(&format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:hunter2")
        ))
        .unwrap();
        assert!(a.check(Some(&lower)), "the scheme is case-insensitive");
    }

    #[test]
    fn wrong_or_missing_credentials_fail() {
        let a = auth();
        let wrong = basic("alice:nope");
        assert!(!a.check(Some(&wrong)));
        assert!(knows(&a.denied, &Sha256::digest(wrong.as_bytes()).into()));
        assert!(!a.check(Some(&wrong)), "cached refusal");
        assert!(!a.check(Some(&basic("bob:s3cret:with:colons"))), "alice's");
        assert!(!a.check(Some(&basic("mallory:hunter2"))), "unknown user");
        assert!(!a.check(Some(&basic("alice"))), "no colon");
        assert!(!a.check(None));
        let bearer = HeaderValue::from_static("Bearer abc");
        assert!(!a.check(Some(&bearer)));
        let garbage = HeaderValue::from_static("Basic !!!");
        assert!(!a.check(Some(&garbage)));
    }

    #[test]
    fn replies_401_with_a_challenge() {
        let a = auth();
        let mut req = get("/");
        let reply = a.on_request(&info(&req, "::1")).unwrap();
        assert_eq!(reply.status, 401);
        let challenge = reply.headers.iter().find(|(n, _)| n == "www-authenticate");
        assert_eq!(challenge.unwrap().1, "Basic realm=\"tenement\"");
        req.insert_header("authorization", basic("bob:hunter2"))
            .unwrap();
        assert!(a.on_request(&info(&req, "::1")).is_none());
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
