//! The FleetLock backend: a client of an airlock-compatible server
//! (<https://coreos.github.io/zincati/development/fleetlock/protocol/>).
//!
//! `POST <base>/v1/pre-reboot` takes a slot and `POST <base>/v1/steady-state` gives it back, both
//! with the header `fleet-lock-protocol: true` and the body `{"client_params":{"id":…,"group":…}}`,
//! where the group matches `^[a-zA-Z0-9.-]+$`. Any 2xx is a grant. Servers disagree on how they
//! say "slots full" (recorded in `tests/fixtures/fleetlock/`): airlock answers 500 with the
//! kind `failed_lock`, heathcliff26/fleetlock answers 423 `all_slots_full`. So busy is the kind
//! `failed_lock` (any status) or the status 423 (any kind). Every other answer is an error naming
//! the server's `kind` and `value`: airlock's 400 `unknown_group` and heathcliff26's 500 `error`
//! for an unknown group alike, so a misconfigured group fails instead of waiting forever. Error
//! bodies are read up to [`MAX_ERROR_BODY`] bytes.
//!
//! The protocol has no halt marker: a halted instance keeps its lock and records the halt under
//! `daemon.state_dir` ([`halt_record`]), so the halt survives restarts and only `slots resume`
//! lifts it.

pub mod halt_record;

use super::group_name::valid_group;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use self::halt_record::HaltRecord;
use super::halt::HaltMarker;
use super::{Acquisition, Holding, SlotError, SlotHolder, SlotLock, with_jitter};
use crate::logging::redact_url;

/// Lock endpoint, relative to the base URL.
pub const PRE_REBOOT: &str = "v1/pre-reboot";
/// Unlock endpoint, relative to the base URL.
pub const STEADY_STATE: &str = "v1/steady-state";
/// Per-request timeout; the server only touches its etcd (airlock's txn timeout is 3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an error body that is read; the rest is dropped.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// airlock's kind for "all slots currently locked".
const KIND_FAILED_LOCK: &str = "failed_lock";

#[derive(Serialize)]
struct Body<'a> {
    client_params: ClientParams<'a>,
}

#[derive(Serialize)]
struct ClientParams<'a> {
    id: &'a str,
    group: &'a str,
}

/// The error body of a FleetLock server.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    value: String,
}

/// `endpoint` under `base`, also when `base` lacks its trailing `/` (zincati's old bug dropped
/// the last path segment of such a base).
pub fn endpoint_url(base: &Url, endpoint: &str) -> Result<Url, SlotError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(endpoint).map_err(|source| SlotError::Url {
        url: redact_url(&base),
        source,
    })
}

/// Not granted: the HTTP status and the server's `kind`/`value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub kind: String,
    pub value: String,
}

impl Refusal {
    /// "Slots full", to retry later: the kind `failed_lock` (airlock, 500) or the status 423
    /// (heathcliff26/fleetlock, `all_slots_full`). Anything else is an error.
    pub fn is_busy(&self) -> bool {
        self.status == 423 || self.kind == KIND_FAILED_LOCK
    }
}

/// The first `cap` bytes of `resp`'s body; reading stops there, so a huge body costs no memory.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == cap {
            break;
        }
    }
    Ok(body)
}

/// A FleetLock client for one holder id and group.
#[derive(Debug)]
pub struct FleetLockSlots {
    http: reqwest::Client,
    lock_url: Url,
    unlock_url: Url,
    group: String,
    id: String,
    instance: String,
    held: AtomicBool,
    /// Where this host records a halt of the group.
    halt_path: PathBuf,
}

