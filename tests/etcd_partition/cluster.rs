//! Issue 19 part 2, cases 4 and 5: the etcd leader isolated, then killed, mid-rollout; a minority
//! member cut off from the others while the sidekicks talk to it. Which member leads is etcd's
//! own answer (maintenance `Status` of each member); the cut member is always `m0` (the fleet's
//! client and Traefik use `m1` and `m2`), made the leader — or not — with etcd's `MoveLeader`
//! before the rollout, and checked by `Status` again.
//!
//! Throughout, as in `tests/safety/`: at most one app unit restarting or not active, no restart
//! without a slot, no failed request through Traefik at the rate. Besides: never more
//! than `slot.max` (1) slot keys at once, and no instance out of rotation except during its own
//! slot hold (a registration lost to a lease that lapsed) for longer than one registration TTL.

use std::time::{Duration, Instant};

use crate::common::{
    Observed, behind_member_paths, finish_after_traefik_caught_up, most_at_once, start_fault_fleet,
    wait_new_holder, wait_rolled_to,
};
use crate::fleet::{Fleet, SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use crate::rotation::{KeyWatch, SlotHold, rotation, slot_holds};
use crate::support::etcd::connect;
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::{UnitWatch, holder};
use crate::{RATE, ROUTE_TIMEOUT, needs};

const NEW_VERSION: &str = "2.0.0";
/// The member the cases cut.
const CUT: usize = 0;
/// The rollout of four instances, one at a time, with a member cut or gone.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// etcd electing a leader (its election timeout is 1 s).
const ELECTION_TIMEOUT: Duration = Duration::from_secs(20);

/// Case 4: the leader (`m0`) is isolated — its peer links and every sidekick's path to it go
/// silent — once the first instance took its slot, then SIGKILLed one registration TTL later and
/// left dead. The rollout completes on the two members left; each sidekick's reconnect time to a
/// healthy member is measured: from the cut to the first answer a healthy member sent it after
/// the new leader was elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_isolated_then_killed_mid_rollout_the_rollout_completes_within_max_and_ttl() {
    leader_isolated_then_killed(4, 1).await;
}

/// Case 4 again with `slot.max = 2` and five instances (the variant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_isolated_then_killed_mid_rollout_with_two_slots_and_five_instances() {
    leader_isolated_then_killed(5, 2).await;
}

async fn leader_isolated_then_killed(instances: usize, max: u32) {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |spec| {
        spec.etcd_members = 3;
        spec.instances = instances;
        spec.slot_max = max;
    })
    .await;
    let paths = behind_member_paths(&mut fleet).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    lead_or_not(&fleet, true).await;

    let started = Instant::now();
    let what = format!(
        "etcd leader isolated then killed mid-rollout ({instances} instances, slot.max {max})"
    );
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let units = UnitWatch::start(&fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(600));
    fleet.publish(NEW_VERSION).await;

    let first = wait_new_holder(&fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let old_leader = member_ids(&fleet).await[CUT];
    links(&fleet).isolate(CUT);
    for sidekick in &paths {
        sidekick[CUT].cut();
    }
    let cut_at = Instant::now();
    let elected = poll_until(ELECTION_TIMEOUT, "the majority elects a leader", || async {
        match majority_leader(&fleet).await {
            Some(leader) if leader != old_leader => Ok(Instant::now()),
            other => Err(format!("leader {other:?}")),
        }
    })
    .await;
    let elected_at = elected.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));

    let registration_ttl = fleet.spec().registration_ttl;
    tokio::time::sleep_until((cut_at + registration_ttl).into()).await;
    fleet.etcd.member(CUT).kill();
    links(&fleet).set_pid(CUT, None);
    let killed_at = Instant::now();

    let rolled = wait_rolled_to(&fleet, NEW_VERSION, ROLLOUT_TIMEOUT).await;
    let report = finish_after_traefik_caught_up(load).await;
    let reconnects: Vec<(String, Option<Duration>)> = fleet
        .instances
        .iter()
        .zip(&paths)
        .map(|(instance, sidekick)| {
            let first_answer = sidekick
                .iter()
                .enumerate()
                .filter(|(m, _)| *m != CUT)
                .filter_map(|(_, path)| path.first_answer_since(elected_at))
                .min();
            (instance.name.clone(), first_answer.map(|at| at - cut_at))
        })
        .collect();
    let holds = slot_holds(&slots);
    let most_holders = most_at_once(holds.iter().map(|h| (h.from, h.until)));
    let lost = registrations_lost(&servers, &holds);
    eprintln!(
        "{what}: the first holder {first}; a new leader {:.2} s after the cut; m0 killed {:.1} s \
         after the cut; reconnect (cut to the first answer of a healthy member after the \
         election): {}; at most {most_holders} slot key(s) at once; registrations lost outside a \
         slot hold: {}",
        (elected_at - cut_at).as_secs_f64(),
        (killed_at - cut_at).as_secs_f64(),
        reconnects
            .iter()
            .map(|(name, d)| format!("{name} {}", seconds(*d)))
            .collect::<Vec<_>>()
            .join(", "),
        describe_lost(&lost),
    );
    if let Err(e) = rolled {
        panic!(
            "{what}: the rollout did not complete: {e}\n{}",
            fleet.logs(40)
        );
    }
    assert!(
        most_holders <= max as usize,
        "{what}: {most_holders} slot keys at once"
    );
    let too_long: Vec<_> = lost
        .iter()
        .filter(|(_, d)| d.is_none_or(|d| d > registration_ttl))
        .collect();
    assert!(
        too_long.is_empty(),
        "{what}: registrations lost for longer than the TTL ({registration_ttl:?}): {too_long:?}"
    );
    let unreached: Vec<_> = reconnects.iter().filter(|(_, d)| d.is_none()).collect();
    assert!(
        unreached.is_empty(),
        "{what}: never answered by a healthy member after the election: {unreached:?}"
    );
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check_within(&fleet, max as usize);
}

