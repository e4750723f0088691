//! Waiting for a slot in line: etcd's recipe for a fair lock, applied to a counting semaphore.
//!
//! A waiter puts a key on its own lease under the group's queue prefix; its creation revision is
//! its place in line. Each waiter watches only the key just ahead of it; the first in line watches
//! the group's slots. A release therefore wakes one waiter, not all of them, and the etcd requests
//! per contended acquire do not grow with the number of waiters. A raised stored limit is read at
//! the first waiter's next look (a release, or [`RETRY_AFTER`]); watching the limit key as well
//! would cost every contended acquire one more request. Only the first in
//! line may take a slot (its transaction checks that no queue key is older than its own, and
//! deletes its own key as it takes the slot), so slots are granted first come, first served.
//!
//! A waiter that gives up (deadline, halt, error) revokes its idle lease, which removes its queue
//! key; the one behind it then watches the next key ahead.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::time::{Instant, sleep_until};

use super::acquire::{DUPLICATE, Queued};
use super::{EtcdSlots, HolderState, WATCH_RETRY};
use crate::slot::keys::{Snapshot, group_prefix, parse_snapshot, queue_key, snapshot_ops};
use crate::slot::{Acquisition, RETRY_AFTER, SlotError, with_jitter};

/// What woke a waiter.
enum Wake {
    /// Something changed that may let it in; the snapshot was updated where the event says how.
    Changed,
    /// Nothing seen: check again.
    Recheck,
    /// The deadline passed.
    Deadline,
}

impl EtcdSlots {
    /// Acquires in line until acquired, halted, or `deadline` passes (then the last `Busy`).
    pub(super) async fn queued_acquire(
        &self,
        state: &mut HolderState,
        version: &str,
        deadline: Duration,
    ) -> Result<Acquisition, SlotError> {
        let end = Instant::now() + deadline;
        let (mut queued, mut snap) = self.enqueue(state).await?;
        loop {
            let outcome = self
                .try_acquire(state, version, Some(&queued), snap)
                .await?;
            let Acquisition::Busy { detail } = &outcome else {
                return Ok(outcome);
            };
            if detail.starts_with(DUPLICATE) {
                // Never block the line while another host holds our holder id's slot.
                self.drop_idle_lease(state).await;
                let retry = Instant::now() + with_jitter(RETRY_AFTER);
                if retry >= end {
                    sleep_until(end).await;
                    return Ok(outcome);
                }
                sleep_until(retry).await;
                (queued, snap) = self.enqueue(state).await?;
                continue;
            }
            // try_acquire left the snapshot it judged by in `state`; wait from there.
            let seen = state.last.take();
            let wake = match &seen {
                Some(snap) => self.wait_in_line(state, snap, end).await,
                None => Ok(Wake::Recheck),
            };
            match wake? {
                Wake::Deadline => return Ok(outcome),
                Wake::Changed | Wake::Recheck => {}
            }
            // The lease (and with it the queue key) may be gone: queue again, at the end.
            if state.queued.is_none() {
                (queued, snap) = self.enqueue(state).await?;
            } else {
                snap = self.snapshot(Some(&queued)).await?;
            }
        }
    }

    /// Puts this holder's queue key (unless it has one) and reads the group in the same
    /// transaction.
    async fn enqueue(&self, state: &mut HolderState) -> Result<(Queued, Snapshot), SlotError> {
        if let Some(queued) = state.queued.clone() {
            let snap = self.snapshot(Some(&queued)).await?;
            return Ok((queued, snap));
        }
        let lease = self.live_lease(state).await?;
        self.waiting_lease
            .store(lease, std::sync::atomic::Ordering::SeqCst);
        let key = queue_key(&self.group, lease);
        let value = serde_json::json!({
            "holder": self.who.holder,
            "instance": self.who.instance,
            "host": self.host,
        })
        .to_string();
        let put = TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        let then: Vec<TxnOp> = std::iter::once(put)
            .chain(snapshot_ops(&self.group, None))
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then(then)
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self.client().await?.txn(txn).await?;
        if !resp.succeeded() {
            // Already queued on this lease (an earlier wait was abandoned): keep that place.
            let revision = resp
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    etcd_client::TxnOpResponse::Get(get) => {
                        get.kvs().first().map(|kv| kv.create_revision())
                    }
                    _ => None,
                })
                .unwrap_or(0);
            let queued = Queued { key, revision };
            state.queued = Some(queued.clone());
            let snap = self.snapshot(Some(&queued)).await?;
            return Ok((queued, snap));
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let queued = Queued { key, revision };
        state.queued = Some(queued.clone());
        Ok((queued, parse_snapshot(&self.group, &resp, Some(revision))))
    }

    /// Waits for what can let this waiter in: the key just ahead of it going away or, first in
    /// line, a slot being freed. Also wakes when the lease is lost, when the configured limit
    /// changes, after [`RETRY_AFTER`], or at `end`.
    async fn wait_in_line(
        &self,
        state: &mut HolderState,
        snap: &Snapshot,
        end: Instant,
    ) -> Result<Wake, SlotError> {
        let max_changed = self.max_changed.notified();
        tokio::pin!(max_changed);
        // Registered before comparing, so a `set_max` in between is not missed.
        max_changed.as_mut().enable();
        if state.seen_max != self.max.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Wake::Changed);
        }
        let from = snap.revision + 1;
        let Some(mut lease) = state.lease.as_ref().map(|l| l.subscribe()) else {
            return Ok(Wake::Recheck);
        };
        let ahead = snap.ahead.clone();
        let watched = async {
            let mut client = self.client().await?;
            let (watched_key, options) = match &ahead {
                Some((key, _)) => (key.clone(), WatchOptions::new()),
                None => (group_prefix(&self.group), WatchOptions::new().with_prefix()),
            };
            let mut stream = client
                .watch(watched_key, Some(options.with_start_revision(from)))
                .await?;
            let prefix = group_prefix(&self.group);
            while let Some(resp) = stream.message().await? {
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Ok::<_, SlotError>(Wake::Recheck);
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    let nested = key
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.contains('/'));
                    let slot_freed = event.event_type() == EventType::Delete && !nested;
                    if slot_freed || ahead.is_some() {
                        return Ok(Wake::Changed);
                    }
                }
            }
            Ok(Wake::Recheck)
        };
        tokio::select! {
            wake = watched => match wake {
                Ok(wake) => Ok(wake),
                Err(err) => {
                    // No watch (etcd busy or away): look again after a pause, not in a spin.
                    tracing::debug!(group = %self.group, error = %err, "slot queue watch failed");
                    tokio::time::sleep(WATCH_RETRY.min(end.saturating_duration_since(Instant::now()))).await;
                    Ok(Wake::Recheck)
                }
            },
            _ = lease.lost() => {
                state.queued = None;
                Ok(Wake::Recheck)
            }
            _ = max_changed => Ok(Wake::Changed),
            _ = tokio::time::sleep(with_jitter(RETRY_AFTER)) => Ok(Wake::Recheck),
            _ = sleep_until(end) => Ok(Wake::Deadline),
        }
    }
}
