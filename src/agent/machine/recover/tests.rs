//! Recovery's decisions, and the resumed swap run on through the machine: no unit restart
//! without the slot taken again first, the owed halt first, registration only on health.

use std::num::NonZeroU32;

use super::*;
use crate::agent::machine::fixtures::{at, dropin, failure};
use crate::agent::machine::state::{self, Action, Agent, Observation};
use crate::agent::machine::swap::{self, SlotAnswer, SwapObservation as O};
use crate::health::HealthStreak;
use crate::systemd::ActiveState::Active;

fn running(version: &str) -> RunningVersion {
    RunningVersion {
        version: Some(version.into()),
        image: Some(format!("example/web:{version}")),
    }
}

fn restore() -> SwapAction {
    SwapAction::RestoreAndRestart {
        previous: at(Stage::Finished).previous,
        old: dropin("1.0.0"),
    }
}

/// Recovery takes the slot again (the rollout's gate does not apply).
fn acquire(retry: bool) -> SwapAction {
    SwapAction::AcquireSlot {
        version: "2.0.0".into(),
        retry,
        again: true,
        away: false,
    }
}

fn halt(reason: &str, retry: bool) -> SwapAction {
    SwapAction::Halt {
        version: "2.0.0".into(),
        reason: reason.into(),
        retry,
        cause: HaltCause::Immediate,
    }
}

/// Feeds `steps` to the swap, checking the actions after each one.
fn run(mut phase: SwapPhase, steps: &[(O, &[SwapAction])]) -> SwapPhase {
    for (i, (observation, expected)) in steps.iter().enumerate() {
        let (next, actions) = swap::step(phase, observation.clone());
        assert_eq!(actions, *expected, "step {i}: {observation:?}");
        phase = next;
    }
    phase
}

const PASS: O = O::Probe { passed: true };

