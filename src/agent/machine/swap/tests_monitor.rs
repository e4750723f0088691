//! Monitor: with `rollout.monitor` above zero a swap that passed min-healthy sends 3/1, releases
//! its slot and stays journaled in [`Stage::Monitoring`]; with `0s` it ends at the release as it
//! always did. A failure inside monitor is the version's: the halt first (owed and journaled),
//! the deregistration at once, then a slot again through the halt on the version it leaves
//! (`away`), the rollback, the denylist and the release, with nothing more sent to the update
//! service (it has its 3/1). An operator's stop ends the watch.

use super::*;
use crate::agent::machine::fixtures::{dropin, proving, run};
use ActiveState::{Activating, Active, Failed as UnitFailed, Inactive};
use SwapAction as A;
use SwapObservation as O;

/// Past min-healthy with monitor on: 3/1, the release, then monitor.
fn monitoring() -> SwapPhase {
    let phase = run(
        proving(),
        &[
            (
                O::MinHealthyElapsed { monitor: true },
                &[A::SendEvent(Event::UpdateComplete), A::CheckSlot],
            ),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::StartMonitor]),
        ],
    );
    assert_eq!(phase.stage, Stage::Monitoring { departed: false });
    phase
}

fn halt(why: &str) -> A {
    A::Halt {
        version: "2.0.0".into(),
        reason: format!("2.0.0 failed during monitor: {why}"),
        retry: false,
        cause: HaltCause::Monitor,
    }
}

fn acquire_away() -> A {
    A::AcquireSlot {
        version: "2.0.0".into(),
        retry: false,
        again: true,
        away: true,
    }
}

