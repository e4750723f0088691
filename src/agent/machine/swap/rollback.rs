//! The way back from a failed new version: the halt first (when owed), the fence, the previous
//! drop-in restored and restarted; the slot taken again before the unit is touched when it is
//! gone; and the strand when the old version cannot be brought back either.

use super::{Failure, Stage, SwapAction, SwapPhase};
use crate::omaha::{Event, error_code};

/// A failure is known: the halt is the first action when the version is to blame; the
/// rollback's fence follows its answer (or comes at once when no halt is owed).
pub(super) fn fail(phase: &mut SwapPhase, failure: Failure) -> (Stage, Vec<SwapAction>) {
    phase.unit_active = false;
    if failure.halt {
        phase.owe_halt(&failure.reason);
    }
    let first = phase.halt_action(false).unwrap_or(SwapAction::CheckSlot);
    (Stage::RollingBack { failure }, vec![first])
}

/// The previous drop-in back, and a restart onto it.
pub(super) fn restore(phase: &mut SwapPhase) -> SwapAction {
    phase.unit_active = false;
    SwapAction::RestoreAndRestart {
        previous: phase.previous.clone(),
        old: phase.plan.old.clone(),
    }
}

/// Takes the slot again before `resume` touches the unit; an owed halt goes first.
pub(in crate::agent::machine) fn reacquire(
    phase: &mut SwapPhase,
    resume: Stage,
) -> (Stage, Vec<SwapAction>) {
    let first = phase
        .halt_action(false)
        .unwrap_or_else(|| phase.acquire(false));
    let stage = Stage::Reacquiring {
        resume: Box::new(resume),
        waiting: None,
    };
    (stage, vec![first])
}

/// The slot is held again (the acquire just checked it, as a fence would): what `resume` does to
/// the unit. A unit that runs the new version since its restart needs verification only.
///
/// Verification keeps the unit's state as last seen: the machine follows every unit change, also
/// while it waits for the slot, and a unit found active before the slot came back sends no
/// change again (forgetting it here left verification waiting for one until its deadline, and
/// blamed a working version: simulation seed 18).
pub(super) fn resume_unit(phase: &mut SwapPhase, resume: Stage) -> (Stage, Vec<SwapAction>) {
    match resume {
        Stage::Restarting => {
            phase.unit_active = false;
            (Stage::Restarting, vec![SwapAction::Restart])
        }
        Stage::Verifying { .. } => (
            Stage::Verifying { passes: 0 },
            vec![SwapAction::StartVerifyDeadline],
        ),
        Stage::RollingBack { failure } => {
            phase.unit_active = false;
            (Stage::RollingBack { failure }, vec![restore(phase)])
        }
        other => (other, Vec::new()),
    }
}

impl SwapPhase {
    /// One acquire attempt for this swap's version.
    pub(super) fn acquire(&self, retry: bool) -> SwapAction {
        SwapAction::AcquireSlot {
            version: self.plan.new.version.clone(),
            retry,
        }
    }
}

/// The old version cannot be brought back either: halt the group first (a strand halts whatever
/// the failure was: the other slots must not admit the version that stranded an instance), say
/// so, keep the slot, stay deregistered.
pub(super) fn strand(
    phase: &mut SwapPhase,
    failure: Failure,
    why: String,
) -> (Stage, Vec<SwapAction>) {
    phase.owe_halt(&format!(
        "{}; rolling back to {} failed: {why}",
        failure.reason, phase.plan.old.version
    ));
    let event = Event::Failed {
        error_code: error_code::ROLLBACK_FAILED,
    };
    let mut actions: Vec<SwapAction> = phase.halt_action(false).into_iter().collect();
    actions.push(SwapAction::SendEvent(event));
    (Stage::Stranded { failure, why }, actions)
}
