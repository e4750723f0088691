//! What the cases of a version that dies after its verification (`late_failure.rs`,
//! `monitor_failure.rs`) and the halt cases (`halt.rs`) watch and check: the instance it died on,
//! the group halted and that instance back, the update service's end events, the failure
//! recorded in the version's rollout state.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::registered;
use crate::fleet::{FIRST_VERSION, Fleet, HALT_PREFIX, SERVERS_PREFIX, SLOTS_PREFIX};
use crate::load::{Load, LoadReport};
use crate::rotation::{KeyEvent, KeyWatch, count_keys, server_instance, slot_holds};
use crate::support::poll_until;
use crate::unit_watch::UnitWatch;
use crate::update_service::{APP_ID, TRACK};

/// From the unit leaving `active` to its server key gone: the D-Bus signal (or `fall = 2` probes
/// 250 ms apart), with margin for a loaded machine.
const DEREGISTER_BOUND: Duration = Duration::from_secs(3);
/// Traefik's provider throttle (~2 s) plus margin: how long it may still route to a key gone.
const TRAEFIK_LAG: Duration = Duration::from_secs(4);

/// What a case of a dying version (`late_failure.rs`, `monitor_failure.rs`) watches from before
/// its version can be swapped to.
pub struct Watches {
    pub started: Instant,
    /// When the load started: its `sent_at` counts from about then (a little later).
    pub load_started: Instant,
    pub slots: KeyWatch,
    pub servers: KeyWatch,
    pub units: UnitWatch,
}

/// When the instance a version died on registered on it, left `active` and was deregistered.
pub struct Departure {
    pub registered: Instant,
    pub died: Instant,
    pub deregistered: Instant,
}

impl Watches {
    /// Starts the watches, then the load through Traefik (returned beside them).
    pub async fn start(fleet: &Fleet) -> (Watches, Load) {
        let started = Instant::now();
        let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
        let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
        let units = UnitWatch::start(fleet).await;
        let load_started = Instant::now();
        let load = fleet.load(crate::RATE, Duration::from_secs(300));
        let watches = Watches {
            started,
            load_started,
            slots,
            servers,
            units,
        };
        (watches, load)
    }

    /// Exactly one instance ever ran `version`: the others never restarted, and every unit,
    /// instance `i`'s too, is back on (or still on) the first version.
    pub async fn assert_only_one_ran(&self, fleet: &Fleet, i: usize, version: &str, what: &str) {
        let holder = &fleet.instances[i].name;
        for other in (0..fleet.instances.len()).filter(|&o| o != i) {
            let name = &fleet.instances[other].name;
            let restarts = self.units.restarts_of(name, self.started, Instant::now());
            assert!(
                restarts.is_empty(),
                "{what}: {name} restarted {} time(s) though only {holder} may run {version}\n{}",
                restarts.len(),
                fleet.logs(40)
            );
            assert_eq!(fleet.unit_version(other).await, FIRST_VERSION, "{what}");
        }
        assert_eq!(fleet.unit_version(i).await, FIRST_VERSION, "{what}");
    }

