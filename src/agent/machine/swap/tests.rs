use super::*;
use crate::agent::machine::fixtures::{dropin, run};
use ActiveState::{Activating, Active, Deactivating, Failed as UnitFailed, Inactive};
use SwapAction as A;
use SwapObservation as O;

fn plan(rise: u32) -> SwapPlan {
    SwapPlan {
        old: dropin("1.0.0"),
        new: dropin("2.0.0"),
        rise,
    }
}

/// A swap of `plan(rise)` standing at `stage`, holding its slot, the unit active.
fn at(rise: u32, stage: Stage) -> SwapPhase {
    SwapPhase {
        plan: plan(rise),
        stage,
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

fn failed(code: u32) -> A {
    A::SendEvent(Event::Failed { error_code: code })
}

fn acquire(retry: bool) -> A {
    A::AcquireSlot {
        version: "2.0.0".into(),
        retry,
        again: false,
        away: false,
    }
}

fn restore(previous: Option<PreviousDropIn>) -> A {
    A::RestoreAndRestart {
        previous,
        old: dropin("1.0.0"),
    }
}

fn failure(code: u32, reason: &str) -> Failure {
    Failure {
        code,
        reason: reason.into(),
        halt: true,
    }
}

/// Feeds `steps`, checking the actions after each one; returns the last phase.
const PASS: O = O::Probe { passed: true };
const FAIL: O = O::Probe { passed: false };

#[test]
fn the_happy_path_sends_13_14_800_3_1_in_order_and_releases_the_slot_last() {
    let (phase, actions) = start(plan(2));
    assert_eq!(
        actions,
        [
            A::SendEvent(Event::PrepullStarted),
            A::Prepull {
                image: "example/web:2.0.0".into()
            }
        ]
    );
    assert_eq!(phase.stage, Stage::Prepulling);
    assert!(!phase.slot_held);
    let phase = run(
        phase,
        &[
            (
                O::Prepulled(Ok(())),
                &[A::SendEvent(Event::PrepullFinished), acquire(false)],
            ),
            (
                O::Slot(SlotAnswer::Acquired),
                &[A::SendEvent(Event::SwapStarted), A::Deregister],
            ),
            (O::Deregistered, &[A::Drain]),
            (O::DrainElapsed, &[A::CheckSlot]),
            (O::Fenced { held: true }, &[A::WriteDropIn(dropin("2.0.0"))]),
            (O::DropInWritten(Ok(PreviousDropIn::Absent)), &[A::Restart]),
            (O::LeftActive, &[]),
            (O::Unit(Activating), &[]),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[A::Register]),
            // Nothing more until etcd confirms the registration: a probe changes nothing.
            (PASS, &[]),
            (O::Registered, &[A::StartMinHealthy]),
            (
                O::MinHealthyElapsed { monitor: false },
                &[A::SendEvent(Event::UpdateComplete), A::CheckSlot],
            ),
            // The slot held through the restart and verification: given back.
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert!(!phase.slot_held);
    assert_eq!(phase.previous, Some(PreviousDropIn::Absent));
}

#[test]
fn a_failed_prepull_sends_3_0_with_errorcode_9_and_takes_no_slot() {
    let (phase, _) = start(plan(1));
    let phase = run(
        phase,
        &[(
            O::Prepulled(Err("pull access denied".into())),
            &[failed(9), A::ClearJournal],
        )],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert!(!phase.slot_held);
}

#[test]
fn a_halt_while_waiting_for_a_slot_gives_the_grant_back_untried_and_ends_the_swap() {
    let phase = run(
        at(1, Stage::AcquiringSlot { waiting: None }),
        &[(
            O::Slot(SlotAnswer::Halted {
                version: "3.0.0".into(),
                reason: "unhealthy".into(),
            }),
            &[failed(error_code::ROLLOUT_HALTED), A::ClearJournal],
        )],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert!(!phase.slot_held);
    assert!(phase.allows_registration());
}

#[test]
fn a_busy_or_failing_slot_backend_waits_and_retries_while_serving() {
    let answers = [
        (SlotAnswer::Busy("1/1 held".into()), "busy: 1/1 held"),
        (
            SlotAnswer::Failed("etcd down".into()),
            "slot backend failed: etcd down",
        ),
    ];
    for (answer, why) in answers {
        let phase = run(
            at(1, Stage::AcquiringSlot { waiting: None }),
            &[(O::Slot(answer), &[acquire(true)])],
        );
        assert_eq!(
            phase.stage,
            Stage::AcquiringSlot {
                waiting: Some(why.into())
            }
        );
        assert!(phase.allows_registration(), "{why}");
        assert_eq!(
            phase.status(),
            format!("updating to 2.0.0: waiting for a slot ({why})")
        );
        // The wait ends when a later attempt gets the slot.
        run(
            phase,
            &[(
                O::Slot(SlotAnswer::Acquired),
                &[A::SendEvent(Event::SwapStarted), A::Deregister],
            )],
        );
    }
}

#[test]
fn a_slot_lost_before_the_restart_registers_again_and_never_restarts() {
    let phase = run(
        at(1, Stage::Fencing),
        &[(
            O::Fenced { held: false },
            &[
                A::Register,
                A::ReleaseSlot { retry: false },
                failed(error_code::SLOT_LOST),
                A::ClearJournal,
            ],
        )],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert!(!phase.slot_held);
}

#[test]
fn a_failed_dropin_write_registers_again_and_reports_errorcode_5_without_a_halt() {
    let phase = run(
        at(1, Stage::WritingDropIn),
        &[
            (
                O::DropInWritten(Err("read-only file system".into())),
                &[A::Register],
            ),
            (O::Registered, &[failed(5), A::CheckSlot]),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
}

/// The rollback's tail once the old version is registered again, the halt confirmed at the
/// failure: 3/0, denylist, the slot checked before its release.
fn rolled_back(code: u32) -> Vec<A> {
    vec![
        failed(code),
        A::Denylist {
            version: "2.0.0".into(),
        },
        A::CheckSlot,
    ]
}

/// The halt sent first once a failure that blames 2.0.0 is known.
fn halt(reason: &str, retry: bool) -> A {
    A::Halt {
        version: "2.0.0".into(),
        reason: reason.into(),
        retry,
        cause: HaltCause::Verify,
    }
}

#[test]
fn a_failed_restart_restores_the_previous_dropin_and_halts_with_errorcode_5() {
    let previous = PreviousDropIn::Contents("[Service]\n".into());
    let reason = "restart onto 2.0.0 failed: job failed";
    let mut phase = at(1, Stage::WritingDropIn);
    phase.previous = None;
    let phase = run(
        phase,
        &[
            (O::DropInWritten(Ok(previous.clone())), &[A::Restart]),
            (
                O::Restarted(Err("job failed".into())),
                &[halt(reason, false)],
            ),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (O::Fenced { held: true }, &[restore(Some(previous))]),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (PASS, &[A::Register]),
            (O::Registered, &rolled_back(5)),
            (O::Fenced { held: true }, &[A::ReleaseSlot { retry: false }]),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
}

#[test]
fn a_new_version_not_healthy_in_time_rolls_back_with_errorcode_1001() {
    let reason = "2.0.0 not healthy within the verify timeout";
    let phase = run(
        at(2, Stage::Verifying { passes: 1 }),
        &[
            (O::VerifyDeadline, &[halt(reason, false)]),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (
                O::Fenced { held: true },
                &[restore(Some(PreviousDropIn::Absent))],
            ),
            (O::LeftActive, &[]),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[A::Register]),
            (O::Registered, &rolled_back(1001)),
        ],
    );
    assert_eq!(phase.stage, Stage::Releasing);
    assert!(phase.allows_registration());
}

#[test]
fn a_unit_that_fails_on_the_new_version_rolls_back_at_once() {
    let phase = run(
        at(3, Stage::Verifying { passes: 0 }),
        &[(
            O::Unit(UnitFailed),
            &[halt("the unit failed on 2.0.0", false)],
        )],
    );
    assert_eq!(
        phase.stage,
        Stage::RollingBack {
            failure: failure(1001, "the unit failed on 2.0.0")
        }
    );
    assert!(!phase.unit_active);
    assert!(!phase.allows_registration());
}

#[test]
fn a_rollback_with_an_unknown_previous_dropin_writes_the_old_version() {
    let mut phase = at(1, Stage::Restarting);
    phase.previous = None;
    run(
        phase,
        &[
            (
                O::Restarted(Err("timeout".into())),
                &[halt("restart onto 2.0.0 failed: timeout", false)],
            ),
            (O::GroupHalted(Ok(())), &[A::CheckSlot]),
            (O::Fenced { held: true }, &[restore(None)]),
        ],
    );
}

#[test]
fn when_the_old_version_cannot_be_brought_back_the_instance_stays_out_and_keeps_the_slot() {
    let cause = failure(1001, "2.0.0 not healthy");
    let rolling = || {
        at(
            1,
            Stage::RollingBack {
                failure: cause.clone(),
            },
        )
    };
    let verifying = || {
        at(
            2,
            Stage::VerifyingOld {
                failure: cause.clone(),
                passes: 1,
            },
        )
    };
    let cases = [
        (
            rolling(),
            O::Restarted(Err("job failed".into())),
            "restart onto the old version failed: job failed",
        ),
        (
            verifying(),
            O::VerifyDeadline,
            "not healthy within the verify timeout",
        ),
        (verifying(), O::Unit(UnitFailed), "the unit failed"),
    ];
    for (mut phase, observation, why) in cases {
        // The halt was confirmed when 2.0.0 failed: the strand only reports.
        phase.halt = GroupHalt::Confirmed;
        let phase = run(phase, &[(observation, &[failed(1002)])]);
        assert_eq!(
            phase.stage,
            Stage::Stranded {
                failure: cause.clone(),
                why: why.into()
            }
        );
        assert!(phase.slot_held && !phase.allows_registration(), "{why}");
        assert!(phase.status().starts_with("ROLLBACK FAILED: 2.0.0 failed (2.0.0 not healthy) and 1.0.0 could not be brought back"), "{}", phase.status());
        // Nothing brings it back by itself: no registration, no release.
        let phase = run(
            phase,
            &[
                (O::Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[]),
                (O::SlotReleased(Ok(())), &[]),
            ],
        );
        assert!(matches!(phase.stage, Stage::Stranded { .. }));
    }
}

#[test]
fn the_unit_leaving_active_during_the_agents_own_restart_is_expected() {
    for observation in [
        O::LeftActive,
        O::Unit(Deactivating),
        O::Unit(Inactive),
        O::Unit(UnitFailed),
        O::Unit(Activating),
        PASS,
        FAIL,
        O::VerifyDeadline,
    ] {
        let phase = run(at(1, Stage::Restarting), &[(observation.clone(), &[])]);
        assert_eq!(phase.stage, Stage::Restarting, "{observation:?}");
        let failure = failure(5, "x");
        let phase = run(
            at(
                1,
                Stage::RollingBack {
                    failure: failure.clone(),
                },
            ),
            &[(observation.clone(), &[])],
        );
        assert_eq!(
            phase.stage,
            Stage::RollingBack { failure },
            "{observation:?}"
        );
    }
}

#[test]
fn verification_counts_only_consecutive_passes_while_the_unit_is_active() {
    let mut phase = at(2, Stage::Verifying { passes: 0 });
    phase.unit_active = false;
    let phase = run(
        phase,
        &[
            // A probe while the unit is not active does not count.
            (PASS, &[]),
            (O::Unit(Active), &[]),
            (PASS, &[]),
            (FAIL, &[]),
            (PASS, &[]),
            // A departure starts over.
            (O::LeftActive, &[]),
            (O::Unit(Active), &[]),
            (PASS, &[]),
        ],
    );
    assert_eq!(phase.stage, Stage::Verifying { passes: 1 });
    assert_eq!(phase.status(), "updating to 2.0.0: verifying, health 1/2");
    let phase = run(
        phase,
        &[
            (O::Unit(Activating), &[]),
            (O::Unit(Active), &[]),
            (PASS, &[]),
        ],
    );
    assert_eq!(phase.stage, Stage::Verifying { passes: 1 });
    // The same rules hold while verifying the old version.
    let mut old = at(
        2,
        Stage::VerifyingOld {
            failure: failure(5, "x"),
            passes: 0,
        },
    );
    old.unit_active = false;
    let old = run(
        old,
        &[
            (PASS, &[]),
            (O::Unit(Active), &[]),
            (PASS, &[]),
            (FAIL, &[]),
            (PASS, &[]),
        ],
    );
    assert_eq!(
        old.stage,
        Stage::VerifyingOld {
            failure: failure(5, "x"),
            passes: 1
        }
    );
}

#[test]
fn without_a_health_check_an_active_unit_is_verified() {
    // Active before the restart job's result came back.
    let mut phase = at(0, Stage::Restarting);
    phase.unit_active = false;
    let phase = run(
        phase,
        &[
            (O::Unit(Active), &[]),
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline, A::Register]),
        ],
    );
    assert_eq!(phase.stage, Stage::Registering { failure: None });
    // Active only after it.
    let mut phase = at(0, Stage::Restarting);
    phase.unit_active = false;
    run(
        phase,
        &[
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Activating), &[]),
            (O::Unit(Active), &[A::Register]),
            (O::Registered, &[A::StartMinHealthy]),
            (
                O::MinHealthyElapsed { monitor: false },
                &[A::SendEvent(Event::UpdateComplete), A::CheckSlot],
            ),
        ],
    );
    // And the old version likewise.
    let mut old = at(
        0,
        Stage::RollingBack {
            failure: failure(5, "r"),
        },
    );
    old.unit_active = false;
    run(
        old,
        &[
            (O::Restarted(Ok(())), &[A::StartVerifyDeadline]),
            (O::Unit(Active), &[A::Register]),
            (O::Registered, &rolled_back(5)),
        ],
    );
}

#[test]
fn a_failed_release_is_retried_until_it_succeeds() {
    let phase = run(
        at(1, Stage::Releasing),
        &[
            (
                O::SlotReleased(Err("etcd down".into())),
                &[A::ReleaseSlot { retry: true }],
            ),
            (O::SlotReleased(Ok(())), &[A::ClearJournal]),
        ],
    );
    assert_eq!(phase.stage, Stage::Finished);
    assert!(!phase.slot_held);
}

#[test]
fn a_journal_failure_before_the_deregistration_drops_the_attempt_and_ends_its_grant() {
    // The offer took a grant, which the update service holds open until a 3/x.
    let ended = A::SendEvent(Event::Failed {
        error_code: error_code::GENERIC,
    });
    let release = A::ReleaseSlot { retry: false };
    let cases = [
        (
            Stage::Prepulling,
            false,
            vec![ended.clone(), A::ClearJournal],
        ),
        (
            Stage::AcquiringSlot { waiting: None },
            true,
            vec![release.clone(), ended.clone(), A::ClearJournal],
        ),
        (
            Stage::Deregistering,
            true,
            vec![release, ended, A::ClearJournal],
        ),
    ];
    for (stage, held, expected) in cases {
        let phase = SwapPhase {
            slot_held: held,
            ..at(1, stage.clone())
        };
        let phase = run(phase, &[(O::JournalFailed, &expected[..])]);
        assert_eq!(phase.stage, Stage::Finished, "{stage:?}");
        assert!(phase.allows_registration() && !phase.slot_held, "{stage:?}");
    }
}

#[test]
fn shutdown_from_a_stage_that_holds_no_slot_sends_no_release() {
    // A release from a holder that holds nothing can only hit someone else's key.
    for stage in [Stage::Prepulling, Stage::Finished] {
        let phase = SwapPhase {
            slot_held: false,
            ..at(1, stage.clone())
        };
        let expected = match stage {
            Stage::Prepulling => vec![failed(error_code::INTERRUPTED), A::ClearJournal, A::Stop],
            _ => vec![A::ClearJournal, A::Stop],
        };
        let phase = run(phase, &[(O::Shutdown, &expected)]);
        assert_eq!(phase.stage, Stage::Finished, "{stage:?}");
    }
}

#[test]
fn shutdown_before_deregistering_drops_the_attempt_and_gives_the_slot_back() {
    let release = A::ReleaseSlot { retry: false };
    let interrupted = failed(error_code::INTERRUPTED);
    for (stage, expected) in [
        (
            Stage::AcquiringSlot { waiting: None },
            vec![release.clone(), interrupted, A::ClearJournal, A::Stop],
        ),
        (
            Stage::Releasing,
            vec![release.clone(), A::ClearJournal, A::Stop],
        ),
    ] {
        let phase = run(at(1, stage.clone()), &[(O::Shutdown, &expected)]);
        assert_eq!(phase.stage, Stage::Finished, "{stage:?}");
        assert!(!phase.slot_held, "{stage:?}");
    }
}

#[test]
fn shutdown_once_the_dropin_may_be_written_stops_at_once_and_leaves_journal_and_slot_to_the_next_start()
 {
    let failure = failure(1001, "r");
    for stage in [
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::Verifying { passes: 0 },
        Stage::RollingBack {
            failure: failure.clone(),
        },
        Stage::VerifyingOld {
            failure: failure.clone(),
            passes: 0,
        },
        Stage::Stranded {
            failure: failure.clone(),
            why: "w".into(),
        },
    ] {
        let phase = run(at(1, stage.clone()), &[(O::Shutdown, &[A::Stop])]);
        assert_eq!(phase.stage, stage);
        assert!(phase.slot_held, "{stage:?}");
    }
}

#[test]
fn answers_that_do_not_belong_to_the_current_step_change_nothing() {
    let unrelated = [
        O::Prepulled(Ok(())),
        O::Slot(SlotAnswer::Acquired),
        O::Deregistered,
        O::DrainElapsed,
        O::Fenced { held: true },
        O::DropInWritten(Ok(PreviousDropIn::Absent)),
        O::Restarted(Ok(())),
        O::VerifyDeadline,
        O::SlotReleased(Ok(())),
    ];
    let stages = [
        (Stage::Prepulling, 0),
        (Stage::AcquiringSlot { waiting: None }, 1),
        (Stage::Deregistering, 2),
        (Stage::Draining, 3),
        (Stage::Fencing, 4),
        (Stage::WritingDropIn, 5),
        (Stage::Restarting, 6),
        (Stage::Releasing, 4),
        (Stage::Releasing, 8),
        (Stage::Finished, usize::MAX),
    ];
    for (stage, _) in stages.iter() {
        // Releasing answers the fence before its release (4) and the release (8).
        let owned: Vec<usize> = stages
            .iter()
            .filter(|(s, _)| s == stage)
            .map(|(_, own)| *own)
            .collect();
        for (i, observation) in unrelated.iter().enumerate() {
            if owned.contains(&i) {
                continue;
            }
            let phase = at(1, stage.clone());
            let (after, actions) = step(phase.clone(), observation.clone());
            assert_eq!(actions, [], "{stage:?} {observation:?}");
            assert_eq!(after, phase, "{stage:?} {observation:?}");
        }
    }
}

#[test]
fn registration_is_allowed_only_before_deregistering_and_after_verification() {
    let failure = failure(1, "r");
    let allowed = [
        Stage::Prepulling,
        Stage::AcquiringSlot { waiting: None },
        Stage::Releasing,
        Stage::Finished,
    ];
    let refused = [
        Stage::Deregistering,
        Stage::Draining,
        Stage::Fencing,
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::Verifying { passes: 0 },
        Stage::RollingBack {
            failure: failure.clone(),
        },
        Stage::VerifyingOld {
            failure: failure.clone(),
            passes: 0,
        },
        Stage::Stranded {
            failure,
            why: "w".into(),
        },
    ];
    for stage in allowed {
        assert!(at(1, stage.clone()).allows_registration(), "{stage:?}");
    }
    for stage in refused {
        assert!(!at(1, stage.clone()).allows_registration(), "{stage:?}");
    }
}

#[test]
fn status_names_the_target_and_the_step() {
    let failure = failure(1001, "not healthy");
    let cases = [
        (
            Stage::Prepulling,
            "updating to 2.0.0: pre-pulling example/web:2.0.0",
        ),
        (
            Stage::AcquiringSlot { waiting: None },
            "updating to 2.0.0: taking a slot",
        ),
        (Stage::Deregistering, "updating to 2.0.0: deregistering"),
        (Stage::Draining, "updating to 2.0.0: draining"),
        (
            Stage::Fencing,
            "updating to 2.0.0: checking the slot is still held",
        ),
        (
            Stage::WritingDropIn,
            "updating to 2.0.0: writing the drop-in",
        ),
        (Stage::Restarting, "updating to 2.0.0: restarting the unit"),
        (
            Stage::RollingBack {
                failure: failure.clone(),
            },
            "rolling back 2.0.0 to 1.0.0: not healthy",
        ),
        (
            Stage::VerifyingOld { failure, passes: 1 },
            "rolling back 2.0.0 to 1.0.0: verifying, health 1/3",
        ),
        (Stage::Releasing, "update to 2.0.0 over: releasing the slot"),
        (Stage::Finished, "update to 2.0.0 over"),
    ];
    for (stage, line) in cases {
        assert_eq!(at(3, stage).status(), line);
    }
}

#[test]
fn a_departure_clears_the_count_at_once_and_a_repeated_active_keeps_it() {
    let phase = run(
        at(3, Stage::Verifying { passes: 0 }),
        &[(PASS, &[]), (PASS, &[]), (O::Unit(Active), &[])],
    );
    assert_eq!(phase.stage, Stage::Verifying { passes: 2 });
    for departure in [O::Unit(Deactivating), O::LeftActive] {
        let (after, _) = step(phase.clone(), departure.clone());
        assert_eq!(after.stage, Stage::Verifying { passes: 0 }, "{departure:?}");
        assert!(!after.unit_active);
    }
}
