//! The agent's pure rollout decisions, beside the slot gate of [`decide`]: the view one instance
//! builds from a [`GroupSnapshot`] before it asks for a slot, and whether it may send an update
//! check now (issue 17: no check outside every window, a random start jitter at a window's
//! start, and no check that would take a grant it cannot use while its group waits for a manual
//! promotion). No clock and no I/O: [`super::agent`] reads etcd and passes the time.

use std::time::Duration;

use jiff::Timestamp;

use super::decide::{GroupView, MEASURED_SWAPS, SlotGate, Stage, slot_gate, stage};
use super::policy::{Promote, RolloutPolicy};
use super::state::{VersionState, p95_swap};
use super::store::{GroupSnapshot, effective};
use super::window::{Schedule, WindowState, jitter_bound, start_jitter};

/// The slot gate's answer for `instance` and `version` over one snapshot, with the policy in
/// force (the stored one, else `configured`) and the floor of the swap estimate. The gaps other
/// hosts' stamps start (`batch_delay` after the last release, `canary_bake` after the wave
/// passed) are measured from when this host first saw them: `sightings` has seen `snap`
/// ([`Sightings::observe`]) and `mono` is this host's monotonic reading taken with `now`. A
/// stamp `sightings` has not seen counts from the writer's own clock.
#[allow(clippy::too_many_arguments)]
pub fn slot_answer_seen(
    snap: &GroupSnapshot,
    configured: &RolloutPolicy,
    floor: Duration,
    instance: &str,
    version: &str,
    sightings: &Sightings,
    mono: Duration,
    now: Timestamp,
) -> SlotGate {
    let policy = effective(snap.stored_policy.as_ref(), configured);
    let mut view = view(snap, policy, floor, version);
    view.release_seen = view
        .last_release
        .and_then(|t| sightings.release_seen(t, mono, now));
    view.wave_seen = view
        .version
        .and_then(|s| s.wave_passed_at(policy.canary))
        .and_then(|t| sightings.wave_seen(version, t, mono, now));
    let schedule = Schedule::new(&policy.windows, policy.time_zone.zone());
    slot_gate(&view, &schedule, instance, now)
}

/// When this host first saw the events other hosts stamp with their wall clocks and the rollout's
/// gaps run from (issue 17): the group's last release and each version's canary wave passing,
/// each kept with this host's monotonic reading (a [`Duration`] since any fixed start) at its
/// first sight. A gap measured from the first sight is never cut short by a writer's clock being
/// behind this host's (nor lengthened by one ahead); it can only start late, by as long as this
/// host took to look (a sidekick that starts during a gap waits it whole).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sightings {
    /// The last release's stamp and when it was first seen.
    release: Option<(Timestamp, Duration)>,
    /// Per version: when its wave passed (the writer's stamp) and when that was first seen.
    waves: std::collections::BTreeMap<String, (Timestamp, Duration)>,
}

impl Sightings {
    /// Notes what `snap` shows at the monotonic reading `mono`: a stamp not seen before (a new
    /// release, a wave that passed, or one whose stamp changed) is seen now. Versions gone from
    /// the group are forgotten.
    pub fn observe(&mut self, snap: &GroupSnapshot, configured: &RolloutPolicy, mono: Duration) {
        let policy = effective(snap.stored_policy.as_ref(), configured);
        if let Some(last) = snap.versions.iter().filter_map(|v| v.last_release()).max()
            && self.release.is_none_or(|(seen, _)| seen != last)
        {
            self.release = Some((last, mono));
        }
        self.waves
            .retain(|version, _| snap.versions.iter().any(|v| &v.version == version));
        for state in &snap.versions {
            let Some(passed) = state.wave_passed_at(policy.canary) else {
                continue;
            };
            match self.waves.get(&state.version) {
                Some((seen, _)) if *seen == passed => {}
                _ => {
                    self.waves.insert(state.version.clone(), (passed, mono));
                }
            }
        }
    }

