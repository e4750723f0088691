//! Stage three: validated settings with real types (built by `validate.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

pub use super::fragments::{CheckKind, Handoff, Layout};
// The clients' own options, composed here into `Settings`.
pub use crate::etcd::{ClientCert, EtcdAuth, EtcdOptions};
pub use crate::health::{HealthCheck, HealthSettings};
pub use crate::slot::{SlotBackend, SlotOptions};

/// Shortest registration lease and slot lease accepted; shorter TTLs churn etcd for no gain.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(5);
/// Shortest update poll period accepted.
pub const MIN_UPDATE_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the daemon needs, checked once at start. Commands that read less validate less:
/// [`StatusSettings`], [`SlotsSettings`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub instance: InstanceSettings,
    pub etcd: EtcdOptions,
    pub registration: RegistrationSettings,
    pub health: HealthSettings,
    pub update: UpdateSettings,
    pub slot: SlotOptions,
    pub swap: SwapSettings,
    pub daemon: DaemonSettings,
    pub rollout: crate::rollout::RolloutPolicy,
}

/// The one app instance this sidekick serves.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSettings {
    /// Full systemd unit name, e.g. `web@1.service`.
    pub unit: String,
    /// Instance name used in keys and events, e.g. `web-1`.
    pub name: String,
    /// Service name used in keys, e.g. `web`.
    pub service: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationSettings {
    pub enabled: bool,
    /// Where the registration's keys go.
    pub keys: RegistrationKeys,
    /// Announced address; `None` means discover it at start.
    pub host: Option<String>,
    pub port: u16,
    pub ttl: Duration,
}

/// The part of `[registration]` that says where registrations live in etcd: all a reader of
/// them (`sidekick status`) needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationKeys {
    pub layout: Layout,
    /// Key prefix with the layout's default filled in.
    pub prefix: String,
    pub domain: String,
    /// traefik: scheme of the server URL.
    pub scheme: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpdateSettings {
    pub enabled: bool,
    /// Omaha endpoint; `None` only when updates are disabled.
    pub server: Option<Url>,
    pub app_id: String,
    pub track: String,
    pub arch: String,
    pub interval: Duration,
    pub image: String,
    pub pin_digest: bool,
    pub ca_file: Option<PathBuf>,
    /// `http://` to a host other than loopback, accepted (with a warning at every start).
    pub allow_insecure: bool,
    /// Repositories an offer may name besides the one the unit runs.
    pub allowed_repositories: Vec<String>,
    /// Ask the registry for the offered tag's manifest digest and refuse an offer whose
    /// `hash_sha256` differs; the unit then runs the image pinned to that digest.
    pub verify_digest: bool,
    /// Accept an offer more than one major version ahead of the running one.
    pub allow_major_jump: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwapSettings {
    pub drain: Duration,
    pub start_timeout: Duration,
    pub verify_timeout: Duration,
    pub prepull: Vec<String>,
    /// Removes one old image of the app after a swap (`{image}`); `[]`: never (`src/image/prune.rs`).
    pub prune: Vec<String>,
    pub dropin_dir: PathBuf,
    /// Where the drop-in of a unit Quadlet generates goes: `<quadlet_dir>/<name>.container.d/`
    /// (`src/systemd/control/quadlet.rs`).
    pub quadlet_dir: PathBuf,
    /// How the version reaches the unit: a drop-in, or (non-root mode) an environment file.
    pub handoff: Handoff,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    pub state_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// The local control socket (`update-check`, `status`); `None` when turned off.
    pub control_socket: Option<PathBuf>,
}

/// The sidekicks' runtime directory under the configuration root: `/run/sidekick` in production,
/// the parent of the shipped unit's `RuntimeDirectory=sidekick/%i`.
pub fn runtime_dir(root: &Path) -> PathBuf {
    root.join("run/sidekick")
}

/// The control socket's file name in an instance's runtime directory.
pub const CONTROL_SOCKET_FILE: &str = "control.sock";

/// The longest path a Unix socket can be bound at (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// What `sidekick status` reads: etcd, and where registrations live. No other section is checked,
/// so a host with only an etcd drop-in (or none: the default endpoint) can run it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSettings {
    pub etcd: EtcdOptions,
    pub registration: RegistrationKeys,
}

/// What `sidekick update-check` reads: the instance and where its daemon listens; the update
/// section only for a standalone check, so asking the daemon needs no complete configuration
/// (no `registration.port`, no `update.server`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateCheckSettings {
    pub instance: InstanceSettings,
    pub etcd: EtcdOptions,
    pub daemon: DaemonSettings,
    /// Where the unit's version is read from besides its `Environment=` (`swap.handoff`).
    pub handoff: Handoff,
    /// `[update]` validated, or why it is not usable (shown only when a standalone check needs it).
    pub update: Result<UpdateSettings, String>,
}

/// What `sidekick slots release|resume|set-max` read: etcd, the slot backend and the group.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotsSettings {
    pub etcd: EtcdOptions,
    pub backend: SlotBackend,
    pub fleetlock_url: Option<Url>,
    /// `slot.group` with its default; `None` when nothing names a group (no `slot.group`,
    /// `update.app_id` or unit), so `--group` must.
    pub group: Option<String>,
    /// Where a FleetLock halt record is kept.
    pub state_dir: PathBuf,
}
