//! The fair queue and the stored limit against real etcd: grants follow the waiters' queue
//! revisions, and a limit stored in etcd holds even for a process configured with a larger one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use sidekick::slot::keys::{QUEUE_PREFIX, group_prefix, queue_prefix};
use sidekick::slot::{Acquisition, EtcdSlots, SlotLock, SlotValue, limit};

use super::support::etcd::{self, Etcd};
use super::support::{poll_until, prerequisites_met};
use super::{GROUP, max, one, revision, slots, who};

/// Every put and delete under the slots and queue prefixes, in revision order.
#[derive(Default)]
struct Journal {
    /// Queue key → (holder, creation revision).
    queued: HashMap<String, (String, i64)>,
    /// Slot grants in revision order: (revision, holder).
    grants: Vec<(i64, String)>,
    /// Most slot keys alive at any revision.
    most: usize,
    alive: BTreeMap<String, String>,
    released: usize,
}

/// Replays every change under `/sidekick/` from `from` into a [`Journal`].
async fn journal(client: &Client, from: i64) -> (Arc<Mutex<Journal>>, tokio::task::JoinHandle<()>) {
    let mut client = client.clone();
    let mut stream = client
        .watch(
            "/sidekick/",
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .expect("watch");
    let journal = Arc::new(Mutex::new(Journal::default()));
    let task = {
        let journal = journal.clone();
        tokio::spawn(async move {
            let slots = group_prefix(GROUP);
            let queue = queue_prefix(GROUP);
            while let Ok(Some(resp)) = stream.message().await {
                let mut j = journal.lock().unwrap();
                for event in resp.events() {
                    let kv = event.kv().expect("event kv");
                    let key = kv.key_str().unwrap().to_string();
                    let put = event.event_type() == EventType::Put;
                    if key.starts_with(&queue) && put && kv.version() == 1 {
                        let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
                        let holder = v["holder"].as_str().unwrap().to_string();
                        j.queued.insert(key, (holder, kv.create_revision()));
                    } else if key.starts_with(&slots) && put {
                        let v: SlotValue = serde_json::from_slice(kv.value()).unwrap();
                        if kv.version() == 1 {
                            j.grants.push((kv.mod_revision(), v.holder.clone()));
                        }
                        j.alive.insert(key, v.holder);
                    } else if key.starts_with(&slots) {
                        j.alive.remove(&key);
                        j.released += 1;
                    }
                    j.most = j.most.max(j.alive.len());
                }
            }
        })
    };
    (journal, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_contenders_are_granted_first_come_first_served_by_queue_revision() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    const CONTENDERS: usize = 1000;
    const CLIENTS: usize = 20;
    const WAVE: usize = 100;
    let etcd = Etcd::start().await;
    let mut watch_client = etcd.client().await;
    let from = revision(&mut watch_client).await + 1;
    let (journal, watcher) = journal(&watch_client, from).await;
    // A thousand waiters start at once on two cores: allow requests more than the usual 5 s.
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(60));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = Client::connect(etcd.endpoints(), Some(options.clone()))
            .await
            .expect("connect");
        clients.push(client);
    }
    let mut tasks = Vec::new();
    for i in 0..CONTENDERS {
        // A long TTL keeps a thousand keepalives from loading the two cores.
        let me = EtcdSlots::new(
            clients[i % CLIENTS].clone(),
            GROUP,
            max(2),
            Duration::from_secs(60),
            who(&format!("c{i:04}")),
        );
        tasks.push(tokio::spawn(async move {
            let got = me.acquire_within("2.0.0", Duration::from_secs(300)).await;
            assert_eq!(got.expect("acquire"), Acquisition::Acquired, "c{i:04}");
            me.release().await.expect("release");
        }));
        // Waiters join in waves, so etcd is not asked for a thousand leases in one instant.
        if (i + 1) % WAVE == 0 {
            let queued = i + 1;
            poll_until(Duration::from_secs(60), "the wave is in line", || {
                let seen = journal.lock().unwrap().queued.len();
                async move {
                    if seen >= queued {
                        Ok(())
                    } else {
                        Err(format!("{seen} queued"))
                    }
                }
            })
            .await
            .unwrap();
        }
    }
    for t in tasks {
        t.await.expect("contender");
    }
    poll_until(Duration::from_secs(10), "every release replayed", || {
        let done = journal.lock().unwrap().released == CONTENDERS;
        async move { if done { Ok(()) } else { Err("not yet") } }
    })
    .await
    .unwrap();
    watcher.abort();
    {
        let j = journal.lock().unwrap();
        assert!(j.most <= 2, "saw {} holders of 2", j.most);
        assert_eq!(j.grants.len(), CONTENDERS, "one grant per contender");
        // Each holder's place in line: the creation revision of its (only) queue key.
        let mut place: HashMap<&str, i64> = HashMap::new();
        for (holder, rev) in j.queued.values() {
            assert!(
                place.insert(holder, *rev).is_none(),
                "{holder} queued twice"
            );
        }
        let order: Vec<i64> = j.grants.iter().map(|(_, h)| place[h.as_str()]).collect();
        let out_of_order: Vec<_> = order.windows(2).filter(|w| w[0] > w[1]).collect();
        assert!(
            out_of_order.is_empty(),
            "grants out of queue order: {} pairs, first {:?}",
            out_of_order.len(),
            out_of_order.first()
        );
    }
    let mut left = etcd.client().await;
    let queue = left
        .get(
            QUEUE_PREFIX,
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(queue.count(), 0, "queue keys left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_limit_of_one_holds_against_a_process_configured_with_max_3() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    assert_eq!(limit::set(&mut client, GROUP, 1).await.unwrap(), None);
    let from = revision(&mut client).await + 1;
    let (journal, watcher) = journal(&client, from).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        // One contender believes the limit is 3, the rest the default 1.
        let configured = if i == 0 { max(3) } else { one() };
        let me = slots(&client, configured, &format!("m{i}"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let got = me.acquire_within("2.0.0", Duration::from_secs(60)).await;
                assert_eq!(got.expect("acquire"), Acquisition::Acquired, "m{i}");
                // Holding the slot a moment is the workload, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..=40))).await;
                me.release().await.expect("release");
            }
        }));
    }
    for t in tasks {
        t.await.expect("contender");
    }
    poll_until(Duration::from_secs(10), "every release replayed", || {
        let done = journal.lock().unwrap().released == 24;
        async move { if done { Ok(()) } else { Err("not yet") } }
    })
    .await
    .unwrap();
    watcher.abort();
    let j = journal.lock().unwrap();
    assert_eq!(j.grants.len(), 24);
    assert_eq!(j.most, 1, "the stored limit of 1 was exceeded");
}

