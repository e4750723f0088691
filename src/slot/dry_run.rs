//! The update slot of `--dry-run`: takes no slot anywhere and writes no halt marker; prints each
//! slot write the daemon would make and answers as an uncontended group would.

use std::num::NonZeroU32;
use std::time::Duration;

use super::halt::HaltMarker;
use super::{Acquisition, Holding, MemorySlots, SlotError, SlotHolder, SlotLock};
use crate::dry_run::would;

/// Prints slot writes; keeps what it would hold in memory so the cycle can go on.
pub struct DryRunSlots {
    group: String,
    who: SlotHolder,
    max: NonZeroU32,
    memory: MemorySlots,
}

impl DryRunSlots {
    /// Slots of `group` with the configured limit `max`, for `who`.
    pub fn new(group: String, max: NonZeroU32, who: SlotHolder) -> DryRunSlots {
        DryRunSlots {
            group,
            max,
            memory: MemorySlots::new(max, who.clone()),
            who,
        }
    }
}

impl SlotLock for DryRunSlots {
    async fn acquire(&self, version: &str) -> Result<Acquisition, SlotError> {
        let outcome = self.memory.acquire(version).await?;
        if outcome == Acquisition::Acquired {
            would(format_args!(
                "take an update slot of group {} (at most {} updating at once) to update to {version}",
                self.group, self.max
            ));
        }
        Ok(outcome)
    }

    async fn release(&self) -> Result<(), SlotError> {
        if self.memory.held().await? == Holding::Held {
            would(format_args!(
                "release the update slot of group {}",
                self.group
            ));
        }
        self.memory.release().await
    }

    async fn release_stale(&self) -> Result<Vec<String>, SlotError> {
        would(format_args!(
            "release any update slot of group {} that an earlier run of {} left on this host",
            self.group, self.who.instance
        ));
        Ok(Vec::new())
    }

    async fn held(&self) -> Result<Holding, SlotError> {
        self.memory.held().await
    }

    async fn halt(&self, version: &str, reason: &str) -> Result<(), SlotError> {
        would(format_args!(
            "halt group {} after {version} failed: {reason}",
            self.group
        ));
        self.memory.halt(version, reason).await
    }

    async fn resume(&self) -> Result<(), SlotError> {
        would(format_args!("resume group {}", self.group));
        self.memory.resume().await
    }

    async fn halted(&self) -> Result<Option<HaltMarker>, SlotError> {
        self.memory.halted().await
    }

    async fn wait_for_change(&self, timeout: Duration) {
        self.memory.wait_for_change(timeout).await
    }
}
