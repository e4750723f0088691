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
//! that compare the value, which names the holder.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
};
use tokio::sync::{Mutex, Notify};
use url::Url;

use super::halt::{self, HaltMarker};
pub use super::keys::{SLOT_PREFIX, SlotEntry, group_prefix, read_group, release_holder, slot_key};
use super::keys::{Snapshot, parse_snapshot, snapshot_ops};
use super::lease::{LeaseOwner, SlotLease};
use super::{Acquisition, Holding, SlotError, SlotHolder, SlotLock, SlotValue, with_jitter};
use crate::config::Settings;

/// An acquire gives up (reports busy) after this many lost races in a row.
const MAX_RACES: u32 = 64;
/// Pause when the watch cannot be opened, so a waiter does not spin while etcd is down.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// This holder's state behind the lock: its lease and the key it holds.
#[derive(Debug, Default)]
struct HolderState {
    lease: Option<SlotLease>,
    key: Option<String>,
    /// Revision of the last snapshot, where a waiter's watch starts.
    seen_revision: i64,
    /// The limit that snapshot was judged by; a waiter retries at once when it changed.
    seen_max: u32,
}

/// An update slot in an etcd group, for one holder.
pub struct EtcdSlots {
    client: Client,
    group: String,
    who: SlotHolder,
    /// The etcd endpoint(s), for log lines.
    endpoint: String,
    ttl: Duration,
    max: AtomicU32,
    max_changed: Notify,
    state: Mutex<HolderState>,
    requests: Arc<AtomicU64>,
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
        client: Client,
        group: impl Into<String>,
        max: NonZeroU32,
        ttl: Duration,
        who: SlotHolder,
    ) -> EtcdSlots {
        EtcdSlots {
            client,
            group: group.into(),
            who,
            endpoint: String::new(),
            ttl,
            max: AtomicU32::new(max.get()),
            max_changed: Notify::new(),
            state: Mutex::new(HolderState::default()),
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A holder configured from `[slot]`, naming the `[etcd]` endpoints in its log lines.
    pub fn from_settings(client: Client, settings: &Settings, who: SlotHolder) -> EtcdSlots {
        let slot = &settings.slot;
        let endpoints: Vec<&str> = settings.etcd.endpoints.iter().map(Url::as_str).collect();
        EtcdSlots::new(client, &slot.group, slot.max, slot.ttl, who)
            .with_endpoint(endpoints.join(","))
    }

    /// Names the etcd endpoint(s) in this holder's log lines.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> EtcdSlots {
        self.endpoint = endpoint.into();
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

    /// Follows this holder's lease, to learn at once when a held slot is lost.
    pub async fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<Holding>> {
        self.state
            .lock()
            .await
            .lease
            .as_ref()
            .map(SlotLease::subscribe)
    }

    fn client(&self) -> Client {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.client.clone()
    }

    async fn snapshot(&self) -> Result<Snapshot, SlotError> {
        let resp = self
            .client()
            .txn(Txn::new().and_then(snapshot_ops(&self.group)))
            .await?;
        Ok(parse_snapshot(&self.group, &resp))
    }

    /// The live lease of this holder, granted afresh when there is none or it was lost.
    async fn live_lease(&self, state: &mut HolderState) -> Result<i64, SlotError> {
        if let Some(lease) = &state.lease
            && lease.state() == Holding::Held
        {
            return Ok(lease.id());
        }
        state.lease = None;
        let owner = LeaseOwner {
            group: self.group.clone(),
            holder: self.who.holder.clone(),
            endpoint: self.endpoint.clone(),
        };
        let lease = SlotLease::grant(&self.client(), self.ttl, owner).await?;
        let id = lease.id();
        state.lease = Some(lease);
        Ok(id)
    }

    /// Commits `put` if `cmp` holds; otherwise returns a fresh snapshot to retry from.
    async fn commit(&self, cmp: Vec<Compare>, put: TxnOp) -> Result<Option<Snapshot>, SlotError> {
        let txn = Txn::new()
            .when(cmp)
            .and_then([put])
            .or_else(snapshot_ops(&self.group));
        let resp = self.client().txn(txn).await?;
        Ok((!resp.succeeded()).then(|| parse_snapshot(&self.group, &resp)))
    }

    fn value(&self, version: &str, since: String) -> Result<Vec<u8>, SlotError> {
        let value = SlotValue {
            holder: self.who.holder.clone(),
            instance: self.who.instance.clone(),
            version: version.to_string(),
            since,
        };
        serde_json::to_vec(&value).map_err(|source| SlotError::Malformed {
            key: group_prefix(&self.group),
            source,
        })
    }
}

impl SlotLock for EtcdSlots {
    async fn acquire(&self, version: &str) -> Result<Acquisition, SlotError> {
        let mut state = self.state.lock().await;
        let mut snap = self.snapshot().await?;
        let halt_key = halt::halt_key(&self.group);
        for _ in 0..MAX_RACES {
            state.seen_revision = snap.revision;
            if let Some(h) = snap.halt.take() {
                return Ok(Acquisition::Halted {
                    version: h.version,
                    reason: h.reason,
                });
            }
            let lease_alive = state.lease.as_ref().filter(|l| l.state() == Holding::Held);
            let mine = snap
                .slots
                .iter()
                .find(|s| s.holder() == Some(self.who.holder.as_str()));
            if let Some(entry) = mine {
                if lease_alive.is_some_and(|l| l.id() == entry.lease) {
                    state.key = Some(entry.key.clone());
                    return Ok(Acquisition::Acquired);
                }
                // Ours, but bound to a lease we do not keep alive (a previous run, or a lease
                // we lost track of): re-bind it to our live lease, keeping the slot.
                let since = entry.value.as_ref().map(|v| v.since.clone());
                let (key, raw) = (entry.key.clone(), entry.raw.clone());
                let lease = self.live_lease(&mut state).await?;
                let value = self.value(version, since.unwrap_or_else(super::now_rfc3339))?;
                let cmp = vec![Compare::value(key.as_str(), CompareOp::Equal, raw)];
                let put = TxnOp::put(
                    key.as_str(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                );
                match self.commit(cmp, put).await? {
                    None => {
                        state.key = Some(key);
                        return Ok(Acquisition::Acquired);
                    }
                    Some(next) => {
                        snap = next;
                        continue;
                    }
                }
            }
            let max = self.max.load(Ordering::SeqCst);
            state.seen_max = max;
            let held = snap.slots.len();
            let Some(index) = (0..max).find(|n| snap.slots.iter().all(|s| s.index != Some(*n)))
            else {
                return Ok(busy(held, max));
            };
            if held >= max as usize {
                return Ok(busy(held, max));
            }
            let key = slot_key(&self.group, index);
            let lease = self.live_lease(&mut state).await?;
            let value = self.value(version, super::now_rfc3339())?;
            let prefix = group_prefix(&self.group);
            let cmp = vec![
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(prefix.as_str(), CompareOp::Less, snap.revision + 1)
                    .with_prefix(),
                Compare::create_revision(halt_key.as_str(), CompareOp::Equal, 0),
            ];
            let put = TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            );
            match self.commit(cmp, put).await? {
                None => {
                    tracing::info!(group = %self.group, slot = index, version, "update slot acquired");
                    state.key = Some(key);
                    return Ok(Acquisition::Acquired);
                }
                // Lost a race: someone else wrote under the prefix; retry on what they left.
                Some(next) => snap = next,
            }
        }
        Ok(Acquisition::Busy {
            detail: format!("lost {MAX_RACES} races in a row for a slot"),
        })
    }

    async fn release(&self) -> Result<(), SlotError> {
        let mut state = self.state.lock().await;
        let released = release_holder(&mut self.client(), &self.group, &self.who.holder).await?;
        for key in &released {
            tracing::info!(group = %self.group, %key, "update slot released");
        }
        state.key = None;
        if let Some(lease) = state.lease.take() {
            self.requests.fetch_add(1, Ordering::Relaxed);
            lease.revoke(&self.client).await?;
        }
        Ok(())
    }

    async fn release_stale(&self) -> Result<(), SlotError> {
        // Release works by holder id, whatever lease the key is bound to.
        self.release().await
    }

    async fn held(&self) -> Result<Holding, SlotError> {
        let state = self.state.lock().await;
        let (Some(lease), Some(key)) = (&state.lease, &state.key) else {
            return Ok(Holding::NotHeld);
        };
        if let lost @ Holding::Lost { .. } = lease.state() {
            return Ok(lost);
        }
        let resp = self.client().get(key.as_str(), None).await?;
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
        if halt::put(&mut self.client(), &self.group, &marker).await? {
            tracing::warn!(group = %self.group, version, reason, "update group halted");
        }
        Ok(())
    }

    async fn resume(&self) -> Result<(), SlotError> {
        halt::remove(&mut self.client(), &self.group).await?;
        Ok(())
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
        tokio::select! {
            _ = tokio::time::sleep(timeout) => {}
            _ = max_changed => {}
            opened = self.wait_for_delete(from) => {
                if opened.is_err() {
                    tokio::time::sleep(WATCH_RETRY.min(timeout)).await;
                }
            }
        }
    }
}

impl EtcdSlots {
    /// Returns at the first delete under the group's prefix or of its halt marker since `from`.
    async fn wait_for_delete(&self, from: i64) -> Result<(), SlotError> {
        let opts = || {
            WatchOptions::new()
                .with_start_revision(from)
                .with_filters([WatchFilterType::NoPut])
        };
        let mut stream = self
            .client()
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

fn busy(held: usize, max: u32) -> Acquisition {
    Acquisition::Busy {
        detail: format!("{held} of {max} slots held"),
    }
}
