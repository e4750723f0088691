//! The driver's tests over in-memory seams, and the one fixture they share: a driver for
//! instance `web-1` of `web@1.service`, probing every 10 ms.

use std::num::NonZeroU32;

use super::*;
use crate::agent::machine::swap::Stage;
use crate::health::HealthStreak;
use crate::registry::{MemoryRegistry, Published};
use crate::systemd::{ActiveState, MemoryUnits, UnitManager};

mod asks;
mod reload;
mod repository;
mod status;
mod swaps;

/// An agent judging health with `rise` and `fall`; `unchecked` when no check is configured.
fn agent(rise: u32, fall: u32, unchecked: bool) -> Agent {
    let n = |v| NonZeroU32::new(v).unwrap();
    Agent::new(HealthStreak::new(n(rise), n(fall)), unchecked)
}

/// The loop's options for `web-1` registering `entries`, with no metrics and no record.
fn options(entries: Vec<Entry>) -> DriverOptions {
    DriverOptions {
        entries,
        interval: Duration::from_millis(10),
        instance: "web-1".into(),
        unit_name: "web@1.service".into(),
        once: false,
        metrics: None,
        record: None,
    }
}

/// A driver over `registry`, `probe`, the unit `units` follows and `updates`.
fn driver<P: Probe, C: UnitControl + 'static>(
    agent: Agent,
    registry: MemoryRegistry,
    probe: P,
    units: &MemoryUnits,
    updates: Option<UpdatePass<C>>,
    options: DriverOptions,
) -> Driver<MemoryRegistry, P, C> {
    let seams = Seams {
        registry,
        probe,
        unit: units.unit_state(),
        updates,
    };
    Driver::new(agent, seams, options)
}
