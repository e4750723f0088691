//! Releasing the slots an earlier run of this holder left behind ([`SlotLock::release_stale`]):
//! the keys of the group whose value names this holder id and this host (or no host: a value
//! written by an older version), each deleted by a transaction on the revision read, and the
//! lease each was bound to revoked when a run of this sidekick granted it (its lease ledger,
//! [`crate::slot::ledger`], records it), so whatever else that run put on it (its place in the
//! queue) goes too. A lease the ledger does not know is somebody else's, planted under this
//! holder id: the key goes, the lease stays (it expires with its owner). A key naming this holder id on another host belongs to a clone (the duplicate-holder
//! rule of [`super::acquire`]) and is left alone.
//!
//!
//! A release ([`SlotLock::release`]) deletes only this holder's own key the same way: the key it
//! holds, compared on its value and on its lease; or, holding none (the first release after a
//! restart), the keys of this holder id on this host, compared on the value and lease read. The
//! key it holds is first deleted in one transaction compared on the value it wrote (or read when
//! it took the key over); only when that value changed is the group read to compare on the value
//! found, so a release frees the slot with one request.
//!
//! [`SlotLock::release_stale`]: crate::slot::SlotLock::release_stale
//! [`SlotLock::release`]: crate::slot::SlotLock::release

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::EtcdSlots;
use crate::slot::SlotError;
use crate::slot::keys::{SlotEntry, read_group};

impl EtcdSlots {
    /// Deletes this holder's slots on this host and revokes their leases; names each released.
    pub(super) async fn release_own_stale(&self) -> Result<Vec<String>, SlotError> {
        let mut state = self.state.lock().await;
        let released = self.delete_own(self.own_entries().await).await;
        let released = self.note(released).await?;
        let granted = self.granted_leases();
        for (key, lease) in &released {
            if state.key.as_deref() == Some(key.as_str()) {
                state.key = None;
            }
            if *lease == 0 {
                continue;
            }
            let revoked = match state.lease.take_if(|l| l.id() == *lease) {
                Some(ours) => ours.revoke(&self.etcd).await,
                None if granted.contains(lease) => {
                    crate::etcd::lease::revoke(&self.etcd, *lease).await
                }
                None => {
                    tracing::warn!(group = %self.group, %key, lease = %format!("{lease:x}"),
                        "the released slot was bound to a lease this sidekick did not grant \
                         (not in its lease ledger); the lease is left to its owner");
                    continue;
                }
            };
            if let Err(err) = revoked {
                tracing::warn!(group = %self.group, %key, error = %format!("{err:#}"),
                    "the released slot's old lease was not revoked; it expires within its TTL");
            }
        }
        // A place in line kept from a wait that nobody came back to: give it up too.
        if state.key.is_none() {
            self.drop_idle_lease(&mut state).await;
        }
        Ok(released
            .into_iter()
            .map(|(key, lease)| format!("{key} (lease {lease:x})"))
            .collect())
    }

    /// The slot leases a run of this sidekick granted, as its ledger records them; none
    /// without a ledger or when it cannot be read (then nothing of an earlier run is revoked).
    fn granted_leases(&self) -> Vec<i64> {
        let Some(ledger) = &self.ledger else {
            return Vec::new();
        };
        ledger.read().unwrap_or_else(|err| {
            tracing::warn!(group = %self.group, "{err}; no lease of an earlier run is revoked");
            Vec::new()
        })
    }

    /// Deletes this holder's own slot (see the module doc): `held` is the key and lease it holds,
    /// if any, and `value` the value it wrote there. A clone's key (this holder id on another
    /// host) is never touched.
    pub(super) async fn delete_ours(
        &self,
        held: Option<(&str, i64)>,
        value: Option<Vec<u8>>,
    ) -> Result<Vec<String>, SlotError> {
        if let (Some((key, lease)), Some(value)) = (held, value) {
            let txn = Txn::new()
                .when([
                    Compare::value(key, CompareOp::Equal, value),
                    Compare::lease(key, CompareOp::Equal, lease),
                ])
                .and_then([TxnOp::delete(key, None)]);
            if self.client().await?.txn(txn).await?.succeeded() {
                return Ok(vec![key.to_string()]);
            }
        }
        let mut released = Vec::new();
        for entry in self.own_entries().await? {
            let lease = match held {
                Some((key, _)) if key != entry.key => continue,
                Some((_, lease)) => lease,
                None => entry.lease,
            };
            let key = entry.key.as_str();
            let txn = Txn::new()
                .when([
                    Compare::value(key, CompareOp::Equal, entry.raw.clone()),
                    Compare::lease(key, CompareOp::Equal, lease),
                ])
                .and_then([TxnOp::delete(key, None)]);
            if self.client().await?.txn(txn).await?.succeeded() {
                released.push(entry.key);
            }
        }
        Ok(released)
    }

    /// The group's keys naming this holder id and this host; a clone's are logged and skipped.
    async fn own_entries(&self) -> Result<Vec<SlotEntry>, SlotError> {
        let entries = read_group(&mut self.client().await?, &self.group).await?;
        Ok(entries
            .into_iter()
            .filter(|entry| entry.holder() == Some(self.who.holder.as_str()))
            .filter(|entry| {
                let host = entry.value.as_ref().and_then(|v| v.host.as_ref());
                match host.filter(|h| **h != self.host) {
                    None => true,
                    Some(other) => {
                        tracing::warn!(group = %self.group, key = %entry.key,
                            holder = %self.who.holder, other_host = %other, this_host = %self.host,
                            "a slot of this holder id is held on another host (cloned /etc/machine-id?); not releasing it");
                        false
                    }
                }
            })
            .collect())
    }

    /// Deletes each entry unless it changed since it was read; the keys deleted and their leases.
    async fn delete_own(
        &self,
        entries: Result<Vec<SlotEntry>, SlotError>,
    ) -> Result<Vec<(String, i64)>, SlotError> {
        let mut released = Vec::new();
        for entry in entries? {
            let key = entry.key.as_str();
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key,
                    CompareOp::Equal,
                    entry.mod_revision,
                )])
                .and_then([TxnOp::delete(key, None)]);
            if self.client().await?.txn(txn).await?.succeeded() {
                released.push((entry.key, entry.lease));
            }
        }
        Ok(released)
    }
}
