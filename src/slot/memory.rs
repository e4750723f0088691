//! An in-process slot group with the etcd backend's rules, for unit tests of the agent and for
//! `run --dry-run` without etcd.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
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
}

/// One holder's view of a shared in-memory group; [`MemorySlots::join`] adds another holder.
#[derive(Debug, Clone)]
pub struct MemorySlots {
    group: Arc<Mutex<Group>>,
    changed: Arc<Notify>,
    who: SlotHolder,
}

impl MemorySlots {
    /// A new group allowing `max` holders, seen by `who`.
    pub fn new(max: NonZeroU32, who: SlotHolder) -> MemorySlots {
        let group = Group {
            max: max.get(),
            holders: BTreeMap::new(),
            halt: None,
        };
        MemorySlots {
            group: Arc::new(Mutex::new(group)),
            changed: Arc::new(Notify::new()),
            who,
        }
    }

    /// Another holder in the same group.
    pub fn join(&self, who: SlotHolder) -> MemorySlots {
        MemorySlots {
            who,
            ..self.clone()
        }
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

    fn lock(&self) -> MutexGuard<'_, Group> {
        // A panic elsewhere cannot leave the map half-updated: every change is one insert/remove.
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SlotLock for MemorySlots {
    async fn acquire(&self, version: &str) -> Result<Acquisition, SlotError> {
        // etcd's order (`slot::etcd::acquire`): a slot of ours is kept, also in a halted group;
        // then the halt; then the limit.
        let mut group = self.lock();
        if group.holders.contains_key(&self.who.holder) {
            return Ok(Acquisition::Acquired);
        }
        if let Some(h) = &group.halt {
            return Ok(Acquisition::Halted {
                version: h.version.clone(),
                reason: h.reason.clone(),
            });
        }
        if group.holders.len() >= group.max as usize {
            return Ok(Acquisition::Busy {
                detail: format!("{} of {} slots held", group.holders.len(), group.max),
            });
        }
        let value = SlotValue {
            holder: self.who.holder.clone(),
            instance: self.who.instance.clone(),
            version: version.to_string(),
            since: super::now_rfc3339(),
            host: None,
        };
        group.holders.insert(self.who.holder.clone(), value);
        Ok(Acquisition::Acquired)
    }

    async fn release(&self) -> Result<(), SlotError> {
        self.lock().holders.remove(&self.who.holder);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn release_stale(&self) -> Result<Vec<String>, SlotError> {
        // An in-process group starts empty: no earlier run can have left a slot in it.
        Ok(Vec::new())
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
        self.lock().halt = None;
        self.changed.notify_waiters();
        Ok(())
    }

    async fn halted(&self) -> Result<Option<HaltMarker>, SlotError> {
        Ok(self.lock().halt.clone())
    }

    async fn wait_for_change(&self, timeout: Duration) {
        let _ = tokio::time::timeout(with_jitter(timeout), self.changed.notified()).await;
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
