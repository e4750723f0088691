//! The fleet view's instance record as the driver keeps it: brought up to date from the agent's
//! phase and the update passes, and published with the registration it belongs to.

use super::Driver;
use crate::agent::machine::state::Phase;
use crate::agent::machine::swap::Stage;
use crate::health::Probe;
use crate::registry::record;
use crate::registry::{Entry, Registry};
use crate::systemd::control::UnitControl;

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// The registration's entries, with the instance record when one is published.
    pub(super) fn entries(&self) -> Vec<Entry> {
        let mut entries = self.options.entries.clone();
        if let (Some(options), Some(record)) = (&self.options.record, &self.record) {
            entries.push(record::entry(
                &options.group,
                &self.options.instance,
                record,
            ));
        }
        entries
    }

    /// Brings the instance record up to date: the phase, and a finished check's result and the
    /// version it read. A change is published with the next registration, or by
    /// [`Self::publish_changes`].
    pub(super) fn update_record(&mut self, checked: Option<&str>, version: Option<String>) {
        let phase = self.agent.phase.label();
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
            || record.result != before.result;
    }

    /// Publishes changed entries (the record's, a reload's) with the registration, while
    /// registered: one write that replaces the keys, never a withdrawal.
    pub(super) fn publish_changes(&mut self) {
        if self.unpublished && self.agent.registered {
            self.seams.registry.register(self.entries());
            self.unpublished = false;
        }
    }
}
