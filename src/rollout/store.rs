//! The rollout keys in etcd: the stored policy `/sidekick/policy/<group>` (JSON; authoritative
//! over `[rollout]` while it exists, as the stored slot limit is over `slot.max`), the pause
//! `/sidekick/paused/<group>` and each version's state `/sidekick/rollouts/<group>/<version>`
//! (last [`KEPT_VERSIONS`] per group), changed with compare-and-swap by whoever writes it.
//!
//! Everything read is untrusted: a value that does not parse is an error naming its key.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::policy::{PolicyText, RolloutPolicy};
use super::state::{Malformed, VersionState};
use crate::registry::record::{INSTANCES_PREFIX, InstanceRecord};
use crate::slot::halt::{self, HaltMarker};

pub const POLICY_PREFIX: &str = "/sidekick/policy/";
pub const PAUSED_PREFIX: &str = "/sidekick/paused/";
pub const ROLLOUTS_PREFIX: &str = "/sidekick/rollouts/";
/// Versions whose state a group keeps; older ones are deleted when a new one starts.
pub const KEPT_VERSIONS: usize = 50;
/// Compare-and-swap attempts before a change gives up. Each lost attempt means another writer's
/// change went in, so the attempts a change needs grow with the writers at once: every holder of
/// a round records its swap's start and end on the version's one key, and with `slot.max = 50`
/// and swaps of one length, 50 of them write within a few milliseconds (`fleet_sim` saw 16
/// attempts run out). The bound stops a change only when far more instances write at once.
/// A lost attempt reads the key again with a plain read, not from the failed transaction's
/// else branch: etcd runs a transaction's reads in its write path, and with 50 writers the
/// losers' reads of a state of up to 500 swap records held up every other write (`fleet_sim`:
/// release p99 77–277 ms against 60–108 ms).
const CAS_TRIES: u32 = 128;

pub fn policy_key(group: &str) -> String {
    format!("{POLICY_PREFIX}{group}")
}

pub fn paused_key(group: &str) -> String {
    format!("{PAUSED_PREFIX}{group}")
}

/// The prefix of `group`'s version states, ending in `/`.
pub fn rollouts_prefix(group: &str) -> String {
    format!("{ROLLOUTS_PREFIX}{group}/")
}

pub fn version_key(group: &str, version: &str) -> String {
    format!("{}{version}", rollouts_prefix(group))
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("{key} kept changing during {CAS_TRIES} compare-and-swap attempts")]
    Contended { key: String },
    #[error("cannot reach etcd: {0}")]
    Connect(String),
}

impl RolloutError {
    /// Whether trying again may succeed (etcd unreachable or busy); a malformed value stays so
    /// until someone fixes it.
    pub fn retried(&self) -> bool {
        !matches!(self, RolloutError::Malformed(_))
    }
}

/// The pause of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paused {
    pub since: Timestamp,
    pub by: String,
}

/// Parses a stored policy.
pub fn decode_policy(key: &str, raw: &[u8]) -> Result<RolloutPolicy, Malformed> {
    let fail = |message: String| Malformed {
        key: key.to_string(),
        message,
    };
    let text: PolicyText =
        serde_json::from_slice(raw).map_err(|e| fail(format!("not a rollout policy: {e}")))?;
    text.validate().map_err(|e| fail(e.to_string()))
}

fn decode_paused(key: &str, raw: &[u8]) -> Result<Paused, Malformed> {
    serde_json::from_slice(raw).map_err(|e| Malformed {
        key: key.to_string(),
        message: format!("not a pause record: {e}"),
    })
}

/// The policy in force: the stored one, else the configured one.
pub fn effective<'a>(
    stored: Option<&'a RolloutPolicy>,
    configured: &'a RolloutPolicy,
) -> &'a RolloutPolicy {
    stored.unwrap_or(configured)
}

/// Stores `policy` for `group`; returns whether one was stored before.
pub async fn set_policy(
    client: &mut Client,
    group: &str,
    policy: &RolloutPolicy,
) -> Result<bool, RolloutError> {
    let value = serde_json::to_vec(&policy.to_text()).unwrap_or_default();
    let options = etcd_client::PutOptions::new().with_prev_key();
    let resp = client.put(policy_key(group), value, Some(options)).await?;
    Ok(resp.prev_key().is_some())
}

/// Removes `group`'s stored policy; returns whether there was one.
pub async fn clear_policy(client: &mut Client, group: &str) -> Result<bool, RolloutError> {
    Ok(client.delete(policy_key(group), None).await?.deleted() > 0)
}

