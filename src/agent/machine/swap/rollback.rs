//! The way back from a failed new version: the halt first (when owed), the fence, the previous
//! drop-in restored and restarted; the slot taken again before the unit is touched when it is
//! gone; and the strand when the old version cannot be brought back either.

use super::{Failure, HaltCause, Report, Stage, SwapAction, SwapPhase};
use crate::omaha::{Event, error_code};

/// A failure is known: the halt is the first action when the version is to blame (counted
/// against `rollout.max_failures`, see [`HaltCause`]); the rollback's fence follows its answer
/// (or comes at once when no halt is owed).
pub(super) fn fail(phase: &mut SwapPhase, failure: Failure) -> (Stage, Vec<SwapAction>) {
    phase.unit_active = false;
    if failure.halt {
        let cause = match failure.code {
            error_code::MIN_HEALTHY_FAILED => HaltCause::MinHealthy,
            error_code::MONITOR_FAILED => HaltCause::Monitor,
            _ => HaltCause::Verify,
        };
        phase.owe_halt(&failure.reason, cause);
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
        Stage::VerifyingOld { failure, .. } => (
            Stage::VerifyingOld { failure, passes: 0 },
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
    /// One attempt to take this swap's slot again (the rollout's gate does not apply).
    pub(super) fn acquire(&self, retry: bool) -> SwapAction {
        SwapAction::AcquireSlot {
            version: self.plan.new.version.clone(),
            retry,
            again: true,
            away: self.away,
        }
    }
}

/// The old version cannot be brought back either: halt the group first (a strand halts whatever
/// the failure was and whatever the failure budget says: the other slots must not admit the
/// version that stranded an instance), say so, keep the slot, stay deregistered.
pub(super) fn strand(
    phase: &mut SwapPhase,
    failure: Failure,
    why: String,
) -> (Stage, Vec<SwapAction>) {
    let reason = format!(
        "{}; rolling back to {} failed: {why}",
        failure.reason, phase.plan.old.version
    );
    phase.owe_halt(&reason, HaltCause::Immediate);
    let event = Event::Failed {
        error_code: error_code::ROLLBACK_FAILED,
    };
    let mut actions: Vec<SwapAction> = phase.halt_action(false).into_iter().collect();
    actions.extend(phase.tell(event));
    (Stage::Stranded { failure, why }, actions)
}

/// The unit was found stopped where the recovered swap would restart it: the previous drop-in
/// back with `Reload()`, no restart. A failure recorded before the stop stays the version's: its
/// owed halt is made (the release waits for it, in Releasing), its 3/0 sent, the version
/// denylisted; otherwise the operator's action ends the swap (3/0
/// [`error_code::OPERATOR_ACTION`], no halt, no denylist).
/// Recovery's, and the machine's when the unit is found `inactive` as the slot is taken again.
pub(in crate::agent::machine) fn stopped_while_down(
    mut phase: SwapPhase,
    recorded: Option<Failure>,
    why: &str,
) -> (SwapPhase, Vec<SwapAction>) {
    // Only a failure that blamed the version outlives the stop (one recovery recorded for an
    // interrupted attempt, or a halt seen elsewhere, blames nothing).
    let failure = recorded.filter(|f| f.halt).unwrap_or_else(|| Failure {
        code: error_code::OPERATOR_ACTION,
        reason: why.to_string(),
        halt: false,
    });
    let mut actions = Vec::new();
    if failure.halt {
        let version = phase.plan.new.version.clone();
        phase.denylist = true;
        actions.push(SwapAction::Denylist { version });
    }
    actions.push(SwapAction::RestoreDropIn {
        previous: phase.previous.clone(),
        old: phase.plan.old.clone(),
    });
    match phase.halt_action(false) {
        Some(halt) => {
            let report = Report::Failed {
                error_code: failure.code,
            };
            phase.report = Some(report);
            actions.push(halt);
            actions.extend(phase.tell(report.event()));
            phase.stage = Stage::Releasing;
        }
        None => phase.stage = Stage::StandingDown { failure },
    }
    (phase, actions)
}
