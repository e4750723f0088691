//! The failure budget (`rollout.max_failures`) as the machine sees it: a version's failure owes a
//! halt that the driver may answer with "counted, not spent" ([`SwapObservation::FailureCounted`]);
//! the rollback and the release then go on as after a confirmed halt, while a strand still halts
//! the group, and the journal keeps which kind of halt is owed.

use super::*;
use crate::agent::machine::fixtures::{dropin, run};
use ActiveState::Active;
use SwapAction as A;
use SwapObservation as O;

/// A swap verifying 2.0.0 (rise 1), holding its slot.
fn verifying() -> SwapPhase {
    SwapPhase {
        plan: SwapPlan {
            old: dropin("1.0.0"),
            new: dropin("2.0.0"),
            rise: 1,
        },
        stage: Stage::Verifying { passes: 0 },
        previous: Some(PreviousDropIn::Absent),
        slot_held: true,
        unit_active: true,
        halt: GroupHalt::NotNeeded,
        report: None,
        unit_stopped: false,
        monitor: false,
        away: false,
        denylist: false,
    }
}

fn halt(reason: &str, retry: bool, cause: HaltCause) -> A {
    A::Halt {
        version: "2.0.0".into(),
        reason: reason.into(),
        retry,
        cause,
    }
}

const REASON: &str = "2.0.0 not healthy within the verify timeout";

fn restore() -> A {
    A::RestoreAndRestart {
        previous: Some(PreviousDropIn::Absent),
        old: dropin("1.0.0"),
    }
}

#[test]
fn each_failure_owes_a_halt_whose_cause_says_whether_the_budget_applies() {
    let (phase, actions) = step(verifying(), O::VerifyDeadline);
    assert_eq!(actions, [halt(REASON, false, HaltCause::Verify)]);
    assert_eq!(
        phase.halt,
        GroupHalt::Owed {
            reason: REASON.into(),
            cause: HaltCause::Verify
        }
    );
    let mut restarting = verifying();
    restarting.stage = Stage::Restarting;
    let (_, actions) = step(restarting, O::Restarted(Err("timeout".into())));
    assert_eq!(
        actions,
        [halt(
            "restart onto 2.0.0 failed: timeout",
            false,
            HaltCause::Verify
        )]
    );
    let mut proving = verifying();
    proving.stage = Stage::MinHealthy { departed: false };
    let (_, actions) = step(proving, O::Unit(ActiveState::Failed));
    assert!(
        matches!(
            actions.first(),
            Some(A::Halt {
                cause: HaltCause::MinHealthy,
                ..
            })
        ),
        "{actions:?}"
    );
    assert_eq!(HaltCause::Verify.budget_stage(), Some("verify"));
    assert_eq!(HaltCause::MinHealthy.budget_stage(), Some("min_healthy"));
    assert_eq!(HaltCause::Immediate.budget_stage(), None);
}

