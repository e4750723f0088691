//! The swap told in the journal's plain view: one line at each decision the machine takes (an
//! offer taken up, the pre-pull done, a slot taken or waited for, a rollback and why, the halt,
//! the outcome), readable without `-o json`. [`line`] is a pure function of the phase before, the
//! observation, the phase after and the actions; the driver logs what it returns.

use std::time::Duration;

use tracing::{info, warn};

use super::Driver;
use crate::agent::machine::state::{Action, Observation, Phase};
use crate::agent::machine::swap::{
    Failure, GroupHalt, HaltCause, SlotAnswer, Stage, SwapAction, SwapObservation, SwapPhase,
};
use crate::health::Probe;
use crate::omaha::error_code;
use crate::registry::Registry;
use crate::systemd::control::UnitControl;

/// How loud a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// What the line needs beyond the phases: the verify timeout and the last probe's failure.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub verify_timeout: Option<Duration>,
    /// Why the last health check failed, e.g. `GET / answered 404`.
    pub probe_failure: Option<String>,
    /// `rollout.max_failures` in force for the swap, with etcd slots (none: every failure halts).
    pub max_failures: Option<u32>,
}

/// The line for one turn of the machine, if it decided something worth a line.
pub fn line(
    before: &Phase,
    seen: &Observation,
    after: &Phase,
    actions: &[Action],
    context: &Context,
) -> Option<(Level, String)> {
    let (Phase::Serving, Phase::Updating(swap)) = (before, after) else {
        let Phase::Updating(was) = before else {
            return None;
        };
        return match after {
            Phase::Updating(now) => swap_step(was, seen, now, actions, context),
            // The swap finished this turn: its last actions say how.
            _ => ended(was, seen),
        };
    };
    let plan = &swap.plan;
    Some((
        Level::Info,
        format!(
            "update to {} offered (running {}): pre-pulling {}",
            plan.new.version, plan.old.version, plan.new.image
        ),
    ))
}

/// A step within the swap.
fn swap_step(
    was: &SwapPhase,
    seen: &Observation,
    now: &SwapPhase,
    actions: &[Action],
    context: &Context,
) -> Option<(Level, String)> {
    let (new, old) = (&now.plan.new.version, &now.plan.old.version);
    let info = |text: String| Some((Level::Info, text));
    match (&was.stage, &now.stage) {
        (Stage::Prepulling, Stage::AcquiringSlot { .. }) => info(format!(
            "pre-pulled {}: taking an update slot for {new}",
            now.plan.new.image
        )),
        (Stage::AcquiringSlot { waiting: before }, Stage::AcquiringSlot { waiting: Some(why) })
            if before.as_ref() != Some(why) =>
        {
            info(format!("waiting for an update slot for {new}: {why}"))
        }
        (Stage::AcquiringSlot { .. }, Stage::Deregistering) => info(format!(
            "took an update slot: deregistering to swap {old} for {new}"
        )),
        (
            Stage::Restarting | Stage::Verifying { .. } | Stage::MinHealthy { .. },
            Stage::RollingBack { failure },
        ) => {
            let halting = actions.iter().find_map(|a| match a {
                Action::Swap(SwapAction::Halt { cause, .. }) => Some(*cause),
                _ => None,
            });
            Some((
                Level::Warn,
                rolling_back(now, seen, failure, halting, context),
            ))
        }
        (
            Stage::WritingDropIn,
            Stage::Registering {
                failure: Some(failure),
            },
        ) => Some((
            Level::Warn,
            format!("{}: staying on {old}, registering again", failure.reason),
        )),
        (Stage::Verifying { .. }, Stage::Registering { failure: None }) => {
            info(format!("{new} verified healthy: registering again"))
        }
        (
            Stage::Registering {
                failure: Some(failure),
            },
            Stage::Releasing,
        ) => {
            // The halt went out first, when the failure was known (see `rolling_back`); the
            // failure says whether the version was blamed for it.
            match failure.halt {
                // Below `rollout.max_failures`: counted against the version, the group goes on.
                true if now.halt == GroupHalt::Counted => Some((
                    Level::Warn,
                    format!(
                        "rolled back to {old} and registered again; the failure counts against \
                         {new}'s rollout.max_failures, the group is not halted ({})",
                        failure.reason
                    ),
                )),
                true => Some((
                    Level::Warn,
                    format!(
                        "rolled back to {old} and registered again; halted the group's rollout \
                         at {new} ({}): `sidekick slots resume` lifts the halt",
                        failure.reason
                    ),
                )),
                false => Some((
                    Level::Warn,
                    format!(
                        "rolled back to {old} and registered again ({})",
                        failure.reason
                    ),
                )),
            }
        }
        (Stage::Registering { failure: None }, Stage::MinHealthy { .. }) => info(format!(
            "{new} registered again: min-healthy, keeping the slot until it has stayed active \
             and healthy for rollout.min_healthy"
        )),
        (Stage::MinHealthy { .. }, Stage::StandingDown { failure }) => Some((
            Level::Warn,
            format!(
                "{}: deregistered, putting the {old} drop-in back",
                failure.reason
            ),
        )),
        (Stage::Releasing | Stage::Monitoring { .. }, Stage::Reacquiring { resume, .. }) => {
            let Stage::RollingBack { failure } = resume.as_ref() else {
                return None;
            };
            Some((
                Level::Warn,
                format!(
                    "{}: deregistered, halting the group first, then rolling back to {old} \
                     taking a slot again (the update service keeps its 3/1)",
                    failure.reason
                ),
            ))
        }
        (Stage::Releasing, Stage::Monitoring { .. }) => info(format!(
            "{new} released its slot after 3/1: monitor, a failure within rollout.monitor still \
             rolls it back"
        )),
        (Stage::MinHealthy { .. } | Stage::Registering { failure: None }, Stage::Releasing) => {
            info(format!(
                "updated from {old} to {new}: registered again, passed min-healthy"
            ))
        }
        _ => None,
    }
}

