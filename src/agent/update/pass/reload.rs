//! What a reloaded configuration brings to the update pass, held until the next pass begins: a
//! swap under way finishes with the settings it started with, and the next check is the first
//! to use the new ones.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use super::UpdatePass;
use crate::agent::update::steps::StepSettings;
use crate::config::UpdateSettings;
use crate::omaha::AnyUpdateSource;
use crate::systemd::control::UnitControl;

/// The update and swap settings of a reloaded configuration.
pub struct UpdateReload {
    pub settings: UpdateSettings,
    /// A client for a new `update.server`, `arch` or `ca_file`; `None` keeps the one in use.
    pub source: Option<AnyUpdateSource>,
    pub steps: StepSettings,
    pub verify_timeout: Duration,
    /// `health.rise`, or 0 when no check is configured: what a swap's verification counts.
    pub rise: u32,
}

impl<C: UnitControl> UpdatePass<C> {
    /// Holds `reload` for the next pass; a later reload replaces an earlier one still held, but
    /// not the client the earlier one brought, unless it brings its own.
    pub fn hold_reload(&mut self, mut reload: UpdateReload) {
        if let Some(earlier) = self.reloaded.take() {
            reload.source = reload.source.or(earlier.source);
        }
        self.reloaded = Some(reload);
    }

    /// The poll period in force (a held reload's once the next pass begins).
    pub fn interval(&self) -> Duration {
        self.reloaded
            .as_ref()
            .map_or(self.settings.interval, |r| r.settings.interval)
    }

    /// Puts a held reload in force, at the start of a pass. A swap step still sending an event
    /// holds the seams: then the reload waits for the pass after.
    pub(super) fn apply_reload(&mut self) {
        let Some(mut reload) = self.reloaded.take() else {
            return;
        };
        if let Some(source) = reload.source.take() {
            match Arc::get_mut(&mut self.seams) {
                Some(seams) => seams.source = source,
                None => {
                    debug!("a swap step still uses the update client; the reload waits a pass");
                    reload.source = Some(source);
                    self.reloaded = Some(reload);
                    return;
                }
            }
        }
        self.poller.set_interval(reload.settings.interval);
        self.config.steps = reload.steps;
        self.config.verify_timeout = reload.verify_timeout;
        self.config.rise = reload.rise;
        self.settings = reload.settings;
        info!("reloaded update and swap settings in force from this pass");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::update::fixtures::{
        memory_source, pass, release, step_settings, update_settings,
    };

    fn reload(interval: Duration, source: Option<AnyUpdateSource>) -> UpdateReload {
        UpdateReload {
            settings: update_settings(interval),
            source,
            steps: step_settings(Vec::new(), Duration::ZERO),
            verify_timeout: Duration::from_secs(1),
            rise: 1,
        }
    }

    fn offering(version: &str) -> Option<AnyUpdateSource> {
        Some(memory_source(Some(release(version, "reg/web")), false))
    }

    #[tokio::test]
    async fn a_held_reload_is_in_force_from_the_next_pass_with_its_client_and_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pass, _slots) = pass(memory_source(None, false), Some("1.0.0"), dir.path());
        assert_eq!(pass.poll(true).await.label, "no-update");
        let new = Duration::from_secs(20);
        pass.hold_reload(reload(new, offering("2.0.0")));
        assert_eq!(pass.interval(), new);
        assert_eq!(
            pass.settings.interval,
            Duration::from_secs(60),
            "held, not in force"
        );
        let result = pass.poll(true).await;
        assert_eq!(result.label, "update", "the new client answers");
        assert!(
            result.delay >= new.mul_f64(0.9) && result.delay <= new.mul_f64(1.1),
            "{:?}",
            result.delay
        );
    }

    #[tokio::test]
    async fn a_later_reload_keeps_the_client_an_earlier_one_brought() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pass, _slots) = pass(memory_source(None, false), Some("1.0.0"), dir.path());
        pass.hold_reload(reload(Duration::from_secs(20), offering("2.0.0")));
        pass.hold_reload(reload(Duration::from_secs(30), None));
        assert_eq!(pass.interval(), Duration::from_secs(30));
        assert_eq!(pass.poll(true).await.label, "update");
    }
}
