//! Safety under contention: 30 contenders, each with its own client and lease, while an
//! independent watcher replays every put and delete of the group by revision and counts holders.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use sidekick::slot::etcd::{group_prefix, read_group};
use sidekick::slot::{Acquisition, EtcdSlots, SlotLock, SlotValue};

use super::support::etcd::{self, Etcd};
use super::support::{poll_until, prerequisites_met};
use super::{GROUP, max, revision, slots};

/// Replays every put and delete under the group's prefix in revision order.
#[derive(Default)]
struct Replay {
    holders: HashSet<String>,
    most: usize,
    acquired_by: HashSet<String>,
}

/// 30 contenders on `limit`; with `leftover`, a holder from an earlier limit of 3 sits at index 2
/// for the whole run (the limit was lowered under it) and must count toward `limit`.
async fn contention(limit: u32, leftover: bool) {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let early: Vec<EtcdSlots> = ["e0", "e1", "e2"]
        .iter()
        .map(|id| slots(&client, max(3), id))
        .collect();
    if leftover {
        for e in &early {
            assert_eq!(e.acquire("1.0.0").await.unwrap(), Acquisition::Acquired);
        }
        early[0].release().await.unwrap();
        early[1].release().await.unwrap();
    }
    let mut watch_client = etcd.client().await;
    // The replay starts from what is held now (the leftover), then follows every change; no
    // contender runs yet, so nothing changes between these two reads.
    let now = read_group(&mut watch_client, GROUP).await.unwrap();
    let from = revision(&mut watch_client).await + 1;
    let mut stream = watch_client
        .watch(
            group_prefix(GROUP),
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .expect("watch");
    let replay = Arc::new(Mutex::new(Replay {
        most: now.len(),
        holders: now.iter().map(|s| s.key.clone()).collect(),
        acquired_by: now
            .iter()
            .filter_map(|s| s.holder().map(String::from))
            .collect(),
    }));
    let watcher = {
        let replay = replay.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let mut r = replay.lock().unwrap();
                for event in resp.events() {
                    let kv = event.kv().expect("event kv");
                    let key = kv.key_str().unwrap().to_string();
                    match event.event_type() {
                        EventType::Put => {
                            let v: SlotValue = serde_json::from_slice(kv.value()).unwrap();
                            r.acquired_by.insert(v.holder);
                            r.holders.insert(key);
                        }
                        EventType::Delete => {
                            r.holders.remove(&key);
                        }
                    }
                    r.most = r.most.max(r.holders.len());
                }
            }
        })
    };

    let mut contenders = Vec::new();
    for i in 0..30 {
        let client = etcd.client().await;
        contenders.push(tokio::spawn(async move {
            let me = slots(&client, max(limit), &format!("c{i}"));
            let got = me.acquire_within("2.0.0", Duration::from_secs(90)).await;
            assert_eq!(
                got.expect("acquire"),
                Acquisition::Acquired,
                "contender {i}"
            );
            // Holding the slot for a while is the workload, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(20..=200))).await;
            me.release().await.expect("release");
        }));
    }
    for c in contenders {
        c.await.expect("contender task");
    }
    early[2].release().await.unwrap();
    let everyone = if leftover { 31 } else { 30 };
    poll_until(Duration::from_secs(10), "watcher saw every release", || {
        let r = replay.lock().unwrap();
        let done = r.holders.is_empty() && r.acquired_by.len() == everyone;
        async move { if done { Ok(()) } else { Err("not yet") } }
    })
    .await
    .unwrap();
    watcher.abort();
    let r = replay.lock().unwrap();
    assert!(
        r.most <= limit as usize,
        "saw {} holders, max {limit}",
        r.most
    );
    assert_eq!(r.most, limit as usize, "the limit was never reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_contenders_never_exceed_max_2_and_all_acquire() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    contention(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_contenders_never_exceed_max_1_and_all_acquire() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    contention(1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_contenders_never_exceed_max_3_and_all_acquire() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    contention(3, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_contenders_on_max_2_count_a_leftover_holder_above_the_limit() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    contention(2, true).await;
}

/// Contenders that lose the race for the last slot give back the lease they granted for it: only
/// the winner's lease is left in etcd. Rounds repeat until some loser really raced (granted a
/// lease and lost the commit), which shows in its request count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contenders_that_lose_the_race_keep_no_idle_lease() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    const CONTENDERS: usize = 10;
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    for round in 0..5 {
        let start = Arc::new(tokio::sync::Barrier::new(CONTENDERS));
        let mut tasks = Vec::new();
        for i in 0..CONTENDERS {
            let (client, start) = (etcd.client().await, start.clone());
            tasks.push(tokio::spawn(async move {
                let me = slots(&client, max(1), &format!("r{round}c{i}"));
                start.wait().await;
                let got = me.acquire("2.0.0").await.expect("acquire");
                (got, me)
            }));
        }
        let mut winners = Vec::new();
        let mut raced = false;
        for task in tasks {
            let (got, me) = task.await.expect("contender task");
            match got {
                Acquisition::Acquired => winners.push(me),
                // A loser that only read the full group made one request.
                _ => raced |= me.requests() > 1,
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        let leases = client.leases().await.expect("list leases").leases().len();
        let group = read_group(&mut client, GROUP).await.unwrap();
        let held: Vec<_> = group.iter().map(|s| s.holder()).collect();
        assert_eq!(leases, 1, "round {round}: leases of {held:?} and of losers");
        winners[0].release().await.unwrap();
        if raced {
            return;
        }
    }
    panic!("no contender lost a race in 5 rounds; the test proved nothing");
}
