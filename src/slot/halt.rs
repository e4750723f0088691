//! The halt marker: `/sidekick/halt/<group>`, a key with no lease whose JSON value names the
//! version that failed, why, which instance saw it and when. While it exists no slot of the
//! group is granted; only `sidekick slots resume` removes it, so a bad version stops the rollout
//! instead of reaching every instance.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::SlotError;

/// Prefix of every halt marker.
pub const HALT_PREFIX: &str = "/sidekick/halt/";

/// The value of a halt marker, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltMarker {
    pub version: String,
    pub reason: String,
    pub instance: String,
    /// When the group was halted, RFC 3339.
    pub since: String,
}

/// The marker key of `group`.
pub fn halt_key(group: &str) -> String {
    format!("{HALT_PREFIX}{group}")
}

/// Decodes a marker value; one that is not ours still halts, with the raw text as the reason.
pub fn decode(raw: &[u8]) -> HaltMarker {
    serde_json::from_slice(raw).unwrap_or_else(|_| HaltMarker {
        version: "?".into(),
        reason: String::from_utf8_lossy(raw).into_owned(),
        instance: "?".into(),
        since: String::new(),
    })
}

/// Writes the marker unless one exists (the first failure's reason is the useful one). Returns
/// whether this call created it.
pub async fn put(client: &mut Client, group: &str, marker: &HaltMarker) -> Result<bool, SlotError> {
    let key = halt_key(group);
    let value = serde_json::to_vec(marker).map_err(|source| SlotError::Malformed {
        key: key.clone(),
        source,
    })?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), value, None)]);
    Ok(client.txn(txn).await?.succeeded())
}

/// Reads the marker of `group`, if any.
pub async fn get(client: &mut Client, group: &str) -> Result<Option<HaltMarker>, SlotError> {
    let resp = client.get(halt_key(group), None).await?;
    Ok(resp.kvs().first().map(|kv| decode(kv.value())))
}

/// Removes the marker of `group`; returns the one removed, if any.
pub async fn remove(client: &mut Client, group: &str) -> Result<Option<HaltMarker>, SlotError> {
    let resp = client
        .delete(
            halt_key(group),
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        )
        .await?;
    Ok(resp.prev_kvs().first().map(|kv| decode(kv.value())))
}

/// Every halt marker, as (group, marker), sorted by group.
pub async fn list(client: &mut Client) -> Result<Vec<(String, HaltMarker)>, SlotError> {
    let kvs = crate::etcd::paged::get_prefix(client, HALT_PREFIX).await?;
    let mut halts: Vec<(String, HaltMarker)> = kvs
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let group = key.strip_prefix(HALT_PREFIX)?.to_string();
            Some((group, decode(kv.value())))
        })
        .collect();
    halts.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(halts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_under_the_halt_prefix() {
        assert_eq!(halt_key("app/stable"), "/sidekick/halt/app/stable");
    }

    #[test]
    fn a_foreign_value_still_halts_with_its_text_as_reason() {
        let m = decode(b"stop everything");
        assert_eq!(m.reason, "stop everything");
        assert_eq!(m.version, "?");
    }
}
