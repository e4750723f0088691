//! The one update pass, paced by [`Poller`]: read the running version from systemd, consult the
//! halt marker, check the update source through the [`policy`] (validate, denylist, a refused
//! offer reported with 3/0), and hand a valid offer to the swap as a [`SwapPlan`]. Between checks
//! it carries the swap's slow steps out ([`steps`]), keeps the [`Journal`] and the [`Denylist`],
//! and on start resumes a journaled swap ([`crate::agent::machine::recover`]).
//!
//! In a dry run every write is printed by the seam that would make it (`dry-run: would …`); a dry
//! run against a real service sends it no check at all, since the service counts an answered
//! offer as a granted update.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use semver::Version;
use tracing::{error, info, warn};

use super::journal::{Journal, JournalError};
use super::policy::{self, CheckResult, Denylist, OfferRules, Poller};
use super::steps::{self, SlowStep, StepSettings, SwapSeams};
use crate::agent::machine::swap::{SwapAction, SwapPhase, SwapPlan};
use crate::config::UpdateSettings;
use crate::control::CheckReport;
use crate::dry_run::would;
use crate::omaha::{AnyUpdateSource, Event, UpdateSource, error_code};
use crate::slot::{AnySlots, SlotLock};
use crate::systemd::control::{UnitControl, UnitNow};
use disk::DiskWriter;

mod disk;
mod reload;
pub use disk::{JournalStore, JournalWrite};
pub use reload::UpdateReload;

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

/// What one pass came to: its label for metrics and the record, the delay before the next one,
/// and the swap a valid offer asks for.
#[derive(Debug)]
pub struct PassResult {
    pub label: &'static str,
    pub delay: Duration,
    pub plan: Option<SwapPlan>,
}

/// The update side of the daemon: its source, slots, the unit's control, the poll pacing and the
/// swap's settings.
pub struct UpdatePass<C: UnitControl> {
    seams: Arc<SwapSeams<C>>,
    settings: UpdateSettings,
    config: SwapConfig,
    poller: Poller,
    /// The version the unit ran at the last pass that could read it.
    running: Option<Version>,
    /// The last pass's result as `update-check` prints it.
    last_report: Option<CheckReport>,
    /// Settings of a reloaded configuration, in force from the next pass (see [`reload`]).
    reloaded: Option<UpdateReload>,
    /// Set by a start that found no journal, until the service first answers a check: a grant
    /// it holds for this instance then was left by an earlier run (see [`Self::ask`]).
    stale_grant_possible: bool,
    /// The journal's and the denylist's writes, off the driver's task.
    disk: DiskWriter,
    /// See [`Self::recorded`].
    recorded_ahead: AtomicBool,
    /// The group's rollout, which may hold a check (windows, a manual promotion).
    rollout: Option<Arc<crate::rollout::agent::RolloutAgent>>,
}

