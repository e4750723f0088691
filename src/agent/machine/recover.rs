//! What a start does with a journaled swap, purely: finish when the unit runs the new version
//! (the swap's own verification then decides), else roll back; send the matching event; release
//! the slot; clear the journal. The journal file itself is [`crate::agent::update::journal`].
//!
//! No unit restart without a held slot: a swap that may touch the unit again first takes its
//! slot again ([`Stage::Reacquiring`]; idempotent for its own key, a wait while the group is busy
//! or halted), staying deregistered. An owed halt goes before anything else.

use super::swap::{
    Failure, GroupHalt, HaltCause, Report, Stage, SwapAction, SwapPhase, reacquire,
    stopped_while_down,
};
use crate::omaha::{Event, error_code};
use crate::systemd::control::{RunningVersion, UnitNow};

/// Where a start resumes a journaled swap, and what it does first. `observed` is what systemd
/// says the unit runs now (never the journal alone).
///
/// - Pre-pulling: no slot was asked for; 3/0 [`error_code::INTERRUPTED`], clear the journal.
/// - Nothing touched the instance yet (slot): release the slot, 3/0 [`error_code::INTERRUPTED`].
/// - Deregistered but the unit untouched (drain, fence): serve again, 3/0 [`error_code::GENERIC`],
///   release.
/// - The drop-in may be written (write, restart, verify): take the slot again first; then, when
///   systemd reports the new version, restart onto it unless the journal says the restart
///   finished (systemd reports the new version from `Reload()` on, while the old process still
///   runs), then verify it (healthy in time: 3/1; else the usual rollback); otherwise roll back
///   without blaming the version (3/0 [`error_code::GENERIC`], no halt).
/// - Rolling back, or stranded: the halt again when owed, the slot again, then restore and
///   restart the old version again, keeping the recorded failure.
/// - Registering (verified, not yet confirmed in etcd): verified again from what runs now, by the
///   machine's own rule (active and `rise` passes): the new version verifies for 3/1, the old
///   one for the recorded failure (or 3/0 generic when none was recorded); a recorded rollback
///   that finds the new version running rolls back again, slot first.
/// - Min-healthy (registered on the new version, slot kept): as Registering with no failure;
///   min-healthy runs again in full once verified.
/// - Standing down after an operator's stop: put the previous drop-in back again (no restart),
///   then 3/0 [`error_code::OPERATOR_ACTION`] and the release.
/// - Releasing: the halt first when owed, then release again; the 3/x recorded with Releasing
///   is sent again (it may have been cut off by the stop; never after a monitor failure), and a
///   denylist decided with it is written again.
/// - Monitoring (released after 3/1): watched again in full while systemd reports the new
///   version; otherwise (or found stopped) the watch is over. A monitor failure's rollback
///   resumes as any rollback: the halt again when owed, the slot again (`away`), restore.
/// - Found stopped (`unit`: `inactive` with no job queued, [`UnitNow::stopped`]) where the
///   swap would touch the unit again: an operator stopped it while the sidekick was down. It is
///   not started again: the previous drop-in goes back (no restart), and the swap ends with the
///   failure recorded before the stop, if any (its owed halt first, its denylist), else 3/0
///   [`error_code::OPERATOR_ACTION`].
pub fn recover(
    journal: SwapPhase,
    observed: &RunningVersion,
    unit: &UnitNow,
) -> (SwapPhase, Vec<SwapAction>) {
    let mut phase = journal;
    // The journal's view of the unit is from before the stop: unknown until the driver's first
    // unit observation (which the machine follows from here on, also while the slot is taken
    // again); stopped as systemd says now.
    phase.unit_active = false;
    phase.unit_stopped = unit.stopped();
    let runs_new = observed.version.as_deref() == Some(phase.plan.new.version.as_str());
    if phase.halt == GroupHalt::NotNeeded
        && let Some(reason) = legacy_halt(&phase.stage)
    {
        // A journal written before the halt was recorded: owe it again (idempotent).
        phase.halt = GroupHalt::Owed {
            reason,
            cause: HaltCause::Immediate,
        };
    }
    let stage = std::mem::replace(&mut phase.stage, Stage::Finished);
    let (stage, actions) = match stage {
        // No slot was asked for yet: nothing to release (a release could only hit another
        // holder's key).
        // 13/1 was sent: the update service holds the grant until a 3/x ends it.
        Stage::Prepulling => (
            Stage::Finished,
            vec![interrupted(), SwapAction::ClearJournal],
        ),
        // The 3/0 is recorded with Releasing (journaled before these actions run), so a stop
        // before it is sent has the next start send it again.
        Stage::AcquiringSlot { .. } => {
            phase.report = Some(Report::Failed {
                error_code: error_code::INTERRUPTED,
            });
            (
                Stage::Releasing,
                vec![SwapAction::ReleaseSlot { retry: false }, interrupted()],
            )
        }
        // The 3/x decided before the stop may have been cut off: sent again (the update service
        // keeps the grant open until one arrives).
        Stage::Releasing => {
            let mut actions: Vec<SwapAction> = phase
                .report
                .and_then(|report| phase.tell(report.event()))
                .into_iter()
                .collect();
            // Written again: the stop may have come between the journal and the write (the first
            // attempt at monitor lost it so, its sim seed 3101); written twice it is one entry.
            if phase.denylist {
                let version = phase.plan.new.version.clone();
                actions.push(SwapAction::Denylist { version });
            }
            actions.insert(
                0,
                phase
                    .halt_action(false)
                    .unwrap_or(SwapAction::ReleaseSlot { retry: false }),
            );
            (Stage::Releasing, actions)
        }
        // An operator stopped the unit: put the previous drop-in back again, still no restart.
        Stage::StandingDown { failure } => {
            let action = SwapAction::RestoreDropIn {
                previous: phase.previous.clone(),
                old: phase.plan.old.clone(),
            };
            (Stage::StandingDown { failure }, vec![action])
        }
        Stage::Deregistering | Stage::Draining | Stage::Fencing => {
            let report = Report::Failed {
                error_code: error_code::GENERIC,
            };
            phase.report = Some(report);
            let event = report.event();
            let actions = vec![
                SwapAction::SendEvent(event),
                SwapAction::ReleaseSlot { retry: false },
            ];
            (Stage::Releasing, actions)
        }
        // systemd reports the new version from `Reload()` on, before any restart: unless the
        // journal says the restart finished, restart onto it again before verifying.
        Stage::WritingDropIn | Stage::Restarting if runs_new => {
            reacquire(&mut phase, Stage::Restarting)
        }
        Stage::Verifying { .. } if runs_new => {
            reacquire(&mut phase, Stage::Verifying { passes: 0 })
        }
        Stage::WritingDropIn | Stage::Restarting | Stage::Verifying { .. } => {
            let failure = unjudged(&phase);
            reacquire(&mut phase, Stage::RollingBack { failure })
        }
        Stage::RollingBack { failure }
        | Stage::VerifyingOld { failure, .. }
        | Stage::Stranded { failure, .. } => reacquire(&mut phase, Stage::RollingBack { failure }),
        Stage::Reacquiring { resume, .. } => {
            phase.stage = *resume;
            return recover(phase, observed, unit);
        }
        // Min-healthy starts over once verified again (its clock is not journaled).
        // The slot first: the new version is verified again (sim seed 5465).
        Stage::Registering { failure: None } | Stage::MinHealthy { .. } if runs_new => {
            phase.unit_active = false;
            reacquire(&mut phase, Stage::Verifying { passes: 0 })
        }
        Stage::MinHealthy { .. } => {
            let failure = unjudged(&phase);
            verify_again(&mut phase, Stage::VerifyingOld { failure, passes: 0 })
        }
        Stage::Registering { failure } if !runs_new => {
            let failure = failure.unwrap_or_else(|| unjudged(&phase));
            verify_again(&mut phase, Stage::VerifyingOld { failure, passes: 0 })
        }
        // A rollback was verified, yet the new version runs: roll back again, slot first.
        Stage::Registering { failure } => {
            let failure = failure.unwrap_or_else(|| unjudged(&phase));
            reacquire(&mut phase, Stage::RollingBack { failure })
        }
        // Released after 3/1: watched again in full while the new version runs (its clock is
        // not journaled); over when something else runs or an operator stopped the unit.
        Stage::Monitoring { .. } if runs_new && !unit.stopped() => (
            Stage::Monitoring { departed: false },
            vec![SwapAction::StartMonitor],
        ),
        Stage::Monitoring { .. } | Stage::Finished => {
            (Stage::Finished, vec![SwapAction::ClearJournal])
        }
    };
    if let (Stage::Reacquiring { resume, .. }, true) = (&stage, unit.stopped()) {
        let recorded = match resume.as_ref() {
            Stage::RollingBack { failure } => Some(failure.clone()),
            _ => None,
        };
        let why = "the unit was stopped while sidekick was down";
        return stopped_while_down(phase, recorded, why);
    }
    phase.stage = stage;
    (phase, actions)
}

