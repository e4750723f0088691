//! The agent, in three wings (map in `docs/architecture.md`):
//!
//! - [`machine`]: the pure decider, no tokio, clock or I/O: the instance's state and the swap's
//!   sub-machine, and what a start does with a journaled swap;
//! - [`update`]: the update side through the seams: the check policy, the one update pass, the
//!   swap's slow steps, the journal file and the denylist;
//! - [`driver`]: the tokio loop that observes the unit, the probe, signals and the slow steps,
//!   feeds the machine and carries its actions out.

pub mod driver;
pub mod machine;
#[cfg(test)]
mod sim;
pub mod update;

pub use driver::{Driver, DriverOptions, DriverReport, Reconfigure, RecordOptions, Seams};
pub use machine::state::{Action, Agent, HealthRules, Observation, Phase};
