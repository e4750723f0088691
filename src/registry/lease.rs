//! The registration lease: one etcd lease per registration, its keys written in one transaction,
//! kept alive every TTL/3 and supervised.
//!
//! etcd-client's keepalive is a single gRPC stream that dies for good when etcd restarts. So the
//! task here checks the lease with `LeaseTimeToLive` after any failure: while the lease lives it
//! re-opens the stream (and re-puts the keys, in case they were lost); once the lease is gone
//! (expired while we were stopped, or revoked) it grants a new one and re-puts. The keys are named
//! by instance, so a re-put on a new lease replaces the old key: one instance never has two live
//! registrations. Deregistration revokes the lease, which deletes every key at once.
//!
//! Protocol: <https://etcd.io/docs/v3.4/learning/api/#lease-api>.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::{Desired, Entry, Published};
use crate::backoff::{Backoff, MAX_DELAY};
use crate::config::EtcdSettings;

/// How long shutdown may spend revoking before it leaves the lease to expire.
const REVOKE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Why the registration is not (or no longer) held.
#[derive(Debug, Error)]
pub enum LeaseError {
    #[error("cannot reach etcd: {0}")]
    Connect(String),
    #[error("{op} failed: {detail}")]
    Rpc { op: &'static str, detail: String },
    #[error("lease {0:x} is gone (expired or revoked)")]
    Gone(i64),
    #[error("keepalive stream ended")]
    StreamEnded,
    #[error("no keepalive answer within one keepalive interval")]
    Stalled,
}

impl LeaseError {
    /// Short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseError::Connect(_) => "connect",
            LeaseError::Rpc { .. } => "rpc",
            LeaseError::Gone(_) => "lease_gone",
            LeaseError::StreamEnded => "stream_ended",
            LeaseError::Stalled => "stalled",
        }
    }
}

