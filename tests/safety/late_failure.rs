//! A version that passes verification and dies 12 s after its start (issue 17, the late
//! failure), with `rollout.min_healthy = "25s"`: exactly one instance ever runs it, it is back on
//! the old version and registered, the group is halted, the update service got 3/0 errorcode 1008
//! from it, and requests fail only while the dying instance was still registered (its server key
//! deleted within `fall × interval` and a margin of its death, no failure later than Traefik's lag
//! after that). Then the same fleet, the halt lifted and `Restart=always` on the app units, with
//! a second such version: the container exits, systemd restarts it (the unit never reads
//! `failed`), and the restart is caught the same way. One fleet for both cases.

use std::time::{Duration, Instant};

use crate::common::{Observed, finish_after_traefik_caught_up, index_of, wait_new_holder};
use crate::dying::{
    Departure, Watches, assert_failure_recorded, update_ends, wait_halted_and_back,
};
use crate::fleet::{Fleet, FleetSpec, SWAP_START_TIMEOUT};
use crate::load::Load;
use crate::rotation::slot_holds;
use crate::support::images::{DIES_AFTER, DYING_VERSIONS};
use crate::support::{poll_until, prerequisites_met};
use crate::{ROUTE_TIMEOUT, needs, sidekick_binary};

/// Longer than [`DIES_AFTER`] with room: the dying version must fail inside it.
const MIN_HEALTHY: Duration = Duration::from_secs(25);
/// From the slot to the halt and the instance back on the old version: pre-pull, drain, restart,
/// verification, the 12 s the version lives, the rollback and its verification.
const BACK_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the others are watched for not taking a slot once the group is halted: a poll
/// (10 s) and a grant period, with margin.
const HALT_WATCH: Duration = Duration::from_secs(15);
/// `errorcode` of a failure inside min-healthy (`src/omaha/protocol.rs`).
const MIN_HEALTHY_FAILED: i64 = 1008;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_dies_during_min_healthy_reaches_one_instance_and_halts_the_group() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = DYING_VERSIONS.to_vec();
    spec.min_healthy = MIN_HEALTHY;
    spec.grant_period = Duration::from_secs(2);
    let fleet = crate::common::start_fleet(spec).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    let first = DYING_VERSIONS[0];
    let (watches, load) = Watches::start(&fleet).await;
    fleet.publish(first).await;
    dies_during_min_healthy(&fleet, first, "Restart=no", watches, load).await;

    // The same with `Restart=always`: the container's exit is followed by systemd's restart.
    // The second version is published while the group is still halted: no instance checks for
    // updates then, so none is left waiting for a slot for the first (whose failure budget is
    // spent); the first check after the resume is offered the second.
    let second = DYING_VERSIONS[1];
    fleet.publish(second).await;
    for i in 0..fleet.instances.len() {
        let unit = fleet.instances[i].unit.clone();
        fleet.systemd.write_dropin(
            &unit,
            "20-restart.conf",
            "[Service]\nRestart=always\nRestartSec=1\n",
        );
    }
    fleet.systemd.reload().await;
    let (watches, load) = Watches::start(&fleet).await;
    let (resumed, out) = fleet.cli(&["slots", "resume"]);
    assert!(resumed, "slots resume: {out}");
    dies_during_min_healthy(&fleet, second, "Restart=always", watches, load).await;
}

async fn dies_during_min_healthy(
    fleet: &Fleet,
    version: &'static str,
    restart: &str,
    watches: Watches,
    load: Load,
) {
    let what = format!("{version} dying {DIES_AFTER:?} after its start ({restart})");
    let started = watches.started;
    let holder = wait_new_holder(fleet, &watches.slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(fleet, &holder);
    if let Err(e) = wait_halted_and_back(fleet, i, BACK_TIMEOUT).await {
        let report = load.finish().await;
        panic!(
            "{what} ({holder}): {e}\nload: {} sent, {} failed\n{}",
            report.sent(),
            report.failed(),
            fleet.logs(60)
        );
    }
    // The others keep polling; none may take a slot for the version while the group is halted.
    let halted_at = Instant::now();
    let took = poll_until(HALT_WATCH, "another instance takes a slot", || async {
        let later = slot_holds(&watches.slots)
            .into_iter()
            .filter(|h| h.from >= halted_at)
            .count();
        match later {
            0 => Err("none"),
            _ => Ok(()),
        }
    })
    .await;
    let report = finish_after_traefik_caught_up(load).await;
    assert!(
        took.is_err(),
        "{what}: a slot was taken while the group was halted\n{}",
        fleet.logs(40)
    );

    watches.assert_only_one_ran(fleet, i, version, &what).await;

    // 3/0 with the min-healthy errorcode, and no 3/1, for this version from the holder.
    let ends = update_ends(fleet, i)
        .await
        .unwrap_or_else(|| panic!("{what}: {holder} not in the service's listing"));
    // Later checks may end in 3/0 1007 (the version is denylisted there now).
    assert!(
        ends.contains(&(3, 0, Some(MIN_HEALTHY_FAILED))) && !ends.iter().any(|e| e.1 == 1),
        "{what}: the update service's 3/x events of {holder}: {ends:?}"
    );

    // The version's rollout state records the failure, in the stage it happened.
    assert_failure_recorded(fleet, i, version, "min_healthy", &what).await;

    // Requests fail only while the dying instance was still registered.
    let hold = slot_holds(&watches.slots)
        .into_iter()
        .find(|h| crate::unit_watch::holder(h).as_deref() == Some(holder.as_str()))
        .expect("the holder's slot hold");
    let Departure {
        registered,
        died,
        deregistered,
    } = watches.assert_deregistered_when_it_died(fleet, &report, i, hold.from, hold.from, &what);
    eprintln!(
        "{what}: {holder} registered on it at +{:.1} s, left active at +{:.1} s, deregistered \
         {:.2} s later; halted and back by +{:.1} s; {} of {} requests failed",
        (registered - started).as_secs_f64(),
        (died - started).as_secs_f64(),
        deregistered.saturating_duration_since(died).as_secs_f64(),
        (halted_at - started).as_secs_f64(),
        report.failed(),
        report.sent(),
    );
    // The invariants of every safety case, but for the requests the dying instance failed
    // (checked above): no more than one unit down at once, no restart without a slot.
    watches.assert_one_down_and_no_unslotted_restart(fleet, &what);
    let observed = Observed {
        what,
        units: &watches.units,
        slots: &watches.slots,
        report: &report,
        started,
    };
    eprintln!("{}", observed.summary());
}
