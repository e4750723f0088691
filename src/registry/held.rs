//! The instance record while the registration is withdrawn for a swap: written on a lease of its
//! own, so the fleet view keeps the instance being swapped (phase `swapping`, its target and
//! step) while the load balancer's keys are gone. The record key is under
//! `/sidekick/instances/`, which no load balancer reads.
//!
//! The record is written only once etcd confirms the registration gone (its lease revoked took
//! the record key with it), and only where the key is absent or already on this lease: when the
//! registration comes back with the record, its write wins, and revoking this lease afterwards
//! does not touch a key bound to another lease.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{Entry, Published};
use crate::etcd::EtcdConnection;
use crate::etcd::lease::{LeaseKeeper, LeaseState};

/// Pause before trying a failed write again.
const RETRY: Duration = Duration::from_secs(1);

/// The held record's writer: a task that follows what the driver wants held.
pub struct HeldRecord {
    desired: watch::Sender<Option<Entry>>,
    task: JoinHandle<()>,
}

impl HeldRecord {
    /// Starts the writer for `instance`, following the registration through `published`.
    pub fn start(
        etcd: EtcdConnection,
        instance: String,
        ttl: Duration,
        published: watch::Receiver<Published>,
    ) -> HeldRecord {
        let (desired, wanted) = watch::channel(None);
        let writer = Writer {
            etcd,
            instance,
            ttl,
            wanted,
            published,
            held: None,
        };
        HeldRecord {
            desired,
            task: tokio::spawn(writer.run()),
        }
    }

    /// Holds `entry` (replacing an earlier one), or withdraws it with `None`.
    pub fn set(&self, entry: Option<Entry>) {
        self.desired.send_if_modified(|now| {
            let changed = *now != entry;
            *now = entry;
            changed
        });
    }

    /// Withdraws the record and stops, waiting at most `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        self.set(None);
        drop(self.desired);
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

struct Writer {
    etcd: EtcdConnection,
    instance: String,
    ttl: Duration,
    wanted: watch::Receiver<Option<Entry>>,
    published: watch::Receiver<Published>,
    /// The lease and what is written on it.
    held: Option<(LeaseKeeper, Option<Entry>)>,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let retry = match self.converge().await {
                Ok(()) => None,
                Err(err) => {
                    warn!(instance = %self.instance, "failed to write the swapping instance record: {err:#}; trying again in {RETRY:?}");
                    Some(RETRY)
                }
            };
            let open = tokio::select! {
                changed = self.wanted.changed() => changed.is_ok(),
                changed = self.published.changed() => changed.is_ok(),
                _ = sleep_some(retry) => true,
                _ = lost(&self.held) => true,
            };
            if !open {
                let _ = self.withdraw().await;
                return;
            }
        }
    }

    /// Makes etcd hold what is wanted now.
    async fn converge(&mut self) -> anyhow::Result<()> {
        let wanted = self.wanted.borrow().clone();
        let Some(entry) = wanted else {
            return self.withdraw().await;
        };
        // The registration's lease still holds the key: its revoke would delete ours.
        if !matches!(*self.published.borrow(), Published::Absent) {
            return Ok(());
        }
        if self
            .held
            .as_ref()
            .is_some_and(|(keeper, _)| keeper.state() != LeaseState::Alive)
        {
            self.held = None;
        }
        if self
            .held
            .as_ref()
            .is_some_and(|(_, written)| written.as_ref() == Some(&entry))
        {
            return Ok(());
        }
        let keeper = match self.held.take() {
            Some((keeper, _)) => keeper,
            None => {
                LeaseKeeper::grant(&self.etcd, self.ttl, None, "swapping instance record").await?
            }
        };
        let result = self.put(&entry, keeper.id()).await;
        if let Ok(written) = &result {
            debug!(instance = %self.instance, key = %entry.0, written, "swapping instance record");
        }
        let written = result.as_ref().ok().map(|_| entry);
        self.held = Some((keeper, written));
        result.map(|_| ())
    }

    /// Puts `entry` on lease `id` where its key is absent or already ours; false when another
    /// lease holds it (the registration is back).
    async fn put(&self, entry: &Entry, id: i64) -> anyhow::Result<bool> {
        let mut client = self.etcd.client().await?;
        let (key, value) = (entry.0.as_str(), entry.1.as_str());
        let put = || TxnOp::put(key, value, Some(PutOptions::new().with_lease(id)));
        for compare in [
            Compare::create_revision(key, CompareOp::Equal, 0),
            Compare::lease(key, CompareOp::Equal, id),
        ] {
            self.etcd.count();
            let txn = Txn::new().when([compare]).and_then([put()]);
            match client.txn(txn).await {
                Ok(resp) if resp.succeeded() => return Ok(true),
                Ok(_) => {}
                Err(err) => {
                    self.etcd.failed(&err).await;
                    return Err(anyhow::Error::new(err).context("record txn"));
                }
            }
        }
        Ok(false)
    }

    /// Revokes the lease (and with it the record, where it is still on it).
    async fn withdraw(&mut self) -> anyhow::Result<()> {
        match self.held.take() {
            Some((keeper, _)) => keeper.revoke(&self.etcd).await,
            None => Ok(()),
        }
    }
}

async fn sleep_some(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the held lease is lost; never without one.
async fn lost(held: &Option<(LeaseKeeper, Option<Entry>)>) {
    match held {
        Some((keeper, _)) => {
            let mut watch = keeper.subscribe();
            watch.lost().await;
        }
        None => std::future::pending().await,
    }
}
