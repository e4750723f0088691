//! The swap's metrics, read off the machine's stages as the driver sees them after each step, so
//! the pure machine ([`crate::agent::machine::swap`]) stays free of clocks: how long the swap spent in each step
//! (`sidekick_swap_step_seconds{step}`), how long it waited for a slot from asking to holding
//! (`sidekick_slot_wait_seconds`), and how each swap ended (`sidekick_swaps_total{result}`).
//!
//! Results, from the machine's own outcomes (see `docs/swap.md`):
//! - `updated`: the new version verified, registered again, slot released;
//! - `rolled-back`: the new version given up, the old one registered again (restored and verified,
//!   or never replaced when the drop-in write failed), slot released;
//! - `stranded`: the old version could not be brought back; the slot is kept (counted on entry);
//! - `fenced`: the slot was lost during the drain; the unit was not touched;
//! - `prepull-failed`: the pre-pull failed; no slot was taken;
//! - `halted`: the group was halted while waiting for a slot; the grant was given back untried;
//! - `abandoned`: stopped before the instance was deregistered; the attempt was dropped;
//! - `interrupted`: stopped mid-swap (the next start resumes it from the journal), or a resumed
//!   swap that only had its slot to release.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::agent::machine::state::Phase;
use crate::agent::machine::swap::Stage;
use crate::metrics::Metrics;

/// Follows the swap from step to step and feeds [`Metrics`].
#[derive(Debug)]
pub struct SwapTimer {
    metrics: Option<Metrics>,
    /// The step the swap is in and since when; `None` outside a swap.
    current: Option<(&'static str, Instant)>,
    /// The result the swap has earned so far (set once it registers again).
    verdict: Option<&'static str>,
}

impl SwapTimer {
    /// A timer feeding `metrics`; does nothing without.
    pub fn new(metrics: Option<Metrics>) -> SwapTimer {
        SwapTimer {
            metrics,
            current: None,
            verdict: None,
        }
    }

    /// The agent is in `phase` now.
    pub fn observe(&mut self, phase: &Phase) {
        self.observe_at(phase, Instant::now(), SystemTime::now());
    }

    /// The step the swap is in and how long it has been in it at `now`; `None` outside a swap.
    /// Kept with or without metrics: STATUS says how long a step has lasted.
    pub fn in_step(&self, now: Instant) -> Option<(&'static str, Duration)> {
        self.current
            .map(|(step, since)| (step, now.saturating_duration_since(since)))
    }

