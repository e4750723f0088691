//! The instance's side of the group's rollout, the thin I/O around [`gate`] and [`decide`]:
//! before a slot is taken it reads the group at one revision and applies the slot gate (claiming
//! a canary place by compare-and-swap when it is one); it records each swap of this instance in
//! the version's state (took the slot, each step's duration, released, the canary's result or
//! the failure); it counts a failure against the version's budget before the group is halted
//! for it; and it tells the update pass whether a check may be sent now.
//!
//! The policy is read afresh at every slot request, so a stored change applies from the next
//! request and never to a swap under way. The slot backend ([`crate::slot::EtcdSlots`]) calls
//! [`RolloutAgent::slot_hold`], [`RolloutAgent::took_slot`] and [`RolloutAgent::released`]; the
//! driver feeds [`RolloutAgent::observe`] the agent's phase after each turn, and the update pass
//! calls [`RolloutAgent::settle`] (releases kept since their write failed, this instance's canary
//! places left with no result) and asks [`RolloutAgent::check_hold`] before each check.

use std::num::NonZeroU32;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use etcd_client::WatchOptions;
use jiff::Timestamp;
use tracing::{info, warn};

use super::decide::{Hold, SlotGate};
use super::gate::{self, CheckHold, Jitter};
use super::policy::RolloutPolicy;
use super::state::{Claimant, VersionState};
use super::store::{self, GroupSnapshot, RolloutError};
use crate::etcd::EtcdConnection;
use crate::metrics::RolloutMetrics;

mod budget;
mod history;
mod lost;
use history::CurrentSwap;
// The simulation's sidekicks judge their swaps by this very rule.
#[cfg(test)]
pub(crate) use history::verdict;

/// Why the rollout's gate keeps a slot request from a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotHold {
    /// Wait: the hold may end (a pause, a canary wave, a bake, a window, `batch_delay`).
    Busy(String),
    /// Give up: the version spent its failure budget.
    Refused(String),
}

impl SlotHold {
    /// Why, as the swap's waiting line and the log show it.
    pub fn text(&self) -> &str {
        match self {
            SlotHold::Busy(text) | SlotHold::Refused(text) => text,
        }
    }
}

impl std::fmt::Display for SlotHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// This instance in its group's rollout.
pub struct RolloutAgent {
    etcd: EtcdConnection,
    group: String,
    instance: String,
    /// The configured `[rollout]` and the swap estimate's floor, replaced by a reload.
    configured: RwLock<Configured>,
    /// This process (its run id and host boot), recorded in each canary place it claims: a
    /// place of its instance that another process claimed in this boot of this host can no
    /// longer get a result from its swap and is this process's to settle (`lost.rs`).
    claimant: Claimant,
    /// When this process's agent was made: judges a place claimed on another host or boot, or
    /// by a release before run ids (claimed since, it is a clone's on another host, left
    /// alone).
    started: Timestamp,
    /// The monotonic start of this process's [`gate::Sightings`] readings.
    epoch: std::time::Instant,
    inner: Mutex<Inner>,
}

/// What this instance's configuration says about the rollout (a stored policy wins over it).
#[derive(Debug, Clone)]
struct Configured {
    policy: RolloutPolicy,
    /// `swap.drain + swap.start_timeout + swap.verify_timeout`.
    floor: Duration,
}

#[derive(Default)]
struct Inner {
    swap: Option<CurrentSwap>,
    jitter: Jitter,
    /// When this host first saw the last release and each canary wave pass: the gaps after
    /// them run from there, not from other hosts' wall clocks.
    sightings: gate::Sightings,
    /// When the last slot hold may end by itself (a batch delay, a bake).
    wake_at: Option<Timestamp>,
    /// The revision the last slot hold was judged at; a waiter watches from the next.
    seen: i64,
    /// The last update-check hold logged, so a hold is logged once.
    last_check_hold: Option<String>,
    metrics: Option<RolloutMetrics>,
    /// `min_healthy` of the policy in force when the last slot request was judged.
    min_healthy: Option<Duration>,
    /// `monitor` of that policy.
    monitor: Option<Duration>,
    /// `max_failures` of that policy.
    max_failures: Option<NonZeroU32>,
    /// Releases whose write etcd has not confirmed, oldest first.
    pending: Vec<history::Pending>,
}

