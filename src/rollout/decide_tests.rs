//! The slot gate and the stage as tables: each row is a policy, what etcd holds, the time, and
//! the answer an instance must get.

use std::num::NonZeroU32;
use std::time::Duration;

use jiff::SignedDuration;
use jiff::tz::TimeZone;

use super::*;
use crate::rollout::policy::{PolicyText, Window, parse_day};
use crate::rollout::state::{Failure, Promotion};

fn at(text: &str) -> Timestamp {
    text.parse().expect("a timestamp")
}

const T0: &str = "2026-01-05T02:00:00Z"; // a Monday
const SWAP: Duration = Duration::from_secs(60);

fn t(secs: i64) -> Timestamp {
    at(T0) + SignedDuration::from_secs(secs)
}

fn policy(edit: impl FnOnce(&mut PolicyText)) -> RolloutPolicy {
    let mut text = PolicyText::default();
    edit(&mut text);
    text.validate().expect("a valid policy")
}

fn state(edit: impl FnOnce(&mut VersionState)) -> VersionState {
    let mut s = VersionState::new("2.0.0", at(T0));
    edit(&mut s);
    s
}

fn fail(s: &mut VersionState, instance: &str) {
    s.add_failure(Failure {
        instance: instance.into(),
        at: at(T0),
        stage: "min_healthy".into(),
        reason: "left active".into(),
    });
}

fn view<'a>(policy: &'a RolloutPolicy, version: Option<&'a VersionState>) -> GroupView<'a> {
    GroupView {
        policy,
        paused: false,
        halted: None,
        version,
        last_release: None,
        release_seen: None,
        wave_seen: None,
        swap_estimate: SWAP,
        superseded_by: None,
    }
}

fn always() -> Schedule {
    Schedule::new(&[], TimeZone::UTC)
}

/// Monday 02:00-02:30 UTC.
fn half_hour_window() -> Schedule {
    let window = Window {
        days: vec![parse_day("Mon").expect("day")],
        start: 120,
        length: 30,
    };
    Schedule::new(&[window], TimeZone::UTC)
}

fn take(canary: bool) -> SlotGate {
    SlotGate::Take { canary }
}

fn hold(h: Hold) -> SlotGate {
    SlotGate::Hold(h)
}

#[test]
fn the_default_policy_lets_any_instance_take_a_slot() {
    let p = RolloutPolicy::default();
    assert_eq!(p.max_failures, NonZeroU32::MIN);
    assert_eq!(
        slot_gate(&view(&p, None), &always(), "web-1", t(0)),
        take(false)
    );
}

