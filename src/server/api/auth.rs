//! API tokens: generated once, stored only as Argon2 hashes, with a name, an optional scope
//! (`scope.rs`), the creation time and the last use. A verified token is cached by its
//! SHA-256 digest with the row it matched, and the row is looked up again on every use, so a
//! revoked (deleted) token stops working at once while a valid one costs no Argon2 per
//! request. The last use is written at most once a minute per token.
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

use super::scope::Scope;

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
        // 2: names, scopes and last use (issue 18); existing tokens: no name, unscoped.
        "ALTER TABLE api_tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
         ALTER TABLE api_tokens ADD COLUMN scope TEXT;
         ALTER TABLE api_tokens ADD COLUMN last_used_ms INTEGER;",
    ],
};

/// The last use is written when the stored one is older than this.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// One token as `GET /api/tokens` lists it (never the token or its hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// `PROCESS` or `PROCESS:ID`; None: the whole API.
    pub scope: Option<String>,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Bound on cached verified tokens (cleared when full; each costs one Argon2 to re-enter).
const MAX_VERIFIED: usize = 1024;

pub enum Verdict {
    /// A valid token, with its scope (None: the whole API).
    Ok(Option<Scope>),
    /// 401 with this message.
    Denied(String),
    /// 429 with `Retry-After: retry_after` (seconds) and this message.
    TooMany { retry_after: u64, message: String },
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

    /// A new token (32 random bytes, hex) named `name`, limited to `scope` when given: its
    /// Argon2 hash is stored; its row id and the token are returned, the token only here.
    pub fn generate(&self, name: &str, scope: Option<&Scope>) -> anyhow::Result<(i64, String)> {
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
        let db = lock(&self.db);
        db.execute(
            "INSERT INTO api_tokens (hash, created_ms, name, scope) VALUES (?1, ?2, ?3, ?4)",
            params![hash, now_ms(), name, scope.map(Scope::to_string)],
        )?;
        Ok((db.last_insert_rowid(), token))
    }

