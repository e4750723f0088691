//! An in-process slot group with the etcd backend's rules, for unit tests of the agent and for
//! `run --dry-run` without etcd.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::halt::HaltMarker;
use super::{Acquisition, Holding, SlotError, SlotHolder, SlotLock, SlotValue, with_jitter};

#[derive(Debug)]
struct Group {
    max: u32,
    holders: BTreeMap<String, SlotValue>,
    halt: Option<HaltMarker>,
    /// Slots released and halts lifted so far: etcd's deletes, which wake a waiter.
    deletes: u64,
    /// Which handle's life took each holder's slot (etcd: the lease it is bound to).
    lives: BTreeMap<String, u64>,
    /// The last life handed out.
    last_life: u64,
    /// Stale releases still to fail (a test's fault: etcd unreachable for that long).
    failing_stale_releases: u32,
    /// Stale releases asked for so far, failed ones included.
    stale_releases: u32,
}

/// One holder's view of a shared in-memory group; [`MemorySlots::join`] adds another holder.
#[derive(Debug, Clone)]
pub struct MemorySlots {
    group: Arc<Mutex<Group>>,
    changed: Arc<Notify>,
    who: SlotHolder,
    /// The group's deletes when this holder last read it (at an acquire): as etcd's waiter
    /// watches from the revision it last read, a release since then is not missed.
    seen: Arc<AtomicU64>,
    /// This handle's life: a daemon run, as etcd's lease is. A slot its holder id holds from
    /// another life was left by an earlier run ([`SlotLock::release_stale`]).
    life: u64,
}

impl MemorySlots {
    /// A new group allowing `max` holders, seen by `who`.
    pub fn new(max: NonZeroU32, who: SlotHolder) -> MemorySlots {
        let group = Group {
            max: max.get(),
            holders: BTreeMap::new(),
            halt: None,
            deletes: 0,
            lives: BTreeMap::new(),
            last_life: 1,
            failing_stale_releases: 0,
            stale_releases: 0,
        };
        MemorySlots {
            group: Arc::new(Mutex::new(group)),
            changed: Arc::new(Notify::new()),
            who,
            seen: Arc::new(AtomicU64::new(0)),
            life: 1,
        }
    }

    /// Another holder in the same group (or the same holder id in another life: a later run).
    pub fn join(&self, who: SlotHolder) -> MemorySlots {
        let life = {
            let mut group = self.lock();
            group.last_life += 1;
            group.last_life
        };
        MemorySlots {
            who,
            seen: Arc::new(AtomicU64::new(0)),
            life,
            ..self.clone()
        }
    }

    /// Makes the next `count` stale releases (of any holder) fail as an unreachable etcd does.
    pub fn fail_stale_releases(&self, count: u32) {
        self.lock().failing_stale_releases = count;
    }

    /// Stale releases asked for so far, failed ones included.
    pub fn stale_releases(&self) -> u32 {
        self.lock().stale_releases
    }

    /// Changes the group's limit; waiters retry.
    pub fn set_max(&self, max: NonZeroU32) {
        self.lock().max = max.get();
        self.changed.notify_waiters();
    }

    /// Holder ids currently holding, sorted.
    pub fn holders(&self) -> Vec<String> {
        self.lock().holders.keys().cloned().collect()
    }

    /// [`SlotLock::acquire`] for a rollback leaving `version` after a monitor failure: a halt on
    /// `version` does not refuse it (see `AnySlots::acquire_in_line`); the limit applies.
    pub async fn acquire_away(&self, version: &str) -> Result<Acquisition, SlotError> {
        Ok(self.take(version, true))
    }

