//! The pass that applies what it is offered: checks through the update policy
//! ([`crate::agent::update::policy`]), hands a valid offer to the swap as a [`SwapPlan`], runs the swap's
//! slow steps ([`crate::agent::update::steps`]), keeps the journal and the denylist, and on start
//! resumes a journaled swap ([`crate::agent::machine::recover`]).

use std::time::Duration;

use semver::Version;
use tracing::{error, info, warn};

use super::UpdatePass;
use crate::agent::machine::swap::{SwapAction, SwapPhase, SwapPlan};
use crate::agent::update::journal::Journal;
use crate::agent::update::policy::{self, CheckResult, Denylist, OfferRules, Poller};
use crate::agent::update::steps::{self, SlowStep, StepSettings};
use crate::control::CheckReport;
use crate::slot::SlotLock;
use crate::systemd::control::UnitControl;

/// How this instance swaps: the step settings, the verify rule, where the journal and the
/// denylist live.
pub struct SwapConfig {
    pub steps: StepSettings,
    pub verify_timeout: Duration,
    /// `health.rise`, or 0 when no check is configured.
    pub rise: u32,
    pub journal: Journal,
    pub denylist: Denylist,
    /// `--dry-run`: the journal is neither written nor read, and the denylist not written.
    pub dry_run: bool,
}

pub(super) struct Swaps {
    config: SwapConfig,
    poller: Poller,
}

impl Swaps {
    /// Takes a reload's swap settings and poll period (between swaps).
    pub(super) fn reload(&mut self, reload: &super::UpdateReload) {
        self.poller.set_interval(reload.settings.interval);
        self.config.steps = reload.steps.clone();
        self.config.verify_timeout = reload.verify_timeout;
        self.config.rise = reload.rise;
    }
}

