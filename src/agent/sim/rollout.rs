//! The group's rollout in the simulation (issue 17): what etcd keeps of it (the stored policy,
//! the pause, each version's state, changed by compare-and-swap: [`RolloutStore`]), and each
//! simulated sidekick's side of it, calling the same pure functions as the real agent
//! ([`crate::rollout::agent`]) in the same order: the slot gate ([`gate::slot_answer_seen`],
//! after noting what the read shows in the process's [`gate::Sightings`]) and the
//! canary claim before the slot backend's acquire, the swap recorded when the slot is taken and
//! its result when it is released (before the key goes), and the check gate
//! ([`gate::check_gate`]) before each update check. Virtual time is a [`Timestamp`] from
//! [`EPOCH_SECS`] (a Monday, 00:00 UTC), so windows open and close during a run.
//!
//! The policy of each seed is drawn in [`draw_policy`]; the sim's own account of what the policy
//! allows (for [`super::Violation::CanaryOverrun`] and [`super::Violation::SlotOutsideWindow`])
//! is kept apart from the code under test: windows from their minutes, canaries passed from the
//! machines' stages, promotions from the operator's actions.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

use jiff::Timestamp;

use super::world::{DRAIN, Ms, START_TIMEOUT, VERIFY_TIMEOUT};
use crate::agent::machine::state::Phase;
use crate::agent::machine::swap::{Report, Stage, SwapPhase};
use crate::rollout::agent::{SlotHold, hold_answer, verdict};
use crate::rollout::decide::{Hold, SlotGate};
use crate::rollout::gate::{self, Jitter};
use crate::rollout::policy::{Promote, RolloutPolicy, Window, ZoneName};
use crate::rollout::state::{
    Canary, Claimant, Failure, Release, SwapEnd, SwapRecord, VersionState,
};
use crate::rollout::store::{GroupSnapshot, Paused, effective};
use crate::slot::halt::HaltMarker;

/// Virtual time 0: Monday 2024-01-01 00:00:00 UTC.
pub const EPOCH_SECS: i64 = 1_704_067_200;

/// The instant of virtual time `now`.
pub fn timestamp(now: Ms) -> Timestamp {
    Timestamp::from_millisecond(EPOCH_SECS * 1000 + now as i64).expect("in range")
}

/// From `now` to `t`, at least zero.
pub fn until(now: Ms, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(timestamp(now))).unwrap_or_default()
}

/// `swap.drain + swap.start_timeout + swap.verify_timeout` of the simulated sidekicks.
pub fn floor() -> Duration {
    Duration::from_millis(DRAIN + START_TIMEOUT + VERIFY_TIMEOUT)
}

/// What etcd keeps of the group's rollout: `/sidekick/policy/<group>`, `/sidekick/paused/<group>`
/// and `/sidekick/rollouts/<group>/<version>`.
#[derive(Debug, Clone, Default)]
pub struct RolloutStore {
    pub stored_policy: Option<RolloutPolicy>,
    pub paused: Option<Paused>,
    pub versions: BTreeMap<String, VersionState>,
    /// Bumped by every write: what a waiting slot request watches (`wait_for_change`).
    pub revision: i64,
}

impl RolloutStore {
    /// `store::read_group`: everything at one revision, versions newest start first.
    pub fn snapshot(&self, halt: Option<&(String, String)>) -> GroupSnapshot {
        let mut versions: Vec<VersionState> = self.versions.values().cloned().collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.started));
        GroupSnapshot {
            revision: self.revision,
            stored_policy: self.stored_policy.clone(),
            paused: self.paused.clone(),
            halt: halt.map(|(version, reason)| HaltMarker {
                version: version.clone(),
                reason: reason.clone(),
                instance: String::new(),
                since: String::new(),
            }),
            versions,
            instances: Vec::new(),
            slots_held: 0,
        }
    }

    /// `store::update_version`: the compare-and-swap, atomic here (one writer at a time).
    pub fn update_version(
        &mut self,
        version: &str,
        mut change: impl FnMut(Option<&VersionState>) -> Option<VersionState>,
    ) -> Option<VersionState> {
        let current = self.versions.get(version);
        let Some(next) = change(current) else {
            return current.cloned();
        };
        self.versions.insert(version.to_string(), next.clone());
        self.revision += 1;
        Some(next)
    }
}

