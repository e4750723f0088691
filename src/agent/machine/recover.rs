//! What a start does with a journaled swap, purely: finish when the unit runs the new version
//! (the swap's own verification then decides), else roll back; send the matching event; release
//! the slot; clear the journal. The journal file itself is [`crate::agent::update::journal`].

use super::swap::{self, Failure, Stage, SwapAction, SwapPhase};
use crate::omaha::{Event, error_code};
use crate::systemd::control::RunningVersion;

/// Where a start resumes a journaled swap, and what it does first. `observed` is what systemd
/// says the unit runs now (never the journal alone).
///
/// - Nothing touched the instance yet (pre-pull, slot): release the slot, no event.
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
/// - Releasing: release again.
pub fn recover(journal: SwapPhase, observed: &RunningVersion) -> (SwapPhase, Vec<SwapAction>) {
    let mut phase = journal;
    let runs_new = observed.version.as_deref() == Some(phase.plan.new.version.as_str());
    let stage = std::mem::replace(&mut phase.stage, Stage::Finished);
    let (stage, actions) = match stage {
        Stage::Prepulling | Stage::AcquiringSlot { .. } | Stage::Releasing => (
            Stage::Releasing,
            vec![SwapAction::ReleaseSlot { retry: false }],
        ),
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

#[cfg(test)]
mod tests;
