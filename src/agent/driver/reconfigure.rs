//! Settings of a reloaded configuration, put in force while the loop runs: the registration's
//! entries (published again as one change, never withdrawn for it), the probe and its rules, the
//! update settings, which the update pass holds until its next pass, and `[rollout]`, which the
//! rollout agent judges the next slot request by (its hash goes into the instance record).
//! `sidekick run` reads and checks the configuration; the driver only applies what it is handed.

use std::time::Duration;

use tokio::time::Instant;

use super::Driver;
use crate::agent::machine::state::{HealthRules, Observation};
use crate::agent::update::UpdateReload;
use crate::health::Probe;
use crate::notify;
use crate::registry::{Entry, Registry};
use crate::rollout::RolloutPolicy;
use crate::systemd::control::UnitControl;

/// What a reloaded configuration changes in a running driver.
pub struct Reconfigure<P> {
    /// The registration's keys and values under the new settings.
    pub entries: Vec<Entry>,
    /// The announced host, named in the instance record.
    pub host: String,
    /// The probe the new `[health]` section describes.
    pub probe: P,
    /// `health.interval`.
    pub interval: Duration,
    pub rules: HealthRules,
    /// The update and swap settings, for the next update pass.
    pub updates: UpdateReload,
    /// `[rollout]` and the floor of the swap estimate (`swap.drain + start_timeout +
    /// verify_timeout`), in force from the rollout agent's next slot request.
    pub rollout: RolloutPolicy,
    pub rollout_floor: Duration,
}

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Puts `reload` in force, tells systemd the reload is done (`READY=1`), and returns the
    /// observation that hands the state machine its health rules. A shorter probe or poll period
    /// pulls the next probe or pass in.
    pub(super) fn reconfigure(
        &mut self,
        reload: Reconfigure<P>,
        next_probe: &mut Instant,
        next_pass: &mut Option<Instant>,
    ) -> Observation {
        self.seams.probe = reload.probe;
        if reload.interval != self.options.interval {
            self.options.interval = reload.interval;
            *next_probe = (*next_probe).min(Instant::now() + reload.interval);
        }
        if reload.entries != self.options.entries {
            self.options.entries = reload.entries;
            self.unpublished = true;
        }
        if let (Some(options), Some(record)) = (self.options.record.as_mut(), self.record.as_mut())
            && options.host != reload.host
        {
            options.host = reload.host.clone();
            record.host = reload.host;
            self.unpublished = true;
        }
        if let Some(rollout) = &self.rollout
            && rollout.reconfigure(reload.rollout, reload.rollout_floor)
            && let Some(record) = self.record.as_mut()
        {
            record.policy = Some(rollout.policy_hash());
            self.unpublished = true;
        }
        match self.seams.updates.as_mut() {
            Some(updates) => {
                let interval = reload.updates.settings.interval;
                if interval != updates.interval()
                    && let Some(at) = next_pass
                {
                    *at = (*at).min(Instant::now() + interval);
                }
                updates.hold_reload(reload.updates);
            }
            // The pass is out running (or there is none): it gets them when it is back.
            None => self.held_update_reload = Some(reload.updates),
        }
        notify::ready();
        Observation::Reconfigured(reload.rules)
    }
}
