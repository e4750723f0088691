//! The registry the configuration asks for, as one type: enum dispatch over the implementations,
//! so the driver is built once whatever runs underneath.

use std::time::Duration;

use tokio::sync::watch;

use super::{DryRunRegistry, Entry, EtcdRegistry, MemoryRegistry, Published, Registry};
use crate::config::{EtcdOptions, RegistrationSettings};

/// Any of the registries.
pub enum AnyRegistry {
    /// Registrations in etcd under a lease.
    Etcd(EtcdRegistry),
    /// `--dry-run`: reads etcd (when there is one), prints each write it would make.
    DryRun(DryRunRegistry),
    /// `registration.enabled = false`: follows the unit, publishes nothing.
    Memory(MemoryRegistry),
}

impl AnyRegistry {
    /// The registry for `registration`: in memory when disabled, the read-only one in a dry run
    /// (against `etcd`, or against nothing when there is no etcd), else etcd.
    pub fn from_settings(
        registration: &RegistrationSettings,
        etcd: Option<&EtcdOptions>,
        instance: &str,
        dry_run: bool,
    ) -> AnyRegistry {
        let instance = instance.to_string();
        match (registration.enabled, dry_run, etcd) {
            (false, _, _) => AnyRegistry::Memory(MemoryRegistry::new()),
            (true, true, etcd) => AnyRegistry::DryRun(DryRunRegistry::start(
                etcd.cloned(),
                instance,
                registration.ttl,
            )),
            (true, false, Some(etcd)) => AnyRegistry::Etcd(EtcdRegistry::start(
                etcd.clone(),
                instance,
                registration.ttl,
            )),
            // Only a dry run may run without etcd; treat a missing one as nothing to write to.
            (true, false, None) => {
                AnyRegistry::DryRun(DryRunRegistry::start(None, instance, registration.ttl))
            }
        }
    }
}

impl Registry for AnyRegistry {
    fn register(&mut self, entries: Vec<Entry>) {
        match self {
            AnyRegistry::Etcd(r) => r.register(entries),
            AnyRegistry::DryRun(r) => r.register(entries),
            AnyRegistry::Memory(r) => r.register(entries),
        }
    }

    fn deregister(&mut self) {
        match self {
            AnyRegistry::Etcd(r) => r.deregister(),
            AnyRegistry::DryRun(r) => r.deregister(),
            AnyRegistry::Memory(r) => r.deregister(),
        }
    }

    fn published(&self) -> watch::Receiver<Published> {
        match self {
            AnyRegistry::Etcd(r) => r.published(),
            AnyRegistry::DryRun(r) => r.published(),
            AnyRegistry::Memory(r) => r.published(),
        }
    }

    fn requests(&self) -> u64 {
        match self {
            AnyRegistry::Etcd(r) => r.requests(),
            AnyRegistry::DryRun(r) => r.requests(),
            AnyRegistry::Memory(r) => r.requests(),
        }
    }

    fn hold(&mut self, entry: Option<Entry>) {
        match self {
            AnyRegistry::Etcd(r) => r.hold(entry),
            AnyRegistry::DryRun(r) => r.hold(entry),
            AnyRegistry::Memory(r) => r.hold(entry),
        }
    }

    async fn shutdown(self, deadline: Duration) {
        match self {
            AnyRegistry::Etcd(r) => r.shutdown(deadline).await,
            AnyRegistry::DryRun(r) => r.shutdown(deadline).await,
            AnyRegistry::Memory(r) => r.shutdown(deadline).await,
        }
    }
}
