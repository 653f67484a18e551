//! `rate_limit` {rps, burst, key}: a token bucket per key -> 429 with `Retry-After`.
//!
//! Memory is bounded whatever the number of distinct keys: 16 shards of at most 4096 buckets.
//! When a shard is full, buckets that have refilled completely (idle clients: forgetting them
//! changes nothing) are swept first, then the stalest buckets until the shard is 7/8 full, so
//! the cost of eviction is amortised over at least 512 new keys.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use tenement_conf::RateLimitKey;

use super::{Plugin, Reply, RequestInfo};

pub(crate) const KIND: &str = "rate_limit";
const SHARDS: usize = 16;
const SHARD_CAP: usize = 4096;

/// Where the key of a request comes from.
#[derive(Debug)]
enum KeyFrom {
    ClientIp,
    Header(HeaderName),
}

/// A bucket key: an IPv6 address as an integer (IPv4 as `::ffff:a.b.c.d`), or a keyed
/// 64-bit hash of a header value (the value itself is not kept, so a bucket is small).
type Key = u128;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per client IP or per header value.
#[derive(Debug)]
pub struct RateLimit {
    rps: f64,
    burst: f64,
    from: KeyFrom,
    /// Keyed per limiter: header hashes and shard choice cannot be predicted by clients.
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<Key, Bucket>>]>,
    shard_cap: usize,
}

