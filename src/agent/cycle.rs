//! One pass of the update work, paced by [`PollSchedule`]: read the running version from the unit,
//! check the update source, validate an offer (refusing a bad one with a 3/0 event), take an
//! update slot, and give it back. The swap extends this pass between taking and releasing the slot;
//! until it does, the daemon only runs the pass in a dry run, where every write is printed by the
//! seam that would make it (`dry-run: would …`), so the printed steps are the pass itself.

use std::sync::Arc;
use std::time::Duration;

use semver::Version;
use tracing::{info, warn};

use super::execute::SwapSeams;
use crate::config::UpdateSettings;
use crate::control::CheckReport;
use crate::dry_run::would;
use crate::omaha::{
    AnyUpdateSource, CheckOutcome, Event, PollResult, PollSchedule, UpdateSource, validate_offer,
};
use crate::slot::{Acquisition, AnySlots, SlotLock};
use crate::systemd::control::UnitControl;

mod reload;
mod swaps;
pub use reload::UpdateReload;
pub use swaps::SwapConfig;

/// What one pass ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassOutcome {
    /// The source may not be asked (a real service in a dry run).
    NotChecked,
    /// The running version could not be read.
    UnknownVersion {
        error: String,
    },
    NoUpdate,
    OnHold {
        reason: String,
    },
    /// The check failed or the answer was unusable.
    Failed {
        kind: String,
        detail: String,
    },
    /// The offer was refused (and reported with 3/0).
    Refused {
        kind: String,
        detail: String,
    },
    /// A valid offer, and what became of the slot.
    Offered {
        version: Version,
        image: String,
        sha256: Option<String>,
        slot: SlotOutcome,
    },
}

impl PassOutcome {
    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            PassOutcome::NotChecked => "not-checked",
            PassOutcome::UnknownVersion { .. } => "unknown-version",
            PassOutcome::NoUpdate => "no-update",
            PassOutcome::OnHold { .. } => "on-hold",
            PassOutcome::Failed { .. } => "error",
            PassOutcome::Refused { .. } => "refused",
            PassOutcome::Offered { .. } => "update",
        }
    }

    /// The outcome as `update-check` prints it.
    pub fn report(&self) -> CheckReport {
        match self {
            PassOutcome::NotChecked => CheckReport::error(
                "dry-run",
                "a dry run sends no check to a real update service: the service counts an \
                 answered offer as a granted update",
            ),
            PassOutcome::UnknownVersion { error } => CheckReport::error("unknown-version", error),
            PassOutcome::NoUpdate => CheckReport::NoUpdate,
            PassOutcome::OnHold { reason } => CheckReport::OnHold {
                reason: reason.clone(),
            },
            PassOutcome::Failed { kind, detail } | PassOutcome::Refused { kind, detail } => {
                CheckReport::error(kind, detail)
            }
            PassOutcome::Offered {
                version,
                image,
                sha256,
                ..
            } => CheckReport::Update {
                version: version.to_string(),
                image: image.clone(),
                sha256: sha256.clone(),
            },
        }
    }
}

/// The slot step of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// Taken (and, until the swap lands, given back at once).
    Taken,
    /// Every slot is held; the pass ends and the next one tries again.
    Busy {
        detail: String,
    },
    /// The group is halted.
    Halted {
        version: String,
        reason: String,
    },
    Error {
        detail: String,
    },
}

/// The update side of the daemon: its source, slots, the unit's control and the poll pacing.
pub struct UpdatePass<C: UnitControl> {
    seams: Arc<SwapSeams<C>>,
    settings: UpdateSettings,
    schedule: PollSchedule,
    /// The version the unit ran at the last pass that could read it.
    running: Option<Version>,
    /// Set when this pass applies the updates it is offered (see [`swaps`]).
    swaps: Option<swaps::Swaps>,
    /// The last pass's result as `update-check` prints it.
    last_report: Option<CheckReport>,
    /// Settings of a reloaded configuration, in force from the next pass (see [`reload`]).
    reloaded: Option<UpdateReload>,
}

