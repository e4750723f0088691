//! Registration of this instance in etcd: the [`Registry`] seam, the etcd implementation
//! ([`EtcdRegistry`], backed by a supervised lease in [`lease`]), the read-only one of `--dry-run`
//! ([`DryRunRegistry`], in [`dry_run`]) and an in-memory one ([`MemoryRegistry`]) for unit tests
//! and runs with registration disabled.
//!
//! Registering and deregistering only state what should be published; the registry converges
//! etcd to it in the background and never gives up while etcd is unreachable. See
//! `docs/registration.md` for the operator's view.

pub mod address;
pub mod any;
pub mod dry_run;
/// Duplicate-instance records, kept in the etcd layer so slots can write them too.
pub use crate::etcd::duplicate;
pub mod error;
pub mod held;
pub mod layout;
pub mod lease;
pub mod record;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::EtcdOptions;
use crate::etcd::EtcdConnection;
pub use any::AnyRegistry;
pub use dry_run::DryRunRegistry;
pub use layout::{Announce, Entry, KeyLayout, Listed};
use lease::RegistrationLease;

/// What the caller wants published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// No registration.
    Absent,
    /// These keys and values, all on one lease.
    Present(Vec<Entry>),
    /// Withdraw the registration and stop.
    Shutdown,
}

/// What the caller wants, and how many deregistrations it has asked for so far: a lease granted
/// before the latest deregistration is revoked even when a registration follows at once, which a
/// channel holding only the latest [`Desired`] would hide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub desired: Desired,
    pub withdrawals: u64,
}

/// What is published in etcd right now, as far as the registry knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Nothing of ours is in etcd (never written, revoked, or expired).
    Absent,
    /// The keys are written on this lease and kept alive.
    Registered { lease: i64 },
    /// etcd does not answer; the last error. A lease may still hold keys until it expires.
    Unreachable { error: String },
    /// Another live instance holds `key` (named `other_host` in its value): nothing is written
    /// until it goes away.
    Duplicate { key: String, other_host: String },
}

/// Publishes one instance's registration. Methods only state intent and return at once.
pub trait Registry: Send {
    /// Publishes `entries` (replacing any previous registration of this instance).
    fn register(&mut self, entries: Vec<Entry>);
    /// Withdraws the registration.
    fn deregister(&mut self);
    /// Follows what is actually published.
    fn published(&self) -> watch::Receiver<Published>;
    /// etcd requests made so far (RPCs and keepalive messages).
    fn requests(&self) -> u64;
    /// Withdraws the registration (revoking the lease) and stops, waiting at most `deadline`.
    fn shutdown(self, deadline: Duration) -> impl Future<Output = ()> + Send;
    /// Holds `entry` on a lease of its own while the registration is withdrawn (the swapping
    /// instance's record, see [`held`]), or withdraws it with `None`.
    fn hold(&mut self, entry: Option<Entry>);
}

/// The etcd registry: a background task holding the registration lease.
pub struct EtcdRegistry {
    instance: String,
    etcd: EtcdConnection,
    desired: watch::Sender<Intent>,
    published: watch::Receiver<Published>,
    task: tokio::task::JoinHandle<()>,
    /// The swapping record's writer, started at its first use.
    held: Option<held::HeldRecord>,
    ttl: Duration,
}

impl EtcdRegistry {
    /// Starts the lease task for `instance` on the current tokio runtime; connects lazily.
    pub fn start(etcd: EtcdOptions, instance: String, ttl: Duration) -> EtcdRegistry {
        let (desired, desired_rx) = watch::channel(Intent {
            desired: Desired::Absent,
            withdrawals: 0,
        });
        let (published_tx, published) = watch::channel(Published::Absent);
        let etcd = EtcdConnection::new(etcd);
        let lease = RegistrationLease::new(
            etcd.clone(),
            instance.clone(),
            ttl,
            desired_rx,
            published_tx,
        );
        let task = tokio::spawn(lease.run());
        EtcdRegistry {
            instance,
            etcd,
            desired,
            published,
            task,
            held: None,
            ttl,
        }
    }
}

