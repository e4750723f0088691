//! Offers are taken only by an instance that serves (issue 16, defect 4): an operator's stopped
//! or failed unit is never swapped, so never started.

use std::num::NonZeroU32;

use super::*;
use crate::agent::machine::fixtures::dropin;

fn plan() -> SwapPlan {
    SwapPlan {
        old: dropin("1.0.0"),
        new: dropin("2.0.0"),
        rise: 1,
    }
}

/// An agent that saw `states` and one passing probe.
fn agent_after(states: &[ActiveState]) -> Agent {
    let n = |v| NonZeroU32::new(v).unwrap();
    let mut agent = Agent::new(HealthStreak::new(n(1), n(1)), false);
    for state in states {
        agent = next(agent, Observation::Unit(state.clone())).0;
        agent = next(agent, Observation::Probe { passed: true }).0;
    }
    agent
}

#[test]
fn an_offer_is_not_taken_for_a_stopped_failed_or_unregistered_unit_and_its_grant_is_given_back() {
    let give_back = || {
        Action::Swap(SwapAction::SendEvent(crate::omaha::Event::Failed {
            error_code: crate::omaha::error_code::NOT_SERVING,
        }))
    };
    use ActiveState::*;
    for states in [
        vec![Inactive],
        vec![Active, Inactive],
        vec![Active, Failed],
        vec![Activating],
        vec![Unknown],
    ] {
        let (agent, actions) = next(agent_after(&states), Observation::Offer(plan()));
        // Given back at once: the service would keep the grant open and offer it again.
        assert_eq!(actions, [give_back()], "{states:?}");
        assert_eq!(agent.phase, Phase::Serving, "{states:?}");
    }
    // Active but not (yet) healthy, so not registered: not taken either.
    let n = |v| NonZeroU32::new(v).unwrap();
    let unhealthy = Agent::new(HealthStreak::new(n(2), n(1)), false);
    let (unhealthy, _) = next(unhealthy, Observation::Unit(Active));
    let (agent, actions) = next(unhealthy, Observation::Offer(plan()));
    assert_eq!((actions, agent.phase), (vec![give_back()], Phase::Serving));
    // Active and registered: taken.
    let (agent, _) = next(agent_after(&[Active]), Observation::Offer(plan()));
    assert!(matches!(agent.phase, Phase::Updating(_)));
}
