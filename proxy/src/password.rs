//! Password hashing under load (SPEC §14), shared by the API token check and `basic_auth`.
//!
//! [`HashRunner`]: every Argon2 verification of the process goes through one runner, at most
//! (CPU count) at once, each on tokio's blocking pool, never on the async workers that proxy
//! traffic. When every slot is taken the caller is told at once ([`Busy`]) and answers
//! 429/503: nothing queues, so a flood costs at most (CPU count) × one Argon2 run of memory.
//!
//! [`Lockout`]: failed attempts per client, counted *before* the hash runs (an attempt is
//! reserved, then refunded on success or when the hash did not run), so N concurrent wrong
//! passwords from one client cannot all reach Argon2 before the first failure is recorded.
//! Clients are keyed by [`client_key`]: an IPv4 address, or the /64 of an IPv6 one (one
//! customer's usual allocation), with v4-mapped addresses counted as IPv4.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Every slot of the [`HashRunner`] is in use: answer 429/503 now, do not wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks at once")]
pub struct Busy;

/// Runs password verifications off the async workers, a bounded number at once.
#[derive(Debug)]
pub struct HashRunner {
    slots: Arc<Semaphore>,
    size: usize,
    started: AtomicU64,
    refused: AtomicU64,
}

impl HashRunner {
    /// A runner of `slots` (at least 1) concurrent verifications.
    pub fn new(slots: usize) -> HashRunner {
        let size = slots.max(1);
        HashRunner {
            slots: Arc::new(Semaphore::new(size)),
            size,
            started: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The process's runner: one slot per CPU (`available_parallelism`).
    pub fn shared() -> Arc<HashRunner> {
        static SHARED: OnceLock<Arc<HashRunner>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
                Arc::new(HashRunner::new(cpus))
            })
            .clone()
    }

    /// How many verifications may run at once.
    pub fn slots(&self) -> usize {
        self.size
    }

    /// Verifications started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Verifications refused so far because every slot was busy.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Run `verify` on the blocking pool if a slot is free, else `Err(Busy)` at once.
    ///
    /// The slot is held by the blocking job itself: a caller that goes away (the client
    /// disconnected) does not free it before the hash is done, so the bound holds.
    pub async fn run<T, F>(&self, verify: F) -> Result<T, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        };
        self.started.fetch_add(1, Ordering::Relaxed);
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify()
        });
        job.await.map_err(|e| {
            // Only a panic in `verify` or a runtime shutting down: not the client's fault.
            tracing::error!("password check failed to run: {e}");
            Busy
        })
    }
}

/// Checks of one credential in progress, by its SHA-256: concurrent requests that carry the
/// same new credential (a browser's parallel requests right after a login, a fleet router's
/// health loop and placement) share ONE check instead of each taking a slot (and getting
/// 429/503 while it runs).
#[derive(Debug)]
pub struct SingleFlight<T> {
    running: Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            running: Mutex::default(),
        }
    }
}

/// Bound on remembered checks in progress (entries nobody waits on are forgotten first).
const MAX_IN_FLIGHT: usize = 4_096;

impl<T: Clone> SingleFlight<T> {
    /// The outcome of `check` for `key`: run here, or shared with a check of the same key
    /// already running. If the caller running it goes away, a waiting one runs it instead.
    pub async fn run<F, Fut>(&self, key: [u8; 32], check: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let cell = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.len() >= MAX_IN_FLIGHT {
                running.retain(|_, c| Arc::strong_count(c) > 1);
            }
            running.entry(key).or_default().clone()
        };
        let outcome = cell.get_or_init(check).await.clone();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            running.remove(&key);
        }
        outcome
    }
}

/// The key a client's failures are counted under: the IPv4 address, or the /64 of an IPv6
/// one; `::ffff:a.b.c.d` counts as `a.b.c.d`.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

#[derive(Debug)]
struct Failures {
    count: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn fresh(now: Instant) -> Failures {
        Failures {
            count: 0,
            first: now,
            blocked_until: None,
        }
    }
}

