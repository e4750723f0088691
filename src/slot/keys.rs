//! The etcd key layout of slot groups, `/sidekick/slots/<group>/<n>`, and reading and clearing
//! a group's keys.

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use super::halt::{self, HaltMarker};
use super::{SlotError, SlotValue};

/// Prefix of every slot group.
pub const SLOT_PREFIX: &str = "/sidekick/slots/";

/// The key prefix of `group`, ending in `/`.
pub fn group_prefix(group: &str) -> String {
    format!("{SLOT_PREFIX}{group}/")
}

/// The key of slot `index` of `group`.
pub fn slot_key(group: &str, index: u32) -> String {
    format!("{SLOT_PREFIX}{group}/{index}")
}

/// One key of a group as read from etcd.
#[derive(Debug, Clone)]
pub struct SlotEntry {
    pub key: String,
    /// `None` for a key that is not a number; it still counts as a holder.
    pub index: Option<u32>,
    /// `None` for a value that is not ours; it still counts as a holder.
    pub value: Option<SlotValue>,
    pub raw: Vec<u8>,
    pub lease: i64,
    pub mod_revision: i64,
}

impl SlotEntry {
    fn from_kv(kv: &KeyValue, prefix: &str) -> Option<SlotEntry> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let rest = key.strip_prefix(prefix)?;
        // Keys of a nested group (`<group>/<sub>/<n>`) belong to that group.
        if rest.contains('/') {
            return None;
        }
        Some(SlotEntry {
            index: rest.parse().ok(),
            value: serde_json::from_slice(kv.value()).ok(),
            raw: kv.value().to_vec(),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
            key,
        })
    }

    /// The holder id named in the value, if the value is ours.
    pub fn holder(&self) -> Option<&str> {
        self.value.as_ref().map(|v| v.holder.as_str())
    }
}

/// The group's holders and halt marker at one revision.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub revision: i64,
    pub slots: Vec<SlotEntry>,
    pub halt: Option<HaltMarker>,
}

/// Ops that read a snapshot: the group's keys and its halt marker.
pub(super) fn snapshot_ops(group: &str) -> [TxnOp; 2] {
    [
        TxnOp::get(group_prefix(group), Some(GetOptions::new().with_prefix())),
        TxnOp::get(halt::halt_key(group), None),
    ]
}

pub(super) fn parse_snapshot(group: &str, resp: &TxnResponse) -> Snapshot {
    let prefix = group_prefix(group);
    let mut gets = resp.op_responses().into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(get) => Some(get),
        _ => None,
    });
    let slots = gets
        .next()
        .map(|g| {
            g.kvs()
                .iter()
                .filter_map(|kv| SlotEntry::from_kv(kv, &prefix))
                .collect()
        })
        .unwrap_or_default();
    let halt = gets
        .next()
        .and_then(|g| g.kvs().first().map(|kv| halt::decode(kv.value())));
    Snapshot {
        revision: resp.header().map(|h| h.revision()).unwrap_or(0),
        slots,
        halt,
    }
}

/// Every key of `group` now.
pub async fn read_group(client: &mut Client, group: &str) -> Result<Vec<SlotEntry>, SlotError> {
    let prefix = group_prefix(group);
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| SlotEntry::from_kv(kv, &prefix))
        .collect())
}

/// Deletes every slot of `group` whose value names `holder`, each in a transaction that compares
/// the value read; returns the keys deleted. Used by release and by `sidekick slots release`.
pub async fn release_holder(
    client: &mut Client,
    group: &str,
    holder: &str,
) -> Result<Vec<String>, SlotError> {
    let mut released = Vec::new();
    for entry in read_group(client, group).await? {
        if entry.holder() != Some(holder) {
            continue;
        }
        let txn = Txn::new()
            .when([Compare::value(
                entry.key.as_str(),
                CompareOp::Equal,
                entry.raw.clone(),
            )])
            .and_then([TxnOp::delete(entry.key.as_str(), None)]);
        if client.txn(txn).await?.succeeded() {
            released.push(entry.key);
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(group_prefix("app/stable"), "/sidekick/slots/app/stable/");
        assert_eq!(slot_key("app/stable", 2), "/sidekick/slots/app/stable/2");
    }
}
