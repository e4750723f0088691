//! The fleet's keys read from etcd and parsed into the report: the instances' records,
//! registrations under the configured layout (parsed by [`KeyLayout::parse`]), slot holders
//! (keys parsed by [`keys::parse_slot_key`]), stored limits, duplicates and halts, with each
//! lease's time to live.

use std::collections::BTreeMap;

use etcd_client::Client;

use super::model::{
    HaltStatus, HolderStatus, InstanceStatus, RegistrationStatus, SlotGroupStatus, SlotLimitStatus,
    StatusReport, UnreadableSection,
};
use crate::etcd::paged;
use crate::registry::KeyLayout;
use crate::registry::{duplicate, record};
use crate::slot::keys::{self, SLOT_PREFIX};
use crate::slot::{SlotError, SlotValue, halt};

/// Seconds left on each lease, asked once per lease.
#[derive(Default)]
struct LeaseTtls(BTreeMap<i64, i64>);

impl LeaseTtls {
    async fn of(&mut self, client: &mut Client, lease: i64) -> Result<Option<i64>, SlotError> {
        if lease == 0 {
            return Ok(None);
        }
        if let Some(ttl) = self.0.get(&lease) {
            return Ok(Some(*ttl));
        }
        let ttl = client.lease_time_to_live(lease, None).await?.ttl();
        self.0.insert(lease, ttl);
        Ok(Some(ttl))
    }
}

/// Reads every registration of `layout`, with its lease's TTL.
pub async fn registrations(
    client: &mut Client,
    layout: &KeyLayout,
) -> Result<Vec<RegistrationStatus>, SlotError> {
    let kvs = paged::get_prefix(client, &layout.list_prefix()).await?;
    let mut ttls = LeaseTtls::default();
    let mut found = Vec::new();
    for kv in &kvs {
        let key = String::from_utf8_lossy(kv.key());
        let value = String::from_utf8_lossy(kv.value());
        let Some(listed) = layout.parse(&key, &value) else {
            continue;
        };
        found.push(RegistrationStatus {
            service: listed.service,
            instance: listed.instance,
            host: listed.host,
            port: listed.port,
            ttl_left: ttls.of(client, kv.lease()).await?,
        });
    }
    Ok(found)
}

/// Reads every slot group under `/sidekick/slots/` with its holders' lease TTLs.
pub async fn slot_groups(client: &mut Client) -> Result<Vec<SlotGroupStatus>, SlotError> {
    let kvs = paged::get_prefix(client, SLOT_PREFIX).await?;
    let mut groups: BTreeMap<String, Vec<HolderStatus>> = BTreeMap::new();
    let mut ttls = LeaseTtls::default();
    for kv in &kvs {
        let key = String::from_utf8_lossy(kv.key());
        let Some((group, slot)) = keys::parse_slot_key(&key) else {
            continue;
        };
        let value: SlotValue = serde_json::from_slice(kv.value()).unwrap_or_else(|_| SlotValue {
            holder: String::from_utf8_lossy(kv.value()).into_owned(),
            instance: "?".into(),
            version: "?".into(),
            since: String::new(),
            host: None,
        });
        let ttl_left = ttls.of(client, kv.lease()).await?;
        groups
            .entry(group.to_string())
            .or_default()
            .push(HolderStatus {
                slot: slot.to_string(),
                holder: value.holder,
                instance: value.instance,
                version: value.version,
                since: value.since,
                host: value.host.map(|h| h.hostname),
                ttl_left,
            });
    }
    Ok(groups
        .into_iter()
        .map(|(group, holders)| SlotGroupStatus { group, holders })
        .collect())
}

/// Gathers every section of the report from etcd, each read on its own: a section that cannot be
/// read (a malformed value, a request refused or timed out) is named in
/// [`StatusReport::unreadable`] and the others are still shown. Only when no section can be read
/// is it an error (etcd is down or refuses us).
pub async fn gather(client: &mut Client, layout: &KeyLayout) -> Result<StatusReport, SlotError> {
    let mut failed: Vec<(&'static str, SlotError)> = Vec::new();
    let halts = halt::list(client).await.map(|halts| {
        halts
            .into_iter()
            .map(|(group, m)| HaltStatus {
                group,
                version: m.version,
                reason: m.reason,
                instance: m.instance,
                since: m.since,
            })
            .collect()
    });
    let halts = keep("halts", halts, &mut failed);
    let slot_limits = crate::slot::limit::list(client).await.map(|limits| {
        limits
            .into_iter()
            .map(|(group, max)| SlotLimitStatus { group, max })
            .collect()
    });
    let slot_limits = keep("slot limits", slot_limits, &mut failed);
    let instances = record::list(client)
        .await
        .map_err(SlotError::from)
        .map(|records| {
            records
                .into_iter()
                .map(|(group, instance, record)| InstanceStatus {
                    group,
                    instance,
                    record,
                })
                .collect()
        });
    let instances = keep("instances", instances, &mut failed);
    let registrations = keep(
        "registrations",
        registrations(client, layout).await,
        &mut failed,
    );
    let slot_groups = keep("update slots", slot_groups(client).await, &mut failed);
    let duplicates = duplicate::list(client).await.map_err(SlotError::from);
    let duplicates = keep("duplicate instances", duplicates, &mut failed);
    if failed.len() == SECTIONS {
        let (_, first) = failed.remove(0);
        return Err(first);
    }
    Ok(StatusReport {
        instances,
        registrations,
        slot_groups,
        slot_limits,
        duplicates,
        halts,
        local: Vec::new(),
        unreadable: failed
            .into_iter()
            .map(|(section, err)| UnreadableSection {
                section: section.to_string(),
                error: crate::commands::slot_error_line(&err),
            })
            .collect(),
    })
}

/// The sections [`gather`] reads from etcd.
const SECTIONS: usize = 6;

/// A section's rows, or none with its failure noted.
fn keep<T: Default>(
    section: &'static str,
    read: Result<T, SlotError>,
    failed: &mut Vec<(&'static str, SlotError)>,
) -> T {
    read.unwrap_or_else(|err| {
        failed.push((section, err));
        T::default()
    })
}