/// Failed attempts per client: `max_failures` within `window`, then 429 for `penalty`.
#[derive(Debug)]
pub struct Lockout {
    failures: Mutex<HashMap<IpAddr, Failures>>,
    max_failures: u32,
    window: Duration,
    penalty: Duration,
}

/// Bound on remembered clients per [`Lockout`] (expired ones, then the oldest, are forgotten).
const MAX_TRACKED: usize = 10_000;

/// An attempt reserved by [`Lockout::reserve`]: dropped, it stays counted as a failure;
/// [`Attempt::refund`] it when the password was right or the hash did not run.
#[derive(Debug)]
#[must_use = "an attempt counts as a failure unless refunded"]
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    key: Option<IpAddr>,
}

impl Attempt<'_> {
    /// Not a failure after all.
    pub fn refund(self) {
        let Some(key) = self.key else { return };
        let mut map = self.lockout.lock();
        if let Some(f) = map.get_mut(&key) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 && f.blocked_until.is_none() {
                map.remove(&key);
            }
        }
    }
}

impl Lockout {
    /// The rule of the API token check and `basic_auth`: 5 failures within a minute, then
    /// 429 for 30 seconds.
    pub fn standard() -> Lockout {
        Lockout::new(5, Duration::from_secs(60), Duration::from_secs(30))
    }

    pub fn new(max_failures: u32, window: Duration, penalty: Duration) -> Lockout {
        Lockout {
            failures: Mutex::default(),
            max_failures: max_failures.max(1),
            window,
            penalty,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count one attempt from `client` before its password is checked; `Err(seconds)` when
    /// the client is locked out (answer 429 with `Retry-After: seconds`). Clients without an
    /// address (a Unix-socket listener) are not counted.
    pub fn reserve(&self, client: Option<IpAddr>) -> Result<Attempt<'_>, u64> {
        let Some(ip) = client else {
            return Ok(Attempt {
                lockout: self,
                key: None,
            });
        };
        let key = client_key(ip);
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            self.forget_some(&mut map, now);
        }
        let f = map.entry(key).or_insert_with(|| Failures::fresh(now));
        match f.blocked_until {
            Some(until) if until > now => return Err(seconds(until - now)),
            Some(_) => *f = Failures::fresh(now),
            None if now.duration_since(f.first) > self.window => *f = Failures::fresh(now),
            None => {}
        }
        if f.count >= self.max_failures {
            f.blocked_until = Some(now + self.penalty);
            return Err(seconds(self.penalty));
        }
        f.count += 1;
        Ok(Attempt {
            lockout: self,
            key: Some(key),
        })
    }

    /// Make room: drop the entries whose window and penalty are over, else the oldest one.
    fn forget_some(&self, map: &mut HashMap<IpAddr, Failures>, now: Instant) {
        let before = map.len();
        map.retain(|_, f| match f.blocked_until {
            Some(until) => until > now,
            None => now.duration_since(f.first) <= self.window,
        });
        if map.len() < before {
            return;
        }
        if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.first).map(|(k, _)| *k) {
            map.remove(&oldest);
        }
    }
}