    /// One acquire, etcd's rules; `away` passes a halt on `version` (see [`Self::acquire_away`]).
    fn take(&self, version: &str, away: bool) -> Acquisition {
        // etcd's order (`slot::etcd::acquire`): a slot of ours is kept, also in a halted group;
        // then the halt; then the limit.
        let mut group = self.lock();
        self.seen.store(group.deletes, Ordering::SeqCst);
        if group.holders.contains_key(&self.who.holder) {
            // Ours, maybe from an earlier life: re-bound to this one, as etcd re-binds the lease.
            group.lives.insert(self.who.holder.clone(), self.life);
            return Acquisition::Acquired;
        }
        if let Some(h) = group
            .halt
            .as_ref()
            .filter(|h| !(away && h.version == version))
        {
            return Acquisition::Halted {
                version: h.version.clone(),
                reason: h.reason.clone(),
            };
        }
        if group.holders.len() >= group.max as usize {
            return Acquisition::Busy {
                detail: format!("{} of {} slots held", group.holders.len(), group.max),
            };
        }
        let value = SlotValue {
            holder: self.who.holder.clone(),
            instance: self.who.instance.clone(),
            version: version.to_string(),
            since: super::now_rfc3339(),
            host: None,
        };
        group.holders.insert(self.who.holder.clone(), value);
        group.lives.insert(self.who.holder.clone(), self.life);
        Acquisition::Acquired
    }

