//! API tokens: generated once, stored only as Argon2 hashes; verified tokens are cached by
//! their SHA-256 digest so the API is not slowed by Argon2 on every call; failed attempts are
//! limited per client address (never for everyone).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};
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

/// Failures allowed per client address within WINDOW before it is slowed down.
const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
/// How long an address is refused (429) once over the limit.
const PENALTY: Duration = Duration::from_secs(30);
/// Bound on remembered addresses (oldest forgotten first).
const MAX_TRACKED: usize = 10_000;

pub enum Verdict {
    Ok,
    /// 401 with this message.
    Denied(String),
    /// 429: retry after this many seconds.
    Slowed(u64),
}

struct Failures {
    count: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

pub struct Auth {
    db: Mutex<Connection>,
    /// SHA-256 digests of tokens that passed Argon2 verification.
    verified: Mutex<HashSet<[u8; 32]>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Auth {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = db::open(path, &[], Some(&SCHEMA))?;
        Ok(Auth {
            db: Mutex::new(conn),
            verified: Mutex::default(),
            failures: Mutex::default(),
        })
    }

    /// A new token (32 random bytes, hex): its Argon2 hash is stored, the token returned once.
    pub fn generate(&self) -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let token = format!("ten_{}", hex(&bytes));
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
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

    fn hashes(&self) -> Vec<String> {
        let db = lock(&self.db);
        let Ok(mut stmt) = db.prepare("SELECT hash FROM api_tokens") else {
            return Vec::new();
        };
        stmt.query_map([], |r| r.get::<_, String>(0))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }

    /// Check a bearer token from `client`. Argon2 runs on a blocking thread.
    pub async fn check(&self, token: Option<&str>, client: Option<IpAddr>) -> Verdict {
        if let Some(ip) = client {
            if let Some(wait) = self.blocked(ip) {
                return Verdict::Slowed(wait);
            }
        }
        let hashes = self.hashes();
        if hashes.is_empty() {
            return Verdict::Denied(
                "no API token is configured: run `ten token-gen` on the server (the control socket needs none)".into(),
            );
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return self.fail(client, "missing token: send Authorization: Bearer <token>");
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if lock(&self.verified).contains(&digest) {
            return Verdict::Ok;
        }
        let candidate = token.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            hashes.iter().any(|h| {
                PasswordHash::new(h).is_ok_and(|parsed| {
                    Argon2::default()
                        .verify_password(candidate.as_bytes(), &parsed)
                        .is_ok()
                })
            })
        })
        .await
        .unwrap_or(false);
        if ok {
            lock(&self.verified).insert(digest);
            Verdict::Ok
        } else {
            self.fail(client, "invalid token")
        }
    }

    fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let failures = lock(&self.failures);
        let until = failures.get(&ip)?.blocked_until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs().max(1))
    }

    fn fail(&self, client: Option<IpAddr>, msg: &str) -> Verdict {
        let Some(ip) = client else {
            return Verdict::Denied(msg.into());
        };
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            if let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, f)| f.first)
                .map(|(k, _)| *k)
            {
                failures.remove(&oldest);
            }
        }
        let now = Instant::now();
        let f = failures.entry(ip).or_insert(Failures {
            count: 0,
            first: now,
            blocked_until: None,
        });
        if now.duration_since(f.first) > WINDOW {
            *f = Failures {
                count: 0,
                first: now,
                blocked_until: None,
            };
        }
        f.count += 1;
        if f.count >= MAX_FAILURES {
            f.blocked_until = Some(now + PENALTY);
            return Verdict::Slowed(PENALTY.as_secs());
        }
        Verdict::Denied(msg.into())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
