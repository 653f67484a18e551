//! API tokens: generated once, stored only as Argon2 hashes. A verified token is cached by its
//! SHA-256 digest with the row it matched, and the row is looked up again on every use, so a
//! deleted token stops working at once while a valid one costs no Argon2 per request.
//!
//! New tokens are hashed on the process's shared [`HashRunner`] (SPEC §14: at most CPU count
//! at once, off the workers; 429 with `Retry-After: 1` when it is full). Failed attempts are
//! limited per client (IPv4 address or IPv6 /64, never for everyone) and counted before the
//! hash runs ([`Lockout`]); a cached valid token passes even when its address is locked out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};
use tenement_proxy::password::{HashRunner, Lockout, SingleFlight};
use tenement_supervisor::db::{self, Schema};

/// The `api_tokens` table (component `auth` in `schema_version`, see `tenement_supervisor::db`).
const SCHEMA: Schema = Schema {
    component: "auth",
    migrations: &[
        // 1: the schema from before versions existed.
        "CREATE TABLE IF NOT EXISTS api_tokens (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        );",
    ],
};

/// Bound on cached verified tokens (cleared when full; each costs one Argon2 to re-enter).
const MAX_VERIFIED: usize = 1024;

pub enum Verdict {
    Ok,
    /// 401 with this message.
    Denied(String),
    /// 429 with `Retry-After: retry_after` (seconds) and this message.
    TooMany {
        retry_after: u64,
        message: String,
    },
}

pub struct Auth {
    db: Mutex<Connection>,
    /// SHA-256 digest of a token that passed Argon2 -> the `api_tokens` row it matched.
    verified: Mutex<HashMap<[u8; 32], i64>>,
    lockout: Lockout,
    runner: Arc<HashRunner>,
    /// Tokens being checked: parallel requests with one new token share one hash.
    flights: SingleFlight<Outcome>,
    /// Argon2 parameters of new tokens.
    params: argon2::Params,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Auth {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Auth::open_with(path, HashRunner::shared(), argon2::Params::default())
    }

    fn open_with(
        path: &Path,
        runner: Arc<HashRunner>,
        params: argon2::Params,
    ) -> anyhow::Result<Self> {
        let conn = db::open(path, &[], Some(&SCHEMA))?;
        Ok(Auth {
            db: Mutex::new(conn),
            verified: Mutex::default(),
            lockout: Lockout::standard(),
            runner,
            flights: SingleFlight::default(),
            params,
        })
    }

    /// A new token (32 random bytes, hex): its Argon2 hash is stored, the token returned once.
    pub fn generate(&self) -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let token = format!("ten_{}", hex(&bytes));
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::new(
            argon2::Algorithm::default(),
            argon2::Version::default(),
            self.params.clone(),
        )
        .hash_password(token.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
        .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        lock(&self.db).execute(
            "INSERT INTO api_tokens (hash, created_ms) VALUES (?1, ?2)",
            params![hash, now],
        )?;
        Ok(token)
    }

    /// Every stored token: (row id, Argon2 PHC string).
    fn hashes(&self) -> Vec<(i64, String)> {
        let db = lock(&self.db);
        let Ok(mut stmt) = db.prepare_cached("SELECT id, hash FROM api_tokens") else {
            return Vec::new();
        };
        stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }

    /// Whether the token row `id` still exists (a deleted token stops working at once).
    fn row_exists(&self, id: i64) -> bool {
        let db = lock(&self.db);
        let Ok(mut stmt) = db.prepare_cached("SELECT 1 FROM api_tokens WHERE id = ?1") else {
            return false;
        };
        stmt.exists(params![id]).unwrap_or(false)
    }

    /// The row of a token verified before, if that row still exists.
    fn cached(&self, digest: &[u8; 32]) -> Option<i64> {
        let id = *lock(&self.verified).get(digest)?;
        if self.row_exists(id) {
            return Some(id);
        }
        lock(&self.verified).remove(digest);
        None
    }

