//! The pure decisions over a group's rollout: may this instance take a slot for a version now,
//! and which stage a rollout is in (what `sidekick rollout status` shows and `--wait` ends on).
//! No clock and no I/O: the caller passes the time and what it read from etcd.

use std::time::Duration;

use jiff::Timestamp;

use super::policy::{Promote, RolloutPolicy};
use super::state::VersionState;
use super::window::{Fit, Schedule};

/// Swaps the measured duration is taken over.
pub const MEASURED_SWAPS: usize = 20;

/// What an instance reads before asking for a slot.
#[derive(Debug, Clone)]
pub struct GroupView<'a> {
    pub policy: &'a RolloutPolicy,
    pub paused: bool,
    /// The halt marker's reason, while the group is halted.
    pub halted: Option<&'a str>,
    /// The version's state; `None` before anyone started it.
    pub version: Option<&'a VersionState>,
    /// The group's last slot release, of any version (the releasing host's clock).
    pub last_release: Option<Timestamp>,
    /// When this host first saw that release, on its own clock in the frame of `now` (from a
    /// monotonic reading, [`super::gate::Sightings`]); `batch_delay` runs from here when known.
    pub release_seen: Option<Timestamp>,
    /// When this host first saw the view's canary wave pass (as `release_seen`); `canary_bake`
    /// runs from here when known.
    pub wave_seen: Option<Timestamp>,
    /// How long a swap takes here: the measured p95, or the floor before any.
    pub swap_estimate: Duration,
    /// The newest version the group recorded a rollout of, when it is newer than the view's
    /// (by semantic version): the swap to the view's version is superseded.
    pub superseded_by: Option<&'a str>,
}

/// Why no slot is taken now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    Halted(String),
    Paused,
    /// `max_failures` instances failed on this version.
    FailureBudgetSpent {
        failed: usize,
        max: u32,
    },
    OutsideWindow {
        opens: Option<Timestamp>,
    },
    WindowTooShort {
        closes: Timestamp,
        needs: Duration,
    },
    /// The canary wave is not through: `passed` of `wanted`, `failed` of them failed.
    Canaries {
        passed: usize,
        failed: usize,
        wanted: u32,
    },
    Baking {
        until: Timestamp,
    },
    AwaitingPromotion,
    BatchDelay {
        until: Timestamp,
    },
    /// The group records a rollout of a newer version: a swap still waiting for a slot for this
    /// one gives its grant back (the next check is offered the newer one) instead of waiting on
    /// a promotion, a wave or a window nobody will act on any more.
    Superseded {
        by: String,
    },
}

/// A version's failure budget (`rollout.max_failures`): how many distinct instances failed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureBudget {
    pub failed: usize,
    pub max: u32,
}

impl FailureBudget {
    /// The budget of the version in `state` (`None`: nobody started it) under `max`.
    pub fn of(state: Option<&VersionState>, max: std::num::NonZeroU32) -> FailureBudget {
        FailureBudget {
            failed: state.map_or(0, VersionState::failed_instances),
            max: max.get(),
        }
    }

    /// Spent: the group halts, and the version takes no more slots.
    pub fn spent(&self) -> bool {
        self.failed >= self.max as usize
    }

    /// The halt marker's reason for the failure that spent it; with `max_failures = 1` the
    /// failure's own reason, as before the budget.
    pub fn halt_reason(&self, reason: &str) -> String {
        match self.max {
            1 => reason.to_string(),
            max => format!(
                "{reason} ({} instances failed on the version, max_failures {max})",
                self.failed
            ),
        }
    }
}

/// The answer for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotGate {
    /// Take a slot; as one of the version's canaries (to be claimed in its state first).
    Take {
        canary: bool,
    },
    Hold(Hold),
}

/// The floor of the swap estimate before any swap was measured.
pub fn swap_floor(
    drain: Duration,
    start: Duration,
    verify: Duration,
    min_healthy: Duration,
) -> Duration {
    drain + start + verify + min_healthy
}

/// May `instance` take a slot for the view's version at `now`?
pub fn slot_gate(
    view: &GroupView<'_>,
    schedule: &Schedule,
    instance: &str,
    now: Timestamp,
) -> SlotGate {
    let hold = |h| SlotGate::Hold(h);
    let policy = view.policy;
    if let Some(reason) = view.halted {
        return hold(Hold::Halted(reason.to_string()));
    }
    if let Some(by) = view.superseded_by {
        return hold(Hold::Superseded { by: by.to_string() });
    }
    if view.paused {
        return hold(Hold::Paused);
    }
    let budget = FailureBudget::of(view.version, policy.max_failures);
    if budget.spent() {
        return hold(Hold::FailureBudgetSpent {
            failed: budget.failed,
            max: budget.max,
        });
    }
    match schedule.fits(now, view.swap_estimate) {
        Fit::Fits => {}
        Fit::Closed { opens } => return hold(Hold::OutsideWindow { opens }),
        Fit::TooShort { closes, needs } => return hold(Hold::WindowTooShort { closes, needs }),
    }
    if let Some(h) = wave_hold(policy, view.version, view.wave_seen, instance, now) {
        return h;
    }
    if let Some(until) = view
        .last_release
        .map(|t| after(measured_from(t, view.release_seen), policy.batch_delay))
        && now < until
    {
        return hold(Hold::BatchDelay { until });
    }
    SlotGate::Take { canary: false }
}

