//! The slot holder cut from etcd (issue 16 "End to end", issue 19 part 2 cases 1 and 2): each
//! sidekick reaches etcd through its own [`Blackhole`] proxy, and the holder's goes silent
//! mid-drain (case 1) or mid-verify (case 2), for longer than `slot.ttl` and until others swapped
//! on the slots taken after the cut. Each case runs with `slot.max = 1` and four instances, and
//! with `slot.max = 2` and five. Throughout: at most `slot.max` app units restarting or not
//! active and `slot.max` slot keys at once, no restart without a slot, no failed request through
//! Traefik; at most `slot.max` instances out of rotation at once besides the cut one (out by the
//! fault, not by a swap).

use std::time::{Duration, Instant};

use crate::common::{
    Observed, behind_member_paths, finish_after_traefik_caught_up, index_of, most_at_once,
    registered, start_fault_fleet, wait_new_holder, wait_rolled_to,
};
use crate::fleet::{FIRST_VERSION, Fleet, SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use crate::load::Load;
use crate::rotation::{KeyWatch, SlotHold, rotation, server_instance, slot_holds};
use crate::support::blackhole::Blackhole;
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::{UnitWatch, holder};
use crate::{RATE, ROUTE_TIMEOUT, needs};

const NEW_VERSION: &str = "2.0.0";
/// From the slot taken to its holder's deregistration.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// While cut: the holder's slot expires, then the others' swaps through the freed slots (poll,
/// grant, drain, restart, verify each).
const OTHERS_TIMEOUT: Duration = Duration::from_secs(180);
/// After the heal: the rest of the rollout, the cut instance's own swap included.
const HEALED_TIMEOUT: Duration = Duration::from_secs(180);

/// Case 1 with `slot.max = 1` and four instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holder_cut_from_etcd_mid_drain_does_not_restart_and_updates_in_its_turn_after_the_heal()
 {
    holder_cut_mid_drain(4, 1).await;
}

/// Case 1 with `slot.max = 2` and five instances (the variant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holder_cut_from_etcd_mid_drain_with_two_slots_and_five_instances() {
    holder_cut_mid_drain(5, 2).await;
}

