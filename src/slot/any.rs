//! The slot backend the configuration asks for, as one type (enum dispatch).

use std::time::Duration;

use super::halt::HaltMarker;
use super::{
    Acquisition, DryRunSlots, EtcdSlots, FleetLockSlots, Holding, MemorySlots, RETRY_AFTER,
    SlotError, SlotLock,
};

/// Any of the slot backends.
pub enum AnySlots {
    /// Boxed: an etcd client is large next to the others.
    Etcd(Box<EtcdSlots>),
    FleetLock(FleetLockSlots),
    /// In-process (tests; `slot.backend = "none"` takes a slot no one else sees).
    Memory(MemorySlots),
    /// `--dry-run`: prints what it would take.
    DryRun(DryRunSlots),
}

impl AnySlots {
    /// The group's rollout the slots apply (etcd slots only): the failure budget is its.
    pub fn rollout(&self) -> Option<&std::sync::Arc<crate::rollout::agent::RolloutAgent>> {
        match self {
            AnySlots::Etcd(slots) => slots.rollout(),
            _ => None,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $slots:ident => $call:expr) => {
        match $self {
            AnySlots::Etcd($slots) => $call,
            AnySlots::FleetLock($slots) => $call,
            AnySlots::Memory($slots) => $call,
            AnySlots::DryRun($slots) => $call,
        }
    };
}

impl SlotLock for AnySlots {
    async fn acquire(&self, version: &str) -> Result<Acquisition, SlotError> {
        dispatch!(self, s => s.acquire(version).await)
    }

    async fn release(&self) -> Result<(), SlotError> {
        dispatch!(self, s => s.release().await)
    }

    async fn release_stale(&self) -> Result<Vec<String>, SlotError> {
        dispatch!(self, s => s.release_stale().await)
    }

    async fn held(&self) -> Result<Holding, SlotError> {
        dispatch!(self, s => s.held().await)
    }

    async fn halt(&self, version: &str, reason: &str) -> Result<(), SlotError> {
        dispatch!(self, s => s.halt(version, reason).await)
    }

    async fn resume(&self) -> Result<(), SlotError> {
        dispatch!(self, s => s.resume().await)
    }

    async fn halted(&self) -> Result<Option<HaltMarker>, SlotError> {
        dispatch!(self, s => s.halted().await)
    }

    async fn wait_for_change(&self, timeout: Duration) {
        dispatch!(self, s => s.wait_for_change(timeout).await)
    }

    /// The etcd backend's own wait (its queue); the others keep the trait's default.
    async fn acquire_within(
        &self,
        version: &str,
        deadline: Duration,
    ) -> Result<Acquisition, SlotError> {
        dispatch!(self, s => s.acquire_within(version, deadline).await)
    }
}

impl AnySlots {
    /// The daemon's slot step ([`crate::agent::machine::swap::SwapAction::AcquireSlot`]): one
    /// answer per call, at least every [`RETRY_AFTER`] (plus jitter), so the swap shows why it
    /// waits. etcd waits in its group's queue: the first call joins the line and answers at
    /// once, a `retry` waits in line for up to [`RETRY_AFTER`], and a busy answer keeps the
    /// place for the next call (a release gives it up). The other backends have no line: a
    /// `retry` waits for a change, then asks once. `gated`: the rollout's slot gate applies
    /// (etcd only); false when a swap takes back the slot it held (recovery, a lost fence).
    /// `away`: a rollback after a failure inside `rollout.monitor` leaves `version`, so a halt on
    /// `version` does not refuse it (the other backends' halts are kept the same way: FleetLock's
    /// local record, memory's marker).
    pub async fn acquire_in_line(
        &self,
        version: &str,
        retry: bool,
        gated: bool,
        away: bool,
    ) -> Result<Acquisition, SlotError> {
        let wait = if retry { RETRY_AFTER } else { Duration::ZERO };
        match self {
            AnySlots::Etcd(slots) if gated => slots.acquire_within(version, wait).await,
            AnySlots::Etcd(slots) => slots.acquire_within_ungated(version, wait, away).await,
            others => {
                if retry {
                    others.wait_for_change(wait).await;
                }
                match others {
                    AnySlots::Memory(slots) if away => slots.acquire_away(version).await,
                    AnySlots::FleetLock(slots) if away => slots.acquire_away(version).await,
                    others => others.acquire(version).await,
                }
            }
        }
    }
}
