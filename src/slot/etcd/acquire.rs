//! Taking a slot: the group snapshot, the compare-and-create transaction and the lease it binds
//! the key to, for [`EtcdSlots::acquire`](super::EtcdSlots) and the queued wait in [`super::queue`].

use std::sync::atomic::Ordering;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{EtcdSlots, HolderState, MAX_RACES};
use crate::etcd::duplicate::{DuplicateRecord, record_key};
use crate::etcd::lease::LeaseState;
use crate::slot::halt;
use crate::slot::keys::{
    Reader, Snapshot, group_prefix, limit_key, parse_snapshot, queue_prefix, slot_key, snapshot_ops,
};
use crate::slot::lease::SlotLease;
use crate::slot::{Acquisition, SlotError, SlotValue};

/// How a busy answer about a duplicate holder begins.
pub(super) const DUPLICATE: &str = "duplicate holder";

/// This holder's place in the group's queue.
#[derive(Debug, Clone)]
pub(super) struct Queued {
    pub key: String,
    /// Creation revision of the queue key: its place in line.
    pub revision: i64,
}

/// How a holder in line at `queued` (or outside it) reads the group.
pub(super) fn reader(queued: Option<&Queued>) -> Reader<'_> {
    match queued {
        None => Reader::Outside,
        Some(q) => Reader::InLine {
            key: &q.key,
            revision: q.revision,
        },
    }
}

