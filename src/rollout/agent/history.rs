//! The swap's record in the version's state: the slot taken, each step's duration as the driver
//! reports the agent's phase, and at the release the result (a canary's pass or failure, a
//! failure against the version), written before the slot key goes. A release etcd did not
//! confirm is kept and sent again (it is idempotent) until it is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use jiff::Timestamp;
use tracing::{info, warn};

use super::RolloutAgent;
use crate::agent::machine::state::Phase;
use crate::agent::machine::swap::{Report, Stage, SwapPhase};
use crate::rollout::state::{Failure, Release, SwapEnd, SwapRecord, VersionState};
use crate::rollout::store::{self, RolloutError};

/// The swap this instance is in, as the version's state records it.
pub(super) struct CurrentSwap {
    version: String,
    took: Timestamp,
    steps: BTreeMap<String, u64>,
    step: Option<(&'static str, Instant)>,
    /// `Ok` once the new version passed min-healthy (the swap releases), `Err((stage,
    /// reason))` once rolled back with the version to blame (`stage`: `verify`, `min_healthy`
    /// or `monitor`); `None` when it ended otherwise (fenced, rolled back for another
    /// reason), which frees its canary place for another try.
    verdict: Option<Result<(), (&'static str, String)>>,
}

/// The verdict on the version `swap` shows in its stage, as [`CurrentSwap`] keeps it: `Ok` once
/// min-healthy passed and 3/1 is decided, `Err((stage, reason))` once registered again after a
/// failure the version is to blame for, else `None`.
pub(crate) fn verdict(swap: &SwapPhase) -> Option<Result<(), (&'static str, String)>> {
    match (&swap.stage, swap.report) {
        (Stage::Releasing, Some(Report::Complete)) => Some(Ok(())),
        // A failure the version is not to blame for (the drop-in write, …) is no result.
        (
            Stage::Registering {
                failure: Some(failure),
            },
            _,
        ) if failure.halt => Some(Err((failed_in(failure.code), failure.reason.clone()))),
        _ => None,
    }
}

/// The stage a failure the version is blamed for happened in, as the version's state records it.
fn failed_in(code: u32) -> &'static str {
    match code {
        crate::omaha::error_code::MIN_HEALTHY_FAILED => "min_healthy",
        crate::omaha::error_code::MONITOR_FAILED => "monitor",
        _ => "verify",
    }
}

/// Releases kept for a retry at most (the oldest go first): one per swap, so far more than a
/// partition lasts in swaps.
const MAX_PENDING: usize = 32;

/// A release whose write etcd has not confirmed yet.
pub(super) struct Pending {
    version: String,
    release: Release,
    /// Whether its failed write was logged (once).
    warned: bool,
}

/// The step a stage is recorded as (the names of `sidekick_swap_step_seconds`): the steps while
/// the slot is held, so not the pre-pull or the wait for the slot.
fn step_name(stage: &Stage) -> Option<&'static str> {
    match stage {
        Stage::Prepulling | Stage::AcquiringSlot { .. } => None,
        other => other.step_label(),
    }
}

impl RolloutAgent {
    /// A slot for `version` is held now: the swap is recorded in the version's state (which the
    /// first swap of a version creates).
    pub async fn took_slot(&self, version: &str) {
        self.flush_pending().await;
        let now = Timestamp::now();
        let me = self.instance.clone();
        self.lock().swap = Some(CurrentSwap {
            version: version.to_string(),
            took: now,
            steps: BTreeMap::new(),
            step: None,
            verdict: None,
        });
        let recorded = self
            .change(version, |state| {
                state.add_swap(SwapRecord {
                    instance: me.clone(),
                    took_slot: now,
                    released: None,
                    steps_ms: BTreeMap::new(),
                });
            })
            .await;
        if let Err(err) = recorded {
            // Its release adds the record when it is missing.
            warn!(group = %self.group, version, "failed to record the swap's start: {err}");
        }
    }

