//! The pure decider: no tokio, no clock, no I/O, so every rule is tested table-driven and a whole
//! group can be simulated. [`state`] decides registration and hands a swap to [`swap`];
//! [`recover`] decides what a start does with a journaled swap.

pub mod recover;
pub mod state;
pub mod swap;

#[cfg(test)]
pub(crate) mod fixtures;

pub use recover::recover;
