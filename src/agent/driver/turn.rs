//! One turn of the loop: an observation fed to the machine, its actions dispatched, and what the
//! turn leaves for the next (a confirmation etcd already gave, the pass after a swap, the
//! timers of verification and min-healthy, the status); with the small readings of the agent's
//! state the loop decides by.

use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::loop_state::LoopState;
use super::{Driver, ONCE_UNIT_WAIT, status};
use crate::agent::machine::state::{self, Action, Observation, Phase};
use crate::agent::machine::swap::{SlotAnswer, Stage, SwapAction, SwapObservation};
use crate::health::Probe;
use crate::notify;
use crate::registry::{Published, Registry};
use crate::systemd::ActiveState;
use crate::systemd::control::UnitControl;

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// One turn of the machine: `observation` decided, the actions carried out, what follows
    /// queued; when the machine stops the driver, what the swap gives back on the way out.
    pub(super) fn turn(
        &mut self,
        observation: Observation,
        state: &mut LoopState<C>,
    ) -> Option<Vec<SwapAction>> {
        if state.ready_by.is_some()
            && matches!(&observation, Observation::Unit(s) if *s != ActiveState::Unknown)
        {
            notify::ready();
            state.ready_by = None;
        }
        let became_active = matches!(&observation, Observation::Unit(s) if s.is_active())
            && !self.agent.unit.is_active();
        if became_active {
            state.next_probe = Instant::now();
        }
        let was_updating = self.updating();
        let (before, seen) = (self.agent.phase.clone(), observation.clone());
        if let (Observation::Swap(SwapObservation::Slot(answer)), Some(metrics)) =
            (&observation, &self.options.metrics)
        {
            metrics.slot_attempted(slot_answer_label(answer));
        }
        let agent = self.agent.clone();
        let (agent, actions) = match state.recovered.take() {
            Some((swap, actions)) => {
                state.pending.push_front(observation);
                state::resume(agent, swap, actions)
            }
            None => state::next(agent, observation),
        };
        self.agent = agent;
        self.narrate(&before, &seen, &actions);
        self.swap_timer.observe(&self.agent.phase);
        if let Some(rollout) = &self.rollout {
            rollout.observe(&self.agent.phase);
        }
        // Before the actions: a registration they publish carries the record as it is now.
        self.update_record(None, None);
        if actions
            .iter()
            .any(|a| matches!(a, Action::Swap(SwapAction::StartMinHealthy)))
        {
            let min_healthy = self.min_healthy();
            info!(instance = %self.options.instance,
                "verified and registered again: keeping the slot for min_healthy {}",
                humantime::format_duration(min_healthy));
            state.min_healthy_at = Some(Instant::now() + min_healthy);
        }
        if actions
            .iter()
            .any(|a| matches!(a, Action::Swap(SwapAction::StartMonitor)))
        {
            let monitor = self.monitor();
            info!(instance = %self.options.instance,
                "released after 3/1: watching the new version for monitor {}",
                humantime::format_duration(monitor));
            state.monitor_at = Some(Instant::now() + monitor);
        }
        if let Some(batch) = self.dispatch(actions, state) {
            return Some(batch);
        }
        let verifying = matches!(&self.agent.phase, Phase::Updating(s) if matches!(s.stage, Stage::Verifying { .. } | Stage::VerifyingOld { .. }));
        if !verifying {
            state.verify_at = None;
        }
        let proving = matches!(&self.agent.phase, Phase::Updating(s) if matches!(s.stage, Stage::MinHealthy { .. }));
        if !proving {
            state.min_healthy_at = None;
        }
        let monitoring = matches!(&self.agent.phase, Phase::Updating(s) if matches!(s.stage, Stage::Monitoring { .. }));
        if !monitoring {
            state.monitor_at = None;
        }
        if Self::journal_idle(state)
            && let Some(confirmed) = self.confirmation(&state.published.borrow())
        {
            state.pending.push_back(confirmed);
        }
        if was_updating && self.agent.phase == Phase::Serving {
            info!(instance = %self.options.instance, "swap over");
            match self.options.once {
                true => state.pending.push_back(Observation::Shutdown),
                false => state.next_pass = state.next_pass.or(Some(Instant::now())),
            }
        }
        self.publish_changes();
        self.report_status(&mut state.status, &state.published.borrow());
        state.status_at = match self.updating() {
            true => state
                .status_at
                .or(Some(Instant::now() + status::STATUS_REFRESH)),
            false => None,
        };
        None
    }

    /// How long the swap stays in min-healthy: the group's rollout policy (`rollout.min_healthy`)
    /// in force when the slot was requested; none without a rollout (no etcd slot backend).
    pub(super) fn min_healthy(&self) -> Duration {
        #[cfg(test)]
        if let Some(min_healthy) = self.test_min_healthy {
            return min_healthy;
        }
        self.rollout
            .as_ref()
            .map_or(Duration::ZERO, |rollout| rollout.min_healthy())
    }

    /// How long a released swap is still watched: the group's rollout policy (`rollout.monitor`)
    /// in force when the slot was requested; none without a rollout (no etcd slot backend).
    pub(super) fn monitor(&self) -> Duration {
        #[cfg(test)]
        if let Some(monitor) = self.test_monitor {
            return monitor;
        }
        self.rollout
            .as_ref()
            .map_or(Duration::ZERO, |rollout| rollout.monitor())
    }

    pub(super) fn updating(&self) -> bool {
        matches!(self.agent.phase, Phase::Updating(_))
    }

    /// What etcd confirms that the agent waits for: the swap's deregistration gone, or its
    /// registration back after verification; outside a swap, the first registration after start.
    pub(super) fn confirmation(&self, published: &Published) -> Option<Observation> {
        let registered = matches!(published, Published::Registered { .. }) && self.agent.registered;
        let Phase::Updating(swap) = &self.agent.phase else {
            let first = registered && self.agent.stale_slot && self.agent.phase == Phase::Serving;
            return first.then_some(Observation::Registered);
        };
        let confirmed = match (&swap.stage, published) {
            (Stage::Deregistering, Published::Absent) => SwapObservation::Deregistered,
            (Stage::Registering { .. }, _) if registered => SwapObservation::Registered,
            _ => return None,
        };
        Some(Observation::Swap(confirmed))
    }

    /// Whether the registration has caught up with the agent's decision on a known unit state
    /// (or `--once` waited long enough for one).
    pub(super) fn settled(&self, published: &Published, started: Instant) -> bool {
        if self.options.once && started.elapsed() >= ONCE_UNIT_WAIT {
            return true;
        }
        let known = self.agent.unit != ActiveState::Unknown;
        let caught_up = self.agent.registered == matches!(published, Published::Registered { .. });
        known && caught_up && self.registration_decided()
    }
}

/// The `slot_attempts` label of a slot answer.
fn slot_answer_label(answer: &SlotAnswer) -> &'static str {
    match answer {
        SlotAnswer::Acquired => "acquired",
        SlotAnswer::Busy(_) => "busy",
        SlotAnswer::Halted { .. } => "halted",
        SlotAnswer::Failed(_) => "failed",
    }
}
