//! The fleet view's instance record as the driver keeps it: brought up to date from the agent's
//! phase and the update passes, and published with the registration it belongs to; while a swap
//! keeps the instance deregistered, held on a lease of its own ([`Registry::hold`]), so the
//! instance being swapped stays in the fleet view (and out of the load balancer's keys).

use super::Driver;
use crate::agent::machine::state::{Agent, Phase};
use crate::agent::machine::swap::Stage;
use crate::health::Probe;
use crate::registry::record;
use crate::registry::{Entry, Registry};
use crate::systemd::control::UnitControl;

/// The phase as the fleet view and `LOCAL DAEMONS` show it, with the target version and step
/// during an update: `serving` only while registered; `waiting-for-slot` apart from `updating`;
/// `swapping` while the swap keeps the instance deregistered.
pub fn shown_phase(agent: &Agent) -> (&'static str, Option<String>, Option<String>) {
    let swap = match &agent.phase {
        Phase::Serving if agent.registered => return ("serving", None, None),
        Phase::Serving if agent.unit.is_active() => return ("starting", None, None),
        Phase::Serving => return ("not-registered", None, None),
        Phase::Stopping => return ("stopping", None, None),
        Phase::Updating(swap) => swap,
    };
    let step = serde_json::to_value(&swap.stage)
        .ok()
        .and_then(|v| v.get("step").and_then(|s| s.as_str().map(str::to_string)));
    let label = match &swap.stage {
        Stage::AcquiringSlot { waiting: Some(_) } => "waiting-for-slot",
        Stage::Stranded { .. } => "stranded",
        _ if !agent.registered => "swapping",
        _ => "updating",
    };
    (label, Some(swap.plan.new.version.clone()), step)
}

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// The registration's entries, with the instance record when one is published.
    pub(super) fn entries(&self) -> Vec<Entry> {
        let mut entries = self.options.entries.clone();
        entries.extend(self.record_entry());
        entries
    }

    /// The instance record as an entry, when one is published.
    fn record_entry(&self) -> Option<Entry> {
        match (&self.options.record, &self.record) {
            (Some(options), Some(record)) => Some(record::entry(
                &options.group,
                &self.options.instance,
                record,
            )),
            _ => None,
        }
    }

    /// Brings the instance record up to date: the phase, and a finished check's result and the
    /// version it read. A change is published with the next registration, or by
    /// [`Self::publish_changes`].
    pub(super) fn update_record(&mut self, checked: Option<&str>, version: Option<String>) {
        let (phase, target, step) = shown_phase(&self.agent);
        // Registering again after a swap: the version it verified, before any pass reads it.
        let version = version.or_else(|| match &self.agent.phase {
            Phase::Updating(swap) => match &swap.stage {
                Stage::Registering { failure: None } => Some(swap.plan.new.version.clone()),
                Stage::Registering { failure: Some(_) } => Some(swap.plan.old.version.clone()),
                _ => None,
            },
            _ => None,
        });
        // The version metric follows a swap too, not only the update passes.
        if let (Some(metrics), Some(version)) = (&self.options.metrics, &version) {
            metrics.set_version(version);
        }
        let Some(record) = self.record.as_mut() else {
            return;
        };
        let before = record.clone();
        if record.phase != phase {
            record.phase = phase.to_string();
            record.since = crate::slot::now_rfc3339();
        }
        record.target = target;
        record.step = step;
        if let Some(result) = checked {
            record.last_check = Some(crate::slot::now_rfc3339());
            record.result = Some(result.to_string());
        }
        if let Some(version) = version {
            record.version = version;
        }
        // A new check time alone is not worth a write.
        self.unpublished |= record.phase != before.phase
            || record.version != before.version
            || record.result != before.result
            || record.target != before.target
            || record.step != before.step;
    }

    /// Publishes changed entries (the record's, a reload's) with the registration, while
    /// registered: one write that replaces the keys, never a withdrawal. While a swap keeps the
    /// instance deregistered, the record is held on its own lease instead.
    pub(super) fn publish_changes(&mut self) {
        if self.unpublished && self.agent.registered {
            self.seams.registry.register(self.entries());
            self.unpublished = false;
        }
        let swapping = matches!(self.agent.phase, Phase::Updating(_)) && !self.agent.registered;
        let held = self.record_entry().filter(|_| swapping);
        self.seams.registry.hold(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::machine::swap::{self, SwapPlan};
    use crate::health::HealthStreak;
    use crate::systemd::ActiveState;
    use crate::systemd::control::DropIn;
    use std::num::NonZeroU32;

    fn agent(phase: Phase, registered: bool, unit: ActiveState) -> Agent {
        let one = NonZeroU32::MIN;
        let mut agent = Agent::new(HealthStreak::new(one, one), false);
        agent.phase = phase;
        agent.registered = registered;
        agent.unit = unit;
        agent
    }

    fn updating(stage: Stage) -> Phase {
        let dropin = |v: &str| DropIn {
            version: v.into(),
            image: format!("web:{v}"),
        };
        let (mut swap, _) = swap::start(SwapPlan {
            old: dropin("2.0.0"),
            new: dropin("3.0.0"),
            rise: 1,
        });
        swap.stage = stage;
        Phase::Updating(swap)
    }

    #[test]
    fn serving_is_said_only_of_a_registered_instance() {
        let shown = |registered, unit| shown_phase(&agent(Phase::Serving, registered, unit)).0;
        assert_eq!(shown(true, ActiveState::Active), "serving");
        assert_eq!(shown(false, ActiveState::Active), "starting");
        assert_eq!(shown(false, ActiveState::Inactive), "not-registered");
    }

    #[test]
    fn waiting_for_a_slot_updating_and_swapping_are_told_apart_with_target_and_step() {
        let waiting = agent(
            updating(Stage::AcquiringSlot {
                waiting: Some("busy: 1/1".into()),
            }),
            true,
            ActiveState::Active,
        );
        assert_eq!(
            shown_phase(&waiting),
            (
                "waiting-for-slot",
                Some("3.0.0".into()),
                Some("acquiring-slot".into())
            )
        );
        let pulling = agent(updating(Stage::Prepulling), true, ActiveState::Active);
        assert_eq!(shown_phase(&pulling).0, "updating");
        let draining = agent(updating(Stage::Draining), false, ActiveState::Active);
        assert_eq!(
            shown_phase(&draining),
            ("swapping", Some("3.0.0".into()), Some("draining".into()))
        );
    }
}
