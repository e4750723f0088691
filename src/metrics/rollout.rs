//! The rollout's metrics (issue 17): the stage this instance sees its group's newest version in
//! (`sidekick_rollout_stage{group,version,stage}`, one-hot), the time to the next window
//! (`sidekick_rollout_next_window_seconds`: 0 while one is open, -1 with no window within a week
//! or none configured), and this instance's canary results and failures by stage
//! (`sidekick_rollout_canary_results_total{result}`, `sidekick_rollout_failures_total{stage}`;
//! the stages are `verify`, `min_healthy` and `monitor`).

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    group: String,
    version: String,
    stage: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    stage: String,
}

/// The rollout's metrics; clones update the same values.
#[derive(Clone)]
pub struct RolloutMetrics {
    stage: Family<StageLabel, Gauge>,
    current_stage: Arc<Mutex<Option<StageLabel>>>,
    next_window: Gauge,
    canary_results: Family<ResultLabel, Counter>,
    failures: Family<FailureLabel, Counter>,
}

impl RolloutMetrics {
    /// Registers the rollout's metrics in `registry` (prefixed `sidekick_`).
    pub fn register(registry: &mut Registry) -> RolloutMetrics {
        let metrics = RolloutMetrics {
            stage: Family::default(),
            current_stage: Arc::default(),
            next_window: Gauge::default(),
            canary_results: Family::default(),
            failures: Family::default(),
        };
        registry.register(
            "rollout_stage",
            "1 for the stage of the group's newest version as this instance sees it",
            metrics.stage.clone(),
        );
        registry.register(
            "rollout_next_window_seconds",
            "Seconds until the next update window opens (0 while open, -1 with none within a week or none configured)",
            metrics.next_window.clone(),
        );
        registry.register(
            "rollout_canary_results",
            "This instance's canary swaps by result (passed, failed)",
            metrics.canary_results.clone(),
        );
        registry.register(
            "rollout_failures",
            "This instance's failed swaps of a rollout by the stage they failed in",
            metrics.failures.clone(),
        );
        metrics
    }

    /// The group's newest `version` is in `stage` now.
    pub fn set_stage(&self, group: &str, version: &str, stage: &str) {
        let label = StageLabel {
            group: group.into(),
            version: version.into(),
            stage: stage.into(),
        };
        let mut current = self
            .current_stage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = current.take()
            && old != label
        {
            self.stage.remove(&old);
        }
        self.stage.get_or_create(&label).set(1);
        *current = Some(label);
    }

    /// Seconds to the next window: `Some(0)` while one is open, `None` with none ahead.
    pub fn set_next_window(&self, seconds: Option<i64>) {
        self.next_window.set(seconds.unwrap_or(-1));
    }

    /// This instance's canary swap passed or failed.
    pub fn canary_result(&self, passed: bool) {
        let result = if passed { "passed" } else { "failed" };
        self.canary_results
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// A swap of this instance failed in `stage`.
    pub fn failed(&self, stage: &str) {
        self.failures
            .get_or_create(&FailureLabel {
                stage: stage.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    #[test]
    fn the_stage_is_one_hot_and_the_results_count() {
        let metrics = Metrics::new();
        let rollout = metrics.rollout();
        rollout.set_stage("web/stable", "2.0.0", "canaries");
        rollout.set_stage("web/stable", "2.0.0", "rolling");
        rollout.set_next_window(Some(90));
        rollout.canary_result(true);
        rollout.failed("verify");
        let text = metrics.encode();
        for line in [
            "sidekick_rollout_stage{group=\"web/stable\",version=\"2.0.0\",stage=\"rolling\"} 1",
            "sidekick_rollout_next_window_seconds 90",
            "sidekick_rollout_canary_results_total{result=\"passed\"} 1",
            "sidekick_rollout_failures_total{stage=\"verify\"} 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        assert!(!text.contains("stage=\"canaries\""), "{text}");
    }
}