impl FleetLockSlots {
    /// A client of the server at `base` for `who.holder` in `group`, recording halts under
    /// `state_dir`.
    pub fn new(
        base: &Url,
        group: impl Into<String>,
        who: &SlotHolder,
        state_dir: &Path,
    ) -> Result<Self, SlotError> {
        let group = group.into();
        if !valid_group(&group) {
            return Err(SlotError::Group(group));
        }
        let http = crate::http_tls::client_builder(base, Vec::new())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|source: reqwest::Error| SlotError::Http {
                url: redact_url(base),
                source: source.without_url(),
            })?;
        Ok(FleetLockSlots {
            http,
            lock_url: endpoint_url(base, PRE_REBOOT)?,
            unlock_url: endpoint_url(base, STEADY_STATE)?,
            halt_path: halt_record::path(state_dir, &group),
            group,
            id: who.holder.clone(),
            instance: who.instance.clone(),
            held: AtomicBool::new(false),
        })
    }

    /// Posts the client parameters to `url`; `Ok(None)` on 2xx, else the refusal.
    pub async fn post(&self, url: &Url) -> Result<Option<Refusal>, SlotError> {
        let body = Body {
            client_params: ClientParams {
                id: &self.id,
                group: &self.group,
            },
        };
        let body = serde_json::to_vec(&body).map_err(|source| SlotError::Malformed {
            key: redact_url(url),
            source,
        })?;
        // The URL may carry credentials (userinfo, a token in the query): errors show it without.
        let http_err = |source: reqwest::Error| SlotError::Http {
            url: redact_url(url),
            source: source.without_url(),
        };
        let resp = self
            .http
            .post(url.clone())
            .header("fleet-lock-protocol", "true")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(None);
        }
        let text = read_capped(resp, MAX_ERROR_BODY).await.map_err(http_err)?;
        let err: ErrorBody = serde_json::from_slice(&text).unwrap_or_else(|_| ErrorBody {
            kind: String::new(),
            value: String::from_utf8_lossy(&text).chars().take(200).collect(),
        });
        tracing::info!(url = %redact_url(url), status = status.as_u16(), kind = %err.kind, value = %err.value,
            "FleetLock server did not grant");
        Ok(Some(Refusal {
            status: status.as_u16(),
            kind: err.kind,
            value: err.value,
        }))
    }

    /// The halt recorded for this group on this host, if any.
    pub fn halt_record(&self) -> Result<Option<HaltRecord>, SlotError> {
        halt_record::read(&self.halt_path)
    }

    /// Whether this instance halted the group and so keeps its lock until `slots resume`. A
    /// sibling on this host gives its lock back (and can take no new one: acquire sees the
    /// record).
    fn kept_for_halt(&self) -> Result<bool, SlotError> {
        let Some(r) = self.halt_record()?.filter(|r| r.holder == self.id) else {
            return Ok(false);
        };
        tracing::warn!(group = %self.group, version = %r.marker.version,
            path = %self.halt_path.display(),
            "group halted: keeping the FleetLock lock until `sidekick slots resume`");
        Ok(true)
    }

    /// Unlocks this holder id at the server, halted or not: for an operator clearing a holder
    /// that is gone. [`SlotLock::release`] keeps the lock of a halted group instead.
    pub async fn unlock(&self) -> Result<(), SlotError> {
        match self.post(&self.unlock_url).await? {
            None => {
                self.held.store(false, Ordering::SeqCst);
                Ok(())
            }
            Some(r) => Err(SlotError::Refused {
                url: redact_url(&self.unlock_url),
                status: r.status,
                kind: r.kind,
                value: r.value,
            }),
        }
    }
}

impl FleetLockSlots {
    /// [`SlotLock::acquire`] for a rollback leaving `version` after a monitor failure: the
    /// halt recorded for `version` does not refuse it (any other does).
    pub async fn acquire_away(&self, version: &str) -> Result<Acquisition, SlotError> {
        match self.halt_record()? {
            Some(r) if r.marker.version != version => Ok(Acquisition::Halted {
                version: r.marker.version,
                reason: r.marker.reason,
            }),
            _ => self.lock_now().await,
        }
    }

    /// Asks the server for the lock, no halt consulted.
    async fn lock_now(&self) -> Result<Acquisition, SlotError> {
        // The lock is recursive on the server, so asking again while held is harmless.
        match self.post(&self.lock_url).await? {
            None => {
                self.held.store(true, Ordering::SeqCst);
                Ok(Acquisition::Acquired)
            }
            Some(r) if r.is_busy() => Ok(Acquisition::Busy {
                detail: format!("HTTP {}: {}: {}", r.status, r.kind, r.value),
            }),
            Some(r) => Err(SlotError::Refused {
                url: redact_url(&self.lock_url),
                status: r.status,
                kind: r.kind,
                value: r.value,
            }),
        }
    }
}

impl SlotLock for FleetLockSlots {
    async fn acquire(&self, _version: &str) -> Result<Acquisition, SlotError> {
        if let Some(r) = self.halt_record()? {
            return Ok(Acquisition::Halted {
                version: r.marker.version,
                reason: r.marker.reason,
            });
        }
        self.lock_now().await
    }

    async fn release(&self) -> Result<(), SlotError> {
        if self.kept_for_halt()? {
            return Ok(());
        }
        self.unlock().await
    }

