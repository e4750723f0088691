//! A version that passes verification and a short min-healthy, sends 3/1 and releases its slot,
//! then dies [`DIES_AFTER`] after its start, inside `rollout.monitor = "40s"` (issue 17): the
//! group is halted, the instance is deregistered at once and rolled back to the old version
//! taking a slot again (through the halt on the version it leaves), the update service keeps its
//! 3/1 and gets nothing more, the version's rollout state records the failure with stage
//! `monitor`, and, with `batch_delay` as long as monitor, no other instance ever runs it.

use std::time::{Duration, Instant};

use crate::common::{finish_after_traefik_caught_up, index_of, wait_new_holder};
use crate::dying::{
    Departure, Watches, assert_failure_recorded, update_ends, wait_halted_and_back,
};
use crate::fleet::{FIRST_VERSION, FleetSpec, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use crate::rotation::{count_keys, slot_holds};
use crate::support::images::{DIES_AFTER, DYING_VERSIONS};
use crate::support::{poll_until, prerequisites_met};
use crate::{ROUTE_TIMEOUT, needs, sidekick_binary};

/// Longer than [`DIES_AFTER`] with room: the version must die inside it.
const MONITOR: Duration = Duration::from_secs(40);
/// From the slot to the 3/1 and the release: pre-pull, drain, restart, verification, 1 s
/// min-healthy.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(90);
/// From the release to the halt and the instance back on the old version: the rest of the 12 s
/// the version lives, the slot again, the rollback and its verification.
const BACK_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_dies_inside_monitor_after_its_release_halts_the_group_and_is_rolled_back() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = DYING_VERSIONS.to_vec();
    spec.min_healthy = Duration::from_secs(1);
    spec.monitor = MONITOR;
    // Swarm's pairing (`--update-delay` with `--update-monitor`): nobody takes the next slot
    // while the released version is still watched.
    spec.batch_delay = MONITOR;
    spec.grant_period = Duration::from_secs(2);
    let fleet = crate::common::start_fleet(spec).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    let version = DYING_VERSIONS[0];
    let what = format!("{version} dying {DIES_AFTER:?} after its start, inside monitor");
    let (watches, load) = Watches::start(&fleet).await;
    let started = watches.started;
    fleet.publish(version).await;
    let holder = wait_new_holder(&fleet, &watches.slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(&fleet, &holder);

    // 3/1 and the release, the unit still on the version: inside monitor.
    let released = poll_until(
        RELEASE_TIMEOUT,
        "3/1 sent and the slot released",
        || async {
            let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
            let now = fleet.unit_version(i).await;
            let ends = update_ends(&fleet, i).await.unwrap_or_default();
            let complete = ends.contains(&(3, 1, None));
            match complete && held == 0 && now == version {
                true => Ok(()),
                false => Err(format!("3/1: {complete}; {held} slots held; on {now}")),
            }
        },
    )
    .await;
    if let Err(e) = released {
        let report = load.finish().await;
        panic!(
            "{what} ({holder}): {e}\n{} failed\n{}",
            report.failed(),
            fleet.logs(60)
        );
    }
    let released_at = Instant::now();

    if let Err(e) = wait_halted_and_back(&fleet, i, BACK_TIMEOUT).await {
        let report = load.finish().await;
        panic!(
            "{what} ({holder}): {e}\n{} failed\n{}",
            report.failed(),
            fleet.logs(60)
        );
    }
    let report = finish_after_traefik_caught_up(load).await;

    // Exactly one instance ever ran the version; the holder is back on the old one.
    watches.assert_only_one_ran(&fleet, i, version, &what).await;

    // The holder took a slot twice: the swap, and the rollback after the release.
    let holds: Vec<_> = slot_holds(&watches.slots)
        .into_iter()
        .filter(|h| crate::unit_watch::holder(h).as_deref() == Some(holder.as_str()))
        .collect();
    assert_eq!(holds.len(), 2, "{what}: {holder}'s slot holds: {holds:?}");
    assert!(
        holds[1].from >= released_at - Duration::from_secs(1),
        "{what}: {holds:?}"
    );

    // The update service keeps its 3/1: no 3/0 for the version from the holder.
    let holder_ends = update_ends(&fleet, i).await.unwrap_or_default();
    assert!(
        holder_ends.contains(&(3, 1, None)) && !holder_ends.iter().any(|e| e.1 == 0),
        "{what}: the update service's 3/x events of {holder}: {holder_ends:?}"
    );

    // The version's rollout state records the failure with stage `monitor`.
    assert_failure_recorded(&fleet, i, version, "monitor", &what).await;

    // Deregistered at once when it died (after the release); requests fail only until Traefik
    // caught up with that.
    let Departure {
        died, deregistered, ..
    } = watches.assert_deregistered_when_it_died(
        &fleet,
        &report,
        i,
        holds[0].from,
        released_at,
        &what,
    );
    watches.assert_one_down_and_no_unslotted_restart(&fleet, &what);
    eprintln!(
        "{what}: {holder} released at +{:.1} s, left active at +{:.1} s, deregistered {:.2} s \
         later, back on {FIRST_VERSION} and halted; {} of {} requests failed",
        (released_at - started).as_secs_f64(),
        (died - started).as_secs_f64(),
        deregistered.saturating_duration_since(died).as_secs_f64(),
        report.failed(),
        report.sent(),
    );
}
