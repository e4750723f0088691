//! Waiting for a slot in line: etcd's recipe for a fair lock, applied to a counting semaphore.
//!
//! A waiter puts a key on its own lease under the group's queue prefix; its creation revision is
//! its place in line. Each waiter watches only the key just ahead of it; the first in line watches
//! the group's slots. A release therefore wakes one waiter, not all of them, and the etcd requests
//! per contended acquire do not grow with the number of waiters. Only the first in
//! line may take a slot (it takes only when its read showed no queue key older than its own,
//! which no later key can be; its transaction checks its own key is still there as created, and
//! deletes it as it takes the slot), so slots are granted first come, first served.
//!
//! The first in line keeps the group's slots as its snapshot read them and applies every event of
//! its watch (from the revision after that snapshot, so nothing between the read and the watch is
//! missed). The moment a delete leaves fewer holders than the limit, it sends its transaction, on
//! the snapshot as of that event: the slots it saw, at the event's revision. No read in between;
//! if anything else changed (a slot created, the limit, a halt), the transaction fails and its
//! failure branch returns a fresh snapshot to go on from. So a hand-over is one watch event and
//! one transaction, and a contended acquire costs: the lease grant, the queue put (with a read),
//! a watch of the key ahead, a read when that key goes, a watch of the slots, the transaction.
//!
//! A waiter behind others looks again only when the key ahead of it goes (its watch says so), when
//! its lease is lost or its configured limit changes, or after [`BEHIND_RECHECK`]. The first in
//! line also looks again after [`RETRY_AFTER`]: a raised stored limit reaches it then (or at the
//! next release); watching the limit key as well would cost every contended acquire one more
//! request.
//!
//! A waiter that gives up (halt, error, a dropped wait) revokes its idle lease, which removes its
//! queue key; the one behind it then watches the next key ahead. A wait that reaches its deadline
//! keeps its key and lease for the caller's next wait (the daemon waits in steps of
//! [`RETRY_AFTER`], answering busy in between), and parks its watch with the group as that watch
//! last saw it ([`Parked`]): the next wait goes on from there with no request, and reads what
//! arrived meanwhile from the same stream. So a wait in steps costs what one long wait does.
//! `acquire`, `release` and `release_stale` give such a kept place up, and the parked watch
//! with it.
//!
//! The rollout's slot gate ([`crate::rollout::agent::RolloutAgent::slot_hold`]) is asked before a
//! waiter joins the line and again when, first in line, it sees a slot free, right before its
//! transaction. A waiter the gate holds does not keep a place: it leaves the line (revoking its
//! lease) and waits outside it for the rollout to change or its hold to end by itself, then
//! joins again at the end. The choice: a hold may be this waiter's alone (a canary stage that
//! holds non-canaries, a version or a configured window of its own), and a held waiter kept at
//! the head would starve everyone behind it who could go. The cost falls on group-wide holds
//! (`batch_delay`, a bake): each waiter that reaches the head during one asks the gate once and
//! leaves, and the line re-forms in the order the waiters come back when the hold ends.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::time::{Instant, sleep_until};

use super::acquire::{DUPLICATE, Queued};
use super::{EtcdSlots, HolderState, WATCH_RETRY, gate_answer};
use crate::rollout::agent::SlotHold;
use crate::slot::keys::{
    Reader, SlotEntry, Snapshot, group_prefix, parse_snapshot, queue_key, snapshot_ops,
};
use crate::slot::{Acquisition, RETRY_AFTER, SlotError, with_jitter};

/// How long a waiter behind others goes without looking again when nothing happened: only the key
/// ahead of it going away moves it up, and its watch reports that. A safety net, not a poll.
pub(super) const BEHIND_RECHECK: Duration = Duration::from_secs(300);