/// 3/0 for an attempt that changed nothing before the sidekick stopped.
fn interrupted() -> SwapAction {
    SwapAction::SendEvent(Event::Failed {
        error_code: error_code::INTERRUPTED,
    })
}

/// The failure of a swap interrupted before its version could be judged: 3/0 generic, no halt.
fn unjudged(phase: &SwapPhase) -> Failure {
    Failure {
        code: error_code::GENERIC,
        reason: format!(
            "the update to {} was interrupted before it ran",
            phase.plan.new.version
        ),
        halt: false,
    }
}

/// A unit that runs the old version again is judged again, by what runs now: registered only
/// once it is active and has passed `rise` checks (the owed halt first). Nothing is touched, so
/// no slot is taken first. The new version, which still proves itself, takes its slot again
/// before it is verified (its lease went with the stop: another swap, a monitor failure's
/// rollback among them, may have the slot now; sim seed 5465).
fn verify_again(phase: &mut SwapPhase, stage: Stage) -> (Stage, Vec<SwapAction>) {
    phase.unit_active = false;
    let mut actions: Vec<SwapAction> = phase.halt_action(false).into_iter().collect();
    actions.push(SwapAction::StartVerifyDeadline);
    (stage, actions)
}

/// The halt a journal from before [`GroupHalt`] was recorded still owes: a failure that blames
/// the version, or a strand.
fn legacy_halt(stage: &Stage) -> Option<String> {
    match stage {
        Stage::Stranded { failure, why } => {
            Some(format!("{}; rollback failed: {why}", failure.reason))
        }
        Stage::RollingBack { failure }
        | Stage::VerifyingOld { failure, .. }
        | Stage::Registering {
            failure: Some(failure),
        } if failure.halt => Some(failure.reason.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
