//! Update slots: at most `slot.max` instances of a group update at once.
//!
//! Three backends sit behind the [`SlotLock`] seam:
//! - [`etcd::EtcdSlots`]: a lease-bound semaphore. Slot `n` of a group is the key
//!   `/sidekick/slots/<group>/<n>` (`n < max`), created by a transaction on `create_revision == 0`
//!   and bound to the holder's own lease, so a dead holder frees its slot within one TTL.
//! - [`fleetlock::FleetLockSlots`]: a client of an airlock-compatible FleetLock server
//!   (<https://coreos.github.io/zincati/development/fleetlock/protocol/>).
//! - [`memory::MemorySlots`]: in-process, for unit tests; [`dry_run::DryRunSlots`] prints what
//!   `--dry-run` would take.
//!
//! A failed update halts its group with a marker ([`halt`]) that blocks every acquire until an
//! operator runs `sidekick slots resume`. Acquire and release are idempotent for one holder id,
//! and "release whatever this instance still holds" is one call, [`SlotLock::release_stale`].

pub mod any;
pub mod dry_run;
pub mod etcd;
pub mod fleetlock;
pub mod group_name;
pub mod halt;
pub mod keys;
pub mod lease;
pub mod ledger;
pub mod limit;
pub mod memory;
pub mod options;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use any::AnySlots;
pub use dry_run::DryRunSlots;
pub use etcd::EtcdSlots;
pub use fleetlock::FleetLockSlots;
pub use memory::MemorySlots;
pub use options::{SlotBackend, SlotOptions};

/// Who asks for a slot: the holder id (the instance's app-specific machine id) and the
/// human-readable instance name shown by `sidekick status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHolder {
    pub holder: String,
    pub instance: String,
}

/// The outcome of one acquire attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquisition {
    /// This holder holds a slot now (newly taken, or already held).
    Acquired,
    /// Every slot is taken, or the server refused; `detail` says why, for the log.
    Busy { detail: String },
    /// The group is halted by a failed update; nothing is granted until `slots resume`.
    Halted { version: String, reason: String },
}

/// What this holder knows about its own slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// No slot held.
    NotHeld,
    /// A slot is held and its lease is known to be alive.
    Held,
    /// A slot was held but may now be free for others: the lease expired or could not be kept
    /// alive within its TTL, or the key was removed. The swap must not rely on it.
    Lost { reason: String },
}

/// Why a slot operation failed (as opposed to being refused).
#[derive(Debug, Error)]
pub enum SlotError {
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("cannot reach etcd: {0}")]
    Connect(String),
    #[error("malformed value at {key}: {source}")]
    Malformed {
        key: String,
        source: serde_json::Error,
    },
    #[error("FleetLock request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("FleetLock server refused {url}: HTTP {status}: {kind}: {value}")]
    Refused {
        url: String,
        status: u16,
        kind: String,
        value: String,
    },
    #[error("invalid FleetLock base URL {url}: {source}")]
    Url {
        url: String,
        source: url::ParseError,
    },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("FleetLock group `{0}` must match ^[a-zA-Z0-9.-]+$")]
    Group(String),
    #[error("failed to access {}: {source}", path.display())]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl SlotError {
    /// A stable short name for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            SlotError::Etcd(_) => "etcd",
            SlotError::Connect(_) => "connect",
            SlotError::Malformed { .. } => "malformed",
            SlotError::Http { .. } => "http",
            SlotError::Refused { .. } => "refused",
            SlotError::Url { .. } => "url",
            SlotError::Unsupported(_) => "unsupported",
            SlotError::Group(_) => "group",
            SlotError::State { .. } => "state",
        }
    }
}

/// The value of a slot key, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotValue {
    pub holder: String,
    pub instance: String,
    /// The version this holder is updating to.
    pub version: String,
    /// When the slot was taken, RFC 3339.
    pub since: String,
    /// The host the holder runs on; absent in values written by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<SlotHost>,
}

/// Which running host holds a slot: two machines cloned with one `/etc/machine-id` compute the
/// same holder id, but not the same hostname and boot id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHost {
    pub hostname: String,
    pub boot_id: String,
}