/// Case 1: once the first holder deregistered (it is draining) its path goes silent, for
/// 2 × `slot.ttl` and until its slot key was taken by another instance and `max` others swapped
/// (restarted, registered again on the new version) on slots taken after the cut. While cut it
/// must not restart its unit (it cannot know it still holds its slot); its slot frees within the
/// TTL; after the heal it updates in its turn, beside the others still to swap, and no unit swaps
/// twice.
async fn holder_cut_mid_drain(instances: usize, max: u32) {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |spec| {
        spec.instances = instances;
        spec.slot_max = max;
    })
    .await;
    let paths = one_path_each(&mut fleet).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    let started = Instant::now();
    let what = format!("holder cut from etcd mid-drain ({instances} instances, slot.max {max})");
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let units = UnitWatch::start(&fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(600));
    fleet.publish(NEW_VERSION).await;

    let cut_name = wait_new_holder(&fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(&fleet, &cut_name);
    let draining = poll_until(DRAIN_TIMEOUT, "the holder deregisters", || async {
        match registered(&fleet, &cut_name).await {
            true => Err("registered"),
            false => Ok(()),
        }
    })
    .await;
    draining.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));
    paths[i].cut();
    let cut_at = Instant::now();

    let slot_ttl = fleet.spec().slot_ttl;
    let others = poll_until(
        OTHERS_TIMEOUT,
        "others swap on the freed slots while cut",
        || async {
            let swapped = swapped_since(&fleet, &slots, &units, cut_at).await;
            let taker = freed_slot_taker(&slots, &cut_name, cut_at);
            match swapped.len() >= max as usize
                && taker.as_ref().is_some_and(|(t, _)| swapped.contains(t))
                && cut_at.elapsed() > 2 * slot_ttl
            {
                true => Ok(swapped),
                false => Err(format!(
                    "swapped since the cut: {swapped:?}; the freed slot taken by {taker:?}"
                )),
            }
        },
    )
    .await;
    let version_while_cut = fleet.unit_version(i).await;
    paths[i].heal();
    let healed_at = Instant::now();
    let swapped_while_cut = match others {
        Ok(swapped) => swapped,
        Err(e) => panic!("{}", while_cut_failure(load, &fleet, &what, &e).await),
    };
    let restarted_while_cut = units.restarts_of(&cut_name, cut_at, healed_at);

    let rolled = wait_rolled_to(&fleet, NEW_VERSION, HEALED_TIMEOUT).await;
    let healed_for = healed_at.elapsed();
    let report = finish_after_traefik_caught_up(load).await;
    let seen = Cut::seen(&cut_name, cut_at, &slots, &servers);
    let restarts_each = starts_each(&fleet, &units);
    eprintln!(
        "{what}: {cut_name} cut {:.1} s; {}; swapped on slots taken while cut: \
         {swapped_while_cut:?}; the rollout ended {:.1} s after the heal; unit starts: \
         {restarts_each:?}",
        (healed_at - cut_at).as_secs_f64(),
        seen.describe(),
        healed_for.as_secs_f64()
    );
    assert!(
        restarted_while_cut.is_empty(),
        "{what}: {cut_name} restarted its unit while cut from etcd: {restarted_while_cut:?}\n{}",
        fleet.logs(40)
    );
    assert_eq!(
        version_while_cut, FIRST_VERSION,
        "{what}: {cut_name} changed version while cut"
    );
    assert!(
        seen.released
            .is_some_and(|r| r <= slot_ttl + Duration::from_secs(5)),
        "{what}: {cut_name}'s slot released {:?} after the cut (slot.ttl {slot_ttl:?})",
        seen.released
    );
    if let Err(e) = rolled {
        panic!(
            "{what}: after the heal {cut_name} did not update in its turn: {e}\n{}",
            fleet.logs(40)
        );
    }
    let twice: Vec<_> = restarts_each.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: units not started exactly once (one swap each): {twice:?}\n{}",
        fleet.logs(40)
    );
    seen.check_within(&what, max as usize);
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check_within(&fleet, max as usize);
}

/// The failure of a case whose other instances did not proceed while one was cut: stops the
/// load and says what it saw, with the sidekicks' logs.
pub async fn while_cut_failure(load: Load, fleet: &Fleet, what: &str, e: &str) -> String {
    let report = load.finish().await;
    format!(
        "{what}: {e}; load {} sent {} failed\n{}",
        report.sent(),
        report.failed(),
        fleet.logs(40)
    )
}

/// How many times each unit started since the watch began, in fleet order.
fn starts_each(fleet: &Fleet, units: &UnitWatch) -> Vec<(String, usize)> {
    let restarts = units.restarts();
    fleet
        .instances
        .iter()
        .map(|instance| {
            let n = restarts.iter().filter(|r| r.instance == instance.name);
            (instance.name.clone(), n.count())
        })
        .collect()
}

/// Puts each sidekick's etcd path (the fleet's one member) behind its own cuttable proxy.
pub async fn one_path_each(fleet: &mut Fleet) -> Vec<Blackhole> {
    let paths = behind_member_paths(fleet).await;
    paths.into_iter().flatten().collect()
}

/// The other instances that took a slot at or after `since`, restarted their unit in that hold
/// and serve the new version, registered again.
async fn swapped_since(
    fleet: &Fleet,
    slots: &KeyWatch,
    units: &UnitWatch,
    since: Instant,
) -> Vec<String> {
    let mut swapped = Vec::new();
    for hold in slot_holds(slots).into_iter().filter(|h| h.from >= since) {
        let Some(name) = holder(&hold) else { continue };
        let until = hold.until.unwrap_or_else(Instant::now);
        if swapped.contains(&name) || units.restarts_of(&name, hold.from, until).is_empty() {
            continue;
        }
        let o = index_of(fleet, &name);
        if fleet.unit_version(o).await == NEW_VERSION && registered(fleet, &name).await {
            swapped.push(name);
        }
    }
    swapped
}

