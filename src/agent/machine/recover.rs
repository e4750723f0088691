//! What a start does with a journaled swap, purely: finish when the unit runs the new version
//! (the swap's own verification then decides), else roll back; send the matching event; release
//! the slot; clear the journal. The journal file itself is [`crate::agent::update::journal`].

use super::swap::{self, Failure, Stage, SwapAction, SwapPhase};
use crate::omaha::{Event, error_code};
use crate::systemd::control::RunningVersion;

/// Where a start resumes a journaled swap, and what it does first. `observed` is what systemd
/// says the unit runs now (never the journal alone).
///
/// - Pre-pulling: no slot was asked for; 3/0 [`error_code::INTERRUPTED`], clear the journal.
/// - Nothing touched the instance yet (slot): release the slot, 3/0 [`error_code::INTERRUPTED`].
/// - Deregistered but the unit untouched (drain, fence): serve again, 3/0 [`error_code::GENERIC`],
///   release.
/// - The drop-in may be written (write, restart, verify): when systemd reports the new version,
///   restart onto it unless the journal says the restart finished (systemd reports the new
///   version from `Reload()` on, while the old process still runs), then verify it (healthy in
///   time: 3/1; else the usual rollback); otherwise roll back without blaming the version (3/0
///   [`error_code::GENERIC`], no halt).
/// - Rolling back, or stranded: restore and restart the old version again, keeping the recorded
///   failure.
/// - Registering (verified, not yet confirmed in etcd): register again, then report and release.
/// - Standing down after an operator's stop: put the previous drop-in back again (no restart),
///   then 3/0 [`error_code::OPERATOR_ACTION`] and the release.
/// - Releasing: release again.
pub fn recover(journal: SwapPhase, observed: &RunningVersion) -> (SwapPhase, Vec<SwapAction>) {
    let mut phase = journal;
    let runs_new = observed.version.as_deref() == Some(phase.plan.new.version.as_str());
    let stage = std::mem::replace(&mut phase.stage, Stage::Finished);
    let (stage, actions) = match stage {
        // No slot was asked for yet: nothing to release (a release could only hit another
        // holder's key).
        // 13/1 was sent: the update service holds the grant until a 3/x ends it.
        Stage::Prepulling => (
            Stage::Finished,
            vec![interrupted(), SwapAction::ClearJournal],
        ),
        Stage::AcquiringSlot { .. } => (
            Stage::Releasing,
            vec![SwapAction::ReleaseSlot { retry: false }, interrupted()],
        ),
        Stage::Releasing => (
            Stage::Releasing,
            vec![SwapAction::ReleaseSlot { retry: false }],
        ),
        // An operator stopped the unit: put the previous drop-in back again, still no restart.
        Stage::StandingDown { failure } => {
            let action = SwapAction::RestoreDropIn {
                previous: phase.previous.clone(),
                old: phase.plan.old.clone(),
            };
            (Stage::StandingDown { failure }, vec![action])
        }
        Stage::Deregistering | Stage::Draining | Stage::Fencing => {
            let event = Event::Failed {
                error_code: error_code::GENERIC,
            };
            let actions = vec![
                SwapAction::SendEvent(event),
                SwapAction::ReleaseSlot { retry: false },
            ];
            (Stage::Releasing, actions)
        }
        // systemd reports the new version from `Reload()` on, before any restart: unless the
        // journal says the restart finished, restart onto it again before verifying.
        Stage::WritingDropIn | Stage::Restarting if runs_new => {
            phase.unit_active = false;
            (Stage::Restarting, vec![SwapAction::Restart])
        }
        Stage::Verifying { .. } if runs_new => {
            phase.unit_active = false;
            let actions = vec![SwapAction::StartVerifyDeadline];
            (Stage::Verifying { passes: 0 }, actions)
        }
        Stage::WritingDropIn | Stage::Restarting | Stage::Verifying { .. } => {
            let failure = Failure {
                code: error_code::GENERIC,
                reason: format!(
                    "the update to {} was interrupted before it ran",
                    phase.plan.new.version
                ),
                halt: false,
            };
            swap::roll_back(&mut phase, failure)
        }
        Stage::RollingBack { failure }
        | Stage::VerifyingOld { failure, .. }
        | Stage::Stranded { failure, .. } => swap::roll_back(&mut phase, failure),
        // Verified before the stop: registered again once healthy, then reported and released.
        Stage::Registering { failure } => {
            (Stage::Registering { failure }, vec![SwapAction::Register])
        }
        Stage::Finished => (Stage::Finished, vec![SwapAction::ClearJournal]),
    };
    phase.stage = stage;
    (phase, actions)
}

/// 3/0 for an attempt that changed nothing before the sidekick stopped.
fn interrupted() -> SwapAction {
    SwapAction::SendEvent(Event::Failed {
        error_code: error_code::INTERRUPTED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::machine::fixtures::{at, dropin, failure};

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
    fn recovery_while_prepulling_ends_the_grant_with_3_0_interrupted_and_sends_no_release() {
        let journaled = SwapPhase {
            slot_held: false,
            ..at(Stage::Prepulling)
        };
        let (phase, actions) = recover(journaled, &running("1.0.0"));
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
            let (phase, actions) = recover(at(stage.clone()), &running("1.0.0"));
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
            let (phase, actions) = recover(at(stage.clone()), &running(observed));
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
                let (phase, actions) =
                    swap::step(phase, swap::SwapObservation::Probe { passed: true });
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
}
