//! Stage two: fragments merged in precedence order over the built-in defaults, remembering where
//! each value came from so errors and `check-config` can name the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::fragments::{CheckKind, Fragment, Handoff, Layout, SlotBackend};
use super::origin::{Origin, Origins};

/// All settings after merging, defaults filled in, not yet validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    pub instance: InstanceInput,
    pub etcd: EtcdInput,
    pub registration: RegistrationInput,
    pub health: HealthInput,
    pub update: UpdateInput,
    pub slot: SlotInput,
    pub swap: SwapInput,
    pub daemon: DaemonInput,
    pub rollout: crate::rollout::PolicyText,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InstanceInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EtcdInput {
    pub endpoints: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    pub allow_insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistrationInput {
    pub enabled: bool,
    pub layout: Layout,
    pub prefix: String,
    pub domain: String,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub scheme: String,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthInput {
    pub check: CheckKind,
    pub url: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateInput {
    pub enabled: bool,
    pub server: String,
    pub app_id: String,
    pub track: String,
    pub arch: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub image: String,
    pub pin_digest: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub allow_insecure: bool,
    pub allowed_repositories: Vec<String>,
    pub verify_digest: bool,
    pub allow_major_jump: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotInput {
    pub backend: SlotBackend,
    pub max: u32,
    pub group: String,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    pub fleetlock_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwapInput {
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub verify_timeout: Duration,
    pub prepull: Vec<String>,
    pub prune: Vec<String>,
    pub dropin_dir: PathBuf,
    pub quadlet_dir: PathBuf,
    pub handoff: Handoff,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonInput {
    pub state_dir: PathBuf,
    pub metrics: String,
    /// Unset: `<runtime_dir>/<unit without .service>/control.sock`; empty: no socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Where the derived control socket goes: `run/sidekick` under the config root (a flag, not a
    /// key, as `--unit` is for `instance.unit`).
    #[serde(skip)]
    pub runtime_dir: PathBuf,
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

impl Default for Input {
    /// The built-in defaults of DESIGN.md's schema.
    fn default() -> Self {
        Input {
            instance: InstanceInput::default(),
            etcd: EtcdInput {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                timeout: secs(5),
                username: None,
                password_file: None,
                ca_file: None,
                cert_file: None,
                key_file: None,
                allow_insecure: false,
            },
            registration: RegistrationInput {
                enabled: true,
                layout: Layout::Seed,
                prefix: String::new(),
                domain: String::new(),
                host: String::new(),
                port: None,
                scheme: "http".into(),
                ttl: secs(30),
            },
            health: HealthInput {
                check: CheckKind::Http,
                url: String::new(),
                interval: secs(2),
                timeout: secs(1),
                rise: 2,
                fall: 2,
            },
            update: UpdateInput {
                enabled: true,
                server: String::new(),
                app_id: String::new(),
                track: "stable".into(),
                arch: "x64".into(),
                interval: secs(300),
                image: "{codebase}".into(),
                pin_digest: false,
                ca_file: None,
                allow_insecure: false,
                allowed_repositories: Vec::new(),
                verify_digest: false,
                allow_major_jump: false,
            },
            slot: SlotInput {
                backend: SlotBackend::Etcd,
                max: 1,
                group: String::new(),
                ttl: secs(30),
                fleetlock_url: String::new(),
            },
            swap: SwapInput {
                drain: secs(5),
                start_timeout: secs(120),
                verify_timeout: secs(60),
                prepull: vec!["docker".into(), "pull".into(), "{image}".into()],
                prune: ["docker", "image", "rm", "{image}"]
                    .map(String::from)
                    .to_vec(),
                dropin_dir: PathBuf::from("/etc/systemd/system"),
                quadlet_dir: PathBuf::from("/etc/containers/systemd"),
                handoff: Handoff::DropIn,
            },
            daemon: DaemonInput {
                state_dir: PathBuf::from("/var/lib/sidekick"),
                metrics: String::new(),
                control_socket: None,
                runtime_dir: super::settings::runtime_dir(Path::new("/")),
            },
            rollout: crate::rollout::PolicyText::default(),
        }
    }
}

/// Copies each key a fragment sets over the input and records its origin.
macro_rules! overlay {
    ($input:expr, $fragment:expr, $section:ident, $record:expr, [$($key:ident),* $(,)?]) => {
        if let Some(section) = $fragment.$section {
            $(
                if let Some(value) = section.$key {
                    $input.$section.$key = value.into();
                    $record(concat!(stringify!($section), ".", stringify!($key)));
                }
            )*
        }
    };
}

impl Input {
    /// Applies one parsed file; `lines` maps each key path in it to its line.
    pub fn overlay(
        &mut self,
        mut fragment: Fragment,
        path: &Path,
        lines: &BTreeMap<String, usize>,
        origins: &mut Origins,
    ) {
        let rollout = fragment.rollout.take();
        super::rollout::overlay(&mut self.rollout, rollout, path, lines, origins);
        let mut record = |key: &str| {
            let line = lines.get(key).copied().unwrap_or(1);
            origins.insert(
                key.to_string(),
                Origin::File {
                    path: path.to_path_buf(),
                    line,
                },
            );
        };
        overlay!(self, fragment, instance, record, [unit, name, service]);
        overlay!(
            self,
            fragment,
            etcd,
            record,
            [
                endpoints,
                timeout,
                username,
                password_file,
                ca_file,
                cert_file,
                key_file,
                allow_insecure
            ]
        );
        overlay!(
            self,
            fragment,
            registration,
            record,
            [enabled, layout, prefix, domain, host, port, scheme, ttl]
        );
        overlay!(
            self,
            fragment,
            health,
            record,
            [check, url, interval, timeout, rise, fall]
        );
        overlay!(
            self,
            fragment,
            update,
            record,
            [
                enabled,
                server,
                app_id,
                track,
                arch,
                interval,
                image,
                pin_digest,
                ca_file,
                allow_insecure,
                allowed_repositories,
                verify_digest,
                allow_major_jump
            ]
        );
        overlay!(
            self,
            fragment,
            slot,
            record,
            [backend, max, group, ttl, fleetlock_url]
        );
        overlay!(
            self,
            fragment,
            swap,
            record,
            [
                drain,
                start_timeout,
                verify_timeout,
                prepull,
                prune,
                dropin_dir,
                quadlet_dir,
                handoff
            ]
        );
        overlay!(
            self,
            fragment,
            daemon,
            record,
            [state_dir, metrics, control_socket]
        );
    }
}