impl EtcdSlots {
    /// The client of the shared connection, counting the request about to be made.
    pub(super) async fn client(&self) -> Result<Client, SlotError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.etcd
            .client()
            .await
            .map_err(|e| SlotError::Connect(format!("{e:#}")))
    }

    /// The group as it is now; `queued` names this holder's place in line, if it has one.
    pub(super) async fn snapshot(&self, queued: Option<&Queued>) -> Result<Snapshot, SlotError> {
        let resp = self
            .client()
            .await?
            .txn(Txn::new().and_then(snapshot_ops(&self.group, reader(queued))))
            .await?;
        Ok(parse_snapshot(&self.group, &resp, reader(queued)))
    }

    /// The live lease of this holder, granted afresh when there is none or it was lost.
    /// Shows this duplicate holder in `sidekick status` (DUPLICATE INSTANCES): a record under
    /// `/sidekick/duplicates/<slot key>` on a lease of its own that outlives a waiter's retry
    /// period, so it stays while the clone keeps trying and goes soon after. Best effort: the
    /// ERROR log already says it.
    async fn record_duplicate(&self, slot_key: &str, other_host: &str) {
        let record = DuplicateRecord {
            key: slot_key.to_string(),
            host: self.host.to_string(),
            held_by: other_host.to_string(),
            since: crate::slot::now_rfc3339(),
        };
        let written = async {
            let mut client = self.client().await?;
            let ttl = 2 * crate::slot::RETRY_AFTER.as_secs() as i64;
            let lease = client.lease_grant(ttl, None).await?.id();
            let value = serde_json::to_vec(&record).map_err(|source| SlotError::Malformed {
                key: slot_key.to_string(),
                source,
            })?;
            let options = PutOptions::new().with_lease(lease);
            client
                .put(record_key(slot_key), value, Some(options))
                .await?;
            Ok::<(), SlotError>(())
        };
        if let Err(err) = written.await {
            tracing::warn!(error = %err, key = %slot_key, "failed to record the duplicate holder for status");
        }
    }

    pub(super) async fn live_lease(&self, state: &mut HolderState) -> Result<i64, SlotError> {
        if let Some(lease) = &state.lease
            && lease.state() == LeaseState::Alive
        {
            return Ok(lease.id());
        }
        state.lease = None;
        state.queued = None;
        let owner = format!("slot {} holder {}", self.group, self.who.holder);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let lease = SlotLease::grant(&self.etcd, self.ttl, None, &owner)
            .await
            .map_err(|e| SlotError::Connect(format!("{e:#}")))?;
        let id = lease.id();
        state.lease = Some(lease);
        if let Some(ledger) = &self.ledger
            && let Err(err) = ledger.record(id)
        {
            tracing::warn!(group = %self.group, lease = %format!("{id:x}"), "{err}; \
                a later start will not revoke this lease, it expires within slot.ttl by itself");
        }
        Ok(id)
    }

    /// Commits `ops` if `cmp` holds; otherwise returns a fresh snapshot to retry from.
    pub(super) async fn commit(
        &self,
        cmp: Vec<Compare>,
        ops: Vec<TxnOp>,
        queued: Option<&Queued>,
    ) -> Result<Option<Snapshot>, SlotError> {
        let txn = Txn::new()
            .when(cmp)
            .and_then(ops)
            .or_else(snapshot_ops(&self.group, reader(queued)));
        let resp = self.client().await?.txn(txn).await?;
        Ok((!resp.succeeded()).then(|| parse_snapshot(&self.group, &resp, reader(queued))))
    }

    pub(super) fn value(&self, version: &str, since: String) -> Result<Vec<u8>, SlotError> {
        let value = SlotValue {
            holder: self.who.holder.clone(),
            instance: self.who.instance.clone(),
            version: version.to_string(),
            since,
            host: Some(self.host.clone()),
        };
        serde_json::to_vec(&value).map_err(|source| SlotError::Malformed {
            key: group_prefix(&self.group),
            source,
        })
    }

    /// The slot write plus, for a queued holder, leaving the queue in the same transaction.
    fn put_ops(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        queued: Option<&Queued>,
    ) -> Vec<TxnOp> {
        let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
        let leave = queued.map(|q| TxnOp::delete(q.key.as_str(), None));
        std::iter::once(put).chain(leave).collect()
    }

    /// Acquires from `snap` on: a slot of ours is kept (re-bound to our lease if needed, also in
    /// a halted group); otherwise, if it is our turn (nobody queued, or we are first in line), the
    /// group is not halted and fewer than the limit hold a slot, a free one is created. Lost
    /// races retry on the snapshot the failed commit read. `state.key` ends up naming the slot.
    pub(super) async fn try_acquire(
        &self,
        state: &mut HolderState,
        version: &str,
        queued: Option<&Queued>,
        mut snap: Snapshot,
    ) -> Result<Acquisition, SlotError> {
        for _ in 0..MAX_RACES {
            state.seen_revision = snap.revision;
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
                    state.value = Some(entry.raw.clone());
                    return Ok(Acquisition::Acquired);
                }
                let host = entry.value.as_ref().and_then(|v| v.host.clone());
                if let Some(other) = host.filter(|h| *h != self.host) {
                    tracing::error!(group = %self.group, key = %entry.key, holder = %self.who.holder,
                        other_host = %other, this_host = %self.host,
                        "duplicate holder: another host holds this holder id's slot (cloned /etc/machine-id?); not taking it over");
                    let detail = format!(
                        "{DUPLICATE}: {} is held by holder id {} on {other}",
                        entry.key, self.who.holder
                    );
                    let key = entry.key.clone();
                    self.record_duplicate(&key, &other.to_string()).await;
                    state.last = Some(snap);
                    return Ok(Acquisition::Busy { detail });
                }
                // Ours, from this host, but bound to a lease we do not keep alive (a previous
                // run, or a lease we lost track of): re-bind it to our live lease.
                let since = entry.value.as_ref().map(|v| v.since.clone());
                let (key, raw) = (entry.key.clone(), entry.raw.clone());
                let lease = self.live_lease(state).await?;
                let value = self.value(version, since.unwrap_or_else(crate::slot::now_rfc3339))?;
                let cmp = vec![Compare::value(key.as_str(), CompareOp::Equal, raw)];
                let ops = self.put_ops(&key, value.clone(), lease, queued);
                match self.commit(cmp, ops, queued).await? {
                    None => {
                        state.key = Some(key);
                        state.value = Some(value);
                        return Ok(Acquisition::Acquired);
                    }
                    Some(next) => {
                        snap = next;
                        continue;
                    }
                }
            }
            state.key = None;
            state.value = None;
            // A rollback leaving the halted version goes on; the transaction checks the marker
            // stayed as read.
            if let Some(h) = snap.halt.take()
                && !self.passes_halt(&h, version)
            {
                return Ok(Acquisition::Halted {
                    version: h.version,
                    reason: h.reason,
                });
            }
            let configured = self.max.load(Ordering::SeqCst);
            state.seen_max = configured;
            let max = snap.limit.map_or(configured, |l| l.max);
            // Nobody queued, or this holder first in line (the transaction checks it again).
            if !snap.queue_clear {
                state.last = Some(snap);
                return Ok(Acquisition::Busy {
                    detail: "waiters are queued ahead".into(),
                });
            }
            let held = snap.slots.len();
            let free = (0..max).find(|n| snap.slots.iter().all(|s| s.index != Some(*n)));
            let (Some(index), true) = (free, held < max as usize) else {
                state.last = Some(snap);
                return Ok(busy(held, max));
            };
            let key = slot_key(&self.group, index);
            let lease = self.live_lease(state).await?;
            let value = self.value(version, crate::slot::now_rfc3339())?;
            let ops = self.put_ops(&key, value.clone(), lease, queued);
            match self
                .commit(self.admission(&key, &snap, queued), ops, queued)
                .await?
            {
                None => {
                    tracing::info!(group = %self.group, slot = index, version, "update slot acquired");
                    state.key = Some(key);
                    state.value = Some(value);
                    state.queued = None;
                    return Ok(Acquisition::Acquired);
                }
                // Lost a race: someone else wrote; retry on what they left.
                Some(next) => snap = next,
            }
        }
        Ok(Acquisition::Busy {
            detail: format!("lost {MAX_RACES} races in a row for a slot"),
        })
    }

    /// What must still hold for a slot taken on `snap` to keep the group within its limit, in
    /// order and not halted. Holders only leave or re-bind after the snapshot unless someone
    /// creates a key, so "no slot key created since" keeps the count. The limit must be the one
    /// read, and the queue empty (or us first in line).
    fn admission(&self, key: &str, snap: &Snapshot, queued: Option<&Queued>) -> Vec<Compare> {
        let prefix = group_prefix(&self.group);
        let limit = limit_key(&self.group);
        let queue = queue_prefix(&self.group);
        vec![
            Compare::create_revision(key, CompareOp::Equal, 0),
            Compare::create_revision(prefix.as_str(), CompareOp::Less, snap.revision + 1)
                .with_prefix(),
            match snap.halt_revision {
                0 => Compare::create_revision(halt::halt_key(&self.group), CompareOp::Equal, 0),
                read => Compare::mod_revision(halt::halt_key(&self.group), CompareOp::Equal, read),
            },
            match snap.limit {
                Some(l) => Compare::mod_revision(limit.as_str(), CompareOp::Equal, l.mod_revision),
                None => Compare::create_revision(limit.as_str(), CompareOp::Equal, 0),
            },
            match queued {
                None => Compare::create_revision(queue.as_str(), CompareOp::Equal, 0).with_prefix(),
                // First in line as read: no key older than ours was left, and none can come
                // (a key created later has a later revision), so ours still being there as
                // created is enough. A compare over the whole line would cost etcd a read of
                // every waiter's key, inside its write path, at each take.
                Some(q) => Compare::create_revision(q.key.as_str(), CompareOp::Equal, q.revision),
            },
        ]
    }

    /// Stops keeping the lease alive and revokes it (which also removes a queue key on it); if
    /// etcd does not answer, it expires.
    pub(super) async fn drop_idle_lease(&self, state: &mut HolderState) {
        state.queued = None;
        state.parked = None;
        let Some(lease) = state.lease.take() else {
            return;
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = lease.revoke(&self.etcd).await {
            tracing::debug!(group = %self.group, error = %format!("{err:#}"),
                "idle slot lease not revoked; it expires within its TTL");
        }
    }
}

fn busy(held: usize, max: u32) -> Acquisition {
    Acquisition::Busy {
        detail: format!("{held} of {max} slots held"),
    }
}