/// The swap this process is in, as the version's state records it (`agent/history.rs`'s
/// `CurrentSwap`, without the step timings): lost with the process.
#[derive(Debug, Clone)]
pub struct CurrentSwap {
    pub version: String,
    pub took: Timestamp,
    /// `history.rs`: `Ok` once min-healthy passed, `Err((stage, reason))` once rolled back with
    /// the version to blame, `None` when it ended otherwise (which frees a canary place).
    pub verdict: Option<Result<(), (&'static str, String)>>,
}

/// One process's `RolloutAgent` state.
#[derive(Debug, Clone)]
pub struct RolloutClient {
    pub configured: RolloutPolicy,
    pub jitter: Jitter,
    pub swap: Option<CurrentSwap>,
    /// `min_healthy` of the policy in force when the last slot request was judged.
    pub min_healthy: Option<Duration>,
    /// `monitor` of that policy.
    pub monitor: Option<Duration>,
    /// `history.rs`'s unconfirmed writes: releases etcd did not take yet, sent again.
    pub pending: Vec<(String, Release)>,
    /// When the process started (`RolloutAgent`'s `started`).
    pub started: Timestamp,
    /// The process's run id and host boot (`RolloutAgent`'s `claimant`), recorded in the
    /// canary places it claims.
    pub claimant: Claimant,
    /// The last update pass that looked for this instance's lost canary places (serving, with
    /// no swap in flight and etcd reachable).
    pub settled_at: Option<Timestamp>,
    /// `RolloutAgent`'s sightings: when this process first saw the last release and each
    /// version's wave passing, on its monotonic clock (here virtual time).
    pub sightings: gate::Sightings,
}

impl RolloutClient {
    pub fn new(configured: RolloutPolicy, started: Timestamp, claimant: Claimant) -> RolloutClient {
        RolloutClient {
            started,
            claimant,
            settled_at: None,
            configured,
            jitter: Jitter::default(),
            swap: None,
            min_healthy: None,
            monitor: None,
            pending: Vec::new(),
            sightings: gate::Sightings::default(),
        }
    }

    /// `RolloutAgent::min_healthy`.
    pub fn min_healthy(&self) -> Duration {
        self.min_healthy.unwrap_or(self.configured.min_healthy)
    }

    /// `RolloutAgent::monitor`.
    pub fn monitor(&self) -> Duration {
        self.monitor.unwrap_or(self.configured.monitor)
    }