/// The decision to roll back, with its cause: e.g. `3.0.0 not healthy within 20s (GET /
/// answered 404): rolling back to 2.0.0, halting the group`.
fn rolling_back(
    swap: &SwapPhase,
    seen: &Observation,
    failure: &Failure,
    halting: Option<HaltCause>,
    context: &Context,
) -> String {
    let (new, old) = (&swap.plan.new.version, &swap.plan.old.version);
    let deadline = matches!(seen, Observation::Swap(SwapObservation::VerifyDeadline));
    let mut why = match (deadline, context.verify_timeout) {
        (true, Some(timeout)) => format!(
            "{new} not healthy within {}",
            humantime::format_duration(timeout)
        ),
        _ => failure.reason.clone(),
    };
    if failure.code == error_code::UNHEALTHY_AFTER_SWAP
        && let Some(probe) = &context.probe_failure
    {
        why.push_str(&format!(" ({probe})"));
    }
    // The halt goes out first, in the same turn as the decision to roll back (with
    // `rollout.max_failures` above 1, the failure is counted first and halts only when it spends
    // the budget: the end of the rollback says which).
    let halt = match (halting, context.max_failures) {
        (None, _) => String::new(),
        (Some(cause), Some(max)) if max > 1 && cause.budget_stage().is_some() => {
            format!(", counting the failure against {new} (the group halts at max_failures {max})")
        }
        (Some(_), _) => ", halting the group".to_string(),
    };
    format!("{why}: rolling back to {old}{halt}")
}

/// A swap that ended this turn without a registration coming back through [`swap_step`].
fn ended(was: &SwapPhase, seen: &Observation) -> Option<(Level, String)> {
    let (new, old) = (&was.plan.new.version, &was.plan.old.version);
    let warn = |text: String| Some((Level::Warn, text));
    match (&was.stage, seen) {
        (Stage::Prepulling, Observation::Swap(SwapObservation::Prepulled(Err(error)))) => {
            warn(format!(
                "pre-pull of {} failed ({error}): staying on {old}",
                was.plan.new.image
            ))
        }
        (
            Stage::AcquiringSlot { .. },
            Observation::Swap(SwapObservation::Slot(SlotAnswer::Halted { version, reason })),
        ) => warn(format!(
            "not updating to {new}: the group's rollout is halted at {version} ({reason})"
        )),
        (Stage::Fencing, Observation::Swap(SwapObservation::Fenced { held: false })) => {
            warn(format!(
                "the update slot was lost before the restart: staying on {old}, registering again"
            ))
        }
        (Stage::Monitoring { .. }, Observation::Swap(SwapObservation::MonitorElapsed)) => Some((
            Level::Info,
            format!("{new} passed monitor: the update from {old} is over"),
        )),
        // Other ends (a stop, a dropped attempt) are told where they happen.
        _ => None,
    }
}

