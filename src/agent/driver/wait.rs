//! The futures the loop's `select!` waits on that may have nothing to wait for: each never
//! resolves when its slot is empty, so its arm simply stays quiet.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::agent::machine::swap::SwapObservation;
use crate::agent::update::steps::SlowStep;
use crate::health::Probe;

/// The output of the future in `slot`; never resolves when there is none.
pub(super) async fn run_some<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The slow step's answer; never resolves when none is in flight.
pub(super) async fn run_slow(slow: &mut Option<SlowStep>) -> Option<SwapObservation> {
    match slow {
        Some(step) => step.await,
        None => std::future::pending().await,
    }
}

/// The next reloaded settings; never resolves without a channel.
pub(super) async fn next_reload<T>(reloads: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match reloads {
        Some(reloads) => reloads.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never resolves for `None`.
pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until `at`, runs the probe once and logs a failure.
pub(super) async fn probe_at<P: Probe>(probe: &mut P, at: Instant, instance: &str) -> bool {
    tokio::time::sleep_until(at).await;
    match probe.check().await {
        Ok(()) => true,
        Err(err) => {
            warn!(instance = %instance, kind = err.kind(), "health check failed: {err}");
            false
        }
    }
}
