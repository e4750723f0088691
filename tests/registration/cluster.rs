//! A 3-member etcd cluster losing its leader, and losing its quorum past the TTL, while a
//! sidekick is registered and slot holders hold slots.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions};
use sidekick::slot::keys::group_prefix;
use sidekick::slot::lease::HoldingWatch;
use sidekick::slot::{Acquisition, EtcdSlots, Holding, SlotHolder, SlotLock};

use super::REGISTER_TIMEOUT;
use super::SEED_KEY;
use super::harness::{SLEEP_UNIT, Sidekick, config, count_keys, start_unit, wait_for_key};
use super::support::etcd::{self, Etcd};
use super::support::systemd::{self, Systemd};
use super::support::{poll_until, prerequisites_met, temp_dir};

const TTL: Duration = Duration::from_secs(5);
const GROUP: &str = "web/cluster";
const LIMIT: u32 = 2;
/// Slack for a timer to fire and a task to run.
const MARGIN: Duration = Duration::from_secs(1);

fn holder(client: &Client, id: &str) -> EtcdSlots {
    let who = SlotHolder {
        holder: id.to_string(),
        instance: format!("web-{id}"),
    };
    EtcdSlots::new(
        client.clone(),
        GROUP,
        std::num::NonZeroU32::new(LIMIT).unwrap(),
        TTL,
        who,
    )
}

/// Replays every slot change from revision `from` to now, afterwards, from etcd's history; the
/// most slot keys alive at any revision. Retried from the start when a member drops the watch.
async fn most_holders(client: &Client, from: i64) -> usize {
    poll_until(Duration::from_secs(30), "the slot history replayed", || {
        replay_once(client.clone(), from)
    })
    .await
    .unwrap()
}

async fn replay_once(mut client: Client, from: i64) -> Result<usize, String> {
    let to = client
        .get("probe", None)
        .await
        .map_err(|e| e.to_string())?
        .header()
        .map_or(0, |h| h.revision());
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut stream = client
        .watch(group_prefix(GROUP), Some(options))
        .await
        .map_err(|e| e.to_string())?;
    let (mut alive, mut most) = (BTreeSet::new(), 0);
    let replayed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                match e.event_type() {
                    EventType::Put => alive.insert(kv.key().to_vec()),
                    EventType::Delete => alive.remove(kv.key()),
                };
                most = most.max(alive.len());
                if kv.mod_revision() >= to {
                    return Ok(());
                }
            }
        }
        Err("the watch ended".to_string())
    })
    .await;
    match replayed {
        // History up to `to` comes at once; a quiet watch means the last change was earlier.
        Ok(Ok(())) | Err(_) => Ok(most),
        Ok(Err(e)) => Err(e),
    }
}

async fn store_revision(client: &Client) -> i64 {
    let resp = client.clone().get("probe", None).await.expect("get");
    resp.header().expect("header").revision()
}