/// Who took the slot key the cut holder held, after the cut, and when (from the cut).
fn freed_slot_taker(slots: &KeyWatch, cut: &str, cut_at: Instant) -> Option<(String, Duration)> {
    let holds = slot_holds(slots);
    let key = &cut_hold(&holds, cut, cut_at)?.key;
    holds
        .iter()
        .filter(|h| h.key == *key && h.from > cut_at)
        .find_map(|h| holder(h).map(|name| (name, h.from - cut_at)))
}

/// The cut holder's hold over the cut.
fn cut_hold<'a>(holds: &'a [SlotHold], cut: &str, cut_at: Instant) -> Option<&'a SlotHold> {
    holds
        .iter()
        .find(|h| holder(h).as_deref() == Some(cut) && h.from <= cut_at)
}

/// What etcd showed around a cut holder: when its slot went, who took that key next, the most
/// slot keys and instances out of rotation at once.
struct Cut {
    name: String,
    /// From the cut to the deletion of its slot key.
    released: Option<Duration>,
    /// The next holder of that key, and when (from the cut).
    taken_by: Option<(String, Duration)>,
    most_slot_keys: usize,
    most_out: usize,
    /// Leaving out the cut instance's stretch out of rotation over the cut.
    most_out_besides: usize,
}

impl Cut {
    fn seen(name: &str, cut_at: Instant, slots: &KeyWatch, servers: &KeyWatch) -> Cut {
        let holds = slot_holds(slots);
        let released = cut_hold(&holds, name, cut_at)
            .and_then(|h| h.until)
            .map(|until| until.saturating_duration_since(cut_at));
        let stretches = rotation(servers).stretches;
        let by_the_cut = |instance: &str, from: Instant, until: Option<Instant>| {
            instance == name && from <= cut_at && until.is_none_or(|u| u >= cut_at)
        };
        Cut {
            name: name.to_string(),
            released,
            taken_by: freed_slot_taker(slots, name, cut_at),
            most_slot_keys: most_at_once(holds.iter().map(|h| (h.from, h.until))),
            most_out: most_at_once(stretches.iter().map(|s| (s.from, s.until))),
            most_out_besides: most_at_once(
                stretches
                    .iter()
                    .filter(|s| !by_the_cut(&s.instance, s.from, s.until))
                    .map(|s| (s.from, s.until)),
            ),
        }
    }

    fn describe(&self) -> String {
        format!(
            "its slot released {} after the cut, taken next by {:?}; at most {} slot key(s) at \
             once; at most {} instance(s) out of rotation at once ({} besides {} while cut)",
            self.released
                .map_or("(not seen)".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.taken_by,
            self.most_slot_keys,
            self.most_out,
            self.most_out_besides,
            self.name
        )
    }

    /// At most `max` slot keys, and `max` instances out of rotation besides the cut one, at once.
    fn check_within(&self, what: &str, max: usize) {
        assert!(
            self.most_slot_keys <= max,
            "{what}: {} slot keys at once",
            self.most_slot_keys
        );
        assert!(
            self.most_out_besides <= max,
            "{what}: {} instances out of rotation at once besides {}",
            self.most_out_besides,
            self.name
        );
    }
}

/// Case 2 with `slot.max = 1` and four instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holder_cut_from_etcd_mid_verify_releases_no_other_holders_slot() {
    holder_cut_mid_verify(4, 1).await;
}

/// Case 2 with `slot.max = 2` and five instances (the variant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holder_cut_from_etcd_mid_verify_with_two_slots_and_five_instances() {
    holder_cut_mid_verify(5, 2).await;
}

