//! Operator actions and abandoned grants (issue 16, defects 4 and 7): the sidekick never starts a
//! unit an operator stopped, never blames a version for an operator's action, and ends every
//! grant with exactly one terminal 3/x.

use super::*;
use crate::agent::machine::fixtures::dropin;
use ActiveState::{Deactivating, Inactive};
use SwapAction as A;
use SwapObservation as O;

/// A swap to 2.0.0 standing at `stage`, holding its slot, the unit active.
fn at(stage: Stage) -> SwapPhase {
    SwapPhase {
        plan: SwapPlan {
            old: dropin("1.0.0"),
            new: dropin("2.0.0"),
            rise: 1,
        },
        stage,
        previous: Some(PreviousDropIn::Absent),
        slot_held: true,
        unit_active: true,
        unit_stopped: false,
        monitor: false,
        away: false,
        denylist: false,
        halt: GroupHalt::NotNeeded,
        report: None,
    }
}

fn failed(code: u32) -> A {
    A::SendEvent(Event::Failed { error_code: code })
}

/// Feeds `observations`; returns the last phase and every action asked for on the way.
fn feed(mut phase: SwapPhase, observations: &[O]) -> (SwapPhase, Vec<A>) {
    let mut all = Vec::new();
    for observation in observations {
        let (next, actions) = step(phase, observation.clone());
        all.extend(actions);
        phase = next;
    }
    (phase, all)
}

/// Whether `actions` start the unit, blame the version, or roll it back.
fn blames_or_starts(actions: &[A]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            A::Restart
                | A::RestoreAndRestart { .. }
                | A::Halt { .. }
                | A::Denylist { .. }
                | A::WriteDropIn(_)
        ) || matches!(a, A::SendEvent(Event::Failed { error_code: code })
                if ![error_code::OPERATOR_ACTION, error_code::SLOT_LOST, error_code::INTERRUPTED]
                    .contains(code))
    })
}

const STOPPED: [O; 2] = [O::LeftActive, O::Unit(Inactive)];

#[test]
fn a_stop_before_the_dropin_gives_the_attempt_up_with_3_0_operator_action() {
    for stage in [
        Stage::AcquiringSlot { waiting: None },
        Stage::Deregistering,
        Stage::Draining,
        Stage::Fencing,
    ] {
        let (phase, actions) = feed(at(stage.clone()), &STOPPED);
        assert!(!blames_or_starts(&actions), "{stage:?}: {actions:?}");
        assert!(
            actions.contains(&failed(error_code::OPERATOR_ACTION)),
            "{stage:?}: {actions:?}"
        );
        assert!(
            actions.contains(&A::ReleaseSlot { retry: false }),
            "{stage:?}: {actions:?}"
        );
        assert!(phase.allows_registration(), "{stage:?}");
        // Late answers of the steps that were in flight start nothing.
        let (_, late) = feed(
            phase,
            &[
                O::Slot(SlotAnswer::Acquired),
                O::Deregistered,
                O::DrainElapsed,
                O::Fenced { held: true },
            ],
        );
        assert!(!blames_or_starts(&late), "{stage:?}: {late:?}");
    }
}

/// The unit's state alone (its departure not reported apart) gives the attempt up too; an
/// unknown state (systemd not read since) is no news.
#[test]
fn a_state_other_than_active_before_the_dropin_gives_the_attempt_up_and_unknown_does_not() {
    for state in [Deactivating, Inactive, ActiveState::Failed] {
        let (phase, actions) = step(at(Stage::Draining), O::Unit(state.clone()));
        assert_eq!(
            actions,
            [
                A::ReleaseSlot { retry: false },
                failed(error_code::OPERATOR_ACTION),
                A::ClearJournal,
            ],
            "{state:?}"
        );
        assert_eq!(phase.stage, Stage::Finished, "{state:?}");
    }
    for state in [ActiveState::Unknown, ActiveState::Active] {
        let (phase, actions) = step(at(Stage::Draining), O::Unit(state.clone()));
        assert_eq!(actions, [], "{state:?}");
        assert_eq!(phase.stage, Stage::Draining, "{state:?}");
    }
}

#[test]
fn a_stop_while_prepulling_ends_the_grant_and_sends_no_release() {
    let phase = SwapPhase {
        slot_held: false,
        ..at(Stage::Prepulling)
    };
    let (phase, actions) = feed(phase, &[O::LeftActive]);
    assert_eq!(
        actions,
        [failed(error_code::OPERATOR_ACTION), A::ClearJournal]
    );
    assert_eq!(phase.stage, Stage::Finished);
}

#[test]
fn a_stop_during_the_dropin_write_puts_the_old_dropin_back_without_a_restart() {
    let (_, actions) = feed(
        at(Stage::WritingDropIn),
        &[
            O::LeftActive,
            O::Unit(Inactive),
            O::DropInWritten(Ok(PreviousDropIn::Absent)),
        ],
    );
    assert!(!blames_or_starts(&actions), "{actions:?}");
}

#[test]
fn a_stop_while_verifying_neither_starts_the_unit_nor_blames_the_version() {
    let (_, actions) = feed(
        at(Stage::Verifying { passes: 0 }),
        &[
            O::LeftActive,
            O::Unit(Deactivating),
            O::Unit(Inactive),
            O::VerifyDeadline,
        ],
    );
    assert!(!blames_or_starts(&actions), "{actions:?}");
}

#[test]
fn a_lost_fence_ends_the_grant_with_3_0_slot_lost() {
    let (phase, actions) = feed(at(Stage::Fencing), &[O::Fenced { held: false }]);
    assert!(
        actions.contains(&failed(error_code::SLOT_LOST)),
        "{actions:?}"
    );
    assert!(!blames_or_starts(&actions), "{actions:?}");
    assert!(phase.allows_registration());
}

