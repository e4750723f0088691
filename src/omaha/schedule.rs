//! When to poll next: the configured interval with ±10 % jitter after a success or an on-hold
//! answer, exponential backoff with jitter after errors, capped like update_engine at 4 h
//! (reference §8). Pure: the random draw is an argument.

use std::time::Duration;

/// Relative jitter on every delay: ±10 %.
const JITTER_FRACTION: f64 = 0.10;
/// Longest wait after repeated errors (update_engine's `kTimeoutMaxBackoffInterval`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(4 * 60 * 60);
/// Doublings after which the backoff is at its cap whatever the interval.
const MAX_DOUBLINGS: u32 = 16;

/// What the last poll gave, as far as pacing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    /// An update, or no update.
    Success,
    /// A rollout refusal: not an error, keep the normal pace.
    OnHold,
    /// Network, HTTP, parse or server error.
    Failure,
}

/// The polling pace of one update source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSchedule {
    interval: Duration,
    consecutive_failures: u32,
}

impl PollSchedule {
    /// A schedule polling every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            consecutive_failures: 0,
        }
    }

    /// Polls every `interval` from the next delay on, keeping the count of errors in a row.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// The configured period.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Errors in a row since the last success or on-hold answer.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Records a poll result and returns the delay before the next poll.
    pub fn next_delay(&mut self, result: PollResult) -> Duration {
        self.next_delay_with(result, fastrand::f64())
    }

    /// As [`Self::next_delay`], with `unit_random` in `[0, 1)` choosing the jitter.
    pub fn next_delay_with(&mut self, result: PollResult, unit_random: f64) -> Duration {
        match result {
            PollResult::Success | PollResult::OnHold => self.consecutive_failures = 0,
            PollResult::Failure => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            }
        }
        let jitter = 1.0 + JITTER_FRACTION * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
        if self.consecutive_failures == 0 {
            return self.interval.mul_f64(jitter);
        }
        // An interval above the cap is never shortened by errors.
        let cap = MAX_BACKOFF.max(self.interval);
        let doublings = self.consecutive_failures.min(MAX_DOUBLINGS);
        let base = self.interval.saturating_mul(1 << doublings).min(cap);
        base.mul_f64(jitter).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn a_new_interval_paces_the_next_delay_and_keeps_the_backoff() {
        let mut s = PollSchedule::new(FIVE_MIN);
        s.next_delay_with(PollResult::Failure, 0.5);
        s.set_interval(Duration::from_secs(60));
        assert_eq!(s.interval(), Duration::from_secs(60));
        assert_eq!(s.consecutive_failures(), 1);
        // Two errors in a row: the new interval doubled twice.
        let backoff = s.next_delay_with(PollResult::Failure, 0.5);
        assert_eq!(backoff, Duration::from_secs(240));
        assert_eq!(
            s.next_delay_with(PollResult::Success, 0.5),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn success_waits_the_interval_within_ten_percent() {
        let mut s = PollSchedule::new(FIVE_MIN);
        assert_eq!(s.next_delay_with(PollResult::Success, 0.5), FIVE_MIN);
        assert_eq!(
            s.next_delay_with(PollResult::Success, 0.0),
            Duration::from_secs(270)
        );
        assert_eq!(
            s.next_delay_with(PollResult::Success, 1.0),
            Duration::from_secs(330)
        );
        for _ in 0..1000 {
            let d = s.next_delay(PollResult::Success);
            assert!((270..=330).contains(&d.as_secs()), "{d:?}");
        }
    }

    #[test]
    fn errors_back_off_exponentially_up_to_four_hours() {
        let mut s = PollSchedule::new(FIVE_MIN);
        let delays: Vec<u64> = (0..8)
            .map(|_| s.next_delay_with(PollResult::Failure, 0.5).as_secs())
            .collect();
        assert_eq!(delays, [600, 1200, 2400, 4800, 9600, 14400, 14400, 14400]);
        for _ in 0..100 {
            assert!(s.next_delay(PollResult::Failure) <= MAX_BACKOFF);
        }
        assert_eq!(s.consecutive_failures(), 108);
    }

    #[test]
    fn success_after_errors_returns_to_the_interval() {
        let mut s = PollSchedule::new(FIVE_MIN);
        s.next_delay_with(PollResult::Failure, 0.5);
        s.next_delay_with(PollResult::Failure, 0.5);
        assert_eq!(s.next_delay_with(PollResult::Success, 0.5), FIVE_MIN);
        assert_eq!(s.consecutive_failures(), 0);
    }

    #[test]
    fn on_hold_keeps_the_normal_interval() {
        let mut s = PollSchedule::new(FIVE_MIN);
        s.next_delay_with(PollResult::Failure, 0.5);
        assert_eq!(s.next_delay_with(PollResult::OnHold, 0.5), FIVE_MIN);
        assert_eq!(s.next_delay_with(PollResult::OnHold, 0.5), FIVE_MIN);
    }

    #[test]
    fn an_interval_longer_than_the_cap_is_not_shortened_by_errors() {
        let six_hours = Duration::from_secs(6 * 3600);
        let mut s = PollSchedule::new(six_hours);
        assert_eq!(s.next_delay_with(PollResult::Failure, 1.0), six_hours);
    }
}