/// The line for a deregistration, from the agent's status: said once, also when the status
/// already says it (`updating to 3.0.0: deregistering`).
pub fn deregistering(status: &str) -> String {
    match status.ends_with("deregistering") {
        true => status.to_string(),
        false => format!("{status}: deregistering"),
    }
}

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Logs the line for the turn that went from `before` on `seen` with `actions`, if any.
    pub(super) fn narrate(&self, before: &Phase, seen: &Observation, actions: &[Action]) {
        let context = Context {
            verify_timeout: self.seams.updates.as_ref().map(|u| u.verify_timeout()),
            probe_failure: self.seams.probe.last_failure(),
            max_failures: self.rollout.as_ref().map(|r| r.max_failures_hint().get()),
        };
        let instance = &self.options.instance;
        match line(before, seen, &self.agent.phase, actions, &context) {
            Some((Level::Info, text)) => info!(instance = %instance, "{text}"),
            Some((Level::Warn, text)) => warn!(instance = %instance, "{text}"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::machine::swap::{self, SwapPlan};
    use crate::systemd::control::DropIn;

    fn plan() -> SwapPlan {
        let dropin = |v: &str| DropIn {
            version: v.into(),
            image: format!("localhost:5000/web:{v}"),
        };
        SwapPlan {
            old: dropin("2.0.0"),
            new: dropin("3.0.0"),
            rise: 2,
        }
    }

    fn at(stage: Stage) -> Phase {
        Phase::Updating(SwapPhase {
            plan: plan(),
            stage,
            previous: None,
            slot_held: true,
            unit_active: true,
            halt: Default::default(),
            unit_stopped: false,
            monitor: false,
            away: false,
            denylist: false,
            report: None,
        })
    }

    fn unhealthy() -> Failure {
        Failure {
            code: error_code::UNHEALTHY_AFTER_SWAP,
            reason: "3.0.0 not healthy within the verify timeout".into(),
            halt: true,
        }
    }

    #[test]
    fn a_rollback_says_the_version_the_timeout_the_probe_and_the_halt_in_one_line() {
        let said = |max_failures: Option<u32>| {
            let context = Context {
                verify_timeout: Some(Duration::from_secs(20)),
                probe_failure: Some("GET / answered 404".into()),
                max_failures,
            };
            let seen = Observation::Swap(SwapObservation::VerifyDeadline);
            // The machine's own turn: the deadline fails the version and the halt goes out first.
            let Phase::Updating(verifying) = at(Stage::Verifying { passes: 0 }) else {
                unreachable!()
            };
            let (after, actions) = swap::step(verifying, SwapObservation::VerifyDeadline);
            let actions: Vec<Action> = actions.into_iter().map(Action::from).collect();
            line(
                &at(Stage::Verifying { passes: 0 }),
                &seen,
                &Phase::Updating(after),
                &actions,
                &context,
            )
        };
        let halting = Some((
            Level::Warn,
            "3.0.0 not healthy within 20s (GET / answered 404): rolling back to 2.0.0, \
             halting the group"
                .into(),
        ));
        assert_eq!(said(None), halting);
        assert_eq!(said(Some(1)), halting);
        assert_eq!(
            said(Some(3)),
            Some((
                Level::Warn,
                "3.0.0 not healthy within 20s (GET / answered 404): rolling back to 2.0.0, \
                 counting the failure against 3.0.0 (the group halts at max_failures 3)"
                    .into()
            ))
        );
    }

    #[test]
    fn a_failure_counted_below_the_budget_ends_with_no_halt_in_its_warning() {
        let Phase::Updating(mut swap) = at(Stage::Registering {
            failure: Some(unhealthy()),
        }) else {
            unreachable!()
        };
        swap.halt = GroupHalt::Counted;
        let before = Phase::Updating(swap.clone());
        let (phase, actions) = swap::step(swap, SwapObservation::Registered);
        let actions: Vec<Action> = actions.into_iter().map(Action::from).collect();
        let (level, text) = line(
            &before,
            &Observation::Swap(SwapObservation::Registered),
            &Phase::Updating(phase),
            &actions,
            &Context::default(),
        )
        .unwrap();
        assert_eq!(level, Level::Warn);
        assert_eq!(
            text,
            "rolled back to 2.0.0 and registered again; the failure counts against 3.0.0's \
             rollout.max_failures, the group is not halted (3.0.0 not healthy within the verify \
             timeout)"
        );
    }

    #[test]
    fn the_halt_after_the_rollback_is_one_warning_naming_how_to_lift_it() {
        let (phase, actions) = {
            let Phase::Updating(swap) = at(Stage::Registering {
                failure: Some(unhealthy()),
            }) else {
                unreachable!()
            };
            swap::step(swap, SwapObservation::Registered)
        };
        let actions: Vec<Action> = actions.into_iter().map(Action::from).collect();
        let (level, text) = line(
            &at(Stage::Registering {
                failure: Some(unhealthy()),
            }),
            &Observation::Swap(SwapObservation::Registered),
            &Phase::Updating(phase),
            &actions,
            &Context::default(),
        )
        .unwrap();
        assert_eq!(level, Level::Warn);
        assert!(text.starts_with("rolled back to 2.0.0"), "{text}");
        assert!(
            text.contains("halted the group's rollout at 3.0.0"),
            "{text}"
        );
        assert!(text.contains("sidekick slots resume"), "{text}");
    }

    #[test]
    fn the_offer_and_the_pre_pull_are_told_at_info() {
        let (swap, _) = swap::start(plan());
        let offered = line(
            &Phase::Serving,
            &Observation::Offer(plan()),
            &Phase::Updating(swap),
            &[],
            &Context::default(),
        );
        assert_eq!(
            offered,
            Some((
                Level::Info,
                "update to 3.0.0 offered (running 2.0.0): pre-pulling localhost:5000/web:3.0.0"
                    .into()
            ))
        );
        let pulled = line(
            &at(Stage::Prepulling),
            &Observation::Swap(SwapObservation::Prepulled(Ok(()))),
            &at(Stage::AcquiringSlot { waiting: None }),
            &[],
            &Context::default(),
        );
        assert_eq!(pulled.map(|(l, _)| l), Some(Level::Info));
    }

    #[test]
    fn waiting_for_a_slot_is_told_once_per_reason_not_at_every_attempt() {
        let waiting = |why: &str| {
            at(Stage::AcquiringSlot {
                waiting: Some(why.into()),
            })
        };
        let seen = Observation::Swap(SwapObservation::Slot(SlotAnswer::Busy("1/1".into())));
        let context = Context::default();
        let first = line(
            &at(Stage::AcquiringSlot { waiting: None }),
            &seen,
            &waiting("busy: 1/1"),
            &[],
            &context,
        );
        assert!(first.is_some_and(|(_, t)| t == "waiting for an update slot for 3.0.0: busy: 1/1"));
        let again = line(
            &waiting("busy: 1/1"),
            &seen,
            &waiting("busy: 1/1"),
            &[],
            &context,
        );
        assert_eq!(again, None);
    }

    #[test]
    fn a_failed_pre_pull_says_why_and_that_it_stays() {
        let seen = Observation::Swap(SwapObservation::Prepulled(Err("manifest unknown".into())));
        let text = line(
            &at(Stage::Prepulling),
            &seen,
            &Phase::Serving,
            &[],
            &Context::default(),
        );
        assert_eq!(
            text,
            Some((
                Level::Warn,
                "pre-pull of localhost:5000/web:3.0.0 failed (manifest unknown): staying on 2.0.0"
                    .into()
            ))
        );
    }

    #[test]
    fn the_swaps_deregistration_says_deregistering_once() {
        let Phase::Updating(swap) = at(Stage::Deregistering) else {
            unreachable!()
        };
        assert_eq!(
            deregistering(&swap.status()),
            "updating to 3.0.0: deregistering"
        );
        assert_eq!(
            deregistering("not registered: unit is inactive"),
            "not registered: unit is inactive: deregistering"
        );
    }

    #[test]
    fn serving_turns_say_nothing() {
        let seen = Observation::Probe { passed: true };
        let none = line(
            &Phase::Serving,
            &seen,
            &Phase::Serving,
            &[],
            &Context::default(),
        );
        assert_eq!(none, None);
    }
}