/// An etcd error with its causes: etcd-client's errors do not expose `source()`, so the useful
/// part (a TLS or auth failure) would be lost in `Display` alone.
pub fn describe(err: &etcd_client::Error) -> String {
    let inner: Option<&dyn std::error::Error> = match err {
        etcd_client::Error::TransportError(e) => Some(e),
        etcd_client::Error::GRpcStatus(e) => Some(e),
        _ => None,
    };
    let mut text = err.to_string();
    let mut cause = inner.and_then(std::error::Error::source);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

fn rpc(op: &'static str) -> impl FnOnce(etcd_client::Error) -> LeaseError {
    move |e| LeaseError::Rpc {
        op,
        detail: describe(&e),
    }
}

/// The configured endpoints as one comma-separated string, for connecting and for log lines.
pub fn endpoint_list(etcd: &EtcdSettings) -> String {
    etcd.endpoints
        .iter()
        .map(|u| u.as_str().trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lease we hold and the entries written on it.
#[derive(Debug)]
struct Held {
    id: i64,
    ttl: Duration,
    entries: Vec<Entry>,
    /// After a failure: check the lease and re-put before trusting it again.
    suspect: bool,
}

/// The background task that converges etcd to the desired registration.
pub struct RegistrationLease {
    etcd: EtcdSettings,
    endpoint: String,
    instance: String,
    ttl: Duration,
    desired: watch::Receiver<Desired>,
    published: watch::Sender<Published>,
    requests: Arc<AtomicU64>,
    client: Option<Client>,
    held: Option<Held>,
    backoff: Backoff,
}

impl RegistrationLease {
    /// A task for `instance` with lease TTL `ttl`, driven by `desired`.
    pub fn new(
        etcd: EtcdSettings,
        instance: String,
        ttl: Duration,
        desired: watch::Receiver<Desired>,
        published: watch::Sender<Published>,
        requests: Arc<AtomicU64>,
    ) -> RegistrationLease {
        let endpoint = endpoint_list(&etcd);
        RegistrationLease {
            etcd,
            endpoint,
            instance,
            ttl,
            desired,
            published,
            requests,
            client: None,
            held: None,
            backoff: Backoff::new(MAX_DELAY),
        }
    }

    /// Runs until [`Desired::Shutdown`]; never returns early on etcd errors.
    pub async fn run(mut self) {
        loop {
            let desired = self.desired.borrow_and_update().clone();
            let outcome = match desired {
                Desired::Shutdown => {
                    self.shut_down().await;
                    return;
                }
                Desired::Absent => self.withdraw().await,
                Desired::Present(entries) => self.hold(entries).await,
            };
            match outcome {
                Ok(()) => {}
                Err(LeaseError::Gone(id)) => {
                    warn!(instance = %self.instance, endpoint = %self.endpoint, lease = format!("{id:x}"),
                        error = %LeaseError::Gone(id), kind = "lease_gone",
                        "registration lease is gone (expired or revoked); granting a new one");
                    self.held = None;
                    self.published.send_replace(Published::Absent);
                }
                Err(err) => self.retry_after(err).await,
            }
        }
    }

    /// Logs `err`, drops the connection and waits a backoff step (or until the desired state
    /// changes).
    async fn retry_after(&mut self, err: LeaseError) {
        let cap = match &self.held {
            // Retry often enough that the lease can be kept while etcd comes back.
            Some(held) => (held.ttl / 3).min(MAX_DELAY),
            None => MAX_DELAY,
        };
        self.backoff.set_cap(cap);
        let delay = self.backoff.next_delay();
        warn!(instance = %self.instance, endpoint = %self.endpoint, error = %err, kind = err.kind(),
            "etcd registration failed; retrying in {delay:.1?}");
        if let Some(held) = &mut self.held {
            held.suspect = true;
        }
        self.client = None;
        self.published.send_replace(Published::Unreachable {
            error: err.to_string(),
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.desired.changed() => {}
        }
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The client, connecting and probing with a real call first if needed.
    async fn client(&mut self) -> Result<Client, LeaseError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let options = crate::etcd::connect_options(&self.etcd)
            .map_err(|e| LeaseError::Connect(format!("{e:#}")))?;
        let endpoints: Vec<&str> = self.endpoint.split(',').collect();
        if self.etcd.auth.is_some() {
            self.count(); // Authenticate, made by connect.
        }
        let mut client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| LeaseError::Connect(describe(&e)))?;
        self.count();
        client
            .status()
            .await
            .map_err(|e| LeaseError::Connect(describe(&e)))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Revokes the lease, if any; the keys on it go with it.
    async fn withdraw(&mut self) -> Result<(), LeaseError> {
        if let Some(held) = &self.held {
            let id = held.id;
            let mut client = self.client().await?;
            self.count();
            match client.lease_revoke(id).await {
                Ok(_) => {}
                // Already gone: nothing left to withdraw.
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => {}
                Err(e) => return Err(rpc("lease revoke")(e)),
            }
            info!(instance = %self.instance, lease = format!("{id:x}"), "deregistered: lease revoked");
            self.held = None;
        }
        self.backoff.reset();
        self.published.send_replace(Published::Absent);
        let _ = self.desired.changed().await;
        Ok(())
    }

    /// Shutdown: one bounded revoke; the TTL covers the rest.
    async fn shut_down(&mut self) {
        if self.held.is_none() {
            return;
        }
        match tokio::time::timeout(REVOKE_TIMEOUT, self.revoke_once()).await {
            Ok(Ok(())) => info!(instance = %self.instance, "deregistered on shutdown"),
            Ok(Err(err)) => {
                warn!(instance = %self.instance, endpoint = %self.endpoint, error = %err,
                "could not revoke the registration lease on shutdown; it expires within its TTL")
            }
            Err(_) => warn!(instance = %self.instance, endpoint = %self.endpoint,
                error = format!("no answer within {REVOKE_TIMEOUT:?}"),
                "revoking the registration lease timed out on shutdown; it expires within its TTL"),
        }
        self.published.send_replace(Published::Absent);
    }

    async fn revoke_once(&mut self) -> Result<(), LeaseError> {
        let Some(id) = self.held.as_ref().map(|h| h.id) else {
            return Ok(());
        };
        let mut client = self.client().await?;
        self.count();
        client.lease_revoke(id).await.map_err(rpc("lease revoke"))?;
        self.held = None;
        Ok(())
    }

    /// Makes sure `entries` are written on a live lease, then keeps it alive until the desired
    /// state changes or something fails.
    async fn hold(&mut self, entries: Vec<Entry>) -> Result<(), LeaseError> {
        let mut client = self.client().await?;
        if let Some(held) = &self.held
            && held.suspect
        {
            let id = held.id;
            self.count();
            let ttl = client
                .lease_time_to_live(id, None)
                .await
                .map_err(rpc("lease time-to-live"))?
                .ttl();
            if ttl <= 0 {
                return Err(LeaseError::Gone(id));
            }
        }
        let held = match self.held.take() {
            Some(held) => held,
            None => self.grant(&mut client).await?,
        };
        let held = self.put(&mut client, held, entries).await?;
        let (id, ttl) = (held.id, held.ttl);
        self.held = Some(held);
        self.backoff.reset();
        self.published
            .send_replace(Published::Registered { lease: id });
        self.keep_alive(&mut client, id, ttl).await
    }

    async fn grant(&mut self, client: &mut Client) -> Result<Held, LeaseError> {
        let requested = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        self.count();
        let granted = client
            .lease_grant(requested, None)
            .await
            .map_err(rpc("lease grant"))?;
        // The server may grant a different TTL (e.g. its minimum); keep alive by what it granted.
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0).max(1));
        if ttl != self.ttl {
            info!(instance = %self.instance, "etcd granted a {ttl:?} lease instead of {:?}", self.ttl);
        }
        Ok(Held {
            id: granted.id(),
            ttl,
            entries: Vec::new(),
            suspect: true,
        })
    }

    /// Writes `entries` on the lease in one transaction, deleting keys of an earlier set that the
    /// new one no longer has. Skipped when nothing changed and the lease is trusted.
    async fn put(
        &mut self,
        client: &mut Client,
        mut held: Held,
        entries: Vec<Entry>,
    ) -> Result<Held, LeaseError> {
        if !held.suspect && held.entries == entries {
            return Ok(held);
        }
        let stale = held
            .entries
            .iter()
            .filter(|(key, _)| !entries.iter().any(|(k, _)| k == key))
            .map(|(key, _)| TxnOp::delete(key.as_str(), None));
        let puts = entries.iter().map(|(key, value)| {
            TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(held.id)),
            )
        });
        let ops: Vec<TxnOp> = stale.chain(puts).collect();
        self.count();
        let put = client.txn(Txn::new().and_then(ops)).await;
        if let Err(e) = put {
            // Keep the lease id: the next attempt checks it before granting another.
            self.held = Some(held);
            return Err(rpc("registration txn")(e));
        }
        info!(instance = %self.instance, lease = format!("{:x}", held.id), ttl = ?held.ttl,
            keys = %entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(","),
            etcd_requests = self.requests.load(Ordering::Relaxed), "registered");
        held.entries = entries;
        held.suspect = false;
        Ok(held)
    }

    /// Sends a keepalive every TTL/3 and reads the answers, until the desired state changes
    /// (`Ok`) or the stream or lease fails (`Err`).
    async fn keep_alive(
        &mut self,
        client: &mut Client,
        id: i64,
        ttl: Duration,
    ) -> Result<(), LeaseError> {
        self.count();
        let (mut keeper, mut stream) = client
            .lease_keep_alive(id)
            .await
            .map_err(rpc("lease keepalive"))?;
        debug!(
            etcd_requests = self.requests.load(Ordering::Relaxed),
            "keepalive stream open"
        );
        let period = (ttl / 3).max(Duration::from_millis(500));
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut unanswered = false;
        // `keeper` sent one keepalive on open: its answer is the first message.
        loop {
            tokio::select! {
                _ = self.desired.changed() => return Ok(()),
                _ = tick.tick() => {
                    if unanswered {
                        return Err(LeaseError::Stalled);
                    }
                    self.count();
                    keeper.keep_alive().await.map_err(rpc("lease keepalive"))?;
                    unanswered = true;
                    debug!(etcd_requests = self.requests.load(Ordering::Relaxed), "keepalive sent");
                }
                message = stream.message() => match message {
                    Ok(Some(answer)) if answer.ttl() > 0 => unanswered = false,
                    Ok(Some(_)) => return Err(LeaseError::Gone(id)),
                    Ok(None) => return Err(LeaseError::StreamEnded),
                    Err(e) => return Err(rpc("lease keepalive")(e)),
                },
            }
        }
    }
}
