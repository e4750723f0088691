//! An app host cut from etcd before a rollout (issue 19 part 2, case 3), through the same
//! cuttable proxies as the holder cut in `tests/safety/partition.rs`.

use std::time::{Duration, Instant};

use crate::common::{
    Observed, finish_after_traefik_caught_up, registered, start_fault_fleet, wait_rolled_to,
};
use crate::fleet::{Fleet, SLOTS_PREFIX};
use crate::partition::{one_path_each, while_cut_failure};
use crate::rotation::{KeyWatch, slot_holds};
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::{UnitWatch, holder};
use crate::{RATE, ROUTE_TIMEOUT, needs};

const NEW_VERSION: &str = "2.0.0";
/// While cut: the others' swaps (poll, grant, drain, restart, verify each).
const OTHERS_TIMEOUT: Duration = Duration::from_secs(180);
/// After the heal: the cut instance's own swap.
const HEALED_TIMEOUT: Duration = Duration::from_secs(180);

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
    let paths = one_path_each(&mut fleet).await;
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
        panic!("{}", while_cut_failure(load, &fleet, &what, &e).await);
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