    /// When the release stamped `written` was first seen, in the frame of `now` (this host's
    /// clock read with the monotonic `mono`); `None` when it was not seen.
    pub fn release_seen(
        &self,
        written: Timestamp,
        mono: Duration,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let (stamp, at) = self.release?;
        (stamp == written).then(|| seen_at(at, mono, now))
    }

    /// When `version`'s wave passing stamped `written` was first seen (as [`Self::release_seen`]).
    pub fn wave_seen(
        &self,
        version: &str,
        written: Timestamp,
        mono: Duration,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let (stamp, at) = self.waves.get(version)?;
        (*stamp == written).then(|| seen_at(*at, mono, now))
    }
}

/// The monotonic reading `at` as a time in the frame of `now` (read with `mono`): `now` less
/// how long ago it was on the monotonic clock (a step of the wall clock between them moves it
/// along, so a gap from it still lasts its length).
fn seen_at(at: Duration, mono: Duration, now: Timestamp) -> Timestamp {
    let ago = jiff::SignedDuration::try_from(mono.saturating_sub(at))
        .unwrap_or(jiff::SignedDuration::MAX);
    now.checked_sub(ago).unwrap_or(Timestamp::MIN)
}

/// What the decisions read of `snap` for `version` under `policy`.
fn view<'a>(
    snap: &'a GroupSnapshot,
    policy: &'a RolloutPolicy,
    floor: Duration,
    version: &str,
) -> GroupView<'a> {
    GroupView {
        policy,
        paused: snap.paused.is_some(),
        halted: snap.halt.as_ref().map(|h| h.reason.as_str()),
        version: snap.versions.iter().find(|v| v.version == version),
        last_release: snap.versions.iter().filter_map(|v| v.last_release()).max(),
        release_seen: None,
        wave_seen: None,
        swap_estimate: swap_estimate(snap, policy, floor),
        superseded_by: superseded_by(snap, version),
    }
}

/// The newest version `snap` records a rollout of, if it is newer than `version` (both read
/// as semantic versions; a label that is none supersedes nothing and is superseded by nothing).
pub fn superseded_by<'a>(snap: &'a GroupSnapshot, version: &str) -> Option<&'a str> {
    let wanted = semver::Version::parse(version).ok()?;
    snap.versions
        .iter()
        .filter_map(|v| Some((semver::Version::parse(&v.version).ok()?, v.version.as_str())))
        .filter(|(parsed, _)| *parsed > wanted)
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, label)| label)
}

/// The instance record's phase while its swap waits for a slot (`agent::driver::record`).
pub const WAITING_FOR_SLOT: &str = "waiting-for-slot";

/// The instance record's phase while it is registered with no swap under way
/// (`agent::driver::record`).
pub const SERVING: &str = "serving";

/// How many of the group's instances serve `version`, and how many the rollout counts. Serving
/// is registered on it with no swap under way: an instance still verifying, in min-healthy or in
/// monitor on it does not serve it yet. While a slot is held the count is at least one more
/// than those serving, since the holder's record can be briefly absent (it moves between the
/// registration's lease and a hold lease): a rollout is never done while a swap holds a slot.
pub fn serving_counts(snap: &GroupSnapshot, version: &str) -> (usize, usize) {
    let serving = snap
        .instances
        .iter()
        .filter(|(_, r)| r.version == version && r.phase == SERVING)
        .count();
    let instances = match snap.slots_held {
        0 => snap.instances.len(),
        _ => snap.instances.len().max(serving + 1),
    };
    (serving, instances)
}