    fn observe_at(&mut self, phase: &Phase, now: Instant, wall: SystemTime) {
        let stage = match phase {
            Phase::Updating(swap) => Some(&swap.stage),
            Phase::Serving | Phase::Stopping => None,
        };
        let label = stage.and_then(Stage::step_label);
        let previous = self.current.map(|(step, _)| step);
        if label.is_some() && label == previous {
            return;
        }
        let left = self.current.take();
        self.current = label.map(|step| (step, now));
        let Some(metrics) = self.metrics.clone() else {
            return;
        };
        let unix = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        metrics.set_step_started(label.map(|step| (step, unix)));
        match stage {
            Some(Stage::Registering { failure }) => {
                self.verdict = Some(match failure {
                    None => "updated",
                    Some(_) => "rolled-back",
                });
            }
            Some(Stage::Stranded { .. }) if previous.is_some() => {
                metrics.swap_finished("stranded");
            }
            _ => {}
        }
        let stopping = *phase == Phase::Stopping;
        if let Some((step, since)) = left {
            let took = now.saturating_duration_since(since);
            // A step cut short by a stop is not a step's duration.
            if !stopping {
                metrics.swap_step(step, took);
                if step == "slot" && stage.is_some() {
                    metrics.slot_waited(took);
                }
                // A unit active at once with no health check to pass is verified in the same
                // step as the restart: its verification took no time, but it was taken.
                match (step, label) {
                    ("restart", Some("register")) => metrics.swap_step("verify", Duration::ZERO),
                    ("rollback", Some("register")) => {
                        metrics.swap_step("verify-old", Duration::ZERO)
                    }
                    _ => {}
                }
            }
            if stage.is_none() {
                metrics.swap_finished(result(step, stopping, self.verdict.take()));
            }
        }
    }
}

/// How a swap that left `step` for outside a swap (or a stop, when `stopping`) ended.
fn result(step: &str, stopping: bool, verdict: Option<&'static str>) -> &'static str {
    match (step, stopping) {
        ("release", _) => verdict.unwrap_or("interrupted"),
        ("prepull" | "slot", true) => "abandoned",
        (_, true) => "interrupted",
        ("prepull", false) => "prepull-failed",
        ("slot", false) => "halted",
        ("fence", false) => "fenced",
        (_, false) => verdict.unwrap_or("interrupted"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::agent::machine::swap::{Failure, SwapPhase, SwapPlan};
    use crate::systemd::control::DropIn;

    fn updating(stage: Stage) -> Phase {
        let dropin = |version: &str| DropIn {
            image: format!("web:{version}"),
            version: version.into(),
        };
        Phase::Updating(SwapPhase {
            plan: SwapPlan {
                old: dropin("1.0.0"),
                new: dropin("2.0.0"),
                rise: 1,
            },
            stage,
            previous: None,
            slot_held: true,
            unit_active: true,
            halt: Default::default(),
            report: None,
            unit_stopped: false,
            monitor: false,
            away: false,
            denylist: false,
        })
    }

    fn failure() -> Failure {
        Failure {
            code: 1001,
            reason: "unhealthy".into(),
            halt: true,
        }
    }

    /// Feeds `phases` one second apart; the metrics' text.
    fn feed(phases: &[Phase]) -> String {
        let metrics = Metrics::new();
        let mut timer = SwapTimer::new(Some(metrics.clone()));
        let start = Instant::now();
        for (i, phase) in phases.iter().enumerate() {
            let at = Duration::from_secs(i as u64);
            timer.observe_at(phase, start + at, SystemTime::UNIX_EPOCH + at);
        }
        metrics.encode()
    }

    fn has(text: &str, line: &str) {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }

    #[test]
    fn a_whole_swap_times_each_step_once_and_counts_as_updated() {
        let text = feed(&[
            Phase::Serving,
            updating(Stage::Prepulling),
            updating(Stage::AcquiringSlot { waiting: None }),
            updating(Stage::AcquiringSlot {
                waiting: Some("busy".into()),
            }),
            updating(Stage::AcquiringSlot {
                waiting: Some("busy".into()),
            }),
            updating(Stage::Deregistering),
            updating(Stage::Draining),
            updating(Stage::Fencing),
            updating(Stage::WritingDropIn),
            updating(Stage::Restarting),
            updating(Stage::Verifying { passes: 0 }),
            updating(Stage::Verifying { passes: 1 }),
            updating(Stage::Registering { failure: None }),
            updating(Stage::Releasing),
            Phase::Serving,
        ]);
        has(&text, "sidekick_swaps_total{result=\"updated\"} 1");
        for step in [
            "prepull",
            "slot",
            "deregister",
            "drain",
            "fence",
            "dropin",
            "restart",
            "verify",
            "register",
            "release",
        ] {
            has(
                &text,
                &format!("sidekick_swap_step_seconds_count{{step=\"{step}\"}} 1"),
            );
        }
        // Asked at second 2, held at second 5; verification took two seconds.
        has(&text, "sidekick_slot_wait_seconds_count 1");
        has(&text, "sidekick_slot_wait_seconds_sum 3.0");
        has(&text, "sidekick_swap_step_seconds_sum{step=\"slot\"} 3.0");
        has(&text, "sidekick_swap_step_seconds_sum{step=\"verify\"} 2.0");
        assert!(!text.contains("rollback"), "{text}");
    }

    #[test]
    fn a_rollback_counts_as_rolled_back_with_its_steps() {
        let text = feed(&[
            updating(Stage::Restarting),
            updating(Stage::Verifying { passes: 0 }),
            updating(Stage::RollingBack { failure: failure() }),
            updating(Stage::VerifyingOld {
                failure: failure(),
                passes: 0,
            }),
            updating(Stage::Registering {
                failure: Some(failure()),
            }),
            updating(Stage::Releasing),
            Phase::Serving,
        ]);
        has(&text, "sidekick_swaps_total{result=\"rolled-back\"} 1");
        has(
            &text,
            "sidekick_swap_step_seconds_count{step=\"rollback\"} 1",
        );
        has(
            &text,
            "sidekick_swap_step_seconds_count{step=\"verify-old\"} 1",
        );
        assert!(!text.contains("result=\"updated\""), "{text}");
    }

    #[test]
    fn each_early_end_has_its_own_result() {
        let cases = [
            (
                vec![updating(Stage::Prepulling), Phase::Serving],
                "prepull-failed",
            ),
            (vec![updating(Stage::Fencing), Phase::Serving], "fenced"),
            (
                vec![
                    updating(Stage::AcquiringSlot { waiting: None }),
                    Phase::Serving,
                ],
                "halted",
            ),
            (
                vec![
                    updating(Stage::AcquiringSlot { waiting: None }),
                    Phase::Stopping,
                ],
                "abandoned",
            ),
            (
                vec![updating(Stage::Draining), Phase::Stopping],
                "interrupted",
            ),
            // Resumed from the journal with only the release left.
            (
                vec![Phase::Serving, updating(Stage::Releasing), Phase::Serving],
                "interrupted",
            ),
        ];
        for (phases, result) in cases {
            let text = feed(&phases);
            has(
                &text,
                &format!("sidekick_swaps_total{{result=\"{result}\"}} 1"),
            );
        }
    }

    #[test]
    fn a_stop_records_no_step_and_no_slot_wait() {
        let text = feed(&[
            updating(Stage::AcquiringSlot { waiting: None }),
            Phase::Stopping,
        ]);
        assert!(!text.contains("sidekick_swap_step_seconds_count"), "{text}");
        has(&text, "sidekick_slot_wait_seconds_count 0");
    }

    #[test]
    fn stranded_is_counted_once_on_entry() {
        let stranded = || {
            updating(Stage::Stranded {
                failure: failure(),
                why: "the unit failed".into(),
            })
        };
        let text = feed(&[
            updating(Stage::VerifyingOld {
                failure: failure(),
                passes: 0,
            }),
            stranded(),
            stranded(),
            Phase::Stopping,
        ]);
        has(&text, "sidekick_swaps_total{result=\"stranded\"} 1");
        has(
            &text,
            "sidekick_swap_step_seconds_count{step=\"verify-old\"} 1",
        );
        assert!(!text.contains("result=\"interrupted\""), "{text}");
    }

    #[test]
    fn without_metrics_only_the_current_step_and_its_start_are_kept() {
        let mut timer = SwapTimer::new(None);
        let start = Instant::now();
        timer.observe_at(&updating(Stage::Prepulling), start, SystemTime::now());
        let later = start + Duration::from_secs(90);
        assert_eq!(
            timer.in_step(later),
            Some(("prepull", Duration::from_secs(90)))
        );
        timer.observe_at(&Phase::Serving, later, SystemTime::now());
        assert_eq!(timer.in_step(later), None);
        assert_eq!(timer.verdict, None);
    }

    #[test]
    fn the_current_step_has_its_start_time_and_only_it() {
        let text = feed(&[
            Phase::Serving,
            updating(Stage::Prepulling),
            updating(Stage::AcquiringSlot { waiting: None }),
        ]);
        // Entered the slot wait at second 2 of the (test's) Unix clock.
        has(
            &text,
            "sidekick_swap_step_started_timestamp_seconds{step=\"slot\"} 2",
        );
        assert!(
            !text.contains("started_timestamp_seconds{step=\"prepull\"}"),
            "{text}"
        );
        let text = feed(&[updating(Stage::Deregistering), Phase::Serving]);
        assert!(
            !text.contains("sidekick_swap_step_started_timestamp_seconds{"),
            "{text}"
        );
    }

    #[test]
    fn a_unit_verified_in_the_restarts_own_step_records_a_verification_of_no_time() {
        let text = feed(&[
            updating(Stage::Restarting),
            updating(Stage::Registering { failure: None }),
            updating(Stage::Releasing),
            Phase::Serving,
        ]);
        has(&text, "sidekick_swap_step_seconds_count{step=\"verify\"} 1");
        has(&text, "sidekick_swap_step_seconds_sum{step=\"verify\"} 0.0");
        has(&text, "sidekick_swaps_total{result=\"updated\"} 1");
    }
}
