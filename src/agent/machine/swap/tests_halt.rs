//! Defect 2: the halt is the first action once a failure is known, it is durable (journaled with
//! the phase, re-sent on the way out), a failed one is retried, and the slot is not released
//! until it is confirmed. A strand halts too. Defect 1 in the live path: the rollback fences
//! before its restart, and a slot gone by then is taken again before the unit is touched.

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

const REASON: &str = "2.0.0 not healthy within the verify timeout";

fn halt(retry: bool) -> A {
    A::Halt {
        version: "2.0.0".into(),
        reason: REASON.into(),
        retry,
        cause: HaltCause::Verify,
    }
}

fn restore() -> A {
    A::RestoreAndRestart {
        previous: Some(PreviousDropIn::Absent),
        old: dropin("1.0.0"),
    }
}

/// The slot taken again by a swap that held it (the rollout's gate does not apply).
fn reacquire(retry: bool) -> A {
    A::AcquireSlot {
        version: "2.0.0".into(),
        retry,
        again: true,
        away: false,
    }
}

/// The failure, then the halt's answer: `answer`.
fn failed_and_halted(answer: Result<(), String>) -> SwapPhase {
    run(
        verifying(),
        &[
            (O::VerifyDeadline, &[halt(false)]),
            (O::GroupHalted(answer), &[A::CheckSlot]),
            (O::Fenced { held: true }, &[restore()]),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (O::Probe { passed: true }, &[A::Register]),
        ],
    )
}

#[test]
fn the_halt_is_the_first_action_once_a_failure_is_known_and_is_recorded_in_the_phase() {
    for failing in [O::VerifyDeadline, O::Unit(ActiveState::Failed)] {
        let (phase, actions) = step(verifying(), failing.clone());
        assert!(
            matches!(actions.as_slice(), [A::Halt { retry: false, .. }]),
            "{failing:?}: {actions:?}"
        );
        // Durable: the phase the driver journals before the halt says it is owed.
        assert!(matches!(phase.halt, GroupHalt::Owed { .. }), "{failing:?}");
        assert!(matches!(phase.stage, Stage::RollingBack { .. }));
    }
    let mut restarting = verifying();
    restarting.stage = Stage::Restarting;
    let (phase, actions) = step(restarting, O::Restarted(Err("job failed".into())));
    assert!(
        matches!(actions.as_slice(), [A::Halt { .. }]),
        "{actions:?}"
    );
    assert!(matches!(phase.halt, GroupHalt::Owed { .. }));
}

#[test]
fn a_confirmed_halt_is_not_sent_again_and_the_release_follows_the_3_0() {
    let phase = failed_and_halted(Ok(()));
    assert_eq!(phase.halt, GroupHalt::Confirmed);
    run(
        phase,
        &[(
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
        )],
    );
}

