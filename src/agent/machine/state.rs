//! The decision: registered iff the phase allows it, the unit is `active` and the health streak
//! is healthy (or there is no check). `next(state, observation) -> (state, actions)`, no I/O.
//!
//! [`Phase::Updating`] hands the swap to its own sub-machine ([`super::swap`]); between the
//! swap's deregistration and its verification the phase does not allow registration, which keeps
//! the instance out of the load balancer whatever the unit and probe say.
//!
//! A slot an earlier run may have left under this holder id (killed while holding it, with no
//! journal; or a FleetLock lock, which nothing else frees) is released once etcd confirms the
//! first registration after start with no swap in flight: the instance is healthy on the version
//! it runs by then. A swap resumed from the journal releases its own slot instead.

use std::num::NonZeroU32;

use super::swap::{self, SwapAction, SwapObservation, SwapPhase, SwapPlan};
use crate::health::HealthStreak;
use crate::omaha::{Event, error_code};
use crate::systemd::ActiveState;

/// What the agent is doing.
// One agent per process: the size of `Serving` does not matter, and a box would only add
// indirection to every pattern on the swap.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Following the unit and probe; registered while both allow it.
    Serving,
    /// Swapping the unit to a new version.
    Updating(SwapPhase),
    /// Shutting down: deregistered, stays so.
    Stopping,
}

impl Phase {
    /// A short stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Updating(_) => "updating",
            Phase::Stopping => "stopping",
        }
    }

    /// Whether the instance may be registered in this phase.
    pub fn allows_registration(&self) -> bool {
        match self {
            Phase::Serving => true,
            Phase::Updating(swap) => swap.allows_registration(),
            Phase::Stopping => false,
        }
    }
}

/// Something the driver saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The unit's `ActiveState` changed.
    Unit(ActiveState),
    /// The unit left `active` since the last observation, whether or not that state was seen
    /// (it may be `active` again already: the next [`Observation::Unit`] says).
    LeftActive,
    /// One probe ran.
    Probe { passed: bool },
    /// SIGTERM or SIGINT.
    Shutdown,
    /// The update policy accepted an offer: start swapping (ignored unless serving, the unit
    /// active and the instance registered).
    Offer(SwapPlan),
    /// etcd confirmed the registration the agent asked for, outside a swap.
    Registered,
    /// A swap step's result.
    Swap(SwapObservation),
    /// A reloaded configuration brought these health rules.
    Reconfigured(HealthRules),
}

/// How health is judged: the `[health]` thresholds, or no check at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRules {
    pub rise: NonZeroU32,
    pub fall: NonZeroU32,
    /// `health.check = "none"`.
    pub unchecked: bool,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish the registration.
    Register,
    /// Withdraw the registration at once.
    Deregister,
    /// Withdraw the registration and exit.
    Stop,
    /// A swap step other than (de)registering and stopping.
    Swap(SwapAction),
}

/// The agent's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub phase: Phase,
    pub unit: ActiveState,
    pub health: HealthStreak,
    /// `health.check = "none"`: the unit being active is enough.
    pub unchecked: bool,
    /// What the agent last asked the registry for.
    pub registered: bool,
    /// A slot an earlier run may have left is still to be released (see the module doc).
    pub stale_slot: bool,
}

impl Agent {
    /// A fresh agent: unit state unknown, unhealthy, not registered.
    pub fn new(health: HealthStreak, unchecked: bool) -> Agent {
        Agent {
            phase: Phase::Serving,
            unit: ActiveState::Unknown,
            health,
            unchecked,
            registered: false,
            stale_slot: false,
        }
    }

    /// Whether the probe should run now: only while the unit is active and a check is configured
    /// (also while a swap keeps the instance deregistered: verification needs the probe).
    pub fn probing(&self) -> bool {
        self.phase != Phase::Stopping && self.unit.is_active() && !self.unchecked
    }

    /// Healthy by the rise/fall thresholds, or no check configured.
    pub fn healthy(&self) -> bool {
        self.unchecked || self.health.is_healthy()
    }

    /// Whether an offer would start a swap now: serving, the unit active and the instance
    /// registered (an operator's stopped unit is not started, a failed one not blamed on the
    /// next version).
    pub fn takes_offer(&self) -> bool {
        self.phase == Phase::Serving && self.unit.is_active() && self.registered
    }

    /// Whether the instance should be registered now.
    pub fn wants_registration(&self) -> bool {
        self.phase.allows_registration() && self.unit.is_active() && self.healthy()
    }

    /// Judges health by `rules` from now on, keeping the streak so far. An active instance that
    /// served without a check, when one is added, stays healthy until it fails `fall` times:
    /// a reload does not drop a registration on no evidence.
    fn reconfigure(&mut self, rules: HealthRules) {
        let trusted = self.unchecked && !rules.unchecked && self.unit.is_active();
        self.health = self.health.with_thresholds(rules.rise, rules.fall);
        if trusted {
            self.health.assume_healthy();
        }
        self.unchecked = rules.unchecked;
    }

