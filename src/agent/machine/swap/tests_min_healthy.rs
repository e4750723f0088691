//! Min-healthy: the verified new version serves again with the slot kept; it passes only when
//! its clock runs out with the unit active, unrestarted and healthy. A failure there is the
//! version's: the halt first (journaled, owed until confirmed), the deregistration at once, the
//! rollback with the slot still held, 3/0 [`error_code::MIN_HEALTHY_FAILED`], the denylist, the
//! release last. An operator's stop there is not the version's failure.

use super::*;
use crate::agent::machine::fixtures::{dropin, proving, registering, run};
use ActiveState::{Activating, Active, Deactivating, Failed as UnitFailed, Inactive};
use SwapAction as A;
use SwapObservation as O;

fn halt(why: &str) -> A {
    A::Halt {
        version: "2.0.0".into(),
        reason: format!("2.0.0 failed during min-healthy: {why}"),
        retry: false,
        cause: HaltCause::MinHealthy,
    }
}

fn min_healthy_failed() -> A {
    A::SendEvent(Event::Failed {
        error_code: error_code::MIN_HEALTHY_FAILED,
    })
}

#[test]
fn the_new_version_keeps_its_slot_and_registration_until_min_healthy_is_over_then_3_1() {
    let phase = proving();
    assert!(phase.slot_held);
    assert!(phase.allows_registration(), "it serves during min-healthy");
    assert_eq!(phase.stage.step_label(), Some("min_healthy"));
    assert!(phase.status().contains("min-healthy"), "{}", phase.status());
    let phase = run(
        phase,
        &[
            // Probes that pass, a failed one below `fall`, a repeated `active`: nothing.
            (O::Probe { passed: true }, &[]),
            (O::Probe { passed: false }, &[]),
            (O::Unit(Active), &[]),
            (O::Unit(ActiveState::Unknown), &[]),
            // A late answer of the verification changes nothing either.
            (O::VerifyDeadline, &[]),
            (
                O::MinHealthyElapsed { monitor: false },
                &[A::SendEvent(Event::UpdateComplete), A::CheckSlot],
            ),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert_eq!(phase.report, Some(Report::Complete));
}

/// The whole way back after a crash during min-healthy: the halt first with the deregistration,
/// the rollback's fence, the old version restored and verified with the slot held, registered,
/// then 3/0 1008, the denylist and the release.
#[test]
fn a_unit_that_fails_during_min_healthy_halts_first_deregisters_and_rolls_back_holding_the_slot() {
    let phase = run(
        proving(),
        &[
            (O::LeftActive, &[]),
            (
                O::Unit(UnitFailed),
                &[halt("the unit failed"), A::Deregister],
            ),
        ],
    );
    assert!(!phase.allows_registration());
    assert!(phase.slot_held);
    assert!(matches!(phase.halt, GroupHalt::Owed { .. }));
    let Stage::RollingBack { failure } = &phase.stage else {
        panic!("{:?}", phase.stage);
    };
    assert_eq!(failure.code, error_code::MIN_HEALTHY_FAILED);
    assert!(failure.halt);
    let phase = run(
        phase,
        &[
            // The deadline of min-healthy may still fire: it changes nothing now.
            (O::MinHealthyElapsed { monitor: false }, &[]),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (
                O::Fenced { held: true },
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
                    min_healthy_failed(),
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
            error_code: error_code::MIN_HEALTHY_FAILED
        })
    );
}

/// `Restart=always`: the unit may never be seen `failed`. Leaving `active` for the restart is a failure
/// at once, and so is a restart whose states were never seen (a departure, or a grown
/// `NRestarts`, followed by `active` again).
#[test]
fn a_restart_during_min_healthy_is_a_failure_seen_or_not() {
    let cases: [(&[O], &str); 4] = [
        (&[O::Unit(Activating)], "the unit left active (activating)"),
        (
            &[O::Unit(Deactivating)],
            "the unit left active (deactivating)",
        ),
        (&[O::LeftActive, O::Unit(Active)], "the unit restarted"),
        (
            &[O::LeftActive, O::Unit(Activating)],
            "the unit left active (activating)",
        ),
    ];
    for (seen, why) in cases {
        let (last, before) = seen.split_last().unwrap();
        let mut phase = proving();
        for observation in before {
            let (next, actions) = step(phase, observation.clone());
            assert!(actions.is_empty(), "{seen:?}");
            phase = next;
        }
        let (phase, actions) = step(phase, last.clone());
        assert_eq!(actions, [halt(why), A::Deregister], "{seen:?}");
        assert!(matches!(phase.stage, Stage::RollingBack { .. }), "{seen:?}");
    }
}

#[test]
fn fall_failed_checks_in_a_row_during_min_healthy_are_a_failure() {
    let phase = run(
        proving(),
        &[(
            O::Unhealthy,
            &[
                halt("the health check failed `fall` times in a row"),
                A::Deregister,
            ],
        )],
    );
    assert!(matches!(phase.stage, Stage::RollingBack { .. }));
}

/// The halt is owed until confirmed: a failed one is retried, and the release waits for it after
/// the rollback.
#[test]
fn a_failed_halt_after_a_min_healthy_failure_is_retried_and_holds_the_release() {
    let phase = run(
        proving(),
        &[
            (
                O::Unit(UnitFailed),
                &[halt("the unit failed"), A::Deregister],
            ),
            // The rollback does not wait for a backend that may stay down.
            (O::GroupHalted(Err("etcd down".into())), &[A::CheckSlot]),
            (
                O::Fenced { held: true },
                &[A::RestoreAndRestart {
                    previous: Some(PreviousDropIn::Absent),
                    old: dropin("1.0.0"),
                }],
            ),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (O::Probe { passed: true }, &[A::Register]),
        ],
    );
    let owed = A::Halt {
        version: "2.0.0".into(),
        reason: "2.0.0 failed during min-healthy: the unit failed".into(),
        retry: false,
        cause: HaltCause::MinHealthy,
    };
    let phase = run(
        phase,
        &[
            (
                O::Registered,
                &[
                    owed,
                    min_healthy_failed(),
                    A::Denylist {
                        version: "2.0.0".into(),
                    },
                ],
            ),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
        ],
    );
    assert_eq!(phase.halt, GroupHalt::Confirmed);
    assert_eq!(phase.stage, Stage::Releasing);
}

/// An operator's stop during min-healthy (`inactive`, as during verification): out of rotation at
/// once, the previous drop-in back with no restart, 3/0 1004; no halt, no denylist.
#[test]
fn an_operator_stop_during_min_healthy_stands_down_without_blaming_the_version() {
    let phase = run(
        proving(),
        &[
            (O::LeftActive, &[]),
            (
                O::Unit(Inactive),
                &[
                    A::Deregister,
                    A::RestoreDropIn {
                        previous: Some(PreviousDropIn::Absent),
                        old: dropin("1.0.0"),
                    },
                ],
            ),
            (
                O::DropInRestored(Ok(())),
                &[
                    A::ReleaseSlot { retry: false },
                    A::SendEvent(Event::Failed {
                        error_code: error_code::OPERATOR_ACTION,
                    }),
                    A::ClearJournal,
                ],
            ),
        ],
    );
    assert_eq!(phase.halt, GroupHalt::NotNeeded);
    assert_eq!(phase.stage, Stage::Finished);
}

/// SIGTERM during min-healthy stops at once and leaves the journal (with the stage) and the slot
/// to the next start, which verifies the new version again and runs min-healthy in full.
#[test]
fn sigterm_during_min_healthy_leaves_the_swap_journaled_and_the_next_start_proves_it_again() {
    let (stopped, actions) = step(proving(), O::Shutdown);
    assert_eq!(actions, [A::Stop]);
    assert_eq!(stopped.stage, Stage::MinHealthy { departed: false });
    assert!(stopped.slot_held);
    let text = serde_json::to_string(&stopped).unwrap();
    assert!(text.contains(r#""step":"min-healthy""#), "{text}");
    let journaled: SwapPhase = serde_json::from_str(&text).unwrap();
    assert_eq!(journaled, stopped);
    let running = crate::systemd::control::RunningVersion {
        version: Some("2.0.0".into()),
        image: Some("example/web:2.0.0".into()),
    };
    let unit = crate::systemd::control::UnitNow {
        active: crate::systemd::ActiveState::Active,
        job_queued: false,
    };
    let (phase, actions) = super::super::recover::recover(journaled, &running, &unit);
    // Its slot again first (sim seed 5465), then the verification.
    let acquire = A::AcquireSlot {
        version: "2.0.0".into(),
        retry: false,
        again: true,
        away: false,
    };
    assert_eq!(actions, [acquire]);
    assert!(!phase.allows_registration());
    run(
        phase,
        &[
            (O::Slot(SlotAnswer::Acquired), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (O::Probe { passed: true }, &[A::Register]),
            (O::Registered, &[A::StartMinHealthy]),
        ],
    );
}

/// Verified, then gone before etcd confirmed the registration (sim seed 2393: the swap waited
/// in Registering for good, holding its slot): judged as in min-healthy.
#[test]
fn a_unit_that_fails_before_its_registration_is_confirmed_fails_as_in_min_healthy() {
    // A probe that passes, `active` again: still waiting for etcd.
    let phase = run(
        registering(),
        &[(O::Probe { passed: true }, &[]), (O::Unit(Active), &[])],
    );
    assert_eq!(phase.stage, Stage::Registering { failure: None });
    // The unit left `active` and failed: the version's failure, halt first.
    let phase = run(
        registering(),
        &[
            (O::LeftActive, &[]),
            (
                O::Unit(UnitFailed),
                &[halt("the unit failed"), A::Deregister],
            ),
        ],
    );
    let Stage::RollingBack { failure } = &phase.stage else {
        panic!("{:?}", phase.stage);
    };
    assert_eq!(failure.code, error_code::MIN_HEALTHY_FAILED);
    assert!(phase.slot_held);
    // `fall` failed checks in a row, the same.
    let (phase, actions) = step(registering(), O::Unhealthy);
    assert_eq!(
        actions,
        [
            halt("the health check failed `fall` times in a row"),
            A::Deregister
        ]
    );
    assert!(matches!(phase.stage, Stage::RollingBack { .. }));
    // Stopped by an operator: stands down, no blame.
    let (phase, actions) = step(registering(), O::Unit(ActiveState::Inactive));
    assert_eq!(actions.first(), Some(&A::Deregister));
    assert!(matches!(phase.stage, Stage::StandingDown { .. }));
}
