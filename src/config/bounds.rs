//! The floor and ceiling of every duration in the configuration, in one table that validation,
//! the README's configuration table and the tests read.
//!
//! Ceilings keep every sum and product the daemon forms with these values (`Instant::now() +
//! interval`, `ttl / 3`, a poll interval doubled for backoff) far from overflow, and lease TTLs
//! far below etcd's own limit ([`ETCD_MAX_LEASE_TTL`]). Floors stop values so small that the
//! daemon would spin (a `1ns` probe interval) or time out every request.

use std::time::Duration;

use super::settings::{MIN_LEASE_TTL, MIN_UPDATE_INTERVAL};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// etcd's largest lease TTL (`lease.MaxLeaseTTL`, 9,000,000,000 s); a grant above it fails.
pub const ETCD_MAX_LEASE_TTL: Duration = secs(9_000_000_000);

/// The range a duration key accepts, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBounds {
    pub key: &'static str,
    pub min: Duration,
    pub max: Duration,
    /// Lease TTLs: etcd grants whole seconds only.
    pub whole_seconds: bool,
}

const fn bounds(key: &'static str, min: Duration, max: Duration) -> DurationBounds {
    DurationBounds {
        key,
        min,
        max,
        whole_seconds: false,
    }
}

const fn lease(key: &'static str) -> DurationBounds {
    DurationBounds {
        key,
        min: MIN_LEASE_TTL,
        max: secs(DAY),
        whole_seconds: true,
    }
}

/// Every duration key of the configuration with its bounds.
pub const DURATION_BOUNDS: [DurationBounds; 9] = [
    bounds("etcd.timeout", ms(100), secs(5 * MINUTE)),
    lease("registration.ttl"),
    bounds("health.interval", ms(100), secs(HOUR)),
    bounds("health.timeout", ms(100), secs(5 * MINUTE)),
    bounds("update.interval", MIN_UPDATE_INTERVAL, secs(7 * DAY)),
    lease("slot.ttl"),
    bounds("swap.drain", Duration::ZERO, secs(HOUR)),
    bounds("swap.start_timeout", secs(1), secs(HOUR)),
    bounds("swap.verify_timeout", secs(1), secs(HOUR)),
];

/// The bounds of `key`, if it is a duration key.
pub fn duration_bounds(key: &str) -> Option<&'static DurationBounds> {
    DURATION_BOUNDS.iter().find(|b| b.key == key)
}

/// The longest duration any key accepts: what arithmetic on configured durations must survive.
pub fn longest_duration() -> Duration {
    DURATION_BOUNDS
        .iter()
        .map(|b| b.max)
        .max()
        .unwrap_or(Duration::ZERO)
}

impl DurationBounds {
    /// Why `value` is out of range, or `None` when it fits.
    pub fn refusal(&self, value: Duration) -> Option<String> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if value < self.min {
            return Some(format!(
                "must be at least {} (its floor), not {}",
                show(self.min),
                show(value)
            ));
        }
        if value > self.max {
            let mut message = format!(
                "must be at most {} (its ceiling), not {}",
                show(self.max),
                show(value)
            );
            if self.whole_seconds && value > ETCD_MAX_LEASE_TTL {
                message.push_str(" (etcd itself refuses lease TTLs above 9000000000s)");
            }
            return Some(message);
        }
        if self.whole_seconds && value.subsec_nanos() != 0 {
            return Some(format!(
                "must be a whole number of seconds (etcd grants leases in seconds), not {}",
                show(value)
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_floor_is_below_its_ceiling_and_ceilings_stay_below_etcds_lease_limit() {
        for b in DURATION_BOUNDS {
            assert!(b.min <= b.max, "{}", b.key);
            assert!(b.max < ETCD_MAX_LEASE_TTL, "{}", b.key);
        }
        assert_eq!(longest_duration(), secs(7 * DAY));
    }

    #[test]
    fn refusals_name_the_floor_or_the_ceiling() {
        let b = duration_bounds("health.interval").expect("a duration key");
        assert!(
            b.refusal(Duration::from_nanos(1))
                .unwrap()
                .contains("at least 100ms")
        );
        assert!(b.refusal(secs(2 * HOUR)).unwrap().contains("at most 1h"));
        assert_eq!(b.refusal(secs(2)), None);
        let ttl = duration_bounds("registration.ttl").expect("a duration key");
        assert!(
            ttl.refusal(ms(5500))
                .unwrap()
                .contains("whole number of seconds")
        );
        let huge = ttl.refusal(secs(10_000_000_000)).unwrap();
        assert!(huge.contains("etcd itself refuses"), "{huge}");
    }
}