#[tokio::test]
async fn lowering_the_stored_limit_evicts_nobody_and_admits_nobody_until_holders_drop_below_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    limit::set(&mut client, GROUP, 2).await.unwrap();
    let a = slots(&client, one(), "a");
    let b = slots(&client, one(), "b");
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(b.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(limit::set(&mut client, GROUP, 1).await.unwrap(), Some(2));
    // Two holders, limit 1: nobody is evicted, and a newcomer configured with max = 5 waits.
    let c = Arc::new(slots(&client, max(5), "c"));
    let got = c.acquire_within("2.0.0", Duration::from_millis(300)).await;
    assert!(matches!(got.unwrap(), Acquisition::Busy { .. }));
    for h in [&a, &b] {
        assert_eq!(h.held().await.unwrap(), sidekick::slot::Holding::Held);
    }
    // One holder left, still at the limit: the waiter stays out until the last one leaves.
    a.release().await.unwrap();
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.acquire_within("2.0.0", Duration::from_secs(30)).await })
    };
    let busy = tokio::time::timeout(Duration::from_millis(500), async {
        while !waiting.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(busy.is_err(), "admitted above the stored limit");
    let released = std::time::Instant::now();
    b.release().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), Acquisition::Acquired);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "{:?}",
        released.elapsed()
    );
    // Raised again: the next attempt is admitted next to the holder.
    limit::set(&mut client, GROUP, 2).await.unwrap();
    let d = slots(&client, one(), "d");
    assert_eq!(d.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
}

#[tokio::test]
async fn an_abandoned_wait_leaves_the_queue_and_does_not_block_the_waiters_behind_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let a = slots(&client, one(), "a");
    let b = slots(&client, one(), "b");
    let c = Arc::new(slots(&client, one(), "c"));
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    // The caller gives up on b's wait by dropping it, as a `select!` would.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        b.acquire_within("2.0.0", Duration::from_secs(60)),
    )
    .await;
    assert!(gave_up.is_err(), "b was not waiting: {gave_up:?}");
    let queued = || {
        let mut client = client.clone();
        async move {
            let q = client
                .get(
                    queue_prefix(GROUP),
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(q.count())
        }
    };
    poll_until(Duration::from_secs(2), "b left the queue", || async {
        match queued().await? {
            0 => Ok(()),
            n => Err(format!("{n} queued")),
        }
    })
    .await
    .unwrap();
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.acquire_within("2.0.0", Duration::from_secs(30)).await })
    };
    poll_until(Duration::from_secs(5), "c is queued", || async {
        match queued().await? {
            1 => Ok(()),
            n => Err(format!("{n} queued")),
        }
    })
    .await
    .unwrap();
    let released = std::time::Instant::now();
    a.release().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), Acquisition::Acquired);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "{:?}",
        released.elapsed()
    );
}

