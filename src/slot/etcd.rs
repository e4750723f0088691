//! The etcd backend: a lease-bound counting semaphore.
//!
//! Slot `n` of a group is `/sidekick/slots/<group>/<n>` for `n < max`, valued with a JSON
//! [`SlotValue`] and bound to the holder's own lease ([`SlotLease`]). A key is created only by a
//! transaction that also checks, atomically:
//! - the key does not exist (`create_revision == 0`);
//! - no key under the group's prefix was created or changed since the snapshot in which this
//!   holder counted fewer than `max` holders (a range compare on `mod_revision`), so two
//!   contenders that both saw a free slot cannot both commit;
//! - the group has no halt marker.
//!
//! The count includes every key of the group, also at indexes `>= max` left over from a larger
//! limit: lowering `max` evicts nobody, yet no newcomer is let in until the holders drop below the
//! new limit. Raising `max` opens the new indexes at once. Keys are deleted only by transactions
//! that compare the value, which names the holder. A holder keeps a lease only while it holds a
//! slot or is about to write one: an acquire that ends without a slot revokes it.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions};
use tokio::sync::{Mutex, Notify};

mod acquire;
mod queue;
mod stale;

use super::SlotOptions;
use super::halt::{self, HaltMarker};
pub use super::keys::{SLOT_PREFIX, SlotEntry, group_prefix, read_group, release_holder, slot_key};
use super::lease::{HoldingWatch, SlotLease};
use super::ledger::LeaseLedger;
use super::{
    Acquisition, Holding, SlotError, SlotHolder, SlotHost, SlotLock, SlotValue, with_jitter,
};
use crate::etcd::EtcdConnection;
use crate::etcd::lease::LeaseState;
use crate::rollout::agent::SlotHold;

/// An acquire gives up (reports busy) after this many lost races in a row.
const MAX_RACES: u32 = 64;
/// Pause when the watch cannot be opened, so a waiter does not spin while etcd is down.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// This holder's state behind the lock: its lease and the key it holds.
#[derive(Debug, Default)]
struct HolderState {
    lease: Option<SlotLease>,
    key: Option<String>,
    /// The value of `key` as this holder wrote or last read it, for the release's compare.
    value: Option<Vec<u8>>,
    /// Revision of the last snapshot, where a waiter's watch starts.
    seen_revision: i64,
    /// The limit that snapshot was judged by; a waiter retries at once when it changed.
    seen_max: u32,
    /// This holder's place in the group's queue, while it waits in line.
    queued: Option<acquire::Queued>,
    /// The snapshot the last busy answer was judged by.
    last: Option<super::keys::Snapshot>,
    /// The wait in line the last `acquire_within` ended at its deadline, for the next one.
    parked: Option<queue::Parked>,
}

/// An update slot in an etcd group, for one holder.
pub struct EtcdSlots {
    etcd: EtcdConnection,
    group: String,
    who: SlotHolder,
    host: SlotHost,
    ttl: Duration,
    max: AtomicU32,
    max_changed: Notify,
    state: Mutex<HolderState>,
    requests: Arc<AtomicU64>,
    /// The lease of a wait in line under way (0: none), revoked if that wait is abandoned.
    waiting_lease: AtomicI64,
    /// The group's rollout policy, applied before a slot is taken (issue 17).
    rollout: Option<Arc<crate::rollout::agent::RolloutAgent>>,
    /// Where the leases this holder grants are recorded; a stale release revokes only those.
    ledger: Option<LeaseLedger>,
    /// Set for the length of [`EtcdSlots::acquire_within_ungated`]: the rollout's gate is not
    /// asked.
    ungated: AtomicBool,
    /// Set with `ungated` for a rollback leaving its version after a monitor failure: a halt on
    /// the version acquired for does not refuse the slot.
    away: AtomicBool,
}