#[test]
fn a_failed_halt_does_not_hold_the_rollback_but_holds_the_release_until_it_is_confirmed() {
    let phase = failed_and_halted(Err("etcd unavailable".into()));
    assert!(matches!(phase.halt, GroupHalt::Owed { .. }));
    let phase = run(
        phase,
        &[
            (
                O::Registered,
                &[
                    halt(false),
                    A::SendEvent(Event::Failed {
                        error_code: error_code::UNHEALTHY_AFTER_SWAP,
                    }),
                    A::Denylist {
                        version: "2.0.0".into(),
                    },
                ],
            ),
            (
                O::GroupHalted(Err("etcd unavailable".into())),
                &[halt(true)],
            ),
            (O::GroupHalted(Err("FleetLock 503".into())), &[halt(true)]),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
}

#[test]
fn sigterm_with_the_halt_owed_sends_it_on_the_way_out_and_keeps_the_journal_and_the_slot() {
    // Right after the failure, and in Releasing waiting for the halt.
    let (rolling, _) = step(verifying(), O::VerifyDeadline);
    let releasing = run(
        failed_and_halted(Err("down".into())),
        &[(
            O::Registered,
            &[
                halt(false),
                A::SendEvent(Event::Failed {
                    error_code: error_code::UNHEALTHY_AFTER_SWAP,
                }),
                A::Denylist {
                    version: "2.0.0".into(),
                },
            ],
        )],
    );
    for phase in [rolling, releasing] {
        let stage = phase.stage.clone();
        let (phase, actions) = step(phase, O::Shutdown);
        assert_eq!(actions, [halt(false), A::Stop], "{stage:?}");
        // No release, no journal clear: the next start halts again (see recover's tests).
        assert_eq!(phase.stage, stage);
        assert!(matches!(phase.halt, GroupHalt::Owed { .. }));
    }
}

#[test]
fn a_stranded_rollback_halts_first_even_when_the_failure_did_not_blame_the_version() {
    let mut rolling = verifying();
    rolling.stage = Stage::RollingBack {
        failure: Failure {
            code: error_code::GENERIC,
            reason: "interrupted".into(),
            halt: false,
        },
    };
    let (phase, actions) = step(rolling, O::Restarted(Err("job failed".into())));
    let reason = "interrupted; rolling back to 1.0.0 failed: restart onto the old version failed: job failed";
    let halt = |retry| A::Halt {
        version: "2.0.0".into(),
        reason: reason.into(),
        retry,
        cause: HaltCause::Immediate,
    };
    assert_eq!(
        actions,
        [
            halt(false),
            A::SendEvent(Event::Failed {
                error_code: error_code::ROLLBACK_FAILED
            })
        ]
    );
    assert!(matches!(phase.stage, Stage::Stranded { .. }));
    let phase = run(
        phase,
        &[
            (O::GroupHalted(Err("down".into())), &[halt(true)]),
            (O::GroupHalted(Ok(())), &[]),
        ],
    );
    assert_eq!(phase.halt, GroupHalt::Confirmed);
    assert!(phase.slot_held, "a stranded swap keeps its slot");
}

/// Defect 1 in the live path: the slot lost after the forward fence (a lease that lapsed while
/// verifying) is noticed by the rollback's own fence; nothing is restarted until it is ours
/// again, and the wait is deregistered.
#[test]
fn a_rollback_whose_fence_finds_the_slot_gone_takes_it_again_before_restoring() {
    let phase = run(
        verifying(),
        &[
            (O::VerifyDeadline, &[halt(false)]),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (
                O::Fenced { held: false },
                &[
                    A::NoteSlotLost,
                    A::AcquireSlot {
                        version: "2.0.0".into(),
                        retry: false,
                        again: true,
                        away: false,
                    },
                ],
            ),
            (
                O::Slot(SlotAnswer::Busy("1 of 1 slots held".into())),
                &[A::AcquireSlot {
                    version: "2.0.0".into(),
                    retry: true,
                    again: true,
                    away: false,
                }],
            ),
        ],
    );
    assert!(!phase.allows_registration());
    assert!(matches!(phase.stage, Stage::Reacquiring { .. }));
    let phase = run(phase, &[(O::Slot(SlotAnswer::Acquired), &[restore()])]);
    assert!(phase.slot_held);
    assert!(matches!(phase.stage, Stage::RollingBack { .. }));
}

/// Defect 1, a slot lost after the fence while the new version was restarted and verified (the
/// lease lapsed): noticed before the release, logged and counted; the release that follows
/// deletes only our own key.
#[test]
fn a_slot_lost_during_restart_or_verification_is_noted_before_the_release() {
    let phase = run(
        verifying(),
        &[
            (O::Unit(Active), &[]),
            (O::Probe { passed: true }, &[A::Register]),
            (O::Registered, &[A::StartMinHealthy]),
            (
                O::MinHealthyElapsed { monitor: false },
                &[A::SendEvent(Event::UpdateComplete), A::CheckSlot],
            ),
            (
                O::Fenced { held: false },
                &[A::NoteSlotLost, A::ReleaseSlot { retry: false }],
            ),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
}

/// SIGTERM while Releasing clears the journal, so the recorded 3/x (which may still be in
/// flight) goes out once more with the release rather than being left to chance.
#[test]
fn sigterm_while_releasing_sends_the_recorded_3_x_with_the_release() {
    let (releasing, _) = step(
        SwapPhase {
            stage: Stage::Registering { failure: None },
            ..verifying()
        },
        O::Registered,
    );
    let (releasing, _) = step(releasing, O::MinHealthyElapsed { monitor: false });
    assert_eq!(releasing.stage, Stage::Releasing);
    let (phase, actions) = step(releasing, O::Shutdown);
    assert_eq!(
        actions,
        [
            A::ReleaseSlot { retry: false },
            A::SendEvent(Event::UpdateComplete),
            A::ClearJournal,
            A::Stop
        ]
    );
    assert_eq!(phase.stage, Stage::Finished);
}

/// A stop seen while the rollback takes its lost slot again: the unit is not started again, yet
/// the failure recorded before the stop stays the version's (denylisted, its errorcode sent).
#[test]
fn a_unit_stopped_while_the_rollback_takes_its_slot_again_keeps_the_versions_blame() {
    let put_back = A::RestoreDropIn {
        previous: Some(PreviousDropIn::Absent),
        old: dropin("1.0.0"),
    };
    let phase = run(
        verifying(),
        &[
            (O::VerifyDeadline, &[halt(false)]),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (
                O::Fenced { held: false },
                &[A::NoteSlotLost, reacquire(false)],
            ),
            (O::Unit(ActiveState::Inactive), &[]),
            (
                O::Slot(SlotAnswer::Acquired),
                &[
                    A::Denylist {
                        version: "2.0.0".into(),
                    },
                    put_back,
                ],
            ),
        ],
    );
    let failure = Failure {
        code: error_code::UNHEALTHY_AFTER_SWAP,
        reason: REASON.into(),
        halt: true,
    };
    assert_eq!(phase.stage, Stage::StandingDown { failure });
    run(
        phase,
        &[(
            O::DropInRestored(Ok(())),
            &[
                A::ReleaseSlot { retry: false },
                A::SendEvent(Event::Failed {
                    error_code: error_code::UNHEALTHY_AFTER_SWAP,
                }),
                A::ClearJournal,
            ],
        )],
    );
}

/// A halt on the failed version seen while the rollback waits for its slot (this instance's own
/// halt, or another's): the rollback waits on, keeping its own failure (the version's blame and
/// errorcode), not the one a recovered forward swap takes from the halt.
#[test]
fn a_halt_on_the_version_while_the_rollback_waits_for_its_slot_keeps_the_rollbacks_failure() {
    let halted = SlotAnswer::Halted {
        version: "2.0.0".into(),
        reason: REASON.into(),
    };
    let phase = run(
        verifying(),
        &[
            (O::VerifyDeadline, &[halt(false)]),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (
                O::Fenced { held: false },
                &[A::NoteSlotLost, reacquire(false)],
            ),
            (O::Slot(halted), &[reacquire(true)]),
        ],
    );
    let failure = Failure {
        code: error_code::UNHEALTHY_AFTER_SWAP,
        reason: REASON.into(),
        halt: true,
    };
    assert_eq!(
        phase.stage,
        Stage::Reacquiring {
            resume: Box::new(Stage::RollingBack { failure }),
            waiting: Some(format!("group halted by 2.0.0: {REASON}")),
        }
    );
}
