//! The update slots' own options (`[slot]`), validated by `config`, which composes them
//! into its settings.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// Where update slots are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotBackend {
    Etcd,
    Fleetlock,
    None,
}

/// The slot backend, how many of the group may update at once, the group and the lease TTL.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotOptions {
    pub backend: SlotBackend,
    pub max: NonZeroU32,
    pub group: String,
    pub ttl: Duration,
    pub fleetlock_url: Option<Url>,
}