#[test]
fn a_counted_failure_below_the_budget_rolls_back_denylists_reports_and_releases() {
    let phase = run(
        verifying(),
        &[
            (O::VerifyDeadline, &[halt(REASON, false, HaltCause::Verify)]),
            (O::FailureCounted, &[A::CheckSlot]),
            (O::Fenced { held: true }, &[restore()]),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (O::Probe { passed: true }, &[A::Register]),
        ],
    );
    assert_eq!(phase.halt, GroupHalt::Counted);
    let phase = run(
        phase,
        &[
            (
                O::Registered,
                &[
                    A::SendEvent(Event::Failed {
                        error_code: error_code::UNHEALTHY_AFTER_SWAP,
                    }),
                    A::Denylist {
                        version: "2.0.0".into(),
                    },
                    A::CheckSlot,
                ],
            ),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert_eq!(phase.halt, GroupHalt::Counted, "counted, never halted");
}

#[test]
fn a_count_that_fails_is_retried_before_the_release_as_a_failed_halt_is() {
    let phase = run(
        verifying(),
        &[
            (O::VerifyDeadline, &[halt(REASON, false, HaltCause::Verify)]),
            (O::GroupHalted(Err("etcd down".into())), &[A::CheckSlot]),
            (O::Fenced { held: true }, &[restore()]),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (O::Probe { passed: true }, &[A::Register]),
        ],
    );
    let (phase, actions) = step(phase, O::Registered);
    assert_eq!(
        actions.first(),
        Some(&halt(REASON, false, HaltCause::Verify)),
        "the count again before anything else: {actions:?}"
    );
    assert!(
        !actions.contains(&A::CheckSlot),
        "no release yet: {actions:?}"
    );
    let phase = run(
        phase,
        &[
            (
                O::GroupHalted(Err("etcd down".into())),
                &[halt(REASON, true, HaltCause::Verify)],
            ),
            (O::FailureCounted, &[A::CheckSlot]),
        ],
    );
    assert_eq!(phase.halt, GroupHalt::Counted);
}

#[test]
fn a_strand_after_a_counted_failure_still_halts_the_group_at_once() {
    let mut phase = verifying();
    phase.halt = GroupHalt::Counted;
    phase.stage = Stage::RollingBack {
        failure: Failure {
            code: error_code::UNHEALTHY_AFTER_SWAP,
            reason: REASON.into(),
            halt: true,
        },
    };
    let (phase, actions) = step(phase, O::Restarted(Err("job failed".into())));
    let reason = format!(
        "{REASON}; rolling back to 1.0.0 failed: restart onto the old version failed: job failed"
    );
    assert_eq!(
        actions,
        [
            halt(&reason, false, HaltCause::Immediate),
            A::SendEvent(Event::Failed {
                error_code: error_code::ROLLBACK_FAILED
            })
        ]
    );
    // A count is no answer to an immediate halt: it is sent again.
    let phase = run(
        phase,
        &[
            (
                O::FailureCounted,
                &[halt(&reason, true, HaltCause::Immediate)],
            ),
            (O::GroupHalted(Ok(())), &[]),
        ],
    );
    assert_eq!(phase.halt, GroupHalt::Confirmed);
    assert!(matches!(phase.stage, Stage::Stranded { .. }));
}

#[test]
fn a_confirmed_halt_is_not_downgraded_and_an_owed_immediate_halt_stays_immediate() {
    let mut phase = verifying();
    phase.halt = GroupHalt::Confirmed;
    phase.owe_halt("again", HaltCause::Immediate);
    assert_eq!(phase.halt, GroupHalt::Confirmed);
    phase.halt = GroupHalt::Owed {
        reason: "stranded".into(),
        cause: HaltCause::Immediate,
    };
    phase.owe_halt("failed", HaltCause::Verify);
    assert!(
        matches!(
            &phase.halt,
            GroupHalt::Owed {
                cause: HaltCause::Immediate,
                ..
            }
        ),
        "{:?}",
        phase.halt
    );
    phase.halt = GroupHalt::Counted;
    phase.owe_halt("failed again", HaltCause::MinHealthy);
    assert_eq!(phase.halt, GroupHalt::Counted, "counted once per swap");
}

#[test]
fn a_journal_from_before_the_budget_owes_an_immediate_halt_and_the_new_states_round_trip() {
    let old: GroupHalt = serde_json::from_str(r#"{"state":"owed","reason":"r"}"#).expect("old");
    assert_eq!(
        old,
        GroupHalt::Owed {
            reason: "r".into(),
            cause: HaltCause::Immediate
        }
    );
    for halt in [
        GroupHalt::Counted,
        GroupHalt::Owed {
            reason: "r".into(),
            cause: HaltCause::MinHealthy,
        },
    ] {
        let text = serde_json::to_string(&halt).expect("json");
        assert_eq!(
            serde_json::from_str::<GroupHalt>(&text).expect("back"),
            halt,
            "{text}"
        );
    }
}