    /// Instance `i`, registered again after its slot taken at `swapped`, was deregistered within
    /// [`DEREGISTER_BOUND`] of its unit leaving `active` (the first sample after that
    /// registration and after `died_after` where it is not), and no request failed later than
    /// Traefik's lag after that deregistration.
    pub fn assert_deregistered_when_it_died(
        &self,
        fleet: &Fleet,
        report: &LoadReport,
        i: usize,
        swapped: Instant,
        died_after: Instant,
        what: &str,
    ) -> Departure {
        let holder = &fleet.instances[i].name;
        let of_holder = |e: &&KeyEvent| server_instance(&e.key) == Some(holder.as_str());
        let events = self.servers.events();
        let registered = events
            .iter()
            .filter(of_holder)
            .find(|e| e.put && e.at > swapped)
            .unwrap_or_else(|| panic!("{what}: {holder} never registered after its swap"))
            .at;
        let deregistered = events
            .iter()
            .filter(of_holder)
            .find(|e| !e.put && e.at > registered)
            .unwrap_or_else(|| panic!("{what}: {holder} was not deregistered after it died"))
            .at;
        let died = self
            .units
            .samples()
            .into_iter()
            .find(|s| s.at > registered.max(died_after) && s.units[i].active != "active")
            .unwrap_or_else(|| panic!("{what}: {holder}'s unit never left active"))
            .at;
        assert!(
            deregistered <= died + DEREGISTER_BOUND,
            "{what}: {holder} left active at +{:?} but was deregistered only at +{:?}\n{}",
            died - self.started,
            deregistered - self.started,
            fleet.logs(40)
        );
        let latest_failure_allowed = (deregistered + TRAEFIK_LAG) - self.load_started;
        let late: Vec<_> = report
            .failures()
            .into_iter()
            .filter(|s| s.sent_at > latest_failure_allowed)
            .map(|s| (s.sent_at, s.outcome.clone()))
            .collect();
        assert!(
            late.is_empty(),
            "{what}: requests failed after {holder} was deregistered (+{:?}) and Traefik caught \
             up: {late:?}",
            deregistered - self.started
        );
        Departure {
            registered,
            died,
            deregistered,
        }
    }

    /// The invariants of every safety case but the requests (a dying instance fails some): no
    /// more than one unit down at once, no restart without a slot.
    pub fn assert_one_down_and_no_unslotted_restart(&self, fleet: &Fleet, what: &str) {
        let (most, down) = self.units.most_down_at_once();
        assert!(most <= 1, "{what}: {most} units down at once: {down:?}");
        let unslotted = self.units.restarts_without_slot(&slot_holds(&self.slots));
        assert!(
            unslotted.is_empty(),
            "{what}: restarts without a slot: {unslotted:?}\n{}",
            fleet.logs(40)
        );
    }
}

/// Waits until the group is halted and instance `i` is back on the first version, registered,
/// with no slot held.
pub async fn wait_halted_and_back(
    fleet: &Fleet,
    i: usize,
    timeout: Duration,
) -> Result<(), String> {
    let holder = &fleet.instances[i].name;
    poll_until(timeout, "halted, and the holder back", || async {
        let halts = count_keys(&fleet.client, HALT_PREFIX).await;
        let now = fleet.unit_version(i).await;
        let is_registered = registered(fleet, holder).await;
        let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
        match halts > 0 && now == FIRST_VERSION && is_registered && held == 0 {
            true => Ok(()),
            false => Err(format!(
                "{halts} halt markers; {holder} on {now}, registered: {is_registered}; \
                 {held} slots held"
            )),
        }
    })
    .await
}

/// The update service's 3/x events of instance `i` as (3, result, errorcode); `None` while the
/// service does not list the instance.
pub async fn update_ends(fleet: &Fleet, i: usize) -> Option<Vec<(i64, i64, Option<i64>)>> {
    let id = fleet.machine_id(i);
    let rows = fleet.updates.instances().await;
    let row = rows
        .iter()
        .find(|row: &&Value| row["machine_id"].as_str() == Some(id.as_str()))?;
    let events = row["last_events"].as_array().cloned().unwrap_or_default();
    let ends = events
        .iter()
        .filter(|e| e["event_type"].as_i64() == Some(3))
        .map(|e| {
            let n = |k: &str| e[k].as_i64();
            (3, n("event_result").unwrap_or(-1), n("error_code"))
        })
        .collect();
    Some(ends)
}

/// `version`'s rollout state records a failure of instance `i` in `stage`.
pub async fn assert_failure_recorded(
    fleet: &Fleet,
    i: usize,
    version: &str,
    stage: &str,
    what: &str,
) {
    let holder = &fleet.instances[i].name;
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
            .any(|f| &f.instance == holder && f.stage == stage),
        "{what}: failures recorded: {:?}",
        state.failures
    );
}
