//! The restart and health decisions of one instance, as pure types: whether an exit restarts
//! under its `restart` policy, the crash-loop rule (`max_restarts` within `restart_window`), the
//! backoff attempt counter and its reset, the delay before the next start; the retry of a start
//! that failed because ten itself was out of resources (never charged to the app); and what a
//! health check's result does ([`Health`]: consecutive failures, unknown results skipped). Every
//! method takes the current `Instant` (and the jitter's random number) from its caller, so the
//! runner uses the real clock and the tests a hand-made one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tenement_conf::{Process, RestartPolicy};

use crate::backoff::{Backoff, BackoffError};
use crate::probe::ProbeError;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start again after this delay.
    Restart(Duration),
    /// Crash loop: `restarts` restarts already happened within the window; stay down.
    GiveUp { restarts: usize },
}

/// The restart bookkeeping of one runner.
#[derive(Debug, Clone)]
pub struct Restarts {
    policy: RestartPolicy,
    max_restarts: u32,
    restart_window: Duration,
    backoff: Backoff,
    /// Backoff attempt of the next restart (0 = the first, `base` delay).
    attempt: u32,
    /// When the recent restarts happened, oldest first.
    recent: VecDeque<Instant>,
    /// Backoff attempt of the next retry after ten's own resource failure (not a restart).
    ours_attempt: u32,
}

impl Restarts {
    pub fn new(
        policy: RestartPolicy,
        max_restarts: u32,
        restart_window: Duration,
        backoff: Backoff,
    ) -> Self {
        Restarts {
            policy,
            max_restarts,
            restart_window,
            backoff,
            attempt: 0,
            recent: VecDeque::new(),
            ours_attempt: 0,
        }
    }

    /// From a process's settings; a backoff it cannot build falls back to 1s..60s.
    pub fn of(process: &Process) -> Result<Self, BackoffError> {
        let backoff = Backoff::new(process.backoff_base, process.backoff_max, 0.5)
            .or_else(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 0.5))?;
        Ok(Restarts::new(
            process.restart,
            process.max_restarts,
            process.restart_window,
            backoff,
        ))
    }

    /// Does an exit (successful or not) restart the instance?
    pub fn after_exit(&self, success: bool) -> bool {
        match self.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        }
    }

    /// Does failing its health checks restart the instance (rather than leave it unhealthy)?
    pub fn when_unhealthy(&self) -> bool {
        self.policy != RestartPolicy::Never
    }

    /// It ran healthy from `since` until `now`: long enough (`backoff.max()`), and the next
    /// crash starts the backoff over.
    pub fn ran(&mut self, since: Instant, now: Instant) {
        if now.saturating_duration_since(since) >= self.backoff.max() {
            self.attempt = 0;
        }
    }

    /// Woken from idleness: a fresh start, the backoff starts over.
    pub fn woke(&mut self) {
        self.attempt = 0;
    }

    /// After a failure at `now`: give up (crash loop) or restart after a delay; `unit` in
    /// [0, 1) picks the jitter. A restart counts once it happens ([`Restarts::restarted`]).
    pub fn next(&mut self, now: Instant, unit: f64) -> Next {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.restart_window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts as usize {
            return Next::GiveUp {
                restarts: self.recent.len(),
            };
        }
        let delay = self.backoff.delay(self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        Next::Restart(delay)
    }

    /// The restart happened at `now` (after its delay).
    pub fn restarted(&mut self, now: Instant) {
        self.recent.push_back(now);
    }

    /// A start failed because ten itself is out of resources (SPEC §14): the delay before
    /// trying again. Not a restart: nothing counts toward `max_restarts`, it never gives up,
    /// and the app's own backoff is untouched.
    pub fn ours_delay(&mut self, unit: f64) -> Duration {
        let delay = self.backoff.delay(self.ours_attempt, unit);
        self.ours_attempt = self.ours_attempt.saturating_add(1);
        delay
    }

    /// A start got as far as a running child: ten has resources again.
    pub fn started(&mut self) {
        self.ours_attempt = 0;
    }
}

