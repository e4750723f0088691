//! The registration lease: one etcd lease per registration, its keys written in one transaction,
//! kept alive by the shared [`LeaseKeeper`] (every TTL/3, Lost at its deadline) and supervised.
//!
//! When the keeper reports the lease lost (expired while we were stopped or cut off, or revoked),
//! the task grants a new one and writes the keys again, after revoking the lost one in case etcd
//! still has it. After a failure it checks a lease it is unsure of with `LeaseTimeToLive` before
//! trusting it. Deregistration revokes the lease, which deletes every key at once.
//!
//! Deregistration never waits behind an RPC: connecting, checking, granting and writing race the
//! desired state, and whatever is under way is abandoned the moment it changes. The lease id is
//! chosen here, before the grant, so even a grant or a write whose answer never came is revoked by
//! id. A lease granted before a deregistration was asked for is revoked before any new
//! registration, even when the registration is asked for again at once (a unit that restarted).
//!
//! Protocol: <https://etcd.io/docs/v3.4/learning/api/#lease-api>.

use std::sync::OnceLock;
use std::time::Duration;

use etcd_client::{Client, LeaseGrantOptions};
use tokio::sync::watch;
use tracing::{info, warn};

mod write;

/// Told of every registration lease granted again after one was lost, by every registration of
/// this process.
type RegrantHook = Box<dyn Fn() + Send + Sync>;
static REGRANT_HOOK: OnceLock<RegrantHook> = OnceLock::new();

/// Calls `hook` each time a registration lease is granted again after etcd lost the one before
/// (expired while the sidekick was stopped, stalled or cut off, or revoked): `sidekick run` counts
/// them in `sidekick_lease_regrants_total`. Set once per process; a later call is ignored.
pub fn on_regrant(hook: impl Fn() + Send + Sync + 'static) {
    let _first = REGRANT_HOOK.set(Box::new(hook));
}

use super::error::{LeaseError, rpc};
use super::{Desired, Entry, Intent, Published};
use crate::backoff::{Backoff, MAX_DELAY};
use crate::etcd::EtcdConnection;
use crate::etcd::clock::boot_now;
use crate::etcd::lease::{LeaseKeeper, LeaseState, ttl_secs};

/// How long shutdown may spend revoking before it leaves the lease to expire.
const REVOKE_TIMEOUT: Duration = Duration::from_millis(1500);

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
    /// Keeps the lease alive once it is known to exist.
    keeper: Option<LeaseKeeper>,
    /// The revision the entries were last written at; the watch on them starts after it.
    revision: i64,
}

/// The background task that converges etcd to the desired registration.
pub struct RegistrationLease {
    etcd: EtcdConnection,
    instance: String,
    ttl: Duration,
    desired: watch::Receiver<Intent>,
    published: watch::Sender<Published>,
    held: Option<Held>,
    /// A lease the keeper gave up on, which etcd may still have: revoked before the next grant.
    orphan: Option<i64>,
    /// A lease was lost and none granted since: the next grant is a regrant ([`on_regrant`]).
    regrant: bool,
    backoff: Backoff,
}