/// Acquires within `deadline`, retrying after errors: a request may hit the stopped member
/// before the client moves on to a live one.
async fn acquire_retrying(h: &EtcdSlots, deadline: Duration) -> Acquisition {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match h.acquire_within("2.0.0", left).await {
            Ok(got) => return got,
            Err(err) if left.is_zero() => panic!("acquire failed: {err}"),
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// Releases, retrying after errors for up to 10 s.
async fn release_retrying(h: &EtcdSlots) {
    poll_until(Duration::from_secs(10), "released", || async {
        h.release().await.map_err(|e| e.to_string())
    })
    .await
    .unwrap();
}

/// When a holder's own belief turns Lost, and when it was last renewed before that.
async fn lost_after_renewal(mut belief: HoldingWatch) -> (Instant, Instant) {
    let mut renewed = Instant::now();
    loop {
        match belief.changed().await {
            Holding::Held => renewed = Instant::now(),
            Holding::Lost { .. } => return (renewed, Instant::now()),
            Holding::NotHeld => panic!("a held lease turned NotHeld"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_leader_stopped_the_key_stays_and_slots_never_exceed_the_limit() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-leader");
    let mut etcd = Etcd::start_cluster(3).await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let endpoints = etcd.endpoints().join("\", \"");
    let cfg = config(&endpoints, "seed", 8080, TTL.as_secs(), "check = \"none\"");
    let sidekick = Sidekick::start(&systemd, dir.path(), "sk", &cfg);
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    let from = store_revision(&client).await + 1;
    let holders: Vec<EtcdSlots> = (0..4).map(|i| holder(&client, &format!("h{i}"))).collect();
    for h in &holders[..2] {
        assert_eq!(h.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    }

    let leader = client.clone().status().await.expect("status").leader();
    let mut stopped = None;
    for i in 0..3 {
        let mut c = etcd::connect(&[etcd.member(i).endpoint()]).await.unwrap();
        if c.status()
            .await
            .is_ok_and(|s| s.header().is_some_and(|h| h.member_id() == leader))
        {
            etcd.member(i).stop();
            stopped = Some(i);
            break;
        }
    }
    let stopped = stopped.expect("found the leader");
    // While the cluster elects a new leader, waiters keep trying.
    let mut waiting = Vec::new();
    for h in holders.into_iter() {
        waiting.push(tokio::spawn(async move {
            let got = acquire_retrying(&h, Duration::from_secs(20)).await;
            (h, got)
        }));
    }
    let started = Instant::now();
    poll_until(TTL, "the key is there after the leader stopped", || {
        let mut client = client.clone();
        async move {
            // A read may land on the stopped member; that is a retry, not a failure.
            let got = client
                .get(SEED_KEY, None)
                .await
                .map_err(|e| e.to_string())?;
            match got.count() {
                1 => Ok(()),
                n => Err(format!("{n} keys")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    assert!(started.elapsed() <= TTL);
    let mut held = Vec::new();
    for w in waiting.into_iter().take(2) {
        let (h, got) = w.await.unwrap();
        assert_eq!(got, Acquisition::Acquired, "an old holder keeps its slot");
        held.push(h);
    }
    for h in &held {
        release_retrying(h).await;
    }
    etcd.member(stopped).restart();
    etcd.member(stopped).wait_ready().await;
    // A client made after the restart: the old one's connection to that member is gone.
    let client = etcd.client().await;
    // The test's own client may still try the restarted member first: a refused read is a retry.
    poll_until(TTL, "exactly one key after the member is back", || {
        let mut client = client.clone();
        async move {
            let got = client
                .get(SEED_KEY, None)
                .await
                .map_err(|e| e.to_string())?;
            match got.count() {
                1 => Ok(()),
                n => Err(format!("{n} keys")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    let most = most_holders(&client, from).await;
    assert!(most <= LIMIT as usize, "{most} holders of {LIMIT}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_past_the_ttl_everyone_reports_lost_by_the_deadline_then_recovers_once() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-quorum");
    let mut etcd = Etcd::start_cluster(3).await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let endpoints = etcd.endpoints().join("\", \"");
    let cfg = config(&endpoints, "seed", 8080, TTL.as_secs(), "check = \"none\"");
    let sidekick = Sidekick::start(&systemd, dir.path(), "sk", &cfg);
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    let from = store_revision(&client).await + 1;
    let holders: Vec<EtcdSlots> = (0..3).map(|i| holder(&client, &format!("q{i}"))).collect();
    let mut followers = Vec::new();
    for h in &holders[..2] {
        assert_eq!(h.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
        followers.push(tokio::spawn(lost_after_renewal(
            h.subscribe().await.unwrap(),
        )));
    }

    etcd.member(1).stop();
    etcd.member(2).stop();
    // Quorum is lost when the second member exits, not when it is told to: etcd 3.5.30 keeps
    // serving for about 8 s after SIGTERM when its exit costs the cluster its quorum (3.5.16:
    // 1.1 s, 3.4.23: 0.1 s), and the holders' leases are renewed until then.
    let cut = Instant::now();
    for (i, f) in followers.into_iter().enumerate() {
        let (renewed, lost) = tokio::time::timeout(TTL + 3 * MARGIN, f)
            .await
            .unwrap_or_else(|_| panic!("holder {i} never reported lost"))
            .unwrap();
        let believed = lost.duration_since(renewed);
        assert!(
            believed <= TTL + MARGIN,
            "holder {i} believed {believed:?} past renewal"
        );
    }
    let logged = poll_until(
        TTL + 3 * MARGIN,
        "the registrar reports its lease lost",
        || {
            let log = sidekick.log();
            async move {
                // The keeper's own report names the registration's owner.
                match log.contains("lease lost") && log.contains("owner=web-1") {
                    true => Ok(()),
                    false => Err("not yet"),
                }
            }
        },
    )
    .await;
    logged.unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    assert!(cut.elapsed() <= TTL + 3 * MARGIN, "{:?}", cut.elapsed());

    // Past the TTL; then quorum returns.
    etcd.restart().await;
    let client = etcd.client().await;
    let mut waiting = Vec::new();
    for h in holders.into_iter() {
        waiting.push(tokio::spawn(async move {
            let got = acquire_retrying(&h, Duration::from_secs(30)).await;
            (h, got)
        }));
    }
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert_eq!(
        count_keys(&client, "/services/").await,
        1,
        "one registration"
    );
    let mut acquired = 0;
    for w in waiting {
        let (h, got) = w.await.unwrap();
        if got == Acquisition::Acquired {
            acquired += 1;
            release_retrying(&h).await;
        }
    }
    assert!(acquired >= 2, "{acquired} re-acquired");
    let most = most_holders(&client, from).await;
    assert!(most <= LIMIT as usize, "{most} holders of {LIMIT}");
}
