//! The one retry policy: exponential backoff with jitter and a cap. Used wherever the daemon waits
//! for an outside system (etcd, the system bus) to come back.

use std::time::Duration;

/// First retry delay.
pub const INITIAL_DELAY: Duration = Duration::from_millis(250);
/// No retry waits longer than this.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Exponential delays, doubling from [`INITIAL_DELAY`] up to a cap, each drawn uniformly from the
/// upper half of the current step so retries of many sidekicks spread out ("equal jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    cap: Duration,
}

impl Backoff {
    /// A policy capped at `cap` (at most [`MAX_DELAY`]).
    pub fn new(cap: Duration) -> Backoff {
        let cap = cap.clamp(INITIAL_DELAY, MAX_DELAY);
        Backoff {
            step: INITIAL_DELAY,
            cap,
        }
    }

    /// Changes the cap, keeping the current step where it still fits.
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap.clamp(INITIAL_DELAY, MAX_DELAY);
        self.step = self.step.min(self.cap);
    }

    /// The delay before the next retry; grows the next one.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step.min(self.cap);
        self.step = (step * 2).min(self.cap);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.step = INITIAL_DELAY;
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
    fn cap_is_at_most_thirty_seconds() {
        let mut backoff = Backoff::new(Duration::from_secs(600));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= MAX_DELAY);
        }
    }
}