    /// `RolloutAgent::observe` (`history.rs`): the swap's verdict once known, by the agent's
    /// own rule ([`rollout::agent::verdict`](crate::rollout::agent::verdict)).
    pub fn observe(&mut self, phase: &Phase) {
        let (Phase::Updating(swap), Some(current)) = (phase, self.swap.as_mut()) else {
            return;
        };
        if current.verdict.is_none() {
            current.verdict = verdict(swap);
        }
    }
}

/// A seed's policy and the sim's own reading of its windows.
#[derive(Debug, Clone)]
pub struct Drawn {
    pub policy: RolloutPolicy,
    /// Stored in etcd (`sidekick rollout set`) rather than configured on every instance.
    pub stored: bool,
    /// Daily windows as `[start, end)` in virtual milliseconds of the first day.
    pub windows: Vec<(Ms, Ms)>,
}

/// Draws the seed's rollout policy: `canary` 0–2, `promote` auto or manual, a bake, a
/// `min_healthy` (0 in some seeds), `max_failures = 1`, and in some seeds two daily windows: one
/// that closes (or opens and closes) during the faults, and one that opens later for an hour.
pub fn draw_policy(rng: &mut fastrand::Rng) -> Drawn {
    let canary = rng.u32(0..=2);
    let promote = match rng.u8(0..3) {
        0 => Promote::Manual,
        _ => Promote::Auto,
    };
    let canary_bake = match rng.bool() {
        true => Duration::ZERO,
        false => Duration::from_millis(rng.u64(1_000..30_000)),
    };
    let min_healthy = match rng.u8(0..4) {
        0 => Duration::ZERO,
        _ => Duration::from_millis(rng.u64(2_000..20_000)),
    };
    let mut windows = Vec::new();
    let mut spans = Vec::new();
    if rng.u8(0..3) == 0 {
        let s1 = rng.u32(0..=2);
        let l1 = rng.u32(1..=3);
        let s2 = s1 + l1 + rng.u32(1..=3);
        for (start, length) in [(s1, l1), (s2, 60)] {
            windows.push(Window {
                days: all_days(),
                start,
                length,
            });
            spans.push((
                u64::from(start) * 60_000,
                u64::from(start + length) * 60_000,
            ));
        }
    }
    let policy = RolloutPolicy {
        min_healthy,
        monitor: Duration::ZERO,
        canary,
        canary_bake,
        promote,
        max_failures: NonZeroU32::MIN,
        batch_delay: Duration::ZERO,
        time_zone: ZoneName::Utc,
        windows,
    };
    Drawn {
        policy,
        stored: rng.bool(),
        windows: spans,
    }
}

fn all_days() -> Vec<jiff::civil::Weekday> {
    use jiff::civil::Weekday::*;
    vec![
        Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday,
    ]
}

/// The sim's own account of the policy (apart from the code under test).
#[derive(Debug, Clone, Default)]
pub struct Account {
    /// Per version, when each instance passed min-healthy (its swap reached 3/1).
    pub passed: BTreeMap<String, BTreeMap<usize, Ms>>,
    /// Per version, the instances that failed on it (a failure that blames the version).
    pub failed_on: BTreeMap<String, BTreeSet<usize>>,
    /// When the operator promoted each version.
    pub promoted: BTreeMap<String, Ms>,
}

impl Account {
    /// Whether the canary wave of `version` is through at `now`: `canary` instances passed
    /// min-healthy, the bake is over, and it was promoted when `promote = "manual"`.
    pub fn wave_through(&self, policy: &RolloutPolicy, version: &str, now: Ms) -> bool {
        let wanted = policy.canary as usize;
        if wanted > 0 {
            let mut times: Vec<Ms> = self
                .passed
                .get(version)
                .map(|m| m.values().copied().collect())
                .unwrap_or_default();
            times.sort_unstable();
            let Some(&through) = times.get(wanted - 1) else {
                return false;
            };
            if now < through + policy.canary_bake.as_millis() as Ms {
                return false;
            }
        }
        policy.promote == Promote::Auto || self.promoted.contains_key(version)
    }
}

/// Whether virtual time `now` is inside one of the daily `windows` (the sim's own reading).
pub fn in_window(windows: &[(Ms, Ms)], now: Ms) -> bool {
    let day = 24 * 3_600_000;
    let t = now % day;
    windows.iter().any(|&(start, end)| t >= start && t < end)
}

impl super::Sim {
    /// The group's rollout as one read sees it.
    pub(super) fn snapshot(&self) -> GroupSnapshot {
        self.rollout.snapshot(self.etcd.halt.as_ref())
    }

    /// `RolloutAgent::slot_hold`, before the slot backend's acquire of a slot not held (and not
    /// taken again by the swap that held it): `None` to go on, or why not (the backend answers
    /// busy, or halted when the version spent its failure budget).
    pub(super) fn slot_hold(&mut self, i: usize, version: &str) -> Option<SlotHold> {
        let now = timestamp(self.now);
        let snap = self.snapshot();
        let me = self.inst[i].holder.clone();
        let p = self.inst[i].proc.as_mut()?;
        let configured = p.rollout.configured.clone();
        // As the agent does: what the snapshot shows is seen now, then the gate judges the gaps
        // from those sightings (virtual time is the monotonic clock).
        let mono = Duration::from_millis(self.now);
        p.rollout.sightings.observe(&snap, &configured, mono);
        let answer = gate::slot_answer_seen(
            &snap,
            &configured,
            floor(),
            &me,
            version,
            &p.rollout.sightings,
            mono,
            now,
        );
        let policy = effective(snap.stored_policy.as_ref(), &configured).clone();
        p.rollout.min_healthy = Some(policy.min_healthy);
        p.rollout.monitor = Some(policy.monitor);
        let hold = match answer {
            SlotGate::Take { canary: false } => None,
            SlotGate::Take { canary: true } => {
                return self.claim_canary(i, version, &policy).map(SlotHold::Busy);
            }
            SlotGate::Hold(Hold::Halted(_)) => None,
            SlotGate::Hold(hold) => Some(hold),
        };
        if let Some(Hold::Canaries { .. }) = &hold {
            self.canary_result_lost(i, version, &snap);
        }
        let starting = matches!(
            self.inst[i].proc.as_ref().and_then(|p| p.stage()),
            Some(Stage::AcquiringSlot { .. })
        );
        // `RolloutAgent::record_awaited`: held for a promotion with nothing recorded of it.
        if hold == Some(Hold::AwaitingPromotion)
            && !snap.versions.iter().any(|v| v.version == version)
        {
            let now = timestamp(self.now);
            self.rollout.update_version(version, |current| {
                current.is_none().then(|| VersionState::new(version, now))
            });
        }
        let answer = hold.as_ref().map(hold_answer);
        if let (Some(Hold::FailureBudgetSpent { failed, .. }), true) = (&hold, starting)
            && matches!(answer, Some(SlotHold::Busy(_)))
            && !self.seen(super::Violation::WaitsOnSpentBudget, i)
        {
            let detail =
                format!("#{i} waits for a slot for {version}, on which {failed} instances failed");
            self.violation(super::Violation::WaitsOnSpentBudget, detail);
        }
        if let Some(SlotHold::Busy(text) | SlotHold::Refused(text)) = &answer {
            let text = text.clone();
            self.log(i, || format!("slot held back: {text}"));
            let resume = match self.inst[i].proc.as_ref().and_then(|p| p.stage()) {
                Some(Stage::Reacquiring { resume, .. }) => Some(format!("{resume:?}")),
                _ => None,
            };
            if let Some(resume) = resume
                && !self.seen(super::Violation::ReacquireHeldByPolicy, i)
            {
                let detail = format!(
                    "#{i} takes its slot again for {version} to resume {resume}: held, {text}"
                );
                self.violation(super::Violation::ReacquireHeldByPolicy, detail);
            }
        }
        answer
    }