/// A wait in line that reached its deadline with nothing to act on, kept for the next call (the
/// daemon waits in steps of [`RETRY_AFTER`], answering busy in between): the next wait goes on
/// with the same watch and the group as that watch last saw it, so a step costs no request.
/// Events that arrive in between stay in the watch's stream until the next wait reads them.
pub(super) struct Parked {
    /// The queue key this wait holds its place with; a wait on another place drops it.
    queue_key: String,
    /// The revision of the snapshot handed back, which the next wait must come with.
    revision: i64,
    /// The key ahead being watched, or `None`: the group's slots (first in line).
    ahead: Option<String>,
    /// `None` when the wait ended before it opened one.
    watch: Option<WatchStream>,
    recheck_at: Instant,
    /// The group as the watch last saw it, until [`EtcdSlots::unpark`] hands it back.
    snap: Option<Snapshot>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("queue_key", &self.queue_key)
            .field("revision", &self.revision)
            .field("ahead", &self.ahead)
            .finish_non_exhaustive()
    }
}

/// What woke a waiter; `F` carries the group as of a freeing event (the watches return `()` and
/// [`EtcdSlots::wait_in_line`] the snapshot they kept up to date).
enum Wake<F = Snapshot> {
    /// Something changed that may let it in: read the group again.
    Changed,
    /// First in line, it saw a slot freed: the group as of that event, to commit on at once.
    Freed(F),
    /// The key just ahead went: read the group again (this waiter may be first in line now).
    AheadGone,
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
        if state.key.is_some() {
            // Holding a slot already: no place in line to take (acquire is idempotent).
            let snap = self.snapshot(None).await?;
            return self.try_acquire(state, version, None, snap).await;
        }
        // Held by the rollout before joining: wait out of line, so the line holds only waiters
        // that could go.
        if state.queued.is_none()
            && let Some(held) = self.held_out_of_line(state, version, end).await?
        {
            return Ok(held);
        }
        // A wait the last call parked at its deadline goes on from the group as its watch last
        // saw it, with no request; otherwise join the line (or read it again, keeping a place).
        let (mut queued, mut snap) = match self.unpark(state) {
            Some(resumed) => resumed,
            None => self.enqueue(state).await?,
        };
        // A watch of the slots opened before the last read (see `open_slots_watch`).
        let mut opened: Option<WatchStream> = None;
        loop {
            // First in line with a slot free: the rollout's gate decides, right before the take.
            // A waiter it holds steps out of line (see the module doc) and comes back at the end.
            if self.may_take(&snap)
                && let Some(held) = self.gate(version).await
            {
                self.drop_idle_lease(state).await;
                let Acquisition::Busy { detail } = held else {
                    return Ok(held);
                };
                tracing::debug!(group = %self.group, hold = %detail,
                    "first in line but held by the rollout: leaving the line");
                if let Some(held) = self.wait_out_of_line(version, detail, end).await? {
                    return Ok(held);
                }
                (queued, snap) = self.enqueue(state).await?;
                opened = None;
                continue;
            }
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
            if Instant::now() >= end {
                // Keeps its place: the caller's next wait goes on from it, and from what it read.
                if let Some(seen) = seen {
                    park(state, seen, None, None);
                }
                return Ok(outcome);
            }
            if let Some(s) = &seen
                && s.ahead.is_none()
                && !s.queue_clear
            {
                // Nobody ahead, yet not clear: the queue key went (deleted by hand) while the
                // lease lives. Nothing would move this waiter up: take a new place at the end.
                state.queued = None;
                (queued, snap) = self.enqueue(state).await?;
                continue;
            }
            let wake = match seen {
                Some(seen) => self.wait_in_line(state, seen, end, opened.take()).await,
                None => Ok(Wake::Recheck),
            };
            match wake? {
                Wake::Deadline => return Ok(outcome),
                // Straight to the transaction: it fails (and reads afresh) if the event was not
                // the whole story.
                Wake::Freed(freed) if state.queued.is_some() => {
                    snap = freed;
                    continue;
                }
                // Most likely first in line now: open the slots' watch before the read.
                Wake::AheadGone if state.queued.is_some() => {
                    opened = self.open_slots_watch().await;
                }
                Wake::Freed(_) | Wake::AheadGone | Wake::Changed | Wake::Recheck => {}
            }
            // The lease (and with it the queue key) may be gone: queue again, at the end.
            if state.queued.is_none() {
                (queued, snap) = self.enqueue(state).await?;
            } else {
                snap = self.snapshot(Some(&queued)).await?;
            }
        }
    }

    /// Whether a waiter reading `snap` would take a slot now: first in line, the group not
    /// halted, fewer holders than its limit.
    fn may_take(&self, snap: &Snapshot) -> bool {
        let configured = self.max.load(std::sync::atomic::Ordering::SeqCst);
        let max = snap.limit.map_or(configured, |l| l.max);
        snap.queue_clear && snap.halt.is_none() && snap.slots.len() < max as usize
    }

    /// The rollout's slot gate for `version`: `None` to go on (no rollout, or a slot taken
    /// again), or its answer: busy while it holds, halted when the version spent its budget.
    async fn gate(&self, version: &str) -> Option<Acquisition> {
        let rollout = self.rollout.as_ref().filter(|_| self.gated())?;
        let hold = rollout.slot_hold(version).await?;
        Some(gate_answer(version, hold))
    }

    /// Out of line, holding no slot: `None` once the rollout lets this waiter go, or the busy
    /// answer of the hold that still stands at `end`.
    async fn held_out_of_line(
        &self,
        state: &mut HolderState,
        version: &str,
        end: Instant,
    ) -> Result<Option<Acquisition>, SlotError> {
        match self.gate(version).await {
            None => Ok(None),
            Some(Acquisition::Busy { detail }) => {
                self.drop_idle_lease(state).await;
                self.wait_out_of_line(version, detail, end).await
            }
            Some(refused) => {
                self.drop_idle_lease(state).await;
                Ok(Some(refused))
            }
        }
    }

    /// Waits out of line while the rollout holds this waiter (`detail`), looking again when the
    /// rollout changes or its hold ends by itself; `None` once it may go, or the busy answer of
    /// the hold that still stands at `end`.
    async fn wait_out_of_line(
        &self,
        version: &str,
        mut detail: String,
        end: Instant,
    ) -> Result<Option<Acquisition>, SlotError> {
        let Some(rollout) = self.rollout.as_ref() else {
            return Ok(None);
        };
        loop {
            if Instant::now() >= end {
                return Ok(Some(Acquisition::Busy { detail }));
            }
            tokio::select! {
                () = rollout.wait_for_change() => {}
                () = sleep_until(end) => return Ok(Some(Acquisition::Busy { detail })),
            }
            match rollout.slot_hold(version).await {
                None => return Ok(None),
                Some(SlotHold::Busy(next)) => detail = next,
                Some(refused) => return Ok(Some(gate_answer(version, refused))),
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
            .chain(snapshot_ops(&self.group, Reader::Joining))
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
        Ok((queued, parse_snapshot(&self.group, &resp, Reader::Joining)))
    }

    /// Waits for what can let this waiter in: the key just ahead of it going away or, first in
    /// line, a slot being freed (then [`Wake::Freed`] with the group as of that event). Also wakes
    /// when the lease is lost, when the configured limit changes, after [`RETRY_AFTER`] (first in
    /// line) or [`BEHIND_RECHECK`], or at `end`.
    /// `opened`: a watch of the slots opened before `snap` was read, used when first in line.
    /// A wait parked by the last call on this snapshot ([`Parked`]) goes on with its watch and
    /// its recheck time; one that reaches `end` is parked in `state` for the next call.
    async fn wait_in_line(
        &self,
        state: &mut HolderState,
        snap: Snapshot,
        end: Instant,
        opened: Option<WatchStream>,
    ) -> Result<Wake, SlotError> {
        let ahead = snap.ahead.as_ref().map(|(key, _)| key.clone());
        let parked = state
            .parked
            .take()
            .filter(|p| p.revision == snap.revision && p.ahead == ahead);
        let max_changed = self.max_changed.notified();
        tokio::pin!(max_changed);
        // Registered before comparing, so a `set_max` in between is not missed.
        max_changed.as_mut().enable();
        if state.seen_max != self.max.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Wake::Changed);
        }
        let Some(mut lease) = state.lease.as_ref().map(|l| l.subscribe()) else {
            return Ok(Wake::Recheck);
        };
        let (mut watch, recheck_at) = match parked {
            Some(p) => (p.watch, p.recheck_at),
            None => (
                opened.filter(|_| ahead.is_none()),
                Instant::now() + with_jitter(recheck_after(ahead.as_deref())),
            ),
        };
        let max = snap.limit.map_or(state.seen_max, |l| l.max);
        let mut snap = snap;
        let watched = async {
            match &ahead {
                Some(key) => self.watch_ahead(&mut watch, key, snap.revision + 1).await,
                None => self.watch_slots(&mut watch, &mut snap, max).await,
            }
        };
        let waited = Instant::now();
        let wake = tokio::select! {
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
            _ = sleep_until(recheck_at) => Ok(Wake::Recheck),
            _ = sleep_until(end) => Ok(Wake::Deadline),
        };
        let woke = match &wake {
            Ok(Wake::Freed(())) => "a slot freed",
            Ok(Wake::AheadGone) => "the key ahead gone",
            Ok(Wake::Changed) => "a change to read",
            Ok(Wake::Recheck) => "a recheck",
            Ok(Wake::Deadline) => "the deadline",
            Err(_) => "an error",
        };
        tracing::debug!(group = %self.group, waited = ?waited.elapsed(), ahead = ?ahead,
            "slot queue: woke on {woke}");
        match wake {
            Ok(Wake::Freed(())) => Ok(Wake::Freed(snap)),
            Ok(Wake::Deadline) => {
                park(state, snap, watch, Some(recheck_at));
                Ok(Wake::Deadline)
            }
            Ok(Wake::Changed) => Ok(Wake::Changed),
            Ok(Wake::AheadGone) => Ok(Wake::AheadGone),
            Ok(Wake::Recheck) => Ok(Wake::Recheck),
            Err(err) => Err(err),
        }
    }

    /// The wait parked in `state` by the last call, when this holder still waits in line on it
    /// (the same queue key, its lease alive): its place and the group as its watch last saw it.
    /// The parked watch stays in `state` for [`Self::wait_in_line`]; anything else drops it.
    fn unpark(&self, state: &mut HolderState) -> Option<(Queued, Snapshot)> {
        let parked = state.parked.as_mut()?;
        let alive = state
            .lease
            .as_ref()
            .is_some_and(|l| l.state() == crate::etcd::lease::LeaseState::Alive);
        let queued = state
            .queued
            .clone()
            .filter(|q| alive && q.key == parked.queue_key);
        match (queued, parked.snap.take()) {
            (Some(queued), Some(snap)) => Some((queued, snap)),
            _ => {
                state.parked = None;
                None
            }
        }
    }

    /// Returns at the first change of the key just ahead in line since `from` (its deletion: a
    /// queue key is written once). Opens the watch into `watch` unless a parked one is there.
    async fn watch_ahead(
        &self,
        watch: &mut Option<WatchStream>,
        key: &str,
        from: i64,
    ) -> Result<Wake<()>, SlotError> {
        let stream = match watch {
            Some(stream) => stream,
            None => {
                let options = WatchOptions::new().with_start_revision(from);
                watch.insert(self.client().await?.watch(key, Some(options)).await?)
            }
        };
        while let Some(resp) = stream.message().await? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Ok(Wake::Changed);
            }
            if !resp.events().is_empty() {
                return Ok(Wake::AheadGone);
            }
        }
        Ok(Wake::Recheck)
    }

    /// A watch of the group's slots from now on, once etcd confirmed it (`None` if it could not
    /// be opened: the wait then opens one from its read's revision). Opened before a read, it
    /// starts at the current revision, which etcd serves at once; a watch from an older revision
    /// is served by etcd's catch-up loop, which runs every 100 ms, so a release right after it
    /// was opened would reach the waiter up to 100 ms late.
    async fn open_slots_watch(&self) -> Option<WatchStream> {
        let prefix = group_prefix(&self.group);
        let options = WatchOptions::new().with_prefix();
        let opened = async {
            let mut stream = self.client().await?.watch(prefix, Some(options)).await?;
            let created = stream.message().await?.is_some_and(|resp| resp.created());
            Ok::<_, SlotError>(created.then_some(stream))
        };
        opened.await.ok().flatten()
    }

    /// First in line: follows the group's slots from `snap` on, applying each event to it, and
    /// returns at the first delete that leaves fewer than `max` holders (`snap` is then the group
    /// as of that event). Opens the watch into `watch` from the snapshot's next revision unless
    /// one is there: opened before the snapshot was read, or parked by the last call; its events
    /// up to the snapshot's revision are in the snapshot already and are skipped.
    async fn watch_slots(
        &self,
        watch: &mut Option<WatchStream>,
        snap: &mut Snapshot,
        max: u32,
    ) -> Result<Wake<()>, SlotError> {
        let prefix = group_prefix(&self.group);
        let stream = match watch {
            Some(stream) => stream,
            None => {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(snap.revision + 1);
                let opened = self
                    .client()
                    .await?
                    .watch(prefix.as_str(), Some(options))
                    .await?;
                watch.insert(opened)
            }
        };
        let read = snap.revision;
        while let Some(resp) = stream.message().await? {
            // A compacted start revision: the snapshot is stale anyway, so read again.
            if resp.canceled() || resp.compact_revision() > 0 {
                return Ok(Wake::Changed);
            }
            let news = resp
                .events()
                .iter()
                .filter(|e| e.kv().is_some_and(|kv| kv.mod_revision() > read));
            let freed = apply_events(snap, &prefix, news);
            if freed && snap.slots.len() < max as usize {
                return Ok(Wake::Freed(()));
            }
        }
        Ok(Wake::Recheck)
    }
}

