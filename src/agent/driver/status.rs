//! What the driver tells systemd and the metrics about itself: the sd_notify STATUS line (what is
//! true of the registration, and why not when it is not), the phase and registration gauges.

use tracing::debug;

use super::Driver;
use crate::agent::machine::state::Agent;
use crate::health::Probe;
use crate::notify::{self, NotifyState};
use crate::registry::{Published, Registry};
use crate::systemd::LoadState;
use crate::systemd::control::UnitControl;

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Sends STATUS when the line changed.
    pub(super) fn report_status(&self, last: &mut String, published: &Published) {
        if let Some(metrics) = &self.options.metrics {
            metrics.set_phase(self.agent.phase.label());
            metrics.set_registered(matches!(published, Published::Registered { .. }));
        }
        let load = self.seams.unit.borrow().load.clone();
        let line = status_line(&self.agent, published, &load, &self.options.unit_name);
        self.show_state();
        if *last != line {
            debug!(instance = %self.options.instance, "status: {line}");
            notify::notify(&[NotifyState::Status(&line)]);
            *last = line;
        }
    }
}

/// The sd_notify STATUS line: what is true of the registration, and why not when it is not.
pub(super) fn status_line(
    agent: &Agent,
    published: &Published,
    load: &LoadState,
    unit: &str,
) -> String {
    match published {
        _ if load.is_unusable() => format!("not registered: unit {unit} is {load}"),
        Published::Unreachable { error } if agent.registered => {
            format!("not registered: etcd unreachable ({error})")
        }
        _ => agent.status(),
    }
}