    /// Check a bearer token from `client`: the cache first, then Argon2 on the shared runner
    /// (the attempt counted for `client` before it runs).
    pub async fn check(&self, token: Option<&str>, client: Option<IpAddr>) -> Verdict {
        let token = token.filter(|t| !t.is_empty());
        let digest: Option<[u8; 32]> = token.map(|t| Sha256::digest(t.as_bytes()).into());
        if digest.is_some_and(|d| self.cached(&d).is_some()) {
            return Verdict::Ok;
        }
        let (Some(token), Some(digest)) = (token, digest) else {
            // Counted like a wrong token (unless no token exists at all).
            let attempt = match self.lockout.reserve(client) {
                Ok(attempt) => attempt,
                Err(secs) => return Outcome::Locked(secs).verdict(),
            };
            if self.hashes().is_empty() {
                attempt.refund();
                return no_tokens();
            }
            return Verdict::Denied("missing token: send Authorization: Bearer <token>".into());
        };
        self.flights
            .run(digest, || self.verify_new(token, digest, client))
            .await
            .verdict()
    }

    /// Argon2 for a token not verified yet (shared by the requests that carry it meanwhile):
    /// the attempt is counted for `client` before it runs.
    async fn verify_new(&self, token: &str, digest: [u8; 32], client: Option<IpAddr>) -> Outcome {
        let attempt = match self.lockout.reserve(client) {
            Ok(attempt) => attempt,
            Err(secs) => return Outcome::Locked(secs),
        };
        let rows = self.hashes();
        if rows.is_empty() {
            attempt.refund();
            return Outcome::NoTokens;
        }
        let candidate = token.to_string();
        let found = self
            .runner
            .run(move || {
                rows.into_iter()
                    .find(|(_, h)| {
                        PasswordHash::new(h).is_ok_and(|parsed| {
                            Argon2::default()
                                .verify_password(candidate.as_bytes(), &parsed)
                                .is_ok()
                        })
                    })
                    .map(|(id, _)| id)
            })
            .await;
        match found {
            Err(_busy) => {
                attempt.refund();
                Outcome::Busy
            }
            Ok(Some(id)) => {
                attempt.refund();
                let mut verified = lock(&self.verified);
                if verified.len() >= MAX_VERIFIED {
                    verified.clear();
                }
                verified.insert(digest, id);
                Outcome::Found
            }
            // The attempt stays counted.
            Ok(None) => Outcome::NotFound,
        }
    }
}

/// What checking one new token found (shared by the requests that waited for it).
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Found,
    NotFound,
    NoTokens,
    Busy,
    Locked(u64),
}

impl Outcome {
    fn verdict(self) -> Verdict {
        match self {
            Outcome::Found => Verdict::Ok,
            Outcome::NotFound => Verdict::Denied("invalid token".into()),
            Outcome::NoTokens => no_tokens(),
            Outcome::Busy => Verdict::TooMany {
                retry_after: 1,
                message: "busy: too many token checks at once, retry in 1s".into(),
            },
            Outcome::Locked(secs) => Verdict::TooMany {
                retry_after: secs,
                message: format!("too many failed attempts from your address: retry in {secs}s"),
            },
        }
    }
}