impl std::fmt::Debug for EtcdSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSlots")
            .field("group", &self.group)
            .field("who", &self.who)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl EtcdSlots {
    /// A holder of `group` allowing `max` holders, with its lease TTL.
    pub fn new(
        etcd: impl Into<EtcdConnection>,
        group: impl Into<String>,
        max: NonZeroU32,
        ttl: Duration,
        who: SlotHolder,
    ) -> EtcdSlots {
        EtcdSlots {
            etcd: etcd.into(),
            group: group.into(),
            who,
            host: SlotHost::this(),
            ttl,
            max: AtomicU32::new(max.get()),
            max_changed: Notify::new(),
            state: Mutex::new(HolderState::default()),
            requests: Arc::new(AtomicU64::new(0)),
            waiting_lease: AtomicI64::new(0),
            rollout: None,
            ledger: None,
            ungated: AtomicBool::new(false),
            away: AtomicBool::new(false),
        }
    }

    /// Records each slot lease granted in `ledger`, and lets the stale release revoke only the
    /// leases recorded there ([`super::ledger`]). Without one, it revokes none but its own.
    pub fn with_ledger(mut self, ledger: LeaseLedger) -> EtcdSlots {
        self.ledger = Some(ledger);
        self
    }

    /// Applies the group's rollout policy before each slot and records the swaps it holds.
    pub fn with_rollout(mut self, rollout: Arc<crate::rollout::agent::RolloutAgent>) -> EtcdSlots {
        self.rollout = Some(rollout);
        self
    }

    /// The group's rollout these slots apply, when one is wired.
    pub fn rollout(&self) -> Option<&Arc<crate::rollout::agent::RolloutAgent>> {
        self.rollout.as_ref()
    }

    /// A holder configured from `[slot]`, over the shared etcd connection.
    pub fn from_settings(etcd: EtcdConnection, slot: &SlotOptions, who: SlotHolder) -> EtcdSlots {
        EtcdSlots::new(etcd, &slot.group, slot.max, slot.ttl, who)
    }

    /// Names the host written into slot values (default: this host).
    pub fn with_host(mut self, host: SlotHost) -> EtcdSlots {
        self.host = host;
        self
    }

    /// The group this holder competes in.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Changes the limit (e.g. after a configuration reload) and wakes a waiting acquire.
    pub fn set_max(&self, max: NonZeroU32) {
        self.max.store(max.get(), Ordering::SeqCst);
        self.max_changed.notify_waiters();
    }

    /// etcd requests this holder has made, not counting keepalive pings (for the benchmark).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// [`SlotLock::acquire_within`] without the rollout's slot gate: a swap taking back the slot
    /// it held (recovery after a restart, a fence found lost) to finish or roll back, which the
    /// gate judged when it first took it. A pause, a canary wave, a window or the failure budget
    /// spent by the very version it rolls back from must not keep it from its slot; a halt
    /// still does (the backend answers it, and the swap knows what to do with it), except with
    /// `away`: a rollback after a failure inside `rollout.monitor` takes a slot to leave
    /// `version`, through the halt on `version` itself (its own failure's); a halt on another
    /// version still refuses it. The slot limit applies as to anyone.
    pub async fn acquire_within_ungated(
        &self,
        version: &str,
        deadline: Duration,
        away: bool,
    ) -> Result<Acquisition, SlotError> {
        struct Gated<'a>(&'a AtomicBool, &'a AtomicBool);
        impl Drop for Gated<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
                self.1.store(false, Ordering::SeqCst);
            }
        }
        self.ungated.store(true, Ordering::SeqCst);
        self.away.store(away, Ordering::SeqCst);
        let _gated_again = Gated(&self.ungated, &self.away);
        self.acquire_within(version, deadline).await
    }

    /// Whether the acquire under way for `version` passes the group's halt `marker`.
    fn passes_halt(&self, marker: &HaltMarker, version: &str) -> bool {
        self.away.load(Ordering::SeqCst) && marker.version == version
    }

    /// Whether the rollout's slot gate applies to the acquire under way.
    fn gated(&self) -> bool {
        !self.ungated.load(Ordering::SeqCst)
    }

    /// Follows this holder's lease, to learn at once when a held slot is lost.
    pub async fn subscribe(&self) -> Option<HoldingWatch> {
        self.state
            .lock()
            .await
            .lease
            .as_ref()
            .map(|lease| HoldingWatch::new(lease.subscribe()))
    }
}

impl SlotLock for EtcdSlots {
    async fn acquire(&self, version: &str) -> Result<Acquisition, SlotError> {
        let mut state = self.state.lock().await;
        state.parked = None;
        let newly = state.key.is_none();
        if let Some(rollout) = self.rollout.as_ref().filter(|_| newly && self.gated())
            && let Some(hold) = rollout.slot_hold(version).await
        {
            // A waiter watches from what the rollout was judged at, not from an older snapshot.
            state.seen_revision = rollout.seen_revision();
            state.seen_max = self.max.load(Ordering::SeqCst);
            return Ok(gate_answer(version, hold));
        }
        let alive = state
            .lease
            .as_ref()
            .is_some_and(|l| l.state() == LeaseState::Alive);
        if !alive {
            state.queued = None;
        }
        let outcome = match self.snapshot(state.queued.clone().as_ref()).await {
            Ok(snap) => {
                let queued = state.queued.clone();
                self.try_acquire(&mut state, version, queued.as_ref(), snap)
                    .await
            }
            Err(err) => Err(err),
        };
        // A lease granted for a race this holder lost, or for a slot it no longer has, would
        // only be kept alive for nothing: give it back.
        if state.key.is_none() && !matches!(outcome, Ok(Acquisition::Acquired)) {
            self.drop_idle_lease(&mut state).await;
        }
        if let (Some(rollout), true, Ok(Acquisition::Acquired)) = (&self.rollout, newly, &outcome) {
            rollout.took_slot(version).await;
        }
        self.note(outcome).await
    }

