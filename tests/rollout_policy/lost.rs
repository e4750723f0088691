//! A canary's result that no release recorded does not hold the wave for good: a release whose
//! write etcd did not confirm is kept and written at the next update pass, and an instance that
//! serves with no swap in flight settles its own canary place left with no result (passed when it
//! runs the version, given up when it runs another, failed when the version is on its denylist).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use sidekick::etcd::{EtcdConnection, EtcdOptions};
use sidekick::rollout::agent::RolloutAgent;
use sidekick::rollout::state::{Claimant, VersionState};
use sidekick::rollout::{RolloutPolicy, store};
use sidekick::slot::{Acquisition, EtcdSlots, SlotHolder, SlotLock};

use super::agent_tests::through_min_healthy;
use super::agent_tests::{FLOOR, Member, TTL, busy_detail, member, policy, state};
use super::{GROUP, start};
use crate::support::blackhole::Blackhole;

/// An instance whose rollout reaches etcd through `path` (the daemon's own connection, with a
/// one-second timeout), while its slots go straight to etcd.
fn member_behind(client: &Client, path: &Blackhole, name: &str, p: &RolloutPolicy) -> Member {
    let etcd = EtcdConnection::new(EtcdOptions {
        endpoints: vec![path.endpoint().parse().expect("an endpoint")],
        timeout: Duration::from_secs(1),
        auth: None,
        ca_file: None,
        client_cert: None,
    });
    let rollout = Arc::new(RolloutAgent::new(etcd, GROUP, name, p.clone(), FLOOR));
    let who = SlotHolder {
        holder: format!("id-{name}"),
        instance: name.to_string(),
    };
    let max = NonZeroU32::new(1).expect("non-zero");
    let slots = EtcdSlots::new(client.clone(), GROUP, max, TTL, who).with_rollout(rollout.clone());
    Member { rollout, slots }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_pass_etcd_missed_at_the_release_is_written_at_the_next_pass() {
    let Some((etcd, client)) = start().await else {
        return;
    };
    let path = Blackhole::start(etcd.endpoint().trim_start_matches("http://")).await;
    let p = policy(|p| p.canary = 1);
    let a = member_behind(&client, &path, "web-1", &p);
    let b = member(&client, "web-2", &p, 1);
    through_min_healthy(&a).await;
    // The rollout's etcd goes silent at the release: the slot goes, its result does not.
    path.cut();
    a.slots.release().await.expect("release");
    let s = state(&client).await;
    assert_eq!(s.canaries_passed(), 0, "{s:?}");
    let detail = busy_detail(b.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("0 of 1 passed"), "{detail}");
    // A pass while etcd is still cut keeps it.
    a.rollout.settle(None, |_| false).await;
    assert_eq!(state(&client).await.canaries_passed(), 0);
    // Healed: the next update pass (not serving, so only the kept write) records it.
    path.heal();
    a.rollout.settle(None, |_| false).await;
    let s = state(&client).await;
    assert_eq!(s.canaries_passed(), 1, "{s:?}");
    let record = s
        .swaps
        .iter()
        .find(|r| r.instance == "web-1")
        .expect("its swap");
    assert!(record.released.is_some(), "{record:?}");
    assert!(record.steps_ms.contains_key("min_healthy"), "{record:?}");
    assert_eq!(
        b.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
}

#[tokio::test]
async fn a_canary_whose_process_is_gone_passes_when_serving_the_version_and_frees_its_place_otherwise()
 {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let p = policy(|p| p.canary = 1);
    // web-1 passed min-healthy and sent 3/1, then its process died before the release.
    {
        let gone = member(&client, "web-1", &p, 1);
        through_min_healthy(&gone).await;
    }
    let b = member(&client, "web-2", &p, 1);
    let detail = busy_detail(b.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("0 of 1 passed"), "{detail}");
    // Its next process serves 2.0.0 with no swap in flight: the pass records the canary passed.
    let next = member(&client, "web-1", &p, 1);
    next.rollout.settle(Some("2.0.0"), |_| false).await;
    let s = state(&client).await;
    assert!(s.canaries[0].passed.is_some(), "{s:?}");
    // The slot key of the dead process goes with its lease; then the rest follow.
    let deadline = Instant::now() + TTL * 4;
    loop {
        match b.slots.acquire("2.0.0").await.unwrap() {
            Acquisition::Acquired => break,
            Acquisition::Busy { detail } if Instant::now() < deadline => {
                assert!(
                    detail.contains("slots held"),
                    "only the dead slot holds it: {detail}"
                );
                b.slots.wait_for_change(TTL).await;
            }
            other => panic!("web-2 never took its slot: {other:?}"),
        }
    }

    // 3.0.0: web-1 claimed the place and its process died before the release of a swap whose
    // result was never written.
    store::update_version(&mut client, GROUP, "3.0.0", |_| {
        let mut s = VersionState::new("3.0.0", jiff::Timestamp::now());
        s.add_canary("web-1", None, jiff::Timestamp::now());
        Some(s)
    })
    .await
    .expect("claim");
    let c = member(&client, "web-3", &p, 2);
    let hold = c.rollout.slot_hold("3.0.0").await.expect("held");
    assert!(hold.text().contains("0 of 1 passed"), "{hold}");
    // A process of web-1 that started before the claim and has no swap did not claim it: a
    // clone's on another host (the same instance name, a cloned machine id), left alone.
    next.rollout.settle(Some("1.0.0"), |v| v == "3.0.0").await;
    let s = store::get_version(&mut client, GROUP, "3.0.0")
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(
        s.awaits_result_of("web-1"),
        "a clone's place was settled: {s:?}"
    );
    // web-1's next process, rolled back with 3.0.0 on its denylist: recorded failed, never
    // passed nor given up.
    let next = member(&client, "web-1", &p, 1);
    next.rollout.settle(Some("1.0.0"), |v| v == "3.0.0").await;
    let s = store::get_version(&mut client, GROUP, "3.0.0")
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(
        s.canaries[0].failed.is_some() && s.canaries_passed() == 0,
        "{s:?}"
    );
    // A fresh claim given up by an instance back on the old version.
    store::update_version(&mut client, GROUP, "3.0.0", |s| {
        let mut s = s.cloned()?;
        s.canaries.clear();
        s.add_canary("web-1", None, jiff::Timestamp::now());
        Some(s)
    })
    .await
    .expect("claim again");
    let next = member(&client, "web-1", &p, 1);
    next.rollout.settle(Some("1.0.0"), |_| false).await;
    let s = store::get_version(&mut client, GROUP, "3.0.0")
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(s.canaries.is_empty(), "{s:?}");
    assert_eq!(
        c.rollout.slot_hold("3.0.0").await,
        None,
        "web-3 is the canary now"
    );
}

#[tokio::test]
async fn a_place_an_earlier_process_claimed_in_this_boot_is_settled_whatever_its_clock_said() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let p = policy(|p| p.canary = 1);
    // A claim through the slot gate names the claiming process: its run id and this boot.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("the boot id")
        .trim()
        .to_string();
    let claimant = {
        let first = member(&client, "web-1", &p, 1);
        assert_eq!(
            first.slots.acquire("2.0.0").await.unwrap(),
            Acquisition::Acquired
        );
        state(&client).await.canaries[0].claimed_by.clone()
    }
    .expect("the claim names its process");
    assert_eq!(claimant.boot, boot);
    assert!(
        claimant.run.len() == 16 && claimant.run.chars().all(|c| c.is_ascii_hexdigit()),
        "{claimant:?}"
    );
    // 3.0.0: an earlier process of web-1 in this boot claimed the place, stamped an hour ahead
    // (the clock was set back since), and died before its swap.
    let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    store::update_version(&mut client, GROUP, "3.0.0", |_| {
        let mut s = VersionState::new("3.0.0", ahead);
        let earlier = Claimant {
            run: "0123456789abcdef".into(),
            boot: boot.clone(),
        };
        s.add_canary("web-1", Some(&earlier), ahead);
        Some(s)
    })
    .await
    .expect("claim");
    // Its next process serves 1.0.0 with no swap in flight: the place is not its own, so it
    // is given up for another instance, though stamped "after" this process started.
    let next = member(&client, "web-1", &p, 1);
    next.rollout.settle(Some("1.0.0"), |_| false).await;
    let s = store::get_version(&mut client, GROUP, "3.0.0")
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(s.canaries.is_empty(), "{s:?}");
}
