//! The slot holder's lease, kept by the shared [`LeaseKeeper`] and seen as a [`Holding`]: the
//! holder gives up no later than etcd could expire the lease, so it never believes it holds a
//! slot that someone else may already have taken.

use crate::etcd::lease::{LeaseState, LeaseWatch};

use super::Holding;

pub use crate::etcd::lease::LeaseKeeper as SlotLease;

impl From<LeaseState> for Holding {
    fn from(state: LeaseState) -> Holding {
        match state {
            LeaseState::Alive => Holding::Held,
            LeaseState::Lost { reason } => Holding::Lost { reason },
        }
    }
}

/// Follows a held slot's lease: `Held` while it is renewed within its deadline, `Lost` from the
/// deadline on (checked on every read, not only when the keeper says so).
#[derive(Debug, Clone)]
pub struct HoldingWatch(LeaseWatch);

impl HoldingWatch {
    pub(super) fn new(watch: LeaseWatch) -> HoldingWatch {
        HoldingWatch(watch)
    }

    /// The state now.
    pub fn borrow(&self) -> Holding {
        self.0.state().into()
    }

    /// Waits for the next renewal (`Held`) or the loss (`Lost`), whichever comes first.
    pub async fn changed(&mut self) -> Holding {
        self.0.changed().await.into()
    }
}