/// What one health check's result does to a running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Passed (it was healthy already).
    Pass,
    /// Passed after it had been marked unhealthy.
    Recovered,
    /// Failed; `fails` in a row so far, not yet unhealthy (or already marked).
    Fail { fails: u32 },
    /// This failure makes it unhealthy (the `after`th in a row).
    Unhealthy,
    /// ten could not run the check (its own resources): skipped, counted neither way.
    /// `first` for the first of a run of them (log it once).
    Unknown { first: bool },
}

/// Consecutive health-check failures of one instance.
#[derive(Debug, Clone)]
pub struct Health {
    after: u32,
    fails: u32,
    unknown: bool,
}

impl Health {
    /// Unhealthy after `after` failures in a row.
    pub fn new(after: u32) -> Self {
        Health {
            after,
            fails: 0,
            unknown: false,
        }
    }

    pub fn observe(&mut self, result: &Result<(), ProbeError>) -> Check {
        match result {
            Err(ProbeError::Ours(_)) => {
                let first = !self.unknown;
                self.unknown = true;
                Check::Unknown { first }
            }
            Ok(()) => {
                self.unknown = false;
                let was = self.fails;
                self.fails = 0;
                if was >= self.after {
                    Check::Recovered
                } else {
                    Check::Pass
                }
            }
            Err(ProbeError::App(_)) => {
                self.unknown = false;
                self.fails = self.fails.saturating_add(1);
                if self.fails == self.after {
                    Check::Unhealthy
                } else {
                    Check::Fail { fails: self.fails }
                }
            }
        }
    }
}

