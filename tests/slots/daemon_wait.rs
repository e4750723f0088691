//! The daemon's slot wait against real etcd, through the update step itself
//! (`SwapAction::AcquireSlot` run by `run_steps`, the future the driver polls and may drop): it
//! waits in the group's queue, keeps its place between its busy answers, and a wait dropped
//! mid-way (SIGTERM, the unit stopping) leaves no queue key or lease behind.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use semver::Version;
use sidekick::agent::machine::swap::{SlotAnswer, SwapAction, SwapObservation};
use sidekick::agent::update::StepSettings;
use sidekick::agent::update::steps::{SlowStep, SwapSeams, run_steps};
use sidekick::omaha::{AnyUpdateSource, InMemoryUpdateSource, UpdateBackend};
use sidekick::slot::keys::queue_prefix;
use sidekick::slot::{Acquisition, AnySlots, SlotLock};
use sidekick::systemd::control::{MemoryUnitControl, RunningVersion};

use super::support::etcd::{self, Etcd};
use super::support::{poll_until, prerequisites_met};
use super::{GROUP, one, slots};

type Seams = Arc<SwapSeams<MemoryUnitControl>>;

/// The update step's seams for instance `id`, over the etcd backend the daemon builds.
fn seams(client: &Client, id: &str) -> Seams {
    Arc::new(SwapSeams {
        source: AnyUpdateSource::new(
            UpdateBackend::Memory(InMemoryUpdateSource::new(None)),
            false,
        ),
        slots: AnySlots::Etcd(Box::new(slots(client, one(), id))),
        control: MemoryUnitControl::new(RunningVersion::default()),
    })
}

/// The steps of one batch, as the driver runs them.
fn steps(seams: &Seams, actions: Vec<SwapAction>) -> SlowStep {
    let settings = StepSettings {
        prepull: Vec::new(),
        drain: Duration::ZERO,
        start_timeout: Duration::from_secs(1),
    };
    run_steps(seams.clone(), settings, Version::new(1, 0, 0), actions)
}

/// The machine's slot step: the first attempt, or a retry.
fn acquire(seams: &Seams, retry: bool) -> SlowStep {
    let version = "2.0.0".to_string();
    let again = false;
    steps(
        seams,
        vec![SwapAction::AcquireSlot {
            version,
            retry,
            again,
            away: false,
        }],
    )
}

async fn answer(step: SlowStep) -> SlotAnswer {
    match step.await {
        Some(SwapObservation::Slot(answer)) => answer,
        other => panic!("not a slot answer: {other:?}"),
    }
}

/// The queue's keys and their creation revisions (places in line), oldest first.
async fn queue(client: &Client) -> Vec<(String, i64)> {
    let options = GetOptions::new().with_prefix();
    let resp = client
        .clone()
        .get(queue_prefix(GROUP), Some(options))
        .await
        .expect("read the queue");
    let mut keys: Vec<_> = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.create_revision()))
        .collect();
    keys.sort_by_key(|(_, rev)| *rev);
    keys
}

async fn queue_empties(client: &Client, what: &str) {
    poll_until(Duration::from_secs(5), what, || async {
        match queue(client).await.len() {
            0 => Ok(()),
            n => Err(format!("{n} queued")),
        }
    })
    .await
    .unwrap();
}

/// The leases etcd keeps now.
async fn leases(client: &Client) -> Vec<i64> {
    let resp = client.clone().leases().await.expect("list leases");
    let mut ids: Vec<i64> = resp.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    ids
}

