//! The fleet view: each sidekick publishes a small record of its instance next to its
//! registration, on the same lease, under `/sidekick/instances/<group>/<instance>`: the version
//! the unit runs, the agent's phase and since when, and the last update check and its result.
//! `sidekick status` builds its versions table from these records. A record lives with the
//! registration, on its lease: an instance out of rotation (stopped, unhealthy) has none. The one
//! exception is the instance being swapped: deregistered for the swap, its record (phase
//! `swapping`, with the target version and the step) stays on a lease of its own ([`super::held`])
//! until the registration is back.

use etcd_client::Client;
use serde::{Deserialize, Serialize};

use super::Entry;

/// Prefix of every instance record.
pub const INSTANCES_PREFIX: &str = "/sidekick/instances/";

/// What one instance says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The version the unit runs, as systemd reports it; `unknown` before the first read.
    pub version: String,
    /// The agent's phase: `serving`, `starting`, `not-registered`, `updating`,
    /// `waiting-for-slot`, `swapping`, `stranded`, `stopping`.
    pub phase: String,
    /// When the phase began, RFC 3339.
    pub since: String,
    /// When the last update check ran, RFC 3339.
    pub last_check: Option<String>,
    /// Its result (`no-update`, `update`, `on-hold`, `error`, …).
    pub result: Option<String>,
    /// The announced host.
    pub host: String,
    /// During an update: the version it updates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// During an update: the swap's step (`draining`, `verifying`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// A short hash of the rollout policy this instance enforces ([`crate::rollout::RolloutPolicy::short_hash`]);
    /// absent in records of older versions and of instances that take no etcd slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// The record's key for `instance` of update group `group`.
pub fn key(group: &str, instance: &str) -> String {
    format!("{INSTANCES_PREFIX}{group}/{instance}")
}

/// The record as a registration entry.
pub fn entry(group: &str, instance: &str, record: &InstanceRecord) -> Entry {
    let value = serde_json::to_string(record).unwrap_or_else(|_| "{}".to_string());
    (key(group, instance), value)
}

/// Every record in etcd, with its group and instance, sorted by key; unreadable values are skipped.
pub async fn list(
    client: &mut Client,
) -> Result<Vec<(String, String, InstanceRecord)>, etcd_client::Error> {
    let kvs = crate::etcd::paged::get_prefix(client, INSTANCES_PREFIX).await?;
    let mut records: Vec<(String, String, InstanceRecord)> = kvs
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(kv.key()).ok()?;
            let (group, instance) = key.strip_prefix(INSTANCES_PREFIX)?.rsplit_once('/')?;
            let record = serde_json::from_slice(kv.value()).ok()?;
            Some((group.to_string(), instance.to_string(), record))
        })
        .collect();
    records.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_keyed_by_group_and_instance_with_the_documented_fields() {
        let record = InstanceRecord {
            version: "2.0.0".into(),
            phase: "serving".into(),
            since: "2026-01-01T00:00:00Z".into(),
            last_check: None,
            result: Some("no-update".into()),
            host: "10.0.0.5".into(),
            target: None,
            step: None,
            policy: None,
        };
        let (key, value) = entry("app/stable", "web-1", &record);
        assert_eq!(key, "/sidekick/instances/app/stable/web-1");
        let json: serde_json::Value = serde_json::from_str(&value).unwrap();
        for field in ["version", "phase", "since", "last_check", "result", "host"] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert_eq!(
            serde_json::from_str::<InstanceRecord>(&value).unwrap(),
            record
        );
    }
}