#[test]
fn with_monitor_0s_the_swap_ends_at_its_release_as_before() {
    let phase = run(
        proving(),
        &[
            (
                O::MinHealthyElapsed { monitor: false },
                &[A::SendEvent(Event::UpdateComplete), A::CheckSlot],
            ),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
}

#[test]
fn a_version_that_stays_healthy_through_monitor_ends_the_swap_with_no_slot_held() {
    let phase = monitoring();
    assert!(!phase.slot_held, "the slot went back with the release");
    assert!(phase.allows_registration(), "it serves during monitor");
    assert_eq!(phase.stage.step_label(), Some("monitor"));
    assert!(phase.status().contains("monitor"), "{}", phase.status());
    let phase = run(
        phase,
        &[
            (O::Probe { passed: true }, &[]),
            (O::Probe { passed: false }, &[]),
            (O::Unit(Active), &[]),
            (O::Unit(ActiveState::Unknown), &[]),
            (O::MinHealthyElapsed { monitor: true }, &[]),
            (O::MonitorElapsed, &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert_eq!(phase.report, Some(Report::Complete));
}

/// The whole way back after a crash inside monitor: the halt first with the deregistration, the
/// slot taken again through the version's own halt, restore, verify, register, denylist and
/// release, with no event: the update service keeps its 3/1.
#[test]
fn a_unit_that_fails_inside_monitor_halts_first_then_takes_a_slot_and_rolls_back_telling_the_service_nothing()
 {
    let phase = run(
        monitoring(),
        &[
            (O::LeftActive, &[]),
            (
                O::Unit(UnitFailed),
                &[halt("the unit failed"), A::Deregister],
            ),
        ],
    );
    assert!(!phase.allows_registration());
    assert!(!phase.slot_held, "no slot yet: the unit is not touched");
    assert!(phase.away);
    assert!(matches!(
        phase.halt,
        GroupHalt::Owed {
            cause: HaltCause::Monitor,
            ..
        }
    ));
    let Stage::Reacquiring { resume, .. } = &phase.stage else {
        panic!("{:?}", phase.stage);
    };
    let Stage::RollingBack { failure } = resume.as_ref() else {
        panic!("{resume:?}");
    };
    assert_eq!(failure.code, error_code::MONITOR_FAILED);
    assert!(failure.halt);
    let phase = run(
        phase,
        &[
            (O::MonitorElapsed, &[]),
            (O::GroupHalted(Ok(())), &[acquire_away()]),
            // Busy: it waits in line like any swap, holding nothing.
            (
                O::Slot(SlotAnswer::Busy("1 of 1 slots held".into())),
                &[A::AcquireSlot {
                    version: "2.0.0".into(),
                    retry: true,
                    again: true,
                    away: true,
                }],
            ),
            (
                O::Slot(SlotAnswer::Acquired),
                &[A::RestoreAndRestart {
                    previous: Some(PreviousDropIn::Absent),
                    old: dropin("1.0.0"),
                }],
            ),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (O::Probe { passed: true }, &[A::Register]),
            (
                O::Registered,
                &[
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
    assert_eq!(
        phase.report,
        Some(Report::Failed {
            error_code: error_code::MONITOR_FAILED
        }),
        "recorded in the journal, never sent"
    );
    assert!(phase.denylist);
}

#[test]
fn a_restart_or_failed_checks_inside_monitor_are_failures_and_a_stop_ends_the_watch() {
    let phase = run(
        monitoring(),
        &[
            (O::LeftActive, &[]),
            (
                O::Unit(Active),
                &[halt("the unit restarted"), A::Deregister],
            ),
        ],
    );
    assert!(matches!(phase.stage, Stage::Reacquiring { .. }));
    let phase = run(
        monitoring(),
        &[(
            O::Unhealthy,
            &[
                halt("the health check failed `fall` times in a row"),
                A::Deregister,
            ],
        )],
    );
    assert!(matches!(phase.stage, Stage::Reacquiring { .. }));
    let phase = run(
        monitoring(),
        &[(
            O::Unit(Activating),
            &[halt("the unit left active (activating)"), A::Deregister],
        )],
    );
    assert!(matches!(phase.stage, Stage::Reacquiring { .. }));
    // An operator's stop: no halt, no rollback; the swap is over.
    let phase = run(
        monitoring(),
        &[
            (O::LeftActive, &[]),
            (O::Unit(Inactive), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert_eq!(phase.halt, GroupHalt::NotNeeded);
}

/// Sim seed 3: the 3/1 took 28 s and the unit failed meanwhile. The halt goes at once, the
/// release waits for it, and the rollback follows the release.
#[test]
fn a_failure_while_the_release_goes_on_halts_before_the_release_and_rolls_back_after_it() {
    let phase = run(
        proving(),
        &[(
            O::MinHealthyElapsed { monitor: true },
            &[A::SendEvent(Event::UpdateComplete), A::CheckSlot],
        )],
    );
    let why = "the unit left active during the release";
    let phase = run(
        phase,
        &[
            (O::LeftActive, &[]),
            (O::Unit(UnitFailed), &[halt(why)]),
            // The check sent before the failure: the halt again, not the release.
            (O::Fenced { held: true }, &[halt(why)]),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            // Released: the rollback takes its slot again (the halt is confirmed already).
            (O::SlotReleased(Ok(())), &[acquire_away(), A::Deregister]),
        ],
    );
    assert!(phase.away);
    assert!(matches!(phase.stage, Stage::Reacquiring { .. }));
}

/// The budget (`max_failures` above 1) counts the failure and does not halt: the rollback goes
/// on all the same, its slot taken as any swap's.
#[test]
fn a_counted_monitor_failure_rolls_back_without_a_halt() {
    let phase = run(
        monitoring(),
        &[
            (
                O::Unit(UnitFailed),
                &[halt("the unit failed"), A::Deregister],
            ),
            (O::FailureCounted, &[acquire_away()]),
        ],
    );
    assert_eq!(phase.halt, GroupHalt::Counted);
}

/// The old version cannot be brought back after a monitor failure: stranded, slot kept, the
/// group halted, and still nothing sent.
#[test]
fn a_strand_after_a_monitor_failure_keeps_the_group_halted_and_sends_nothing() {
    let phase = run(
        monitoring(),
        &[
            (
                O::Unit(UnitFailed),
                &[halt("the unit failed"), A::Deregister],
            ),
            (O::GroupHalted(Ok(())), &[acquire_away()]),
            (
                O::Slot(SlotAnswer::Acquired),
                &[A::RestoreAndRestart {
                    previous: Some(PreviousDropIn::Absent),
                    old: dropin("1.0.0"),
                }],
            ),
        ],
    );
    let (phase, actions) = step(phase, O::Restarted(Err("start job failed".into())));
    assert!(matches!(phase.stage, Stage::Stranded { .. }));
    // The group is halted on the version already: no second halt, and no 3/0 1002.
    assert_eq!(phase.halt, GroupHalt::Confirmed);
    assert_eq!(actions, []);
}

/// SIGTERM inside monitor: nothing to give back (no slot held), the journal stays for the next
/// start; SIGTERM in the rollback's release sends no event on the way out either.
#[test]
fn a_stop_inside_monitor_keeps_the_journal_and_sends_nothing() {
    let (phase, actions) = step(monitoring(), O::Shutdown);
    assert_eq!(actions, [A::Stop]);
    assert_eq!(phase.stage, Stage::Monitoring { departed: false });
    let mut releasing = monitoring();
    releasing.away = true;
    releasing.stage = Stage::Releasing;
    releasing.slot_held = true;
    releasing.report = Some(Report::Failed {
        error_code: error_code::MONITOR_FAILED,
    });
    let (_, actions) = step(releasing, O::Shutdown);
    assert_eq!(
        actions,
        [A::ReleaseSlot { retry: false }, A::ClearJournal, A::Stop]
    );
}
