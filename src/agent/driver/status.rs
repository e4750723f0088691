//! What the driver tells systemd and the metrics about itself: the sd_notify STATUS line (what is
//! true of the registration, and why not when it is not), the phase and registration gauges.

use std::time::Duration;

use tokio::time::Instant;
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
        let line = with_step_time(line, self.swap_timer.in_step(Instant::now()));
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

/// A swap step shorter than this is not timed in STATUS.
pub const STEP_SHOWN_AFTER: Duration = Duration::from_secs(60);

/// How often STATUS is sent again while a swap runs, so the time in a step that waits for
/// something that never comes (a slot, etcd) keeps counting there.
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// `line` with the time the swap has spent in its current step, once that is long enough to
/// matter: a wait with no bound (for a slot of a misconfigured group, an offer hours old, a
/// (de)registration etcd never confirms) shows on `systemctl status`. Whole minutes, so the
/// line changes at most once a minute.
pub(super) fn with_step_time(line: String, in_step: Option<(&str, Duration)>) -> String {
    match in_step {
        Some((_, took)) if took >= STEP_SHOWN_AFTER => {
            let minutes = Duration::from_secs(took.as_secs() / 60 * 60);
            format!("{line} (for {})", humantime::format_duration(minutes))
        }
        _ => line,
    }
}
