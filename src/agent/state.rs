//! The decision: registered iff the phase allows it, the unit is `active` and the health streak
//! is healthy (or there is no check). `next(state, observation) -> (state, actions)`, no I/O.
//!
//! [`Phase`] is where the update work extends the machine (Draining, Swapping, Verifying,
//! RollingBack in DESIGN.md's "The swap"): a phase that does not allow registration keeps the
//! instance out of the load balancer whatever the unit and probe say.

use crate::health::HealthStreak;
use crate::systemd::ActiveState;

/// What the agent is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Following the unit and probe; registered while both allow it.
    Serving,
    /// Shutting down: deregistered, stays so.
    Stopping,
}

impl Phase {
    /// A short stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Stopping => "stopping",
        }
    }

    /// Whether the instance may be registered in this phase.
    pub fn allows_registration(&self) -> bool {
        matches!(self, Phase::Serving)
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
        }
    }

    /// Whether the probe should run now: only while the unit is active and a check is configured.
    pub fn probing(&self) -> bool {
        self.phase.allows_registration() && self.unit.is_active() && !self.unchecked
    }

    /// Healthy by the rise/fall thresholds, or no check configured.
    pub fn healthy(&self) -> bool {
        self.unchecked || self.health.is_healthy()
    }

    /// Whether the instance should be registered now.
    pub fn wants_registration(&self) -> bool {
        self.phase.allows_registration() && self.unit.is_active() && self.healthy()
    }

    /// One line for sd_notify STATUS and logs.
    pub fn status(&self) -> String {
        match (&self.phase, self.registered) {
            (Phase::Stopping, _) => "stopping: deregistering".to_string(),
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
    match observation {
        Observation::Shutdown => {
            agent.phase = Phase::Stopping;
            agent.registered = false;
            return (agent, vec![Action::Stop]);
        }
        Observation::LeftActive => {
            agent.health.reset();
            agent.unit = ActiveState::Unknown;
        }
        Observation::Unit(state) => {
            if !state.is_active() {
                // A restarted unit must prove itself healthy again.
                agent.health.reset();
            }
            agent.unit = state;
        }
        Observation::Probe { passed } => {
            if agent.probing() {
                agent.health.record(passed);
            }
        }
    }
    let mut actions = Vec::new();
    match (agent.registered, agent.wants_registration()) {
        (false, true) => actions.push(Action::Register),
        (true, false) => actions.push(Action::Deregister),
        _ => {}
    }
    agent.registered = agent.wants_registration();
    (agent, actions)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use ActiveState::*;
    use Observation::{LeftActive, Probe, Shutdown, Unit};

    const PASS: Observation = Probe { passed: true };
    const FAIL: Observation = Probe { passed: false };

    fn agent(rise: u32, fall: u32, unchecked: bool) -> Agent {
        let n = |v| NonZeroU32::new(v).unwrap();
        Agent::new(HealthStreak::new(n(rise), n(fall)), unchecked)
    }

    /// Feeds `steps` and checks the actions after each one and the final registration.
    fn run(mut a: Agent, steps: &[(Observation, &[Action])]) -> Agent {
        for (i, (observation, expected)) in steps.iter().enumerate() {
            let (next_agent, actions) = next(a, observation.clone());
            assert_eq!(actions, *expected, "step {i}: {observation:?}");
            a = next_agent;
        }
        a
    }

    #[test]
    fn registers_after_rise_passes_while_active_and_deregisters_after_fall_failures() {
        let a = run(
            agent(2, 2, false),
            &[
                (Unit(Activating), &[]),
                (Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[Action::Register]),
                (PASS, &[]),
                (FAIL, &[]),
                (FAIL, &[Action::Deregister]),
                (FAIL, &[]),
                (PASS, &[]),
                (PASS, &[Action::Register]),
            ],
        );
        assert!(a.registered);
    }

    #[test]
    fn deregisters_at_once_when_the_unit_leaves_active_in_any_way() {
        for leaving in [Deactivating, Inactive, Failed, Activating, Reloading] {
            let a = run(
                agent(1, 3, false),
                &[
                    (Unit(Active), &[]),
                    (PASS, &[Action::Register]),
                    (Unit(leaving.clone()), &[Action::Deregister]),
                ],
            );
            assert!(!a.registered && !a.probing(), "{leaving}");
        }
    }

    #[test]
    fn a_restarted_unit_must_pass_rise_checks_again() {
        run(
            agent(2, 2, false),
            &[
                (Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[Action::Register]),
                (Unit(Inactive), &[Action::Deregister]),
                (Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[Action::Register]),
            ],
        );
    }

    #[test]
    fn a_departure_never_seen_as_a_state_still_deregisters_and_resets_health() {
        let a = run(
            agent(2, 2, false),
            &[
                (Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[Action::Register]),
                // deactivating -> activating -> active, delivered as one change
                (LeftActive, &[Action::Deregister]),
                (Unit(Active), &[]),
                (PASS, &[]),
                (PASS, &[Action::Register]),
            ],
        );
        assert!(a.registered);
        let a = run(
            agent(1, 1, true),
            &[
                (Unit(Active), &[Action::Register]),
                (LeftActive, &[Action::Deregister]),
                (Unit(Active), &[Action::Register]),
            ],
        );
        assert!(a.registered);
    }

    #[test]
    fn probe_results_while_the_unit_is_not_active_are_ignored() {
        let a = run(
            agent(1, 1, false),
            &[(PASS, &[]), (Unit(Inactive), &[]), (PASS, &[])],
        );
        assert_eq!(a.health.progress(), (0, 1));
    }

    #[test]
    fn without_a_check_the_active_unit_alone_registers() {
        let a = run(
            agent(2, 2, true),
            &[
                (Unit(Activating), &[]),
                (Unit(Active), &[Action::Register]),
                (Unit(Active), &[]),
                (Unit(Failed), &[Action::Deregister]),
            ],
        );
        assert!(!a.probing());
    }

    #[test]
    fn shutdown_stops_and_nothing_registers_afterwards() {
        let a = run(
            agent(1, 1, true),
            &[
                (Unit(Active), &[Action::Register]),
                (Shutdown, &[Action::Stop]),
                (Unit(Active), &[]),
                (PASS, &[]),
            ],
        );
        assert!(!a.registered);
        assert_eq!(a.status(), "stopping: deregistering");
    }

    #[test]
    fn status_says_why_the_instance_is_not_registered() {
        let (a, _) = next(agent(2, 2, false), Unit(Failed));
        assert_eq!(a.status(), "not registered: unit is failed");
        let (a, _) = next(a, Unit(Active));
        let (a, _) = next(a, PASS);
        assert_eq!(a.status(), "not registered: health check passed 1/2");
        let (a, _) = next(a, PASS);
        assert_eq!(a.status(), "registered");
    }
}