    /// Every token, oldest first (never the token or its hash).
    pub fn list(&self) -> anyhow::Result<Vec<TokenInfo>> {
        let db = lock(&self.db);
        let mut stmt = db.prepare_cached(
            "SELECT id, name, scope, created_ms, last_used_ms FROM api_tokens ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                scope: r.get(2)?,
                created_ms: r.get(3)?,
                last_used_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Delete token `id` and drop it from the cache: it stops working at once. False when no
    /// such token exists.
    pub fn revoke(&self, id: i64) -> anyhow::Result<bool> {
        let n = lock(&self.db).execute("DELETE FROM api_tokens WHERE id = ?1", params![id])?;
        lock(&self.verified).retain(|_, row| *row != id);
        Ok(n > 0)
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

    /// The scope of token row `id` if the row still exists (a revoked token stops working at
    /// once), writing its last use when the stored one is a minute old.
    fn row(&self, id: i64) -> Option<Option<Scope>> {
        let db = lock(&self.db);
        let mut stmt = db
            .prepare_cached("SELECT scope, last_used_ms FROM api_tokens WHERE id = ?1")
            .ok()?;
        let (scope, last): (Option<String>, Option<i64>) = stmt
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .ok()?;
        let now = now_ms();
        if last.is_none_or(|t| now.saturating_sub(t) >= LAST_USED_EVERY_MS) {
            if let Err(e) = db.execute(
                "UPDATE api_tokens SET last_used_ms = ?1 WHERE id = ?2",
                params![now, id],
            ) {
                tracing::debug!(error = %e, "could not record a token's last use");
            }
        }
        // A scope that no longer parses grants nothing rather than everything.
        match scope.map(|s| Scope::parse(&s)) {
            None => Some(None),
            Some(Ok(scope)) => Some(Some(scope)),
            Some(Err(_)) => None,
        }
    }

    /// The scope of a token verified before, if its row still exists.
    fn cached(&self, digest: &[u8; 32]) -> Option<Option<Scope>> {
        let id = *lock(&self.verified).get(digest)?;
        if let Some(scope) = self.row(id) {
            return Some(scope);
        }
        lock(&self.verified).remove(digest);
        None
    }

    /// Check a bearer token from `client`: the cache first, then Argon2 on the shared runner
    /// (the attempt counted for `client` before it runs).
    pub async fn check(&self, token: Option<&str>, client: Option<IpAddr>) -> Verdict {
        let token = token.filter(|t| !t.is_empty());
        let digest: Option<[u8; 32]> = token.map(|t| Sha256::digest(t.as_bytes()).into());
        if let Some(scope) = digest.and_then(|d| self.cached(&d)) {
            return Verdict::Ok(scope);
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
        match self
            .flights
            .run(digest, || self.verify_new(token, digest, client))
            .await
        {
            Outcome::Found(id) => match self.row(id) {
                Some(scope) => Verdict::Ok(scope),
                None => Outcome::NotFound.verdict(),
            },
            other => other.verdict(),
        }
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
                Outcome::Found(id)
            }
            // The attempt stays counted.
            Ok(None) => Outcome::NotFound,
        }
    }
}

/// What checking one new token found (shared by the requests that waited for it).
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Found(i64),
    NotFound,
    NoTokens,
    Busy,
    Locked(u64),
}

impl Outcome {
    fn verdict(self) -> Verdict {
        match self {
            // A found token's scope is read by `check`; never granted from here.
            Outcome::Found(_) | Outcome::NotFound => Verdict::Denied("invalid token".into()),
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
            Verdict::Ok(_) => 200,
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
        let t1 = a.generate("", None).unwrap().1;
        let t2 = a.generate("", None).unwrap().1;
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
        let good = a.generate("", None).unwrap().1;
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
        let good = a.generate("", None).unwrap().1;
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
        let good = a.generate("", None).unwrap().1;
        let verdicts =
            futures::future::join_all((0..8).map(|_| a.check(Some(&good), ip("192.0.2.7")))).await;
        let statuses: Vec<u16> = verdicts.iter().map(status).collect();
        assert_eq!(statuses, [200; 8]);
        assert_eq!((a.runner.started(), a.runner.refused()), (1, 0));
    }

    /// Issue 18: revoke takes effect at once (cache entry dropped), list shows no secret,
    /// scopes come back with the verdict, last use is recorded.
    #[tokio::test]
    async fn tokens_are_listed_revoked_and_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), 2);
        let (id1, t1) = a.generate("ci", None).unwrap();
        let scope = Scope::parse("app:u1").unwrap();
        let (id2, t2) = a.generate("customer", Some(&scope)).unwrap();
        assert!(matches!(
            a.check(Some(&t1), ip("192.0.2.1")).await,
            Verdict::Ok(None)
        ));
        match a.check(Some(&t2), ip("192.0.2.1")).await {
            Verdict::Ok(Some(s)) => assert_eq!(s, scope),
            v => panic!("expected a scoped Ok, got {}", status(&v)),
        }
        let list = a.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].id, list[0].name.as_str(), list[0].scope.as_deref()),
            (id1, "ci", None)
        );
        assert_eq!(list[1].scope.as_deref(), Some("app:u1"));
        assert!(list.iter().all(|t| t.last_used_ms.is_some()), "{list:?}");
        let text = serde_json::to_string(&list).unwrap();
        assert!(!text.contains(&t1) && !text.contains("argon2"), "{text}");
        assert!(a.revoke(id1).unwrap());
        assert!(!a.revoke(id1).unwrap(), "already gone");
        assert_eq!(status(&a.check(Some(&t1), ip("192.0.2.1")).await), 401);
        assert!(!lock(&a.verified).values().any(|id| *id == id1));
        assert_eq!(status(&a.check(Some(&t2), ip("192.0.2.1")).await), 200);
        assert_eq!(a.list().unwrap().len(), 1);
        assert_eq!(id2, a.list().unwrap()[0].id);
    }

    /// A database written before names and scopes keeps its tokens: unscoped, unnamed.
    #[tokio::test]
    async fn a_version_1_table_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenement.db");
        let old = Auth::open_with(
            &path,
            Arc::new(HashRunner::new(1)),
            argon2::Params::new(1024, 1, 1, None).unwrap(),
        );
        drop(old);
        {
            let c = Connection::open(&path).unwrap();
            // Back to version 1: the columns of before.
            c.execute_batch(
                "DROP TABLE api_tokens;
                 CREATE TABLE api_tokens (id INTEGER PRIMARY KEY, hash TEXT NOT NULL, created_ms INTEGER NOT NULL);
                 UPDATE schema_version SET version = 1 WHERE component = 'auth';",
            )
            .unwrap();
            let salt = SaltString::generate(&mut OsRng);
            let hash = Argon2::default()
                .hash_password(b"ten_old", &salt)
                .unwrap()
                .to_string();
            c.execute(
                "INSERT INTO api_tokens (hash, created_ms) VALUES (?1, 5)",
                params![hash],
            )
            .unwrap();
        }
        let a = auth(dir.path(), 1);
        assert!(matches!(
            a.check(Some("ten_old"), ip("192.0.2.1")).await,
            Verdict::Ok(None)
        ));
        let list = a.list().unwrap();
        assert_eq!(
            (
                list[0].name.as_str(),
                list[0].scope.as_ref(),
                list[0].created_ms
            ),
            ("", None, 5)
        );
    }
}
