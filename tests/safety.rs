//! Safety end to end (issue 16, "End to end"; issue 19 part 2, case 1): the rollout fleet of
//! `tests/rollout/` (etcd, the systemd container with Docker, the local registry, Traefik, the
//! example update service, three app units and three `sidekick run` processes, load through
//! Traefik) with faults: the slot holder SIGKILLed at each visible step and kept down past its
//! slot's TTL, SIGTERM and SIGKILL right after a failed verification, and the slot holder cut
//! from etcd mid-drain. Besides the requests, every case watches systemd's own view of the app
//! units (no more than `slot.max` restarting or not active at once, no restart without a slot).

mod support;

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;

#[path = "rollout/fleet.rs"]
mod fleet;
#[path = "rollout/load.rs"]
mod load;
#[path = "rollout/rotation.rs"]
mod rotation;
#[path = "rollout/sidekick_process.rs"]
mod sidekick_process;
#[path = "rollout/traffic.rs"]
mod traffic;
#[path = "rollout/units.rs"]
mod units;
#[path = "rollout/update_service.rs"]
mod update_service;

/// Watching the app units from systemd and the checks on what was seen.
#[path = "safety/unit_watch.rs"]
mod unit_watch;

/// Shared steps: extra app versions, waiting for a rollout, the invariant checks.
#[path = "safety/common.rs"]
mod common;

/// The slot holder SIGKILLed at each visible step (`tests/safety/kill.rs`).
#[path = "safety/kill.rs"]
mod kill;

/// SIGTERM and SIGKILL right after a failed verification (`tests/safety/halt.rs`).
#[path = "safety/halt.rs"]
mod halt;

/// A version that dies during min-healthy, with and without `Restart=always`
/// (`tests/safety/late_failure.rs`).
#[path = "safety/late_failure.rs"]
mod late_failure;

/// The slot holder cut from etcd mid-drain (`tests/safety/partition.rs`).
#[path = "safety/partition.rs"]
mod partition;

use std::path::PathBuf;
use std::time::Duration;

use support::Need;

/// Requests per second through Traefik.
pub const RATE: u32 = 80;
/// The least the issue accepts.
pub const MIN_RATE: u64 = 50;
/// Traefik follows etcd with a provider throttle of about 2 s.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the fleet needs from the machine.
pub fn needs() -> Vec<Need> {
    [
        support::etcd::NEEDS,
        support::systemd::NEEDS,
        support::images::NEEDS,
        support::registry::NEEDS,
        support::traefik::NEEDS,
    ]
    .concat()
}

pub fn sidekick_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sidekick"))
}
