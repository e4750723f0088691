//! A canary place whose result no swap can record any more: the release's write was lost for
//! good, or the process that took the slot is gone (a crash after 3/1; a recovered swap whose
//! new process never took the slot again; a claim whose slot was never taken). The wave would
//! wait on it for good, so the instance that holds it settles it itself, with no leader, at its
//! update pass: while it serves (unit active, registered, no swap in flight or journaled) it
//! applies [`crate::rollout::state::LostCanary`] to each place of its own with no result that
//! [`crate::rollout::state::Canary::lost_to`] takes for lost: one an earlier process claimed in
//! this boot of this host (by run id, with no clock), or one claimed elsewhere before this
//! process started.

use jiff::Timestamp;
use tracing::{info, warn};

use super::RolloutAgent;
use crate::rollout::state::LostCanary;
use crate::rollout::store;

impl RolloutAgent {
    /// At each update pass: first the releases kept since their write failed, then, when
    /// `running` is given, the lost canary rule for each of this instance's canary places with
    /// no result. `running` is the version the unit runs, given only while the agent serves
    /// with no swap in flight (`Phase::Serving`, unit active, registered: a journaled swap is
    /// resumed before the first pass); `denylisted` says whether a version is on the instance's
    /// denylist.
    pub async fn settle(&self, running: Option<&str>, denylisted: impl Fn(&str) -> bool) {
        self.flush_pending().await;
        let Some(running) = running else {
            return;
        };
        if self.lock().swap.is_some() {
            return;
        }
        let snap = match self.read().await {
            Ok(snap) => snap,
            Err(err) => {
                tracing::debug!(group = %self.group, "cannot read the group's rollout to settle lost canary places: {err}");
                return;
            }
        };
        let me = self.instance.as_str();
        let lost = snap
            .versions
            .iter()
            .filter(|v| {
                v.lost_place_of(me, &self.claimant, self.started) && !self.pending_for(&v.version)
            })
            .map(|v| v.version.clone());
        for version in lost.collect::<Vec<_>>() {
            let denied = denylisted(&version);
            let now = Timestamp::now();
            let mut applied = None;
            let settled = async {
                let mut client = self.client().await?;
                store::update_version(&mut client, &self.group, &version, |current| {
                    applied = None;
                    let mut next = current?.clone();
                    // A place claimed again since the read is judged afresh.
                    if !next.lost_place_of(me, &self.claimant, self.started) {
                        return None;
                    }
                    let rule = next.lost_canary(me, running, denied)?;
                    applied = Some(rule);
                    next.settle_lost_canary(me, rule, now).then_some(next)
                })
                .await
            };
            match settled.await {
                Ok(_) => self.settled(&version, running, applied),
                Err(err) => warn!(group = %self.group, version,
                    "failed to settle this instance's canary place with no result: {err}; tried again at the next pass"),
            }
        }
    }

    fn settled(&self, version: &str, running: &str, applied: Option<LostCanary>) {
        let Some(rule) = applied else {
            return;
        };
        let group = &self.group;
        let metrics = self.lock().metrics.clone();
        match rule {
            LostCanary::Passed => info!(%group, version,
                "this instance's canary place had no result and it serves {running} with no swap in flight: recorded passed"),
            LostCanary::Failed => info!(%group, version,
                "this instance's canary place had no result and the version is on its denylist: recorded failed"),
            LostCanary::GiveUp => info!(%group, version,
                "this instance's canary place had no result and it serves {running} with no swap in flight: place given up for another instance"),
        }
        if let (Some(metrics), LostCanary::Passed | LostCanary::Failed) = (metrics, rule) {
            metrics.canary_result(rule == LostCanary::Passed);
        }
    }
}
