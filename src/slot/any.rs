//! The slot backend the configuration asks for, as one type (enum dispatch).

use std::time::Duration;

use super::halt::HaltMarker;
use super::{
    Acquisition, DryRunSlots, EtcdSlots, FleetLockSlots, Holding, MemorySlots, SlotError, SlotLock,
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
}