/// Case 2: the slot holder cut from etcd mid-verify (its unit restarted onto the new version, the
/// `rise` checks still counting; `health.rise = 20` makes that last seconds), for 2 × `slot.ttl`
/// and until another instance restarted on a slot taken after the cut. It notices and logs the
/// lost slot and finishes or rolls back without releasing anyone else's slot key: every other
/// holder's slot lasts until its own unit restarted and it is registered again.
async fn holder_cut_mid_verify(instances: usize, max: u32) {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |spec| {
        spec.instances = instances;
        spec.slot_max = max;
        spec.rise = 20;
        spec.verify_timeout = Duration::from_secs(40);
    })
    .await;
    let paths = one_path_each(&mut fleet).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    let started = Instant::now();
    let what = format!("holder cut from etcd mid-verify ({instances} instances, slot.max {max})");
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let units = UnitWatch::start(&fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(600));
    fleet.publish(NEW_VERSION).await;

    let cut_name = wait_new_holder(&fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(&fleet, &cut_name);
    let verifying = poll_until(DRAIN_TIMEOUT, "the holder restarted, verifying", || async {
        let restarted = !units
            .restarts_of(&cut_name, started, Instant::now())
            .is_empty();
        let active = units
            .samples()
            .last()
            .is_some_and(|s| s.units[i].active == "active");
        match restarted && active && !registered(&fleet, &cut_name).await {
            true => Ok(()),
            false => Err(format!("restarted: {restarted}, active: {active}")),
        }
    })
    .await;
    verifying.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));
    paths[i].cut();
    let cut_at = Instant::now();

    let slot_ttl = fleet.spec().slot_ttl;
    let others = poll_until(
        OTHERS_TIMEOUT,
        "another instance swaps while cut",
        || async {
            let other = slot_holds(&slots)
                .into_iter()
                .filter(|h| h.from >= cut_at)
                .filter_map(|h| holder(&h))
                .find(|name| *name != cut_name);
            let restarted = other
                .as_ref()
                .is_some_and(|o| !units.restarts_of(o, cut_at, Instant::now()).is_empty());
            match restarted && cut_at.elapsed() > 2 * slot_ttl {
                true => Ok(()),
                false => Err(format!("other holder: {other:?}, restarted: {restarted}")),
            }
        },
    )
    .await;
    paths[i].heal();
    let healed_at = Instant::now();
    if let Err(e) = others {
        panic!("{}", while_cut_failure(load, &fleet, &what, &e).await);
    }
    let rolled = wait_rolled_to(&fleet, NEW_VERSION, HEALED_TIMEOUT).await;
    let healed_for = healed_at.elapsed();
    let report = finish_after_traefik_caught_up(load).await;
    let seen = Cut::seen(&cut_name, cut_at, &slots, &servers);
    eprintln!(
        "{what}: {cut_name} cut {:.1} s; {}; the rollout ended {:.1} s after the heal: \
         {rolled:?}; unit starts: {:?}",
        (healed_at - cut_at).as_secs_f64(),
        seen.describe(),
        healed_for.as_secs_f64(),
        starts_each(&fleet, &units)
    );
    // A hold cut short by someone else's release ends before its holder is registered again
    // after its restart.
    let server_events = servers.events();
    for hold in slot_holds(&slots) {
        let Some(name) = holder(&hold) else { continue };
        let (Some(until), false) = (hold.until, name == cut_name) else {
            continue;
        };
        let restart = units
            .restarts_of(&name, hold.from, until)
            .first()
            .map(|r| r.after);
        let back = restart.and_then(|restart| {
            server_events
                .iter()
                .find(|e| e.put && e.at >= restart && server_instance(&e.key) == Some(&name))
                .map(|e| e.at)
        });
        assert!(
            back.is_some_and(|back| back <= until),
            "{what}: {name}'s slot went ({:?} after the start) before it was registered again \
             after its restart ({:?})\n{}",
            until - started,
            back.map(|b| b - started),
            fleet.logs(40)
        );
    }
    let log = fleet.sidekick(i).log();
    assert!(
        log.contains("lease lost") && log.contains("owner=slot"),
        "{what}: {cut_name} did not log the loss of its slot's lease\n{}",
        fleet.logs(40)
    );
    if let Err(e) = rolled {
        panic!("{what}: the rollout did not end: {e}\n{}", fleet.logs(40));
    }
    seen.check_within(&what, max as usize);
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check_within(&fleet, max as usize);
}
