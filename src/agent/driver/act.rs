//! The machine's actions carried out: the one place that knows which run inline, at once, on the
//! loop (registration, deregistration, the stop, the verify deadline, the denylist, clearing the
//! journal) and which are slow futures polled beside the loop ([`crate::agent::update::steps`]:
//! events, pre-pull, slot, drain, fence, drop-in, restart, halt, release). The swap is journaled
//! before any of its side effects. A halt runs beside whatever step is still in flight, never
//! behind it.

use tokio::time::Instant;
use tracing::info;

use super::loop_state::LoopState;
use super::{Driver, DriverReport, SHUTDOWN_DEADLINE};
use crate::agent::machine::state::{Action, Observation, Phase};
use crate::agent::machine::swap::{Stage, SwapAction, SwapObservation};
use crate::agent::update::steps::SlowStep;
use crate::dry_run::would;
use crate::health::Probe;
use crate::notify::{self, NotifyState};
use crate::registry::Registry;
use crate::systemd::control::UnitControl;

/// How long a swap held on a failed journal write waits before writing again.
pub const JOURNAL_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the driver carries this swap action out itself, at once, rather than as a slow step.
/// The one list of them: the simulation (`agent/sim`) splits a batch by it too.
pub(crate) fn is_inline(action: &SwapAction) -> bool {
    matches!(
        action,
        SwapAction::Register
            | SwapAction::Deregister
            | SwapAction::Stop
            | SwapAction::StartVerifyDeadline
            | SwapAction::StartMinHealthy
            | SwapAction::StartMonitor
            | SwapAction::Denylist { .. }
            | SwapAction::NoteSlotLost
            | SwapAction::ClearJournal
    )
}

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Carries out `actions` in order, up to a stop: then the swap actions still to be given back
    /// on the way out (see [`Self::stop`]).
    pub(super) fn act(
        &mut self,
        actions: Vec<Action>,
        state: &mut LoopState<C>,
    ) -> Option<Vec<SwapAction>> {
        let stopping = actions.iter().any(|a| matches!(a, Action::Stop));
        // Held actions go first: what follows them waits with them.
        let actions = match state.unrecorded.take() {
            Some((mut held, at)) if !stopping => {
                held.extend(actions);
                state.unrecorded = Some((held, at));
                return None;
            }
            _ => actions,
        };
        if !self.journaled(&actions, state) {
            return None;
        }
        let mut batch = Vec::new();
        for action in actions {
            match action {
                Action::Register => {
                    info!(instance = %self.options.instance, "unit active and healthy: registering");
                    self.seams.registry.register(self.entries());
                    self.unpublished = false;
                }
                Action::Deregister => {
                    let line = super::narrate::deregistering(&self.agent.status());
                    info!(instance = %self.options.instance, "{line}");
                    self.seams.registry.deregister();
                }
                Action::Stop => return Some(batch),
                Action::Swap(action) => batch.push(action),
            }
        }
        let halting = batch.iter().any(|a| matches!(a, SwapAction::Halt { .. }));
        if let Some(step) = self.swap_steps(batch, &mut state.verify_at) {
            state.slow = Some(match state.slow.take() {
                // The halt never waits behind a step still in flight (an event being sent can
                // take 45 s): both run at once. The machine asks for a halt only when nothing it
                // waits for is in flight, so the earlier step's answer, if any, is stale.
                Some(earlier) if halting => Box::pin(async move {
                    let (first, answer) = tokio::join!(earlier, step);
                    answer.or(first)
                }),
                // Otherwise a step still in flight (an event being sent) finishes first.
                Some(earlier) => Box::pin(async move {
                    let first = earlier.await;
                    step.await.or(first)
                }),
                None => step,
            });
        }
        None
    }

    /// Journals the swap's phase before any of `actions` runs; false when they must not run. The
    /// journal fails closed: a phase it cannot record before the deregistration drops the attempt
    /// (the machine is told, nothing of the batch is done); after it, the actions are held in
    /// place and the write is tried again every [`JOURNAL_RETRY`] before any of them runs. A stop
    /// goes ahead unrecorded.
    fn journaled(&mut self, actions: &[Action], state: &mut LoopState<C>) -> bool {
        let (Phase::Updating(swap), Some(updates)) = (&self.agent.phase, &self.seams.updates)
        else {
            return true;
        };
        if actions.is_empty() {
            return true;
        }
        let Err(err) = updates.journal(swap) else {
            return true;
        };
        let stopping = actions.iter().any(|a| matches!(a, Action::Stop));
        let before_deregistration = matches!(
            swap.stage,
            Stage::Prepulling | Stage::AcquiringSlot { .. } | Stage::Deregistering
        );
        if before_deregistration && !stopping {
            tracing::error!(instance = %self.options.instance, error = %err, kind = err.kind(),
                "failed to journal the swap before the deregistration: dropping the attempt, staying registered");
            state
                .pending
                .push_back(Observation::Swap(SwapObservation::JournalFailed));
            return false;
        }
        if stopping {
            tracing::error!(instance = %self.options.instance, error = %err, kind = err.kind(),
                "failed to journal the swap step on the way out; the next start resumes from the last record");
            return true;
        }
        tracing::error!(instance = %self.options.instance, error = %err, kind = err.kind(),
            "failed to journal the swap step: holding the swap in place, trying again in {JOURNAL_RETRY:?}");
        state.unrecorded = Some((actions.to_vec(), Instant::now() + JOURNAL_RETRY));
        false
    }

    /// Stops: what the swap gives back on the way out (a slot not yet used, the 3/0 that ends an
    /// untouched attempt's grant) beside the lease's revocation, both within
    /// [`SHUTDOWN_DEADLINE`]: an event send may take up to 45 s, and the deregistration must not
    /// wait for it. A 3/0 cut short is left to the next start, which finds the grant with no
    /// journal. The step still in flight is dropped first: it would never be polled again, and
    /// a slot wait holds the slot backend's state, which the release given back needs (a dropped
    /// wait gives its place in line up).
    pub(super) async fn stop(
        mut self,
        batch: Vec<SwapAction>,
        state: &mut LoopState<C>,
    ) -> DriverReport {
        drop(state.slow.take());
        notify::notify(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: deregistering"),
        ]);
        let given_back = self.swap_steps(batch, &mut state.verify_at);
        let etcd_requests = self.seams.registry.requests();
        let given_back = async {
            if let Some(last) = given_back
                && tokio::time::timeout(SHUTDOWN_DEADLINE, last).await.is_err()
            {
                tracing::warn!(instance = %self.options.instance,
                    "what the swap gives back on the way out did not finish within {SHUTDOWN_DEADLINE:?}");
            }
        };
        tokio::join!(given_back, self.seams.registry.shutdown(SHUTDOWN_DEADLINE));
        DriverReport { etcd_requests }
    }

    /// Journals the swap, does its inline steps at once and returns the slow ones as one future.
    fn swap_steps(
        &mut self,
        batch: Vec<SwapAction>,
        verify_at: &mut Option<Instant>,
    ) -> Option<SlowStep> {
        let updates = self.seams.updates.as_mut()?;
        if batch.is_empty() {
            return None;
        }
        // Events report the version the instance ran before the swap.
        let current = match &self.agent.phase {
            Phase::Updating(swap) => {
                if let Stage::Stranded { .. } = swap.stage {
                    tracing::error!(instance = %self.options.instance, "{}", swap.status());
                }
                semver::Version::parse(&swap.plan.old.version).ok()
            }
            _ => None,
        };
        let current = current
            .or_else(|| updates.running().cloned())
            .unwrap_or_else(|| semver::Version::new(0, 0, 0));
        let (inline, slow): (Vec<_>, Vec<_>) = batch.into_iter().partition(is_inline);
        for action in inline {
            match action {
                SwapAction::StartVerifyDeadline => {
                    let timeout = updates.verify_timeout();
                    *verify_at = Some(Instant::now() + timeout);
                    if updates.dry_run() {
                        let health = match self.agent.unchecked {
                            true => "no health check configured".to_string(),
                            false => format!(
                                "the health check passing {} times in a row",
                                self.agent.health.progress().1
                            ),
                        };
                        let within = humantime::format_duration(timeout);
                        would(format_args!(
                            "verify {}: active, and {health}, within {within}",
                            self.options.unit_name
                        ));
                    }
                }
                SwapAction::Denylist { version } => updates.deny(&version),
                SwapAction::NoteSlotLost => {
                    tracing::error!(instance = %self.options.instance,
                        "the update slot was lost after the fence (lease lapsed or key gone) while the unit was swapped: no restart until it is taken again; nothing released for it");
                    if let Some(metrics) = &self.options.metrics {
                        metrics.slot_lost_after_fence();
                    }
                }
                SwapAction::ClearJournal => updates.clear_journal(),
                // Register, Deregister and Stop reach the loop as the agent's own actions.
                _ => {}
            }
        }
        Some(updates.steps(current, slow))
    }
}
