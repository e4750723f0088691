//! etcd outages while slots are held. What is checked is each instance's own belief, the lease
//! state it keeps itself and reads without asking etcd, sampled all through the outage and
//! compared with the other instances' beliefs and with etcd whenever etcd answers.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::Client;
use sidekick::slot::etcd::read_group;
use sidekick::slot::lease::HoldingWatch;
use sidekick::slot::{Acquisition, EtcdSlots, Holding, SlotLock};
use tokio::time::{interval, timeout};

use super::support::etcd::{self, Etcd};
use super::support::prerequisites_met;
use super::{GROUP, TTL, max, one, slots};

/// How often the beliefs are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How often the contender tries to acquire and etcd is read.
const CALL_EVERY: Duration = Duration::from_millis(100);
/// Bound on one etcd call of the checker, so a dead etcd does not stall it.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack past the deadline for the holder's own timer to fire and its task to run.
const MARGIN: Duration = Duration::from_secs(1);

/// Whether an instance believes right now that it holds its slot, from its own lease state.
fn believes_held(belief: &Option<HoldingWatch>) -> bool {
    belief
        .as_ref()
        .is_some_and(|rx| rx.borrow() == Holding::Held)
}

/// Runs `outage` while, for `span`, `other` keeps trying to take the group's one slot from
/// `holder`. Meanwhile it samples both instances' local beliefs every 10 ms and fails if both
/// believe they hold the slot at once; whenever etcd answers, it fails if the group has more
/// than one holder, or if an instance believed it held the slot both before and after a read
/// that shows the slot is not its own. Returns both final beliefs (holder, other).
async fn assert_never_two_believers(
    holder: &EtcdSlots,
    other: &EtcdSlots,
    client: &Client,
    outage: impl Future<Output = ()>,
    span: Duration,
) -> (Holding, Option<Holding>) {
    let start = Instant::now();
    let end = start + span;
    let holder_belief = holder.subscribe().await;
    let other_belief = RefCell::new(None);
    let violations = RefCell::new(Vec::<String>::new());
    let beliefs = || {
        [
            ("holder", believes_held(&holder_belief)),
            ("other", believes_held(&other_belief.borrow())),
        ]
    };

    let contend = async {
        let mut tick = interval(CALL_EVERY);
        while Instant::now() < end && other_belief.borrow().is_none() {
            tick.tick().await;
            if let Ok(Ok(Acquisition::Acquired)) =
                timeout(CALL_TIMEOUT, other.acquire("2.0.0")).await
            {
                let belief = other.subscribe().await;
                *other_belief.borrow_mut() = belief;
            }
        }
    };
    let sample = async {
        let mut tick = interval(SAMPLE_EVERY);
        let mut samples = 0;
        while Instant::now() < end {
            tick.tick().await;
            samples += 1;
            if beliefs().iter().all(|(_, held)| *held) {
                violations.borrow_mut().push(format!(
                    "at {:?}: holder and other both believe they hold the one slot",
                    start.elapsed()
                ));
            }
        }
        samples
    };
    let compare = async {
        let mut client = client.clone();
        let mut tick = interval(CALL_EVERY);
        let mut answers = 0;
        while Instant::now() < end {
            tick.tick().await;
            let before = beliefs();
            let Ok(Ok(group)) = timeout(CALL_TIMEOUT, read_group(&mut client, GROUP)).await else {
                continue;
            };
            answers += 1;
            let holders: Vec<_> = group.iter().map(|s| s.holder()).collect();
            let at = start.elapsed();
            if group.len() > 1 {
                let v = format!("at {at:?}: etcd shows {holders:?} in a group of one slot");
                violations.borrow_mut().push(v);
            }
            for ((id, was), (_, still)) in before.into_iter().zip(beliefs()) {
                if was && still && !holders.contains(&Some(id)) {
                    let v = format!("at {at:?}: {id} believes it holds; etcd shows {holders:?}");
                    violations.borrow_mut().push(v);
                }
            }
        }
        answers
    };
    let ((), (), samples, answers) = tokio::join!(outage, contend, sample, compare);

    let violations = violations.into_inner();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The sampler really ran through the outage, and etcd was compared with after it.
    let expected = (span.as_millis() / SAMPLE_EVERY.as_millis()) as usize;
    assert!(samples >= expected / 2, "{samples} samples of {expected}");
    assert!(answers > 0, "etcd never answered the checker");
    let last = |b: &Option<HoldingWatch>| b.as_ref().map(HoldingWatch::borrow);
    let holder_last = last(&holder_belief).unwrap_or(Holding::NotHeld);
    (holder_last, last(&other_belief.into_inner()))
}