impl<C: UnitControl + 'static> UpdatePass<C> {
    /// A pass over these seams, polling at `settings.interval` and swapping as `config` says.
    pub fn new(
        source: AnyUpdateSource,
        slots: AnySlots,
        control: C,
        settings: UpdateSettings,
        config: SwapConfig,
    ) -> UpdatePass<C> {
        UpdatePass {
            seams: Arc::new(SwapSeams {
                source,
                slots,
                control,
            }),
            poller: Poller::new(settings.interval),
            settings,
            running: None,
            last_report: None,
            reloaded: None,
            stale_grant_possible: false,
            disk: DiskWriter::spawn(config.journal.clone()),
            recorded_ahead: AtomicBool::new(false),
            config,
            rollout: None,
        }
    }

    /// Holds checks as the group's rollout says (see [`crate::rollout::agent`]).
    pub fn with_rollout(mut self, rollout: Arc<crate::rollout::agent::RolloutAgent>) -> Self {
        self.rollout = Some(rollout);
        self
    }

    /// The group's rollout, when it applies here.
    pub fn rollout(&self) -> Option<&Arc<crate::rollout::agent::RolloutAgent>> {
        self.rollout.as_ref()
    }

    /// The last pass's result as `update-check` prints it.
    pub fn last_report(&self) -> Option<&CheckReport> {
        self.last_report.as_ref()
    }

    /// The version the unit ran at the last pass that could read it.
    pub fn running(&self) -> Option<&Version> {
        self.running.as_ref()
    }

    /// Whether this pass sends checks (a dry run against a real service does not): only then can
    /// it be offered a swap, and only then can an earlier run have left a slot under this holder.
    pub fn checks(&self) -> bool {
        self.seams.source.may_check()
    }

    /// One check: its label, the delay before the next one, and a plan for a valid offer not on
    /// the denylist. `serving` says whether the agent would take an offer now (unit active,
    /// instance registered: [`crate::agent::machine::state::Agent::takes_offer`]); when not, no
    /// check is sent at all, like a closed rollout window: the service keeps an answered offer
    /// granted until a 3/x and offers it again, so a grant taken while it cannot be used would
    /// linger (and be swapped to later, even after the group halted on that version).
    pub async fn poll(&mut self, serving: bool) -> PassResult {
        self.apply_reload();
        let running = match &self.rollout {
            Some(_) => policy::running_version(&self.seams.control)
                .await
                .ok()
                .map(|(v, _)| v.to_string()),
            None => None,
        };
        if let Some(rollout) = self.rollout.clone() {
            // A canary place of this instance with no result is settled only while it serves
            // with no swap in flight (see `crate::rollout::agent`'s `lost` rule).
            let denylist = &self.config.denylist;
            let denylisted =
                |v: &str| policy::parse_version(v).is_ok_and(|v| denylist.contains(&v));
            let settled = running.as_deref().filter(|_| serving);
            rollout.settle(settled, denylisted).await;
        }
        if !serving && self.seams.source.may_check() {
            let result = CheckResult::NotServing;
            self.last_report = Some(CheckReport::from(&result));
            let (delay, changed) = self.poller.record(&result);
            if changed {
                info!(next_in = ?delay, "update check: {}", result.summary());
            }
            return PassResult {
                label: result.label(),
                delay,
                plan: None,
            };
        }
        if let Some(rollout) = self.rollout.clone()
            && let Some(delay) = rollout
                .hold_check(running.as_deref(), self.settings.interval)
                .await
        {
            let label = crate::rollout::agent::CHECK_HELD;
            return PassResult {
                label,
                delay,
                plan: None,
            };
        }
        let (result, plan) = self.check().await;
        self.last_report = Some(CheckReport::from(&result));
        let (delay, changed) = self.poller.record(&result);
        if changed && let Some(current) = &self.running {
            info!(current = %current, next_in = ?delay, "update check: {}", result.summary());
        }
        PassResult {
            label: result.label(),
            delay,
            plan,
        }
    }

    /// The check itself, and the swap a valid offer asks for.
    async fn check(&mut self) -> (CheckResult, Option<SwapPlan>) {
        let source = &self.seams.source;
        if !source.may_check() {
            would(format_args!(
                "check for updates at {} (not sent in a dry run: the service counts an \
                 answered offer as a granted update)",
                source.describe()
            ));
            return (CheckResult::NotChecked, None);
        }
        let (current, old) = match policy::running_version(&self.seams.control).await {
            Ok(running) => running,
            Err(err) => {
                warn!(error = %err, kind = err.kind(), "cannot check for updates: the running version is unknown");
                let result = CheckResult::UnknownVersion {
                    kind: err.kind().to_string(),
                    detail: err.to_string(),
                };
                return (result, None);
            }
        };
        self.running = Some(current.clone());
        // Offers may move the unit only within the repository it runs now.
        let rules = OfferRules::new(&self.settings, Some(old.image.clone()));
        let result = match self.seams.slots.halted().await {
            Ok(Some(halt)) => CheckResult::Halted {
                version: halt.version,
                reason: halt.reason,
            },
            Ok(None) => self.ask(&current, &rules).await,
            // Check anyway: taking the slot sees a halt too.
            Err(err) => {
                warn!(error = %err, kind = err.kind(), "cannot tell whether the group is halted");
                self.ask(&current, &rules).await
            }
        };
        let source = &self.seams.source;
        if source.dry_run() {
            let line = match &result {
                CheckResult::Offer(update) => format!(
                    "{} offered (running {current}), image {}",
                    update.version,
                    update.image.as_str()
                ),
                other => format!("{} (running {current})", other.summary()),
            };
            would(format_args!(
                "check for updates at {}: {line}",
                source.describe()
            ));
        }
        let plan = match &result {
            CheckResult::Offer(update) => Some(policy::plan(update, old, self.config.rise)),
            _ => None,
        };
        (result, plan)
    }

    /// One check sent to the service, and every grant it answers with that no swap takes given
    /// back with one 3/0: a stale grant found at start ([`error_code::STALE_GRANT`], then the
    /// check is asked again) and a denylisted offer ([`error_code::DENYLISTED`]). The service
    /// keeps an instance with a grant locked (`error-updateInProgressOnInstance`) until it ends.
    async fn ask(&mut self, current: &Version, rules: &OfferRules) -> CheckResult {
        let source = &self.seams.source;
        let denylist = &self.config.denylist;
        let mut result = policy::check(source, current, rules, denylist, false).await;
        if self.stale_grant_possible && answered(&result) {
            // Once: a grant the service holds after that is this run's own.
            self.stale_grant_possible = false;
            if matches!(&result, CheckResult::OnHold { reason } if reason == UPDATE_IN_PROGRESS) {
                warn!(
                    "the update service holds a grant for this instance that no journaled swap \
                     accounts for (an earlier run stopped mid-swap): ending it with 3/0 \
                     (errorcode {}) and checking again",
                    error_code::STALE_GRANT
                );
                give_back(source, current, error_code::STALE_GRANT).await;
                result = policy::check(source, current, rules, denylist, false).await;
            }
        }
        if let CheckResult::Denylisted { version } = &result {
            info!(version = %version, "giving the grant of a denylisted version back with 3/0 (errorcode {})", error_code::DENYLISTED);
            give_back(source, current, error_code::DENYLISTED).await;
        }
        result
    }

    /// Runs the slow steps of `actions` for an instance reporting `current` to the service.
    pub fn steps(&self, current: Version, actions: Vec<SwapAction>) -> SlowStep {
        steps::run_steps(
            self.seams.clone(),
            self.config.steps.clone(),
            current,
            actions,
        )
    }

    /// Whether this is a dry run: steps are printed, nothing is written.
    pub fn dry_run(&self) -> bool {
        self.seams.source.dry_run()
    }

    /// `swap.verify_timeout`.
    pub fn verify_timeout(&self) -> Duration {
        self.config.verify_timeout
    }

    /// Records `phase` off the driver's task (nothing in a dry run): the answer says whether it
    /// is on disk. A record asked for after another is made after it.
    pub fn record(&self, phase: &SwapPhase) -> JournalWrite {
        match self.config.dry_run {
            true => Box::pin(std::future::ready(Ok(()))),
            false => self.disk.record(phase),
        }
    }

    /// Marks the driver's next [`Self::journal`] as answered by a [`Self::record`] that succeeded
    /// (for the phase the actions it guards were decided in), so that it writes nothing more on
    /// the driver's task; [`Self::forget_recorded`] withdraws a mark nothing used.
    pub fn recorded(&self) {
        self.recorded_ahead.store(true, Ordering::SeqCst);
    }

    /// Withdraws an unused [`Self::recorded`].
    pub fn forget_recorded(&self) {
        self.recorded_ahead.store(false, Ordering::SeqCst);
    }

    /// Records `phase` before its side effects (nothing in a dry run): answered at once when the
    /// driver already had it recorded off its task ([`Self::recorded`]); otherwise written here,
    /// on the caller's task.
    pub fn journal(&self, phase: &SwapPhase) -> Result<(), JournalError> {
        if self.recorded_ahead.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        match self.config.dry_run {
            true => Ok(()),
            false => self.config.journal.write(phase),
        }
    }

    /// Removes the journal, off the driver's task, after the records asked for before: the swap
    /// is over.
    pub fn clear_journal(&self) {
        if !self.config.dry_run {
            self.disk.clear();
        }
    }

    /// Denies `version` on this instance until a newer one is offered: at once for the next
    /// check, on disk off the driver's task.
    pub fn deny(&mut self, version: &str) {
        if self.config.dry_run {
            crate::dry_run::would(format_args!("add {version} to the local denylist"));
            return;
        }
        match Version::parse(version) {
            Ok(version) => {
                self.config.denylist.insert(&version);
                self.disk.save_denylist(self.config.denylist.clone());
            }
            Err(err) => error!(error = %err, "cannot denylist {version:?}: not semver"),
        }
    }

    /// Has the journal written through `store` from now on (a test's slow or failing disk).
    #[cfg(test)]
    pub(crate) fn with_journal_store(mut self, store: impl JournalStore) -> Self {
        self.disk = DiskWriter::spawn(store);
        self
    }

    /// On start: the journaled swap, resumed from what systemd says runs. An unreadable journal
    /// is an error (never discarded).
    pub async fn recover(&mut self) -> anyhow::Result<Option<(SwapPhase, Vec<SwapAction>)>> {
        if self.config.dry_run {
            return Ok(None);
        }
        let Some(phase) = self.config.journal.read()? else {
            // No swap of ours is in flight: a grant the service still holds is stale.
            self.stale_grant_possible = true;
            return Ok(None);
        };
        let observed = self.seams.control.running().await?;
        // Whether an operator stopped the unit while this sidekick was down (inactive, no job
        // queued): a unit that cannot be read is not taken as stopped.
        let unit = self.seams.control.unit_now().await.unwrap_or_else(|err| {
            warn!(error = %err, kind = err.kind(), "cannot read the unit's state and job from systemd");
            UnitNow::unknown()
        });
        info!(
            journal = %self.config.journal.path().display(),
            to = %phase.plan.new.version,
            running = ?observed.version,
            "found an interrupted swap; resuming it"
        );
        Ok(Some(crate::agent::machine::recover(
            phase, &observed, &unit,
        )))
    }
}

/// The app status with which the service refuses a check while it holds a grant for the instance
/// (Nebraska's `ErrUpdateInProgressOnInstance`).
pub const UPDATE_IN_PROGRESS: &str = "error-updateInProgressOnInstance";

/// Whether the service answered the check (not a transport failure, nor no check at all).
fn answered(result: &CheckResult) -> bool {
    !matches!(
        result,
        CheckResult::Unreachable { .. }
            | CheckResult::UnknownVersion { .. }
            | CheckResult::Halted { .. }
            | CheckResult::NotChecked
            | CheckResult::NotServing
    )
}

/// Ends the service's grant for this instance with 3/0 and `code`; a failure is logged (the next
/// grant is given back again).
async fn give_back(source: &AnyUpdateSource, current: &Version, code: u32) {
    let event = Event::Failed { error_code: code };
    if let Err(err) = source.send_event(current, event).await {
        warn!(error = %err, kind = err.kind(), errorcode = code, "failed to give a grant back with 3/0");
    }
}

#[cfg(test)]
mod tests;
