//! The server's state and Nebraska's rules over it: instance registration, the update grant with
//! its rollout policy (reference §5.4–5.6) and the events table (§5.7).

use std::collections::BTreeMap;
use std::time::Duration;

use semver::Version;
use serde::{Deserialize, Serialize};

/// Instances that have not checked in for this long are left out of the rollout stats (§5.3).
const VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;
/// Events kept per instance for the admin listing.
const EVENTS_KEPT: usize = 20;
/// Longest machine id Nebraska stores (`varchar(50)`).
const MAX_MACHINE_ID_LEN: usize = 50;
/// The longest instance name kept (a sidekick instance name is a unit instance, far shorter).
const MAX_INSTANCE_NAME_LEN: usize = 128;

/// Everything the server knows, keyed by lowercase app id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    pub apps: BTreeMap<String, App>,
}

/// An application with its packages, channels, groups and instances.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct App {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub packages: BTreeMap<String, Package>,
    #[serde(default)]
    pub channels: BTreeMap<String, Channel>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    #[serde(default)]
    pub instances: BTreeMap<String, Instance>,
}

/// A package: what an update points at.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub version: String,
    pub url: String,
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub hash_sha256: String,
    #[serde(default)]
    pub size: u64,
}

/// A channel: an arch and the package it currently offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default)]
    pub package: Option<String>,
}

/// A group: instances asking with `track`, served from `channel`, under `policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub track: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub policy: Policy,
}

/// The rollout policy of a group (safe mode and office hours are not modelled).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "yes")]
    pub updates_enabled: bool,
    #[serde(default = "one")]
    pub max_updates_per_period: u32,
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub period_interval: Duration,
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub update_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            updates_enabled: true,
            max_updates_per_period: 1,
            period_interval: five_minutes(),
            update_timeout: one_hour(),
        }
    }
}

fn default_arch() -> String {
    "amd64".into()
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

/// Nebraska's instance statuses (§5.7), numbered as in its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceStatus {
    Undefined = 1,
    UpdateGranted = 2,
    Error = 3,
    Complete = 4,
    Installed = 5,
    Downloaded = 6,
    Downloading = 7,
    OnHold = 8,
}

/// One instance of an app, keyed by machine id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub group: String,
    pub version: String,
    pub status: InstanceStatus,
    pub last_check_ms: u64,
    pub update_in_progress: bool,
    pub last_update_granted_ms: Option<u64>,
    pub last_update_version: Option<String>,
    #[serde(default)]
    pub events: Vec<EventRecord>,
    /// Update checks answered for it (each one that gets an offer is a grant).
    #[serde(default)]
    pub update_checks: u64,
    /// The sidekick's instance name, when its request carried one (`instancename`).
    #[serde(default)]
    pub name: Option<String>,
}

/// An event the server recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_type: i64,
    pub event_result: i64,
    pub error_code: Option<i64>,
    pub previous_version: Option<String>,
    pub at_ms: u64,
}

/// A refusal of an update check, with the app status string Nebraska uses (§5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RegistrationFailed,
    UpdateInProgress,
    NoPackage,
    UpdatesDisabled,
    MaxPerPeriod,
    MaxConcurrent,
}

impl Refusal {
    pub fn status(self) -> &'static str {
        match self {
            Self::RegistrationFailed => "error-instanceRegistrationFailed",
            Self::UpdateInProgress => "error-updateInProgressOnInstance",
            Self::NoPackage => "error-noPackageFound",
            Self::UpdatesDisabled => "error-updatesDisabled",
            Self::MaxPerPeriod => "error-maxUpdatesPerPeriodLimitReached",
            Self::MaxConcurrent => "error-maxConcurrentUpdatesLimitReached",
        }
    }
}

