//! The update side, through the seams (the update source, the slots, the unit's control): the
//! check [`policy`], the one update [`pass`] the driver runs beside its loop, the swap's slow
//! [`steps`], the [`journal`] file and the [`denylist`]. Nothing here decides the swap's order:
//! that is [`crate::agent::machine`].

pub mod denylist;
pub mod journal;
pub mod pass;
pub mod policy;

pub mod steps;
pub mod version_rules;

pub use denylist::Denylist;
pub use journal::Journal;
pub use pass::UpdateReload;
pub use pass::{SwapConfig, UpdatePass};
pub use steps::StepSettings;

#[cfg(test)]
pub(crate) mod fixtures;