    /// The wave of `version` holds `i`: a canary with no result that no instance of its name is
    /// in a swap to the version for (nor journaled so) will never get one.
    fn canary_result_lost(&mut self, i: usize, version: &str, snap: &GroupSnapshot) {
        let Some(state) = snap.versions.iter().find(|v| v.version == version) else {
            return;
        };
        let swapping = |holder: &str| {
            self.inst.iter().any(|inst| {
                let phase = inst.proc.as_ref().is_some_and(|p| match &p.agent.phase {
                    Phase::Updating(swap) => swap.plan.new.version == version,
                    _ => false,
                });
                let journal = inst
                    .disk
                    .journal
                    .as_ref()
                    .is_some_and(|s| s.plan.new.version == version);
                inst.holder == holder && (phase || journal)
            })
        };
        // Its result is still to come from a write kept for etcd, or from the holder's next
        // pass that looks for lost places: lost only once such a pass went by without it.
        let kept = |holder: &str| {
            self.inst.iter().any(|inst| {
                inst.holder == holder
                    && inst
                        .proc
                        .as_ref()
                        .is_some_and(|p| p.rollout.pending.iter().any(|(v, _)| v == version))
            })
        };
        let settle_missed = |canary: &Canary| {
            self.inst.iter().any(|inst| {
                inst.holder == canary.instance
                    && inst.proc.as_ref().is_some_and(|p| {
                        // A process that did not claim the place (`lost_place_of`) and looked
                        // since.
                        canary.lost_to(&p.rollout.claimant, p.rollout.started)
                            && p.rollout.settled_at.is_some_and(|t| t > canary.since)
                    })
            })
        };
        let lost: Vec<String> = state
            .canaries
            .iter()
            .filter(|c| {
                c.passed.is_none()
                    && c.failed.is_none()
                    && !swapping(&c.instance)
                    && !kept(&c.instance)
                    && settle_missed(c)
            })
            .map(|c| c.instance.clone())
            .collect();
        if !lost.is_empty() && !self.seen(super::Violation::CanaryResultLost, i) {
            let detail = format!(
                "#{i} waits on the canaries of {version}; {lost:?} have no result and no swap \
                 that could record one"
            );
            self.violation(super::Violation::CanaryResultLost, detail);
        }
    }