/// Nebraska's arch for a request: board first, then `os@arch`, else amd64.
pub fn request_arch(board: &str, os_arch: &str) -> &'static str {
    match board {
        "amd64-usr" => return "amd64",
        "arm64-usr" => return "aarch64",
        _ => {}
    }
    match os_arch {
        "x64" | "amd64" => "amd64",
        "arm" | "aarch64" => "aarch64",
        "x86" => "x86",
        "all" => "all",
        _ => "amd64",
    }
}

/// Trims, strips one pair of braces and lowercases an app id, as Nebraska's `GetAppID` does.
pub fn app_key(id: &str) -> String {
    let id = id.trim();
    let id = id
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(id);
    id.to_ascii_lowercase()
}

impl App {
    /// The group serving `track` on `arch`; only groups whose channel exists count (§5.1).
    pub fn group_for(&self, track: &str, arch: &str) -> Option<String> {
        self.groups
            .iter()
            .filter(|(_, g)| g.track == track)
            .filter(|(_, g)| {
                let channel = g.channel.as_ref().and_then(|c| self.channels.get(c));
                channel.is_some_and(|c| c.arch == arch)
            })
            .map(|(id, _)| id.clone())
            .next_back()
    }

    /// Registers or refreshes an instance (§5.3); fails on a non-semver version or a bad id.
    pub fn register(
        &mut self,
        machine_id: &str,
        version: &str,
        group: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        if machine_id.is_empty()
            || machine_id.len() > MAX_MACHINE_ID_LEN
            || Version::parse(version).is_err()
        {
            return Err(Refusal::RegistrationFailed);
        }
        let instance = self
            .instances
            .entry(machine_id.to_owned())
            .or_insert_with(|| Instance {
                group: group.to_owned(),
                version: version.to_owned(),
                status: InstanceStatus::Undefined,
                last_check_ms: now,
                update_in_progress: false,
                last_update_granted_ms: None,
                last_update_version: None,
                events: Vec::new(),
                update_checks: 0,
                name: None,
            });
        instance.group = group.to_owned();
        instance.version = version.to_owned();
        instance.last_check_ms = now;
        Ok(())
    }

    /// Remembers the name a registered instance's request gave itself: at most
    /// [`MAX_INSTANCE_NAME_LEN`] printable characters (it comes from the network); anything else
    /// leaves the name it had.
    pub fn name_instance(&mut self, machine_id: &str, name: &str) {
        let printable = name.chars().all(|c| c.is_ascii_graphic());
        if name.is_empty() || name.len() > MAX_INSTANCE_NAME_LEN || !printable {
            return;
        }
        if let Some(instance) = self.instances.get_mut(machine_id) {
            instance.name = Some(name.to_owned());
        }
    }

    /// Nebraska's `GetUpdatePackage` for a regular client (§5.4): the package to serve, if any.
    pub fn update_package(
        &mut self,
        machine_id: &str,
        version: &str,
        group_id: &str,
        now: u64,
    ) -> Result<Option<Package>, Refusal> {
        self.register(machine_id, version, group_id, now)?;
        let package = self
            .groups
            .get(group_id)
            .and_then(|g| g.channel.as_ref())
            .and_then(|c| self.channels.get(c))
            .and_then(|c| c.package.as_ref())
            .and_then(|p| self.packages.get(p))
            .cloned();
        let reported = Version::parse(version).map_err(|_| Refusal::RegistrationFailed)?;
        let Some(instance) = self.instances.get_mut(machine_id) else {
            return Err(Refusal::RegistrationFailed);
        };
        instance.update_checks += 1;
        let status = instance.status;
        if matches!(
            status,
            InstanceStatus::Downloading | InstanceStatus::Downloaded | InstanceStatus::Installed
        ) {
            return Err(Refusal::UpdateInProgress);
        }
        let Some(package) = package else {
            return Err(Refusal::NoPackage);
        };
        if status == InstanceStatus::UpdateGranted {
            // A grant is re-served until the instance reports the version (§5.4 step 4, PR #107).
            let granted = instance
                .last_update_version
                .as_deref()
                .and_then(|v| Version::parse(v).ok());
            return match granted {
                Some(granted) if reported < granted => Ok(Some(package)),
                _ => {
                    self.set_status(machine_id, InstanceStatus::Complete);
                    Ok(None)
                }
            };
        }
        let offered = Version::parse(&package.version).unwrap_or(Version::new(0, 0, 0));
        if reported >= offered {
            return Ok(None);
        }
        if let Err(refusal) = self.enforce_policy(group_id, now) {
            if matches!(refusal, Refusal::MaxPerPeriod | Refusal::MaxConcurrent) {
                self.set_status(machine_id, InstanceStatus::OnHold);
            }
            return Err(refusal);
        }
        if let Some(instance) = self.instances.get_mut(machine_id) {
            instance.status = InstanceStatus::UpdateGranted;
            instance.update_in_progress = true;
            instance.last_update_granted_ms = Some(now);
            instance.last_update_version = Some(package.version.clone());
        }
        Ok(Some(package))
    }