/// Pauses `group` unless it is paused; returns the pause in force.
pub async fn pause(client: &mut Client, group: &str, by: &str) -> Result<Paused, RolloutError> {
    let key = paused_key(group);
    let record = Paused {
        since: Timestamp::now(),
        by: by.to_string(),
    };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), value, None)])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let resp = client.txn(txn).await?;
    if resp.succeeded() {
        return Ok(record);
    }
    match gets(resp).first().and_then(|g| g.kvs().first()) {
        Some(kv) => Ok(decode_paused(&key, kv.value())?),
        None => Ok(record),
    }
}

/// Lifts the pause and the halt of `group`; returns what was lifted.
pub async fn resume(
    client: &mut Client,
    group: &str,
) -> Result<(Option<Paused>, Option<HaltMarker>), RolloutError> {
    let key = paused_key(group);
    let resp = client
        .delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
        .await?;
    // A pause that does not parse is lifted all the same: it said "paused".
    let paused = resp.prev_kvs().first().map(|kv| {
        decode_paused(&key, kv.value()).unwrap_or(Paused {
            since: Timestamp::UNIX_EPOCH,
            by: String::from_utf8_lossy(kv.value()).into_owned(),
        })
    });
    let halt = halt::remove(client, group).await.map_err(|e| match e {
        crate::slot::SlotError::Etcd(e) => RolloutError::Etcd(e),
        other => RolloutError::Malformed(Malformed {
            key: halt::halt_key(group),
            message: other.to_string(),
        }),
    })?;
    Ok((paused, halt))
}

/// Everything about one group, read at one revision.
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    /// The etcd revision it was read at (a watch goes on from the next).
    pub revision: i64,
    pub stored_policy: Option<RolloutPolicy>,
    pub paused: Option<Paused>,
    pub halt: Option<HaltMarker>,
    /// Version states, newest start first.
    pub versions: Vec<VersionState>,
    /// Instance records of the group (unreadable ones left out, as `sidekick status` does).
    pub instances: Vec<(String, InstanceRecord)>,
    /// How many of the group's update slots are held (read with the instance records only): a
    /// holder is mid-swap even while its record is briefly absent, moving between the
    /// registration's lease and a hold lease.
    pub slots_held: usize,
}

fn gets(resp: etcd_client::TxnResponse) -> Vec<GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        })
        .collect()
}

/// Reads `group`'s policy, pause, halt, version states and instance records in one transaction.
pub async fn read_group(client: &mut Client, group: &str) -> Result<GroupSnapshot, RolloutError> {
    read(client, group, true).await
}

/// [`read_group`] without the instance records (`instances` is empty): what a slot request's
/// gate, the failure budget and the canary settle read. A group's instance records grow with
/// the group, and every instance asks the gate at each slot request, so reading them there
/// costs the fleet N² record reads at a rollout's start (measured with `examples/fleet_sim`).
pub async fn read_gate(client: &mut Client, group: &str) -> Result<GroupSnapshot, RolloutError> {
    read(client, group, false).await
}

async fn read(
    client: &mut Client,
    group: &str,
    with_instances: bool,
) -> Result<GroupSnapshot, RolloutError> {
    let prefix = GetOptions::new().with_prefix();
    let rollouts = rollouts_prefix(group);
    let instances = format!("{INSTANCES_PREFIX}{group}/");
    let mut ops = vec![
        TxnOp::get(policy_key(group), None),
        TxnOp::get(paused_key(group), None),
        TxnOp::get(halt::halt_key(group), None),
        TxnOp::get(rollouts.as_str(), Some(prefix.clone())),
    ];
    let slots = crate::slot::keys::group_prefix(group);
    if with_instances {
        ops.push(TxnOp::get(instances.as_str(), Some(prefix.clone())));
        ops.push(TxnOp::get(slots.as_str(), Some(prefix.with_keys_only())));
    }
    let txn = Txn::new().and_then(ops);
    let resp = client.txn(txn).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let got = gets(resp);
    let first = |i: usize| got.get(i).and_then(|g| g.kvs().first());
    let stored_policy = match first(0) {
        Some(kv) => Some(decode_policy(&policy_key(group), kv.value())?),
        None => None,
    };
    let paused = match first(1) {
        Some(kv) => Some(decode_paused(&paused_key(group), kv.value())?),
        None => None,
    };
    let halt = first(2).map(|kv| halt::decode(kv.value()));
    let mut versions = Vec::new();
    for kv in got.get(3).map(|g| g.kvs()).unwrap_or_default() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(version) = key.strip_prefix(&rollouts).filter(|v| !v.contains('/')) else {
            continue; // a nested group's key
        };
        versions.push(VersionState::decode(&key, version, kv.value())?);
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.started));
    let records = got
        .get(4)
        .map(|g| g.kvs())
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(kv.key()).ok()?;
            let name = key.strip_prefix(&instances).filter(|n| !n.contains('/'))?;
            Some((name.to_string(), serde_json::from_slice(kv.value()).ok()?))
        })
        .collect();
    let slots_held = got
        .get(5)
        .map(|g| g.kvs())
        .unwrap_or_default()
        .iter()
        .filter(|kv| {
            std::str::from_utf8(kv.key())
                .ok()
                .and_then(|key| key.strip_prefix(&slots))
                .is_some_and(|index| !index.contains('/')) // not a nested group's slot
        })
        .count();
    Ok(GroupSnapshot {
        revision,
        stored_policy,
        paused,
        halt,
        versions,
        instances: records,
        slots_held,
    })
}