impl<C: UnitControl + 'static> UpdatePass<C> {
    /// Makes this pass apply the updates it is offered.
    pub fn with_swaps(mut self, config: SwapConfig) -> Self {
        let poller = Poller::new(self.settings.interval);
        self.swaps = Some(Swaps { config, poller });
        self
    }

    /// Whether this pass applies updates.
    pub fn swaps(&self) -> bool {
        self.swaps.is_some()
    }

    /// One check: a plan for a valid offer not on the denylist, the result's label for
    /// metrics, and the delay before the next check.
    pub async fn poll(&mut self) -> (Option<SwapPlan>, &'static str, Duration) {
        self.apply_reload();
        let Some(swaps) = self.swaps.as_mut() else {
            return (None, "not-checked", self.settings.interval);
        };
        let (current, old) = match policy::running_version(&self.seams.control).await {
            Ok(running) => running,
            Err(err) => {
                warn!(error = %err, kind = err.kind(), "cannot check for updates: the running version is unknown");
                let result = CheckResult::Unreachable {
                    kind: err.kind().to_string(),
                    detail: err.to_string(),
                };
                self.last_report = Some(CheckReport::from(&result));
                return (None, "unknown-version", swaps.poller.record(&result).0);
            }
        };
        self.running = Some(current.clone());
        let rules = OfferRules {
            image: self.settings.image.clone(),
            pin_digest: self.settings.pin_digest,
            server: self.settings.server.clone(),
        };
        let denylist = &swaps.config.denylist;
        let result = match self.seams.slots.halted().await {
            Ok(Some(halt)) => CheckResult::Halted {
                version: halt.version,
                reason: halt.reason,
            },
            Ok(None) => policy::check(&self.seams.source, &current, &rules, denylist, false).await,
            // Check anyway: taking the slot sees a halt too.
            Err(err) => {
                warn!(error = %err, kind = err.kind(), "cannot tell whether the group is halted");
                policy::check(&self.seams.source, &current, &rules, denylist, false).await
            }
        };
        if self.seams.source.dry_run() {
            let line = match &result {
                CheckResult::Offer(update) => format!(
                    "{} offered (running {current}), image {}",
                    update.version,
                    update.image.as_str()
                ),
                other => format!("{} (running {current})", other.summary()),
            };
            let source = self.seams.source.describe();
            crate::dry_run::would(format_args!("check for updates at {source}: {line}"));
        }
        self.last_report = Some(CheckReport::from(&result));
        let (delay, changed) = swaps.poller.record(&result);
        if changed {
            info!(current = %current, next_in = ?delay, "update check: {}", result.summary());
        }
        let label = match &result {
            CheckResult::Offer(_) => "update",
            CheckResult::NoUpdate => "no-update",
            CheckResult::OnHold { .. } => "on-hold",
            CheckResult::Denylisted { .. } => "denylisted",
            CheckResult::Refused { .. } => "refused",
            CheckResult::Halted { .. } => "halted",
            CheckResult::ServerStatus { .. } | CheckResult::Unreachable { .. } => "error",
        };
        let plan = match result {
            CheckResult::Offer(update) => Some(policy::plan(&update, old, swaps.config.rise)),
            _ => None,
        };
        (plan, label, delay)
    }

    /// Runs the slow steps of `actions` for an instance reporting `current` to the service.
    pub fn steps(&self, current: Version, actions: Vec<SwapAction>) -> Option<SlowStep> {
        let swaps = self.swaps.as_ref()?;
        let settings = swaps.config.steps.clone();
        Some(steps::run_steps(
            self.seams.clone(),
            settings,
            current,
            actions,
        ))
    }

    /// Whether this is a dry run: steps are printed, nothing is written.
    pub fn dry_run(&self) -> bool {
        self.seams.source.dry_run()
    }

    /// `swap.verify_timeout`.
    pub fn verify_timeout(&self) -> Option<Duration> {
        self.swaps.as_ref().map(|s| s.config.verify_timeout)
    }

    /// Records `phase` before its side effects.
    pub fn journal(&self, phase: &SwapPhase) {
        if let Some(swaps) = &self.swaps
            && !swaps.config.dry_run
            && let Err(err) = swaps.config.journal.write(phase)
        {
            error!(error = %err, kind = err.kind(), "failed to journal the swap step; a crash now would leave it unrecorded");
        }
    }

    /// Removes the journal: the swap is over.
    pub fn clear_journal(&self) {
        if let Some(swaps) = &self.swaps
            && !swaps.config.dry_run
            && let Err(err) = swaps.config.journal.clear()
        {
            error!(error = %err, kind = err.kind(), "failed to remove the swap journal");
        }
    }

    /// Denies `version` on this instance until a newer one is offered.
    pub fn deny(&mut self, version: &str) {
        let Some(swaps) = self.swaps.as_mut() else {
            return;
        };
        if swaps.config.dry_run {
            crate::dry_run::would(format_args!("add {version} to the local denylist"));
            return;
        }
        match Version::parse(version) {
            Ok(version) => {
                if let Err(err) = swaps.config.denylist.add(&version) {
                    error!(error = %err, kind = err.kind(), "failed to denylist {version}");
                }
            }
            Err(err) => error!(error = %err, "cannot denylist {version:?}: not semver"),
        }
    }

    /// On start: the journaled swap, resumed from what systemd says runs. An unreadable journal
    /// is an error (never discarded).
    pub async fn recover(&mut self) -> anyhow::Result<Option<(SwapPhase, Vec<SwapAction>)>> {
        let Some(swaps) = self.swaps.as_ref().filter(|s| !s.config.dry_run) else {
            return Ok(None);
        };
        let Some(phase) = swaps.config.journal.read()? else {
            return Ok(None);
        };
        let observed = self.seams.control.running().await?;
        info!(
            journal = %swaps.config.journal.path().display(),
            to = %phase.plan.new.version,
            running = ?observed.version,
            "found an interrupted swap; resuming it"
        );
        Ok(Some(crate::agent::machine::recover(phase, &observed)))
    }
}
