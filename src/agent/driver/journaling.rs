//! The swap's journal records, made off the loop's task: each turn's actions wait in order for the
//! record of the phase they were decided in ([`crate::agent::update::UpdatePass::record`]), while
//! the loop goes on observing, so a slow disk delays neither a deregistration the unit or the
//! probe asks for nor a watchdog ping nor SIGTERM. The journal still fails closed: a record that
//! fails before the deregistration drops the attempt (the machine is told, nothing of its batch
//! is done); after it, the batch and every later one are held in place and the record is tried
//! again every [`JOURNAL_RETRY`] before any of them runs. A stop never waits for the disk.

use tokio::time::Instant;
use tracing::{error, info};

use super::act::JOURNAL_RETRY;
use super::loop_state::{LoopState, Waiting};
use super::{Driver, Phase};
use crate::agent::machine::state::{Action, Observation};
use crate::agent::machine::swap::{Stage, SwapAction, SwapObservation};
use crate::agent::update::journal::JournalError;
use crate::health::Probe;
use crate::registry::Registry;
use crate::systemd::control::UnitControl;

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Carries `actions` out once the phase they were decided in is recorded (at once when
    /// there is nothing to record and nothing waits before them); a stop at once. Returns what
    /// the swap gives back on the way out when the machine stops the driver.
    pub(super) fn dispatch(
        &mut self,
        actions: Vec<Action>,
        state: &mut LoopState<C>,
    ) -> Option<Vec<SwapAction>> {
        if actions.iter().any(|a| matches!(a, Action::Stop)) {
            // What still waited for the disk never ran and is not run now: the stop's own
            // actions say what the swap gives back.
            state.waiting.clear();
            state.recording = None;
            return self.act(actions, state);
        }
        let actions = self.deregister_now(actions, state);
        let actions = Self::after_the_pass(actions, state);
        if actions.is_empty() {
            return None;
        }
        if state.unrecorded.is_some() {
            // Held behind a failed record: `act` queues them with it.
            return self.act(actions, state);
        }
        let phase = match (&self.agent.phase, &self.seams.updates) {
            (Phase::Updating(swap), Some(_)) => Some(swap.clone()),
            _ => None,
        };
        state.waiting.push_back(Waiting { phase, actions });
        self.record_next(state);
        None
    }

    /// Whether no batch waits for the journal: only then does the loop tell the machine what
    /// etcd confirmed, so a confirmation never overtakes the actions it answers.
    pub(super) fn journal_idle(state: &LoopState<C>) -> bool {
        state.waiting.is_empty() && state.recording.is_none()
    }

    /// A record came back: its batch runs, or the journal's fail-closed rule applies.
    pub(super) fn recorded(&mut self, written: Result<(), JournalError>, state: &mut LoopState<C>) {
        state.recording = None;
        let Some(batch) = state.waiting.pop_front() else {
            return;
        };
        match written {
            Ok(()) => self.run_recorded(batch.actions, state),
            Err(err) => self.record_failed(batch, &err, state),
        }
        self.record_next(state);
        if Self::journal_idle(state)
            && let Some(confirmed) = self.confirmation(&state.published.borrow())
        {
            state.pending.push_back(confirmed);
        }
        self.publish_changes();
        self.report_status(&mut state.status, &state.published.borrow());
    }

    /// Tries the actions held after a failed record again: a new record of the phase now.
    pub(super) fn retry_held(&mut self, state: &mut LoopState<C>) {
        if let Some((held, _)) = state.unrecorded.take() {
            let stop = self.dispatch(held, state);
            debug_assert!(stop.is_none(), "a stop is never held");
        }
    }

    /// Starts the record of the first waiting batch; batches with nothing to record run at once
    /// when their turn comes.
    fn record_next(&mut self, state: &mut LoopState<C>) {
        while state.recording.is_none() {
            let Some(front) = state.waiting.front() else {
                return;
            };
            match (&front.phase, &self.seams.updates) {
                (Some(phase), Some(updates)) => state.recording = Some(updates.record(phase)),
                // Decided outside a swap: nothing to record for them, even if a swap started
                // since.
                _ => {
                    if let Some(batch) = state.waiting.pop_front() {
                        self.run_recorded(batch.actions, state);
                    }
                }
            }
        }
    }

    /// Runs a batch whose phase is on disk (or that needs no record): `act` writes nothing more.
    fn run_recorded(&mut self, actions: Vec<Action>, state: &mut LoopState<C>) {
        if let Some(updates) = &self.seams.updates {
            updates.recorded();
        }
        let stop = self.act(actions, state);
        debug_assert!(stop.is_none(), "a stop never waits");
        if let Some(updates) = &self.seams.updates {
            updates.forget_recorded();
        }
    }

    /// Before the deregistration: the attempt is dropped. After it: this batch and every later
    /// one are held, and the record is tried again.
    fn record_failed(
        &mut self,
        batch: super::loop_state::Waiting,
        err: &JournalError,
        state: &mut LoopState<C>,
    ) {
        let instance = &self.options.instance;
        let before_deregistration = batch.phase.as_ref().is_some_and(|swap| {
            matches!(
                swap.stage,
                Stage::Prepulling | Stage::AcquiringSlot { .. } | Stage::Deregistering
            )
        });
        if before_deregistration {
            error!(instance = %instance, error = %err, kind = err.kind(),
                "failed to journal the swap before the deregistration: dropping the attempt, staying registered");
            state
                .pending
                .push_back(Observation::Swap(SwapObservation::JournalFailed));
            // Staying registered: a registration the batch carried still goes out (the agent
            // counts it done), the swap's steps do not.
            let registers: Vec<Action> = batch
                .actions
                .into_iter()
                .filter(|a| matches!(a, Action::Register))
                .collect();
            if !registers.is_empty() {
                self.run_recorded(registers, state);
            }
            return;
        }
        error!(instance = %instance, error = %err, kind = err.kind(),
            "failed to journal the swap step: holding the swap in place, trying again in {JOURNAL_RETRY:?}");
        let mut held = batch.actions;
        for later in state.waiting.drain(..) {
            held.extend(later.actions);
        }
        state.unrecorded = Some((held, Instant::now() + JOURNAL_RETRY));
    }

    /// Keeps the release of a slot an earlier run left until the update pass is back: the
    /// slots are with it while it is out, and a FleetLock lock left behind is freed by nothing
    /// else. Returns the other actions.
    fn after_the_pass(actions: Vec<Action>, state: &mut LoopState<C>) -> Vec<Action> {
        if state.passing.is_none() {
            return actions;
        }
        let (stale, others): (Vec<_>, Vec<_>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Swap(SwapAction::ReleaseStaleSlot)));
        state.after_pass.extend(stale);
        others
    }

    /// Carries out at once a deregistration the unit or the probe asks for (the phase allows a
    /// registration, so it is not the swap's own step, which waits for its record); a
    /// registration still waiting for the disk is withdrawn with it, since the machine no longer
    /// wants it. Returns the other actions.
    fn deregister_now(&mut self, actions: Vec<Action>, state: &mut LoopState<C>) -> Vec<Action> {
        let swaps_own =
            matches!(&self.agent.phase, Phase::Updating(swap) if !swap.allows_registration());
        if swaps_own || !actions.contains(&Action::Deregister) {
            return actions;
        }
        info!(instance = %self.options.instance, "{}: deregistering", self.agent.status());
        self.seams.registry.deregister();
        let not_register = |a: &Action| !matches!(a, Action::Register);
        for batch in &mut state.waiting {
            batch.actions.retain(not_register);
        }
        if let Some((held, _)) = &mut state.unrecorded {
            held.retain(not_register);
        }
        actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Deregister))
            .collect()
    }
}