/// Whole seconds for `Retry-After`, at least 1.
fn seconds(d: Duration) -> u64 {
    d.as_secs().max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn lockout() -> Lockout {
        Lockout::new(3, Duration::from_secs(60), Duration::from_secs(30))
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let k = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(k("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::");
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"), "IPv4 stays per address");
        assert_eq!(k("::1"), k("::2"), "the loopback /64");
    }

    #[test]
    fn one_64_shares_one_lockout() {
        let l = lockout();
        for i in 0..3 {
            drop(l.reserve(ip(&format!("2001:db8::{i}"))).unwrap());
        }
        assert_eq!(l.reserve(ip("2001:db8::ffff:1")).unwrap_err(), 30);
        assert!(l.reserve(ip("2001:db8:0:1::1")).is_ok(), "another /64");
        for _ in 0..3 {
            drop(l.reserve(ip("::ffff:10.0.0.1")).unwrap());
        }
        assert!(l.reserve(ip("10.0.0.1")).is_err(), "v4-mapped counts as v4");
        assert!(l.reserve(ip("10.0.0.2")).is_ok());
    }

    #[test]
    fn attempts_are_counted_before_the_hash_and_refunded_on_success() {
        let l = lockout();
        // Three attempts in flight at once, none finished: the fourth is refused already.
        let held: Vec<_> = (0..3)
            .map(|_| l.reserve(ip("192.0.2.1")).unwrap())
            .collect();
        assert!(l.reserve(ip("192.0.2.1")).is_err());
        drop(held);
        assert!(l.reserve(ip("192.0.2.1")).is_err(), "still locked out");

        let l = lockout();
        for _ in 0..10 {
            l.reserve(ip("192.0.2.1")).unwrap().refund();
        }
        assert!(l.lock().is_empty(), "successes leave nothing behind");
        assert!(l.reserve(None).is_ok(), "no address: not counted");
    }

    #[test]
    fn a_window_or_penalty_that_ended_starts_afresh() {
        let l = Lockout::new(1, Duration::ZERO, Duration::from_secs(30));
        drop(l.reserve(ip("192.0.2.1")).unwrap());
        std::thread::sleep(Duration::from_millis(2));
        assert!(l.reserve(ip("192.0.2.1")).is_ok(), "the window is over");
        let l = Lockout::new(1, Duration::from_secs(60), Duration::ZERO);
        drop(l.reserve(ip("192.0.2.1")).unwrap());
        assert_eq!(l.reserve(ip("192.0.2.1")).unwrap_err(), 1, "at least 1 s");
        std::thread::sleep(Duration::from_millis(2));
        assert!(l.reserve(ip("192.0.2.1")).is_ok(), "the penalty is over");
    }

    #[test]
    fn tracked_clients_stay_bounded() {
        let l = lockout();
        for i in 0..MAX_TRACKED as u32 + 10 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(i));
            drop(l.reserve(Some(addr)).unwrap());
        }
        assert!(l.lock().len() <= MAX_TRACKED);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runner_is_bounded_answers_busy_at_once_and_runs_off_thread() {
        let runner = Arc::new(HashRunner::new(2));
        let caller = std::thread::current().id();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut jobs = Vec::new();
        for _ in 0..2 {
            let (runner, rx) = (runner.clone(), release_rx.clone());
            jobs.push(tokio::spawn(async move {
                runner
                    .run(move || {
                        let _ = rx.lock().unwrap().recv();
                        std::thread::current().id()
                    })
                    .await
            }));
        }
        // Both slots taken (the jobs block until released): the next caller is refused now.
        while runner.started() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(runner.run(|| ()).await, Err(Busy));
        assert_eq!(runner.refused(), 1);
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for job in jobs {
            assert_ne!(
                job.await.unwrap().unwrap(),
                caller,
                "ran on the caller's thread"
            );
        }
        assert_eq!(runner.run(|| 7).await, Ok(7), "slots are given back");
        assert!(HashRunner::shared().slots() >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_credential_checked_by_many_requests_at_once_is_hashed_once() {
        let runner = Arc::new(HashRunner::new(1));
        let flights: Arc<SingleFlight<Result<u32, Busy>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (runner, flights, rx) = (runner.clone(), flights.clone(), rx.clone());
                tokio::spawn(async move {
                    flights
                        .run([7; 32], || async move {
                            runner
                                .run(move || {
                                    let _ = rx.lock().map(|r| r.recv());
                                    42
                                })
                                .await
                        })
                        .await
                })
            })
            .collect();
        // All eight wait on one check (the map's handle + theirs), which has started.
        let waiting = || {
            flights
                .running
                .lock()
                .unwrap()
                .get(&[7; 32])
                .map(Arc::strong_count)
                == Some(9)
        };
        while !(waiting() && runner.started() == 1) {
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                Ok(42),
                "every request shares the one check"
            );
        }
        assert_eq!((runner.started(), runner.refused()), (1, 0));
        assert!(flights.running.lock().unwrap().is_empty());
    }
}