    /// One line for sd_notify STATUS and logs.
    pub fn status(&self) -> String {
        match (&self.phase, self.registered) {
            (Phase::Stopping, _) => "stopping: deregistering".to_string(),
            (Phase::Updating(swap), _) => swap.status(),
            (Phase::Serving, true) => "registered".to_string(),
            (Phase::Serving, false) if !self.unit.is_active() => {
                format!("not registered: unit is {}", self.unit)
            }
            (Phase::Serving, false) => {
                let (passes, rise) = self.health.progress();
                format!("not registered: health check passed {passes}/{rise}")
            }
        }
    }
}

/// The next state and the actions that take the world there.
pub fn next(mut agent: Agent, observation: Observation) -> (Agent, Vec<Action>) {
    let mut actions = Vec::new();
    let forwarded = match observation {
        Observation::Shutdown => {
            let phase = std::mem::replace(&mut agent.phase, Phase::Stopping);
            agent.registered = false;
            if let Phase::Updating(swap) = phase {
                let (_, swap_actions) = swap::step(swap, SwapObservation::Shutdown);
                return (agent, swap_actions.into_iter().map(Action::from).collect());
            }
            return (agent, vec![Action::Stop]);
        }
        Observation::Offer(plan) => {
            if agent.takes_offer() {
                let (swap, swap_actions) = swap::start(plan);
                agent.phase = Phase::Updating(swap);
                actions.extend(swap_actions.into_iter().map(Action::from));
            } else if agent.phase == Phase::Serving {
                // Not taken (the unit left `active` while the check was out): given back, since
                // the service would keep the grant open and offer it again, even after a halt.
                let event = Event::Failed {
                    error_code: error_code::NOT_SERVING,
                };
                actions.push(Action::Swap(SwapAction::SendEvent(event)));
            }
            None
        }
        Observation::Registered => {
            if agent.stale_slot && agent.registered && agent.phase == Phase::Serving {
                agent.stale_slot = false;
                actions.push(Action::Swap(SwapAction::ReleaseStaleSlot));
            }
            return (agent, actions);
        }
        Observation::Swap(observation) => Some(observation),
        Observation::Reconfigured(rules) => {
            agent.reconfigure(rules);
            None
        }
        Observation::LeftActive => {
            agent.health.reset();
            agent.unit = ActiveState::Unknown;
            Some(SwapObservation::LeftActive)
        }
        Observation::Unit(state) => {
            if !state.is_active() {
                // A restarted unit must prove itself healthy again.
                agent.health.reset();
            }
            agent.unit = state.clone();
            Some(SwapObservation::Unit(state))
        }
        Observation::Probe { passed } => {
            if agent.probing() {
                agent.health.record(passed);
            }
            // Min-healthy and monitor end on `fall` failed checks in a row: the streak keeps
            // that count.
            let proving = matches!(&agent.phase,
                Phase::Updating(swap) if matches!(swap.stage,
                    swap::Stage::MinHealthy { .. } | swap::Stage::Monitoring { .. }));
            match proving && !passed && !agent.healthy() {
                true => Some(SwapObservation::Unhealthy),
                false => Some(SwapObservation::Probe { passed }),
            }
        }
    };
    if let Some(observation) = forwarded {
        match std::mem::replace(&mut agent.phase, Phase::Serving) {
            Phase::Updating(swap) => {
                let (swap, swap_actions) = swap::step(swap, observation);
                if swap.stage != swap::Stage::Finished {
                    agent.phase = Phase::Updating(swap);
                }
                for action in swap_actions.into_iter().map(Action::from) {
                    match action {
                        Action::Register => agent.registered = true,
                        Action::Deregister => agent.registered = false,
                        _ => {}
                    }
                    actions.push(action);
                }
            }
            other => agent.phase = other,
        }
    }
    if agent.phase.allows_registration() {
        match (agent.registered, agent.wants_registration()) {
            (false, true) => actions.push(Action::Register),
            (true, false) => actions.push(Action::Deregister),
            _ => {}
        }
        agent.registered = agent.wants_registration();
    }
    (agent, actions)
}

/// Resumes a journaled swap at start ([`super::recover::recover`]): the agent enters it with
/// the actions recovery decided (its own release included, so no stale slot is left to release).
/// Registration follows the same rule as in [`next`]: what recovery publishes is recorded, and a
/// resumed swap that allows registration registers only an active, healthy unit.
pub fn resume(mut agent: Agent, swap: SwapPhase, actions: Vec<SwapAction>) -> (Agent, Vec<Action>) {
    agent.stale_slot = false;
    if swap.stage != swap::Stage::Finished {
        agent.phase = Phase::Updating(swap);
    }
    let mut actions: Vec<Action> = actions.into_iter().map(Action::from).collect();
    for action in &actions {
        match action {
            Action::Register => agent.registered = true,
            Action::Deregister => agent.registered = false,
            _ => {}
        }
    }
    if agent.phase.allows_registration() && agent.registered != agent.wants_registration() {
        actions.push(match agent.wants_registration() {
            true => Action::Register,
            false => Action::Deregister,
        });
        agent.registered = agent.wants_registration();
    }
    (agent, actions)
}

impl From<SwapAction> for Action {
    fn from(action: SwapAction) -> Action {
        match action {
            SwapAction::Register => Action::Register,
            SwapAction::Deregister => Action::Deregister,
            SwapAction::Stop => Action::Stop,
            other => Action::Swap(other),
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_operator;
