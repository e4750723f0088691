//! The state of one version's rollout in a group, `/sidekick/rollouts/<group>/<version>` (JSON):
//! when it started, its canaries and their results, failures, promotion, finish, and each swap's
//! step durations. The instances write it themselves with compare-and-swap; the changes here are
//! pure, so one read-modify-write retries them as they are.
//!
//! Every value read is untrusted: [`VersionState::decode`] refuses an unknown field, a bad time,
//! a version that is not the key's, and lists past their bounds, naming the key.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A new run id: 16 random hex digits naming one daemon process, so a canary place it claims
/// can be told from one an earlier process of the instance claimed, with no clock involved.
pub fn new_run_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The daemon process that claims a canary place: its run id ([`new_run_id`]) and the boot of
/// the host it runs in (`/proc/sys/kernel/random/boot_id`; empty where unreadable, which
/// matches no boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claimant {
    pub run: String,
    pub boot: String,
}

/// Swaps kept per version (a group larger than this keeps its latest swaps).
pub const MAX_SWAPS: usize = 500;
/// Canaries and failures kept per version.
pub const MAX_LISTED: usize = 1000;

/// One canary of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub instance: String,
    /// When it took its slot.
    pub since: Timestamp,
    /// The daemon process that claimed the place; absent in a place claimed by a release
    /// before run ids, which is judged by `since` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<Claimant>,
    /// When it passed `min_healthy`.
    #[serde(default)]
    pub passed: Option<Timestamp>,
    /// When it failed.
    #[serde(default)]
    pub failed: Option<Timestamp>,
}

impl Canary {
    /// Whether the process `me`, started at `started`, takes this place for one that no swap
    /// of a live process claimed ([`VersionState::lost_place_of`]). Its own place (the same run
    /// id) never is. Another process's place in the same boot of the same host is, whatever the
    /// clocks say: the journal lock keeps one daemon per instance on a host, and a journaled
    /// swap of the earlier one is resumed before any pass settles. A place claimed on another
    /// host or boot (or with no claimant, by a release before run ids) may be a live clone's
    /// (the same instance name on a cloned machine), told apart only by time: lost when claimed
    /// before or at `started`.
    pub fn lost_to(&self, me: &Claimant, started: Timestamp) -> bool {
        match &self.claimed_by {
            Some(claimant) if claimant.run == me.run => false,
            Some(claimant) if claimant.boot == me.boot && !me.boot.is_empty() => true,
            _ => self.since <= started,
        }
    }
}

/// A failed instance of the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub instance: String,
    pub at: Timestamp,
    /// The stage it failed in: `verify`, `min_healthy` or `monitor`.
    pub stage: String,
    pub reason: String,
}

/// `sidekick rollout promote` on this version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    pub at: Timestamp,
    pub by: String,
}

/// One instance's swap to the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapRecord {
    pub instance: String,
    /// When it took its slot.
    pub took_slot: Timestamp,
    /// When it released the slot (after `min_healthy`); absent while in flight.
    #[serde(default)]
    pub released: Option<Timestamp>,
    /// Milliseconds per step (`drain`, `restart`, `verify`, `min_healthy`, …).
    #[serde(default)]
    pub steps_ms: BTreeMap<String, u64>,
}

impl SwapRecord {
    /// From taking the slot to releasing it, once released.
    pub fn duration(&self) -> Option<Duration> {
        let released = self.released?;
        Duration::try_from(released.duration_since(self.took_slot)).ok()
    }
}

/// The rollout of one version in one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionState {
    pub version: String,
    pub started: Timestamp,
    #[serde(default)]
    pub canaries: Vec<Canary>,
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub promoted: Option<Promotion>,
    #[serde(default)]
    pub finished: Option<Timestamp>,
    #[serde(default)]
    pub swaps: Vec<SwapRecord>,
}

/// A stored value that cannot be used, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed value at {key}: {message}")]
pub struct Malformed {
    pub key: String,
    pub message: String,
}

impl VersionState {
    /// A version's rollout beginning at `now`.
    pub fn new(version: &str, now: Timestamp) -> VersionState {
        VersionState {
            version: version.to_string(),
            started: now,
            canaries: Vec::new(),
            failures: Vec::new(),
            promoted: None,
            finished: None,
            swaps: Vec::new(),
        }
    }