#[test]
fn recovery_while_prepulling_ends_the_grant_with_3_0_interrupted_and_sends_no_release() {
    let journaled = SwapPhase {
        slot_held: false,
        ..at(Stage::Prepulling)
    };
    let (phase, actions) = recover(journaled, &running("1.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [interrupted(), SwapAction::ClearJournal]);
    assert_eq!(phase.stage, Stage::Finished);
    assert!(phase.allows_registration());
}

#[test]
fn recovery_before_deregistering_gives_the_slot_back_and_ends_an_open_grant() {
    let release = SwapAction::ReleaseSlot { retry: false };
    for (stage, expected) in [
        (
            Stage::AcquiringSlot { waiting: None },
            vec![release.clone(), interrupted()],
        ),
        // The 3/x was sent before the release.
        (Stage::Releasing, vec![release.clone()]),
    ] {
        let (phase, actions) = recover(at(stage.clone()), &running("1.0.0"), &UnitNow::unknown());
        assert_eq!(actions, expected, "{stage:?}");
        assert_eq!(phase.stage, Stage::Releasing);
        assert!(phase.allows_registration());
    }
}

#[test]
fn recovery_of_a_stand_down_puts_the_dropin_back_again_and_never_restarts() {
    let stage = Stage::StandingDown {
        failure: Failure {
            code: error_code::OPERATOR_ACTION,
            reason: "stopped".into(),
            halt: false,
        },
    };
    // Whatever systemd reports: the operator's stop stands.
    for observed in ["1.0.0", "2.0.0"] {
        let (phase, actions) = recover(at(stage.clone()), &running(observed), &UnitNow::unknown());
        assert_eq!(
            actions,
            [SwapAction::RestoreDropIn {
                previous: at(Stage::Finished).previous,
                old: dropin("1.0.0"),
            }]
        );
        assert_eq!(phase.stage, stage);
    }
}

#[test]
fn recovery_after_deregistering_but_before_the_dropin_serves_again_and_reports_3_0_generic() {
    for stage in [Stage::Deregistering, Stage::Draining, Stage::Fencing] {
        let (phase, actions) = recover(at(stage.clone()), &running("1.0.0"), &UnitNow::unknown());
        assert_eq!(
            actions,
            [
                SwapAction::SendEvent(Event::Failed { error_code: 1 }),
                SwapAction::ReleaseSlot { retry: false },
            ],
            "{stage:?}"
        );
        assert_eq!(phase.stage, Stage::Releasing);
    }
}

/// Defect 1: every stage that may touch the unit takes its slot again before anything else,
/// and waits, deregistered, while the group is busy: no restart and no restore meanwhile.
#[test]
fn recovery_takes_the_slot_again_before_touching_the_unit_and_waits_deregistered_while_busy() {
    let stages = [
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::Verifying { passes: 1 },
        Stage::RollingBack {
            failure: failure(false),
        },
        Stage::VerifyingOld {
            failure: failure(false),
            passes: 1,
        },
    ];
    for stage in stages {
        for observed in [running("1.0.0"), running("2.0.0")] {
            let (phase, actions) = recover(at(stage.clone()), &observed, &UnitNow::unknown());
            assert_eq!(actions, [acquire(false)], "{stage:?} {observed:?}");
            assert!(
                matches!(phase.stage, Stage::Reacquiring { .. }),
                "{stage:?}"
            );
            assert!(!phase.allows_registration(), "{stage:?}");
            // The group is busy (another instance took the lapsed slot), then halted, then the
            // backend fails: each is waited out, and nothing touches the unit.
            let phase = run(
                phase,
                &[
                    (
                        O::Slot(SlotAnswer::Busy("1/1 held".into())),
                        &[acquire(true)],
                    ),
                    (
                        O::Slot(SlotAnswer::Halted {
                            version: "2.0.0".into(),
                            reason: "r".into(),
                        }),
                        &[acquire(true)],
                    ),
                    (O::Slot(SlotAnswer::Failed("down".into())), &[acquire(true)]),
                    (O::Unit(Active), &[]),
                    (PASS, &[]),
                    (PASS, &[]),
                ],
            );
            assert!(!phase.allows_registration(), "{stage:?}");
            assert!(phase.status().contains("waiting for the slot again"));
        }
    }
}

#[test]
fn recovery_with_the_new_version_running_verifies_it_once_the_slot_is_back_and_reports_3_1() {
    for stage in [
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::Verifying { passes: 1 },
    ] {
        let (phase, _) = recover(at(stage.clone()), &running("2.0.0"), &UnitNow::unknown());
        let restarted = stage != (Stage::Verifying { passes: 1 });
        let phase = if restarted {
            // Reloaded but maybe not restarted: restart onto the new version first.
            run(
                phase,
                &[
                    (O::Slot(SlotAnswer::Acquired), &[SwapAction::Restart]),
                    (O::Restarted(Ok(())), &[SwapAction::StartVerifyDeadline]),
                ],
            )
        } else {
            // Restarted before the stop: verification only, no restart.
            run(
                phase,
                &[(
                    O::Slot(SlotAnswer::Acquired),
                    &[SwapAction::StartVerifyDeadline],
                )],
            )
        };
        assert_eq!(phase.stage, Stage::Verifying { passes: 0 }, "{stage:?}");
        assert!(!phase.unit_active, "the unit must be seen active again");
        let phase = run(
            phase,
            &[
                (O::Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[SwapAction::Register]),
                (O::Registered, &[SwapAction::StartMinHealthy]),
                (
                    O::MinHealthyElapsed { monitor: false },
                    &[
                        SwapAction::SendEvent(Event::UpdateComplete),
                        SwapAction::CheckSlot,
                    ],
                ),
            ],
        );
        assert_eq!(phase.stage, Stage::Releasing);
    }
}

#[test]
fn recovery_with_the_old_version_running_rolls_back_with_the_slot_and_without_blame() {
    for observed in [running("1.0.0"), RunningVersion::default()] {
        for stage in [
            Stage::WritingDropIn,
            Stage::Restarting,
            Stage::Verifying { passes: 1 },
        ] {
            let (phase, actions) = recover(at(stage.clone()), &observed, &UnitNow::unknown());
            assert_eq!(actions, [acquire(false)], "{stage:?}");
            let phase = run(phase, &[(O::Slot(SlotAnswer::Acquired), &[restore()])]);
            let Stage::RollingBack { failure } = &phase.stage else {
                panic!("{stage:?} recovered to {:?}", phase.stage);
            };
            assert_eq!(failure.code, error_code::GENERIC);
            assert!(!failure.halt);
            // Once the old version is back: 3/0 generic, and neither halt nor denylist.
            run(
                phase,
                &[
                    (O::Restarted(Ok(())), &[SwapAction::StartVerifyDeadline]),
                    (O::Unit(Active), &[]),
                    (PASS, &[]),
                    (PASS, &[SwapAction::Register]),
                    (
                        O::Registered,
                        &[
                            SwapAction::SendEvent(Event::Failed { error_code: 1 }),
                            SwapAction::CheckSlot,
                        ],
                    ),
                ],
            );
        }
    }
}

/// Defect 2 in recovery: the halt a failed version owes is the first thing a start does, before
/// the slot and the restore; a failed one does not hold the rollback, and is retried before the
/// release.
#[test]
fn recovery_mid_rollback_halts_first_then_takes_the_slot_then_restores() {
    let reason = "2.0.0 not healthy";
    for stage in [
        Stage::RollingBack {
            failure: failure(true),
        },
        Stage::VerifyingOld {
            failure: failure(true),
            passes: 1,
        },
    ] {
        for observed in [running("1.0.0"), running("2.0.0")] {
            let journaled = SwapPhase {
                halt: GroupHalt::Owed {
                    reason: reason.into(),
                    cause: HaltCause::Immediate,
                },
                ..at(stage.clone())
            };
            let (phase, actions) = recover(journaled, &observed, &UnitNow::unknown());
            assert_eq!(actions, [halt(reason, false)], "{stage:?}");
            let phase = run(
                phase,
                &[
                    (O::GroupHalted(Err("etcd down".into())), &[acquire(false)]),
                    (O::Slot(SlotAnswer::Acquired), &[restore()]),
                    (O::Restarted(Ok(())), &[SwapAction::StartVerifyDeadline]),
                    (O::Unit(Active), &[]),
                    (PASS, &[]),
                    (PASS, &[SwapAction::Register]),
                    // Still owed: halt again before the 3/0, and no release yet.
                    (
                        O::Registered,
                        &[
                            halt(reason, false),
                            SwapAction::SendEvent(Event::Failed {
                                error_code: error_code::UNHEALTHY_AFTER_SWAP,
                            }),
                            SwapAction::Denylist {
                                version: "2.0.0".into(),
                            },
                        ],
                    ),
                    (
                        O::GroupHalted(Err("etcd down".into())),
                        &[halt(reason, true)],
                    ),
                    (O::GroupHalted(Ok(())), &[SwapAction::CheckSlot]),
                    (
                        O::Fenced { held: true },
                        &[SwapAction::ReleaseSlot { retry: false }],
                    ),
                ],
            );
            assert_eq!(phase.halt, GroupHalt::Confirmed);
            assert_eq!(
                phase.stage,
                Stage::Releasing,
                "{stage:?} {observed:?}: {:?}",
                phase.stage
            );
        }
    }
}

#[test]
fn recovery_of_a_stranded_swap_halts_takes_the_slot_and_restores_keeping_the_failure() {
    let journaled = SwapPhase {
        halt: GroupHalt::Owed {
            reason: "r".into(),
            cause: HaltCause::Immediate,
        },
        ..at(Stage::Stranded {
            failure: failure(true),
            why: "w".into(),
        })
    };
    let (phase, actions) = recover(journaled, &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [halt("r", false)]);
    let phase = run(
        phase,
        &[
            (O::GroupHalted(Ok(())), &[acquire(false)]),
            (O::Slot(SlotAnswer::Acquired), &[restore()]),
        ],
    );
    assert_eq!(
        phase.stage,
        Stage::RollingBack {
            failure: failure(true)
        }
    );
}

/// A journal from before the halt was recorded still owes it: recovery sends it (idempotent).
#[test]
fn recovery_of_a_journal_without_a_halt_record_halts_for_a_blamed_version_or_a_strand() {
    let blamed = [
        Stage::RollingBack {
            failure: failure(true),
        },
        Stage::Registering {
            failure: Some(failure(true)),
        },
        Stage::Stranded {
            failure: failure(false),
            why: "w".into(),
        },
    ];
    for stage in blamed {
        let (phase, actions) = recover(at(stage.clone()), &running("1.0.0"), &UnitNow::unknown());
        assert!(
            matches!(actions.first(), Some(SwapAction::Halt { retry: false, .. })),
            "{stage:?}: {actions:?}"
        );
        assert!(matches!(phase.halt, GroupHalt::Owed { .. }), "{stage:?}");
    }
    // Not blamed: no halt.
    let (_, actions) = recover(
        at(Stage::RollingBack {
            failure: failure(false),
        }),
        &running("1.0.0"),
        &UnitNow::unknown(),
    );
    assert_eq!(actions, [acquire(false)]);
}

#[test]
fn recovery_of_a_confirmed_halt_does_not_halt_again() {
    let journaled = SwapPhase {
        halt: GroupHalt::Confirmed,
        ..at(Stage::RollingBack {
            failure: failure(true),
        })
    };
    let (_, actions) = recover(journaled, &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [acquire(false)]);
}

#[test]
fn recovery_while_releasing_with_the_halt_owed_halts_before_the_release() {
    let journaled = SwapPhase {
        halt: GroupHalt::Owed {
            reason: "r".into(),
            cause: HaltCause::Immediate,
        },
        ..at(Stage::Releasing)
    };
    let (phase, actions) = recover(journaled, &running("1.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [halt("r", false)]);
    run(phase, &[(O::GroupHalted(Ok(())), &[SwapAction::CheckSlot])]);
}

#[test]
fn recovery_of_a_journaled_reacquiring_resumes_what_it_was_taking_the_slot_for() {
    let journaled = at(Stage::Reacquiring {
        resume: Box::new(Stage::Restarting),
        waiting: Some("busy".into()),
    });
    let (phase, actions) = recover(journaled, &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [acquire(false)]);
    run(
        phase,
        &[(O::Slot(SlotAnswer::Acquired), &[SwapAction::Restart])],
    );
}

#[test]
fn recovery_of_a_finished_swap_only_clears_the_journal() {
    let (phase, actions) = recover(at(Stage::Finished), &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [SwapAction::ClearJournal]);
    assert_eq!(phase.stage, Stage::Finished);
}

/// Defect 6: a resumed `Registering` does not register at once; the machine registers only once
/// the unit is active and has passed `rise` checks, and reports from what systemd says runs.
#[test]
fn recovery_while_registering_verifies_again_and_reports_what_actually_runs() {
    let blamed = Event::Failed {
        error_code: error_code::UNHEALTHY_AFTER_SWAP,
    };
    let denylist = SwapAction::Denylist {
        version: "2.0.0".into(),
    };
    // The slot is checked before its release.
    let release = SwapAction::CheckSlot;
    let cases: [(Option<Failure>, &str, Vec<SwapAction>); 3] = [
        // Verified new version, and it runs: 3/1.
        (
            None,
            "2.0.0",
            vec![
                SwapAction::SendEvent(Event::UpdateComplete),
                release.clone(),
            ],
        ),
        // Verified new version, but the old one runs: not an update; 3/0 generic, no blame.
        (
            None,
            "1.0.0",
            vec![
                SwapAction::SendEvent(Event::Failed {
                    error_code: error_code::GENERIC,
                }),
                release.clone(),
            ],
        ),
        // A verified rollback, the old version runs: the recorded failure (halt confirmed).
        (
            Some(failure(true)),
            "1.0.0",
            vec![SwapAction::SendEvent(blamed), denylist, release],
        ),
    ];
    for (recorded, runs, report) in cases {
        let journaled = SwapPhase {
            halt: match recorded {
                Some(_) => GroupHalt::Confirmed,
                None => GroupHalt::NotNeeded,
            },
            ..at(Stage::Registering {
                failure: recorded.clone(),
            })
        };
        let (phase, actions) = recover(journaled, &running(runs), &UnitNow::unknown());
        assert!(!phase.allows_registration(), "{recorded:?} {runs}");
        // The new version takes its slot again before it is verified (sim seed 5465); the old
        // one, untouched, is verified at once.
        let phase = match (&recorded, runs) {
            (None, "2.0.0") => {
                assert_eq!(actions, [acquire(false)]);
                run(
                    phase,
                    &[(
                        O::Slot(SlotAnswer::Acquired),
                        &[SwapAction::StartVerifyDeadline],
                    )],
                )
            }
            _ => {
                assert_eq!(actions, [SwapAction::StartVerifyDeadline], "{recorded:?}");
                phase
            }
        };
        let phase = run(
            phase,
            &[
                (O::Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[SwapAction::Register]),
            ],
        );
        // The new version serves through min-healthy before its 3/1.
        match (&recorded, runs) {
            (None, "2.0.0") => run(
                phase,
                &[
                    (O::Registered, &[SwapAction::StartMinHealthy]),
                    (O::MinHealthyElapsed { monitor: false }, &report),
                ],
            ),
            _ => run(phase, &[(O::Registered, &report)]),
        };
    }
}

#[test]
fn recovery_of_a_verified_rollback_that_finds_the_new_version_running_rolls_back_again() {
    let journaled = SwapPhase {
        halt: GroupHalt::Confirmed,
        ..at(Stage::Registering {
            failure: Some(failure(true)),
        })
    };
    let (phase, actions) = recover(journaled, &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [acquire(false)]);
    run(phase, &[(O::Slot(SlotAnswer::Acquired), &[restore()])]);
}

/// Defect 6 through the agent: a resumed swap registers nothing until the unit is active and
/// healthy, and what it registers is recorded (so a failing probe deregisters it).
#[test]
fn a_resumed_registering_swap_registers_only_a_healthy_unit_and_records_it() {
    let n = |v| NonZeroU32::new(v).unwrap();
    let agent = Agent::new(HealthStreak::new(n(2), n(1)), false);
    let (swap, actions) = recover(
        at(Stage::Registering { failure: None }),
        &running("2.0.0"),
        &UnitNow::unknown(),
    );
    let (agent, actions) = state::resume(agent, swap, actions);
    assert!(!actions.contains(&Action::Register), "{actions:?}");
    assert!(!agent.registered);
    let acquired = Observation::Swap(O::Slot(SlotAnswer::Acquired));
    let (agent, actions) = state::next(agent, acquired);
    assert!(!actions.contains(&Action::Register), "{actions:?}");
    let (agent, actions) = state::next(agent, Observation::Unit(Active));
    assert!(actions.is_empty(), "{actions:?}");
    let (agent, _) = state::next(agent, Observation::Probe { passed: true });
    assert!(!agent.registered);
    let (agent, actions) = state::next(agent, Observation::Probe { passed: true });
    assert_eq!(actions, [Action::Register]);
    assert!(agent.registered);
}

/// The halt's record survives the journal (serde), and a phase written before it existed reads
/// with none, which recovery then owes again for a blamed version.
#[test]
fn the_owed_halt_is_journaled_and_an_older_record_without_it_still_reads() {
    let owed = SwapPhase {
        halt: GroupHalt::Owed {
            reason: "r".into(),
            cause: HaltCause::Immediate,
        },
        ..at(Stage::Reacquiring {
            resume: Box::new(Stage::RollingBack {
                failure: failure(true),
            }),
            waiting: None,
        })
    };
    let text = serde_json::to_string(&owed).unwrap();
    assert_eq!(serde_json::from_str::<SwapPhase>(&text).unwrap(), owed);
    let mut older = serde_json::to_value(at(Stage::RollingBack {
        failure: failure(true),
    }))
    .unwrap();
    older.as_object_mut().unwrap().remove("halt");
    let older: SwapPhase = serde_json::from_value(older).unwrap();
    assert_eq!(older.halt, GroupHalt::NotNeeded);
    let (phase, actions) = recover(older, &running("1.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [halt("2.0.0 not healthy", false)]);
    assert!(matches!(phase.halt, GroupHalt::Owed { .. }));
}

/// The 3/x is journaled with Releasing before it is sent: a start that finds the swap Releasing
/// (killed right after the registration was confirmed) sends it again with the release, so the
/// update service's grant ends. (Found by tests/rollout/faults.rs killing at RegisteredAgain.)
#[test]
fn recovery_while_releasing_sends_the_recorded_3_x_again_with_the_release() {
    let (proving, _) = swap::step(at(Stage::Registering { failure: None }), O::Registered);
    let (releasing, actions) = swap::step(proving, O::MinHealthyElapsed { monitor: false });
    assert_eq!(
        actions,
        [
            SwapAction::SendEvent(Event::UpdateComplete),
            SwapAction::CheckSlot
        ]
    );
    assert_eq!(releasing.report, Some(swap::Report::Complete));
    let (phase, actions) = recover(releasing, &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(
        actions,
        [
            SwapAction::ReleaseSlot { retry: false },
            SwapAction::SendEvent(Event::UpdateComplete),
        ]
    );
    assert_eq!(phase.stage, Stage::Releasing);
    let failed = SwapPhase {
        report: Some(swap::Report::Failed {
            error_code: error_code::UNHEALTHY_AFTER_SWAP,
        }),
        ..at(Stage::Releasing)
    };
    let (_, actions) = recover(failed, &running("1.0.0"), &UnitNow::unknown());
    assert_eq!(
        actions,
        [
            SwapAction::ReleaseSlot { retry: false },
            SwapAction::SendEvent(Event::Failed {
                error_code: error_code::UNHEALTHY_AFTER_SWAP
            }),
        ]
    );
}

#[test]
fn a_unit_seen_active_while_the_slot_is_taken_again_is_verified_without_another_unit_change() {
    // Simulation seed 18: the unit came up before the slot was back; no unit change follows, so
    // verification must count the probes from the state it already saw, or it times out and
    // blames a version that works.
    let (phase, _) = recover(
        at(Stage::Verifying { passes: 1 }),
        &running("2.0.0"),
        &UnitNow::unknown(),
    );
    assert!(
        !phase.unit_active,
        "the journal's view of the unit is stale"
    );
    let phase = run(
        phase,
        &[
            (O::Unit(Active), &[]),
            (
                O::Slot(SlotAnswer::Acquired),
                &[SwapAction::StartVerifyDeadline],
            ),
            (PASS, &[]),
            (PASS, &[SwapAction::Register]),
        ],
    );
    assert_eq!(phase.stage, Stage::Registering { failure: None });
}

fn stopped() -> UnitNow {
    UnitNow {
        active: crate::systemd::ActiveState::Inactive,
        job_queued: false,
    }
}

fn put_back() -> SwapAction {
    SwapAction::RestoreDropIn {
        previous: at(Stage::Finished).previous,
        old: dropin("1.0.0"),
    }
}

fn operator_action() -> Failure {
    Failure {
        code: error_code::OPERATOR_ACTION,
        reason: "the unit was stopped while sidekick was down".into(),
        halt: false,
    }
}

#[test]
fn a_unit_stopped_while_sidekick_was_down_is_not_started_again_by_recovery() {
    // Simulation seed 550: stopped while down mid-swap; the rollback restarted it.
    for stage in [
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::RollingBack {
            failure: failure(false),
        },
    ] {
        let (phase, actions) = recover(at(stage.clone()), &running("1.0.0"), &stopped());
        assert_eq!(actions, [put_back()], "{stage:?}");
        // A failure that blamed nothing (an interrupted attempt) gives way to the operator's.
        assert_eq!(
            phase.stage,
            Stage::StandingDown {
                failure: operator_action()
            },
            "{stage:?}"
        );
        // Then the slot released and the swap ended by the machine's own stand-down.
        let (phase, actions) = swap::step(phase, O::DropInRestored(Ok(())));
        assert!(
            !actions.iter().any(|a| matches!(
                a,
                SwapAction::Restart | SwapAction::RestoreAndRestart { .. }
            )),
            "{stage:?}: {actions:?}"
        );
        assert!(actions.contains(&SwapAction::ReleaseSlot { retry: false }));
        assert_eq!(phase.stage, Stage::Finished);
    }
}

#[test]
fn a_unit_stopped_while_down_after_its_version_failed_keeps_the_halt_and_the_blame() {
    // Simulation seed 938: the restart onto 2.0.0 failed, then an operator stopped the unit.
    let (phase, actions) = recover(
        at(Stage::RollingBack {
            failure: failure(true),
        }),
        &running("1.0.0"),
        &stopped(),
    );
    let reason = failure(true).reason;
    assert_eq!(
        actions,
        [
            SwapAction::Denylist {
                version: "2.0.0".into()
            },
            put_back(),
            halt(&reason, false),
            SwapAction::SendEvent(Event::Failed {
                error_code: error_code::UNHEALTHY_AFTER_SWAP
            }),
        ]
    );
    assert_eq!(phase.stage, Stage::Releasing);
    // The release waits for the halt.
    run(
        phase,
        &[
            (O::GroupHalted(Ok(())), &[SwapAction::CheckSlot]),
            (
                O::Fenced { held: true },
                &[SwapAction::ReleaseSlot { retry: false }],
            ),
        ],
    );
}

#[test]
fn an_inactive_unit_with_a_job_queued_is_a_restart_in_flight_not_a_stop() {
    let in_flight = UnitNow {
        active: crate::systemd::ActiveState::Inactive,
        job_queued: true,
    };
    let (phase, actions) = recover(at(Stage::Restarting), &running("1.0.0"), &in_flight);
    assert!(
        matches!(phase.stage, Stage::Reacquiring { .. }),
        "{:?}",
        phase.stage
    );
    assert_eq!(actions, [acquire(false)]);
}

#[test]
fn a_unit_stopped_while_the_slot_is_taken_again_is_not_restarted() {
    // Simulation seed 10238: stopped while the recovered swap waited for etcd.
    let (phase, _) = recover(
        at(Stage::Restarting),
        &running("1.0.0"),
        &UnitNow::unknown(),
    );
    let (phase, _) = swap::step(phase, O::Unit(crate::systemd::ActiveState::Inactive));
    let (phase, actions) = swap::step(phase, O::Slot(SlotAnswer::Acquired));
    assert_eq!(actions, [put_back()]);
    let failure = Failure {
        reason: "the unit was stopped while the slot was taken again".into(),
        ..operator_action()
    };
    assert_eq!(phase.stage, Stage::StandingDown { failure });
}

#[test]
fn a_recovered_swap_that_finds_the_group_halted_on_its_version_rolls_back_instead() {
    // Simulation seed 84: resumed verifying 2.0.0, the group halted on 2.0.0 meanwhile.
    let (phase, _) = recover(
        at(Stage::Verifying { passes: 0 }),
        &running("2.0.0"),
        &UnitNow::unknown(),
    );
    let halted = SlotAnswer::Halted {
        version: "2.0.0".into(),
        reason: "2.0.0 not healthy".into(),
    };
    let (phase, actions) = swap::step(phase, O::Slot(halted));
    assert_eq!(actions, [acquire(true)]);
    let Stage::Reacquiring { resume, .. } = &phase.stage else {
        panic!("{:?}", phase.stage);
    };
    let failure = Failure {
        code: error_code::ROLLOUT_HALTED,
        reason: "the group halted on 2.0.0".into(),
        halt: false,
    };
    assert_eq!(**resume, Stage::RollingBack { failure });
    // Once the slot is ours again: the old version back, and no blame at the end.
    let (phase, actions) = swap::step(phase, O::Slot(SlotAnswer::Acquired));
    assert_eq!(actions, [restore()]);
    assert!(matches!(phase.stage, Stage::RollingBack { .. }));
    // A halt on another version is only waited out.
    let (phase, _) = recover(
        at(Stage::Verifying { passes: 0 }),
        &running("2.0.0"),
        &UnitNow::unknown(),
    );
    let other = SlotAnswer::Halted {
        version: "3.0.0".into(),
        reason: "3.0.0 failed".into(),
    };
    let (phase, _) = swap::step(phase, O::Slot(other));
    let Stage::Reacquiring { resume, .. } = &phase.stage else {
        panic!("{:?}", phase.stage);
    };
    assert_eq!(**resume, Stage::Verifying { passes: 0 });
}

#[test]
fn recovery_records_the_3_0_of_an_interrupted_attempt_so_a_second_stop_sends_it_again() {
    // Simulation seed 1502: killed again before recovery's 3/0 went out.
    for (stage, code) in [
        (
            Stage::AcquiringSlot { waiting: None },
            error_code::INTERRUPTED,
        ),
        (Stage::Draining, error_code::GENERIC),
    ] {
        let (phase, _) = recover(at(stage.clone()), &running("1.0.0"), &UnitNow::unknown());
        assert_eq!(phase.stage, Stage::Releasing, "{stage:?}");
        let (_, again) = recover(phase, &running("1.0.0"), &UnitNow::unknown());
        assert!(
            again.contains(&SwapAction::SendEvent(Event::Failed { error_code: code })),
            "{stage:?}: {again:?}"
        );
    }
}

/// Monitor (released after 3/1, no slot): a start watches again in full while the new version
/// runs; found on another version, or stopped by an operator, the watch is over.
#[test]
fn recovery_in_monitor_watches_again_in_full_or_ends_the_watch() {
    let monitoring = || SwapPhase {
        slot_held: false,
        monitor: true,
        report: Some(swap::Report::Complete),
        ..at(Stage::Monitoring { departed: true })
    };
    let (phase, actions) = recover(monitoring(), &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(actions, [SwapAction::StartMonitor]);
    assert_eq!(phase.stage, Stage::Monitoring { departed: false });
    // The unit is found failed: the first unit observation is the monitor failure.
    let (phase, actions) = swap::step(phase, O::Unit(crate::systemd::ActiveState::Failed));
    assert!(
        matches!(
            actions.as_slice(),
            [
                SwapAction::Halt {
                    cause: HaltCause::Monitor,
                    ..
                },
                SwapAction::Deregister
            ]
        ),
        "{actions:?}"
    );
    assert!(phase.away);
    let stopped = UnitNow {
        active: crate::systemd::ActiveState::Inactive,
        job_queued: false,
    };
    for (observed, unit) in [("1.0.0", UnitNow::unknown()), ("2.0.0", stopped)] {
        let (phase, actions) = recover(monitoring(), &running(observed), &unit);
        assert_eq!(actions, [SwapAction::ClearJournal], "{observed}");
        assert_eq!(phase.stage, Stage::Finished);
    }
}

/// Sim seed 3101 (of the first attempt at monitor): killed after Releasing was journaled and
/// before the denylist was written. A start writes the denylist again, and after a monitor
/// failure sends no event (the update service has its 3/1).
#[test]
fn recovery_while_releasing_writes_a_decided_denylist_again_and_sends_nothing_after_monitor() {
    let releasing = SwapPhase {
        report: Some(swap::Report::Failed {
            error_code: error_code::MONITOR_FAILED,
        }),
        denylist: true,
        away: true,
        monitor: true,
        halt: GroupHalt::Confirmed,
        ..at(Stage::Releasing)
    };
    let (phase, actions) = recover(releasing, &running("1.0.0"), &UnitNow::unknown());
    assert_eq!(
        actions,
        [
            SwapAction::ReleaseSlot { retry: false },
            SwapAction::Denylist {
                version: "2.0.0".into()
            },
        ]
    );
    // Released: over, not watched again.
    let phase = run(
        phase,
        &[(O::SlotReleased(Ok(())), &[SwapAction::ClearJournal])],
    );
    assert_eq!(phase.stage, Stage::Finished);
}

/// Killed while a monitor failure's rollback waited for its slot: the owed halt first, then the
/// slot again through the version's own halt, before the unit is touched.
#[test]
fn recovery_of_a_monitor_rollback_halts_first_and_takes_the_slot_away_before_the_restore() {
    let failure = swap::Failure {
        code: error_code::MONITOR_FAILED,
        reason: "2.0.0 failed during monitor: the unit failed".into(),
        halt: true,
    };
    let journaled = SwapPhase {
        slot_held: false,
        away: true,
        monitor: true,
        report: Some(swap::Report::Complete),
        halt: GroupHalt::Owed {
            reason: failure.reason.clone(),
            cause: HaltCause::Monitor,
        },
        ..at(Stage::Reacquiring {
            resume: Box::new(Stage::RollingBack {
                failure: failure.clone(),
            }),
            waiting: None,
        })
    };
    let (phase, actions) = recover(journaled, &running("2.0.0"), &UnitNow::unknown());
    assert_eq!(
        actions,
        [SwapAction::Halt {
            version: "2.0.0".into(),
            reason: failure.reason.clone(),
            retry: false,
            cause: HaltCause::Monitor,
        }]
    );
    let away = SwapAction::AcquireSlot {
        version: "2.0.0".into(),
        retry: false,
        again: true,
        away: true,
    };
    run(
        phase,
        &[
            (O::GroupHalted(Ok(())), &[away]),
            (O::Slot(SlotAnswer::Acquired), &[restore()]),
        ],
    );
}
