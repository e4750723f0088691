//! Issue 19 part 2, case 6: one host's wall clock an hour ahead. One sidekick runs under
//! libfaketime (`FAKETIME=+1h`, its monotonic clock left true), the group's policy sets a
//! `batch_delay`, and the fleet rolls out. The rollout's gaps used to be measured on the wall
//! clocks of the hosts that stamped the releases (issue 17): the host an hour ahead took its slot
//! at once after a release, and the others, reading its release stamped an hour ahead, waited an
//! hour after it. Now each host measures a gap from when it first saw the release. Shown here:
//! every gap between a slot's release and the next slot taken lasts `batch_delay`, the rollout
//! completes, the skewed host keeps its registration (etcd leases run on etcd's clock) and its
//! slot lease, and the usual invariants hold.

use std::time::{Duration, Instant};

use crate::common::{
    Observed, finish_after_traefik_caught_up, registered, start_fault_fleet, wait_new_holder,
    wait_rolled_to,
};
use crate::fleet::{SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use crate::rotation::{KeyWatch, rotation, slot_holds};
use crate::support::{Need, poll_until, prerequisites_met};
use crate::unit_watch::{UnitWatch, holder};
use crate::{RATE, ROUTE_TIMEOUT};

const NEW_VERSION: &str = "2.0.0";
/// Debian's libfaketime (package `faketime`, installed by `scripts/setup`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The skewed host's offset.
const AHEAD: Duration = Duration::from_secs(3600);
const BATCH_DELAY: Duration = Duration::from_secs(10);
/// Four swaps with three batch gaps.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// The release's record and the slot key's deletion are separate writes.
const MARGIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_an_hour_ahead_keeps_its_leases_and_cuts_no_batch_delay_short() {
    let mut needs = crate::needs();
    needs.push(Need::File(LIBFAKETIME));
    if !prerequisites_met(&needs) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |_| {}).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    let (stored, out) = fleet.cli(&[
        "rollout",
        "set",
        &format!("batch_delay={}s", BATCH_DELAY.as_secs()),
    ]);
    assert!(stored, "rollout set batch_delay: {out}");
    // The skewed host starts once another holds the first slot, so it takes a slot after a
    // release and its own release comes before someone else's slot.
    let skewed = fleet.instances.len() - 1;
    let skewed_name = fleet.instances[skewed].name.clone();
    fleet.stop_sidekick(skewed);
    let gone = poll_until(
        ROUTE_TIMEOUT,
        "the stopped sidekick deregistered",
        || async {
            match registered(&fleet, &skewed_name).await {
                true => Err("registered"),
                false => Ok(()),
            }
        },
    )
    .await;
    gone.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));

    let started = Instant::now();
    let what = format!("{skewed_name}'s wall clock an hour ahead");
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let units = UnitWatch::start(&fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(600));
    fleet.publish(NEW_VERSION).await;
    let first = wait_new_holder(&fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let fake = format!("+{}s", AHEAD.as_secs());
    let spawned = jiff::Timestamp::now();
    fleet.start_sidekick_with_env(
        skewed,
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", &fake),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );

    let rolled = wait_rolled_to(&fleet, NEW_VERSION, ROLLOUT_TIMEOUT).await;
    let report = finish_after_traefik_caught_up(load).await;
    let log = fleet.sidekick(skewed).log();
    let skew = log_skew(&log, spawned);
    let mut holds = slot_holds(&slots);
    holds.sort_by_key(|h| h.from);
    let gaps: Vec<(String, Option<Duration>)> = holds
        .windows(2)
        .map(|pair| {
            let next = holder(&pair[1]).unwrap_or_default();
            (
                next,
                pair[0]
                    .until
                    .map(|u| pair[1].from.saturating_duration_since(u)),
            )
        })
        .collect();
    let out_of_rotation: Vec<_> = rotation(&servers)
        .stretches
        .into_iter()
        .filter(|s| s.instance == skewed_name)
        .map(|s| s.duration())
        .collect();
    eprintln!(
        "{what}: its first log line stamped {skew:?} after its start; the first holder {first}; slot \
         holders in turn and the gap before each: {gaps:?} (batch_delay {BATCH_DELAY:?}); \
         {skewed_name} out of rotation {out_of_rotation:?}"
    );
    if let Err(e) = rolled {
        panic!(
            "{what}: the rollout did not complete: {e}\n{}",
            fleet.logs(40)
        );
    }
    assert!(
        skew.is_some_and(|s| s.abs_diff(AHEAD) < Duration::from_secs(60)),
        "{what}: libfaketime did not put its clock an hour ahead (its log is {skew:?} ahead)"
    );
    assert_eq!(
        holds.len(),
        fleet.instances.len(),
        "{what}: one slot per instance: {gaps:?}"
    );
    assert!(
        gaps.iter().any(|(next, _)| *next == skewed_name),
        "{what}: {skewed_name} took no slot after a release: {gaps:?}"
    );
    let short: Vec<_> = gaps
        .iter()
        .filter(|(_, gap)| gap.is_none_or(|g| g + MARGIN < BATCH_DELAY))
        .collect();
    assert!(
        short.is_empty(),
        "{what}: batch_delay ({BATCH_DELAY:?}) cut short before {short:?}\n{}",
        fleet.logs(40)
    );
    assert!(
        !log.contains("lease lost"),
        "{what}: {skewed_name} lost a lease\n{}",
        fleet.logs(40)
    );
    // Out of rotation only for its own swap: one stretch, ended.
    assert!(
        out_of_rotation.len() == 1 && out_of_rotation[0].is_some(),
        "{what}: {skewed_name} out of rotation {out_of_rotation:?}"
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

/// How far ahead of `spawned` (this process's clock when it started the sidekick) the first line
/// the sidekick wrote since is stamped (the log holds its run before the stop too, stamped
/// before `spawned`).
fn log_skew(log: &str, spawned: jiff::Timestamp) -> Option<Duration> {
    log.lines()
        .filter_map(|line| {
            line.split_whitespace()
                .next()?
                .parse::<jiff::Timestamp>()
                .ok()
        })
        .find(|stamp| *stamp >= spawned)
        .and_then(|stamp| Duration::try_from(stamp.duration_since(spawned)).ok())
}