    /// `RolloutAgent::claim_canary`: one of the canary places by compare-and-swap.
    fn claim_canary(&mut self, i: usize, version: &str, policy: &RolloutPolicy) -> Option<String> {
        let now = timestamp(self.now);
        let me = self.inst[i].holder.clone();
        let claimant = self.inst[i]
            .proc
            .as_ref()
            .map(|p| p.rollout.claimant.clone());
        let wanted = policy.canary;
        let state = self.rollout.update_version(version, |current| {
            let mut next = current
                .cloned()
                .unwrap_or_else(|| VersionState::new(version, now));
            if next.is_canary(&me) || next.canaries.len() >= wanted as usize {
                return None;
            }
            next.add_canary(&me, claimant.as_ref(), now);
            Some(next)
        });
        match state {
            Some(state) if state.is_canary(&me) => {
                self.log(i, || format!("a canary of {version}"));
                None
            }
            _ => Some(format!("the {wanted} canary places of {version} are taken")),
        }
    }

    /// `RolloutAgent::took_slot`: the kept releases first, then a newly held slot for `version`
    /// is recorded.
    pub(super) fn took_slot(&mut self, i: usize, version: &str) {
        self.flush_pending(i);
        let now = timestamp(self.now);
        let me = self.inst[i].holder.clone();
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.rollout.swap = Some(CurrentSwap {
                version: version.to_string(),
                took: now,
                verdict: None,
            });
        }
        self.change(version, |state| {
            state.add_swap(SwapRecord {
                instance: me.clone(),
                took_slot: now,
                released: None,
                steps_ms: BTreeMap::new(),
            })
        });
    }

