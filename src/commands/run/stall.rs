//! TEST-ONLY, compiled into debug builds alone (`#[cfg(debug_assertions)]` on the module):
//! release and image builds have no such hook.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

/// How long the test-only stall blocks the loop: far longer than any watchdog period.
const STALL: Duration = Duration::from_secs(3600);

/// TEST-ONLY hook, compiled into debug builds alone (release and image builds have none): on
/// SIGUSR2 the runtime's one thread sleeps, blocking the driver's loop as a stuck loop would, so
/// a test can watch systemd's watchdog restart the unit.
pub(super) fn on_sigusr2() -> anyhow::Result<()> {
    let mut stall = signal(SignalKind::user_defined2()).context("failed to handle SIGUSR2")?;
    tokio::spawn(async move {
        if stall.recv().await.is_some() {
            tracing::warn!("SIGUSR2 (test hook of debug builds): blocking the loop's thread");
            std::thread::sleep(STALL);
        }
    });
    Ok(())
}
