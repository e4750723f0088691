//! Safety end to end (issue 16, "End to end"; issue 19 part 2, cases 1 to 3): the rollout fleet of
//! `tests/rollout/` (etcd, the systemd container with Docker, the local registry, Traefik, the
//! example update service, three app units and three `sidekick run` processes, load through
//! Traefik) with faults: the slot holder SIGKILLed at each visible step and kept down past its
//! slot's TTL, SIGTERM and SIGKILL right after a failed verification, the slot holder cut from
//! etcd mid-drain and mid-verify (also with `slot.max = 2`), an app host cut from etcd. Besides the requests, every case watches systemd's own view of the app
//! units (no more than `slot.max` restarting or not active at once, no restart without a slot).

mod support;

/// The load, the routing timeout, what the fleet needs and the binary (`tests/rollout/harness.rs`).
#[path = "rollout/harness.rs"]
mod harness;
pub use harness::{MIN_RATE, RATE, ROUTE_TIMEOUT, needs, sidekick_binary};

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;

#[path = "rollout/fleet.rs"]
mod fleet;
#[path = "rollout/load.rs"]
mod load;
#[path = "rollout/quadlet.rs"]
mod quadlet;
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

/// What the dying-version and halt cases watch and check.
#[path = "safety/dying.rs"]
mod dying;

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

/// A version that dies inside `rollout.monitor`, after its 3/1 and release
/// (`tests/safety/monitor_failure.rs`).
#[path = "safety/monitor_failure.rs"]
mod monitor_failure;

/// The slot holder cut from etcd mid-drain and mid-verify (`tests/safety/partition.rs`).
#[path = "safety/partition.rs"]
mod partition;

/// An app host cut from etcd before a rollout (`tests/safety/partition_host.rs`).
#[path = "safety/partition_host.rs"]
mod partition_host;