    fn lock(&self) -> MutexGuard<'_, Group> {
        // A panic elsewhere cannot leave the map half-updated: every change is one insert/remove.
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SlotLock for MemorySlots {
    async fn acquire(&self, version: &str) -> Result<Acquisition, SlotError> {
        Ok(self.take(version, false))
    }

    async fn release(&self) -> Result<(), SlotError> {
        let mut group = self.lock();
        if group.holders.remove(&self.who.holder).is_some() {
            group.lives.remove(&self.who.holder);
            group.deletes += 1;
        }
        drop(group);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn release_stale(&self) -> Result<Vec<String>, SlotError> {
        // etcd's rule: this holder id's slot bound to a lease that is not this run's.
        let mut group = self.lock();
        group.stale_releases += 1;
        if group.failing_stale_releases > 0 {
            group.failing_stale_releases -= 1;
            return Err(SlotError::Connect(
                "etcd unreachable (a test's fault)".into(),
            ));
        }
        let holder = &self.who.holder;
        let stale = group.holders.contains_key(holder)
            && group
                .lives
                .get(holder)
                .is_some_and(|life| *life != self.life);
        if !stale {
            return Ok(Vec::new());
        }
        group.holders.remove(holder);
        group.lives.remove(holder);
        group.deletes += 1;
        drop(group);
        self.changed.notify_waiters();
        Ok(vec![format!("{holder} (left by an earlier run)")])
    }

    async fn held(&self) -> Result<Holding, SlotError> {
        Ok(match self.lock().holders.contains_key(&self.who.holder) {
            true => Holding::Held,
            false => Holding::NotHeld,
        })
    }

    async fn halt(&self, version: &str, reason: &str) -> Result<(), SlotError> {
        let mut group = self.lock();
        if group.halt.is_none() {
            group.halt = Some(HaltMarker {
                version: version.to_string(),
                reason: reason.to_string(),
                instance: self.who.instance.clone(),
                since: super::now_rfc3339(),
            });
        }
        Ok(())
    }

    async fn resume(&self) -> Result<(), SlotError> {
        let mut group = self.lock();
        if group.halt.take().is_some() {
            group.deletes += 1;
        }
        drop(group);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn halted(&self) -> Result<Option<HaltMarker>, SlotError> {
        Ok(self.lock().halt.clone())
    }

    async fn wait_for_change(&self, timeout: Duration) {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        // Registered before comparing, so a release in between is not missed.
        changed.as_mut().enable();
        if self.lock().deletes > self.seen.load(Ordering::SeqCst) {
            return;
        }
        let _ = tokio::time::timeout(with_jitter(timeout), changed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str) -> SlotHolder {
        SlotHolder {
            holder: id.into(),
            instance: format!("web-{id}"),
        }
    }

    fn one() -> NonZeroU32 {
        NonZeroU32::MIN
    }

    #[tokio::test]
    async fn second_holder_is_busy_until_the_first_releases() {
        let a = MemorySlots::new(one(), who("a"));
        let b = a.join(who("b"));
        assert_eq!(a.acquire("2").await.unwrap(), Acquisition::Acquired);
        assert_eq!(a.acquire("2").await.unwrap(), Acquisition::Acquired);
        assert!(matches!(
            b.acquire("2").await.unwrap(),
            Acquisition::Busy { .. }
        ));
        b.release().await.unwrap();
        assert_eq!(a.holders(), ["a"]);
        a.release().await.unwrap();
        assert_eq!(b.acquire("2").await.unwrap(), Acquisition::Acquired);
        assert_eq!(b.held().await.unwrap(), Holding::Held);
        assert_eq!(a.held().await.unwrap(), Holding::NotHeld);
    }

    #[tokio::test]
    async fn halt_blocks_acquire_until_resume() {
        let a = MemorySlots::new(one(), who("a"));
        a.halt("3.0.0", "unhealthy").await.unwrap();
        assert_eq!(
            a.acquire("3.0.0").await.unwrap(),
            Acquisition::Halted {
                version: "3.0.0".into(),
                reason: "unhealthy".into()
            }
        );
        a.resume().await.unwrap();
        assert_eq!(a.acquire("3.0.0").await.unwrap(), Acquisition::Acquired);
    }

    #[tokio::test]
    async fn a_monitor_rollback_passes_the_halt_on_the_version_it_leaves_and_no_other() {
        let a = MemorySlots::new(one(), who("a"));
        let b = a.join(who("b"));
        a.halt("2", "failed during monitor").await.unwrap();
        assert!(matches!(
            a.acquire_away("3").await.unwrap(),
            Acquisition::Halted { .. }
        ));
        assert_eq!(a.acquire_away("2").await.unwrap(), Acquisition::Acquired);
        // The limit applies to it; a newcomer still meets the halt.
        assert!(matches!(
            b.acquire_away("2").await.unwrap(),
            Acquisition::Busy { .. }
        ));
        a.release().await.unwrap();
        assert!(matches!(
            b.acquire("2").await.unwrap(),
            Acquisition::Halted { .. }
        ));
    }

    #[tokio::test]
    async fn a_slot_already_held_is_kept_in_a_halted_group_as_etcd_keeps_it() {
        // etcd's rule: the holder's own slot is found before the halt is read; a newcomer meets
        // the halt before the limit.
        let a = MemorySlots::new(one(), who("a"));
        let b = a.join(who("b"));
        assert_eq!(a.acquire("2").await.unwrap(), Acquisition::Acquired);
        b.halt("2", "failed verification").await.unwrap();
        assert_eq!(a.acquire("2").await.unwrap(), Acquisition::Acquired);
        assert_eq!(a.held().await.unwrap(), Holding::Held);
        // The group is full and halted: the halt is what a newcomer is told.
        assert!(matches!(
            b.acquire("2").await.unwrap(),
            Acquisition::Halted { .. }
        ));
    }

    #[tokio::test]
    async fn a_release_since_the_last_attempt_wakes_the_wait_at_once_as_etcds_watch_does() {
        let a = MemorySlots::new(one(), who("a"));
        let b = a.join(who("b"));
        a.acquire("2").await.unwrap();
        assert!(matches!(
            b.acquire("2").await.unwrap(),
            Acquisition::Busy { .. }
        ));
        // Released before b starts waiting: etcd's watch from b's last read revision sees it.
        a.release().await.unwrap();
        let started = std::time::Instant::now();
        b.wait_for_change(Duration::from_secs(30)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(b.acquire("2").await.unwrap(), Acquisition::Acquired);
    }

    #[tokio::test]
    async fn release_stale_frees_only_a_slot_this_holder_id_took_in_an_earlier_life() {
        let earlier = MemorySlots::new(one(), who("a"));
        earlier.acquire("2").await.unwrap();
        let other = earlier.join(who("b"));
        assert!(other.release_stale().await.unwrap().is_empty(), "not b's");
        let later = earlier.join(who("a"));
        assert_eq!(later.release_stale().await.unwrap().len(), 1);
        assert!(later.holders().is_empty());
        // A slot taken in this life is this run's own, not stale.
        later.acquire("2").await.unwrap();
        assert!(later.release_stale().await.unwrap().is_empty());
        assert_eq!(later.holders(), ["a"]);
    }

    #[tokio::test]
    async fn a_waiter_acquires_within_its_deadline_after_a_release() {
        let a = MemorySlots::new(one(), who("a"));
        let b = a.join(who("b"));
        a.acquire("2").await.unwrap();
        let waiter =
            tokio::spawn(async move { b.acquire_within("2", Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        a.release().await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), Acquisition::Acquired);
    }
}