    /// `RolloutAgent::released` (`history.rs`): before the slot key goes, the swap's release and
    /// result, kept until etcd takes it ([`Self::flush_pending`]).
    pub(super) fn rollout_released(&mut self, i: usize, reachable: bool) {
        let Some(swap) = self.inst[i]
            .proc
            .as_mut()
            .and_then(|p| p.rollout.swap.take())
        else {
            return;
        };
        let now = timestamp(self.now);
        let me = self.inst[i].holder.clone();
        let end = match &swap.verdict {
            Some(Ok(())) => SwapEnd::Passed,
            Some(Err((stage, reason))) => SwapEnd::Failed(Failure {
                instance: me.clone(),
                at: now,
                stage: stage.to_string(),
                reason: reason.clone(),
            }),
            None => SwapEnd::Unjudged,
        };
        let release = Release {
            instance: me,
            took_slot: swap.took,
            at: now,
            steps_ms: BTreeMap::new(),
            end,
        };
        self.log(i, || format!("swap's end: {:?}", swap.verdict));
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.rollout.pending.push((swap.version, release));
        }
        if reachable {
            self.flush_pending(i);
        } else {
            self.log(i, || {
                "the swap's end not recorded: etcd unreachable; kept".into()
            });
        }
    }

    /// `history.rs`'s `flush_pending`: each kept release written (idempotent), oldest first.
    pub(super) fn flush_pending(&mut self, i: usize) {
        if self.cut(i) {
            return;
        }
        let pending = match self.inst[i].proc.as_mut() {
            Some(p) => std::mem::take(&mut p.rollout.pending),
            None => return,
        };
        for (version, release) in pending {
            self.log(i, || format!("swap's end recorded for {version}"));
            self.change(&version, |state| state.record_release(&release));
        }
    }

    /// `RolloutAgent::settle` (`lost.rs`), at the start of each update pass: the kept releases
    /// sent again; and, serving `running` with no swap in flight, each canary place of its own
    /// with no result settled by [`VersionState::lost_canary`].
    pub(super) fn rollout_settle(&mut self, i: usize, running: Option<&str>) {
        self.flush_pending(i);
        let Some(running) = running else {
            return;
        };
        if self.cut(i) {
            return;
        }
        let Some(p) = self.inst[i].proc.as_ref() else {
            return;
        };
        if p.rollout.swap.is_some() {
            return;
        }
        let (started, claimant) = (p.rollout.started, p.rollout.claimant.clone());
        let now = timestamp(self.now);
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.rollout.settled_at = Some(now);
        }
        let Some(p) = self.inst[i].proc.as_ref() else {
            return;
        };
        let pending: BTreeSet<String> = p.rollout.pending.iter().map(|(v, _)| v.clone()).collect();
        let me = self.inst[i].holder.clone();
        let lost: Vec<String> = self
            .rollout
            .versions
            .values()
            .filter(|v| v.lost_place_of(&me, &claimant, started) && !pending.contains(&v.version))
            .map(|v| v.version.clone())
            .collect();
        let now = timestamp(self.now);
        for version in lost {
            let denied = self.inst[i].disk.denylist.contains(&version);
            self.rollout.update_version(&version, |current| {
                let mut next = current?.clone();
                if !next.lost_place_of(&me, &claimant, started) {
                    return None;
                }
                let rule = next.lost_canary(&me, running, denied)?;
                next.settle_lost_canary(&me, rule, now).then_some(next)
            });
            self.log(i, || {
                format!("settled its canary place of {version} with no result")
            });
        }
    }

    /// `history.rs`'s `change`: read-modify-write, creating the state when missing.
    fn change(&mut self, version: &str, edit: impl Fn(&mut VersionState)) {
        let now = timestamp(self.now);
        self.rollout.update_version(version, |current| {
            let mut next = current
                .cloned()
                .unwrap_or_else(|| VersionState::new(version, now));
            edit(&mut next);
            Some(next)
        });
    }

    /// `RolloutAgent::hold_check` before an update check of instance `i` running `running`:
    /// `None` to send it, else the delay before the next pass. Cut from etcd, the configured
    /// windows still apply.
    pub(super) fn hold_check(&mut self, i: usize, running: &str, interval: Ms) -> Option<Ms> {
        let cut = self.cut(i);
        let snap = match cut {
            true => RolloutStore::default().snapshot(None),
            false => self.snapshot(),
        };
        let now = self.now;
        let draw = self.rng.f64();
        let me = self.inst[i].holder.clone();
        let p = self.inst[i].proc.as_mut()?;
        let configured = p.rollout.configured.clone();
        // The agent notes what a read shows, not the stand-in for an etcd it could not read.
        if !cut {
            p.rollout
                .sightings
                .observe(&snap, &configured, Duration::from_millis(self.now));
        }
        let hold = gate::check_gate(
            &snap,
            &configured,
            &me,
            Some(running),
            &mut p.rollout.jitter,
            timestamp(now),
            draw,
        )?;
        let left = hold.until().map(|t| until(now, t));
        let delay = gate::check_delay(left, Duration::from_millis(interval));
        self.log(i, || format!("no update check: {}", hold.summary()));
        Some(delay.as_millis() as Ms)
    }

    /// `sidekick rollout promote <version>` of the version the operator published (the
    /// command's own state change, [`VersionState::promoted`]); whether it promoted it.
    pub(super) fn promote(&mut self) -> bool {
        let now = timestamp(self.now);
        let newest = self.nebraska.channel.clone();
        if self.account.promoted.contains_key(&newest) {
            return false;
        }
        // `rollout promote VERSION` (commands/rollout.rs): the version's state is created with
        // the promotion when no instance recorded it yet (canary = 0 waits on the promotion
        // before any slot is taken), by compare-and-swap.
        let state = self.rollout.update_version(&newest, |current| {
            VersionState::promoted(current, &newest, "operator", now)
        });
        let promoted = state.as_ref().is_some_and(|s| s.promoted.is_some());
        if !promoted {
            let waiting: Vec<usize> = (0..self.inst.len())
                .filter(|&i| {
                    self.inst[i]
                        .proc
                        .as_ref()
                        .is_some_and(|p| match &p.agent.phase {
                            Phase::Updating(swap) => {
                                swap.plan.new.version == newest
                                    && matches!(swap.stage, Stage::AcquiringSlot { .. })
                            }
                            _ => false,
                        })
                })
                .collect();
            if !waiting.is_empty() && !self.seen(super::Violation::PromotionRefused, 0) {
                let detail = format!(
                    "`rollout promote {newest}` left it unpromoted while {waiting:?} wait for a \
                     slot for it"
                );
                self.violation(super::Violation::PromotionRefused, detail);
            }
        }
        if promoted {
            self.account
                .promoted
                .entry(newest.clone())
                .or_insert(self.now);
            self.log(usize::MAX, || format!("operator: rollout promote {newest}"));
        }
        promoted
    }

    /// A slot newly taken by `i` to start a swap to `version` (not to roll back from it): the
    /// policy's invariants.
    pub(super) fn policy_take(&mut self, i: usize, version: &str) {
        let now = self.now;
        if !self.drawn.windows.is_empty() && !in_window(&self.drawn.windows, now) {
            let detail = format!("#{i} took a slot for {version} outside every window");
            self.violation(super::Violation::SlotOutsideWindow, detail);
        }
        let exposed = self.exposed(i, version);
        let count = exposed.len();
        let policy = self.drawn.policy.clone();
        if !self.account.wave_through(&policy, version, now)
            && count > policy.canary as usize
            && !self.seen(super::Violation::CanaryOverrun, i)
        {
            let detail = format!(
                "#{i} took a slot for {version}: {count} instances in or through a swap to it \
                 ({exposed:?}), canary {}, passed {:?}, promoted {:?}",
                policy.canary,
                self.account.passed.get(version),
                self.account.promoted.get(version)
            );
            self.violation(super::Violation::CanaryOverrun, detail);
        }
    }

    /// The instances (by name, as the policy counts canaries: a clone, the same name on two
    /// hosts, is one instance to it) in or through a swap to `version` as `i` takes a slot for
    /// it: in a swap to it past its slot (or journaled so), its unit loaded with it, failed or
    /// passed on it. An attempt given up with the previous drop-in back is no longer one
    /// (`history.rs` frees its canary place); a process an operator restarted onto the version
    /// while the sidekick stood down (seed 564) is the operator's, not the rollout's.
    fn exposed(&self, i: usize, version: &str) -> BTreeSet<String> {
        let failed = self.account.failed_on.get(version);
        let passed = self.account.passed.get(version);
        (0..self.inst.len())
            .filter(|&j| {
                let inst = &self.inst[j];
                // Past the slot and on the way to the version: a swap still pre-pulling or
                // waiting for one is none yet, and one on its way back (rolling back, standing
                // down, releasing with a 3/0) runs the version only if its unit still has it
                // loaded (below); a failure the version is to blame for counts anyway.
                let past_slot = |s: &SwapPhase| {
                    let way_back = matches!(
                        s.stage,
                        Stage::RollingBack { .. }
                            | Stage::VerifyingOld { .. }
                            | Stage::Registering { failure: Some(_) }
                            | Stage::StandingDown { .. }
                            | Stage::Stranded { .. }
                    ) || (s.stage == Stage::Releasing
                        && s.report != Some(Report::Complete));
                    s.plan.new.version == version
                        && !way_back
                        && !matches!(s.stage, Stage::Prepulling | Stage::AcquiringSlot { .. })
                };
                let swapping = inst.proc.as_ref().is_some_and(|p| match &p.agent.phase {
                    Phase::Updating(swap) => past_slot(swap),
                    _ => false,
                });
                let journaled = inst.disk.journal.as_ref().is_some_and(past_slot);
                j == i
                    || swapping
                    || journaled
                    || inst.unit.loaded == version
                    || failed.is_some_and(|f| f.contains(&j))
                    || passed.is_some_and(|p| p.contains_key(&j))
            })
            .map(|j| self.inst[j].holder.clone())
            .collect()
    }

    /// After every step: canaries passed (the swap at 3/1) and failures of the version.
    pub(super) fn account_step(&mut self, i: usize) {
        let now = self.now;
        let Some(p) = self.inst[i].proc.as_ref() else {
            return;
        };
        let Phase::Updating(swap) = &p.agent.phase else {
            return;
        };
        let version = swap.plan.new.version.clone();
        if swap.stage == Stage::Releasing && swap.report == Some(Report::Complete) {
            let passed = self.account.passed.entry(version.clone()).or_default();
            passed.entry(i).or_insert(now);
        }
        let failure = match &swap.stage {
            Stage::RollingBack { failure }
            | Stage::Stranded { failure, .. }
            | Stage::VerifyingOld { failure, .. }
            | Stage::Registering {
                failure: Some(failure),
            } => Some(failure),
            _ => None,
        };
        if failure.is_some_and(|f| f.halt) {
            self.account.failed_on.entry(version).or_default().insert(i);
        }
    }
}

impl Drawn {
    /// No rollout policy to speak of: `min_healthy = 0s`, no canary, no window (the runs of the
    /// seeds in [`super::REGRESSIONS`] as they were found).
    pub fn none() -> Drawn {
        Drawn {
            policy: RolloutPolicy {
                min_healthy: Duration::ZERO,
                ..RolloutPolicy::default()
            },
            stored: false,
            windows: Vec::new(),
        }
    }

    /// Each instance's `[rollout]`: the drawn policy, or the built-in defaults when the drawn
    /// one is stored in etcd (which is authoritative).
    pub fn configured(&self) -> RolloutPolicy {
        match self.stored {
            true => RolloutPolicy::default(),
            false => self.policy.clone(),
        }
    }
}