    async fn release(&self) -> Result<(), SlotError> {
        let mut state = self.state.lock().await;
        // Recorded before the key goes, so a waiter woken by the delete reads the release.
        if let (Some(rollout), Some(_)) = (&self.rollout, &state.key) {
            rollout.released().await;
        }
        let value = state.value.take();
        let held = match (&state.key, &state.lease) {
            (Some(key), Some(lease)) => Some((key.as_str(), lease.id())),
            _ => None,
        };
        // Only our own key: a clone's (the same holder id on another host) stays.
        let released = self.delete_ours(held, value).await;
        if let Ok(keys) = &released {
            for key in keys {
                tracing::info!(group = %self.group, %key, "update slot released");
            }
        }
        state.key = None;
        // Its lease goes below, and with it any place in line this holder kept.
        state.queued = None;
        state.parked = None;
        // Revoke even when the delete failed: revoking deletes the key too, and a lease kept
        // alive after a failed release would hold the slot for the life of the process.
        let revoked = match state.lease.take() {
            Some(lease) => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                lease
                    .revoke(&self.etcd)
                    .await
                    .map_err(|e| SlotError::Connect(format!("{e:#}")))
            }
            None => Ok(()),
        };
        self.note(released.and(revoked)).await
    }

    /// Waits in the group's queue (first come, first served) instead of retrying. Holds this
    /// holder's state for the whole wait. A wait that ends at `deadline` still busy keeps its
    /// place in line (its lease kept alive) for the next `acquire_within`, so a caller that waits
    /// in bounded steps (the daemon's update step) keeps its turn; `acquire`, `release` and
    /// `release_stale` give that place up. A wait that is dropped unfinished revokes its lease,
    /// so its place in line never blocks the group. The rollout's slot gate applies before the
    /// waiter joins the line and again before it takes a slot (see [`queue`]).
    async fn acquire_within(
        &self,
        version: &str,
        deadline: Duration,
    ) -> Result<Acquisition, SlotError> {
        let mut abandoned = AbandonedWait {
            slots: self,
            finished: false,
        };
        let mut state = self.state.lock().await;
        let newly = state.key.is_none();
        if let Some(lease) = state.lease.as_ref().filter(|_| newly) {
            // A place kept from an earlier wait: this wait owns it now.
            self.waiting_lease.store(lease.id(), Ordering::SeqCst);
        }
        let outcome = self.queued_acquire(&mut state, version, deadline).await;
        abandoned.finished = true;
        self.waiting_lease.store(0, Ordering::SeqCst);
        let keeps_place = matches!(outcome, Ok(Acquisition::Busy { .. })) && state.queued.is_some();
        if !keeps_place {
            state.parked = None;
        }
        if state.key.is_none() && !matches!(outcome, Ok(Acquisition::Acquired)) && !keeps_place {
            self.drop_idle_lease(&mut state).await;
        }
        if let (Some(rollout), true, Ok(Acquisition::Acquired)) = (&self.rollout, newly, &outcome) {
            rollout.took_slot(version).await;
        }
        self.note(outcome).await
    }

    async fn release_stale(&self) -> Result<Vec<String>, SlotError> {
        self.release_own_stale().await
    }

    async fn held(&self) -> Result<Holding, SlotError> {
        let state = self.state.lock().await;
        let (Some(lease), Some(key)) = (&state.lease, &state.key) else {
            return Ok(Holding::NotHeld);
        };
        if let lost @ LeaseState::Lost { .. } = lease.state() {
            return Ok(lost.into());
        }
        let resp = match self.client().await?.get(key.as_str(), None).await {
            Ok(resp) => resp,
            Err(err) => return self.note(Err(err.into())).await,
        };
        let ours = resp.kvs().first().is_some_and(|kv| {
            let value: Option<SlotValue> = serde_json::from_slice(kv.value()).ok();
            kv.lease() == lease.id() && value.is_some_and(|v| v.holder == self.who.holder)
        });
        Ok(match ours {
            true => Holding::Held,
            false => Holding::Lost {
                reason: format!("{key} was removed or re-bound by someone else"),
            },
        })
    }

    async fn halt(&self, version: &str, reason: &str) -> Result<(), SlotError> {
        let marker = HaltMarker {
            version: version.to_string(),
            reason: reason.to_string(),
            instance: self.who.instance.clone(),
            since: super::now_rfc3339(),
        };
        let created = halt::put(&mut self.client().await?, &self.group, &marker).await;
        if let Ok(true) = created {
            tracing::warn!(group = %self.group, version, reason, "update group halted");
        }
        self.note(created.map(|_| ())).await
    }

    async fn resume(&self) -> Result<(), SlotError> {
        let removed = halt::remove(&mut self.client().await?, &self.group).await;
        self.note(removed.map(|_| ())).await
    }

    async fn halted(&self) -> Result<Option<HaltMarker>, SlotError> {
        let marker = halt::get(&mut self.client().await?, &self.group).await;
        self.note(marker).await
    }

    async fn wait_for_change(&self, timeout: Duration) {
        let max_changed = self.max_changed.notified();
        tokio::pin!(max_changed);
        // Registered before comparing, so a `set_max` in between is not missed.
        max_changed.as_mut().enable();
        let (from, seen_max) = {
            let state = self.state.lock().await;
            (state.seen_revision + 1, state.seen_max)
        };
        if seen_max != self.max.load(Ordering::SeqCst) {
            return;
        }
        let timeout = with_jitter(timeout);
        let rollout = async {
            match &self.rollout {
                Some(rollout) => rollout.wait_for_change().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(timeout) => {}
            _ = max_changed => {}
            _ = rollout => {}
            opened = self.wait_for_delete(from) => {
                if opened.is_err() {
                    tokio::time::sleep(WATCH_RETRY.min(timeout)).await;
                }
            }
        }
    }
}

