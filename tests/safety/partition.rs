//! The slot holder cut from etcd mid-drain (issue 16 "End to end", issue 19 part 2 case 1): each
//! sidekick reaches etcd through its own [`Blackhole`] proxy; once the first holder deregistered
//! (it is draining) its path goes silent, for longer than `slot.ttl` and until both other
//! instances have updated. While cut it must not restart its unit (it cannot know it still holds
//! its slot); its slot frees within the TTL and the others proceed; after the heal it updates in
//! its turn. Throughout: at most one app unit restarting or not active, no restart without a
//! slot, no failed request through Traefik.

use std::time::{Duration, Instant};

use crate::common::{
    Observed, finish_after_traefik_caught_up, index_of, registered, start_fault_fleet,
    wait_new_holder, wait_rolled_to,
};
use crate::fleet::{FIRST_VERSION, Fleet, SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use crate::rotation::{KeyWatch, server_instance, slot_holds};
use crate::support::blackhole::Blackhole;
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::{UnitWatch, holder};
use crate::{RATE, ROUTE_TIMEOUT, needs};

const NEW_VERSION: &str = "2.0.0";
/// From the slot taken to its holder's deregistration.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// While cut: the holder's slot expires, then two swaps of the others (poll, grant, drain,
/// restart, verify each).
const OTHERS_TIMEOUT: Duration = Duration::from_secs(180);
/// After the heal: the cut instance's own swap.
const HEALED_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holder_cut_from_etcd_mid_drain_does_not_restart_and_updates_in_its_turn_after_the_heal()
 {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |_| {}).await;
    let paths = behind_blackholes(&mut fleet).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    let started = Instant::now();
    let what = "holder cut from etcd mid-drain".to_string();
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
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
    draining.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    paths[i].cut();
    let cut_at = Instant::now();

    let slot_ttl = fleet.spec().slot_ttl;
    let others = poll_until(OTHERS_TIMEOUT, "the others update while cut", || async {
        let mut waiting = Vec::new();
        for o in (0..fleet.instances.len()).filter(|&o| o != i) {
            let name = &fleet.instances[o].name;
            let version = fleet.unit_version(o).await;
            if version != NEW_VERSION || !registered(&fleet, name).await {
                waiting.push(format!("{name} on {version}"));
            }
        }
        match waiting.is_empty() && cut_at.elapsed() > 2 * slot_ttl {
            true => Ok(()),
            false => Err(format!("waiting for {waiting:?}")),
        }
    })
    .await;
    let version_while_cut = fleet.unit_version(i).await;
    paths[i].heal();
    let healed_at = Instant::now();
    if let Err(e) = others {
        let report = load.finish().await;
        panic!(
            "{what}: {e}; load {} sent {} failed\n{}",
            report.sent(),
            report.failed(),
            fleet.logs(40)
        );
    }
    let restarted_while_cut = units.restarts_of(&cut_name, cut_at, healed_at);
    let released = slot_holds(&slots)
        .into_iter()
        .find(|h| holder(h).as_deref() == Some(cut_name.as_str()))
        .and_then(|h| h.until)
        .map(|until| until.saturating_duration_since(cut_at));

    let rolled = wait_rolled_to(&fleet, NEW_VERSION, HEALED_TIMEOUT).await;
    let healed_for = healed_at.elapsed();
    let report = finish_after_traefik_caught_up(load).await;
    eprintln!(
        "{what}: {cut_name} cut {:.1} s; its slot released {released:?} after the cut; \
         updated {:.1} s after the heal",
        (healed_at - cut_at).as_secs_f64(),
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
        released.is_some_and(|r| r <= slot_ttl + Duration::from_secs(5)),
        "{what}: {cut_name}'s slot released {released:?} after the cut (slot.ttl {slot_ttl:?})"
    );
    if let Err(e) = rolled {
        panic!(
            "{what}: after the heal {cut_name} did not update in its turn: {e}\n{}",
            fleet.logs(40)
        );
    }
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check(&fleet);
}

/// Puts each sidekick's etcd path behind its own cuttable proxy: stops it, points its config at
/// the proxy, starts it again, and waits until all are registered again.
async fn behind_blackholes(fleet: &mut Fleet) -> Vec<Blackhole> {
    let etcd = fleet.etcd.endpoint();
    let upstream = etcd.trim_start_matches("http://").to_string();
    let mut paths = Vec::new();
    for i in 0..fleet.instances.len() {
        let path = Blackhole::start(&upstream).await;
        fleet.stop_sidekick(i);
        let config = &fleet.instances[i].config;
        let text = std::fs::read_to_string(config).expect("read sidekick config");
        let quoted = format!("\"{etcd}\"");
        assert!(
            text.contains(&quoted),
            "no {quoted} in {}",
            config.display()
        );
        let text = text.replace(&quoted, &format!("\"{}\"", path.endpoint()));
        std::fs::write(config, text).expect("write sidekick config");
        fleet.start_sidekick(i);
        paths.push(path);
    }
    fleet
        .wait_registered(fleet.instances.len(), Duration::from_secs(90))
        .await;
    paths
}