/// A hold as the swap's waiting line and the log show it.
pub fn hold_text(hold: &Hold) -> String {
    match hold {
        Hold::Halted(why) => format!("the group is halted: {why}"),
        Hold::Paused => "the group's rollout is paused (`sidekick rollout resume`)".into(),
        Hold::FailureBudgetSpent { failed, max } => {
            format!("{failed} instances failed on this version (max_failures {max})")
        }
        Hold::OutsideWindow { opens: Some(t) } => format!("outside every window; opens at {t}"),
        Hold::OutsideWindow { opens: None } => "outside every window".into(),
        Hold::WindowTooShort { closes, needs } => format!(
            "the window closes at {closes}, before a swap of {} would end",
            humantime::format_duration(*needs)
        ),
        Hold::Canaries {
            passed,
            failed,
            wanted,
        } => format!("canaries: {passed} of {wanted} passed, {failed} failed"),
        Hold::Baking { until } => format!("the canaries bake until {until}"),
        Hold::AwaitingPromotion => "waiting for `sidekick rollout promote`".into(),
        Hold::BatchDelay { until } => format!("batch_delay: the next slot from {until}"),
        Hold::Superseded { by } => format!("the group rolls out a newer version, {by}"),
    }
}

/// What a slot request held by `hold` is answered: refused when the version spent its failure
/// budget (nothing but a new version lifts that) or a newer version's rollout superseded it,
/// else busy.
pub fn hold_answer(hold: &Hold) -> SlotHold {
    match hold {
        Hold::FailureBudgetSpent { .. } | Hold::Superseded { .. } => {
            SlotHold::Refused(hold_text(hold))
        }
        _ => SlotHold::Busy(hold_text(hold)),
    }
}