fn busy(answer: SlotAnswer) -> String {
    match answer {
        SlotAnswer::Busy(detail) => detail,
        other => panic!("expected busy, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_slot_wait_dropped_mid_wait_leaves_nothing_behind_and_blocks_nobody() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let a = slots(&client, one(), "a");
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let a_lease = leases(&client).await;
    assert_eq!(a_lease.len(), 1, "a's lease");

    // b's first attempt joins the line and answers busy at once; its place stays.
    let b = seams(&client, "b");
    busy(answer(acquire(&b, false)).await);
    assert_eq!(queue(&client).await.len(), 1, "b keeps its place");
    // The retry waits in line; the driver drops it mid-wait (SIGTERM: `stop` drops the step).
    let dropped = tokio::time::timeout(Duration::from_millis(500), acquire(&b, true)).await;
    assert!(dropped.is_err(), "b was not waiting: {dropped:?}");
    queue_empties(&client, "the dropped wait left the line").await;
    poll_until(Duration::from_secs(5), "b's lease revoked", || async {
        match leases(&client).await {
            l if l == a_lease => Ok(()),
            l => Err(format!("leases {l:?}, a's {a_lease:?}")),
        }
    })
    .await
    .unwrap();

    // Nobody is blocked: c joins, waits, and takes the slot as soon as a gives it back.
    let c = seams(&client, "c");
    busy(answer(acquire(&c, false)).await);
    let c_waits = tokio::spawn(answer(acquire(&c, true)));
    let released = Instant::now();
    a.release().await.unwrap();
    assert_eq!(c_waits.await.unwrap(), SlotAnswer::Acquired);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "{:?}",
        released.elapsed()
    );

    // b after the dropped wait: a fresh place behind the holder, and the machine's giving up
    // (ReleaseSlot, as on a stop or a departed unit) frees it; so does release_stale.
    busy(answer(acquire(&b, false)).await);
    assert_eq!(queue(&client).await.len(), 1, "b queued again");
    let released = steps(&b, vec![SwapAction::ReleaseSlot { retry: false }]).await;
    assert_eq!(released, Some(SwapObservation::SlotReleased(Ok(()))));
    queue_empties(&client, "the release gave b's place up").await;
    busy(answer(acquire(&b, false)).await);
    assert_eq!(queue(&client).await.len(), 1, "b queued again");
    assert_eq!(steps(&b, vec![SwapAction::ReleaseStaleSlot]).await, None);
    queue_empties(&client, "release_stale gave b's place up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemon_waiters_are_served_in_queue_order_across_their_busy_answers() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let a = slots(&client, one(), "a");
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let (b, c) = (seams(&client, "b"), seams(&client, "c"));
    // b joins first, then c: each answers busy (the swap shows "waiting for a slot").
    let detail = busy(answer(acquire(&b, false)).await);
    assert!(detail.contains("1 of 1 slots held"), "{detail}");
    let detail = busy(answer(acquire(&c, false)).await);
    assert!(detail.contains("queued ahead"), "{detail}");
    let places = queue(&client).await;
    assert_eq!(places.len(), 2, "{places:?}");

    // The machine retries until acquired; c's retries start first, which must not matter.
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiter = |seams: Seams, name: &'static str| {
        let order = order.clone();
        tokio::spawn(async move {
            loop {
                match answer(acquire(&seams, true)).await {
                    SlotAnswer::Acquired => break,
                    SlotAnswer::Busy(_) => continue,
                    other => panic!("{name}: {other:?}"),
                }
            }
            order.lock().unwrap().push(name);
            seams
        })
    };
    let c_waits = waiter(c, "c");
    let b_waits = waiter(b, "b");
    // Still the same two places: a retry goes on from the place its busy answer kept.
    assert_eq!(
        queue(&client).await,
        places,
        "places changed between answers"
    );
    a.release().await.unwrap();
    let b = b_waits.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["b"], "c went before b");
    assert!(!c_waits.is_finished(), "c took a second slot of one");
    let released = steps(&b, vec![SwapAction::ReleaseSlot { retry: false }]).await;
    assert_eq!(released, Some(SwapObservation::SlotReleased(Ok(()))));
    let c = c_waits.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["b", "c"]);
    let released = steps(&c, vec![SwapAction::ReleaseSlot { retry: false }]).await;
    assert_eq!(released, Some(SwapObservation::SlotReleased(Ok(()))));
    queue_empties(&client, "nothing left in line").await;
}