fn no_tokens() -> Verdict {
    Verdict::Denied(
        "no API token is configured: run `ten token-gen` on the server (the control socket needs none)"
            .into(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Small Argon2 parameters (tests run unoptimised); `slots` hash slots.
    fn auth(dir: &Path, slots: usize) -> Auth {
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let runner = Arc::new(HashRunner::new(slots));
        Auth::open_with(&dir.join("tenement.db"), runner, params).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn status(v: &Verdict) -> u16 {
        match v {
            Verdict::Ok => 200,
            Verdict::Denied(_) => 401,
            Verdict::TooMany { .. } => 429,
        }
    }

    /// Review M9: a deleted token row stops working at once, even though it was cached; a
    /// cached token costs no Argon2.
    #[tokio::test]
    async fn cache_is_keyed_by_row_and_a_deleted_token_stops_working() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), 2);
        let t1 = a.generate().unwrap();
        let t2 = a.generate().unwrap();
        for _ in 0..3 {
            assert_eq!(status(&a.check(Some(&t1), ip("192.0.2.1")).await), 200);
        }
        assert_eq!(a.runner.started(), 1, "verified once, then cached");
        let other = Connection::open(dir.path().join("tenement.db")).unwrap();
        let id: i64 = *lock(&a.verified).values().next().unwrap();
        assert_eq!(
            other
                .execute("DELETE FROM api_tokens WHERE id = ?1", [id])
                .unwrap(),
            1
        );
        let v = a.check(Some(&t1), ip("192.0.2.1")).await;
        assert_eq!(status(&v), 401);
        assert!(lock(&a.verified).is_empty(), "the stale entry is gone");
        assert_eq!(status(&a.check(Some(&t2), ip("192.0.2.1")).await), 200);
    }

    /// SPEC §14: N concurrent bad tokens from one client: at most 5 reach Argon2.
    #[tokio::test]
    async fn failures_are_counted_before_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), 64);
        let good = a.generate().unwrap();
        let bad: Vec<String> = (0..16).map(|i| format!("ten_bad{i}")).collect();
        let checks = bad
            .iter()
            .enumerate()
            .map(|(i, t)| a.check(Some(t), ip(&format!("2001:db8::{i:x}"))));
        let verdicts = futures::future::join_all(checks).await;
        let statuses: Vec<u16> = verdicts.iter().map(status).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 401).count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 429).count(),
            11,
            "{statuses:?}"
        );
        assert_eq!(
            a.runner.started(),
            5,
            "only the reserved attempts were hashed"
        );
        // The /64 is locked out, even for a good token not yet cached ...
        assert_eq!(status(&a.check(Some(&good), ip("2001:db8::99")).await), 429);
        // ... another /64 is not; once cached, the token passes from the locked /64 too.
        assert_eq!(
            status(&a.check(Some(&good), ip("2001:db8:0:1::1")).await),
            200
        );
        assert_eq!(status(&a.check(Some(&good), ip("2001:db8::99")).await), 200);
        // IPv4 per address, v4-mapped as IPv4.
        for _ in 0..5 {
            assert_eq!(
                status(&a.check(Some("ten_x"), ip("::ffff:10.0.0.1")).await),
                401
            );
        }
        assert_eq!(status(&a.check(Some("ten_x"), ip("10.0.0.1")).await), 429);
        assert_eq!(status(&a.check(Some("ten_x"), ip("10.0.0.2")).await), 401);
    }

    #[tokio::test]
    async fn a_full_runner_answers_429_at_once_and_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), 1);
        let good = a.generate().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let runner = a.runner.clone();
        let held = tokio::spawn(async move { runner.run(move || rx.recv()).await });
        while a.runner.started() < 1 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            match a.check(Some(&good), ip("192.0.2.1")).await {
                Verdict::TooMany {
                    retry_after,
                    message,
                } => {
                    assert_eq!(retry_after, 1);
                    assert!(message.starts_with("busy"), "{message}");
                }
                v => panic!("expected busy, got {}", status(&v)),
            }
        }
        tx.send(()).unwrap();
        held.await.unwrap().unwrap().unwrap();
        assert_eq!(
            status(&a.check(Some(&good), ip("192.0.2.1")).await),
            200,
            "busy answers were not counted as failures"
        );
    }

    /// Parallel requests with one new token (a fleet router's health loop and its placement
    /// call, a client's first burst) share one Argon2 run: none is told "busy".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_requests_with_one_new_token_share_one_hash() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), 1);
        let good = a.generate().unwrap();
        let verdicts =
            futures::future::join_all((0..8).map(|_| a.check(Some(&good), ip("192.0.2.7")))).await;
        let statuses: Vec<u16> = verdicts.iter().map(status).collect();
        assert_eq!(statuses, [200; 8]);
        assert_eq!((a.runner.started(), a.runner.refused()), (1, 0));
    }
}
