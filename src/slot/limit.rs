//! The limit of a slot group stored in etcd, `/sidekick/limits/<group>` (a decimal number), set by
//! `sidekick slots set-max`. It is authoritative over each process's `slot.max`, which applies only
//! while none is stored, so every sidekick of a group enforces the same limit. Lowering it evicts
//! no holder; nobody is admitted until the holders drop below it.

use etcd_client::Client;

use super::SlotError;
pub use super::keys::{LIMIT_PREFIX, MAX_STORED_LIMIT, limit_key, parse_limit};

/// Stores `max` as the limit of `group`; returns the limit it replaced, if any.
pub async fn set(client: &mut Client, group: &str, max: u32) -> Result<Option<u32>, SlotError> {
    let resp = client
        .put(
            limit_key(group),
            max.to_string(),
            Some(etcd_client::PutOptions::new().with_prev_key()),
        )
        .await?;
    Ok(resp.prev_key().and_then(|kv| parse_limit(kv.value())))
}

/// Every stored limit, as (group, limit), sorted by group; a value that is not a positive number
/// is shown as 0 (it admits nobody).
pub async fn list(client: &mut Client) -> Result<Vec<(String, u32)>, SlotError> {
    let kvs = crate::etcd::paged::get_prefix(client, LIMIT_PREFIX).await?;
    let mut limits: Vec<(String, u32)> = kvs
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let group = key.strip_prefix(LIMIT_PREFIX)?.to_string();
            Some((group, parse_limit(kv.value()).unwrap_or(0)))
        })
        .collect();
    limits.sort();
    Ok(limits)
}
