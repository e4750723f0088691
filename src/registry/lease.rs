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
//! Deregistration never waits behind an RPC: connecting, checking, granting and writing race the
//! desired state, and whatever is under way is abandoned the moment it changes. The lease id is
//! chosen here, before the grant, so even a grant or a write whose answer never came is revoked by
//! id. A lease granted before a deregistration was asked for is revoked before any new
//! registration, even when the registration is asked for again at once (a unit that restarted).
//!
//! Protocol: <https://etcd.io/docs/v3.4/learning/api/#lease-api>.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tracing::{info, warn};

mod keepalive;

use super::error::{LeaseError, describe, rpc};
use super::{Desired, Entry, Intent, Published};
use crate::backoff::{Backoff, MAX_DELAY};
use crate::config::EtcdSettings;

/// How long shutdown may spend revoking before it leaves the lease to expire.
const REVOKE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The configured endpoints as one comma-separated string, for connecting and for log lines.
pub fn endpoint_list(etcd: &EtcdSettings) -> String {
    etcd.endpoints
        .iter()
        .map(|u| u.as_str().trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lease we hold (or asked for) and the entries written on it.
#[derive(Debug)]
struct Held {
    id: i64,
    ttl: Duration,
    entries: Vec<Entry>,
    /// After a failure or an unanswered call: check the lease and re-put before trusting it.
    suspect: bool,
    /// etcd answered the grant; until then the lease may or may not exist.
    granted: bool,
    /// [`Intent::withdrawals`] when it was granted: a later deregistration revokes it.
    withdrawals: u64,
}

/// The background task that converges etcd to the desired registration.
pub struct RegistrationLease {
    etcd: EtcdSettings,
    endpoint: String,
    instance: String,
    ttl: Duration,
    desired: watch::Receiver<Intent>,
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
        desired: watch::Receiver<Intent>,
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
            let intent = self.desired.borrow_and_update().clone();
            let outdated = self
                .held
                .as_ref()
                .is_some_and(|held| held.withdrawals != intent.withdrawals);
            let outcome = match intent.desired {
                Desired::Shutdown => {
                    self.shut_down().await;
                    return;
                }
                // Deregistration was asked for since this lease was granted: it goes first.
                _ if outdated => self.revoke_held().await,
                Desired::Absent => self.withdraw().await,
                Desired::Present(entries) => self.hold(entries, intent.withdrawals).await,
            };
            match outcome {
                Ok(()) | Err(LeaseError::Superseded) => {}
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

    /// `Superseded` when the desired state changed since the loop read it.
    fn still_wanted(&self) -> Result<(), LeaseError> {
        match self.desired.has_changed() {
            Ok(false) => Ok(()),
            _ => Err(LeaseError::Superseded),
        }
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

    /// Revokes the lease, if any, then waits for the desired state to change.
    async fn withdraw(&mut self) -> Result<(), LeaseError> {
        self.revoke_held().await?;
        let _ = self.desired.changed().await;
        Ok(())
    }

    /// Revokes the lease we hold or asked for, if any; the keys on it go with it.
    async fn revoke_held(&mut self) -> Result<(), LeaseError> {
        if let Some(id) = self.held.as_ref().map(|held| held.id) {
            let mut client = self.client().await?;
            self.count();
            revoke(&mut client, id).await?;
            info!(instance = %self.instance, lease = format!("{id:x}"), "deregistered: lease revoked");
            self.held = None;
        }
        self.backoff.reset();
        self.published.send_replace(Published::Absent);
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
        revoke(&mut client, id).await?;
        self.held = None;
        Ok(())
    }

    /// Makes sure `entries` are written on a live lease, then keeps it alive until the desired
    /// state changes or something fails. Every step before the keepalive is abandoned as soon as
    /// the desired state changes, so a deregistration never waits for an RPC in flight.
    async fn hold(&mut self, entries: Vec<Entry>, withdrawals: u64) -> Result<(), LeaseError> {
        let mut changed = self.desired.clone();
        let established = tokio::select! {
            biased;
            _ = changed.changed() => Err(LeaseError::Superseded),
            established = self.establish(entries, withdrawals) => established,
        };
        let (mut client, id, ttl) = established?;
        self.backoff.reset();
        self.published
            .send_replace(Published::Registered { lease: id });
        self.keep_alive(&mut client, id, ttl).await
    }

    /// Connects, checks or grants the lease and writes `entries` on it; the client, lease and TTL.
    async fn establish(
        &mut self,
        entries: Vec<Entry>,
        withdrawals: u64,
    ) -> Result<(Client, i64, Duration), LeaseError> {
        let mut client = self.client().await?;
        if let Some(held) = &self.held
            && held.suspect
        {
            let (id, granted) = (held.id, held.granted);
            self.count();
            let alive = client
                .lease_time_to_live(id, None)
                .await
                .map_err(rpc("lease time-to-live"))?;
            match (alive.ttl() > 0, granted) {
                (true, _) => {
                    if let Some(held) = &mut self.held
                        && !granted
                    {
                        // The grant went through; only its answer was lost.
                        held.granted = true;
                        held.ttl = granted_ttl(alive.granted_ttl());
                    }
                }
                (false, true) => return Err(LeaseError::Gone(id)),
                // Never granted after all: grant afresh.
                (false, false) => self.held = None,
            }
        }
        if self.held.is_none() {
            self.grant(&mut client, withdrawals).await?;
        }
        self.put(&mut client, entries).await?;
        let held = self.held.as_ref().ok_or(LeaseError::Superseded)?;
        Ok((client, held.id, held.ttl))
    }

    /// Grants a lease under an id chosen here, recorded before the call: a grant whose answer is
    /// lost can still be checked and revoked by that id.
    async fn grant(&mut self, client: &mut Client, withdrawals: u64) -> Result<(), LeaseError> {
        self.still_wanted()?;
        let requested = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        // etcd lease ids are positive; a collision fails the grant and the next attempt retries.
        let id = fastrand::i64(1..i64::MAX);
        self.held = Some(Held {
            id,
            ttl: self.ttl,
            entries: Vec::new(),
            suspect: true,
            granted: false,
            withdrawals,
        });
        self.count();
        let granted = client
            .lease_grant(requested, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .map_err(rpc("lease grant"))?;
        // The server may grant a different TTL (e.g. its minimum); keep alive by what it granted.
        let ttl = granted_ttl(granted.ttl());
        if ttl != self.ttl {
            info!(instance = %self.instance, "etcd granted a {ttl:?} lease instead of {:?}", self.ttl);
        }
        if let Some(held) = &mut self.held {
            held.ttl = ttl;
            held.granted = true;
        }
        Ok(())
    }

    /// Writes `entries` on the held lease in one transaction, deleting keys of an earlier set that
    /// the new one no longer has. Skipped when nothing changed and the lease is trusted.
    async fn put(&mut self, client: &mut Client, entries: Vec<Entry>) -> Result<(), LeaseError> {
        let held = self.held.as_mut().ok_or(LeaseError::Superseded)?;
        if !held.suspect && held.entries == entries {
            return Ok(());
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
        // Until etcd answers, what is written is unknown: the next attempt checks first.
        held.suspect = true;
        let id = held.id;
        self.still_wanted()?;
        self.count();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(rpc("registration txn"))?;
        info!(instance = %self.instance, lease = format!("{id:x}"),
            keys = %entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(","),
            etcd_requests = self.requests.load(Ordering::Relaxed), "registered");
        if let Some(held) = &mut self.held {
            held.entries = entries;
            held.suspect = false;
        }
        Ok(())
    }
}

/// A TTL in seconds from etcd as a duration of at least one second.
fn granted_ttl(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0).max(1))
}

/// `LeaseRevoke`; a lease that is already gone counts as revoked.
async fn revoke(client: &mut Client, id: i64) -> Result<(), LeaseError> {
    match client.lease_revoke(id).await {
        Ok(_) => Ok(()),
        Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => Ok(()),
        Err(e) => Err(rpc("lease revoke")(e)),
    }
}
