//! The agent: a pure state machine that decides ([`state`]) and the tokio loop that observes the
//! unit and the probe and carries the decisions out through the seams ([`driver`]).

pub mod cycle;
pub mod driver;
pub mod execute;
pub mod journal;
pub mod poll;
pub mod state;
pub mod swap;
pub mod swap_metrics;

pub use driver::{Driver, DriverOptions, DriverReport, Reconfigure, RecordOptions, Seams};
pub use state::{Action, Agent, HealthRules, Observation, Phase};
