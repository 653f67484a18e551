//! Deadlines that never panic: `now + d` saturates far in the future instead of overflowing
//! `Instant` (review L1: a huge duration once panicked a runner and left a ghost instance).

use std::time::{Duration, Instant};

/// Far enough to be "never" for a supervisor, near enough for every clock to hold.
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + d`, or as late as the clock allows when that overflows.
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR.min(d)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_normally_and_saturates_on_overflow() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(later(now, Duration::ZERO), now);
        let far = later(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(365 * 86_400), "{far:?}");
        // Near the end of the clock: still no panic, never earlier than now.
        assert!(later(far, Duration::MAX) >= far);
        assert!(later(far, FAR) >= far);
    }
}
