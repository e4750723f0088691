//! The swap's record in the version's state: the slot taken, each step's duration as the driver
//! reports the agent's phase, and at the release the result (a canary's pass or failure, a
//! failure against the version), written before the slot key goes.

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::Timestamp;
use tracing::warn;

use super::RolloutAgent;
use crate::agent::machine::state::Phase;
use crate::agent::machine::swap::{Report, Stage};
use crate::rollout::state::{Failure, SwapRecord, VersionState};
use crate::rollout::store::{self, RolloutError};

/// The swap this instance is in, as the version's state records it.
pub(super) struct CurrentSwap {
    version: String,
    took: Timestamp,
    steps: BTreeMap<String, u64>,
    step: Option<(&'static str, Instant)>,
    /// `Ok` once the new version passed min-healthy (the swap releases), `Err((stage,
    /// reason))` once rolled back with the version to blame (`stage`: `verify` or
    /// `min_healthy`); `None` when it ended otherwise (fenced, rolled back for another reason),
    /// which frees its canary place for another try.
    verdict: Option<Result<(), (&'static str, String)>>,
}

/// The stage a failure the version is blamed for happened in, as the version's state records it.
fn failed_in(code: u32) -> &'static str {
    match code {
        crate::omaha::error_code::MIN_HEALTHY_FAILED => "min_healthy",
        _ => "verify",
    }
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
            warn!(group = %self.group, version, "failed to record the swap's start: {err}");
        }
    }

    /// The slot is about to be given back: the swap's steps, its release and its result go to
    /// the version's state before the slot key goes, so whoever wakes on the release reads them.
    pub async fn released(&self) {
        let (Some(swap), metrics) = ({
            let mut inner = self.lock();
            (inner.swap.take(), inner.metrics.clone())
        }) else {
            return;
        };
        let canary = std::sync::atomic::AtomicBool::new(false);
        let now = Timestamp::now();
        let me = self.instance.clone();
        let recorded = self
            .change(&swap.version, |state| {
                if let Some(record) = state
                    .swaps
                    .iter_mut()
                    .rev()
                    .find(|s| s.instance == me && s.took_slot == swap.took)
                {
                    record.released = Some(now);
                    record.steps_ms = swap.steps.clone();
                }
                canary.store(state.is_canary(&me), std::sync::atomic::Ordering::Relaxed);
                match &swap.verdict {
                    Some(Ok(())) => state.canary_result(&me, true, now),
                    Some(Err((stage, reason))) => {
                        // Counted already when the halt was asked (max_failures above 1):
                        // nothing changes.
                        state.count_failure(Failure {
                            instance: me.clone(),
                            at: now,
                            stage: stage.to_string(),
                            reason: reason.clone(),
                        });
                    }
                    None => state
                        .canaries
                        .retain(|c| c.instance != me || c.passed.is_some() || c.failed.is_some()),
                }
            })
            .await;
        if let Err(err) = recorded {
            warn!(group = %self.group, version = %swap.version, "failed to record the swap's end: {err}");
        }
        if let (Some(metrics), Some(verdict)) = (metrics, &swap.verdict) {
            if canary.load(std::sync::atomic::Ordering::Relaxed) {
                metrics.canary_result(verdict.is_ok());
            }
            if let Err((stage, _)) = verdict {
                metrics.failed(stage);
            }
        }
    }

    /// Read-modify-write of `version`'s state, creating it when missing.
    async fn change(
        &self,
        version: &str,
        edit: impl Fn(&mut VersionState),
    ) -> Result<(), RolloutError> {
        let mut client = self.client().await?;
        let now = Timestamp::now();
        store::update_version(&mut client, &self.group, version, |current| {
            let mut next = current
                .cloned()
                .unwrap_or_else(|| VersionState::new(version, now));
            edit(&mut next);
            Some(next)
        })
        .await
        .map(|_| ())
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
            current.verdict = match (&swap.stage, swap.report) {
                (Stage::Releasing, Some(Report::Complete)) => Some(Ok(())),
                // A failure the version is not to blame for (the drop-in write, …) is no result.
                (
                    Stage::Registering {
                        failure: Some(failure),
                    },
                    _,
                ) if failure.halt => Some(Err((failed_in(failure.code), failure.reason.clone()))),
                _ => None,
            };
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
