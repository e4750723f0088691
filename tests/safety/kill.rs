//! The slot holder SIGKILLed at each step of its swap that is visible from outside, kept down for
//! 2 × `slot.ttl` while another instance takes the slot, then started again. One fleet, one new
//! version per step. Each rollout must end with every unit on the new version, and throughout:
//! never more than `slot.max` (1) app units restarting or not active at once (the killed instance
//! out of rotation while its sidekick is down is not a swap: its unit stays active), no unit
//! started without its instance holding a slot in etcd, no failed request through Traefik.

use std::time::{Duration, Instant};

use crate::common::{
    Observed, finish_after_traefik_caught_up, index_of, publish_any, registered, start_fault_fleet,
    wait_new_holder, wait_rolled_to,
};
use crate::fleet::{Fleet, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use crate::rotation::{KeyWatch, count_keys};
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::UnitWatch;
use crate::{RATE, ROUTE_TIMEOUT, needs};

/// From the slot taken to the step: pre-pull, drain (5 s), restart, verify.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// From the kill to another instance holding the slot: the lease expires (`slot.ttl`), the next
/// poll (10 s), a grant period.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(90);
/// From the restart of the killed sidekick to every unit on the version: up to three swaps.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);

/// A point in the swap, visible from outside, at which the holder is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Its slot key exists: deregistration next.
    SlotTaken,
    /// Its server key is gone: draining.
    Deregistered,
    /// Its drop-in names the new version: reload and restart next.
    DropInWritten,
    /// systemd reports the new version in the unit's `Environment` (true from the `Reload()`
    /// on, so the restart may or may not have happened yet).
    UnitOnNewVersion,
    /// Registered again on the new version: 3/1 and the slot release next.
    RegisteredAgain,
}

impl KillPoint {
    async fn reached(self, fleet: &Fleet, i: usize, version: &str) -> bool {
        let name = &fleet.instances[i].name;
        match self {
            KillPoint::SlotTaken => true,
            KillPoint::Deregistered => !registered(fleet, name).await,
            KillPoint::DropInWritten => std::fs::read_to_string(fleet.sidekick_dropin(i))
                .is_ok_and(|text| text.contains(&format!("SIDEKICK_VERSION={version}"))),
            KillPoint::UnitOnNewVersion => fleet.unit_version(i).await == version,
            KillPoint::RegisteredAgain => {
                fleet.unit_version(i).await == version && registered(fleet, name).await
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holder_killed_at_each_step_and_kept_down_past_its_slot_ttl_never_lets_two_units_restart_at_once()
 {
    if !prerequisites_met(&needs()) {
        return;
    }
    let steps = [
        (KillPoint::SlotTaken, "2.0.0"),
        (KillPoint::Deregistered, "2.1.0"),
        (KillPoint::DropInWritten, "2.2.0"),
        (KillPoint::UnitOnNewVersion, "2.3.0"),
        (KillPoint::RegisteredAgain, "2.4.0"),
    ];
    let mut fleet = start_fault_fleet("2.0.0", |_| {}).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    // Every step runs even when an earlier one broke an invariant (as long as its rollout
    // ended): the report names each step that broke one.
    let mut broken = Vec::new();
    for (point, version) in steps {
        broken.extend(kill_holder_at(&mut fleet, point, version).await);
    }
    assert!(
        broken.is_empty(),
        "{}\n{}",
        broken.join("\n"),
        fleet.logs(40)
    );
}

/// Publishes `version`, kills the first holder at `point`, keeps it down for 2 × `slot.ttl` and
/// until another instance took a slot, starts it again and waits for the rollout's end; the
/// invariants it broke.
async fn kill_holder_at(fleet: &mut Fleet, point: KillPoint, version: &str) -> Vec<String> {
    let started = Instant::now();
    let what = format!("killed at {point:?} on the way to {version}");
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let units = UnitWatch::start(fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(600));
    match version {
        "2.0.0" => fleet.publish(version).await,
        _ => publish_any(fleet, version).await,
    }
    let holder = wait_new_holder(fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(fleet, &holder);
    let reached = poll_until(STEP_TIMEOUT, &format!("{holder} at {point:?}"), || async {
        match point.reached(fleet, i, version).await {
            true => Ok(()),
            false => Err("not yet"),
        }
    })
    .await;
    reached.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));
    fleet.kill_sidekick(i);
    let killed = Instant::now();
    let held_at_kill = count_keys(&fleet.client, SLOTS_PREFIX).await;

    let other = wait_new_holder(fleet, &slots, killed, &[&holder], TAKEOVER_TIMEOUT).await;
    // The 2 × slot.ttl: a set time the holder stays down, not a wait for a state.
    tokio::time::sleep_until((killed + 2 * fleet.spec().slot_ttl).into()).await;
    let down_for = killed.elapsed();
    fleet.start_sidekick(i);

    let rolled = wait_rolled_to(fleet, version, ROLLOUT_TIMEOUT).await;
    let report = finish_after_traefik_caught_up(load).await;
    if let Err(e) = rolled {
        panic!(
            "{what} ({holder}; {other} took the slot while it was down): {e}\n{}",
            fleet.logs(40)
        );
    }
    eprintln!(
        "{what}: {holder} killed ({held_at_kill} slot(s) held then), down {:.1} s, {other} took \
         the slot meanwhile",
        down_for.as_secs_f64()
    );
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .violations()
}