/// Revokes the lease of a wait in line that was dropped before it finished (e.g. the caller's
/// `select!` took another branch), so its queue key does not block the waiters behind it.
struct AbandonedWait<'a> {
    slots: &'a EtcdSlots,
    finished: bool,
}

impl Drop for AbandonedWait<'_> {
    fn drop(&mut self) {
        let waiting = self.slots.waiting_lease.swap(0, Ordering::SeqCst);
        if self.finished {
            return;
        }
        // The wait's state guard is dropped before this one (declared after it), so the state is
        // free unless another task took it in between: then revoke by the id the wait noted.
        let lease = match self.slots.state.try_lock() {
            // Holding a slot (taken before this wait): the lease is the slot's, not the wait's.
            Ok(state) if state.key.is_some() => return,
            Ok(mut state) => {
                state.queued = None;
                state.parked = None;
                state.lease.take().map(Abandoned::Keeper)
            }
            Err(_) => (waiting != 0).then_some(Abandoned::Id(waiting)),
        };
        let Some(lease) = lease else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let etcd = self.slots.etcd.clone();
            runtime.spawn(async move {
                let revoked = match lease {
                    Abandoned::Keeper(keeper) => keeper.revoke(&etcd).await,
                    Abandoned::Id(id) => crate::etcd::lease::revoke(&etcd, id).await,
                };
                if let Err(err) = revoked {
                    tracing::debug!(error = %format!("{err:#}"),
                        "lease of an abandoned slot wait not revoked; it expires within its TTL");
                }
            });
        }
    }
}

/// The lease of an abandoned wait: the keeper taken from the holder's state, or only its id.
enum Abandoned {
    Keeper(SlotLease),
    Id(i64),
}

impl EtcdSlots {
    /// Passes `outcome` through; after a transport error the next request connects afresh.
    async fn note<T>(&self, outcome: Result<T, SlotError>) -> Result<T, SlotError> {
        if let Err(SlotError::Etcd(err)) = &outcome {
            self.etcd.failed(err).await;
        }
        outcome
    }

    /// Returns at the first delete under the group's prefix or of its halt marker since `from`.
    async fn wait_for_delete(&self, from: i64) -> Result<(), SlotError> {
        let opts = || {
            WatchOptions::new()
                .with_start_revision(from)
                .with_filters([WatchFilterType::NoPut])
        };
        let mut stream = self
            .client()
            .await?
            .watch(group_prefix(&self.group), Some(opts().with_prefix()))
            .await?;
        stream
            .watch(halt::halt_key(&self.group), Some(opts()))
            .await?;
        while let Some(resp) = stream.message().await? {
            // A compacted start revision: the snapshot is stale anyway, so retry now.
            if resp.canceled() || resp.compact_revision() > 0 {
                return Ok(());
            }
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The slot backend's answer for a slot the rollout's gate holds: busy while the hold may end,
/// halted when the version spent its failure budget (nothing but a new version lifts that, so a
/// waiting swap gives its grant back as it does on a halt instead of waiting for good).
pub(super) fn gate_answer(version: &str, hold: SlotHold) -> Acquisition {
    match hold {
        SlotHold::Busy(detail) => Acquisition::Busy { detail },
        SlotHold::Refused(reason) => Acquisition::Halted {
            version: version.to_string(),
            reason,
        },
    }
}