/// The policy as written in the config.
pub fn name(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// No jitter: base 1s, max 8s.
    fn restarts(policy: RestartPolicy, max_restarts: u32, window: Duration) -> Restarts {
        Restarts::new(
            policy,
            max_restarts,
            window,
            Backoff::new(s(1), s(8), 0.0).unwrap(),
        )
    }

    /// One failure at `now`, and the restart right after its delay; returns the delay.
    fn fail(r: &mut Restarts, now: Instant) -> Duration {
        match r.next(now, 0.0) {
            Next::Restart(d) => {
                r.restarted(now + d);
                d
            }
            Next::GiveUp { restarts } => panic!("gave up after {restarts} restarts"),
        }
    }

    #[test]
    fn exits_restart_by_policy() {
        let cases = [
            (RestartPolicy::Always, true, true),
            (RestartPolicy::Always, false, true),
            (RestartPolicy::OnFailure, true, false),
            (RestartPolicy::OnFailure, false, true),
            (RestartPolicy::Never, true, false),
            (RestartPolicy::Never, false, false),
        ];
        for (policy, success, want) in cases {
            let r = restarts(policy, 5, s(60));
            assert_eq!(r.after_exit(success), want, "{policy:?}, success {success}");
        }
        assert!(restarts(RestartPolicy::Always, 5, s(60)).when_unhealthy());
        assert!(restarts(RestartPolicy::OnFailure, 5, s(60)).when_unhealthy());
        assert!(!restarts(RestartPolicy::Never, 5, s(60)).when_unhealthy());
    }

    #[test]
    fn policy_names_as_in_the_config() {
        assert_eq!(name(RestartPolicy::Always), "always");
        assert_eq!(name(RestartPolicy::OnFailure), "on-failure");
        assert_eq!(name(RestartPolicy::Never), "never");
    }

    #[test]
    fn delays_double_then_cap() {
        let mut r = restarts(RestartPolicy::Always, 100, s(1));
        let mut now = Instant::now();
        let mut got = Vec::new();
        for _ in 0..6 {
            let d = fail(&mut r, now);
            got.push(d.as_secs());
            now += d + s(2); // outside the window each time: never a crash loop
        }
        assert_eq!(got, vec![1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn jitter_takes_off_at_most_its_fraction() {
        let backoff = Backoff::new(s(4), s(60), 0.5).unwrap();
        let mut r = Restarts::new(RestartPolicy::Always, 10, s(60), backoff);
        let now = Instant::now();
        // ceilings 4s, 8s, 16s; jitter 0.5 takes off half of `unit`
        assert_eq!(r.next(now, 0.0), Next::Restart(s(4)));
        assert_eq!(r.next(now, 0.5), Next::Restart(s(6)));
        assert_eq!(r.next(now, 0.75), Next::Restart(s(10)));
    }

    #[test]
    fn crash_loop_within_the_window_gives_up() {
        let mut r = restarts(RestartPolicy::Always, 3, s(60));
        let t0 = Instant::now();
        fail(&mut r, t0); // restarted at t0+1
        fail(&mut r, t0 + s(2)); // at t0+4
        fail(&mut r, t0 + s(5)); // at t0+9
        assert_eq!(r.next(t0 + s(10), 0.0), Next::GiveUp { restarts: 3 });
        // Asking again changes nothing.
        assert_eq!(r.next(t0 + s(10), 0.0), Next::GiveUp { restarts: 3 });
    }

    #[test]
    fn restarts_spread_beyond_the_window_never_give_up() {
        let mut r = restarts(RestartPolicy::OnFailure, 2, s(10));
        let mut now = Instant::now();
        for _ in 0..20 {
            let d = fail(&mut r, now);
            now += d + s(11); // the previous restart is always outside the window
        }
    }

    #[test]
    fn the_window_slides() {
        let mut r = restarts(RestartPolicy::Always, 2, s(10));
        let t0 = Instant::now();
        r.restarted(t0);
        r.restarted(t0 + s(4));
        assert_eq!(r.next(t0 + s(10), 0.0), Next::GiveUp { restarts: 2 }); // t0 is exactly 10s old: still in
                                                                           // t0 leaves the window, t0+4 is still in: one restart left.
        assert!(matches!(r.next(t0 + s(11), 0.0), Next::Restart(_)));
        r.restarted(t0 + s(12));
        assert_eq!(r.next(t0 + s(13), 0.0), Next::GiveUp { restarts: 2 });
        // Both old ones gone.
        assert!(matches!(r.next(t0 + s(30), 0.0), Next::Restart(_)));
    }

    #[test]
    fn max_restarts_zero_never_restarts() {
        let mut r = restarts(RestartPolicy::Always, 0, s(60));
        assert_eq!(r.next(Instant::now(), 0.0), Next::GiveUp { restarts: 0 });
    }

    #[test]
    fn a_failure_that_gives_up_does_not_advance_the_backoff() {
        let mut r = restarts(RestartPolicy::Always, 1, s(10));
        let t0 = Instant::now();
        assert_eq!(fail(&mut r, t0), s(1));
        assert_eq!(r.next(t0 + s(5), 0.0), Next::GiveUp { restarts: 1 });
        assert_eq!(r.next(t0 + s(20), 0.0), Next::Restart(s(2)));
    }

    #[test]
    fn running_healthy_for_backoff_max_resets_the_attempt() {
        let mut r = restarts(RestartPolicy::Always, 100, s(1));
        let mut now = Instant::now();
        for _ in 0..3 {
            now += fail(&mut r, now) + s(2);
        }
        // Healthy for less than backoff.max (8s): the backoff carries on.
        r.ran(now, now + s(7));
        now += s(7);
        assert_eq!(fail(&mut r, now), s(8));
        now += s(10);
        // Exactly backoff.max: it starts over.
        r.ran(now, now + s(8));
        now += s(8);
        assert_eq!(fail(&mut r, now), s(1));
        now += s(2);
        assert_eq!(fail(&mut r, now), s(2));
    }

    #[test]
    fn a_clock_that_goes_nowhere_does_not_reset() {
        let mut r = restarts(RestartPolicy::Always, 100, s(1));
        let now = Instant::now();
        fail(&mut r, now);
        r.ran(now + s(5), now); // `since` after `now`: zero time, no reset
        assert_eq!(r.next(now + s(10), 0.0), Next::Restart(s(2)));
    }

    #[test]
    fn waking_resets_the_attempt() {
        let mut r = restarts(RestartPolicy::Always, 100, s(1));
        let mut now = Instant::now();
        now += fail(&mut r, now) + s(2);
        now += fail(&mut r, now) + s(2);
        r.woke();
        assert_eq!(fail(&mut r, now), s(1));
    }

    fn process(extra: &str) -> Process {
        let text = format!("[process.api]\ncommand = \"x\"\n{extra}");
        let config =
            tenement_conf::Config::parse(&text, "tenement.toml", std::path::Path::new("/tmp"))
                .unwrap();
        config.process("api").unwrap().clone()
    }

    #[test]
    fn of_a_process_takes_its_settings() {
        let p = process("restart = \"never\"\nmax_restarts = 1\nrestart_window = \"10s\"\n");
        let mut r = Restarts::of(&p).unwrap();
        assert!(!r.after_exit(true) && !r.after_exit(false));
        assert_eq!(r.backoff.base(), p.backoff_base);
        assert_eq!(r.backoff.max(), p.backoff_max);
        let t0 = Instant::now();
        r.restarted(t0);
        assert_eq!(r.next(t0 + s(10), 0.0), Next::GiveUp { restarts: 1 });
        assert!(matches!(r.next(t0 + s(11), 0.0), Next::Restart(_)));
    }

    /// A probe that fails the way a connect fails at EMFILE, through the one classification.
    fn emfile_probe() -> Result<(), ProbeError> {
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(crate::resource::ours(&e, crate::resource::Op::Connect));
        Err(ProbeError::Ours(format!("connect to 127.0.0.1:1: {e}")))
    }

    #[test]
    fn emfile_probes_are_unknown_and_never_make_it_unhealthy() {
        let mut h = Health::new(3);
        assert_eq!(h.observe(&emfile_probe()), Check::Unknown { first: true });
        for _ in 0..100 {
            assert_eq!(h.observe(&emfile_probe()), Check::Unknown { first: false });
        }
        // Two real failures, a stretch of unknowns, one more real failure: the unknowns
        // neither count nor reset the run.
        let app = Err(ProbeError::App("GET /health answered 500".into()));
        assert_eq!(h.observe(&app), Check::Fail { fails: 1 });
        assert_eq!(h.observe(&app), Check::Fail { fails: 2 });
        assert_eq!(h.observe(&emfile_probe()), Check::Unknown { first: true });
        assert_eq!(h.observe(&emfile_probe()), Check::Unknown { first: false });
        assert_eq!(h.observe(&app), Check::Unhealthy);
        assert_eq!(h.observe(&app), Check::Fail { fails: 4 });
        assert_eq!(h.observe(&emfile_probe()), Check::Unknown { first: true });
        assert_eq!(h.observe(&Ok(())), Check::Recovered);
        assert_eq!(h.observe(&Ok(())), Check::Pass);
    }

    #[test]
    fn ten_out_of_resources_never_charges_the_app() {
        let mut r = restarts(RestartPolicy::Always, 2, s(60));
        let t0 = Instant::now();
        // A thousand spawns failing with EMFILE: backoff delays, never a give-up.
        let delays: Vec<_> = (0..1000).map(|_| r.ours_delay(0.0)).collect();
        assert_eq!(&delays[..5], &[s(1), s(2), s(4), s(8), s(8)]);
        assert!(delays.iter().all(|d| *d <= s(8)));
        // The app's own budget and backoff are untouched.
        assert_eq!(fail(&mut r, t0), s(1));
        assert_eq!(fail(&mut r, t0 + s(2)), s(2));
        assert_eq!(r.next(t0 + s(5), 0.0), Next::GiveUp { restarts: 2 });
        // A start that gets a child resets the resource backoff.
        r.started();
        assert_eq!(r.ours_delay(0.0), s(1));
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let mut r = Restarts::new(
            RestartPolicy::Always,
            u32::MAX,
            Duration::MAX,
            Backoff::new(Duration::MAX, Duration::MAX, 0.5).unwrap(),
        );
        let now = Instant::now();
        assert!(matches!(r.next(now, 0.9), Next::Restart(_)));
        r.restarted(now);
        r.ran(now, now);
        assert!(r.ours_delay(0.3) > Duration::ZERO);
        assert!(matches!(r.next(now, 0.0), Next::Restart(_)));
    }

    #[test]
    fn of_a_process_falls_back_on_a_bad_backoff() {
        let mut p = process("");
        p.backoff_base = Duration::ZERO;
        let r = Restarts::of(&p).unwrap();
        assert_eq!(r.backoff.base(), s(1));
        assert_eq!(r.backoff.max(), s(60));
    }
}