impl<C: UnitControl> UpdatePass<C> {
    /// A pass over these seams, polling at `settings.interval`.
    pub fn new(
        source: AnyUpdateSource,
        slots: AnySlots,
        control: C,
        settings: UpdateSettings,
    ) -> UpdatePass<C> {
        let schedule = PollSchedule::new(settings.interval);
        UpdatePass {
            seams: Arc::new(SwapSeams {
                source,
                slots,
                control,
            }),
            settings,
            schedule,
            running: None,
            swaps: None,
            last_report: None,
            reloaded: None,
        }
    }

    /// The last pass's result as `update-check` prints it.
    pub fn last_report(&self) -> Option<&CheckReport> {
        self.last_report.as_ref()
    }

    /// The version the unit ran at the last pass that could read it.
    pub fn running(&self) -> Option<&Version> {
        self.running.as_ref()
    }

    /// Runs one pass; returns its outcome and the delay before the next one.
    pub async fn run(&mut self) -> (PassOutcome, Duration) {
        self.apply_reload();
        let outcome = self.pass().await;
        self.last_report = Some(outcome.report());
        let result = match &outcome {
            PassOutcome::Failed { .. } | PassOutcome::UnknownVersion { .. } => PollResult::Failure,
            PassOutcome::OnHold { .. } => PollResult::OnHold,
            _ => PollResult::Success,
        };
        (outcome, self.schedule.next_delay(result))
    }

    async fn pass(&mut self) -> PassOutcome {
        let source = self.seams.source.describe();
        if !self.seams.source.may_check() {
            would(format_args!(
                "check for updates at {source} (not sent in a dry run: the service counts an \
                 answered offer as a granted update)"
            ));
            return PassOutcome::NotChecked;
        }
        let current = match self.running_version().await {
            Ok(version) => {
                self.running = Some(version.clone());
                version
            }
            Err(error) => {
                warn!(error = %error, "cannot check for updates: the running version is unknown");
                return PassOutcome::UnknownVersion { error };
            }
        };
        let offer = match self.seams.source.check(&current, false).await {
            Err(err) => {
                warn!(source = %source, error = %err, kind = err.kind(), "update check failed");
                return PassOutcome::Failed {
                    kind: err.kind().to_string(),
                    detail: err.to_string(),
                };
            }
            Ok(CheckOutcome::NoUpdate) => {
                info!(source = %source, current = %current, "update check: no update");
                self.checked(format_args!("no update (running {current})"));
                return PassOutcome::NoUpdate;
            }
            Ok(CheckOutcome::OnHold { reason }) => {
                info!(source = %source, reason = %reason, "update check: on hold");
                self.checked(format_args!("on hold, {reason} (running {current})"));
                return PassOutcome::OnHold { reason };
            }
            Ok(CheckOutcome::Error { kind, detail }) => {
                warn!(source = %source, kind = kind.as_str(), detail = %detail, "update check: unusable answer");
                self.checked(format_args!("unusable answer, {detail}"));
                return PassOutcome::Failed {
                    kind: kind.as_str().to_string(),
                    detail,
                };
            }
            Ok(CheckOutcome::Update(offer)) => offer,
        };
        let update = &self.settings;
        let valid = match validate_offer(&offer, &current, &update.image, update.pin_digest) {
            Ok(valid) => valid,
            Err(refusal) => {
                warn!(error = %refusal, "refused the offered update");
                self.checked(format_args!("refused the offer: {refusal}"));
                let event = Event::Failed {
                    error_code: refusal.error_code(),
                };
                if let Err(err) = self.seams.source.send_event(&current, event).await {
                    warn!(error = %err, "failed to report the refused offer");
                }
                return PassOutcome::Refused {
                    kind: refusal.kind().to_string(),
                    detail: refusal.to_string(),
                };
            }
        };
        info!(current = %current, offered = %valid.version, image = %valid.image.as_str(), "update offered");
        self.checked(format_args!(
            "{} offered (running {current}), image {}",
            valid.version,
            valid.image.as_str()
        ));
        let slot = self.slot(&valid.version).await;
        PassOutcome::Offered {
            version: valid.version,
            image: valid.image.as_str().to_string(),
            sha256: valid.sha256,
            slot,
        }
    }