/// The version the group's rollout is about, with its recorded state: the version most
/// instances wait for a slot for when none of its rollout is recorded yet (with `canary = 0`
/// and `promote = "manual"` nothing records it before `rollout promote`), else the newest
/// recorded one. `None` when neither exists.
pub fn rollout_target(snap: &GroupSnapshot) -> Option<(&str, Option<&VersionState>)> {
    let mut waiting: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, record) in &snap.instances {
        if let Some(target) = record.target.as_deref()
            && record.phase == WAITING_FOR_SLOT
            && !snap.versions.iter().any(|v| v.version == target)
        {
            *waiting.entry(target).or_default() += 1;
        }
    }
    // Ties go to the greatest name, so the answer does not depend on the records' order.
    match waiting.into_iter().max_by_key(|(_, n)| *n) {
        Some((version, _)) => Some((version, None)),
        None => snap.versions.first().map(|v| (v.version.as_str(), Some(v))),
    }
}

/// The group's rollout target ([`rollout_target`]) and its stage, as `sidekick rollout status`
/// shows it; `None` before any rollout was recorded or waited for.
pub fn newest_stage(
    snap: &GroupSnapshot,
    configured: &RolloutPolicy,
    floor: Duration,
    now: Timestamp,
) -> Option<(String, Stage)> {
    let (target, _) = rollout_target(snap)?;
    let policy = effective(snap.stored_policy.as_ref(), configured);
    let (serving, instances) = serving_counts(snap, target);
    let view = view(snap, policy, floor, target);
    let schedule = Schedule::new(&policy.windows, policy.time_zone.zone());
    let stage = stage(&view, &schedule, serving, instances, now);
    Some((target.to_string(), stage))
}

/// When the rollout may be done, from measured durations: `remaining` instances one after
/// another, each taking `estimate` (the measured p95 swap) with `batch_delay` between them,
/// from now or from when the stage ends by itself (a bake, a window's opening). `None` while
/// it waits for a person (paused, halted, failed, awaiting promotion) or is done. Slots taken
/// side by side (`slot.max` > 1) finish sooner: this is the one-at-a-time bound.
pub fn eta(
    stage: &Stage,
    remaining: usize,
    estimate: Duration,
    batch_delay: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    let from = match stage {
        Stage::Rolling | Stage::Canaries { .. } | Stage::WindowTooShort { .. } => now,
        Stage::Baking { until } => (*until).max(now),
        Stage::WaitingForWindow { opens } => (*opens)?.max(now),
        Stage::Done
        | Stage::Halted(_)
        | Stage::Failed { .. }
        | Stage::Paused
        | Stage::AwaitingPromotion => return None,
    };
    let n = u32::try_from(remaining).ok()?;
    let total = estimate.checked_mul(n)? + batch_delay.checked_mul(n.saturating_sub(1))?;
    from.checked_add(jiff::SignedDuration::try_from(total).ok()?)
        .ok()
}

/// Whole seconds until the next window opens: 0 while one is open, `None` with no window
/// configured or none within the horizon.
pub fn next_window_secs(policy: &RolloutPolicy, now: Timestamp) -> Option<i64> {
    let schedule = Schedule::new(&policy.windows, policy.time_zone.zone());
    match schedule.state_at(now) {
        WindowState::Unrestricted => None,
        WindowState::Open { .. } => Some(0),
        WindowState::Closed { opens } => opens.map(|t| t.duration_since(now).as_secs().max(0)),
    }
}

/// The measured p95 of the group's last swaps, or before any the floor (`drain +
/// start_timeout + verify_timeout`, given) plus the policy's `min_healthy`.
pub fn swap_estimate(snap: &GroupSnapshot, policy: &RolloutPolicy, floor: Duration) -> Duration {
    p95_swap(&snap.versions, MEASURED_SWAPS).unwrap_or(floor + policy.min_healthy)
}

/// Why no update check is sent now, and when to look again (`None`: at the usual pace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckHold {
    /// Outside every window: a grant would linger in the service and time out.
    OutsideWindow { opens: Option<Timestamp> },
    /// A window opened at `opened`; this instance's start jitter runs until `until`.
    StartJitter { until: Timestamp },
    /// The group waits for `rollout promote` of `version`, and this instance is no canary of it:
    /// a grant would only wait for a slot it cannot take.
    AwaitingPromotion { version: String },
}

