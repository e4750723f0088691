//! The one lease keeper, under both the registration and the update slots.
//!
//! etcd-client sends one keepalive per call and its stream dies for good when etcd restarts, so
//! the keeper drives the Go client's rules itself:
//! - a keepalive every TTL/3;
//! - a stream whose answer is TTL/3 late is re-opened (a stalled member, a half-open connection);
//! - an answer with TTL ≤ 0 means etcd no longer has the lease: Lost;
//! - the deadline is the send time of the last answered keepalive plus the TTL it renewed. etcd
//!   cannot expire the lease before then, and may at any time after. At the deadline the lease is
//!   Lost, and it stays Lost.
//!
//! [`LeaseKeeper::state`] and [`LeaseWatch`] compare the deadline themselves on the boot clock
//! ([`super::clock`]), so a frozen process, a stalled runtime or a suspended host never goes on
//! believing it holds a lease that etcd has expired.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::LeaseGrantOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::EtcdConnection;
use super::clock::boot_now;
use crate::backoff::Backoff;

/// Shortest keepalive period, whatever the TTL.
const MIN_PERIOD: Duration = Duration::from_millis(100);
const NO_ANSWER: &str = "no answer from etcd within the lease TTL";

/// Told of every keepalive that failed or came back late, by every keeper of this process.
type FailureHook = Box<dyn Fn() + Send + Sync>;
static KEEPALIVE_FAILURE_HOOK: OnceLock<FailureHook> = OnceLock::new();

/// Calls `hook` for every keepalive that failed or came back late, in every keeper of this
/// process (a stream that did not open, closed, errored or answered TTL/3 late, a keepalive that
/// could not be sent, no answer by the deadline): `sidekick run` counts them in
/// `sidekick_lease_keepalive_failures_total`. Set once per process; a later call is ignored.
pub fn on_keepalive_failure(hook: impl Fn() + Send + Sync + 'static) {
    let _first = KEEPALIVE_FAILURE_HOOK.set(Box::new(hook));
}

/// One keepalive failed or came back late (see [`on_keepalive_failure`]).
fn keepalive_failed() {
    if let Some(hook) = KEEPALIVE_FAILURE_HOOK.get() {
        hook();
    }
}

/// What the keeper knows about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed by etcd, and the deadline has not passed.
    Alive,
    /// Expired, revoked, or not renewed by its deadline; final.
    Lost { reason: String },
}

/// State shared between the keeper task and its readers.
#[derive(Debug)]
struct Shared {
    /// Boot-clock nanoseconds at which the lease may have expired.
    deadline: AtomicU64,
    lost: AtomicBool,
    state: watch::Sender<LeaseState>,
    /// Who the lease is for, named in the one warning a loss logs.
    owner: Owner,
}

/// What the loss warning names.
#[derive(Debug, Default)]
struct Owner {
    id: i64,
    name: String,
    endpoint: String,
}

impl Shared {
    fn remaining(&self) -> Duration {
        let deadline = Duration::from_nanos(self.deadline.load(Ordering::SeqCst));
        deadline.saturating_sub(boot_now())
    }

    /// Moves the deadline to `until`; a deadline already passed stays passed (Lost is final).
    fn extend(&self, until: Duration) {
        if self.current() != LeaseState::Alive {
            return;
        }
        let nanos = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.deadline.fetch_max(nanos, Ordering::SeqCst);
    }

    fn current(&self) -> LeaseState {
        if !self.lost.load(Ordering::SeqCst) && self.remaining().is_zero() {
            let _reported = self.lose(NO_ANSWER);
        }
        if self.lost.load(Ordering::SeqCst) {
            return match self.state.borrow().clone() {
                // `lose` has set the flag and is about to send the reason.
                LeaseState::Alive => LeaseState::Lost {
                    reason: NO_ANSWER.into(),
                },
                lost => lost,
            };
        }
        LeaseState::Alive
    }