/// Reads one version's state.
pub async fn get_version(
    client: &mut Client,
    group: &str,
    version: &str,
) -> Result<Option<(VersionState, i64)>, RolloutError> {
    let key = version_key(group, version);
    let resp = client.get(key.as_str(), None).await?;
    match resp.kvs().first() {
        Some(kv) => Ok(Some((
            VersionState::decode(&key, version, kv.value())?,
            kv.mod_revision(),
        ))),
        None => Ok(None),
    }
}

/// Changes `version`'s state with compare-and-swap: `change` gets the current state (`None`
/// before anyone started the version) and returns the new one, or `None` to leave it as it is.
/// It may run more than once, when another instance wrote in between. Returns the state in
/// force afterwards. A version's first write deletes the group's states beyond the newest
/// [`KEPT_VERSIONS`].
pub async fn update_version<F>(
    client: &mut Client,
    group: &str,
    version: &str,
    mut change: F,
) -> Result<Option<VersionState>, RolloutError>
where
    F: FnMut(Option<&VersionState>) -> Option<VersionState>,
{
    let key = version_key(group, version);
    for _ in 0..CAS_TRIES {
        let current = get_version(client, group, version).await?;
        let Some(next) = change(current.as_ref().map(|(s, _)| s)) else {
            return Ok(current.map(|(s, _)| s));
        };
        let compare = match &current {
            Some((_, revision)) => Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision),
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
        };
        let txn =
            Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key.as_str(), next.encode(), None)]);
        if client.txn(txn).await?.succeeded() {
            if current.is_none() {
                prune(client, group).await?;
            }
            return Ok(Some(next));
        }
    }
    Err(RolloutError::Contended { key })
}

/// Deletes the states of `group` beyond the newest [`KEPT_VERSIONS`] (by start); a value that
/// does not parse counts as oldest.
pub async fn prune(client: &mut Client, group: &str) -> Result<usize, RolloutError> {
    let prefix = rollouts_prefix(group);
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut states: Vec<(Option<Timestamp>, String, i64)> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let version = key.strip_prefix(&prefix).filter(|v| !v.contains('/'))?;
            let started = VersionState::decode(&key, version, kv.value())
                .ok()
                .map(|s| s.started);
            Some((started, key, kv.mod_revision()))
        })
        .collect();
    states.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut deleted = 0;
    for (_, key, revision) in states.into_iter().skip(KEPT_VERSIONS) {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        if client.txn(txn).await?.succeeded() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(policy_key("web/stable"), "/sidekick/policy/web/stable");
        assert_eq!(paused_key("web/stable"), "/sidekick/paused/web/stable");
        assert_eq!(
            version_key("web/stable", "2.0.0"),
            "/sidekick/rollouts/web/stable/2.0.0"
        );
    }

    #[test]
    fn a_malformed_stored_policy_names_its_key_and_field() {
        let key = policy_key("web/stable");
        let err = decode_policy(&key, br#"{"canary":5000}"#).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains(&key) && text.contains("`canary`"), "{text}");
        let err = decode_policy(&key, b"three").expect_err("refused");
        assert!(err.to_string().contains("not a rollout policy"), "{err}");
    }

    #[test]
    fn the_stored_policy_wins_over_the_configured_one() {
        let configured = RolloutPolicy::default();
        let stored = RolloutPolicy {
            canary: 2,
            ..RolloutPolicy::default()
        };
        assert_eq!(effective(Some(&stored), &configured).canary, 2);
        assert_eq!(effective(None, &configured).canary, 0);
    }
}