/// Follows one holder's own lease state until it reports the slot lost. Returns when it last
/// announced a renewal (or when following began), when it reported lost, and why.
async fn follow_until_lost(mut belief: HoldingWatch) -> (Instant, Instant, String) {
    let mut renewed = Instant::now();
    loop {
        let state = belief.changed().await;
        let now = Instant::now();
        match &state {
            Holding::Held => renewed = now,
            Holding::Lost { reason } => return (renewed, now, reason.clone()),
            Holding::NotHeld => panic!("a held lease turned into NotHeld"),
        }
    }
}

#[tokio::test]
async fn etcd_restart_while_held_leaves_the_holder_holding_or_knowing_it_lost() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let holder = slots(&client, one(), "holder");
    let other = slots(&etcd.client().await, one(), "other");
    assert_eq!(
        holder.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );

    let outage = async {
        etcd.member(0).kill();
        etcd.restart().await;
    };
    let span = 2 * TTL + Duration::from_secs(1);
    let (held, other_held) =
        assert_never_two_believers(&holder, &other, &client, outage, span).await;
    // A quick restart keeps the lease (etcd resets TTLs on start): the holder keeps its slot.
    assert_eq!(held, Holding::Held);
    assert_eq!(other_held, None, "the other instance got a slot");
    assert_eq!(holder.held().await.unwrap(), Holding::Held);
}

#[tokio::test]
async fn etcd_down_longer_than_ttl_makes_the_holder_report_lost() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    // Several holders, each with its own lease and retry timing, so that a holder which keeps
    // believing past its deadline is caught on most runs, not one in two.
    const HOLDERS: u32 = 4;
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let holders: Vec<EtcdSlots> = (0..HOLDERS)
        .map(|i| slots(&client, max(HOLDERS), &format!("holder-{i}")))
        .collect();
    let mut followers = Vec::new();
    for h in &holders {
        assert_eq!(h.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
        let belief = h.subscribe().await.expect("a holder has a lease");
        followers.push(tokio::spawn(follow_until_lost(belief)));
    }

    etcd.member(0).kill();
    for (i, follower) in followers.into_iter().enumerate() {
        let (renewed, lost_at, reason) = timeout(TTL + 2 * MARGIN, follower)
            .await
            .unwrap_or_else(|_| panic!("holder-{i} did not report lost"))
            .expect("follower task");
        let believed = lost_at.duration_since(renewed);
        assert!(
            believed <= TTL + MARGIN,
            "holder-{i} believed it held the slot {believed:?} after its last renewal \
             (TTL {TTL:?}): {reason}"
        );
        assert!(reason.contains("TTL"), "{reason}");
    }

    etcd.restart().await;
    for h in &holders[1..] {
        h.release().await.unwrap();
    }
    let other = slots(&etcd.client().await, one(), "other");
    let span = 2 * TTL + Duration::from_secs(2);
    let (held, other_held) =
        assert_never_two_believers(&holders[0], &other, &client, async {}, span).await;
    assert!(matches!(held, Holding::Lost { .. }), "{held:?}");
    // etcd reset the lost lease to a full TTL on restart; once it expires, the other gets in.
    assert_eq!(other_held, Some(Holding::Held));
    assert_eq!(other.held().await.unwrap(), Holding::Held);
}
