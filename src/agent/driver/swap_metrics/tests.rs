use std::time::Duration;

use super::*;
use crate::agent::machine::swap::{Failure, SwapPhase, SwapPlan};
use crate::systemd::control::DropIn;

fn updating(stage: Stage) -> Phase {
    let dropin = |version: &str| DropIn {
        image: format!("web:{version}"),
        version: version.into(),
    };
    Phase::Updating(SwapPhase {
        plan: SwapPlan {
            old: dropin("1.0.0"),
            new: dropin("2.0.0"),
            rise: 1,
        },
        stage,
        previous: None,
        slot_held: true,
        unit_active: true,
    })
}

fn failure() -> Failure {
    Failure {
        code: 1001,
        reason: "unhealthy".into(),
        halt: true,
    }
}

/// Feeds `phases` one second apart; the metrics' text.
fn feed(phases: &[Phase]) -> String {
    let metrics = Metrics::new();
    let mut timer = SwapTimer::new(Some(metrics.clone()));
    let start = Instant::now();
    for (i, phase) in phases.iter().enumerate() {
        timer.observe_at(phase, start + Duration::from_secs(i as u64));
    }
    metrics.encode()
}

fn has(text: &str, line: &str) {
    assert!(text.contains(line), "missing `{line}` in\n{text}");
}

#[test]
fn a_whole_swap_times_each_step_once_and_counts_as_updated() {
    let text = feed(&[
        Phase::Serving,
        updating(Stage::Prepulling),
        updating(Stage::AcquiringSlot { waiting: None }),
        updating(Stage::AcquiringSlot {
            waiting: Some("busy".into()),
        }),
        updating(Stage::AcquiringSlot {
            waiting: Some("busy".into()),
        }),
        updating(Stage::Deregistering),
        updating(Stage::Draining),
        updating(Stage::Fencing),
        updating(Stage::WritingDropIn),
        updating(Stage::Restarting),
        updating(Stage::Verifying { passes: 0 }),
        updating(Stage::Verifying { passes: 1 }),
        updating(Stage::Registering { failure: None }),
        updating(Stage::Releasing),
        Phase::Serving,
    ]);
    has(&text, "sidekick_swaps_total{result=\"updated\"} 1");
    for step in [
        "prepull",
        "slot",
        "deregister",
        "drain",
        "fence",
        "dropin",
        "restart",
        "verify",
        "register",
        "release",
    ] {
        has(
            &text,
            &format!("sidekick_swap_step_seconds_count{{step=\"{step}\"}} 1"),
        );
    }
    // Asked at second 2, held at second 5; verification took two seconds.
    has(&text, "sidekick_slot_wait_seconds_count 1");
    has(&text, "sidekick_slot_wait_seconds_sum 3.0");
    has(&text, "sidekick_swap_step_seconds_sum{step=\"slot\"} 3.0");
    has(&text, "sidekick_swap_step_seconds_sum{step=\"verify\"} 2.0");
    assert!(!text.contains("rollback"), "{text}");
}

#[test]
fn a_rollback_counts_as_rolled_back_with_its_steps() {
    let text = feed(&[
        updating(Stage::Restarting),
        updating(Stage::Verifying { passes: 0 }),
        updating(Stage::RollingBack { failure: failure() }),
        updating(Stage::VerifyingOld {
            failure: failure(),
            passes: 0,
        }),
        updating(Stage::Registering {
            failure: Some(failure()),
        }),
        updating(Stage::Releasing),
        Phase::Serving,
    ]);
    has(&text, "sidekick_swaps_total{result=\"rolled-back\"} 1");
    has(
        &text,
        "sidekick_swap_step_seconds_count{step=\"rollback\"} 1",
    );
    has(
        &text,
        "sidekick_swap_step_seconds_count{step=\"verify-old\"} 1",
    );
    assert!(!text.contains("result=\"updated\""), "{text}");
}

#[test]
fn each_early_end_has_its_own_result() {
    let cases = [
        (
            vec![updating(Stage::Prepulling), Phase::Serving],
            "prepull-failed",
        ),
        (vec![updating(Stage::Fencing), Phase::Serving], "fenced"),
        (
            vec![
                updating(Stage::AcquiringSlot { waiting: None }),
                Phase::Serving,
            ],
            "halted",
        ),
        (
            vec![
                updating(Stage::AcquiringSlot { waiting: None }),
                Phase::Stopping,
            ],
            "abandoned",
        ),
        (
            vec![updating(Stage::Draining), Phase::Stopping],
            "interrupted",
        ),
        // Resumed from the journal with only the release left.
        (
            vec![Phase::Serving, updating(Stage::Releasing), Phase::Serving],
            "interrupted",
        ),
    ];
    for (phases, result) in cases {
        let text = feed(&phases);
        has(
            &text,
            &format!("sidekick_swaps_total{{result=\"{result}\"}} 1"),
        );
    }
}

#[test]
fn a_stop_records_no_step_and_no_slot_wait() {
    let text = feed(&[
        updating(Stage::AcquiringSlot { waiting: None }),
        Phase::Stopping,
    ]);
    assert!(!text.contains("sidekick_swap_step_seconds_count"), "{text}");
    has(&text, "sidekick_slot_wait_seconds_count 0");
}

#[test]
fn stranded_is_counted_once_on_entry() {
    let stranded = || {
        updating(Stage::Stranded {
            failure: failure(),
            why: "the unit failed".into(),
        })
    };
    let text = feed(&[
        updating(Stage::VerifyingOld {
            failure: failure(),
            passes: 0,
        }),
        stranded(),
        stranded(),
        Phase::Stopping,
    ]);
    has(&text, "sidekick_swaps_total{result=\"stranded\"} 1");
    has(
        &text,
        "sidekick_swap_step_seconds_count{step=\"verify-old\"} 1",
    );
    assert!(!text.contains("result=\"interrupted\""), "{text}");
}

#[test]
fn without_metrics_nothing_is_kept() {
    let mut timer = SwapTimer::new(None);
    timer.observe(&updating(Stage::Prepulling));
    assert!(timer.current.is_none());
}

#[test]
fn a_unit_verified_in_the_restarts_own_step_records_a_verification_of_no_time() {
    let text = feed(&[
        updating(Stage::Restarting),
        updating(Stage::Registering { failure: None }),
        updating(Stage::Releasing),
        Phase::Serving,
    ]);
    has(&text, "sidekick_swap_step_seconds_count{step=\"verify\"} 1");
    has(&text, "sidekick_swap_step_seconds_sum{step=\"verify\"} 0.0");
    has(&text, "sidekick_swaps_total{result=\"updated\"} 1");
}