/// The waiters' wake-up is the watch event, not a poll: with one holder and two waiters in line,
/// the first in line takes the freed slot with one transaction straight from the delete event
/// (lease, queue put, watch of the slots, transaction: 4 requests, no read after the release),
/// and the one behind it needs one read when the key ahead goes and a second watch (6 requests).
/// A look after a poll period would add a read and a watch to either count; the counts are what
/// is asserted, not the time it took.
#[tokio::test]
async fn a_waiter_takes_a_released_slot_from_the_delete_event_without_a_poll() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let a = slots(&client, one(), "a");
    let b = Arc::new(slots(&client, one(), "b"));
    let c = Arc::new(slots(&client, one(), "c"));
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let wait = |s: &Arc<EtcdSlots>| {
        let s = s.clone();
        tokio::spawn(async move {
            let outcome = s.acquire_within("2.0.0", Duration::from_secs(600)).await;
            (outcome, s.requests())
        })
    };
    // Each is watching once it made its third request (lease, queue put with its read, watch);
    // the watch starts at the revision read, so a release before it is open is not missed.
    let watching = |s: Arc<EtcdSlots>| async move {
        poll_until(Duration::from_secs(20), "the waiter watches", || {
            let n = s.requests();
            async move {
                if n >= 3 {
                    Ok(())
                } else {
                    Err(format!("{n} requests"))
                }
            }
        })
        .await
        .unwrap();
    };
    let b_waits = wait(&b);
    watching(b.clone()).await;
    let c_waits = wait(&c);
    watching(c.clone()).await;
    assert_eq!(
        (b.requests(), c.requests()),
        (3, 3),
        "nobody looked again while nothing changed"
    );
    a.release().await.unwrap();
    let (b_got, b_requests) = b_waits.await.unwrap();
    assert_eq!(b_got.unwrap(), Acquisition::Acquired);
    assert_eq!(
        b_requests, 4,
        "first in line: lease, queue put, watch, one transaction on the delete event"
    );
    b.release().await.unwrap();
    let (c_got, c_requests) = c_waits.await.unwrap();
    assert_eq!(c_got.unwrap(), Acquisition::Acquired);
    assert_eq!(
        c_requests, 6,
        "second in line: lease, queue put, watch of b's key, a read when it went, watch, transaction"
    );
}

/// How long a step of the daemon's wait lasts in these tests (the daemon's is 30 s).
const STEP: Duration = Duration::from_millis(200);

/// Asserts a wait answered busy.
fn busy(outcome: Result<Acquisition, sidekick::slot::SlotError>) {
    assert!(
        matches!(outcome, Ok(Acquisition::Busy { .. })),
        "{outcome:?}"
    )
}

/// An etcd, and three holders of one slot of which `a` holds it.
async fn a_holds_b_and_c_contend() -> (Etcd, [EtcdSlots; 3]) {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let [a, b, c] = ["a", "b", "c"].map(|name| slots(&client, one(), name));
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    (etcd, [a, b, c])
}

/// The daemon waits in line in steps (`AnySlots::acquire_in_line`: a first call that joins and
/// answers at once, then waits of up to 30 s that answer busy and keep the place): a step that
/// ends with nothing changed parks its watch, and the next goes on with it. So a waiter in steps
/// makes the same requests as one long wait, however many steps it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_in_steps_goes_on_with_its_watch_and_costs_what_one_long_wait_does() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let (_etcd, [a, b, c]) = a_holds_b_and_c_contend().await;
    busy(b.acquire_within("2.0.0", Duration::ZERO).await);
    busy(c.acquire_within("2.0.0", Duration::ZERO).await);
    assert_eq!(
        (b.requests(), c.requests()),
        (2, 2),
        "joining: lease, queue put with its read"
    );
    for step in 1..=4 {
        busy(b.acquire_within("2.0.0", STEP).await);
        busy(c.acquire_within("2.0.0", STEP).await);
        assert_eq!(
            (b.requests(), c.requests()),
            (3, 3),
            "step {step}: one watch each, opened by the first step and kept by the others"
        );
    }
    a.release().await.unwrap();
    let mut steps = 0;
    let b_got = loop {
        steps += 1;
        match b.acquire_within("2.0.0", STEP).await.unwrap() {
            Acquisition::Busy { .. } if steps < 50 => continue,
            other => break other,
        }
    };
    assert_eq!(b_got, Acquisition::Acquired);
    assert_eq!(
        b.requests(),
        4,
        "first in line: lease, queue put, watch, one transaction on the delete event"
    );
    // c's kept watch of b's queue key saw it go: it reads the group and watches the slots, which
    // b holds now.
    busy(c.acquire_within("2.0.0", STEP).await);
    busy(c.acquire_within("2.0.0", STEP).await);
    assert_eq!(
        c.requests(),
        5,
        "a watch of the slots (opened first) and one read"
    );
    b.release().await.unwrap();
    let c_got = loop {
        steps += 1;
        match c.acquire_within("2.0.0", STEP).await.unwrap() {
            Acquisition::Busy { .. } if steps < 100 => continue,
            other => break other,
        }
    };
    assert_eq!(c_got, Acquisition::Acquired);
    assert_eq!(
        c.requests(),
        6,
        "second in line, in steps: what one long wait makes (lease, queue put, watch of b's \
         key, a read when it went, watch, transaction)"
    );
}

