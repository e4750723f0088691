use super::*;
use crate::systemd::control::{DropIn, PreviousDropIn};

fn dropin(version: &str) -> DropIn {
    DropIn {
        image: format!("example/web:{version}"),
        version: version.into(),
    }
}

fn failure(halt: bool) -> Failure {
    Failure {
        code: error_code::UNHEALTHY_AFTER_SWAP,
        reason: "2.0.0 not healthy".into(),
        halt,
    }
}

fn at(stage: Stage) -> SwapPhase {
    SwapPhase {
        plan: swap::SwapPlan {
            old: dropin("1.0.0"),
            new: dropin("2.0.0"),
            rise: 2,
        },
        stage,
        previous: Some(PreviousDropIn::Contents(
            "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0\n".into(),
        )),
        slot_held: true,
        unit_active: true,
    }
}

/// Every stage the driver journals before a side effect.
fn every_stage() -> Vec<Stage> {
    vec![
        Stage::Prepulling,
        Stage::AcquiringSlot {
            waiting: Some("busy".into()),
        },
        Stage::Deregistering,
        Stage::Draining,
        Stage::Fencing,
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::Verifying { passes: 1 },
        Stage::RollingBack {
            failure: failure(true),
        },
        Stage::VerifyingOld {
            failure: failure(true),
            passes: 1,
        },
        Stage::Registering { failure: None },
        Stage::Registering {
            failure: Some(failure(true)),
        },
        Stage::Releasing,
        Stage::Stranded {
            failure: failure(true),
            why: "restart failed".into(),
        },
        Stage::Finished,
    ]
}

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

#[test]
fn every_journaled_step_reads_back_as_written_and_clear_removes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::new(dir.path(), "web-1");
    assert_eq!(journal.path(), dir.path().join("web-1.json"));
    assert_eq!(journal.read().unwrap(), None);
    for stage in every_stage() {
        let phase = at(stage);
        journal.write(&phase).unwrap();
        assert_eq!(journal.read().unwrap(), Some(phase));
    }
    let text = std::fs::read_to_string(journal.path()).unwrap();
    assert!(
        text.contains("\"format\": 1") && text.contains("\"instance\": \"web-1\""),
        "{text}"
    );
    journal.clear().unwrap();
    assert_eq!(journal.read().unwrap(), None);
    journal.clear().unwrap();
}

#[test]
fn a_malformed_journal_is_an_error_naming_the_file_and_is_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::new(dir.path(), "web-1");
    for text in [
        "{\"format\": 1, \"instance\": \"web-1\"",
        "",
        "{\"format\":1}",
    ] {
        std::fs::write(journal.path(), text).unwrap();
        let err = journal.read().unwrap_err();
        assert_eq!(err.kind(), "malformed", "{text:?}");
        assert!(
            err.to_string()
                .contains(&journal.path().display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(journal.path()).unwrap(), text);
    }
    journal.write(&at(Stage::Draining)).unwrap();
    let text = std::fs::read_to_string(journal.path()).unwrap();
    std::fs::write(
        journal.path(),
        text.replace("\"format\": 1", "\"format\": 2"),
    )
    .unwrap();
    let err = journal.read().unwrap_err();
    assert_eq!(err.kind(), "format");
    assert!(err.to_string().contains("web-1.json"), "{err}");
}

#[test]
fn an_unwritable_state_dir_is_an_io_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let journal = Journal::new(&blocked, "web-1");
    let err = journal.write(&at(Stage::Prepulling)).unwrap_err();
    assert_eq!(err.kind(), "io");
    assert!(err.to_string().contains("not-a-dir/web-1.json"), "{err}");
}

#[test]
fn recovery_before_deregistering_only_gives_the_slot_back() {
    for stage in [
        Stage::Prepulling,
        Stage::AcquiringSlot { waiting: None },
        Stage::Releasing,
    ] {
        let (phase, actions) = recover(at(stage.clone()), &running("1.0.0"));
        assert_eq!(
            actions,
            [SwapAction::ReleaseSlot { retry: false }],
            "{stage:?}"
        );
        assert_eq!(phase.stage, Stage::Releasing);
        assert!(phase.allows_registration());
    }
}

