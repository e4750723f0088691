//! The slot holder's own etcd lease and the task that keeps it alive.
//!
//! etcd-client only sends one keepalive per call and its stream dies for good when etcd restarts,
//! so the task drives the Go client's rules itself: a keepalive every TTL/3, the stream re-opened
//! after an error, and the lease declared lost when the server says its TTL is gone *or* when no
//! answer came within one TTL of the last request it answered. The deadline counts from when that
//! request was *sent*, so the holder gives up no later than the server could expire the lease:
//! it never believes it holds a slot that someone else may already have taken. No pause between
//! retries outlasts that deadline, however fast failing calls come back.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use super::{Holding, SlotError};

/// Pause before re-opening a broken keepalive stream (the Go client waits 500 ms).
const REOPEN_WAIT: Duration = Duration::from_millis(500);
/// Longest pause between re-open attempts while etcd is unreachable.
const REOPEN_WAIT_MAX: Duration = Duration::from_secs(2);
/// `lease_time_to_live` reports whole seconds; assume the remainder was rounded up.
const TTL_ROUNDING: Duration = Duration::from_secs(1);

/// Whose lease it is, for the log lines about it.
#[derive(Debug, Clone, Default)]
pub struct LeaseOwner {
    pub group: String,
    pub holder: String,
    /// The etcd endpoint(s) the lease is kept alive at.
    pub endpoint: String,
}

/// A granted lease, kept alive by a background task until revoked or dropped.
#[derive(Debug)]
pub struct SlotLease {
    id: i64,
    state: watch::Receiver<Holding>,
    task: JoinHandle<()>,
}

impl SlotLease {
    /// Grants a lease of `ttl` (rounded up to whole seconds) and starts keeping it alive.
    pub async fn grant(
        client: &Client,
        ttl: Duration,
        owner: LeaseOwner,
    ) -> Result<SlotLease, SlotError> {
        let mut client = client.clone();
        let secs = i64::try_from(ttl.as_secs_f64().ceil() as u64)
            .unwrap_or(i64::MAX)
            .max(1);
        let sent = Instant::now();
        let granted = client.lease_grant(secs, None).await?;
        // The server may raise a short TTL; believe what it granted.
        let deadline = sent + secs_duration(granted.ttl());
        let (tx, state) = watch::channel(Holding::Held);
        let ttl = secs_duration(granted.ttl());
        let task = tokio::spawn(keep_alive(client, granted.id(), owner, ttl, deadline, tx));
        Ok(SlotLease {
            id: granted.id(),
            state,
            task,
        })
    }

    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// `Held` while the lease is known to be alive, else `Lost`.
    pub fn state(&self) -> Holding {
        self.state.borrow().clone()
    }

    /// Follows the lease state, for a driver that must react when the slot is lost. Every answered
    /// keepalive re-sends `Held`, so a follower also sees when the lease was last known alive.
    pub fn subscribe(&self) -> watch::Receiver<Holding> {
        self.state.clone()
    }

    /// Stops the keepalive and revokes the lease, which deletes any key still bound to it.
    pub async fn revoke(self, client: &Client) -> Result<(), SlotError> {
        self.task.abort();
        let mut client = client.clone();
        match client.lease_revoke(self.id).await {
            Ok(_) => Ok(()),
            // Already expired or revoked: the goal is met.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn secs_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// The keepalive task: runs until the lease is lost (then reports it) or the task is aborted.
async fn keep_alive(
    mut client: Client,
    id: i64,
    owner: LeaseOwner,
    granted_ttl: Duration,
    mut deadline: Instant,
    state: watch::Sender<Holding>,
) {
    let lost = |reason: &str| {
        tracing::warn!(lease = id, group = %owner.group, holder = %owner.holder,
            endpoint = %owner.endpoint, reason, "update slot lost");
        state.send_replace(Holding::Lost {
            reason: reason.to_string(),
        });
    };
    const NO_ANSWER: &str = "no answer from etcd within the lease TTL";
    let mut reopen_wait = REOPEN_WAIT;
    // A fresh grant needs no check; after a stream error it does.
    let mut check = false;
    loop {
        // After a stream error, ask whether the lease still lives before trusting a new stream:
        // a restarted etcd resets TTLs, a revoked lease answers ttl -1.
        if check {
            let sent = Instant::now();
            match timeout_at(deadline, client.lease_time_to_live(id, None)).await {
                Err(_) => return lost(NO_ANSWER),
                Ok(Ok(resp)) if resp.ttl() <= 0 => return lost("the lease expired"),
                Ok(Ok(resp)) => {
                    let until = sent + secs_duration(resp.ttl()).saturating_sub(TTL_ROUNDING);
                    deadline = deadline.max(until);
                }
                Ok(Err(e)) => {
                    tracing::debug!(lease = id, error = %e, "lease check failed; retrying");
                    if !pause_before(deadline, &mut reopen_wait).await {
                        return lost(NO_ANSWER);
                    }
                    continue;
                }
            }
        }
        check = true;
        let sent = Instant::now();
        let (mut keeper, mut stream) = match timeout_at(deadline, client.lease_keep_alive(id)).await
        {
            Err(_) => return lost(NO_ANSWER),
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                tracing::debug!(lease = id, error = %e, "keepalive stream did not open; retrying");
                if !pause_before(deadline, &mut reopen_wait).await {
                    return lost(NO_ANSWER);
                }
                continue;
            }
        };
        reopen_wait = REOPEN_WAIT;
        // Opening the stream renewed the lease to its full TTL (it checks the answer's ttl > 0).
        deadline = deadline.max(sent + granted_ttl);
        state.send_replace(Holding::Held);
        let mut ttl = granted_ttl;
        loop {
            sleep(ttl / 3).await;
            let sent = Instant::now();
            match timeout_at(deadline, keeper.keep_alive()).await {
                Err(_) => return lost(NO_ANSWER),
                Ok(Err(_)) => break,
                Ok(Ok(())) => {}
            }
            match timeout_at(deadline, stream.message()).await {
                Err(_) => return lost("no keepalive answer within the lease TTL"),
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    ttl = secs_duration(resp.ttl());
                    deadline = sent + ttl;
                    state.send_replace(Holding::Held);
                }
                Ok(Ok(Some(_))) => return lost("the lease expired"),
                Ok(Ok(None)) | Ok(Err(_)) => {
                    tracing::debug!(lease = id, "keepalive stream closed; re-opening");
                    break;
                }
            }
        }
    }
}

/// Waits before the next re-open attempt, but never past `deadline`; doubles `wait` up to its
/// cap. Returns false when the deadline came first: the lease may be gone by now.
async fn pause_before(deadline: Instant, wait: &mut Duration) -> bool {
    let until = Instant::now() + reopen_jitter(*wait);
    *wait = (*wait * 2).min(REOPEN_WAIT_MAX);
    if until >= deadline {
        sleep_until(deadline).await;
        return false;
    }
    sleep_until(until).await;
    true
}

/// `d` plus up to 50% random jitter, so many holders do not reconnect in lockstep.
fn reopen_jitter(d: Duration) -> Duration {
    d + Duration::from_millis(fastrand::u64(0..=d.as_millis() as u64 / 2))
}
