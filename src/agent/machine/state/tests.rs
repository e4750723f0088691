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
fn active_reported_again_keeps_the_streak_and_the_registration() {
    let a = run(
        agent(2, 2, false),
        &[
            (Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[Action::Register]),
            (Unit(Active), &[]),
            (FAIL, &[]),
        ],
    );
    assert!(a.registered);
    assert_eq!(a.status(), "registered");
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

#[test]
fn each_phase_has_its_own_metrics_label() {
    let (swap_phase, _) = swap::start(plan());
    assert_eq!(Phase::Serving.label(), "serving");
    assert_eq!(Phase::Updating(swap_phase).label(), "updating");
    assert_eq!(Phase::Stopping.label(), "stopping");
}

fn plan() -> SwapPlan {
    let dropin = |version: &str| crate::systemd::control::DropIn {
        image: format!("example/web:{version}"),
        version: version.into(),
    };
    SwapPlan {
        old: dropin("1.0.0"),
        new: dropin("2.0.0"),
        rise: 1,
    }
}

fn swap(observation: SwapObservation) -> Observation {
    Observation::Swap(observation)
}

/// A registered agent whose swap has just deregistered the instance.
fn deregistered_mid_swap() -> Agent {
    let a = run(
        agent(1, 1, false),
        &[(Unit(Active), &[]), (PASS, &[Action::Register])],
    );
    let (a, _) = next(a, Observation::Offer(plan()));
    let (a, _) = next(a, swap(SwapObservation::Prepulled(Ok(()))));
    let (a, actions) = next(a, swap(SwapObservation::Slot(swap::SlotAnswer::Acquired)));
    assert!(actions.contains(&Action::Deregister), "{actions:?}");
    assert!(!a.registered);
    a
}

#[test]
fn an_offer_keeps_the_instance_registered_until_the_slot_is_taken() {
    let a = run(
        agent(1, 1, false),
        &[(Unit(Active), &[]), (PASS, &[Action::Register])],
    );
    let (a, actions) = next(a, Observation::Offer(plan()));
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(a.registered && matches!(a.phase, Phase::Updating(_)));
    // Still following the unit while pre-pulling: a failure deregisters, recovery registers.
    let a = run(
        a,
        &[(FAIL, &[Action::Deregister]), (PASS, &[Action::Register])],
    );
    assert_eq!(
        a.status(),
        "updating to 2.0.0: pre-pulling example/web:2.0.0"
    );
    // A second offer while updating is ignored.
    let (a, actions) = next(a, Observation::Offer(plan()));
    assert_eq!(actions, []);
    assert!(matches!(a.phase, Phase::Updating(_)));
}

#[test]
fn no_registration_between_the_swaps_deregistration_and_its_verification() {
    let a = run(
        deregistered_mid_swap(),
        &[
            (PASS, &[]),
            (FAIL, &[]),
            (PASS, &[]),
            (
                swap(SwapObservation::Deregistered),
                &[Action::Swap(SwapAction::Drain)],
            ),
            (
                swap(SwapObservation::DrainElapsed),
                &[Action::Swap(SwapAction::CheckSlot)],
            ),
        ],
    );
    assert!(!a.registered);
    assert!(a.probing(), "verification needs the probe");
}

#[test]
fn a_verified_swap_registers_once_and_returns_to_serving_after_the_release() {
    let a = run(
        deregistered_mid_swap(),
        &[
            (
                swap(SwapObservation::Deregistered),
                &[Action::Swap(SwapAction::Drain)],
            ),
            (
                swap(SwapObservation::DrainElapsed),
                &[Action::Swap(SwapAction::CheckSlot)],
            ),
        ],
    );
    let (a, _) = next(a, swap(SwapObservation::Fenced { held: true }));
    let written =
        SwapObservation::DropInWritten(Ok(crate::systemd::control::PreviousDropIn::Absent));
    let (a, _) = next(a, swap(written));
    let a = run(
        a,
        &[
            (LeftActive, &[]),
            (Unit(Active), &[]),
            (
                swap(SwapObservation::Restarted(Ok(()))),
                &[Action::Swap(SwapAction::StartVerifyDeadline)],
            ),
        ],
    );
    let (a, actions) = next(a, PASS);
    assert_eq!(actions[0], Action::Register);
    assert_eq!(
        actions.iter().filter(|a| **a == Action::Register).count(),
        1
    );
    assert!(a.registered);
    let (a, actions) = next(a, swap(SwapObservation::Registered));
    assert_eq!(actions, [Action::Swap(SwapAction::StartMinHealthy)]);
    assert!(a.registered, "registered again through min-healthy");
    let (a, actions) = next(
        a,
        swap(SwapObservation::MinHealthyElapsed { monitor: false }),
    );
    assert_eq!(
        actions,
        [
            Action::Swap(SwapAction::SendEvent(crate::omaha::Event::UpdateComplete)),
            Action::Swap(SwapAction::CheckSlot)
        ]
    );
    let (a, actions) = next(a, swap(SwapObservation::Fenced { held: true }));
    assert_eq!(
        actions,
        [Action::Swap(SwapAction::ReleaseSlot { retry: false })]
    );
    let (a, actions) = next(a, swap(SwapObservation::SlotReleased(Ok(()))));
    assert_eq!(actions, [Action::Swap(SwapAction::ClearJournal)]);
    assert_eq!(a.phase, Phase::Serving);
    assert_eq!(a.status(), "registered");
}

#[test]
fn a_lost_fence_serves_again_without_a_restart() {
    let a = run(
        deregistered_mid_swap(),
        &[
            (
                swap(SwapObservation::Deregistered),
                &[Action::Swap(SwapAction::Drain)],
            ),
            (
                swap(SwapObservation::DrainElapsed),
                &[Action::Swap(SwapAction::CheckSlot)],
            ),
        ],
    );
    let (a, actions) = next(a, swap(SwapObservation::Fenced { held: false }));
    assert_eq!(
        actions,
        [
            Action::Register,
            Action::Swap(SwapAction::ReleaseSlot { retry: false }),
            Action::Swap(SwapAction::SendEvent(crate::omaha::Event::Failed {
                error_code: crate::omaha::error_code::SLOT_LOST
            })),
            Action::Swap(SwapAction::ClearJournal),
        ]
    );
    assert!(a.registered && a.phase == Phase::Serving);
}

#[test]
fn shutdown_mid_swap_stops_with_the_swaps_own_decision() {
    let interrupted = Action::Swap(SwapAction::SendEvent(crate::omaha::Event::Failed {
        error_code: crate::omaha::error_code::INTERRUPTED,
    }));
    let (a, actions) = next(deregistered_mid_swap(), Shutdown);
    assert_eq!(
        actions,
        [
            Action::Swap(SwapAction::ReleaseSlot { retry: false }),
            interrupted.clone(),
            Action::Swap(SwapAction::ClearJournal),
            Action::Stop
        ]
    );
    assert_eq!(a.phase, Phase::Stopping);
    // Pre-pulling, no slot asked for yet: nothing to release.
    let serving = run(agent(1, 1, true), &[(Unit(Active), &[Action::Register])]);
    let (a, _) = next(serving, Observation::Offer(plan()));
    let (a, actions) = next(a, Shutdown);
    assert_eq!(
        actions,
        [
            interrupted,
            Action::Swap(SwapAction::ClearJournal),
            Action::Stop
        ]
    );
    assert!(!a.registered);
}

/// An agent that may have a slot left by an earlier run.
fn after_restart() -> Agent {
    let mut a = agent(2, 1, false);
    a.stale_slot = true;
    a
}

const RELEASE_STALE: Action = Action::Swap(SwapAction::ReleaseStaleSlot);

#[test]
fn a_slot_left_by_an_earlier_run_is_released_once_the_first_registration_is_confirmed() {
    let a = run(
        after_restart(),
        &[
            // Not registered yet (unit unknown, then not healthy): nothing to release.
            (Observation::Registered, &[]),
            (Unit(Active), &[]),
            (PASS, &[]),
            (Observation::Registered, &[]),
            (PASS, &[Action::Register]),
            (Observation::Registered, &[RELEASE_STALE]),
            // Once per start: a later registration releases nothing.
            (Observation::Registered, &[]),
            (Unit(Inactive), &[Action::Deregister]),
            (Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[Action::Register]),
            (Observation::Registered, &[]),
        ],
    );
    assert!(!a.stale_slot);
}

#[test]
fn no_stale_release_while_a_swap_is_in_flight_and_none_after_a_resumed_one() {
    let a = run(
        after_restart(),
        &[
            (Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[Action::Register]),
        ],
    );
    // An offer came first: the swap's own acquire adopts the slot and its release frees it.
    let (a, _) = next(a, Observation::Offer(plan()));
    let (a, actions) = next(a, Observation::Registered);
    assert_eq!(actions, []);
    assert!(a.stale_slot, "still to do once the swap is over");

    let (resumed, _) = resume(after_restart(), deregistered_mid_swap_phase(), Vec::new());
    assert!(
        !resumed.stale_slot,
        "the journal's swap releases its own slot"
    );
}

#[test]
fn a_resumed_swap_in_flight_becomes_the_phase_and_a_finished_one_leaves_the_agent_serving() {
    let swap_phase = deregistered_mid_swap_phase();
    let (a, actions) = resume(
        agent(1, 1, false),
        swap_phase.clone(),
        vec![SwapAction::Drain],
    );
    assert_eq!(actions, [Action::Swap(SwapAction::Drain)]);
    assert_eq!(a.phase, Phase::Updating(swap_phase.clone()));
    let finished = SwapPhase {
        stage: swap::Stage::Finished,
        ..swap_phase
    };
    let (a, actions) = resume(agent(1, 1, false), finished, vec![SwapAction::ClearJournal]);
    assert_eq!(actions, [Action::Swap(SwapAction::ClearJournal)]);
    assert_eq!(a.phase, Phase::Serving);
}

/// Registration after a resume follows the rule of [`next`]: what the recovered actions publish
/// is recorded, and a unit not known to be active yet ends deregistered, once.
#[test]
fn a_resume_records_what_recovery_publishes_and_registers_only_a_healthy_unit() {
    let releasing = SwapPhase {
        stage: swap::Stage::Releasing,
        ..deregistered_mid_swap_phase()
    };
    let release = SwapAction::ReleaseSlot { retry: false };
    let (a, actions) = resume(agent(1, 1, false), releasing.clone(), vec![release.clone()]);
    assert_eq!(actions, [Action::Swap(release)]);
    assert!(!a.registered);
    // Published before the unit is known to be active: withdrawn at once.
    let (a, actions) = resume(
        agent(1, 1, false),
        releasing.clone(),
        vec![SwapAction::Register],
    );
    assert_eq!(actions, [Action::Register, Action::Deregister]);
    assert!(!a.registered);
    // Withdrawn by recovery: not withdrawn twice.
    let registered = Agent {
        registered: true,
        ..agent(1, 1, false)
    };
    let (a, actions) = resume(registered, releasing, vec![SwapAction::Deregister]);
    assert_eq!(actions, [Action::Deregister]);
    assert!(!a.registered);
}

/// The swap phase of [`deregistered_mid_swap`].
fn deregistered_mid_swap_phase() -> SwapPhase {
    match deregistered_mid_swap().phase {
        Phase::Updating(swap) => swap,
        other => panic!("not updating: {other:?}"),
    }
}

fn rules(rise: u32, fall: u32, unchecked: bool) -> Observation {
    let n = |v| NonZeroU32::new(v).unwrap();
    Observation::Reconfigured(HealthRules {
        rise: n(rise),
        fall: n(fall),
        unchecked,
    })
}

#[test]
fn reloaded_health_rules_keep_the_streak_and_act_only_on_what_they_change() {
    // A lower rise registers an instance that has already passed enough checks.
    run(
        agent(3, 2, false),
        &[
            (Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[]),
            (rules(2, 2, false), &[Action::Register]),
        ],
    );
    // A lower fall deregisters one that has already failed enough.
    run(
        agent(1, 3, false),
        &[
            (Unit(Active), &[]),
            (PASS, &[Action::Register]),
            (FAIL, &[]),
            (rules(1, 1, false), &[Action::Deregister]),
        ],
    );
    // The same or looser rules leave a registration alone.
    let a = run(
        agent(2, 2, false),
        &[
            (Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[Action::Register]),
            (rules(2, 2, false), &[]),
            (rules(5, 4, false), &[]),
            (FAIL, &[]),
            (FAIL, &[]),
            (FAIL, &[]),
            (FAIL, &[Action::Deregister]),
        ],
    );
    assert!(!a.registered);
}

#[test]
fn dropping_the_check_registers_and_adding_one_keeps_the_registration_until_fall_failures() {
    // An unhealthy but active instance counts as healthy once there is no check.
    run(
        agent(2, 2, false),
        &[
            (Unit(Active), &[]),
            (rules(2, 2, true), &[Action::Register]),
        ],
    );
    // A check added to a registered instance: it must fail `fall` times to go.
    let a = run(
        agent(2, 2, true),
        &[
            (Unit(Active), &[Action::Register]),
            (rules(2, 2, false), &[]),
            (PASS, &[]),
            (FAIL, &[]),
            (FAIL, &[Action::Deregister]),
        ],
    );
    assert!(a.probing());
    // Not while the unit is down: coming back it must pass `rise` checks first.
    run(
        agent(2, 2, true),
        &[
            (Unit(Inactive), &[]),
            (rules(2, 2, false), &[]),
            (Unit(Active), &[]),
            (PASS, &[]),
            (PASS, &[Action::Register]),
        ],
    );
}

/// During min-healthy the agent's streak decides: `fall` failed checks in a row reach the swap as
/// [`SwapObservation::Unhealthy`] (one below `fall` does not), and the swap's deregistration is
/// the only one.
#[test]
fn fall_failed_checks_during_min_healthy_reach_the_swap_as_unhealthy() {
    let a = run(
        agent(1, 2, false),
        &[(Unit(Active), &[]), (PASS, &[Action::Register])],
    );
    let (mut swap_phase, _) = swap::start(plan());
    swap_phase.stage = swap::Stage::MinHealthy { departed: false };
    swap_phase.slot_held = true;
    let a = Agent {
        phase: Phase::Updating(swap_phase),
        ..a
    };
    let (a, actions) = next(a, FAIL);
    assert!(actions.is_empty(), "{actions:?}");
    let (a, actions) = next(a, FAIL);
    assert_eq!(
        actions,
        [
            Action::Swap(SwapAction::Halt {
                version: "2.0.0".into(),
                reason: "2.0.0 failed during min-healthy: the health check failed `fall` times \
                         in a row"
                    .into(),
                retry: false,
                cause: crate::agent::machine::swap::HaltCause::MinHealthy,
            }),
            Action::Deregister,
        ]
    );
    assert!(!a.registered);
    assert!(
        matches!(&a.phase, Phase::Updating(s) if matches!(s.stage, swap::Stage::RollingBack { .. }))
    );
}