#[test]
fn recovery_after_deregistering_but_before_the_dropin_serves_again_and_reports_3_0_generic() {
    for stage in [Stage::Deregistering, Stage::Draining, Stage::Fencing] {
        let (phase, actions) = recover(at(stage.clone()), &running("1.0.0"));
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

#[test]
fn recovery_with_the_new_version_running_verifies_it_and_finishes_with_3_1() {
    for stage in [
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::Verifying { passes: 1 },
    ] {
        let (mut phase, actions) = recover(at(stage.clone()), &running("2.0.0"));
        if stage != (Stage::Verifying { passes: 1 }) {
            // Reloaded but maybe not restarted: restart onto the new version first.
            assert_eq!(actions, [SwapAction::Restart], "{stage:?}");
            assert_eq!(phase.stage, Stage::Restarting);
            let (next, actions) = swap::step(phase, swap::SwapObservation::Restarted(Ok(())));
            assert_eq!(actions, [SwapAction::StartVerifyDeadline], "{stage:?}");
            phase = next;
        } else {
            assert_eq!(actions, [SwapAction::StartVerifyDeadline], "{stage:?}");
        }
        assert_eq!(phase.stage, Stage::Verifying { passes: 0 });
        assert!(!phase.unit_active, "the unit must be seen active again");
        let (phase, _) = swap::step(
            phase,
            swap::SwapObservation::Unit(crate::systemd::ActiveState::Active),
        );
        let (phase, _) = swap::step(phase, swap::SwapObservation::Probe { passed: true });
        let (phase, actions) = swap::step(phase, swap::SwapObservation::Probe { passed: true });
        assert_eq!(actions, [SwapAction::Register]);
        let (_, actions) = swap::step(phase, swap::SwapObservation::Registered);
        assert_eq!(actions[0], SwapAction::SendEvent(Event::UpdateComplete));
    }
}

#[test]
fn recovery_with_the_old_version_running_rolls_back_without_blaming_the_version() {
    for observed in [running("1.0.0"), RunningVersion::default()] {
        for stage in [
            Stage::WritingDropIn,
            Stage::Restarting,
            Stage::Verifying { passes: 1 },
        ] {
            let (phase, actions) = recover(at(stage.clone()), &observed);
            assert_eq!(actions, [restore()], "{stage:?}");
            let Stage::RollingBack { failure } = &phase.stage else {
                panic!("{stage:?} recovered to {:?}", phase.stage);
            };
            assert_eq!(failure.code, error_code::GENERIC);
            assert!(!failure.halt);
            // Once the old version is back: 3/0 generic, and neither halt nor denylist.
            let (phase, _) = swap::step(phase, swap::SwapObservation::Restarted(Ok(())));
            let (phase, _) = swap::step(
                phase,
                swap::SwapObservation::Unit(crate::systemd::ActiveState::Active),
            );
            let (phase, _) = swap::step(phase, swap::SwapObservation::Probe { passed: true });
            let (phase, actions) = swap::step(phase, swap::SwapObservation::Probe { passed: true });
            assert_eq!(actions, [SwapAction::Register]);
            let (_, actions) = swap::step(phase, swap::SwapObservation::Registered);
            assert_eq!(
                actions,
                [
                    SwapAction::SendEvent(Event::Failed { error_code: 1 }),
                    SwapAction::ReleaseSlot { retry: false },
                ]
            );
        }
    }
}

#[test]
fn recovery_mid_rollback_restores_again_and_keeps_the_recorded_failure() {
    for stage in [
        Stage::RollingBack {
            failure: failure(true),
        },
        Stage::VerifyingOld {
            failure: failure(true),
            passes: 1,
        },
        Stage::Stranded {
            failure: failure(true),
            why: "w".into(),
        },
    ] {
        for observed in [running("1.0.0"), running("2.0.0")] {
            let (phase, actions) = recover(at(stage.clone()), &observed);
            assert_eq!(actions, [restore()], "{stage:?}");
            assert_eq!(
                phase.stage,
                Stage::RollingBack {
                    failure: failure(true)
                }
            );
        }
    }
}

#[test]
fn recovery_of_a_finished_swap_only_clears_the_journal() {
    let (phase, actions) = recover(at(Stage::Finished), &running("2.0.0"));
    assert_eq!(actions, [SwapAction::ClearJournal]);
    assert_eq!(phase.stage, Stage::Finished);
}

#[test]
fn recovery_while_registering_again_registers_and_then_reports_the_recorded_outcome() {
    let cases = [
        (None, vec![SwapAction::SendEvent(Event::UpdateComplete)]),
        (
            Some(failure(true)),
            vec![
                SwapAction::SendEvent(Event::Failed {
                    error_code: error_code::UNHEALTHY_AFTER_SWAP,
                }),
                SwapAction::Halt {
                    version: "2.0.0".into(),
                    reason: "2.0.0 not healthy".into(),
                },
                SwapAction::Denylist {
                    version: "2.0.0".into(),
                },
            ],
        ),
    ];
    for (recorded, report) in cases {
        let stage = Stage::Registering {
            failure: recorded.clone(),
        };
        for observed in [running("1.0.0"), running("2.0.0")] {
            let (phase, actions) = recover(at(stage.clone()), &observed);
            assert_eq!(actions, [SwapAction::Register], "{stage:?}");
            assert_eq!(phase.stage, stage);
            let (phase, actions) = swap::step(phase, swap::SwapObservation::Registered);
            let mut expected = report.clone();
            expected.push(SwapAction::ReleaseSlot { retry: false });
            assert_eq!(actions, expected, "{stage:?}");
            assert_eq!(phase.stage, Stage::Releasing);
        }
    }
}
