//! `run --once`: when its one pass is over. The registration must be decided first (registered,
//! the unit not active, or the unit known unhealthy by `fall` failed checks), not merely agree
//! with a start that has not probed yet; with no update pass to wait for, that is the end.

use super::Driver;
use crate::agent::machine::state::Phase;
use crate::health::Probe;
use crate::registry::Registry;
use crate::systemd::control::UnitControl;

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Whether the registration is decided; always outside `--once`.
    pub(super) fn registration_decided(&self) -> bool {
        let agent = &self.agent;
        !self.options.once
            || agent.registered
            || !agent.unit.is_active()
            || (!agent.unchecked && agent.health.known_unhealthy())
    }

    /// Whether `--once` is done with nothing left to wait for: settled, serving, no update pass
    /// configured or out.
    pub(super) fn once_done(&self, settled: bool, passing: bool) -> bool {
        self.options.once
            && settled
            && !passing
            && self.seams.updates.is_none()
            && self.agent.phase == Phase::Serving
    }
}
