//! Carries out the swap's slow steps ([`SwapAction`]s) through the update seams as one future per
//! batch, whose result comes back to the loop as a [`SwapObservation`]. The loop keeps observing
//! the unit, the probe and signals while such a future runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use semver::Version;
use tracing::{debug, error, info, warn};

use crate::agent::machine::swap::{SlotAnswer, SwapAction, SwapObservation};
use crate::dry_run::would;
use crate::omaha::{AnyUpdateSource, UpdateSource};
use crate::slot::{Acquisition, AnySlots, Holding, SlotLock};
use crate::systemd::control::{ControlError, DropIn, PreviousDropIn, UnitControl};

/// Longest a pre-pull may take (a large image over a slow link).
pub const PREPULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Pause before retrying a failed slot release.
pub const RELEASE_RETRY: Duration = Duration::from_secs(5);
/// Pause before retrying a failed halt (the release waits for it).
pub const HALT_RETRY: Duration = Duration::from_secs(5);
/// Attempts at releasing a slot an earlier run left before giving up on it for this run.
pub const STALE_RELEASE_ATTEMPTS: u32 = 3;

/// A batch of swap steps in flight; `None` when none of them answers.
pub type SlowStep = Pin<Box<dyn Future<Output = Option<SwapObservation>> + Send>>;

/// What the swap acts on.
pub struct SwapSeams<C: UnitControl> {
    pub source: AnyUpdateSource,
    pub slots: AnySlots,
    pub control: C,
}

/// The swap settings the steps need.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// `swap.prepull`, `{image}` to be replaced.
    pub prepull: Vec<String>,
    pub drain: Duration,
    pub start_timeout: Duration,
}

/// Runs `actions` in order; answers with the last step's observation. The driver hands only the
/// slow ones here (its `act.rs` knows which those are).
pub fn run_steps<C: UnitControl + 'static>(
    seams: Arc<SwapSeams<C>>,
    settings: StepSettings,
    current: Version,
    actions: Vec<SwapAction>,
) -> SlowStep {
    Box::pin(async move {
        let mut answer = None;
        for action in actions {
            if let Some(observation) = step(&seams, &settings, &current, action).await {
                answer = Some(observation);
            }
        }
        answer
    })
}

