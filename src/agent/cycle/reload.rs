//! What a reloaded configuration brings to the update pass, held until the next pass begins: a
//! swap under way finishes with the settings it started with, and the next check is the first
//! to use the new ones.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use super::UpdatePass;
use crate::agent::execute::StepSettings;
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
        self.schedule.set_interval(reload.settings.interval);
        if let Some(swaps) = self.swaps.as_mut() {
            swaps.reload(&reload);
        }
        self.settings = reload.settings;
        info!("reloaded update and swap settings in force from this pass");
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::agent::cycle::PassOutcome;
    use crate::omaha::{InMemoryUpdateSource, LocalRelease, UpdateBackend};
    use crate::slot::{AnySlots, MemorySlots, SlotHolder};
    use crate::systemd::control::{MemoryUnitControl, RunningVersion};

    fn settings(interval: Duration) -> UpdateSettings {
        UpdateSettings {
            enabled: true,
            server: None,
            app_id: "app".into(),
            track: "stable".into(),
            arch: "x64".into(),
            interval,
            image: "{codebase}:{version}".into(),
            pin_digest: false,
            ca_file: None,
            allow_insecure: false,
            allowed_repositories: Vec::new(),
        }
    }

    fn source(offered: Option<&str>) -> AnyUpdateSource {
        let release = offered.map(|version| LocalRelease {
            version: version.into(),
            codebase: "reg/web".into(),
            name: String::new(),
            sha256: None,
            size: None,
        });
        AnyUpdateSource::new(
            UpdateBackend::Memory(InMemoryUpdateSource::new(release)),
            false,
        )
    }

    fn reload(interval: Duration, source: Option<AnyUpdateSource>) -> UpdateReload {
        UpdateReload {
            settings: settings(interval),
            source,
            steps: StepSettings {
                prepull: Vec::new(),
                drain: Duration::ZERO,
                start_timeout: Duration::from_secs(1),
            },
            verify_timeout: Duration::from_secs(1),
            rise: 1,
        }
    }

    /// A pass running 1.0.0 with nothing offered, polling every minute.
    fn pass() -> UpdatePass<MemoryUnitControl> {
        let who = SlotHolder {
            holder: "web-1".into(),
            instance: "web-1".into(),
        };
        let control = MemoryUnitControl::new(RunningVersion {
            version: Some("1.0.0".into()),
            image: None,
        });
        UpdatePass::new(
            source(None),
            AnySlots::Memory(MemorySlots::new(NonZeroU32::new(1).unwrap(), who)),
            control,
            settings(Duration::from_secs(60)),
        )
    }

    #[tokio::test]
    async fn a_held_reload_is_in_force_from_the_next_pass_with_its_client_and_interval() {
        let mut pass = pass();
        assert_eq!(pass.run().await.0, PassOutcome::NoUpdate);
        let new = Duration::from_secs(20);
        pass.hold_reload(reload(new, Some(source(Some("2.0.0")))));
        assert_eq!(pass.interval(), new);
        assert_eq!(
            pass.settings.interval,
            Duration::from_secs(60),
            "held, not in force"
        );
        let (outcome, delay) = pass.run().await;
        assert!(
            matches!(outcome, PassOutcome::Offered { .. }),
            "the new client answers: {outcome:?}"
        );
        assert!(
            delay >= new.mul_f64(0.9) && delay <= new.mul_f64(1.1),
            "{delay:?}"
        );
    }

    #[tokio::test]
    async fn a_later_reload_keeps_the_client_an_earlier_one_brought() {
        let mut pass = pass();
        pass.hold_reload(reload(Duration::from_secs(20), Some(source(Some("2.0.0")))));
        pass.hold_reload(reload(Duration::from_secs(30), None));
        assert_eq!(pass.interval(), Duration::from_secs(30));
        assert!(matches!(pass.run().await.0, PassOutcome::Offered { .. }));
    }
}