    /// The lease is lost: whoever sees it first (the keeper task, or a reader past the deadline,
    /// who may then drop the keeper before its task runs again) logs the one warning.
    /// Whether this call reported it.
    fn lose(&self, reason: &str) -> bool {
        let first = self.set_lost(reason);
        if first {
            let owner = &self.owner;
            tracing::warn!(lease = format!("{:x}", owner.id), owner = %owner.name,
                endpoint = %owner.endpoint, reason, "lease lost");
        }
        first
    }

    /// The lease is no longer ours by our own doing (revoked, keeper dropped): no warning.
    fn retire(&self, reason: &str) {
        self.set_lost(reason);
    }

    /// Makes the state Lost; whether this call did it.
    fn set_lost(&self, reason: &str) -> bool {
        let first = !self.lost.swap(true, Ordering::SeqCst);
        if first {
            self.state.send_replace(LeaseState::Lost {
                reason: reason.to_string(),
            });
        }
        first
    }
}

/// A granted lease kept alive by a background task until revoked or dropped.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: i64,
    ttl: Duration,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Seconds for a lease grant: `ttl` rounded up, at least 1.
pub fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
        .unwrap_or(i64::MAX)
        .max(1)
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl LeaseKeeper {
    /// Grants a lease of `ttl` (under `id` when given, so a grant whose answer is lost can still
    /// be revoked by it) and starts keeping it alive.
    pub async fn grant(
        etcd: &EtcdConnection,
        ttl: Duration,
        id: Option<i64>,
        name: &str,
    ) -> Result<LeaseKeeper, anyhow::Error> {
        let mut client = etcd.client().await?;
        let sent = boot_now();
        etcd.count();
        let options = id.map(|id| LeaseGrantOptions::new().with_id(id));
        let granted = match client.lease_grant(ttl_secs(ttl), options).await {
            Ok(granted) => granted,
            Err(err) => {
                etcd.failed(&err).await;
                return Err(anyhow::Error::new(err).context("failed to grant a lease"));
            }
        };
        // The server may grant another TTL (e.g. raise it to its minimum); keep by what it granted.
        let ttl = secs(granted.ttl());
        Ok(LeaseKeeper::keep(etcd, granted.id(), ttl, sent + ttl, name))
    }

    /// Keeps alive a lease known to live until `deadline` (boot clock), e.g. one just checked with
    /// `LeaseTimeToLive`.
    pub fn keep(
        etcd: &EtcdConnection,
        id: i64,
        ttl: Duration,
        deadline: Duration,
        name: &str,
    ) -> LeaseKeeper {
        let (state, _) = watch::channel(LeaseState::Alive);
        let shared = Arc::new(Shared {
            deadline: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            state,
            owner: Owner {
                id,
                name: name.to_string(),
                endpoint: etcd.endpoint().to_string(),
            },
        });
        let nanos = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        shared.deadline.store(nanos, Ordering::SeqCst);
        let task = tokio::spawn(keep_alive(etcd.clone(), id, ttl, shared.clone()));
        LeaseKeeper {
            id,
            ttl,
            shared,
            task,
        }
    }

    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Alive until the deadline, Lost from it on, whatever the task managed to do.
    pub fn state(&self) -> LeaseState {
        self.shared.current()
    }

    /// Follows the lease.
    pub fn subscribe(&self) -> LeaseWatch {
        LeaseWatch {
            rx: self.shared.state.subscribe(),
            shared: self.shared.clone(),
        }
    }

    /// Stops keeping the lease alive and revokes it, which deletes every key bound to it. A lease
    /// already gone counts as revoked.
    pub async fn revoke(self, etcd: &EtcdConnection) -> Result<(), anyhow::Error> {
        self.task.abort();
        self.shared.retire("revoked");
        revoke(etcd, self.id).await
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `LeaseRevoke`; a lease that is already gone counts as revoked.
pub async fn revoke(etcd: &EtcdConnection, id: i64) -> Result<(), anyhow::Error> {
    let mut client = etcd.client().await?;
    etcd.count();
    match client.lease_revoke(id).await {
        Ok(_) => Ok(()),
        Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => Ok(()),
        Err(err) => {
            etcd.failed(&err).await;
            Err(anyhow::Error::new(err).context(format!("failed to revoke lease {id:x}")))
        }
    }
}

/// A follower of one lease's state.
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    rx: watch::Receiver<LeaseState>,
    shared: Arc<Shared>,
}

impl LeaseWatch {
    /// The state now, judged against the deadline.
    pub fn state(&self) -> LeaseState {
        self.shared.current()
    }

    /// Waits for the next renewal or loss, or for the deadline, and returns the state then.
    pub async fn changed(&mut self) -> LeaseState {
        if let LeaseState::Lost { .. } = self.state() {
            return self.state();
        }
        let remaining = self.shared.remaining();
        tokio::select! {
            changed = self.rx.changed() => {
                if changed.is_err() {
                    // The keeper is gone (revoked or dropped): nothing renews the lease any more.
                    self.shared.retire("no longer kept alive");
                }
            }
            _ = sleep(remaining) => {}
        }
        self.state()
    }

    /// Waits until the lease is lost; its reason.
    pub async fn lost(&mut self) -> String {
        loop {
            if let LeaseState::Lost { reason } = self.changed().await {
                return reason;
            }
        }
    }
}

/// The keepalive task: runs until the lease is lost or the task is aborted.
async fn keep_alive(etcd: EtcdConnection, id: i64, ttl: Duration, shared: Arc<Shared>) {
    let period = (ttl / 3).max(MIN_PERIOD);
    let mut backoff = Backoff::new(period);
    let lost = |reason: &str| {
        if reason == NO_ANSWER {
            keepalive_failed();
        }
        let _reported = shared.lose(reason);
    };
    loop {
        let remaining = shared.remaining();
        if remaining.is_zero() {
            return lost(NO_ANSWER);
        }
        let opened = timeout(remaining, async {
            let mut client = etcd.client().await?;
            etcd.count();
            let sent = boot_now();
            match client.lease_keep_alive(id).await {
                Ok(stream) => Ok((stream, sent)),
                Err(err) => {
                    etcd.failed(&err).await;
                    Err(anyhow::Error::new(err))
                }
            }
        })
        .await;
        let ((mut keeper, mut stream), sent) = match opened {
            Err(_) => return lost(NO_ANSWER),
            Ok(Ok(opened)) => opened,
            // etcd-client reads the first answer itself and reports a TTL ≤ 0 this way.
            Ok(Err(err)) if lease_not_found(&err) => {
                return lost("etcd says the lease expired");
            }
            Ok(Err(err)) => {
                keepalive_failed();
                tracing::debug!(lease = format!("{id:x}"), error = %format!("{err:#}"),
                    "keepalive stream did not open; retrying");
                let pause = backoff.next_delay().min(shared.remaining());
                sleep(pause).await;
                continue;
            }
        };
        // Opening the stream sent a keepalive and read its answer: renewed as of `sent`.
        shared.extend(sent + ttl);
        backoff.reset();
        if !shared.lost.load(Ordering::SeqCst) {
            shared.state.send_replace(LeaseState::Alive);
        }
        let mut pending: Option<Duration> = None;
        let mut next_send = Instant::now() + period;
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        if let Some(sent) = pending.take() {
                            shared.extend(sent + secs(answer.ttl()));
                        }
                        backoff.reset();
                        if !shared.lost.load(Ordering::SeqCst) {
                            shared.state.send_replace(LeaseState::Alive);
                        }
                    }
                    Ok(Some(_)) => return lost("etcd says the lease expired"),
                    Ok(None) => {
                        keepalive_failed();
                        break;
                    }
                    Err(err) => {
                        keepalive_failed();
                        etcd.failed(&err).await;
                        break;
                    }
                },
                _ = sleep_until(next_send) => {
                    if pending.is_some() {
                        keepalive_failed();
                        tracing::debug!(lease = format!("{id:x}"),
                            "keepalive answer TTL/3 late; re-opening the stream");
                        break;
                    }
                    etcd.count();
                    let sent = boot_now();
                    if keeper.keep_alive().await.is_err() {
                        keepalive_failed();
                        break;
                    }
                    tracing::debug!(lease = format!("{id:x}"), etcd_requests = etcd.requests(),
                        "keepalive sent");
                    pending = Some(sent);
                    next_send += period;
                }
                _ = sleep(shared.remaining()) => return lost(NO_ANSWER),
            }
        }
        tracing::debug!(
            lease = format!("{id:x}"),
            "keepalive stream closed; re-opening"
        );
        let pause = backoff.next_delay().min(shared.remaining());
        sleep(pause).await;
    }
}

