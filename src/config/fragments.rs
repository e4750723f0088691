//! Stage one: one TOML file as written, every key optional, unknown keys refused.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One configuration file (drop-in or `--config`), parsed but not merged or validated.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    pub instance: Option<InstanceFragment>,
    pub etcd: Option<EtcdFragment>,
    pub registration: Option<RegistrationFragment>,
    pub health: Option<HealthFragment>,
    pub update: Option<UpdateFragment>,
    pub slot: Option<SlotFragment>,
    pub swap: Option<SwapFragment>,
    pub daemon: Option<DaemonFragment>,
    pub rollout: Option<super::rollout::RolloutFragment>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFragment {
    pub unit: Option<String>,
    pub name: Option<String>,
    pub service: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdFragment {
    pub endpoints: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub allow_insecure: Option<bool>,
}

/// Key/value layout of a registration, named as load balancers know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Seed,
    Traefik,
    Skydns,
    Vulcand,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFragment {
    pub enabled: Option<bool>,
    pub layout: Option<Layout>,
    pub prefix: Option<String>,
    pub domain: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// How the instance's health is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    Tcp,
    None,
}

/// How a new version reaches the app unit (`swap.handoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Handoff {
    /// A drop-in the sidekick writes, then `Reload()` (`src/systemd/control/dropin.rs`).
    DropIn,
    /// A root-owned environment file written by `sidekick-version@.service`: non-root mode
    /// (`src/systemd/control/envfile.rs`).
    EnvironmentFile,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFragment {
    pub check: Option<CheckKind>,
    pub url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFragment {
    pub enabled: Option<bool>,
    pub server: Option<String>,
    pub app_id: Option<String>,
    pub track: Option<String>,
    pub arch: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    pub image: Option<String>,
    pub pin_digest: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub allow_insecure: Option<bool>,
    pub allowed_repositories: Option<Vec<String>>,
    pub verify_digest: Option<bool>,
    pub allow_major_jump: Option<bool>,
}

pub use crate::slot::SlotBackend;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotFragment {
    pub backend: Option<SlotBackend>,
    pub max: Option<u32>,
    pub group: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    pub fleetlock_url: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapFragment {
    #[serde(default, with = "humantime_serde")]
    pub drain: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub start_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub verify_timeout: Option<Duration>,
    pub prepull: Option<Vec<String>>,
    pub prune: Option<Vec<String>>,
    pub dropin_dir: Option<PathBuf>,
    pub quadlet_dir: Option<PathBuf>,
    pub handoff: Option<Handoff>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonFragment {
    pub state_dir: Option<PathBuf>,
    pub metrics: Option<String>,
    pub control_socket: Option<PathBuf>,
}