/// Where a gap after an event other hosts stamped runs from: when this host first saw the event
/// (`seen`, its own clock), else the writer's stamp. Another host's wall clock ahead of or
/// behind this one's by X would otherwise shorten or lengthen the gap by X (issue 17); the first
/// sight comes after the event, so measured from it a gap is never cut short, whatever the
/// clocks say.
pub fn measured_from(written: Timestamp, seen: Option<Timestamp>) -> Timestamp {
    seen.unwrap_or(written)
}

/// The canary wave, bake and promotion: `Some` when they decide (a canary's own slot, or a hold).
/// `wave_seen`: when this host first saw the wave pass.
fn wave_hold(
    policy: &RolloutPolicy,
    state: Option<&VersionState>,
    wave_seen: Option<Timestamp>,
    instance: &str,
    now: Timestamp,
) -> Option<SlotGate> {
    let wanted = policy.canary;
    let claimed = state.map_or(0, |s| s.canaries.len());
    if wanted > 0 {
        if state.is_some_and(|s| s.is_canary(instance)) || claimed < wanted as usize {
            return Some(SlotGate::Take { canary: true });
        }
        let state = state?;
        let Some(passed_at) = state.wave_passed_at(wanted) else {
            return Some(SlotGate::Hold(Hold::Canaries {
                passed: state.canaries_passed(),
                failed: state.canaries.iter().filter(|c| c.failed.is_some()).count(),
                wanted,
            }));
        };
        let until = after(measured_from(passed_at, wave_seen), policy.canary_bake);
        if now < until {
            return Some(SlotGate::Hold(Hold::Baking { until }));
        }
    }
    let promoted = state.is_some_and(|s| s.promoted.is_some());
    (policy.promote == Promote::Manual && !promoted)
        .then_some(SlotGate::Hold(Hold::AwaitingPromotion))
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Where a version's rollout stands, as `sidekick rollout status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Every instance of the group serves the version (or the state says finished).
    Done,
    Halted(String),
    Failed {
        failed: usize,
        max: u32,
    },
    Paused,
    AwaitingPromotion,
    Canaries {
        passed: usize,
        failed: usize,
        wanted: u32,
    },
    Baking {
        until: Timestamp,
    },
    WaitingForWindow {
        opens: Option<Timestamp>,
    },
    WindowTooShort {
        closes: Timestamp,
        needs: Duration,
    },
    Rolling,
}

impl Stage {
    /// `rollout status --wait`: the exit code once the wait ends here, `None` to wait on.
    pub fn wait_exit(&self) -> Option<u8> {
        match self {
            Stage::Done => Some(0),
            Stage::Halted(_) | Stage::Failed { .. } => Some(1),
            Stage::AwaitingPromotion => Some(3),
            _ => None,
        }
    }

    /// One short word for scripts (`--json`'s `stage`).
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Done => "done",
            Stage::Halted(_) => "halted",
            Stage::Failed { .. } => "failed",
            Stage::Paused => "paused",
            Stage::AwaitingPromotion => "awaiting-promotion",
            Stage::Canaries { .. } => "canaries",
            Stage::Baking { .. } => "baking",
            Stage::WaitingForWindow { .. } => "waiting-for-window",
            Stage::WindowTooShort { .. } => "window-too-short",
            Stage::Rolling => "rolling",
        }
    }
}

/// The stage of the view's version, given how many of the group's `instances` serve it.
pub fn stage(
    view: &GroupView<'_>,
    schedule: &Schedule,
    serving: usize,
    instances: usize,
    now: Timestamp,
) -> Stage {
    let finished = view.version.is_some_and(|s| s.finished.is_some());
    if finished || (instances > 0 && serving == instances) {
        return Stage::Done;
    }
    // A would-be instance that is no canary: what holds the rest of the group.
    match slot_gate(view, schedule, "\u{0}rest of the group", now) {
        SlotGate::Take { canary: false } => Stage::Rolling,
        SlotGate::Take { canary: true } => Stage::Canaries {
            passed: view.version.map_or(0, VersionState::canaries_passed),
            failed: view.version.map_or(0, |s| {
                s.canaries.iter().filter(|c| c.failed.is_some()).count()
            }),
            wanted: view.policy.canary,
        },
        SlotGate::Hold(hold) => match hold {
            Hold::Halted(why) => Stage::Halted(why),
            Hold::Paused => Stage::Paused,
            Hold::FailureBudgetSpent { failed, max } => Stage::Failed { failed, max },
            Hold::OutsideWindow { opens } => Stage::WaitingForWindow { opens },
            Hold::WindowTooShort { closes, needs } => Stage::WindowTooShort { closes, needs },
            Hold::Canaries {
                passed,
                failed,
                wanted,
            } => Stage::Canaries {
                passed,
                failed,
                wanted,
            },
            Hold::Baking { until } => Stage::Baking { until },
            Hold::AwaitingPromotion => Stage::AwaitingPromotion,
            Hold::BatchDelay { .. } => Stage::Rolling,
            // The group moved on to a newer version: this one's rollout is over.
            Hold::Superseded { .. } => Stage::Done,
        },
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