/// Whether opening a keepalive stream failed because etcd has no such lease.
fn lease_not_found(err: &anyhow::Error) -> bool {
    match err.downcast_ref::<etcd_client::Error>() {
        Some(etcd_client::Error::LeaseKeepAliveError(message)) => message.contains("not found"),
        Some(etcd_client::Error::GRpcStatus(status)) => status.message().contains("not found"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(deadline: Duration) -> Shared {
        let (state, _) = watch::channel(LeaseState::Alive);
        let nanos = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        Shared {
            deadline: AtomicU64::new(nanos),
            lost: AtomicBool::new(false),
            state,
            owner: Owner::default(),
        }
    }

    #[test]
    fn a_lease_is_alive_until_its_deadline_on_the_boot_clock() {
        let s = shared(boot_now() + Duration::from_secs(60));
        assert_eq!(s.current(), LeaseState::Alive);
        s.extend(boot_now() + Duration::from_secs(120));
        assert!(s.remaining() > Duration::from_secs(60));
    }

    #[test]
    fn a_passed_deadline_is_lost_without_the_task_and_stays_lost() {
        let s = shared(boot_now().saturating_sub(Duration::from_millis(1)));
        assert!(matches!(s.current(), LeaseState::Lost { .. }));
        // A late answer cannot revive it: someone else may hold what it guarded by now.
        s.extend(boot_now() + Duration::from_secs(60));
        assert!(matches!(s.current(), LeaseState::Lost { .. }));
        assert!(matches!(*s.state.borrow(), LeaseState::Lost { .. }));
    }

    #[test]
    fn a_reader_past_the_deadline_reports_the_loss_once_and_the_keeper_does_not_again() {
        let s = shared(boot_now().saturating_sub(Duration::from_millis(1)));
        // The registrar sees the deadline pass and may drop the keeper before its task wakes.
        assert!(matches!(s.current(), LeaseState::Lost { .. }));
        assert!(!s.lose(NO_ANSWER), "reported twice");
        let fresh = shared(boot_now() + Duration::from_secs(60));
        assert!(fresh.lose("etcd says the lease expired"));
        assert!(!fresh.lose(NO_ANSWER));
        assert_eq!(
            *fresh.state.borrow(),
            LeaseState::Lost {
                reason: "etcd says the lease expired".into()
            },
            "the first reason stays"
        );
    }

    #[test]
    fn a_revoked_lease_is_lost_without_a_report() {
        let s = shared(boot_now() + Duration::from_secs(60));
        s.retire("revoked");
        assert!(!s.lose(NO_ANSWER), "a revoked lease reported as lost");
        assert!(matches!(s.current(), LeaseState::Lost { .. }));
    }

    #[test]
    fn grant_ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(4500)), 5);
        assert_eq!(ttl_secs(Duration::from_secs(5)), 5);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }
}