/// Case 5: a follower (`m0`) cut from the other two members — its client paths stay open, so
/// the sidekicks' requests to it reach a member without a leader — from the first slot taken
/// until the rollout completed and at least two registration TTLs passed. With etcd's
/// `hasleader` on every request it answers "no leader" and the requests move to the majority:
/// no lease is lost (no sidekick logs one, no instance out of rotation outside its own slot
/// hold), and the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_member_cut_off_requests_move_to_the_majority_and_no_lease_is_lost() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |spec| spec.etcd_members = 3).await;
    let paths = behind_member_paths(&mut fleet).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    lead_or_not(&fleet, false).await;

    let started = Instant::now();
    let what = "minority etcd member cut off".to_string();
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let units = UnitWatch::start(&fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(600));
    fleet.publish(NEW_VERSION).await;

    let first = wait_new_holder(&fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    links(&fleet).isolate(CUT);
    let cut_at = Instant::now();
    let registration_ttl = fleet.spec().registration_ttl;
    let rolled = wait_rolled_to(&fleet, NEW_VERSION, ROLLOUT_TIMEOUT).await;
    tokio::time::sleep_until((cut_at + 2 * registration_ttl).into()).await;
    let majority_leader = majority_leader(&fleet).await;
    links(&fleet).heal(CUT);
    let healed_at = Instant::now();
    let report = finish_after_traefik_caught_up(load).await;

    let talk: Vec<(String, usize, usize, usize)> = fleet
        .instances
        .iter()
        .zip(&paths)
        .map(|(instance, sidekick)| {
            let before = sidekick[CUT].answers_between(started, cut_at);
            let cut_answers = sidekick[CUT].answers_between(cut_at, healed_at);
            let majority: usize = sidekick
                .iter()
                .enumerate()
                .filter(|(m, _)| *m != CUT)
                .map(|(_, path)| path.answers_between(cut_at, healed_at))
                .sum();
            (instance.name.clone(), before, cut_answers, majority)
        })
        .collect();
    let holds = slot_holds(&slots);
    let most_holders = most_at_once(holds.iter().map(|h| (h.from, h.until)));
    let lost = registrations_lost(&servers, &holds);
    let (mut lease_lost, mut left_out) = (Vec::new(), Vec::new());
    for i in 0..fleet.instances.len() {
        let log = fleet.sidekick(i).log();
        if log.contains("lease lost") {
            lease_lost.push(fleet.instances[i].name.clone());
        }
        if log.contains("etcd member left out of this connection") {
            left_out.push(fleet.instances[i].name.clone());
        }
    }
    eprintln!(
        "{what}: the first holder {first}; m0 cut {:.1} s (the majority's leader then: \
         {majority_leader:?}); answers to each sidekick (from m0 before the cut, from m0 while \
         cut, from m1 + m2 while cut): {talk:?}; at most {most_holders} slot key(s) at once; \
         registrations lost outside a slot hold: {}; sidekicks logging a lost lease: \
         {lease_lost:?}; reconnected leaving a member out: {left_out:?}; {} peer connection(s) \
         not attributed to a member",
        (healed_at - cut_at).as_secs_f64(),
        describe_lost(&lost),
        fleet.etcd.links().map_or(0, |l| l.unattributed()),
    );
    if let Err(e) = rolled {
        panic!(
            "{what}: the rollout did not complete: {e}\n{}",
            fleet.logs(40)
        );
    }
    assert!(
        talk.iter().any(|(_, before, _, _)| *before > 0),
        "{what}: no sidekick talked to m0 before the cut: {talk:?}"
    );
    let unmoved: Vec<_> = talk.iter().filter(|(_, _, _, m)| *m == 0).collect();
    assert!(
        unmoved.is_empty(),
        "{what}: no answer from the majority while m0 was cut: {unmoved:?}"
    );
    assert!(
        majority_leader.is_some(),
        "{what}: the majority had no leader"
    );
    assert!(
        lease_lost.is_empty(),
        "{what}: {lease_lost:?} lost a lease\n{}",
        fleet.logs(40)
    );
    assert!(
        lost.is_empty(),
        "{what}: registrations lost: {}",
        describe_lost(&lost)
    );
    assert!(
        most_holders <= 1,
        "{what}: {most_holders} slot keys at once (slot.max 1)"
    );
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check(&fleet);
}