/// Parks the wait of the holder in line in `state` at `snap` (the group as `watch`, if one is
/// open, last saw it) for the next call; a holder no longer in line parks nothing.
fn park(
    state: &mut HolderState,
    snap: Snapshot,
    watch: Option<WatchStream>,
    recheck_at: Option<Instant>,
) {
    let Some(queued) = &state.queued else {
        return;
    };
    let ahead = snap.ahead.as_ref().map(|(key, _)| key.clone());
    let recheck_at =
        recheck_at.unwrap_or_else(|| Instant::now() + with_jitter(recheck_after(ahead.as_deref())));
    state.parked = Some(Parked {
        queue_key: queued.key.clone(),
        revision: snap.revision,
        ahead,
        watch,
        recheck_at,
        snap: Some(snap),
    });
}

/// How long a waiter goes without looking again when nothing happened: behind `ahead`, or first
/// in line.
fn recheck_after(ahead: Option<&str>) -> Duration {
    match ahead {
        Some(_) => BEHIND_RECHECK,
        None => RETRY_AFTER,
    }
}

/// Applies watch events on the group's prefix to `snap` (a nested group's keys are not its own):
/// puts replace or add a slot, deletes remove it, and the snapshot's revision becomes the last
/// event's. All events of one revision arrive in one response, in revision order, so after a
/// response the slots are exactly those at that revision. Whether a slot was deleted.
pub(super) fn apply_events<'a>(
    snap: &mut Snapshot,
    prefix: &str,
    events: impl IntoIterator<Item = &'a etcd_client::Event>,
) -> bool {
    let mut freed = false;
    for event in events {
        let Some(kv) = event.kv() else { continue };
        snap.revision = snap.revision.max(kv.mod_revision());
        match event.event_type() {
            EventType::Put => {
                if let Some(entry) = SlotEntry::from_kv(kv, prefix) {
                    match snap.slots.iter_mut().find(|s| s.key == entry.key) {
                        Some(slot) => *slot = entry,
                        None => snap.slots.push(entry),
                    }
                }
            }
            EventType::Delete => {
                let before = snap.slots.len();
                snap.slots.retain(|s| s.key.as_bytes() != kv.key());
                freed |= snap.slots.len() < before;
            }
        }
    }
    freed
}