/// Issue 19 part 2, case 3: an app host cut from etcd (before a rollout) drops out of the load
/// balancer within its registration TTL, takes no slot and keeps its unit running while cut as
/// the others update, and after the heal is registered again under exactly one lease and updates
/// in its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_host_cut_from_etcd_expires_within_its_ttl_takes_no_slot_and_comes_back_once() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |_| {}).await;
    let paths = behind_blackholes(&mut fleet).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    let started = Instant::now();
    let what = "app host cut from etcd".to_string();
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let units = UnitWatch::start(&fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(600));
    let i = 0;
    let cut_name = fleet.instances[i].name.clone();
    paths[i].cut();
    let cut_at = Instant::now();
    let registration_ttl = fleet.spec().registration_ttl;
    let expired = poll_until(
        registration_ttl * 3,
        "the cut host's key expires",
        || async {
            match registered(&fleet, &cut_name).await {
                true => Err("still registered"),
                false => Ok(cut_at.elapsed()),
            }
        },
    )
    .await;
    let expired = expired.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));

    fleet.publish(NEW_VERSION).await;
    let others = poll_until(OTHERS_TIMEOUT, "the others update while cut", || async {
        let mut waiting = Vec::new();
        for o in (0..fleet.instances.len()).filter(|&o| o != i) {
            let name = &fleet.instances[o].name;
            let version = fleet.unit_version(o).await;
            if version != NEW_VERSION || !registered(&fleet, name).await {
                waiting.push(format!("{name} on {version}"));
            }
        }
        match waiting.is_empty() {
            true => Ok(()),
            false => Err(format!("waiting for {waiting:?}")),
        }
    })
    .await;
    paths[i].heal();
    let healed_at = Instant::now();
    if let Err(e) = others {
        let report = load.finish().await;
        panic!(
            "{what}: {e}; load {} sent {} failed\n{}",
            report.sent(),
            report.failed(),
            fleet.logs(40)
        );
    }
    let back = poll_until(ROUTE_TIMEOUT, "the cut host registered again", || async {
        match registered(&fleet, &cut_name).await {
            true => Ok(healed_at.elapsed()),
            false => Err("not registered"),
        }
    })
    .await;
    let back = back.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));
    let leases_after_heal = leases_of(&fleet, &cut_name).await;
    let rolled = wait_rolled_to(&fleet, NEW_VERSION, HEALED_TIMEOUT).await;
    let report = finish_after_traefik_caught_up(load).await;
    eprintln!(
        "{what}: {cut_name}'s key expired {:.1} s after the cut (ttl {registration_ttl:?}), \
         registered again {:.1} s after the heal under {} lease(s)",
        expired.as_secs_f64(),
        back.as_secs_f64(),
        leases_after_heal.len()
    );
    assert!(
        expired <= registration_ttl + Duration::from_secs(5),
        "{what}: the key outlived the TTL"
    );
    let slots_while_cut: Vec<_> = slot_holds(&slots)
        .into_iter()
        .filter(|h| holder(h).as_deref() == Some(cut_name.as_str()))
        .filter(|h| h.from <= healed_at)
        .collect();
    assert!(
        slots_while_cut.is_empty(),
        "{what}: {cut_name} took a slot while cut: {slots_while_cut:?}"
    );
    let restarted_while_cut = units.restarts_of(&cut_name, cut_at, healed_at);
    assert!(
        restarted_while_cut.is_empty(),
        "{what}: {cut_name} restarted while cut: {restarted_while_cut:?}"
    );
    assert_eq!(
        leases_after_heal.len(),
        1,
        "{what}: {cut_name}'s keys after the heal are under leases {leases_after_heal:?}"
    );
    if let Err(e) = rolled {
        panic!(
            "{what}: after the heal {cut_name} did not update in its turn: {e}\n{}",
            fleet.logs(40)
        );
    }
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check(&fleet);
}

/// The live leases that carry a key naming `instance` (its server key, its instance record),
/// each with those keys.
async fn leases_of(fleet: &Fleet, instance: &str) -> Vec<(i64, Vec<String>)> {
    let mut client = fleet.client.clone();
    let leases = client.leases().await.expect("list leases");
    let mut found = Vec::new();
    for lease in leases.leases() {
        let options = etcd_client::LeaseTimeToLiveOptions::new().with_keys();
        let Ok(ttl) = client.lease_time_to_live(lease.id(), Some(options)).await else {
            continue;
        };
        let keys: Vec<String> = ttl
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .filter(|k| {
                k.ends_with(&format!("/{instance}")) || k.contains(&format!("/{instance}/"))
            })
            .collect();
        if !keys.is_empty() {
            found.push((lease.id(), keys));
        }
    }
    found
}

/// Issue 19 part 2, case 2: the slot holder cut from etcd mid-verify (its unit restarted onto the
/// new version, the `rise` checks still counting; `health.rise = 20` makes that last seconds),
/// past `slot.ttl`. It finishes or rolls back without releasing anyone else's slot key: every
/// other holder's slot lasts until its own unit restarted. Throughout: at most one app unit
/// restarting or not active, no restart without a slot, no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holder_cut_from_etcd_mid_verify_releases_no_other_holders_slot() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut fleet = start_fault_fleet(NEW_VERSION, |spec| {
        spec.rise = 20;
        spec.verify_timeout = Duration::from_secs(40);
    })
    .await;
    let paths = behind_blackholes(&mut fleet).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    let started = Instant::now();
    let what = "holder cut from etcd mid-verify".to_string();
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
        let report = load.finish().await;
        panic!(
            "{what}: {e}; load {} sent {} failed\n{}",
            report.sent(),
            report.failed(),
            fleet.logs(40)
        );
    }
    let rolled = wait_rolled_to(&fleet, NEW_VERSION, HEALED_TIMEOUT).await;
    let report = finish_after_traefik_caught_up(load).await;
    eprintln!(
        "{what}: {cut_name} cut {:.1} s; the rollout ended {:.1} s after the heal: {rolled:?}",
        (healed_at - cut_at).as_secs_f64(),
        healed_at.elapsed().as_secs_f64()
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
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check(&fleet);
}
