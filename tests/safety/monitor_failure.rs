//! A version that passes verification and a short min-healthy, sends 3/1 and releases its slot,
//! then dies [`DIES_AFTER`] after its start, inside `rollout.monitor = "40s"` (issue 17): the
//! group is halted, the instance is deregistered at once and rolled back to the old version
//! taking a slot again (through the halt on the version it leaves), the update service keeps its
//! 3/1 and gets nothing more, the version's rollout state records the failure with stage
//! `monitor`, and, with `batch_delay` as long as monitor, no other instance ever runs it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{finish_after_traefik_caught_up, index_of, wait_new_holder};
use crate::fleet::{
    FIRST_VERSION, Fleet, FleetSpec, HALT_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT,
};
use crate::late_failure::Watches;
use crate::rotation::{count_keys, server_instance, slot_holds};
use crate::support::images::{DIES_AFTER, DYING_VERSIONS};
use crate::support::{poll_until, prerequisites_met};
use crate::update_service::{APP_ID, TRACK};
use crate::{ROUTE_TIMEOUT, needs, sidekick_binary};

/// Longer than [`DIES_AFTER`] with room: the version must die inside it.
const MONITOR: Duration = Duration::from_secs(40);
/// From the slot to the 3/1 and the release: pre-pull, drain, restart, verification, 1 s
/// min-healthy.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(90);
/// From the release to the halt and the instance back on the old version: the rest of the 12 s
/// the version lives, the slot again, the rollback and its verification.
const BACK_TIMEOUT: Duration = Duration::from_secs(90);
/// From the unit leaving `active` to its server key gone (as in `late_failure.rs`).
const DEREGISTER_BOUND: Duration = Duration::from_secs(3);
/// Traefik's provider throttle plus margin.
const TRAEFIK_LAG: Duration = Duration::from_secs(4);

