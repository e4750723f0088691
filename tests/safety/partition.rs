//! The slot holder cut from etcd mid-drain (issue 16 "End to end", issue 19 part 2 case 1): each
//! sidekick reaches etcd through its own [`Blackhole`] proxy; once the first holder deregistered
//! (it is draining) its path goes silent, for longer than `slot.ttl` and until both other
//! instances have updated. While cut it must not restart its unit (it cannot know it still holds
//! its slot); its slot frees within the TTL and the others proceed; after the heal it updates in
//! its turn. Throughout: at most one app unit restarting or not active, no restart without a
//! slot, no failed request through Traefik.

use std::time::{Duration, Instant};

use crate::common::{
    Observed, finish_after_traefik_caught_up, index_of, registered, wait_new_holder, wait_rolled_to,
};
use crate::fleet::{FIRST_VERSION, Fleet, FleetSpec, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use crate::rotation::{KeyWatch, slot_holds};
use crate::support::blackhole::Blackhole;
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::{UnitWatch, holder};
use crate::{RATE, ROUTE_TIMEOUT, needs, sidekick_binary};

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
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = vec![NEW_VERSION];
    spec.slot_ttl = Duration::from_secs(6);
    spec.grant_period = Duration::from_secs(2);
    let mut fleet = Fleet::start(spec).await;
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
