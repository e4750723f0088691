//! The etcd key layout of slot groups: the slots `/sidekick/slots/<group>/<n>`, the stored limit
//! `/sidekick/limits/<group>` and the waiters' queue `/sidekick/queue/<escaped group>/<lease>`;
//! reading a group's snapshot and clearing a holder's keys.

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
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

/// The group and slot index of a slot key (`/sidekick/slots/<group>/<n>`); `None` for any other
/// key. A group may hold `/`: the index is what follows the last one.
pub fn parse_slot_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(SLOT_PREFIX)?.rsplit_once('/')
}

/// Prefix of every stored limit.
pub const LIMIT_PREFIX: &str = "/sidekick/limits/";

/// The key holding `group`'s limit, set by `sidekick slots set-max`.
pub fn limit_key(group: &str) -> String {
    format!("{LIMIT_PREFIX}{group}")
}

/// Prefix of every waiters' queue.
pub const QUEUE_PREFIX: &str = "/sidekick/queue/";

/// The queue prefix of `group`, ending in `/`. The group's `/` are escaped, so a nested group's
/// waiters never fall under its parent's prefix.
pub fn queue_prefix(group: &str) -> String {
    format!(
        "{QUEUE_PREFIX}{}/",
        group.replace('%', "%25").replace('/', "%2F")
    )
}

/// The queue key of the waiter on lease `lease`.
pub fn queue_key(group: &str, lease: i64) -> String {
    format!("{}{lease:016x}", queue_prefix(group))
}

/// A limit stored in etcd, and the revision it was read at (for the acquire's compare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLimit {
    pub max: u32,
    pub mod_revision: i64,
}

/// The largest limit `slots set-max` stores and a sidekick accepts from etcd: anyone who can
/// write the key could otherwise open a group to every instance at once (4294967295).
pub const MAX_STORED_LIMIT: u32 = 1000;

/// Parses a stored limit: a decimal number from 1 to [`MAX_STORED_LIMIT`].
pub fn parse_limit(raw: &[u8]) -> Option<u32> {
    std::str::from_utf8(raw)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_STORED_LIMIT).contains(n))
}