impl RolloutAgent {
    pub fn new(
        etcd: EtcdConnection,
        group: impl Into<String>,
        instance: impl Into<String>,
        configured: RolloutPolicy,
        floor: Duration,
    ) -> RolloutAgent {
        RolloutAgent {
            etcd,
            group: group.into(),
            instance: instance.into(),
            configured: RwLock::new(Configured {
                policy: configured,
                floor,
            }),
            claimant: Claimant {
                run: super::state::new_run_id(),
                boot: std::fs::read_to_string(crate::identity::BOOT_ID_PATH)
                    .map(|id| id.trim().to_string())
                    .unwrap_or_default(),
            },
            started: Timestamp::now(),
            epoch: std::time::Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Feeds the rollout's metrics from now on.
    pub fn set_metrics(&self, metrics: RolloutMetrics) {
        self.lock().metrics = Some(metrics);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_configured(&self) -> std::sync::RwLockReadGuard<'_, Configured> {
        self.configured.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a reloaded `[rollout]` and swap estimate floor in force. Like a stored policy it
    /// applies from the next slot request: a swap under way keeps the min-healthy and failure
    /// budget its request was judged with. Returns whether the policy changed (its hash is in
    /// the instance record).
    pub fn reconfigure(&self, policy: RolloutPolicy, floor: Duration) -> bool {
        let mut configured = self.configured.write().unwrap_or_else(|e| e.into_inner());
        let changed = configured.policy != policy;
        *configured = Configured { policy, floor };
        changed
    }

    /// The group's policy, pause, halt and version states, without its instance records
    /// ([`store::read_gate`]).
    async fn read(&self) -> Result<GroupSnapshot, RolloutError> {
        self.read_with(false).await
    }

    async fn read_with(&self, instances: bool) -> Result<GroupSnapshot, RolloutError> {
        let mut client = self.client().await?;
        let read = match instances {
            true => store::read_group(&mut client, &self.group).await,
            false => store::read_gate(&mut client, &self.group).await,
        };
        if let Err(RolloutError::Etcd(err)) = &read {
            self.etcd.failed(err).await;
        }
        read
    }

    async fn client(&self) -> Result<etcd_client::Client, RolloutError> {
        self.etcd
            .client()
            .await
            .map_err(|e| RolloutError::Connect(format!("{e:#}")))
    }

    /// The short hash of the policy this instance enforces when none is stored: its `[rollout]`.
    pub fn policy_hash(&self) -> String {
        self.read_configured().policy.short_hash()
    }

    /// How long a swap of this instance stays in min-healthy: the policy in force when its slot
    /// was requested (a change applies from the next request), else the configured one (a swap
    /// resumed by a start whose slot request has not been judged yet).
    pub fn min_healthy(&self) -> Duration {
        self.lock()
            .min_healthy
            .unwrap_or_else(|| self.read_configured().policy.min_healthy)
    }

    /// How long a released swap of this instance is still watched (`rollout.monitor`): the
    /// policy in force when its slot was requested, else the configured one (as
    /// [`Self::min_healthy`]).
    pub fn monitor(&self) -> Duration {
        self.lock()
            .monitor
            .unwrap_or_else(|| self.read_configured().policy.monitor)
    }

    /// The etcd revision the last slot request was judged at.
    pub fn seen_revision(&self) -> i64 {
        self.lock().seen
    }

    /// Before a slot for `version` is taken: `None` to go on, or why not (the slot stays free).
    /// A canary claims its place first; a policy that cannot be read holds the slot. A version
    /// that spent its failure budget is refused ([`SlotHold::Refused`]): nothing but a new
    /// version lifts that, so waiting for it would hold the swap's grant for good.
    pub async fn slot_hold(&self, version: &str) -> Option<SlotHold> {
        let snap = match self.read().await {
            Ok(snap) => snap,
            Err(err) => {
                let why = format!("cannot read the group's rollout policy: {err}");
                return Some(SlotHold::Busy(why));
            }
        };
        let Configured {
            policy: configured,
            floor,
        } = self.read_configured().clone();
        // Read after the snapshot: what it shows is first seen no earlier than now.
        let (now, mono) = (Timestamp::now(), self.epoch.elapsed());
        let answer = {
            let mut inner = self.lock();
            inner.sightings.observe(&snap, &configured, mono);
            gate::slot_answer_seen(
                &snap,
                &configured,
                floor,
                &self.instance,
                version,
                &inner.sightings,
                mono,
                now,
            )
        };
        {
            let mut inner = self.lock();
            inner.seen = snap.revision;
            inner.wake_at = None;
            let policy = store::effective(snap.stored_policy.as_ref(), &configured);
            inner.min_healthy = Some(policy.min_healthy);
            inner.monitor = Some(policy.monitor);
            inner.max_failures = Some(policy.max_failures);
        }
        let hold = match answer {
            SlotGate::Take { canary: false } => None,
            SlotGate::Take { canary: true } => {
                let wanted = store::effective(snap.stored_policy.as_ref(), &configured).canary;
                return self
                    .claim_canary(version, wanted, now)
                    .await
                    .map(SlotHold::Busy);
            }
            // The slot backend reports a halt itself, as the swap expects it.
            SlotGate::Hold(Hold::Halted(_)) => None,
            SlotGate::Hold(hold) => Some(hold),
        };
        self.lock().wake_at = match &hold {
            Some(Hold::BatchDelay { until } | Hold::Baking { until }) => Some(*until),
            Some(Hold::OutsideWindow { opens }) => *opens,
            _ => None,
        };
        if hold == Some(Hold::AwaitingPromotion)
            && !snap.versions.iter().any(|v| v.version == version)
        {
            self.record_awaited(version, now).await;
        }
        hold.map(|h| hold_answer(&h))
    }

    /// The first instance held for `version`'s promotion with no canaries (`canary = 0`, so no
    /// claim recorded the version): records the version, so that `rollout status` names it and
    /// the other instances' update checks wait for the promotion (`gate::check_gate`) instead of
    /// each taking a grant it cannot use. Created only if absent; a failure costs only that.
    async fn record_awaited(&self, version: &str, now: Timestamp) {
        let recorded = async {
            let mut client = self.client().await?;
            store::update_version(&mut client, &self.group, version, |current| {
                current.is_none().then(|| VersionState::new(version, now))
            })
            .await
        };
        match recorded.await {
            Ok(_) => info!(group = %self.group, version,
                "recorded the version's rollout: it waits for `sidekick rollout promote`"),
            Err(err) => tracing::debug!(group = %self.group, version,
                "cannot record the version awaiting promotion: {err}"),
        }
    }

    /// Claims one of `wanted` canary places of `version` by compare-and-swap.
    async fn claim_canary(&self, version: &str, wanted: u32, now: Timestamp) -> Option<String> {
        let me = self.instance.as_str();
        let claimed = async {
            let mut client = self.client().await?;
            store::update_version(&mut client, &self.group, version, |current| {
                let mut next = current
                    .cloned()
                    .unwrap_or_else(|| VersionState::new(version, now));
                if next.is_canary(me) || next.canaries.len() >= wanted as usize {
                    return None;
                }
                next.add_canary(me, Some(&self.claimant), now);
                Some(next)
            })
            .await
        };
        match claimed.await {
            Ok(Some(state)) if state.is_canary(me) => {
                info!(group = %self.group, version, "this instance is a canary of the version");
                None
            }
            Ok(_) => Some(format!("the {wanted} canary places of {version} are taken")),
            Err(err) => Some(format!("cannot claim a canary place: {err}")),
        }
    }

    /// Whether an update check may be sent now; `running` is the version the unit runs, when
    /// known. When etcd cannot be read the configured policy's windows still apply. The group's
    /// instance records are read only for the stage metric, when metrics are served.
    pub async fn check_hold(&self, running: Option<&str>) -> Option<CheckHold> {
        // Only the stage metric needs the instance records (who serves the version).
        let staged = self.lock().metrics.is_some();
        let snap = match self.read_with(staged).await {
            Ok(snap) => snap,
            Err(err) => {
                warn!(group = %self.group, "cannot read the group's rollout: {err}; the configured windows apply");
                GroupSnapshot {
                    revision: 0,
                    stored_policy: None,
                    paused: None,
                    halt: None,
                    versions: Vec::new(),
                    instances: Vec::new(),
                    slots_held: 0,
                }
            }
        };
        let now = Timestamp::now();
        let Configured {
            policy: configured,
            floor,
        } = self.read_configured().clone();
        let mut inner = self.lock();
        // The empty stand-in of an etcd that could not be read shows nothing to see.
        if snap.revision > 0 {
            inner
                .sightings
                .observe(&snap, &configured, self.epoch.elapsed());
        }
        if let Some(metrics) = &inner.metrics {
            let policy = store::effective(snap.stored_policy.as_ref(), &configured);
            metrics.set_next_window(gate::next_window_secs(policy, now));
            if let Some((version, stage)) = gate::newest_stage(&snap, &configured, floor, now) {
                metrics.set_stage(&self.group, &version, stage.name());
            }
        }
        let hold = gate::check_gate(
            &snap,
            &configured,
            &self.instance,
            running,
            &mut inner.jitter,
            now,
            fastrand::f64(),
        );
        if hold.is_none() {
            inner.last_check_hold = None;
        }
        hold
    }

    /// Returns when the group's rollout may let a held slot request through: a change of its
    /// policy, pause or version states since the last hold was judged, or the time that hold
    /// ends by itself. Never returns on its own otherwise; the caller bounds the wait.
    pub async fn wait_for_change(&self) {
        let (wake, from) = {
            let inner = self.lock();
            (inner.wake_at, inner.seen + 1)
        };
        let sleep = async {
            match wake {
                Some(t) => {
                    let left =
                        Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or_default();
                    tokio::time::sleep(left + Duration::from_millis(50)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = self.watch(from) => {}
        }
    }

    async fn watch(&self, from: i64) {
        let watched = async {
            let mut client = self.client().await?;
            let options = || WatchOptions::new().with_start_revision(from.max(1));
            let mut stream = client
                .watch(store::paused_key(&self.group), Some(options()))
                .await?;
            stream
                .watch(store::policy_key(&self.group), Some(options()))
                .await?;
            stream
                .watch(
                    store::rollouts_prefix(&self.group),
                    Some(options().with_prefix()),
                )
                .await?;
            while let Some(resp) = stream.message().await? {
                if resp.canceled() || resp.compact_revision() > 0 || !resp.events().is_empty() {
                    return Ok::<(), RolloutError>(());
                }
            }
            Ok(())
        };
        if let Err(err) = watched.await {
            tracing::debug!(group = %self.group, "rollout watch failed: {err}");
            std::future::pending::<()>().await;
        }
    }
}

/// The label of a pass the rollout held (metrics, the instance record).
pub const CHECK_HELD: &str = "rollout-hold";

impl RolloutAgent {
    /// Before an update check: `None` to send it, or the delay before the next pass when the
    /// rollout holds it (at most `interval`, and no later than the hold may end by itself).
    pub async fn hold_check(&self, running: Option<&str>, interval: Duration) -> Option<Duration> {
        let hold = self.check_hold(running).await?;
        let summary = hold.summary();
        let changed = {
            let mut inner = self.lock();
            let changed = inner.last_check_hold.as_deref() != Some(summary.as_str());
            inner.last_check_hold = Some(summary.clone());
            changed
        };
        if changed {
            info!(group = %self.group, "no update check: {summary}");
        }
        let until = hold
            .until()
            .map(|t| Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or_default());
        Some(gate::check_delay(until, interval))
    }
}
