//! Partitions inside the etcd cluster and a host's clock an hour ahead (issue 19 part 2, cases 4,
//! 5 and 6): the rollout fleet of `tests/rollout/` (the systemd container with Docker, the local
//! registry, Traefik, the example update service, four app units and four `sidekick run`
//! processes, load through Traefik) on a 3-member etcd whose members reach each other only through cuttable gates
//! (`tests/support/peer_links.rs`), each sidekick configured with all three members, each path
//! from a sidekick to a member behind its own cuttable proxy (`tests/support/blackhole.rs`); and
//! one sidekick under libfaketime. Its own binary, so the test command runs it beside the slow
//! safety suite.

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
#[allow(dead_code)]
mod unit_watch;

/// Shared steps: waiting for a rollout, the invariant checks (`tests/safety/common.rs`).
#[path = "safety/common.rs"]
#[allow(dead_code)]
mod common;

/// The leader isolated then killed mid-rollout, a minority member cut off
/// (`tests/etcd_partition/cluster.rs`).
#[path = "etcd_partition/cluster.rs"]
mod cluster;

/// One host's wall clock an hour ahead (`tests/etcd_partition/clock.rs`).
#[path = "etcd_partition/clock.rs"]
mod clock;
