//! What `sidekick status` shows, as data: the report and one row type per section. Serialised
//! as is by `--json`; [`super::render`] lays it out as tables.

use serde::Serialize;

use super::local;
use crate::registry::duplicate::DuplicateRecord;
use crate::registry::record::InstanceRecord;

/// Everything `status` shows.
#[derive(Debug, Default, Serialize)]
pub struct StatusReport {
    /// The instances' own records (the fleet view), by group and instance.
    pub instances: Vec<InstanceStatus>,
    pub registrations: Vec<RegistrationStatus>,
    pub slot_groups: Vec<SlotGroupStatus>,
    /// Limits stored with `sidekick slots set-max`, by group.
    pub slot_limits: Vec<SlotLimitStatus>,
    /// Instances kept out of a registration another live instance holds.
    pub duplicates: Vec<DuplicateRecord>,
    pub halts: Vec<HaltStatus>,
    /// The sidekicks on this host, as they answer on their control sockets.
    pub local: Vec<local::LocalDaemon>,
    /// Sections etcd did not answer for (their lists above are empty), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<UnreadableSection>,
}

/// A section of the report that could not be read.
#[derive(Debug, Serialize)]
pub struct UnreadableSection {
    pub section: String,
    pub error: String,
}

/// What `status --json` shows when etcd could not be read: the local daemons and why, with no
/// fleet fields (an empty list would claim an empty fleet).
#[derive(Debug, Serialize)]
pub struct EtcdDownReport<'a> {
    pub etcd_error: &'a str,
    pub local: &'a [local::LocalDaemon],
}

/// One instance's record of itself.
#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub group: String,
    pub instance: String,
    #[serde(flatten)]
    pub record: InstanceRecord,
}

/// A group's limit stored in etcd (authoritative over `slot.max`).
#[derive(Debug, Serialize)]
pub struct SlotLimitStatus {
    pub group: String,
    pub max: u32,
}

/// One registration found under the configured layout's prefix.
#[derive(Debug, Serialize)]
pub struct RegistrationStatus {
    pub service: String,
    pub instance: String,
    pub host: String,
    pub port: u16,
    /// Seconds left on the registration's lease; `None` for a key with no lease.
    pub ttl_left: Option<i64>,
}

/// One slot group and its holders.
#[derive(Debug, Serialize)]
pub struct SlotGroupStatus {
    pub group: String,
    pub holders: Vec<HolderStatus>,
}

/// One held slot.
#[derive(Debug, Serialize)]
pub struct HolderStatus {
    pub slot: String,
    pub holder: String,
    pub instance: String,
    pub version: String,
    pub since: String,
    /// The holder's hostname, when its value names one.
    pub host: Option<String>,
    /// Seconds left on the holder's lease; `None` for a key with no lease (not ours).
    pub ttl_left: Option<i64>,
}

/// One halted group.
#[derive(Debug, Serialize)]
pub struct HaltStatus {
    pub group: String,
    pub version: String,
    pub reason: String,
    pub instance: String,
    pub since: String,
}