    /// The slot is about to be given back: the swap's steps, its release and its result go to
    /// the version's state before the slot key goes, so whoever wakes on the release reads them.
    /// A write that fails is kept and sent again (see [`RolloutAgent::flush_pending`]) until
    /// etcd confirms it.
    pub async fn released(&self) {
        let (Some(swap), metrics) = ({
            let mut inner = self.lock();
            (inner.swap.take(), inner.metrics.clone())
        }) else {
            return;
        };
        let now = Timestamp::now();
        let end = match &swap.verdict {
            Some(Ok(())) => SwapEnd::Passed,
            Some(Err((stage, reason))) => SwapEnd::Failed(Failure {
                instance: self.instance.clone(),
                at: now,
                stage: stage.to_string(),
                reason: reason.clone(),
            }),
            None => SwapEnd::Unjudged,
        };
        if let (Some(metrics), SwapEnd::Failed(failure)) = (&metrics, &end) {
            metrics.failed(&failure.stage);
        }
        let release = Release {
            instance: self.instance.clone(),
            took_slot: swap.took,
            at: now,
            steps_ms: swap.steps,
            end,
        };
        self.lock().pending.push(Pending {
            version: swap.version,
            release,
            warned: false,
        });
        self.flush_pending().await;
    }

    /// Sends the releases whose write failed again, oldest first; each stays kept until etcd
    /// confirms it. Called at each release, each slot taken and each update pass.
    pub async fn flush_pending(&self) {
        let (kept, metrics) = {
            let mut inner = self.lock();
            (std::mem::take(&mut inner.pending), inner.metrics.clone())
        };
        let mut failed = Vec::new();
        for mut pending in kept {
            let canary = AtomicBool::new(false);
            let me = self.instance.as_str();
            let recorded = self
                .change(&pending.version, |state| {
                    canary.store(state.is_canary(me), Ordering::Relaxed);
                    state.record_release(&pending.release);
                })
                .await;
            let version = pending.version.as_str();
            match recorded {
                Ok(()) => {
                    if pending.warned {
                        info!(group = %self.group, version, "recorded the swap's end, kept since its write failed");
                    }
                    if let (Some(metrics), true) = (&metrics, canary.load(Ordering::Relaxed)) {
                        match &pending.release.end {
                            SwapEnd::Passed => metrics.canary_result(true),
                            SwapEnd::Failed(_) => metrics.canary_result(false),
                            SwapEnd::Unjudged => {}
                        }
                    }
                }
                Err(err) => {
                    if !pending.warned {
                        warn!(group = %self.group, version,
                            "failed to record the swap's end: {err}; kept and sent again at the next \
                             update pass or slot until etcd confirms it");
                        pending.warned = true;
                    }
                    failed.push(pending);
                }
            }
        }
        let mut inner = self.lock();
        // Kept ones first: a release added meanwhile is newer.
        failed.append(&mut inner.pending);
        let dropped = failed.len().saturating_sub(MAX_PENDING);
        for gone in failed.drain(..dropped) {
            warn!(group = %self.group, version = %gone.version,
                "more than {MAX_PENDING} swap ends wait to be recorded: dropping the oldest");
        }
        inner.pending = failed;
    }

    /// Whether a release of this instance for `version` still waits to be written.
    pub(super) fn pending_for(&self, version: &str) -> bool {
        self.lock().pending.iter().any(|p| p.version == version)
    }

    /// Read-modify-write of `version`'s state, creating it when missing.
    async fn change(
        &self,
        version: &str,
        edit: impl Fn(&mut VersionState),
    ) -> Result<(), RolloutError> {
        let mut client = self.client().await?;
        let now = Timestamp::now();
        let changed = store::update_version(&mut client, &self.group, version, |current| {
            let mut next = current
                .cloned()
                .unwrap_or_else(|| VersionState::new(version, now));
            edit(&mut next);
            Some(next)
        })
        .await;
        if let Err(RolloutError::Etcd(err)) = &changed {
            self.etcd.failed(err).await;
        }
        changed.map(|_| ())
    }

    /// The agent is in `phase` now (after each turn of the driver): times the swap's steps and
    /// notes its verdict: a failure the version is to blame for once it registers again, a pass
    /// once min-healthy is over (3/1 decided).
    pub fn observe(&self, phase: &Phase) {
        let Phase::Updating(swap) = phase else {
            return;
        };
        let mut inner = self.lock();
        let Some(current) = inner.swap.as_mut() else {
            return;
        };
        if current.verdict.is_none() {
            current.verdict = verdict(swap);
        }
        let name = step_name(&swap.stage);
        if name.is_some() && name == current.step.map(|(s, _)| s) {
            return;
        }
        if let Some((step, since)) = current.step.take() {
            let ms = since.elapsed().as_millis() as u64;
            *current.steps.entry(step.to_string()).or_default() += ms;
        }
        current.step = name.map(|n| (n, Instant::now()));
    }
}
