//! A version that passes verification and dies 12 s after its start (issue 17, the late
//! failure), with `rollout.min_healthy = "25s"`: exactly one instance ever runs it, it is back on
//! the old version and registered, the group is halted, the update service got 3/0 errorcode 1008
//! from it, and requests fail only while the dying instance was still registered (its server key
//! deleted within `fall × interval` and a margin of its death, no failure later than Traefik's lag
//! after that). Then the same fleet, the halt lifted and `Restart=always` on the app units, with
//! a second such version: the container exits, systemd restarts it (the unit never reads
//! `failed`), and the restart is caught the same way. One fleet for both cases.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Observed, finish_after_traefik_caught_up, index_of, wait_new_holder};
use crate::fleet::{
    FIRST_VERSION, Fleet, FleetSpec, HALT_PREFIX, SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT,
};
use crate::load::Load;
use crate::rotation::{KeyWatch, count_keys, server_instance, slot_holds};
use crate::support::images::{DIES_AFTER, DYING_VERSIONS};
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::UnitWatch;
use crate::update_service::{APP_ID, TRACK};
use crate::{RATE, ROUTE_TIMEOUT, needs, sidekick_binary};

/// Longer than [`DIES_AFTER`] with room: the dying version must fail inside it.
const MIN_HEALTHY: Duration = Duration::from_secs(25);
/// From the slot to the halt and the instance back on the old version: pre-pull, drain, restart,
/// verification, the 12 s the version lives, the rollback and its verification.
const BACK_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the others are watched for not taking a slot once the group is halted: a poll
/// (10 s) and a grant period, with margin.
const HALT_WATCH: Duration = Duration::from_secs(15);
/// From the unit leaving `active` to its server key gone: the D-Bus signal (or `fall = 2` probes
/// 250 ms apart), with margin for a loaded machine.
const DEREGISTER_BOUND: Duration = Duration::from_secs(3);
/// Traefik's provider throttle (~2 s) plus margin: how long it may still route to a key gone.
const TRAEFIK_LAG: Duration = Duration::from_secs(4);
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
    let mut fleet = crate::common::start_fleet(spec).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    let first = DYING_VERSIONS[0];
    let watches = Watches::start(&fleet).await;
    fleet.publish(first).await;
    dies_during_min_healthy(&mut fleet, first, "Restart=no", watches).await;

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
    let watches = Watches::start(&fleet).await;
    let (resumed, out) = fleet.cli(&["slots", "resume"]);
    assert!(resumed, "slots resume: {out}");
    dies_during_min_healthy(&mut fleet, second, "Restart=always", watches).await;
}

/// What one case watches from before its version can be swapped to (also the monitor case's,
/// `tests/safety/monitor_failure.rs`).
pub(crate) struct Watches {
    pub started: Instant,
    /// Started with the load: its `sent_at` counts from about then (a little later).
    pub load_started: Instant,
    pub load: Load,
    pub slots: KeyWatch,
    pub servers: KeyWatch,
    pub units: UnitWatch,
}

impl Watches {
    pub async fn start(fleet: &Fleet) -> Watches {
        let started = Instant::now();
        let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
        let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
        let units = UnitWatch::start(fleet).await;
        let load_started = Instant::now();
        let load = fleet.load(RATE, Duration::from_secs(300));
        Watches {
            started,
            load_started,
            load,
            slots,
            servers,
            units,
        }
    }
}