async fn step<C: UnitControl>(
    seams: &SwapSeams<C>,
    settings: &StepSettings,
    current: &Version,
    action: SwapAction,
) -> Option<SwapObservation> {
    let control = &seams.control;
    let observation = match action {
        SwapAction::SendEvent(event) => {
            if let Err(err) = seams.source.send_event(current, event).await {
                warn!(error = %err, kind = err.kind(), event = ?event, "failed to send an update event");
            }
            return None;
        }
        SwapAction::Halt {
            version,
            reason,
            retry,
            cause,
        } => {
            if retry {
                tokio::time::sleep(HALT_RETRY).await;
            }
            // A version's failure is counted first (etcd slots only); the halt only when that
            // spends `rollout.max_failures` (with 1, at once, as the halt alone always did).
            let mut reason = reason;
            if let (Some(stage), Some(rollout)) = (cause.budget_stage(), seams.slots.rollout()) {
                match rollout.count_failure(&version, stage, &reason).await {
                    Ok(budget) if !budget.spent() => {
                        info!(version = %version, failed = budget.failed, max_failures = budget.max,
                            "counted the failure against the version; the group is not halted");
                        return Some(SwapObservation::FailureCounted);
                    }
                    Ok(budget) => reason = budget.halt_reason(&reason),
                    Err(err) if err.retried() => {
                        error!(error = %err, version = %version,
                            "failed to count the failure against the version; the slot is kept until it is counted");
                        return Some(SwapObservation::GroupHalted(Err(err.to_string())));
                    }
                    // A value no retry mends: halt, as with no budget.
                    Err(err) => {
                        error!(error = %err, version = %version, "cannot count the failure against the version; halting the group");
                    }
                }
            }
            let halted = seams.slots.halt(&version, &reason).await;
            match &halted {
                Ok(()) => info!(version = %version, reason = %reason, "halted the group's rollout"),
                Err(err) => error!(error = %err, kind = err.kind(), version = %version,
                    "failed to halt the group's rollout; the slot is kept until the halt is confirmed"),
            }
            SwapObservation::GroupHalted(halted.map_err(|err| err.to_string()))
        }
        // `swap.prepull = []`: nothing to pull ahead; the restart pulls the image if it must.
        SwapAction::Prepull { .. } if settings.prepull.is_empty() => {
            if seams.source.dry_run() {
                would(format_args!("run no pre-pull (swap.prepull is empty)"));
            }
            SwapObservation::Prepulled(Ok(()))
        }
        SwapAction::Prepull { image } => {
            let argv: Vec<String> = settings
                .prepull
                .iter()
                .map(|arg| arg.replace("{image}", &image))
                .collect();
            let pulled = control.prepull(&image, &argv, PREPULL_TIMEOUT).await;
            SwapObservation::Prepulled(pulled.map_err(|e| failed("pre-pull", &e)))
        }
        // etcd: in the group's queue, a busy answer at least every RETRY_AFTER (the place kept
        // between calls); see `AnySlots::acquire_in_line`.
        SwapAction::AcquireSlot {
            version,
            retry,
            again,
            away,
        } => {
            let answer = match seams
                .slots
                .acquire_in_line(&version, retry, !again, away)
                .await
            {
                Ok(Acquisition::Acquired) => SlotAnswer::Acquired,
                Ok(Acquisition::Busy { detail }) => SlotAnswer::Busy(detail),
                Ok(Acquisition::Halted { version, reason }) => {
                    SlotAnswer::Halted { version, reason }
                }
                Err(err) => SlotAnswer::Failed(err.to_string()),
            };
            SwapObservation::Slot(answer)
        }
        SwapAction::Drain => {
            if seams.source.dry_run() {
                would(format_args!(
                    "wait {} (swap.drain) for the load balancer to stop routing here",
                    humantime::format_duration(settings.drain)
                ));
            }
            tokio::time::sleep(settings.drain).await;
            SwapObservation::DrainElapsed
        }
        SwapAction::CheckSlot => {
            let held = match seams.slots.held().await {
                Ok(Holding::Held) => true,
                Ok(other) => {
                    warn!(holding = ?other, "the update slot is no longer held: no restart");
                    false
                }
                Err(err) => {
                    warn!(error = %err, "cannot tell whether the update slot is held: no restart");
                    false
                }
            };
            SwapObservation::Fenced { held }
        }
        SwapAction::WriteDropIn(dropin) => {
            let written = control.write_dropin(&dropin).await;
            SwapObservation::DropInWritten(written.map_err(|e| failed("drop-in write", &e)))
        }
        SwapAction::Restart => match restart(control, settings.start_timeout).await {
            Err(ControlError::Canceled { unit, job }) => {
                warn!(unit = %unit, job = %job,
                    "the restart job was canceled: another job (an operator's stop or restart) replaced it");
                SwapObservation::RestartCanceled
            }
            restarted => SwapObservation::Restarted(restarted.map_err(|e| failed("restart", &e))),
        },
        SwapAction::RestoreDropIn { previous, old } => {
            let restored = match restore(control, previous, &old).await {
                Ok(()) => control.reload().await,
                Err(err) => Err(err),
            };
            SwapObservation::DropInRestored(restored.map_err(|e| failed("drop-in restore", &e)))
        }
        SwapAction::RestoreAndRestart { previous, old } => {
            let restored = restore(control, previous, &old).await;
            let restarted = match restored {
                Ok(()) => restart(control, settings.start_timeout).await,
                Err(err) => Err(err),
            };
            SwapObservation::Restarted(restarted.map_err(|e| failed("rollback", &e)))
        }
        SwapAction::ReleaseSlot { retry } => {
            if retry {
                tokio::time::sleep(RELEASE_RETRY).await;
            }
            let released = seams.slots.release().await.map_err(|err| {
                warn!(error = %err, kind = err.kind(), "failed to release the update slot");
                err.to_string()
            });
            // Image housekeeping (`swap.prune`), with the slot already given back.
            if released.is_ok() {
                crate::image::prune::after_release(&seams.control).await;
            }
            SwapObservation::SlotReleased(released)
        }
        SwapAction::ReleaseStaleSlot => {
            release_stale(&seams.slots).await;
            return None;
        }
        SwapAction::Register
        | SwapAction::Deregister
        | SwapAction::Stop
        | SwapAction::StartVerifyDeadline
        | SwapAction::StartMinHealthy
        | SwapAction::StartMonitor
        | SwapAction::Denylist { .. }
        | SwapAction::NoteSlotLost
        | SwapAction::ClearJournal => return None,
    };
    Some(observation)
}

/// Releases what an earlier run left, logging each slot; retried a few times, since a FleetLock
/// lock left behind is freed by nothing else.
async fn release_stale(slots: &AnySlots) {
    for attempt in 1..=STALE_RELEASE_ATTEMPTS {
        match slots.release_stale().await {
            Ok(released) if released.is_empty() => {
                debug!("no update slot left by an earlier run");
                return;
            }
            Ok(released) => {
                for slot in released {
                    info!(slot = %slot, "released an update slot left by an earlier run");
                }
                return;
            }
            Err(err) if attempt < STALE_RELEASE_ATTEMPTS => {
                warn!(error = %err, kind = err.kind(), attempt,
                    "failed to release an update slot left by an earlier run; retrying");
                tokio::time::sleep(RELEASE_RETRY).await;
            }
            Err(err) => warn!(error = %err, kind = err.kind(),
                "failed to release an update slot left by an earlier run; giving up for this run \
                 (`sidekick slots release --holder ID` frees it)"),
        }
    }
}

/// Puts `previous` back, or writes the old version's drop-in when what was there is unknown.
async fn restore<C: UnitControl>(
    control: &C,
    previous: Option<PreviousDropIn>,
    old: &DropIn,
) -> Result<(), ControlError> {
    match previous {
        Some(previous) => control.restore_dropin(&previous).await,
        None => control.write_dropin(old).await.map(|_| ()),
    }
}

async fn restart<C: UnitControl>(control: &C, timeout: Duration) -> Result<(), ControlError> {
    control.reload().await?;
    control.restart(timeout).await
}

/// Logs a failed step and turns it into the text the swap records.
fn failed(what: &str, error: &ControlError) -> String {
    warn!(error = %error, kind = error.kind(), "{what} failed");
    error.to_string()
}

#[cfg(test)]
mod tests;