impl RateLimit {
    pub fn new(rps: f64, burst: u32, key: RateLimitKey) -> Result<RateLimit, String> {
        if !(rps.is_finite() && rps > 0.0) {
            return Err(format!("rps must be a number > 0, got {rps}"));
        }
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        let from = match key {
            RateLimitKey::ClientIp => KeyFrom::ClientIp,
            RateLimitKey::Header(name) => KeyFrom::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name {name:?}"))?,
            ),
        };
        Ok(RateLimit {
            rps,
            burst: f64::from(burst),
            from,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_cap: SHARD_CAP,
        })
    }

    /// The bucket key of a request. No client IP (Unix socket) and a missing header share one
    /// bucket each (the header case is the empty value "").
    fn key_of(&self, req: &RequestInfo<'_>) -> Key {
        match &self.from {
            KeyFrom::ClientIp => match req.client_ip {
                Some(IpAddr::V4(v4)) => u128::from(v4.to_ipv6_mapped()),
                Some(IpAddr::V6(v6)) => u128::from(v6),
                None => 0,
            },
            KeyFrom::Header(name) => {
                let value = req.header.headers.get(name).map(HeaderValue::as_bytes);
                u128::from(self.hasher.hash_one(value.unwrap_or_default()))
            }
        }
    }

    /// Take one token for `key` at `now`: Ok, or Err(whole seconds until one token is back,
    /// at least 1).
    fn check_at(&self, key: Key, now: Instant) -> Result<(), u64> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.shard_cap && !map.contains_key(&key) {
            self.evict(&mut map, now);
        }
        let (rps, burst) = (self.rps, self.burst);
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rps).min(burst);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // `as` saturates: a tiny rps cannot overflow.
            Err((((1.0 - bucket.tokens) / rps).ceil() as u64).max(1))
        }
    }

    /// Make room in a full shard: drop idle buckets, then the stalest down to 7/8 of the cap.
    fn evict(&self, map: &mut HashMap<Key, Bucket>, now: Instant) {
        let (rps, burst) = (self.rps, self.burst);
        map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rps < burst
        });
        let target = self.shard_cap - self.shard_cap / 8;
        if map.len() > target {
            let excess = map.len() - target;
            let mut lasts: Vec<Instant> = map.values().map(|b| b.last).collect();
            let (_, &mut cutoff, _) = lasts.select_nth_unstable(excess - 1);
            map.retain(|_, b| b.last > cutoff);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        KIND
    }

    fn on_request(&self, req: &RequestInfo<'_>) -> Option<Reply> {
        let retry = self.check_at(self.key_of(req), Instant::now()).err()?;
        Some(
            Reply::text(429, "too many requests: rate limit exceeded")
                .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry)),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plugins::tests::{get, info};
    use std::time::Duration;

    fn ip_limiter(rps: f64, burst: u32) -> RateLimit {
        RateLimit::new(rps, burst, RateLimitKey::ClientIp).unwrap()
    }

    #[test]
    fn burst_allowed_then_limited() {
        let rl = ip_limiter(1.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(rl.check_at(7, t), Ok(()));
        }
        assert_eq!(rl.check_at(7, t), Err(1));
        assert_eq!(rl.check_at(7, t + Duration::from_millis(500)), Err(1));
    }

    #[test]
    fn refills_over_time_up_to_burst() {
        let rl = ip_limiter(2.0, 2);
        let t = Instant::now();
        assert!(rl.check_at(1, t).is_ok());
        assert!(rl.check_at(1, t).is_ok());
        assert!(rl.check_at(1, t).is_err());
        // 2 rps: one token every 500 ms.
        assert!(rl.check_at(1, t + Duration::from_millis(499)).is_err());
        let t1 = t + Duration::from_millis(750);
        assert!(rl.check_at(1, t1).is_ok(), "1.5 tokens");
        assert!(rl.check_at(1, t1).is_err(), "0.5 token");
        // A long pause gives back the burst, not more.
        let later = t + Duration::from_secs(3600);
        assert!(rl.check_at(1, later).is_ok());
        assert!(rl.check_at(1, later).is_ok());
        assert!(rl.check_at(1, later).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_until_one_token() {
        let rl = ip_limiter(0.1, 1);
        let t = Instant::now();
        assert!(rl.check_at(1, t).is_ok());
        assert_eq!(rl.check_at(1, t), Err(10));
        assert_eq!(rl.check_at(1, t + Duration::from_millis(8500)), Err(2));
        let fast = ip_limiter(1000.0, 1);
        assert!(fast.check_at(1, t).is_ok());
        assert_eq!(fast.check_at(1, t), Err(1));
    }

    #[test]
    fn keys_are_independent() {
        let rl = ip_limiter(1.0, 1);
        let req = get("/");
        assert!(rl.on_request(&info(&req, "192.0.2.1")).is_none());
        let reply = rl.on_request(&info(&req, "192.0.2.1")).unwrap();
        assert_eq!(reply.status, 429);
        let retry = reply.headers.iter().find(|(n, _)| n == "retry-after");
        assert_eq!(retry.unwrap().1, "1");
        assert!(rl.on_request(&info(&req, "192.0.2.2")).is_none());
        assert!(rl.on_request(&info(&req, "2001:db8::1")).is_none());
        // The same client over IPv4 and IPv4-mapped IPv6 is one key.
        assert!(rl.on_request(&info(&req, "::ffff:192.0.2.2")).is_some());
    }

    #[test]
    fn header_key_and_missing_header_share_one_bucket() {
        let rl = RateLimit::new(1.0, 1, RateLimitKey::Header("x-api-key".into())).unwrap();
        let mut a = get("/");
        a.insert_header("X-Api-Key", "a").unwrap();
        let mut b = get("/");
        b.insert_header("x-api-key", "b").unwrap();
        let none = get("/");
        assert!(rl.on_request(&info(&a, "192.0.2.1")).is_none());
        assert!(
            rl.on_request(&info(&a, "192.0.2.9")).is_some(),
            "IP ignored"
        );
        assert!(rl.on_request(&info(&b, "192.0.2.1")).is_none());
        assert!(rl.on_request(&info(&none, "192.0.2.1")).is_none());
        assert!(rl.on_request(&info(&none, "192.0.2.2")).is_some());
        let mut empty = get("/");
        empty.insert_header("x-api-key", "").unwrap();
        assert!(rl.on_request(&info(&empty, "192.0.2.3")).is_some(), "\"\"");
    }

    #[test]
    fn a_million_distinct_keys_keep_memory_bounded() {
        let rl = ip_limiter(1.0, 5);
        let t = Instant::now();
        for k in 0..1_000_000u128 {
            assert!(rl.check_at(k, t + Duration::from_micros(k as u64)).is_ok());
        }
        let n = rl.len();
        assert!(n <= SHARDS * SHARD_CAP, "{n} buckets");
        assert!(n >= SHARDS * SHARD_CAP / 2, "{n} buckets: evicted too much");
        // The most recent clients are still limited.
        let end = t + Duration::from_micros(1_000_000);
        let recent = 999_999;
        for _ in 0..4 {
            assert!(rl.check_at(recent, end).is_ok());
        }
        assert!(rl.check_at(recent, end).is_err());
    }

    #[test]
    fn idle_buckets_are_swept_first() {
        let mut rl = ip_limiter(1.0, 1);
        rl.shard_cap = 8;
        rl.shards = vec![Mutex::default()].into_boxed_slice();
        let t = Instant::now();
        // An active (empty) bucket, then idle ones that refill after 1 s.
        assert!(rl.check_at(0, t + Duration::from_secs(10)).is_ok());
        for k in 1..8 {
            assert!(rl.check_at(k, t).is_ok());
        }
        assert_eq!(rl.len(), 8);
        assert!(rl.check_at(100, t + Duration::from_secs(10)).is_ok());
        assert_eq!(rl.len(), 2, "idle buckets dropped, the active one kept");
        assert!(rl.check_at(0, t + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(RateLimit::new(0.0, 1, RateLimitKey::ClientIp).is_err());
        assert!(RateLimit::new(f64::NAN, 1, RateLimitKey::ClientIp).is_err());
        assert!(RateLimit::new(1.0, 0, RateLimitKey::ClientIp).is_err());
        assert!(RateLimit::new(1.0, 1, RateLimitKey::Header("a b".into())).is_err());
    }
}