async fn dies_during_min_healthy(
    fleet: &mut Fleet,
    version: &'static str,
    restart: &str,
    watches: Watches,
) {
    let what = format!("{version} dying {DIES_AFTER:?} after its start ({restart})");
    let Watches {
        started,
        load_started,
        load,
        slots,
        servers,
        units,
    } = watches;
    let holder = wait_new_holder(fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(fleet, &holder);
    let back = poll_until(BACK_TIMEOUT, "halted, and the holder back", || async {
        let halts = count_keys(&fleet.client, HALT_PREFIX).await;
        let now = fleet.unit_version(i).await;
        let is_registered = crate::common::registered(fleet, &holder).await;
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
            "{what} ({holder}): {e}\nload: {} sent, {} failed\n{}",
            report.sent(),
            report.failed(),
            fleet.logs(60)
        );
    }
    // The others keep polling; none may take a slot for the version while the group is halted.
    let halted_at = Instant::now();
    let took = poll_until(HALT_WATCH, "another instance takes a slot", || async {
        let later = slot_holds(&slots)
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

    // Exactly one instance ever ran the version: the others never restarted.
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

    // 3/0 with the min-healthy errorcode, and no 3/1, for this version from the holder.
    let id = fleet.machine_id(i);
    let rows = fleet.updates.instances().await;
    let row = rows
        .iter()
        .find(|row: &&Value| row["machine_id"].as_str() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("{what}: {holder} not in the service's listing: {rows:?}"));
    let events = row["last_events"].as_array().cloned().unwrap_or_default();
    let ends: Vec<(i64, i64, Option<i64>)> = events
        .iter()
        .filter(|e| e["event_type"].as_i64() == Some(3))
        .map(|e| {
            let n = |k: &str| e[k].as_i64();
            (3, n("event_result").unwrap_or(-1), n("error_code"))
        })
        .collect();
    // Later checks may end in 3/0 1007 (the version is denylisted there now).
    assert!(
        ends.contains(&(3, 0, Some(MIN_HEALTHY_FAILED))) && !ends.iter().any(|e| e.1 == 1),
        "{what}: the update service's 3/x events of {holder}: {ends:?}"
    );

    // The version's rollout state records the failure, in the stage it happened.
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
            .any(|f| f.instance == holder && f.stage == "min_healthy"),
        "{what}: failures recorded: {:?}",
        state.failures
    );

    // Requests fail only while the dying instance was still registered.
    let hold = slot_holds(&slots)
        .into_iter()
        .find(|h| crate::unit_watch::holder(h).as_deref() == Some(holder.as_str()))
        .expect("the holder's slot hold");
    let of_holder = |e: &&crate::rotation::KeyEvent| server_instance(&e.key) == Some(&holder);
    let events = servers.events();
    let registered_again = events
        .iter()
        .filter(of_holder)
        .find(|e| e.put && e.at > hold.from)
        .unwrap_or_else(|| panic!("{what}: {holder} never registered on {version}"))
        .at;
    let deregistered = events
        .iter()
        .filter(of_holder)
        .find(|e| !e.put && e.at > registered_again)
        .unwrap_or_else(|| panic!("{what}: {holder} was not deregistered after it died"))
        .at;
    let died = units
        .samples()
        .into_iter()
        .find(|s| s.at > registered_again && s.units[i].active != "active")
        .unwrap_or_else(|| panic!("{what}: {holder}'s unit never left active"))
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
        "{what}: requests failed after {holder} was deregistered (+{:?}) and Traefik caught up: \
         {late:?}",
        deregistered - started
    );
    eprintln!(
        "{what}: {holder} registered on it at +{:.1} s, left active at +{:.1} s, deregistered \
         {:.2} s later; halted and back by +{:.1} s; {} of {} requests failed",
        (registered_again - started).as_secs_f64(),
        (died - started).as_secs_f64(),
        deregistered.saturating_duration_since(died).as_secs_f64(),
        (halted_at - started).as_secs_f64(),
        report.failed(),
        report.sent(),
    );
    // The invariants of every safety case, but for the requests the dying instance failed
    // (checked above): no more than one unit down at once, no restart without a slot.
    let (most, down) = units.most_down_at_once();
    assert!(most <= 1, "{what}: {most} units down at once: {down:?}");
    let unslotted = units.restarts_without_slot(&slot_holds(&slots));
    assert!(
        unslotted.is_empty(),
        "{what}: restarts without a slot: {unslotted:?}\n{}",
        fleet.logs(40)
    );
    let observed = Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    };
    eprintln!("{}", observed.summary());
}