    /// Takes a slot for `version` and gives it back: the place the swap goes.
    async fn slot(&self, version: &Version) -> SlotOutcome {
        match self.seams.slots.acquire(&version.to_string()).await {
            Ok(Acquisition::Acquired) => {
                if let Err(err) = self.seams.slots.release().await {
                    warn!(error = %err, kind = err.kind(), "failed to release the update slot");
                }
                SlotOutcome::Taken
            }
            Ok(Acquisition::Busy { detail }) => {
                info!(detail = %detail, "every update slot is taken; waiting for the next check");
                SlotOutcome::Busy { detail }
            }
            Ok(Acquisition::Halted { version, reason }) => {
                info!(halted_by = %version, reason = %reason, "the group's rollout is halted");
                SlotOutcome::Halted { version, reason }
            }
            Err(err) => {
                warn!(error = %err, kind = err.kind(), "failed to take an update slot");
                SlotOutcome::Error {
                    detail: err.to_string(),
                }
            }
        }
    }

    /// In a dry run, prints the check and its result as one line.
    fn checked(&self, result: std::fmt::Arguments<'_>) {
        if self.seams.source.dry_run() {
            would(format_args!(
                "check for updates at {}: {result}",
                self.seams.source.describe()
            ));
        }
    }

    async fn running_version(&self) -> Result<Version, String> {
        let running = self
            .seams
            .control
            .running()
            .await
            .map_err(|e| e.to_string())?;
        let raw = running
            .version
            .ok_or_else(|| "the unit sets no SIDEKICK_VERSION".to_string())?;
        Version::parse(&raw)
            .map_err(|e| format!("SIDEKICK_VERSION={raw} is not a semantic version: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::omaha::{InMemoryUpdateSource, LocalRelease, UpdateBackend, error_code};
    use crate::slot::{MemorySlots, SlotHolder};
    use crate::systemd::control::{MemoryUnitControl, RunningVersion};

    fn settings() -> UpdateSettings {
        UpdateSettings {
            enabled: true,
            server: None,
            app_id: "app".into(),
            track: "stable".into(),
            arch: "x64".into(),
            interval: Duration::from_secs(60),
            image: "{codebase}:{version}".into(),
            pin_digest: false,
            ca_file: None,
            allow_insecure: false,
            allowed_repositories: Vec::new(),
        }
    }

    fn release(version: &str, codebase: &str) -> LocalRelease {
        LocalRelease {
            version: version.into(),
            codebase: codebase.into(),
            name: String::new(),
            sha256: None,
            size: None,
        }
    }

    fn who(name: &str) -> SlotHolder {
        SlotHolder {
            holder: name.into(),
            instance: name.into(),
        }
    }

    /// A pass over in-memory seams for an instance running `running`; returns the slots too.
    fn pass(
        offered: Option<LocalRelease>,
        running: Option<&str>,
    ) -> (UpdatePass<MemoryUnitControl>, MemorySlots) {
        let slots = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
        let source = InMemoryUpdateSource::new(offered);
        let control = MemoryUnitControl::new(RunningVersion {
            version: running.map(str::to_string),
            image: None,
        });
        let pass = UpdatePass::new(
            AnyUpdateSource::new(UpdateBackend::Memory(source), false),
            AnySlots::Memory(slots.join(who("web-1"))),
            control,
            settings(),
        );
        (pass, slots)
    }

    fn memory_events(pass: &UpdatePass<MemoryUnitControl>) -> Vec<Event> {
        match &pass.seams.source.backend_for_tests() {
            UpdateBackend::Memory(source) => source.events().into_iter().map(|e| e.event).collect(),
            UpdateBackend::Http(_) => unreachable!("memory source"),
        }
    }

    #[tokio::test]
    async fn a_valid_offer_takes_the_slot_and_gives_it_back() {
        let (mut pass, slots) = pass(Some(release("2.0.0", "reg/web")), Some("1.0.0"));
        let (outcome, delay) = pass.run().await;
        assert_eq!(
            outcome,
            PassOutcome::Offered {
                version: Version::new(2, 0, 0),
                image: "reg/web:2.0.0".into(),
                sha256: None,
                slot: SlotOutcome::Taken
            }
        );
        assert_eq!(
            pass.last_report(),
            Some(&CheckReport::Update {
                version: "2.0.0".into(),
                image: "reg/web:2.0.0".into(),
                sha256: None
            })
        );
        assert!(slots.holders().is_empty(), "slot given back");
        assert!(delay >= Duration::from_secs(54) && delay <= Duration::from_secs(66));
        assert!(
            memory_events(&pass).is_empty(),
            "no event for a taken slot yet"
        );
    }

    #[tokio::test]
    async fn nothing_newer_is_no_update_and_takes_no_slot() {
        let (mut pass, _slots) = pass(Some(release("1.0.0", "reg/web")), Some("1.0.0"));
        assert_eq!(pass.run().await.0, PassOutcome::NoUpdate);
    }

    #[tokio::test]
    async fn a_refused_offer_is_reported_with_3_0_and_takes_no_slot() {
        let (mut pass, slots) = pass(Some(release("2.0.0", "Bad Image!")), Some("1.0.0"));
        let (outcome, _) = pass.run().await;
        assert!(
            matches!(&outcome, PassOutcome::Refused { kind, .. } if kind == "invalid-image"),
            "{outcome:?}"
        );
        assert_eq!(
            memory_events(&pass),
            vec![Event::Failed {
                error_code: error_code::OFFER_REFUSED
            }]
        );
        assert!(slots.holders().is_empty());
    }

    #[tokio::test]
    async fn a_busy_or_halted_group_ends_the_pass_without_a_slot() {
        let (mut pass, slots) = pass(Some(release("2.0.0", "reg/web")), Some("1.0.0"));
        let other = slots.join(who("web-2"));
        assert_eq!(other.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
        let (outcome, _) = pass.run().await;
        assert!(
            matches!(
                outcome,
                PassOutcome::Offered {
                    slot: SlotOutcome::Busy { .. },
                    ..
                }
            ),
            "{outcome:?}"
        );
        other.release().await.unwrap();
        other.halt("1.9.0", "unhealthy").await.unwrap();
        let (outcome, _) = pass.run().await;
        assert_eq!(
            outcome,
            PassOutcome::Offered {
                version: Version::new(2, 0, 0),
                image: "reg/web:2.0.0".into(),
                sha256: None,
                slot: SlotOutcome::Halted {
                    version: "1.9.0".into(),
                    reason: "unhealthy".into()
                }
            }
        );
    }

    #[tokio::test]
    async fn an_unknown_running_version_is_a_failure_that_backs_off() {
        let (mut pass, _slots) = pass(Some(release("2.0.0", "reg/web")), None);
        let (outcome, first) = pass.run().await;
        assert!(
            matches!(outcome, PassOutcome::UnknownVersion { .. }),
            "{outcome:?}"
        );
        let (_, second) = pass.run().await;
        assert!(second > first, "backs off: {first:?} then {second:?}");
        let (mut bad, _slots) = self::pass(Some(release("2.0.0", "reg/web")), Some("v1"));
        let (outcome, _) = bad.run().await;
        assert!(
            matches!(&outcome, PassOutcome::UnknownVersion { error } if error.contains("SIDEKICK_VERSION=v1")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_dry_run_sends_no_event_for_a_refused_offer() {
        let source = InMemoryUpdateSource::new(Some(release("2.0.0", "Bad Image!")));
        let control = MemoryUnitControl::new(RunningVersion {
            version: Some("1.0.0".into()),
            image: None,
        });
        let slots = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
        let mut pass = UpdatePass::new(
            AnyUpdateSource::new(UpdateBackend::Memory(source), true),
            AnySlots::Memory(slots),
            control,
            settings(),
        );
        assert!(matches!(pass.run().await.0, PassOutcome::Refused { .. }));
        assert!(
            memory_events(&pass).is_empty(),
            "a dry run prints the event, sends none"
        );
    }
}
