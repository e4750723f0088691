//! Taking a slot: the group snapshot, the compare-and-create transaction and the lease it binds
//! the key to, for [`EtcdSlots::acquire`](super::EtcdSlots).

use std::sync::atomic::Ordering;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{EtcdSlots, HolderState, MAX_RACES};
use crate::etcd::lease::LeaseState;
use crate::slot::halt;
use crate::slot::keys::{Snapshot, group_prefix, parse_snapshot, slot_key, snapshot_ops};
use crate::slot::lease::SlotLease;
use crate::slot::{Acquisition, SlotError, SlotValue};

impl EtcdSlots {
    /// The client of the shared connection, counting the request about to be made.
    pub(super) async fn client(&self) -> Result<Client, SlotError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.etcd
            .client()
            .await
            .map_err(|e| SlotError::Connect(format!("{e:#}")))
    }

    pub(super) async fn snapshot(&self) -> Result<Snapshot, SlotError> {
        let resp = self
            .client()
            .await?
            .txn(Txn::new().and_then(snapshot_ops(&self.group)))
            .await?;
        Ok(parse_snapshot(&self.group, &resp))
    }

    /// The live lease of this holder, granted afresh when there is none or it was lost.
    pub(super) async fn live_lease(&self, state: &mut HolderState) -> Result<i64, SlotError> {
        if let Some(lease) = &state.lease
            && lease.state() == LeaseState::Alive
        {
            return Ok(lease.id());
        }
        state.lease = None;
        let owner = format!("slot {} holder {}", self.group, self.who.holder);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let lease = SlotLease::grant(&self.etcd, self.ttl, None, &owner)
            .await
            .map_err(|e| SlotError::Connect(format!("{e:#}")))?;
        let id = lease.id();
        state.lease = Some(lease);
        Ok(id)
    }

    /// Commits `put` if `cmp` holds; otherwise returns a fresh snapshot to retry from.
    pub(super) async fn commit(
        &self,
        cmp: Vec<Compare>,
        put: TxnOp,
    ) -> Result<Option<Snapshot>, SlotError> {
        let txn = Txn::new()
            .when(cmp)
            .and_then([put])
            .or_else(snapshot_ops(&self.group));
        let resp = self.client().await?.txn(txn).await?;
        Ok((!resp.succeeded()).then(|| parse_snapshot(&self.group, &resp)))
    }

    pub(super) fn value(&self, version: &str, since: String) -> Result<Vec<u8>, SlotError> {
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

    /// One acquire attempt under the state lock; `state.key` ends up naming the slot held, if any.
    pub(super) async fn try_acquire(
        &self,
        state: &mut HolderState,
        version: &str,
    ) -> Result<Acquisition, SlotError> {
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
            let lease_alive = state
                .lease
                .as_ref()
                .filter(|l| l.state() == LeaseState::Alive);
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
                let lease = self.live_lease(state).await?;
                let value = self.value(version, since.unwrap_or_else(crate::slot::now_rfc3339))?;
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
            state.key = None;
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
            let lease = self.live_lease(state).await?;
            let value = self.value(version, crate::slot::now_rfc3339())?;
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

    /// Stops keeping the lease alive and revokes it; if etcd does not answer, it expires.
    pub(super) async fn drop_idle_lease(&self, state: &mut HolderState) {
        let Some(lease) = state.lease.take() else {
            return;
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = lease.revoke(&self.etcd).await {
            tracing::debug!(group = %self.group, error = %err,
                "idle slot lease not revoked; it expires within its TTL");
        }
    }
}

fn busy(held: usize, max: u32) -> Acquisition {
    Acquisition::Busy {
        detail: format!("{held} of {max} slots held"),
    }
}