    /// The server cannot say whether this id holds a lock, and airlock never frees a crashed
    /// holder's: unlock at every start, as zincati does (unlocking a lock not held succeeds).
    async fn release_stale(&self) -> Result<Vec<String>, SlotError> {
        if self.kept_for_halt()? {
            return Ok(Vec::new());
        }
        self.unlock().await?;
        Ok(vec![format!(
            "any FleetLock lock of id {} in group {} (steady-state sent to {})",
            self.id, self.group, self.unlock_url
        )])
    }

    /// The fence, checked with the server. The protocol has no query, but its lock is
    /// recursive, so asking for it again is the check: a grant means the server counts this id
    /// among its holders now (had the lock been freed behind our back, it is taken again only
    /// where a slot is free, so the group stays within its limit); "busy" means others hold
    /// every slot, ours included: lost.
    async fn held(&self) -> Result<Holding, SlotError> {
        if !self.held.load(Ordering::SeqCst) {
            return Ok(Holding::NotHeld);
        }
        match self.post(&self.lock_url).await? {
            None => Ok(Holding::Held),
            Some(r) if r.is_busy() => {
                self.held.store(false, Ordering::SeqCst);
                Ok(Holding::Lost {
                    reason: format!(
                        "the FleetLock server no longer counts id {} in group {} among its \
                         holders and every slot is taken (HTTP {}: {}: {})",
                        self.id, self.group, r.status, r.kind, r.value
                    ),
                })
            }
            Some(r) => Err(SlotError::Refused {
                url: self.lock_url.to_string(),
                status: r.status,
                kind: r.kind,
                value: r.value,
            }),
        }
    }

    async fn halt(&self, version: &str, reason: &str) -> Result<(), SlotError> {
        let record = HaltRecord {
            holder: self.id.clone(),
            marker: HaltMarker {
                version: version.to_string(),
                reason: reason.to_string(),
                instance: self.instance.clone(),
                since: super::now_rfc3339(),
            },
        };
        if halt_record::write_new(&self.halt_path, &record)? {
            tracing::warn!(group = %self.group, version, reason,
                path = %self.halt_path.display(),
                "update group halted: this instance keeps its FleetLock lock");
        }
        Ok(())
    }

    async fn resume(&self) -> Result<(), SlotError> {
        if self.halt_record()?.is_none() {
            return Ok(());
        }
        // Unlock first: if that fails, the record stays and the group stays halted.
        self.unlock().await?;
        halt_record::remove(&self.halt_path)?;
        Ok(())
    }

    /// Only a halt recorded on this host: the protocol has no halt marker others could see.
    async fn halted(&self) -> Result<Option<HaltMarker>, SlotError> {
        Ok(self.halt_record()?.map(|r| r.marker))
    }

    async fn wait_for_change(&self, timeout: Duration) {
        // The protocol has no way to wait for a release: poll with jitter.
        tokio::time::sleep(with_jitter(timeout)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_join_with_and_without_a_trailing_slash() {
        for base in ["http://h:9090/fleet", "http://h:9090/fleet/"] {
            let base = Url::parse(base).unwrap();
            assert_eq!(
                endpoint_url(&base, PRE_REBOOT).unwrap().as_str(),
                "http://h:9090/fleet/v1/pre-reboot"
            );
        }
        let root = Url::parse("http://h:9090").unwrap();
        assert_eq!(
            endpoint_url(&root, STEADY_STATE).unwrap().as_str(),
            "http://h:9090/v1/steady-state"
        );
    }

    #[test]
    fn only_failed_lock_and_423_refusals_are_busy() {
        let refusal = |status, kind: &str| Refusal {
            status,
            kind: kind.to_string(),
            value: String::new(),
        };
        for (status, kind) in [
            (500, "failed_lock"),
            (409, "failed_lock"),
            (423, "all_slots_full"),
            (423, ""),
        ] {
            assert!(refusal(status, kind).is_busy(), "{status} {kind}");
        }
        for (status, kind) in [
            (500, "error"),
            (500, "failed_sem_init"),
            (503, ""),
            (400, "unknown_group"),
            (400, "invalid_client_identity"),
            (301, ""),
            (404, ""),
            (405, ""),
        ] {
            assert!(!refusal(status, kind).is_busy(), "{status} {kind}");
        }
    }

    #[test]
    fn body_has_the_airlock_shape() {
        let body = Body {
            client_params: ClientParams {
                id: "abc",
                group: "web",
            },
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"client_params":{"id":"abc","group":"web"}}"#
        );
    }
}