fn links(fleet: &Fleet) -> &crate::support::peer_links::PeerLinks {
    fleet.etcd.links().expect("a linked etcd cluster")
}

/// Each member's id, by index (from its own `Status`).
async fn member_ids(fleet: &Fleet) -> Vec<u64> {
    let mut ids = Vec::new();
    for endpoint in fleet.etcd.endpoints() {
        let status = status_of(&endpoint)
            .await
            .unwrap_or_else(|e| panic!("status of {endpoint}: {e}"));
        ids.push(status.0);
    }
    ids
}

/// A member's id and the leader it knows (0: none).
async fn status_of(endpoint: &str) -> Result<(u64, u64), String> {
    let mut client = connect(&[endpoint.to_string()])
        .await
        .map_err(|e| e.to_string())?;
    let status = client.status().await.map_err(|e| e.to_string())?;
    let id = status.header().map_or(0, |h| h.member_id());
    Ok((id, status.leader()))
}

/// The leader both majority members (all but [`CUT`]) name, if they agree on one.
async fn majority_leader(fleet: &Fleet) -> Option<u64> {
    let mut named = Vec::new();
    for endpoint in fleet.etcd.endpoints().iter().skip(1) {
        named.push(status_of(endpoint).await.ok()?.1);
    }
    (named.iter().all(|l| *l != 0 && *l == named[0])).then(|| named[0])
}

/// Makes [`CUT`] the leader (`lead`) or a follower with etcd's `MoveLeader`, sent to the current
/// leader, and waits until every member's `Status` agrees.
async fn lead_or_not(fleet: &Fleet, lead: bool) {
    let endpoints = fleet.etcd.endpoints();
    let ids = member_ids(fleet).await;
    let settled = poll_until(ELECTION_TIMEOUT, "the leader etcd should have", || async {
        let mut leaders = Vec::new();
        for endpoint in &endpoints {
            leaders.push(status_of(endpoint).await?.1);
        }
        let leader = leaders[0];
        let at = ids.iter().position(|id| *id == leader);
        if leaders.iter().any(|l| *l != leader) || at.is_none() {
            return Err(format!("members name leaders {leaders:?} (ids {ids:?})"));
        }
        let at = at.unwrap_or_default();
        if (at == CUT) == lead {
            return Ok(());
        }
        let target = match lead {
            true => ids[CUT],
            false => ids[(CUT + 1) % ids.len()],
        };
        let mut client = connect(&[endpoints[at].clone()])
            .await
            .map_err(|e| e.to_string())?;
        client
            .move_leader(target)
            .await
            .map_err(|e| e.to_string())?;
        Err(format!("moved the leader from m{at} to {target:x}"))
    })
    .await;
    settled.unwrap_or_else(|e| panic!("{e}"));
}

/// Every stretch an instance was out of rotation that no slot hold of its own covers (its
/// registration lost, not given up for a swap): the instance and how long (`None`: still out).
fn registrations_lost(servers: &KeyWatch, holds: &[SlotHold]) -> Vec<(String, Option<Duration>)> {
    rotation(servers)
        .stretches
        .into_iter()
        .filter(|stretch| {
            !holds.iter().any(|hold| {
                holder(hold).as_deref() == Some(stretch.instance.as_str())
                    && hold.from <= stretch.from
                    && hold.until.is_none_or(|until| until >= stretch.from)
            })
        })
        .map(|stretch| (stretch.instance.clone(), stretch.duration()))
        .collect()
}

fn describe_lost(lost: &[(String, Option<Duration>)]) -> String {
    match lost.is_empty() {
        true => "none".into(),
        false => lost
            .iter()
            .map(|(name, d)| format!("{name} for {}", seconds(*d)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or("(not seen)".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}
