//! Restart backoff: exponential from `base` to `max`, with jitter. A validated type (after
//! linkerd2-proxy's `exp-backoff`): it cannot be built with nonsense values.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff base must be > 0")]
    ZeroBase,
    #[error("backoff max ({max:?}) must be >= base ({base:?})")]
    MaxBelowBase { base: Duration, max: Duration },
    #[error("backoff jitter must be within 0..=1, got {0}")]
    Jitter(f64),
}

/// `delay(n)` grows as `base * 2^n`, capped at `max`; jitter takes up to that fraction off,
/// so instances that crash together do not restart in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if max < base {
            return Err(BackoffError::MaxBelowBase { base, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::Jitter(jitter));
        }
        Ok(Backoff { base, max, jitter })
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before restart number `attempt` (0 = the first), with `unit` a random number
    /// in [0, 1) choosing the jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        let unit = unit.clamp(0.0, 1.0);
        // Checked: near Duration::MAX the float product can round past it.
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * (1.0 - self.jitter * unit))
            .map_or(ceiling, |d| d.min(ceiling))
    }

    /// `delay` with a fresh random number.
    pub fn next(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_invalid_values() {
        assert_eq!(
            Backoff::new(ms(0), ms(10), 0.1),
            Err(BackoffError::ZeroBase)
        );
        assert!(matches!(
            Backoff::new(ms(10), ms(5), 0.1),
            Err(BackoffError::MaxBelowBase { .. })
        ));
        assert_eq!(
            Backoff::new(ms(1), ms(5), 1.5),
            Err(BackoffError::Jitter(1.5))
        );
        assert!(Backoff::new(ms(1), ms(5), f64::NAN).is_err());
    }

    #[test]
    fn doubles_then_caps_without_jitter() {
        let b = Backoff::new(ms(1000), ms(60_000), 0.0).expect("valid");
        let got: Vec<_> = (0..8).map(|n| b.delay(n, 0.5).as_millis()).collect();
        assert_eq!(
            got,
            vec![1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(b.delay(u32::MAX, 0.0), ms(60_000));
    }

    #[test]
    fn huge_values_never_panic() {
        let b = Backoff::new(Duration::MAX, Duration::MAX, 0.5).expect("valid");
        assert_eq!(b.delay(0, 0.0), Duration::MAX);
        assert!(b.delay(40, 0.5) <= Duration::MAX);
        let b = Backoff::new(ms(1), Duration::MAX, 0.0).expect("valid");
        assert_eq!(b.delay(31, 0.0), ms(1) * (1u32 << 31));
    }

    /// Property: for any valid backoff, attempt and random unit, the delay stays within
    /// [ceiling * (1 - jitter), ceiling] and never exceeds max; ceilings never decrease.
    #[test]
    fn property_bounds_hold_for_random_inputs() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5_000 {
            let base = ms(rng.u64(1..5_000));
            let max = base + ms(rng.u64(0..120_000));
            let jitter = rng.f64();
            let b = Backoff::new(base, max, jitter).expect("valid");
            let mut prev_ceiling = Duration::ZERO;
            for attempt in 0..40 {
                let ceiling = b.delay(attempt, 0.0);
                assert!(ceiling >= prev_ceiling, "ceiling decreased");
                assert!(ceiling <= max && ceiling >= base);
                prev_ceiling = ceiling;
                let d = b.delay(attempt, rng.f64());
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                let floor = ceiling.mul_f64(1.0 - jitter).saturating_sub(ms(1));
                assert!(d >= floor, "{d:?} below jitter floor {floor:?}");
            }
        }
    }
}