impl RegistrationLease {
    /// A task for `instance` with lease TTL `ttl`, driven by `desired`.
    pub fn new(
        etcd: EtcdConnection,
        instance: String,
        ttl: Duration,
        desired: watch::Receiver<Intent>,
        published: watch::Sender<Published>,
    ) -> RegistrationLease {
        RegistrationLease {
            etcd,
            instance,
            ttl,
            desired,
            published,
            held: None,
            orphan: None,
            regrant: false,
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
                    warn!(instance = %self.instance, endpoint = %self.etcd.endpoint(), lease = format!("{id:x}"),
                        error = %LeaseError::Gone(id), kind = "lease_gone",
                        "registration lease is gone (expired, revoked or not renewed in time); granting a new one");
                    self.held = None;
                    self.orphan = Some(id);
                    self.regrant = true;
                    self.published.send_replace(Published::Absent);
                }
                Err(LeaseError::Duplicate { key, other_host }) => {
                    self.kept_out(key, other_host).await;
                }
                Err(err) => self.retry_after(err).await,
            }
        }
    }

    /// Logs `err` and waits a backoff step (or until the desired state changes).
    async fn retry_after(&mut self, err: LeaseError) {
        // While a registration is wanted, retry often enough that it is back within a TTL of
        // etcd's return (and a held lease can still be kept).
        let wanted = matches!(self.desired.borrow().desired, Desired::Present(_));
        let cap = match &self.held {
            Some(held) => (held.ttl / 3).min(MAX_DELAY),
            None if wanted => (self.ttl / 3).min(MAX_DELAY),
            None => MAX_DELAY,
        };
        self.backoff.set_cap(cap);
        let delay = self.backoff.next_delay();
        warn!(instance = %self.instance, endpoint = %self.etcd.endpoint(), error = %err, kind = err.kind(),
            "etcd registration failed; retrying in {delay:.1?}");
        if let Some(held) = &mut self.held {
            held.suspect = true;
        }
        self.published.send_replace(Published::Unreachable {
            error: err.to_string(),
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.desired.changed() => {}
        }
    }

    /// `Superseded` when the desired state changed since the loop read it.
    fn still_wanted(&self) -> Result<(), LeaseError> {
        match self.desired.has_changed() {
            Ok(false) => Ok(()),
            _ => Err(LeaseError::Superseded),
        }
    }

    /// The client of the shared connection.
    async fn client(&self) -> Result<Client, LeaseError> {
        self.etcd
            .client()
            .await
            .map_err(|e| LeaseError::Connect(format!("{e:#}")))
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
            self.revoke(id).await?;
            info!(instance = %self.instance, lease = format!("{id:x}"), "deregistered: lease revoked");
            self.held = None;
        }
        self.backoff.reset();
        self.published.send_replace(Published::Absent);
        Ok(())
    }

    /// Stops keeping `id` alive and revokes it.
    async fn revoke(&mut self, id: i64) -> Result<(), LeaseError> {
        if let Some(held) = &mut self.held
            && held.id == id
        {
            held.keeper = None;
        }
        crate::etcd::lease::revoke(&self.etcd, id)
            .await
            .map_err(|e| LeaseError::Rpc {
                op: "lease revoke",
                detail: format!("{e:#}"),
            })
    }

    /// Shutdown: one bounded revoke; the TTL covers the rest.
    async fn shut_down(&mut self) {
        let Some(id) = self.held.as_ref().map(|h| h.id) else {
            return;
        };
        match tokio::time::timeout(REVOKE_TIMEOUT, self.revoke(id)).await {
            Ok(Ok(())) => {
                self.held = None;
                info!(instance = %self.instance, "deregistered on shutdown")
            }
            Ok(Err(err)) => {
                warn!(instance = %self.instance, endpoint = %self.etcd.endpoint(), error = %err,
                "could not revoke the registration lease on shutdown; it expires within its TTL")
            }
            Err(_) => warn!(instance = %self.instance, endpoint = %self.etcd.endpoint(),
                error = format!("no answer within {REVOKE_TIMEOUT:?}"),
                "revoking the registration lease timed out on shutdown; it expires within its TTL"),
        }
        self.published.send_replace(Published::Absent);
    }

    /// Makes sure `entries` are written on a live lease, then waits until the desired state
    /// changes or the keeper loses the lease. Every step before that is abandoned as soon as the
    /// desired state changes, so a deregistration never waits for an RPC in flight.
    async fn hold(&mut self, entries: Vec<Entry>, withdrawals: u64) -> Result<(), LeaseError> {
        let mut changed = self.desired.clone();
        let established = tokio::select! {
            biased;
            _ = changed.changed() => Err(LeaseError::Superseded),
            established = self.establish(entries, withdrawals) => established,
        };
        let (id, mut lease, revision) = established?;
        self.backoff.reset();
        self.published
            .send_replace(Published::Registered { lease: id });
        let keys: Vec<String> = self
            .held
            .as_ref()
            .map(|h| h.entries.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        let mut desired = self.desired.clone();
        tokio::select! {
            _ = desired.changed() => Ok(()),
            changed = self.foreign_change(&keys, id, revision + 1) => {
                let what = changed?;
                tracing::warn!(instance = %self.instance, change = %what,
                    "registration changed by someone else; putting it back");
                if let Some(held) = &mut self.held {
                    held.suspect = true;
                }
                Ok(())
            }
            reason = lease.lost() => {
                // Not renewed by its deadline: etcd may have expired it, or may still have it
                // (a restart resets TTLs). The next attempt asks etcd before granting anew.
                if let Some(held) = &mut self.held {
                    held.keeper = None;
                    held.suspect = true;
                }
                Err(LeaseError::Lost(reason))
            }
        }
    }

    /// Connects, checks or grants the lease and writes `entries` on it; the lease id and a
    /// follower of its keeper.
    async fn establish(
        &mut self,
        entries: Vec<Entry>,
        withdrawals: u64,
    ) -> Result<(i64, crate::etcd::lease::LeaseWatch, i64), LeaseError> {
        let mut client = self.client().await?;
        if let Some(held) = &self.held
            && (held.suspect || held.keeper.is_none())
        {
            let (id, granted) = (held.id, held.granted);
            self.etcd.count();
            let sent = boot_now();
            let alive = match client.lease_time_to_live(id, None).await {
                Ok(alive) => alive,
                Err(err) => {
                    self.etcd.failed(&err).await;
                    return Err(rpc("lease time-to-live")(err));
                }
            };
            match (alive.ttl() > 0, granted) {
                (true, _) => {
                    let ttl = granted_ttl(alive.granted_ttl());
                    let left = Duration::from_secs(u64::try_from(alive.ttl()).unwrap_or(0));
                    let name = self.instance.clone();
                    if let Some(held) = &mut self.held {
                        // The grant went through even if its answer was lost.
                        held.granted = true;
                        held.ttl = ttl;
                        let lost = held
                            .keeper
                            .as_ref()
                            .is_none_or(|k| k.state() != LeaseState::Alive);
                        if lost {
                            held.keeper =
                                Some(LeaseKeeper::keep(&self.etcd, id, ttl, sent + left, &name));
                        }
                    }
                }
                (false, true) => return Err(LeaseError::Gone(id)),
                // Never granted after all: grant afresh.
                (false, false) => self.held = None,
            }
        }
        if self.held.is_none() {
            if let Some(orphan) = self.orphan {
                self.revoke(orphan).await?;
                self.orphan = None;
            }
            self.grant(&mut client, withdrawals).await?;
        }
        let revision = self.put(&mut client, entries).await?;
        let held = self.held.as_ref().ok_or(LeaseError::Superseded)?;
        let watch = held
            .keeper
            .as_ref()
            .map(LeaseKeeper::subscribe)
            .ok_or(LeaseError::Superseded)?;
        Ok((held.id, watch, revision))
    }

    /// Grants a lease under an id chosen here, recorded before the call: a grant whose answer is
    /// lost can still be checked and revoked by that id.
    async fn grant(&mut self, client: &mut Client, withdrawals: u64) -> Result<(), LeaseError> {
        self.still_wanted()?;
        // etcd lease ids are positive; a collision fails the grant and the next attempt retries.
        let id = fastrand::i64(1..i64::MAX);
        self.held = Some(Held {
            id,
            ttl: self.ttl,
            entries: Vec::new(),
            suspect: true,
            granted: false,
            withdrawals,
            keeper: None,
            revision: 0,
        });
        self.etcd.count();
        let sent = boot_now();
        let granted = match client
            .lease_grant(
                ttl_secs(self.ttl),
                Some(LeaseGrantOptions::new().with_id(id)),
            )
            .await
        {
            Ok(granted) => granted,
            Err(err) => {
                self.etcd.failed(&err).await;
                return Err(rpc("lease grant")(err));
            }
        };
        // The server may grant a different TTL (e.g. its minimum); keep alive by what it granted.
        let ttl = granted_ttl(granted.ttl());
        if ttl != self.ttl {
            info!(instance = %self.instance, "etcd granted a {ttl:?} lease instead of {:?}", self.ttl);
        }
        let keeper = LeaseKeeper::keep(&self.etcd, id, ttl, sent + ttl, &self.instance);
        if let Some(held) = &mut self.held {
            held.ttl = ttl;
            held.granted = true;
            held.keeper = Some(keeper);
        }
        if std::mem::take(&mut self.regrant)
            && let Some(hook) = REGRANT_HOOK.get()
        {
            hook();
        }
        Ok(())
    }
}

/// A TTL in seconds from etcd as a duration of at least one second.
fn granted_ttl(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0).max(1))
}