impl Registry for EtcdRegistry {
    fn register(&mut self, entries: Vec<Entry>) {
        self.desired
            .send_modify(|intent| intent.desired = Desired::Present(entries));
    }

    fn deregister(&mut self) {
        self.desired.send_modify(|intent| {
            intent.desired = Desired::Absent;
            intent.withdrawals += 1;
        });
    }

    fn published(&self) -> watch::Receiver<Published> {
        self.published.clone()
    }

    fn requests(&self) -> u64 {
        self.etcd.requests()
    }

    fn hold(&mut self, entry: Option<Entry>) {
        match (&self.held, entry) {
            (Some(held), entry) => held.set(entry),
            (None, None) => {}
            (None, Some(entry)) => {
                let held = held::HeldRecord::start(
                    self.etcd.clone(),
                    self.instance.clone(),
                    self.ttl,
                    self.published.clone(),
                );
                held.set(Some(entry));
                self.held = Some(held);
            }
        }
    }

    async fn shutdown(self, deadline: Duration) {
        self.desired
            .send_modify(|intent| intent.desired = Desired::Shutdown);
        if let Some(held) = self.held {
            held.shutdown(deadline).await;
        }
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::warn!(instance = %self.instance, endpoint = %self.etcd.endpoint(),
                error = format!("no answer within {deadline:?}"),
                "registration not withdrawn on shutdown; its lease expires within its TTL");
            task.abort();
        }
    }
}

/// How many changes the in-memory registry remembers: it also serves daemons that run for months
/// with registration disabled, so its history must not grow without end.
pub const MEMORY_HISTORY: usize = 64;

/// An in-memory registry: records the last [`MEMORY_HISTORY`] changes.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    state: Arc<Mutex<Option<Vec<Entry>>>>,
    held: Arc<Mutex<Option<Entry>>>,
    history: Arc<Mutex<VecDeque<Desired>>>,
    published: watch::Sender<Published>,
}

impl MemoryRegistry {
    /// A silent registry for tests.
    pub fn new() -> MemoryRegistry {
        MemoryRegistry {
            state: Arc::default(),
            held: Arc::default(),
            history: Arc::default(),
            published: watch::channel(Published::Absent).0,
        }
    }

    /// The entries published now.
    pub fn current(&self) -> Option<Vec<Entry>> {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The entry held apart from the registration now ([`Registry::hold`]).
    pub fn held(&self) -> Option<Entry> {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The last [`MEMORY_HISTORY`] register/deregister/shutdown calls, oldest first.
    pub fn history(&self) -> Vec<Desired> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, desired: Desired) {
        let entries = match &desired {
            Desired::Present(entries) => Some(entries.clone()),
            Desired::Absent | Desired::Shutdown => None,
        };
        self.published.send_replace(match entries {
            Some(_) => Published::Registered { lease: 0 },
            None => Published::Absent,
        });
        if let Ok(mut state) = self.state.lock() {
            *state = entries;
        }
        if let Ok(mut history) = self.history.lock() {
            if history.len() == MEMORY_HISTORY {
                history.pop_front();
            }
            history.push_back(desired);
        }
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        MemoryRegistry::new()
    }
}

impl Registry for MemoryRegistry {
    fn register(&mut self, entries: Vec<Entry>) {
        self.record(Desired::Present(entries));
    }

    fn deregister(&mut self) {
        self.record(Desired::Absent);
    }

    fn published(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    fn requests(&self) -> u64 {
        0
    }

    async fn shutdown(mut self, _deadline: Duration) {
        self.hold(None);
        self.record(Desired::Shutdown);
    }

    fn hold(&mut self, entry: Option<Entry>) {
        if let Ok(mut held) = self.held.lock() {
            *held = entry;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_history_keeps_only_the_latest_changes() {
        let mut registry = MemoryRegistry::new();
        for _ in 0..MEMORY_HISTORY * 3 {
            registry.register(Vec::new());
            registry.deregister();
        }
        let history = registry.history();
        assert_eq!(history.len(), MEMORY_HISTORY);
        assert_eq!(history.last(), Some(&Desired::Absent));
        assert_eq!(registry.current(), None);
    }
}