/// A place given up between steps (the release a swap sends when it gives up) leaves nothing
/// parked: the next wait joins the line again at its end, behind whoever came meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_given_up_between_steps_is_not_resumed() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let (_etcd, [a, b, c]) = a_holds_b_and_c_contend().await;
    assert!(matches!(
        b.acquire_within("2.0.0", STEP).await.unwrap(),
        Acquisition::Busy { .. }
    ));
    b.release().await.unwrap();
    assert!(matches!(
        c.acquire_within("2.0.0", STEP).await.unwrap(),
        Acquisition::Busy { .. }
    ));
    // b comes back: behind c now, not at its old place.
    assert!(matches!(
        b.acquire_within("2.0.0", STEP).await.unwrap(),
        Acquisition::Busy { .. }
    ));
    a.release().await.unwrap();
    let c_waits = tokio::spawn(async move {
        let got = c.acquire_within("2.0.0", Duration::from_secs(20)).await;
        (got, c)
    });
    let (c_got, c) = c_waits.await.unwrap();
    assert_eq!(c_got.unwrap(), Acquisition::Acquired, "c was ahead of b");
    assert!(matches!(
        b.acquire_within("2.0.0", STEP).await.unwrap(),
        Acquisition::Busy { .. }
    ));
    c.release().await.unwrap();
    assert_eq!(
        b.acquire_within("2.0.0", Duration::from_secs(20))
            .await
            .unwrap(),
        Acquisition::Acquired
    );
}

/// A take checks that its own place is still there as created, not the whole line (which costs
/// etcd a read of every waiter's key inside its write path): a waiter whose queue key was deleted
/// (by hand, or a lapse of its lease) while it waited first in line does not take a freed slot
/// on that place. Its transaction fails, and it joins again at the end, behind the waiter that
/// moved up meanwhile. (A compare over the whole line let it take: nobody older was left.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_place_was_deleted_does_not_take_a_slot_on_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let (etcd, [a, b, c]) = a_holds_b_and_c_contend().await;
    let client = etcd.client().await;
    let line = || {
        let mut client = client.clone();
        async move {
            let options = etcd_client::GetOptions::new().with_prefix().with_sort(
                etcd_client::SortTarget::Create,
                etcd_client::SortOrder::Ascend,
            );
            let resp = client
                .get(queue_prefix(GROUP), Some(options))
                .await
                .unwrap();
            resp.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key().to_vec(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    // b first in line, c behind it; both wait a step, b on the slots, c on b's key.
    busy(b.acquire_within("2.0.0", Duration::ZERO).await);
    busy(c.acquire_within("2.0.0", Duration::ZERO).await);
    busy(b.acquire_within("2.0.0", STEP).await);
    // b's place goes; c's next step sees it go and moves up to watch the slots.
    let (b_key, first) = line().await.swap_remove(0);
    assert!(first.contains("\"holder\":\"b\""), "{first}");
    client.clone().delete(b_key, None).await.unwrap();
    busy(c.acquire_within("2.0.0", STEP).await);
    a.release().await.unwrap();
    // b's kept watch reports the freed slot; its take on the deleted place fails.
    busy(b.acquire_within("2.0.0", STEP).await);
    let queued: Vec<String> = line().await.into_iter().map(|(_, value)| value).collect();
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert!(
        queued[0].contains("\"holder\":\"c\"") && queued[1].contains("\"holder\":\"b\""),
        "b joined again behind c: {queued:?}"
    );
    assert_eq!(
        c.acquire_within("2.0.0", Duration::from_secs(10))
            .await
            .unwrap(),
        Acquisition::Acquired
    );
    busy(b.acquire_within("2.0.0", STEP).await);
}