/// The update service's 3/x events of instance `i`: (3, result, errorcode).
async fn ends(fleet: &Fleet, i: usize) -> Vec<(i64, i64, Option<i64>)> {
    let id = fleet.machine_id(i);
    let rows = fleet.updates.instances().await;
    let Some(row) = rows
        .iter()
        .find(|row: &&Value| row["machine_id"].as_str() == Some(id.as_str()))
    else {
        return Vec::new();
    };
    let events = row["last_events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .filter(|e| e["event_type"].as_i64() == Some(3))
        .map(|e| {
            let n = |k: &str| e[k].as_i64();
            (3, n("event_result").unwrap_or(-1), n("error_code"))
        })
        .collect()
}

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
    let Watches {
        started,
        load_started,
        load,
        slots,
        servers,
        units,
    } = Watches::start(&fleet).await;
    fleet.publish(version).await;
    let holder = wait_new_holder(&fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(&fleet, &holder);

    // 3/1 and the release, the unit still on the version: inside monitor.
    let released = poll_until(
        RELEASE_TIMEOUT,
        "3/1 sent and the slot released",
        || async {
            let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
            let now = fleet.unit_version(i).await;
            let complete = ends(&fleet, i).await.contains(&(3, 1, None));
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

    let back = poll_until(BACK_TIMEOUT, "halted, and the holder back", || async {
        let halts = count_keys(&fleet.client, HALT_PREFIX).await;
        let now = fleet.unit_version(i).await;
        let is_registered = crate::common::registered(&fleet, &holder).await;
        let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
        match halts > 0 && now == FIRST_VERSION && is_registered && held == 0 {
            true => Ok(()),
            false => Err(format!(
                "{halts} halt markers; {holder} on {now}, registered: {is_registered}; \
                 {held} slots held"
            )),
        }
    })
    .await;
    if let Err(e) = back {
        let report = load.finish().await;
        panic!(
            "{what} ({holder}): {e}\n{} failed\n{}",
            report.failed(),
            fleet.logs(60)
        );
    }
    let report = finish_after_traefik_caught_up(load).await;

    // Exactly one instance ever ran the version; the holder is back on the old one.
    for other in (0..fleet.instances.len()).filter(|&o| o != i) {
        let name = &fleet.instances[other].name;
        let restarts = units.restarts_of(name, started, Instant::now());
        assert!(
            restarts.is_empty(),
            "{what}: {name} restarted {} time(s) though only {holder} may run {version}\n{}",
            restarts.len(),
            fleet.logs(40)
        );
        assert_eq!(fleet.unit_version(other).await, FIRST_VERSION, "{what}");
    }
    assert_eq!(fleet.unit_version(i).await, FIRST_VERSION, "{what}");

    // The holder took a slot twice: the swap, and the rollback after the release.
    let holds: Vec<_> = slot_holds(&slots)
        .into_iter()
        .filter(|h| crate::unit_watch::holder(h).as_deref() == Some(holder.as_str()))
        .collect();
    assert_eq!(holds.len(), 2, "{what}: {holder}'s slot holds: {holds:?}");
    assert!(
        holds[1].from >= released_at - Duration::from_secs(1),
        "{what}: {holds:?}"
    );

    // The update service keeps its 3/1: no 3/0 for the version from the holder.
    let holder_ends = ends(&fleet, i).await;
    assert!(
        holder_ends.contains(&(3, 1, None)) && !holder_ends.iter().any(|e| e.1 == 0),
        "{what}: the update service's 3/x events of {holder}: {holder_ends:?}"
    );

    // The version's rollout state records the failure with stage `monitor`.
    let group = format!("{APP_ID}/{TRACK}");
    let snapshot = sidekick::rollout::store::read_group(&mut fleet.client.clone(), &group)
        .await
        .unwrap_or_else(|e| panic!("{what}: read the rollout of {group}: {e}"));
    let state = snapshot
        .versions
        .iter()
        .find(|v| v.version == version)
        .unwrap_or_else(|| panic!("{what}: no rollout state for {version}"));
    assert!(
        state
            .failures
            .iter()
            .any(|f| f.instance == holder && f.stage == "monitor"),
        "{what}: failures recorded: {:?}",
        state.failures
    );

    // Deregistered at once when it died; requests fail only until Traefik caught up with that.
    let of_holder = |e: &&crate::rotation::KeyEvent| server_instance(&e.key) == Some(&holder);
    let events = servers.events();
    let registered_again = events
        .iter()
        .filter(of_holder)
        .find(|e| e.put && e.at > holds[0].from)
        .unwrap_or_else(|| panic!("{what}: {holder} never registered on {version}"))
        .at;
    let died = units
        .samples()
        .into_iter()
        .find(|s| s.at > released_at && s.units[i].active != "active")
        .unwrap_or_else(|| panic!("{what}: {holder}'s unit never left active"))
        .at;
    let deregistered = events
        .iter()
        .filter(of_holder)
        .find(|e| !e.put && e.at > registered_again)
        .unwrap_or_else(|| panic!("{what}: {holder} was not deregistered after it died"))
        .at;
    assert!(
        deregistered <= died + DEREGISTER_BOUND,
        "{what}: {holder} left active at +{:?} but was deregistered only at +{:?}\n{}",
        died - started,
        deregistered - started,
        fleet.logs(40)
    );
    let latest_failure_allowed = (deregistered + TRAEFIK_LAG) - load_started;
    let late: Vec<_> = report
        .failures()
        .into_iter()
        .filter(|s| s.sent_at > latest_failure_allowed)
        .map(|s| (s.sent_at, s.outcome.clone()))
        .collect();
    assert!(
        late.is_empty(),
        "{what}: requests failed after {holder} was deregistered: {late:?}"
    );
    let (most, down) = units.most_down_at_once();
    assert!(most <= 1, "{what}: {most} units down at once: {down:?}");
    let unslotted = units.restarts_without_slot(&slot_holds(&slots));
    assert!(
        unslotted.is_empty(),
        "{what}: restarts without a slot: {unslotted:?}\n{}",
        fleet.logs(40)
    );
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
