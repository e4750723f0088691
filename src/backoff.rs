//! The one retry policy: exponential backoff with jitter and a cap, from `backon` (the `backoff`
//! crate is unmaintained: RUSTSEC-2025-0012). Used wherever the daemon waits for an outside
//! system (etcd, the system bus) to come back.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// First retry delay (the upper end of its jitter range).
pub const INITIAL_DELAY: Duration = Duration::from_millis(250);
/// No retry waits longer than this.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Exponential delays, doubling from [`INITIAL_DELAY`] up to a cap, each drawn uniformly from the
/// upper half of the current step so retries of many sidekicks spread out ("equal jitter").
#[derive(Debug)]
pub struct Backoff {
    cap: Duration,
    delays: ExponentialBackoff,
}

/// backon's jitter adds up to one more delay on top of each delay, so steps run at half the
/// bounds: `[step, 2 * step)` with `2 * step` from [`INITIAL_DELAY`] up to `cap`.
fn delays(cap: Duration) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(INITIAL_DELAY / 2)
        .with_max_delay(cap / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

impl Backoff {
    /// A policy capped at `cap` (at most [`MAX_DELAY`]).
    pub fn new(cap: Duration) -> Backoff {
        let cap = cap.clamp(INITIAL_DELAY, MAX_DELAY);
        Backoff {
            cap,
            delays: delays(cap),
        }
    }

    /// Changes the cap; a new cap starts the steps over.
    pub fn set_cap(&mut self, cap: Duration) {
        let cap = cap.clamp(INITIAL_DELAY, MAX_DELAY);
        if cap != self.cap {
            *self = Backoff::new(cap);
        }
    }

    /// The delay before the next retry; grows the next one.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.cap).min(self.cap)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.delays = delays(self.cap);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_never_pass_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= INITIAL_DELAY && delays[0] >= INITIAL_DELAY / 2);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL_DELAY);
    }

    #[test]
    fn delays_at_the_cap_spread_over_its_upper_half() {
        let mut backoff = Backoff::new(Duration::from_secs(4));
        let capped: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).skip(10).collect();
        assert!(
            capped.iter().all(|d| *d >= Duration::from_secs(2)),
            "{capped:?}"
        );
        assert!(
            capped.iter().any(|d| *d != capped[0]),
            "jittered: {capped:?}"
        );
    }

    #[test]
    fn a_new_cap_starts_over_and_bounds_the_next_delay() {
        let mut backoff = Backoff::new(MAX_DELAY);
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.set_cap(Duration::from_secs(1));
        assert!(backoff.next_delay() <= INITIAL_DELAY);
    }

    #[test]
    fn cap_is_at_most_thirty_seconds() {
        let mut backoff = Backoff::new(Duration::from_secs(600));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= MAX_DELAY);
        }
    }
}