    /// Parses the value at `key` and checks it is the state of `version`.
    pub fn decode(key: &str, version: &str, raw: &[u8]) -> Result<VersionState, Malformed> {
        let fail = |message: String| Malformed {
            key: key.to_string(),
            message,
        };
        let state: VersionState =
            serde_json::from_slice(raw).map_err(|e| fail(format!("not a rollout state: {e}")))?;
        if state.version != version {
            return Err(fail(format!(
                "names version `{}`, not the key's `{version}`",
                state.version
            )));
        }
        for (what, len, max) in [
            ("canaries", state.canaries.len(), MAX_LISTED),
            ("failures", state.failures.len(), MAX_LISTED),
            ("swaps", state.swaps.len(), MAX_SWAPS),
        ] {
            if len > max {
                return Err(fail(format!("{len} {what}, more than the {max} kept")));
            }
        }
        Ok(state)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Canaries that passed `min_healthy`.
    pub fn canaries_passed(&self) -> usize {
        self.canaries.iter().filter(|c| c.passed.is_some()).count()
    }

    /// When the last canary passed, once all `wanted` have.
    pub fn wave_passed_at(&self, wanted: u32) -> Option<Timestamp> {
        let passed: Vec<Timestamp> = self.canaries.iter().filter_map(|c| c.passed).collect();
        (passed.len() >= wanted as usize && wanted > 0)
            .then(|| passed.into_iter().max())
            .flatten()
    }

    pub fn is_canary(&self, instance: &str) -> bool {
        self.canaries.iter().any(|c| c.instance == instance)
    }

    /// The last slot release of this version.
    pub fn last_release(&self) -> Option<Timestamp> {
        self.swaps.iter().filter_map(|s| s.released).max()
    }

    /// Adds `instance` as a canary claimed by `claimant`, unless it is one already.
    pub fn add_canary(&mut self, instance: &str, claimant: Option<&Claimant>, now: Timestamp) {
        if !self.is_canary(instance) {
            self.canaries.push(Canary {
                instance: instance.to_string(),
                since: now,
                claimed_by: claimant.cloned(),
                passed: None,
                failed: None,
            });
        }
    }

    /// Marks `instance`'s canary as passed or failed at `now` (the first result stays).
    pub fn canary_result(&mut self, instance: &str, passed: bool, now: Timestamp) {
        if let Some(c) = self.canaries.iter_mut().find(|c| c.instance == instance)
            && c.passed.is_none()
            && c.failed.is_none()
        {
            if passed {
                c.passed = Some(now);
            } else {
                c.failed = Some(now);
            }
        }
    }

    /// Records a failure (the failure budget counts distinct instances).
    pub fn add_failure(&mut self, failure: Failure) {
        if self.failures.len() < MAX_LISTED {
            self.failures.push(failure);
        }
    }

    /// Counts `failure` against the version once per instance (a canary's result too): re-sending
    /// it, or the release recording it again, changes nothing. Returns whether anything changed.
    pub fn count_failure(&mut self, failure: Failure) -> bool {
        let canary_before = self.canaries.clone();
        self.canary_result(&failure.instance, false, failure.at);
        let known = self.failures.iter().any(|f| f.instance == failure.instance);
        if !known {
            self.add_failure(failure);
        }
        !known || self.canaries != canary_before
    }

    /// Distinct instances that failed on this version.
    pub fn failed_instances(&self) -> usize {
        let mut names: Vec<&str> = self.failures.iter().map(|f| f.instance.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    /// `sidekick rollout promote` of `version` over its current state (`None`: nobody started
    /// it yet, so the promotion records its rollout, starting `now`): the state to write, or
    /// `None` when it is promoted already. Canaries and a bake still hold as before; only the
    /// manual step is lifted.
    pub fn promoted(
        current: Option<&VersionState>,
        version: &str,
        by: &str,
        now: Timestamp,
    ) -> Option<VersionState> {
        let mut next = current
            .cloned()
            .unwrap_or_else(|| VersionState::new(version, now));
        if next.promoted.is_some() {
            return None;
        }
        next.promoted = Some(Promotion {
            at: now,
            by: by.to_string(),
        });
        Some(next)
    }

    /// Records a swap, keeping the latest [`MAX_SWAPS`].
    pub fn add_swap(&mut self, swap: SwapRecord) {
        self.swaps.push(swap);
        if self.swaps.len() > MAX_SWAPS {
            self.swaps.remove(0);
        }
    }
}

/// How a swap of the version ended, as its release records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapEnd {
    /// The new version passed min-healthy (3/1 decided).
    Passed,
    /// Rolled back with the version to blame.
    Failed(Failure),
    /// Ended otherwise (fenced, interrupted, rolled back for another reason): a canary place it
    /// claimed is freed for another try.
    Unjudged,
}

/// One swap's release of its slot, as the version's state records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub instance: String,
    /// When the swap took its slot (it names the swap among the instance's swaps).
    pub took_slot: Timestamp,
    pub at: Timestamp,
    pub steps_ms: BTreeMap<String, u64>,
    pub end: SwapEnd,
}

/// What an instance that serves with no swap in flight does with its own canary place of a
/// version when the place has no result: the swap that claimed it can no longer record one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostCanary {
    /// It runs the version: its swap passed min-healthy (every swap that ends serving the new
    /// version did, a recovered one included: recovery runs min-healthy again in full).
    Passed,
    /// The version is on its denylist: its swap failed on it (only a failure the version is
    /// blamed for denylists it).
    Failed,
    /// It runs another version and the version is not on its denylist: the swap ended without a
    /// verdict (or never took its slot); the place goes to another instance.
    GiveUp,
}