impl SlotHost {
    /// This host, from `/proc` (empty fields where it cannot be read).
    pub fn this() -> SlotHost {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        SlotHost {
            hostname: read("/proc/sys/kernel/hostname"),
            boot_id: read(crate::identity::BOOT_ID_PATH),
        }
    }
}

impl std::fmt::Display for SlotHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (boot {})", self.hostname, self.boot_id)
    }
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The seam the swap uses: take a slot before deregistering, give it back when done.
pub trait SlotLock {
    /// One attempt to take a slot for an update to `version`; never waits for a free one.
    fn acquire(&self, version: &str)
    -> impl Future<Output = Result<Acquisition, SlotError>> + Send;

    /// Gives back this holder's slot; succeeds when none is held.
    fn release(&self) -> impl Future<Output = Result<(), SlotError>> + Send;

    /// On daemon start, once the instance is healthy and no swap is in flight: releases any slot
    /// this holder id still holds from an earlier run on this host (never a clone's slot on
    /// another host); names each slot it released, for the log.
    fn release_stale(&self) -> impl Future<Output = Result<Vec<String>, SlotError>> + Send;

    /// Whether this holder holds a slot, checked against the backend where it can be.
    fn held(&self) -> impl Future<Output = Result<Holding, SlotError>> + Send;

    /// Halts the group: acquire reports [`Acquisition::Halted`] until [`SlotLock::resume`].
    fn halt(
        &self,
        version: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), SlotError>> + Send;

    /// Lifts a halt of the group; succeeds when there is none.
    fn resume(&self) -> impl Future<Output = Result<(), SlotError>> + Send;

    /// The group's halt, if it is halted (as far as this backend can tell).
    fn halted(&self) -> impl Future<Output = Result<Option<halt::HaltMarker>, SlotError>> + Send;

    /// Waits until a slot may have come free (a release, a resume) or `timeout` plus jitter
    /// passes, whichever comes first. Call between [`SlotLock::acquire`] attempts.
    fn wait_for_change(&self, timeout: Duration) -> impl Future<Output = ()> + Send;

    /// Acquires, waiting between attempts, until acquired, halted, or `deadline` passes (then
    /// the last `Busy`).
    fn acquire_within(
        &self,
        version: &str,
        deadline: Duration,
    ) -> impl Future<Output = Result<Acquisition, SlotError>> + Send
    where
        Self: Sync,
    {
        async move {
            let end = tokio::time::Instant::now() + deadline;
            loop {
                let outcome = self.acquire(version).await?;
                let left = end.saturating_duration_since(tokio::time::Instant::now());
                if !matches!(outcome, Acquisition::Busy { .. }) || left.is_zero() {
                    return Ok(outcome);
                }
                self.wait_for_change(left.min(RETRY_AFTER)).await;
            }
        }
    }
}

/// A waiter retries at least this often even when no change was seen.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// `timeout` plus up to 10% random jitter, so waiters that time out together spread out.
pub fn with_jitter(timeout: Duration) -> Duration {
    let extra = timeout.as_millis() as u64 / 10;
    timeout + Duration::from_millis(fastrand::u64(0..=extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(11));
        }
    }

    #[test]
    fn slot_value_round_trips_with_the_documented_field_names() {
        let v = SlotValue {
            holder: "abc".into(),
            instance: "web-1".into(),
            version: "2.0.0".into(),
            since: "2026-01-01T00:00:00Z".into(),
            host: Some(SlotHost {
                hostname: "node-a".into(),
                boot_id: "b0".into(),
            }),
        };
        let json = serde_json::to_value(&v).unwrap();
        for field in ["holder", "instance", "version", "since", "host"] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert_eq!(serde_json::from_value::<SlotValue>(json).unwrap(), v);
    }

    #[test]
    fn a_value_without_host_from_an_older_version_still_reads() {
        let v: SlotValue = serde_json::from_str(
            r#"{"holder":"a","instance":"web-1","version":"2.0.0","since":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(v.host, None);
    }

    #[test]
    fn now_is_rfc3339() {
        let now = now_rfc3339();
        assert!(humantime::parse_rfc3339(&now).is_ok(), "{now}");
    }
}
