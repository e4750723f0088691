//! Property test: extreme durations pushed through validation, and every accepted value through
//! the arithmetic the daemon does with it (deadlines `Instant::now() + d`, keepalive `ttl / 3`,
//! jitter, the update poll backoff, the lease TTL sent to etcd) without overflow or panic.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::bounds::{DURATION_BOUNDS, ETCD_MAX_LEASE_TTL, duration_bounds};
use super::inputs::Input;
use super::origin::Origins;
use super::{Settings, Validated};
use crate::omaha::schedule::{PollResult, PollSchedule};

/// A valid input with `key` set to `value`.
fn input_with(key: &str, value: Duration) -> Input {
    let mut input = Input::default();
    input.instance.unit = Some("web@1.service".into());
    input.registration.port = Some(8080);
    input.update.enabled = false;
    let slot = match key {
        "etcd.timeout" => &mut input.etcd.timeout,
        "registration.ttl" => &mut input.registration.ttl,
        "health.interval" => &mut input.health.interval,
        "health.timeout" => &mut input.health.timeout,
        "update.interval" => &mut input.update.interval,
        "slot.ttl" => &mut input.slot.ttl,
        "swap.drain" => &mut input.swap.drain,
        "swap.start_timeout" => &mut input.swap.start_timeout,
        "swap.verify_timeout" => &mut input.swap.verify_timeout,
        other => panic!("no input field for {other}"),
    };
    *slot = value;
    input
}

/// The arithmetic the daemon does on configured durations, each as it is written there.
fn daemon_arithmetic(settings: &Settings) {
    let now = Instant::now();
    let tokio_now = tokio::time::Instant::now();
    let all = [
        settings.etcd.timeout,
        settings.registration.ttl,
        settings.health.interval,
        settings.health.timeout,
        settings.update.interval,
        settings.slot.ttl,
        settings.swap.drain,
        settings.swap.start_timeout,
        settings.swap.verify_timeout,
    ];
    for d in all {
        let _ = now + d;
        let _ = tokio_now + d;
        let _ = now + d / 3;
        let _ = crate::slot::with_jitter(d);
        let _ = d + Duration::from_millis(d.as_millis() as u64 / 2);
        let _ = d.mul_f64(1.1);
    }
    // The whole swap, deadlines chained.
    let swap = &settings.swap;
    let _ = now + swap.drain + swap.start_timeout + swap.verify_timeout;
    for ttl in [settings.registration.ttl, settings.slot.ttl] {
        let requested = i64::try_from(ttl.as_secs()).expect("TTL fits etcd's i64");
        assert!(requested > 0 && ttl <= ETCD_MAX_LEASE_TTL, "{ttl:?}");
    }
    let mut schedule = PollSchedule::new(settings.update.interval);
    for draw in [0.0, 0.5, 0.999] {
        let _ = now + schedule.next_delay_with(PollResult::Success, draw);
        for _ in 0..40 {
            let _ = now + schedule.next_delay_with(PollResult::Failure, draw);
        }
    }
}

fn extreme_duration() -> impl Strategy<Value = Duration> {
    let secs = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        0u64..10,
        0u64..(30 * 24 * 3600),
        any::<u64>(),
    ];
    (secs, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
}

proptest! {
    #[test]
    fn extreme_durations_are_refused_outside_their_bounds_and_safe_inside(
        index in 0..DURATION_BOUNDS.len(),
        value in extreme_duration(),
    ) {
        let key = DURATION_BOUNDS[index].key;
        let bounds = duration_bounds(key).expect("bounds");
        let result = Settings::validate(input_with(key, value), &Origins::new());
        match bounds.refusal(value) {
            Some(why) => {
                let err = result.expect_err("out of bounds, yet accepted");
                prop_assert!(err.to_string().contains(key) && err.to_string().contains(&why));
            }
            None => daemon_arithmetic(&result.expect("within bounds, yet refused")),
        }
    }
}

#[test]
fn the_ceilings_themselves_survive_the_daemons_arithmetic() {
    for bounds in DURATION_BOUNDS {
        for value in [bounds.min, bounds.max] {
            let settings = Settings::validate(input_with(bounds.key, value), &Origins::new())
                .unwrap_or_else(|e| panic!("{}: {e}", bounds.key));
            daemon_arithmetic(&settings);
        }
    }
}