    /// The rollout policy (§5.5), without safe mode or office hours.
    fn enforce_policy(&self, group_id: &str, now: u64) -> Result<(), Refusal> {
        let policy = self
            .groups
            .get(group_id)
            .map(|g| g.policy.clone())
            .unwrap_or_default();
        if !policy.updates_enabled {
            return Err(Refusal::UpdatesDisabled);
        }
        let period_ms = policy.period_interval.as_millis() as u64;
        let timeout_ms = policy.update_timeout.as_millis() as u64;
        let members = self
            .instances
            .values()
            .filter(|i| i.group == group_id && now.saturating_sub(i.last_check_ms) <= VALIDITY_MS);
        let (mut granted_in_period, mut in_progress) = (0u32, 0u32);
        for instance in members {
            if let Some(granted) = instance.last_update_granted_ms {
                if granted > now.saturating_sub(period_ms) {
                    granted_in_period += 1;
                }
                if instance.update_in_progress && now.saturating_sub(granted) <= timeout_ms {
                    in_progress += 1;
                }
            }
        }
        if granted_in_period >= policy.max_updates_per_period {
            return Err(Refusal::MaxPerPeriod);
        }
        if in_progress >= policy.max_updates_per_period {
            return Err(Refusal::MaxConcurrent);
        }
        Ok(())
    }

    /// Nebraska's `RegisterEvent` (§5.7): recorded only for a known instance with an update in progress.
    pub fn record_event(&mut self, machine_id: &str, record: EventRecord) -> bool {
        let Some(instance) = self.instances.get_mut(machine_id) else {
            return false;
        };
        let status = match (record.event_type, record.event_result) {
            (3, 1) | (3, 2) => InstanceStatus::Complete,
            (13, 1) => InstanceStatus::Downloading,
            (14, 1) => InstanceStatus::Downloaded,
            (800, 1) => InstanceStatus::Installed,
            (3, 0) => InstanceStatus::Error,
            _ => return false,
        };
        if !instance.update_in_progress {
            return false;
        }
        instance.events.push(record);
        if instance.events.len() > EVENTS_KEPT {
            instance.events.remove(0);
        }
        match status {
            InstanceStatus::Complete => self.complete(machine_id),
            other => self.set_status(machine_id, other),
        }
        true
    }

    fn complete(&mut self, machine_id: &str) {
        if let Some(instance) = self.instances.get_mut(machine_id)
            && let Some(version) = &instance.last_update_version
        {
            instance.version = version.clone();
        }
        self.set_status(machine_id, InstanceStatus::Complete);
    }

    /// Sets a status; Complete, Error, Undefined and OnHold end an update in progress.
    fn set_status(&mut self, machine_id: &str, status: InstanceStatus) {
        if let Some(instance) = self.instances.get_mut(machine_id) {
            instance.status = status;
            if matches!(
                status,
                InstanceStatus::Complete
                    | InstanceStatus::Error
                    | InstanceStatus::Undefined
                    | InstanceStatus::OnHold
            ) {
                instance.update_in_progress = false;
            }
        }
    }
}
