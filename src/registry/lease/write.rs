//! Writing the registration: one transaction that only writes keys that are absent or already on
//! this registration's lease (or written by this host before), and the watch that puts back a key
//! deleted or changed by someone else while registered.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use tracing::{debug, info};

use super::RegistrationLease;
use crate::registry::duplicate::{DuplicateRecord, host_of, record_key};
use crate::registry::error::{LeaseError, rpc};
use crate::registry::{Entry, Published};

impl RegistrationLease {
    /// Writes `entries` on the held lease in one transaction, deleting keys of an earlier set that
    /// the new one no longer has; the revision written at. Skipped when nothing changed and the
    /// lease is trusted. A key on another live lease, naming another host, is a duplicate
    /// instance: nothing is written ([`LeaseError::Duplicate`]).
    pub(super) async fn put(
        &mut self,
        client: &mut Client,
        entries: Vec<Entry>,
    ) -> Result<i64, LeaseError> {
        let held = self.held.as_mut().ok_or(LeaseError::Superseded)?;
        if !held.suspect && held.entries == entries {
            return Ok(held.revision);
        }
        let id = held.id;
        // A first write on this lease registers; a later one only rewrites values (the
        // instance record's phase, a reloaded key) of a registration already there.
        let first_write = held.entries.is_empty();
        let stale = held
            .entries
            .iter()
            .filter(|(key, _)| !entries.iter().any(|(k, _)| k == key))
            .map(|(key, _)| TxnOp::delete(key.as_str(), None));
        let puts = entries.iter().map(|(key, value)| {
            TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(id)),
            )
        });
        let records = entries
            .iter()
            .map(|(key, _)| TxnOp::delete(record_key(key), None));
        let ops: Vec<TxnOp> = stale.chain(puts).chain(records).collect();
        // What we expect: keys we wrote are still on our lease, the others absent.
        let expected: Vec<Compare> = entries
            .iter()
            .map(
                |(key, _)| match held.entries.iter().any(|(k, _)| k == key) {
                    true => Compare::lease(key.as_str(), CompareOp::Equal, id),
                    false => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                },
            )
            .collect();
        let gets: Vec<TxnOp> = entries
            .iter()
            .map(|(key, _)| TxnOp::get(key.as_str(), None))
            .collect();
        // Until etcd answers, what is written is unknown: the next attempt checks first.
        held.suspect = true;
        self.still_wanted()?;
        let first = Txn::new()
            .when(expected)
            .and_then(ops.clone())
            .or_else(gets);
        let mut resp = self.txn(client, first).await?;
        if !resp.succeeded() {
            let seen = resp.op_responses();
            let precise = self.compares_for(client, &entries, seen).await?;
            resp = self
                .txn(client, Txn::new().when(precise).and_then(ops))
                .await?;
            if !resp.succeeded() {
                return Err(LeaseError::Rpc {
                    op: "registration txn",
                    detail: "a key changed while it was being written; retrying".into(),
                });
            }
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let keys = entries
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(",");
        match first_write {
            true => info!(instance = %self.instance, lease = format!("{id:x}"), keys = %keys,
                etcd_requests = self.etcd.requests(), "registered"),
            false => debug!(instance = %self.instance, lease = format!("{id:x}"), keys = %keys,
                etcd_requests = self.etcd.requests(), "registration rewritten"),
        }
        if let Some(held) = &mut self.held {
            held.entries = entries;
            held.suspect = false;
            held.revision = revision;
        }
        Ok(revision)
    }

    async fn txn(
        &self,
        client: &mut Client,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, LeaseError> {
        self.etcd.count();
        match client.txn(txn).await {
            Ok(resp) => Ok(resp),
            Err(err) => {
                self.etcd.failed(&err).await;
                Err(rpc("registration txn")(err))
            }
        }
    }

    /// Compares that hold exactly what was read for each key, or the duplicate found.
    async fn compares_for(
        &mut self,
        client: &mut Client,
        entries: &[Entry],
        seen: Vec<etcd_client::TxnOpResponse>,
    ) -> Result<Vec<Compare>, LeaseError> {
        let id = self
            .held
            .as_ref()
            .map(|h| h.id)
            .ok_or(LeaseError::Superseded)?;
        let mut compares = Vec::new();
        let gets = seen.into_iter().filter_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        for ((key, ours), get) in entries.iter().zip(gets) {
            let Some(kv) = get.kvs().first() else {
                compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                continue;
            };
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            let (other_lease, other_host) = (kv.lease(), host_of(&value));
            // A key on another lease that names another host belongs to a live duplicate, unless
            // that lease is gone. One naming our host is an earlier run of ours: replaced.
            if other_lease != 0 && other_lease != id && other_host != host_of(ours) {
                self.etcd.count();
                let alive = match client.lease_time_to_live(other_lease, None).await {
                    Ok(resp) => resp.ttl() > 0,
                    Err(err) => {
                        self.etcd.failed(&err).await;
                        return Err(rpc("lease time-to-live")(err));
                    }
                };
                if alive {
                    return Err(self.duplicate(client, key, ours, other_host).await);
                }
            }
            compares.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            ));
        }
        Ok(compares)
    }

    /// Records that `key` is held by another instance (on our lease, so the record goes with us)
    /// and returns the error that says so.
    async fn duplicate(
        &mut self,
        client: &mut Client,
        key: &str,
        ours: &str,
        other_host: String,
    ) -> LeaseError {
        let found = LeaseError::Duplicate {
            key: key.to_string(),
            other_host: other_host.clone(),
        };
        let Some(id) = self.held.as_ref().map(|h| h.id) else {
            return found;
        };
        let record = DuplicateRecord {
            key: key.to_string(),
            host: host_of(ours),
            held_by: other_host,
            since: crate::slot::now_rfc3339(),
        };
        let Ok(value) = serde_json::to_string(&record) else {
            return found;
        };
        self.etcd.count();
        let put = client
            .put(
                record_key(key),
                value,
                Some(PutOptions::new().with_lease(id)),
            )
            .await;
        if let Err(err) = put {
            self.etcd.failed(&err).await;
        }
        found
    }

    /// Another live instance holds `key`: says so, then waits for it to go away (the key is
    /// deleted), for the TTL, or for the desired state to change.
    pub(super) async fn kept_out(&mut self, key: String, other_host: String) {
        tracing::error!(instance = %self.instance, key = %key, other_host = %other_host,
            kind = "duplicate",
            "duplicate instance: another live instance holds this registration; not overwriting it, retrying every TTL");
        self.published.send_replace(Published::Duplicate {
            key: key.clone(),
            other_host,
        });
        if let Some(held) = &mut self.held {
            held.suspect = true;
        }
        let retry = duplicate_retry(self.ttl);
        let gone = async {
            // Only a delete counts here: the other instance's own writes are not ours to undo.
            let mut stream = loop {
                match self.etcd.client().await {
                    Ok(mut client) => match client.watch(key.as_str(), None).await {
                        Ok(stream) => break stream,
                        Err(_) => std::future::pending::<()>().await,
                    },
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            while let Ok(Some(resp)) = stream.message().await {
                let deleted = resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == etcd_client::EventType::Delete);
                if deleted || resp.canceled() {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        let mut desired = self.desired.clone();
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = desired.changed() => {}
            _ = gone => {}
        }
    }

    /// Returns when one of our keys is deleted, or changed by someone else, after `from`; an
    /// error when the watch breaks.
    pub(super) async fn foreign_change(
        &self,
        keys: &[String],
        id: i64,
        from: i64,
    ) -> Result<String, LeaseError> {
        let mut client = self
            .etcd
            .client()
            .await
            .map_err(|e| LeaseError::Connect(format!("{e:#}")))?;
        let options = || WatchOptions::new().with_start_revision(from);
        let mut watched = keys.iter();
        let first = watched.next().ok_or(LeaseError::Superseded)?;
        self.etcd.count();
        let mut stream = client
            .watch(first.as_str(), Some(options()))
            .await
            .map_err(rpc("registration watch"))?;
        for key in watched {
            self.etcd.count();
            stream
                .watch(key.as_str(), Some(options()))
                .await
                .map_err(rpc("registration watch"))?;
        }
        tracing::debug!(instance = %self.instance, etcd_requests = self.etcd.requests(),
            "watching the registration's keys");
        loop {
            let resp = stream
                .message()
                .await
                .map_err(rpc("registration watch"))?
                .ok_or(LeaseError::Rpc {
                    op: "registration watch",
                    detail: "the watch ended".into(),
                })?;
            if resp.canceled() || resp.compact_revision() > 0 {
                return Ok("the watch was cancelled".into());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match event.event_type() {
                    EventType::Delete => return Ok(format!("{key} was deleted")),
                    EventType::Put if kv.lease() != id => {
                        return Ok(format!("{key} was overwritten"));
                    }
                    EventType::Put => {}
                }
            }
        }
    }
}

/// How long a duplicate instance waits before it looks again, unless the key goes away first.
pub(super) fn duplicate_retry(ttl: Duration) -> Duration {
    ttl.max(Duration::from_secs(1))
}
