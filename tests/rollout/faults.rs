//! The swap when its sidekick fails: killed (SIGKILL) at each step a journal entry precedes, it
//! reaches a consistent end after a restart and no slot stays held; paused (SIGSTOP) past its
//! slot TTL during the drain, it does not restart its unit once resumed, ends the grant with 3/0
//! SLOT_LOST, and updates later in its turn.
//!
//! The steps are found from outside, as each becomes visible: the slot key appears, the server
//! key goes, the drop-in is written, the unit runs the new version, the server key is back.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::fleet::{
    FIRST_VERSION, Fleet, FleetSpec, SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT,
};
use super::rotation::{KeyWatch, count_keys, rotation, server_instance};
use super::update_service::events;
use super::{RATE, ROUTE_TIMEOUT, needs, sidekick_binary};
use crate::support::{poll_until, prerequisites_met};

const NEW_VERSION: &str = "2.0.0";
/// Poll (10 s) + grant + pre-pull, then the step itself.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// From the restart to the consistent end: resume or roll back, verify, register, release.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// A point in the swap, visible from outside, at which the sidekick is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// The slot key exists: slot taken, deregistration next.
    SlotTaken,
    /// The server key is gone: draining.
    Deregistered,
    /// The drop-in names the new version: reload and restart next.
    DropInWritten,
    /// systemd reports the new version in the unit's `Environment`: true from the `Reload()`
    /// on, so the restart may or may not have happened yet.
    UnitOnNewVersion,
    /// Registered again on the new version: 3/1 and the slot release next.
    RegisteredAgain,
}