impl CheckHold {
    /// When the hold may end by itself.
    pub fn until(&self) -> Option<Timestamp> {
        match self {
            CheckHold::OutsideWindow { opens } => *opens,
            CheckHold::StartJitter { until } => Some(*until),
            CheckHold::AwaitingPromotion { .. } => None,
        }
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        match self {
            CheckHold::OutsideWindow { opens: Some(t) } => {
                format!("outside every update window; the next opens at {t}")
            }
            CheckHold::OutsideWindow { opens: None } => {
                "outside every update window; none opens within a week".into()
            }
            CheckHold::StartJitter { until } => {
                format!("an update window opened; this instance's start jitter runs until {until}")
            }
            CheckHold::AwaitingPromotion { version } => format!(
                "the group waits for `sidekick rollout promote` of {version}; this instance is \
                 no canary of it"
            ),
        }
    }
}

/// The delay before the next pass while a check is held: the usual `interval`, or less when
/// the hold ends by itself sooner (`left`; a window's opening, the jitter's end), but at least
/// a second so a hold ending now does not spin.
pub fn check_delay(left: Option<Duration>, interval: Duration) -> Duration {
    left.map_or(interval, |left| left.min(interval))
        .max(Duration::from_secs(1))
}

/// The start jitter this instance drew for one opening of the windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jitter {
    /// The opening (its start, as [`WindowState::Open`] names it) and the jitter drawn for it.
    drawn: Option<(Option<Timestamp>, Duration)>,
}

impl Jitter {
    /// The jitter for the opening that began at `opened` and closes at `closes`: drawn once per
    /// opening with `draw` in [0, 1).
    fn for_opening(
        &mut self,
        opened: Option<Timestamp>,
        closes: Option<Timestamp>,
        draw: f64,
    ) -> Duration {
        match self.drawn {
            Some((at, jitter)) if at == opened => jitter,
            _ => {
                let jitter = start_jitter(jitter_bound(opened, closes), draw);
                self.drawn = Some((opened, jitter));
                jitter
            }
        }
    }
}

/// May this instance send an update check at `now`? `newest` is the group's newest version
/// state, `running` the version the instance runs (when known), `draw` a uniform number in
/// [0, 1) for a jitter not drawn yet.
pub fn check_gate(
    snap: &GroupSnapshot,
    configured: &RolloutPolicy,
    instance: &str,
    running: Option<&str>,
    jitter: &mut Jitter,
    now: Timestamp,
    draw: f64,
) -> Option<CheckHold> {
    let policy = effective(snap.stored_policy.as_ref(), configured);
    let schedule = Schedule::new(&policy.windows, policy.time_zone.zone());
    match schedule.state_at(now) {
        WindowState::Unrestricted => {}
        WindowState::Closed { opens } => return Some(CheckHold::OutsideWindow { opens }),
        WindowState::Open { opened, closes } => {
            let wait = jitter.for_opening(opened, closes, draw);
            // An opening older than the horizon has long passed its jitter.
            if let Some(until) = opened.and_then(|o| o.checked_add(wait).ok())
                && now < until
            {
                return Some(CheckHold::StartJitter { until });
            }
        }
    }
    awaiting_promotion(policy, snap.versions.first(), instance, running)
}

/// The promotion hold: with `promote = "manual"`, the newest version not finished, not promoted,
/// not the one this instance runs, every canary place taken and this instance none of them.
fn awaiting_promotion(
    policy: &RolloutPolicy,
    newest: Option<&VersionState>,
    instance: &str,
    running: Option<&str>,
) -> Option<CheckHold> {
    let state = newest?;
    let waits = policy.promote == Promote::Manual
        && state.finished.is_none()
        && state.promoted.is_none()
        && running != Some(state.version.as_str())
        && !state.is_canary(instance)
        && state.canaries.len() >= policy.canary as usize;
    waits.then(|| CheckHold::AwaitingPromotion {
        version: state.version.clone(),
    })
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
