//! The FleetLock backend: a client of an airlock-compatible server
//! (<https://coreos.github.io/zincati/development/fleetlock/protocol/>).
//!
//! `POST <base>/v1/pre-reboot` takes a slot and `POST <base>/v1/steady-state` gives it back, both
//! with the header `fleet-lock-protocol: true` and the body `{"client_params":{"id":…,"group":…}}`.
//! Any 2xx is a grant; anything else is not, and the server's `{"kind":…,"value":…}` is logged.
//! airlock answers "all slots locked" with 500 `failed_lock`, other servers with 423: both are
//! simply "busy". The protocol has no halt marker: a halted holder keeps its lock instead, which
//! stops the group the way zincati and airlock intend, until `resume` unlocks it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{Acquisition, Holding, SlotError, SlotHolder, SlotLock, with_jitter};

/// Lock endpoint, relative to the base URL.
pub const PRE_REBOOT: &str = "v1/pre-reboot";
/// Unlock endpoint, relative to the base URL.
pub const STEADY_STATE: &str = "v1/steady-state";
/// Per-request timeout; the server only touches its etcd (airlock's txn timeout is 3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
        url: base.to_string(),
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

/// A FleetLock client for one holder id and group.
#[derive(Debug)]
pub struct FleetLockSlots {
    http: reqwest::Client,
    lock_url: Url,
    unlock_url: Url,
    group: String,
    id: String,
    held: AtomicBool,
    halted: AtomicBool,
}

impl FleetLockSlots {
    /// A client of the server at `base` for `who.holder` in `group`.
    pub fn new(base: &Url, group: impl Into<String>, who: &SlotHolder) -> Result<Self, SlotError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|source| SlotError::Http {
                url: base.to_string(),
                source,
            })?;
        Ok(FleetLockSlots {
            http,
            lock_url: endpoint_url(base, PRE_REBOOT)?,
            unlock_url: endpoint_url(base, STEADY_STATE)?,
            group: group.into(),
            id: who.holder.clone(),
            held: AtomicBool::new(false),
            halted: AtomicBool::new(false),
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
            key: url.to_string(),
            source,
        })?;
        let http_err = |source| SlotError::Http {
            url: url.to_string(),
            source,
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
        let text = resp.text().await.map_err(http_err)?;
        let err: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|_| ErrorBody {
            kind: String::new(),
            value: text.chars().take(200).collect(),
        });
        tracing::info!(url = %url, status = status.as_u16(), kind = %err.kind, value = %err.value,
            "FleetLock server did not grant");
        Ok(Some(Refusal {
            status: status.as_u16(),
            kind: err.kind,
            value: err.value,
        }))
    }

    async fn unlock(&self) -> Result<(), SlotError> {
        match self.post(&self.unlock_url).await? {
            None => {
                self.held.store(false, Ordering::SeqCst);
                Ok(())
            }
            Some(r) => Err(SlotError::Refused {
                url: self.unlock_url.to_string(),
                status: r.status,
                kind: r.kind,
                value: r.value,
            }),
        }
    }
}

impl SlotLock for FleetLockSlots {
    async fn acquire(&self, _version: &str) -> Result<Acquisition, SlotError> {
        // The lock is recursive on the server, so asking again while held is harmless.
        match self.post(&self.lock_url).await? {
            None => {
                self.held.store(true, Ordering::SeqCst);
                Ok(Acquisition::Acquired)
            }
            Some(r) => Ok(Acquisition::Busy {
                detail: format!("HTTP {}: {}: {}", r.status, r.kind, r.value),
            }),
        }
    }

    async fn release(&self) -> Result<(), SlotError> {
        if self.halted.load(Ordering::SeqCst) {
            tracing::warn!(group = %self.group, "group halted: keeping the FleetLock lock");
            return Ok(());
        }
        self.unlock().await
    }

    async fn release_stale(&self) -> Result<(), SlotError> {
        self.unlock().await
    }

    async fn held(&self) -> Result<Holding, SlotError> {
        Ok(match self.held.load(Ordering::SeqCst) {
            true => Holding::Held,
            false => Holding::NotHeld,
        })
    }

    async fn halt(&self, version: &str, reason: &str) -> Result<(), SlotError> {
        tracing::warn!(group = %self.group, version, reason,
            "update group halted: this instance keeps its FleetLock lock");
        self.halted.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn resume(&self) -> Result<(), SlotError> {
        self.halted.store(false, Ordering::SeqCst);
        self.unlock().await
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