impl KillPoint {
    async fn reached(self, fleet: &Fleet) -> bool {
        let registered = || async { count_keys(&fleet.client, SERVERS_PREFIX).await == 1 };
        match self {
            KillPoint::SlotTaken => count_keys(&fleet.client, SLOTS_PREFIX).await > 0,
            KillPoint::Deregistered => !registered().await,
            KillPoint::DropInWritten => std::fs::read_to_string(fleet.sidekick_dropin(0))
                .is_ok_and(|text| text.contains(&format!("SIDEKICK_VERSION={NEW_VERSION}"))),
            KillPoint::UnitOnNewVersion => fleet.unit_version(0).await == NEW_VERSION,
            KillPoint::RegisteredAgain => {
                fleet.unit_version(0).await == NEW_VERSION && registered().await
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidekick_killed_at_each_swap_step_reaches_a_consistent_end_after_restart_and_frees_the_slot()
 {
    if !prerequisites_met(&needs()) {
        return;
    }
    let points = [
        KillPoint::SlotTaken,
        KillPoint::Deregistered,
        KillPoint::DropInWritten,
        KillPoint::UnitOnNewVersion,
        KillPoint::RegisteredAgain,
    ];
    for point in points {
        let mut spec = FleetSpec::new(sidekick_binary());
        spec.instances = 1;
        spec.updates = true;
        spec.versions = vec![NEW_VERSION];
        let mut fleet = Fleet::start(spec).await;
        let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
        fleet.publish(NEW_VERSION).await;
        let started = fleet.wait_swap_started(&slots, SWAP_START_TIMEOUT).await;
        started.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
        let reached = poll_until(STEP_TIMEOUT, &format!("{point:?}"), || async {
            match point.reached(&fleet).await {
                true => Ok(()),
                false => Err("not yet"),
            }
        })
        .await;
        reached.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
        fleet.kill_sidekick(0);
        let killed = Instant::now();
        fleet.start_sidekick(0);

        let end = poll_until(RECOVERY_TIMEOUT, "a consistent end", || async {
            let version = fleet.unit_version(0).await;
            let registered = count_keys(&fleet.client, SERVERS_PREFIX).await;
            let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
            let journal = fleet.journal(0).exists();
            let url = format!("http://127.0.0.1:{}/", fleet.instances[0].port);
            let serves = crate::support::http_get(&url).await.ok();
            let serves_version = serves
                .as_ref()
                .and_then(|(_, body)| super::load::page_version(body).map(str::to_string));
            match registered == 1
                && held == 0
                && !journal
                && serves_version == Some(version.clone())
            {
                true => Ok(version),
                false => Err(format!(
                    "unit on {version}, serving {serves_version:?}, {registered} registered, \
                     {held} slots held, journal left: {journal}"
                )),
            }
        })
        .await;
        let version =
            end.unwrap_or_else(|e| panic!("killed at {point:?}: {e}\n{}", fleet.logs(40)));
        assert!(
            [FIRST_VERSION, NEW_VERSION].contains(&version.as_str()),
            "killed at {point:?}: ended on {version}"
        );
        let recovered = killed.elapsed();
        let listing = fleet.updates.instances().await;
        let id = fleet.machine_id(0);
        let recorded = listing
            .iter()
            .find(|row: &&Value| row["machine_id"].as_str() == Some(id.as_str()))
            .map(events)
            .unwrap_or_default();
        let matching = if version == NEW_VERSION {
            (3, 1)
        } else {
            (3, 0)
        };
        assert_eq!(
            recorded.last(),
            Some(&matching),
            "killed at {point:?}, ended on {version}: the service saw {recorded:?}"
        );
        eprintln!(
            "killed at {point:?}: ended on {version} {:.1} s later, events {recorded:?}",
            recovered.as_secs_f64()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_paused_past_its_slot_ttl_during_the_drain_does_not_restart_its_unit_then_updates_in_its_turn()
 {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = vec![NEW_VERSION];
    let mut fleet = Fleet::start(spec).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let load = fleet.load(RATE, Duration::from_secs(180));
    fleet.publish(NEW_VERSION).await;

    let holder = poll_until(STEP_TIMEOUT, "the first holder deregisters", || async {
        let out = servers
            .events()
            .iter()
            .find(|e| !e.put)
            .and_then(|e| server_instance(&e.key).map(str::to_string));
        out.ok_or("nobody out of rotation yet")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    let i = fleet
        .instances
        .iter()
        .position(|instance| instance.name == holder)
        .expect("holder is an instance");
    fleet.sidekick(i).signal(libc::SIGSTOP);
    let invocation = fleet.unit_invocation(i).await;

    // Past the TTL: the slot key, bound to the paused holder's lease, goes.
    let slot_ttl = fleet.spec().slot_ttl;
    let expired = poll_until(slot_ttl * 3, "the paused holder's slot expires", || async {
        let slots = fleet
            .client
            .clone()
            .get(
                SLOTS_PREFIX,
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| e.to_string())?;
        let held = slots.kvs().iter().any(|kv| {
            serde_json::from_slice::<Value>(kv.value())
                .is_ok_and(|v| v["instance"].as_str() == Some(holder.as_str()))
        });
        match held {
            false => Ok(()),
            true => Err(format!("{holder} still holds a slot")),
        }
    })
    .await;
    fleet.sidekick(i).signal(libc::SIGCONT);
    expired.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));

    // It finds its slot gone at the fence: no restart, and 3/0 errorcode 1005 (SLOT_LOST) ends
    // the grant, so the update service does not hold the instance (issue 16, defect 7).
    let id = fleet.machine_id(i);
    let slot_lost = poll_until(
        STEP_TIMEOUT,
        "3/0 SLOT_LOST from the paused holder",
        || async {
            let listing = fleet.updates.instances().await;
            let row = listing
                .iter()
                .find(|row| row["machine_id"].as_str() == Some(id.as_str()))
                .cloned()
                .unwrap_or(Value::Null);
            let ended = row["last_events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["event_type"] == 3 && e["event_result"] == 0 && e["error_code"] == 1005
                })
            });
            match ended {
                true => Ok(()),
                false => Err(format!("events {}", row["last_events"])),
            }
        },
    )
    .await;
    slot_lost.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    // Its next attempt needs a new grant, a slot and a drain first: the attempt that lost its
    // slot has not restarted the unit nor written the drop-in.
    assert_eq!(
        fleet.unit_invocation(i).await,
        invocation,
        "{holder} restarted its unit after losing its slot\n{}",
        fleet.logs(40)
    );
    assert!(
        !std::fs::read_to_string(fleet.sidekick_dropin(i))
            .is_ok_and(|t| t.contains(&format!("SIDEKICK_VERSION={NEW_VERSION}"))),
        "{holder} wrote the new drop-in without a slot"
    );
    // Not locked out: it updates in its turn, with a slot of its own.
    let updated = poll_until(
        STEP_TIMEOUT * 2,
        "the holder updates in its turn",
        || async {
            match fleet.unit_version(i).await {
                version if version == NEW_VERSION => Ok(()),
                version => Err(format!("{holder} on {version}")),
            }
        },
    )
    .await;
    updated.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    fleet
        .wait_registered(fleet.instances.len(), STEP_TIMEOUT)
        .await;
    let report = load.finish().await;
    assert_eq!(report.failed(), 0, "{}", report.describe_failures(20));
    let rotation = rotation(&servers);
    assert!(
        rotation.max_out_at_once <= 1,
        "{} out of rotation at once: {:?}",
        rotation.max_out_at_once,
        rotation.stretches
    );
}