impl VersionState {
    /// Records `release` (idempotent, so a write that failed is sent again as it is): the swap's
    /// record (added when its start was never written), its release and steps, and its end. A
    /// canary place is only judged when claimed before the swap took its slot, so a late retry
    /// never touches a place the instance claimed again since.
    pub fn record_release(&mut self, release: &Release) {
        let me = release.instance.as_str();
        match self
            .swaps
            .iter_mut()
            .rev()
            .find(|s| s.instance == me && s.took_slot == release.took_slot)
        {
            Some(record) => {
                record.released = Some(release.at);
                record.steps_ms = release.steps_ms.clone();
            }
            None => self.add_swap(SwapRecord {
                instance: me.to_string(),
                took_slot: release.took_slot,
                released: Some(release.at),
                steps_ms: release.steps_ms.clone(),
            }),
        }
        let claimed_before = |c: &Canary| c.instance == me && c.since <= release.took_slot;
        let own = self.canaries.iter().any(claimed_before);
        match &release.end {
            SwapEnd::Passed if own => self.canary_result(me, true, release.at),
            SwapEnd::Passed => {}
            // Counted already when the halt was asked (max_failures above 1): nothing changes.
            SwapEnd::Failed(failure) => {
                self.count_failure(failure.clone());
            }
            SwapEnd::Unjudged => self
                .canaries
                .retain(|c| !claimed_before(c) || c.passed.is_some() || c.failed.is_some()),
        }
    }

    /// Whether `instance` holds a canary place with neither result.
    pub fn awaits_result_of(&self, instance: &str) -> bool {
        self.canaries
            .iter()
            .any(|c| c.instance == instance && c.passed.is_none() && c.failed.is_none())
    }

    /// Whether `instance` holds a canary place with neither result that the process `me`,
    /// started at `started`, takes for lost: one no swap of a live process can record a result
    /// for any more ([`Canary::lost_to`]).
    pub fn lost_place_of(&self, instance: &str, me: &Claimant, started: Timestamp) -> bool {
        self.canaries.iter().any(|c| {
            c.instance == instance
                && c.passed.is_none()
                && c.failed.is_none()
                && c.lost_to(me, started)
        })
    }

    /// The rule for a canary place of `instance` with no result while the instance serves
    /// (active, registered) with no swap in flight or journaled, running `running`; `denylisted`:
    /// the version is on its denylist. `None` when it holds no such place. Never `Passed` for a
    /// version it failed on: a failure recorded here or denylisted wins.
    pub fn lost_canary(
        &self,
        instance: &str,
        running: &str,
        denylisted: bool,
    ) -> Option<LostCanary> {
        if !self.awaits_result_of(instance) {
            return None;
        }
        let failed = denylisted || self.failures.iter().any(|f| f.instance == instance);
        Some(if failed {
            LostCanary::Failed
        } else if running == self.version {
            LostCanary::Passed
        } else {
            LostCanary::GiveUp
        })
    }

    /// Applies [`LostCanary`] to `instance`'s place at `now`; returns whether anything changed.
    pub fn settle_lost_canary(&mut self, instance: &str, rule: LostCanary, now: Timestamp) -> bool {
        if !self.awaits_result_of(instance) {
            return false;
        }
        match rule {
            LostCanary::Passed => self.canary_result(instance, true, now),
            LostCanary::Failed => self.canary_result(instance, false, now),
            LostCanary::GiveUp => self
                .canaries
                .retain(|c| c.instance != instance || c.passed.is_some() || c.failed.is_some()),
        }
        true
    }
}

/// The p95 (nearest rank) of the last `last` released swaps of `history`, newest versions first;
/// `None` before any.
pub fn p95_swap(history: &[VersionState], last: usize) -> Option<Duration> {
    let mut swaps: Vec<(Timestamp, Duration)> = history
        .iter()
        .flat_map(|v| &v.swaps)
        .filter_map(|s| Some((s.released?, s.duration()?)))
        .collect();
    swaps.sort_by_key(|s| std::cmp::Reverse(s.0));
    swaps.truncate(last);
    let mut durations: Vec<Duration> = swaps.into_iter().map(|(_, d)| d).collect();
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    let rank = (durations.len() * 95).div_ceil(100);
    durations.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