#[test]
fn halt_pause_and_the_failure_budget_hold_in_that_order() {
    let p = policy(|p| p.max_failures = 2);
    let one = state(|s| fail(s, "web-1"));
    let two = state(|s| {
        fail(s, "web-1");
        fail(s, "web-1");
        fail(s, "web-2");
    });
    let mut halted = view(&p, Some(&two));
    halted.halted = Some("3.0.0 failed");
    halted.paused = true;
    let mut paused = view(&p, Some(&two));
    paused.paused = true;
    let rows: [(GroupView<'_>, SlotGate); 4] = [
        (halted, hold(Hold::Halted("3.0.0 failed".into()))),
        (paused, hold(Hold::Paused)),
        (
            view(&p, Some(&two)),
            hold(Hold::FailureBudgetSpent { failed: 2, max: 2 }),
        ),
        (view(&p, Some(&one)), take(false)),
    ];
    for (i, (v, want)) in rows.into_iter().enumerate() {
        assert_eq!(slot_gate(&v, &always(), "web-3", t(0)), want, "row {i}");
    }
}

#[test]
fn the_failure_budget_is_spent_at_max_failures_distinct_instances() {
    let max = |n: u32| NonZeroU32::new(n).expect("non-zero");
    let none = FailureBudget::of(None, max(2));
    assert_eq!((none.failed, none.max, none.spent()), (0, 2, false));
    let one = state(|s| fail(s, "web-1"));
    let twice = state(|s| {
        fail(s, "web-1");
        fail(s, "web-1");
    });
    let two = state(|s| {
        fail(s, "web-1");
        fail(s, "web-2");
    });
    let rows = [
        (&one, 1, true),
        (&one, 2, false),
        (&twice, 2, false),
        (&two, 2, true),
        (&two, 3, false),
    ];
    for (i, (s, m, spent)) in rows.into_iter().enumerate() {
        assert_eq!(FailureBudget::of(Some(s), max(m)).spent(), spent, "row {i}");
    }
    // With 1 the halt's reason is the failure's own, as before the budget.
    let reason = "2.0.0 not healthy within the verify timeout";
    assert_eq!(
        FailureBudget::of(Some(&one), max(1)).halt_reason(reason),
        reason
    );
    assert_eq!(
        FailureBudget::of(Some(&two), max(2)).halt_reason(reason),
        format!("{reason} (2 instances failed on the version, max_failures 2)")
    );
}

#[test]
fn windows_hold_outside_and_when_the_estimate_does_not_fit() {
    let p = RolloutPolicy::default();
    let schedule = half_hour_window();
    let mut v = view(&p, None);
    assert_eq!(slot_gate(&v, &schedule, "web-1", t(0)), take(false));
    assert_eq!(
        slot_gate(&v, &schedule, "web-1", t(29 * 60)),
        take(false),
        "a 60 s swap 60 s before the close still fits"
    );
    assert_eq!(
        slot_gate(&v, &schedule, "web-1", t(29 * 60 + 1)),
        hold(Hold::WindowTooShort {
            closes: t(30 * 60),
            needs: SWAP
        })
    );
    assert_eq!(
        slot_gate(&v, &schedule, "web-1", t(-1)),
        hold(Hold::OutsideWindow { opens: Some(t(0)) })
    );
    v.swap_estimate = Duration::from_secs(31 * 60);
    assert_eq!(
        slot_gate(&v, &schedule, "web-1", t(0)),
        hold(Hold::WindowTooShort {
            closes: t(30 * 60),
            needs: Duration::from_secs(31 * 60)
        })
    );
}

#[test]
fn the_canary_wave_admits_n_then_holds_until_they_pass_and_bake() {
    let p = policy(|p| {
        p.canary = 2;
        p.canary_bake = Duration::from_secs(300);
    });
    let none = state(|_| {});
    let one = state(|s| s.add_canary("web-1", None, at(T0)));
    let two = state(|s| {
        s.add_canary("web-1", None, at(T0));
        s.add_canary("web-2", None, at(T0));
    });
    let half = state(|s| {
        s.add_canary("web-1", None, at(T0));
        s.add_canary("web-2", None, at(T0));
        s.canary_result("web-1", true, t(10));
        s.canary_result("web-2", false, t(10));
    });
    let passed = state(|s| {
        s.add_canary("web-1", None, at(T0));
        s.add_canary("web-2", None, at(T0));
        s.canary_result("web-1", true, t(10));
        s.canary_result("web-2", true, t(20));
    });
    let rows: Vec<(Option<&VersionState>, &str, Timestamp, SlotGate)> = vec![
        (None, "web-1", t(0), take(true)),
        (Some(&none), "web-1", t(0), take(true)),
        (Some(&one), "web-2", t(0), take(true)),
        (Some(&one), "web-1", t(0), take(true)),
        (
            Some(&two),
            "web-3",
            t(0),
            hold(Hold::Canaries {
                passed: 0,
                failed: 0,
                wanted: 2,
            }),
        ),
        (Some(&two), "web-2", t(0), take(true)),
        (
            Some(&half),
            "web-3",
            t(0),
            hold(Hold::Canaries {
                passed: 1,
                failed: 1,
                wanted: 2,
            }),
        ),
        (
            Some(&passed),
            "web-3",
            t(20),
            hold(Hold::Baking { until: t(320) }),
        ),
        (
            Some(&passed),
            "web-3",
            t(319),
            hold(Hold::Baking { until: t(320) }),
        ),
        (Some(&passed), "web-3", t(320), take(false)),
    ];
    for (i, (s, instance, now, want)) in rows.into_iter().enumerate() {
        assert_eq!(
            slot_gate(&view(&p, s), &always(), instance, now),
            want,
            "row {i}"
        );
    }
}

#[test]
fn manual_promotion_holds_the_rest_after_the_wave_until_promoted() {
    let p = policy(|p| {
        p.canary = 1;
        p.promote = crate::rollout::Promote::Manual;
    });
    let passed = state(|s| {
        s.add_canary("web-1", None, at(T0));
        s.canary_result("web-1", true, t(10));
    });
    let promoted = state(|s| {
        s.add_canary("web-1", None, at(T0));
        s.canary_result("web-1", true, t(10));
        s.promoted = Some(Promotion {
            at: t(20),
            by: "ops".into(),
        });
    });
    assert_eq!(
        slot_gate(&view(&p, Some(&passed)), &always(), "web-2", t(30)),
        hold(Hold::AwaitingPromotion)
    );
    assert_eq!(
        slot_gate(&view(&p, Some(&promoted)), &always(), "web-2", t(30)),
        take(false)
    );
    // With no canary, manual promotion holds the first slot too.
    let p0 = policy(|p| p.promote = crate::rollout::Promote::Manual);
    assert_eq!(
        slot_gate(&view(&p0, None), &always(), "web-1", t(0)),
        hold(Hold::AwaitingPromotion)
    );
    // … until `rollout promote` records the version with its promotion: then every instance.
    let recorded = VersionState::promoted(None, "2.0.0", "ops", t(1)).expect("promoted");
    for who in ["web-1", "web-2"] {
        assert_eq!(
            slot_gate(&view(&p0, Some(&recorded)), &always(), who, t(2)),
            take(false)
        );
    }
}

#[test]
fn batch_delay_holds_until_that_long_after_the_last_release() {
    let p = policy(|p| p.batch_delay = Duration::from_secs(10));
    let mut v = view(&p, None);
    v.last_release = Some(t(0));
    assert_eq!(
        slot_gate(&v, &always(), "web-2", t(9)),
        hold(Hold::BatchDelay { until: t(10) })
    );
    assert_eq!(slot_gate(&v, &always(), "web-2", t(10)), take(false));
}

#[test]
fn the_floor_is_the_sum_of_the_swaps_bounds_and_min_healthy() {
    let s = Duration::from_secs;
    assert_eq!(swap_floor(s(5), s(120), s(60), s(10)), s(195));
}

#[test]
fn the_stage_follows_the_gate_and_ends_when_every_instance_serves_the_version() {
    let p = policy(|p| {
        p.canary = 1;
        p.promote = crate::rollout::Promote::Manual;
    });
    let fresh = state(|_| {});
    let passed = state(|s| {
        s.add_canary("web-1", None, at(T0));
        s.canary_result("web-1", true, t(10));
    });
    let finished = state(|s| s.finished = Some(t(5)));
    let sched = always();
    assert_eq!(
        stage(&view(&p, Some(&fresh)), &sched, 0, 3, t(0)),
        Stage::Canaries {
            passed: 0,
            failed: 0,
            wanted: 1
        }
    );
    assert_eq!(
        stage(&view(&p, Some(&passed)), &sched, 1, 3, t(20)),
        Stage::AwaitingPromotion
    );
    assert_eq!(
        stage(&view(&p, Some(&passed)), &sched, 3, 3, t(20)),
        Stage::Done
    );
    assert_eq!(
        stage(&view(&p, Some(&finished)), &sched, 0, 3, t(20)),
        Stage::Done
    );
    assert_eq!(
        stage(&view(&p, Some(&fresh)), &sched, 0, 0, t(0)).name(),
        "canaries",
        "no instance: not done"
    );
    let auto = RolloutPolicy::default();
    assert_eq!(
        stage(&view(&auto, Some(&fresh)), &sched, 1, 3, t(0)),
        Stage::Rolling
    );
    let mut delayed = view(&auto, Some(&fresh));
    delayed.last_release = Some(t(0));
    let p_delay = policy(|p| p.batch_delay = Duration::from_secs(60));
    delayed.policy = &p_delay;
    assert_eq!(
        stage(&delayed, &sched, 1, 3, t(1)),
        Stage::Rolling,
        "a batch delay is part of rolling"
    );
    let mut halted = view(&auto, Some(&fresh));
    halted.halted = Some("bad");
    assert_eq!(
        stage(&halted, &sched, 1, 3, t(0)),
        Stage::Halted("bad".into())
    );
    assert_eq!(
        stage(
            &view(&auto, Some(&fresh)),
            &half_hour_window(),
            1,
            3,
            t(-60)
        ),
        Stage::WaitingForWindow { opens: Some(t(0)) }
    );
}

#[test]
fn wait_exit_codes_follow_the_documented_table() {
    let codes: Vec<(Stage, Option<u8>)> = vec![
        (Stage::Done, Some(0)),
        (Stage::Halted("x".into()), Some(1)),
        (Stage::Failed { failed: 1, max: 1 }, Some(1)),
        (Stage::AwaitingPromotion, Some(3)),
        (Stage::Paused, None),
        (Stage::Rolling, None),
        (Stage::Baking { until: t(0) }, None),
        (
            Stage::Canaries {
                passed: 0,
                failed: 0,
                wanted: 1,
            },
            None,
        ),
        (Stage::WaitingForWindow { opens: None }, None),
    ];
    for (stage, code) in codes {
        assert_eq!(stage.wait_exit(), code, "{}", stage.name());
    }
}