#[test]
fn sigterm_before_the_deregistration_ends_the_grant_with_3_0_interrupted() {
    for (stage, held) in [
        (Stage::Prepulling, false),
        (Stage::AcquiringSlot { waiting: None }, true),
    ] {
        let phase = SwapPhase {
            slot_held: held,
            ..at(stage.clone())
        };
        let (_, actions) = step(phase, O::Shutdown);
        assert!(
            actions.contains(&failed(error_code::INTERRUPTED)),
            "{stage:?}: {actions:?}"
        );
        assert_eq!(actions.last(), Some(&A::Stop), "{stage:?}");
    }
}

#[test]
fn sigterm_after_the_deregistration_with_nothing_changed_releases_and_ends_the_grant() {
    for stage in [Stage::Deregistering, Stage::Draining, Stage::Fencing] {
        let (phase, actions) = step(at(stage.clone()), O::Shutdown);
        assert_eq!(
            actions,
            [
                A::ReleaseSlot { retry: false },
                failed(error_code::INTERRUPTED),
                A::ClearJournal,
                A::Stop,
            ],
            "{stage:?}"
        );
        assert!(!phase.slot_held, "{stage:?}");
    }
}

fn standing_down(why: &str) -> Stage {
    Stage::StandingDown {
        failure: Failure {
            code: error_code::OPERATOR_ACTION,
            reason: why.into(),
            halt: false,
        },
    }
}

fn restore_only() -> A {
    A::RestoreDropIn {
        previous: Some(PreviousDropIn::Absent),
        old: dropin("1.0.0"),
    }
}

/// What a stand-down ends with once the drop-in is back: the slot, then the 3/0.
fn after_restore() -> Vec<A> {
    vec![
        A::ReleaseSlot { retry: false },
        failed(error_code::OPERATOR_ACTION),
        A::ClearJournal,
    ]
}

#[test]
fn a_stop_during_the_dropin_write_restores_it_then_releases_and_reports_operator_action() {
    let (phase, actions) = feed(
        at(Stage::WritingDropIn),
        &[
            O::LeftActive,
            O::Unit(Inactive),
            O::DropInWritten(Ok(PreviousDropIn::Absent)),
        ],
    );
    assert_eq!(actions, [restore_only()]);
    assert_eq!(
        phase.stage,
        standing_down("the unit was stopped before the restart")
    );
    assert!(!phase.allows_registration(), "the drop-in is not back yet");
    let (phase, actions) = step(phase, O::DropInRestored(Ok(())));
    assert_eq!(actions, after_restore());
    assert_eq!(phase.stage, Stage::Finished);
    // The write failed: the old drop-in is still in place, nothing to put back.
    let (_, actions) = feed(
        at(Stage::WritingDropIn),
        &[O::LeftActive, O::DropInWritten(Err("disk full".into()))],
    );
    assert_eq!(actions, after_restore());
}

#[test]
fn a_restart_job_canceled_by_another_job_restores_the_dropin_without_a_restart() {
    let (phase, actions) = feed(
        at(Stage::Restarting),
        &[O::LeftActive, O::Unit(Inactive), O::RestartCanceled],
    );
    assert_eq!(actions, [restore_only()]);
    assert!(!blames_or_starts(&actions));
    let (_, actions) = step(phase, O::DropInRestored(Ok(())));
    assert_eq!(actions, after_restore());
}

#[test]
fn a_stop_while_verifying_restores_the_dropin_and_reports_operator_action() {
    let (phase, actions) = feed(
        at(Stage::Verifying { passes: 0 }),
        &[O::LeftActive, O::Unit(Deactivating), O::Unit(Inactive)],
    );
    assert_eq!(actions, [restore_only()]);
    // The deadline and late probes change nothing while the drop-in goes back.
    let (phase, late) = feed(phase, &[O::VerifyDeadline, O::Probe { passed: false }]);
    assert_eq!(late, []);
    let (phase, actions) = step(phase, O::DropInRestored(Ok(())));
    assert_eq!(actions, after_restore());
    assert!(phase.allows_registration());
}

#[test]
fn a_stop_seen_while_the_restart_job_ran_after_it_was_done_is_an_operators() {
    // Our own job takes the unit through inactive: no decision until its result.
    let (phase, actions) = feed(at(Stage::Restarting), &[O::LeftActive, O::Unit(Inactive)]);
    assert_eq!(actions, []);
    let (phase, actions) = step(phase, O::Restarted(Ok(())));
    assert_eq!(actions, [A::StartVerifyDeadline]);
    // Still inactive when the verification time is up: stopped, not unhealthy.
    let (_, actions) = step(phase, O::VerifyDeadline);
    assert_eq!(actions, [restore_only()]);
}

#[test]
fn a_unit_that_fails_while_verifying_is_still_the_versions_failure() {
    let (phase, actions) = feed(
        at(Stage::Verifying { passes: 0 }),
        &[O::LeftActive, O::Unit(ActiveState::Failed)],
    );
    // The halt first (then the fence and the restore, see tests_halt.rs).
    assert!(matches!(actions[..], [A::Halt { .. }]), "{actions:?}");
    assert!(matches!(phase.stage, Stage::RollingBack { ref failure } if failure.halt));
}

#[test]
fn status_says_an_operators_stop_is_respected() {
    let phase = at(standing_down("the unit was stopped while it was verified"));
    assert_eq!(
        phase.status(),
        "update to 2.0.0 given up: the unit was stopped while it was verified; \
         putting the 1.0.0 drop-in back, not restarting"
    );
}
