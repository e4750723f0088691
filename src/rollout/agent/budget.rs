//! The failure budget (`rollout.max_failures`): a failure the version is blamed for is counted in
//! the version's state by compare-and-swap, once per instance, before the group is halted for it;
//! the swap's halt step halts the group only when the count spends the budget.

use std::num::NonZeroU32;

use jiff::Timestamp;

use super::RolloutAgent;
use crate::rollout::decide::FailureBudget;
use crate::rollout::state::{Failure, VersionState};
use crate::rollout::store::{self, RolloutError};

impl RolloutAgent {
    /// Counts this instance's failure on `version` (in `stage`: `verify`, `min_healthy` or `monitor`) and
    /// returns the budget after it. Idempotent: a failure counted already is not counted again,
    /// so the halt step may send it until it is confirmed. With `max_failures = 1` nothing is
    /// written (the budget is spent by any failure; the release records it, as without a budget).
    pub async fn count_failure(
        &self,
        version: &str,
        stage: &str,
        reason: &str,
    ) -> Result<FailureBudget, RolloutError> {
        let max = self.max_failures().await?;
        if max.get() == 1 {
            return Ok(FailureBudget { failed: 1, max: 1 });
        }
        let now = Timestamp::now();
        let failure = Failure {
            instance: self.instance.clone(),
            at: now,
            stage: stage.to_string(),
            reason: reason.to_string(),
        };
        let mut client = self.client().await?;
        let counted = store::update_version(&mut client, &self.group, version, |current| {
            let mut next = current
                .cloned()
                .unwrap_or_else(|| VersionState::new(version, now));
            next.count_failure(failure.clone()).then_some(next)
        })
        .await;
        if let Err(RolloutError::Etcd(err)) = &counted {
            self.etcd.failed(err).await;
        }
        Ok(FailureBudget::of(counted?.as_ref(), max))
    }

    /// `max_failures` for the log: the policy the last slot request was judged by, else the
    /// configured one (no I/O).
    pub fn max_failures_hint(&self) -> NonZeroU32 {
        self.lock()
            .max_failures
            .unwrap_or_else(|| self.read_configured().policy.max_failures)
    }

    /// `max_failures` of the policy in force for this swap: the one its slot request was judged
    /// by, else (a swap resumed by a start) the group's effective policy now.
    async fn max_failures(&self) -> Result<NonZeroU32, RolloutError> {
        if let Some(max) = self.lock().max_failures {
            return Ok(max);
        }
        let snap = self.read().await?;
        let configured = self.read_configured().policy.clone();
        Ok(store::effective(snap.stored_policy.as_ref(), &configured).max_failures)
    }
}