/// [`parse_limit`] for the admission: a value out of bounds admits nobody, and says so.
fn admitted_limit(group_key: &[u8], raw: &[u8]) -> u32 {
    parse_limit(raw).unwrap_or_else(|| {
        tracing::warn!(key = %String::from_utf8_lossy(group_key),
            value = %crate::terminal_text::sanitize(&String::from_utf8_lossy(raw)),
            "the stored slot limit is not a number from 1 to {MAX_STORED_LIMIT}: nobody is \
             admitted until `sidekick slots set-max` fixes it");
        0
    })
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
    pub(super) fn from_kv(kv: &KeyValue, prefix: &str) -> Option<SlotEntry> {
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

/// The group's holders, halt marker, stored limit and queue at one revision.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub revision: i64,
    pub slots: Vec<SlotEntry>,
    pub halt: Option<HaltMarker>,
    /// The halt marker's `mod_revision` as read; 0 with none.
    pub halt_revision: i64,
    /// `None` when no limit is stored: the configured `slot.max` applies.
    pub limit: Option<StoredLimit>,
    /// Nobody is ahead of the reader in the queue: outside it, the queue is empty; in it, its own
    /// key is still there and no key is older.
    pub queue_clear: bool,
    /// For a reader in the queue, the waiter just ahead of it (key, creation revision), if any.
    pub ahead: Option<(String, i64)>,
}

/// Who reads a snapshot, which decides how the queue is read. etcd reads a whole range before it
/// sorts by anything but the key, so a sorted read costs the queue's length: only the reads that
/// need an order sort.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reader<'a> {
    /// Not in line: only whether anyone is (one key, unsorted, so etcd stops at the first).
    Outside,
    /// Put its own queue key earlier in the same transaction (its revision is the
    /// transaction's): the two newest keys are its own and the one just ahead of it.
    Joining,
    /// In line with `key`, created at `revision`: whether that key is still there, and the newest
    /// key created before it.
    InLine { key: &'a str, revision: i64 },
}

/// Ops that read a snapshot for `reader`: the group's keys, its halt marker, its stored limit,
/// then its queue as [`Reader`] says.
pub(super) fn snapshot_ops(group: &str, reader: Reader<'_>) -> Vec<TxnOp> {
    let queue = || GetOptions::new().with_keys_only();
    let newest = || {
        queue()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
    };
    let mut ops = vec![
        TxnOp::get(group_prefix(group), Some(GetOptions::new().with_prefix())),
        TxnOp::get(halt::halt_key(group), None),
        TxnOp::get(limit_key(group), None),
    ];
    match reader {
        Reader::Outside => ops.push(TxnOp::get(
            queue_prefix(group),
            Some(queue().with_prefix().with_limit(1)),
        )),
        Reader::Joining => ops.push(TxnOp::get(
            queue_prefix(group),
            Some(newest().with_limit(2)),
        )),
        Reader::InLine { key, revision } => {
            ops.push(TxnOp::get(key, Some(queue())));
            ops.push(TxnOp::get(
                queue_prefix(group),
                Some(
                    newest()
                        .with_limit(1)
                        .with_max_create_revision((revision - 1).max(1)),
                ),
            ));
        }
    }
    ops
}

/// Reads a snapshot from `resp` (made of [`snapshot_ops`] for `reader`, perhaps after other ops).
pub(super) fn parse_snapshot(group: &str, resp: &TxnResponse, reader: Reader<'_>) -> Snapshot {
    let prefix = group_prefix(group);
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
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
    let halt_kv = gets.next().and_then(|g| g.kvs().first().cloned());
    let halt = halt_kv.as_ref().map(|kv| halt::decode(kv.value()));
    let halt_revision = halt_kv.as_ref().map_or(0, |kv| kv.mod_revision());
    let limit = gets.next().and_then(|g| {
        let kv = g.kvs().first()?;
        Some(StoredLimit {
            // A value that is not a number in bounds admits nobody until it is fixed.
            max: admitted_limit(kv.key(), kv.value()),
            mod_revision: kv.mod_revision(),
        })
    });
    // The newest key of `get` created before `before`.
    let older = |get: Option<etcd_client::GetResponse>, before: i64| {
        let get = get?;
        let kv = get.kvs().iter().find(|kv| kv.create_revision() < before)?;
        Some((
            String::from_utf8_lossy(kv.key()).into_owned(),
            kv.create_revision(),
        ))
    };
    let (queue_clear, ahead) = match reader {
        Reader::Outside => (gets.next().is_some_and(|g| g.kvs().is_empty()), None),
        Reader::Joining => {
            let ahead = older(gets.next(), revision);
            (ahead.is_none(), ahead)
        }
        Reader::InLine { revision: own, .. } => {
            let present = gets.next().is_some_and(|g| !g.kvs().is_empty());
            let ahead = older(gets.next(), own);
            (present && ahead.is_none(), ahead)
        }
    };
    Snapshot {
        revision,
        slots,
        halt,
        halt_revision,
        limit,
        queue_clear,
        ahead,
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
    fn a_slot_key_parses_back_to_its_group_and_index() {
        assert_eq!(
            parse_slot_key(&slot_key("app/stable", 3)),
            Some(("app/stable", "3"))
        );
        assert_eq!(parse_slot_key("/sidekick/limits/app/stable"), None);
        assert_eq!(parse_slot_key("/sidekick/slots/nogroup"), None);
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(group_prefix("app/stable"), "/sidekick/slots/app/stable/");
        assert_eq!(slot_key("app/stable", 2), "/sidekick/slots/app/stable/2");
        assert_eq!(limit_key("app/stable"), "/sidekick/limits/app/stable");
        assert_eq!(
            queue_key("app/stable", 0x2a),
            "/sidekick/queue/app%2Fstable/000000000000002a"
        );
    }

    #[test]
    fn a_nested_groups_queue_is_not_under_its_parents_prefix() {
        assert!(!queue_prefix("app/stable/eu").starts_with(&queue_prefix("app/stable")));
        assert!(!queue_prefix("a%2Fb").starts_with(&queue_prefix("a/b")));
    }

    #[test]
    fn stored_limits_are_positive_numbers() {
        assert_eq!(parse_limit(b"3"), Some(3));
        assert_eq!(parse_limit(b" 2\n"), Some(2));
        assert_eq!(parse_limit(b"0"), None);
        assert_eq!(parse_limit(b"-1"), None);
        assert_eq!(parse_limit(b"many"), None);
        assert_eq!(parse_limit(b"1000"), Some(1000));
        assert_eq!(parse_limit(b"1001"), None);
        assert_eq!(parse_limit(b"4294967295"), None);
    }
}
