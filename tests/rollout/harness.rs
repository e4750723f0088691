//! What every fleet test binary (`tests/rollout.rs`, `tests/safety.rs`) shares: the load it
//! sends, how long Traefik may take to route, what the fleet needs from the machine, and the
//! sidekick binary under test.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{self, Need};

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

/// The `sidekick` binary cargo built for this test run.
pub fn sidekick_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sidekick"))
}
