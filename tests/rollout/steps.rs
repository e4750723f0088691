//! The steps of a rolling update under load, each checked through Traefik, etcd and the update
//! service: every instance to a good version, and a broken version that the first instance to try
//! rolls back while the halt stops the others. Used by `tests/rollout/rolling_update.rs` (Docker)
//! and `tests/podman.rs` (Quadlet).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;

use super::RATE;
use super::fleet::{Fleet, HALT_PREFIX, SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use super::load::LoadReport;
use super::rotation::{KeyWatch, count_keys, rotation, slot_holds};
use super::update_service::events;
use crate::support::poll_until;

/// One step's bound: three swaps of poll (10 s) + grant period + drain (5 s) + restart + verify.
const STEP_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the others are watched for not trying a version after the halt: two polls and a
/// grant period, with margin.
const HALT_WATCH: Duration = Duration::from_secs(30);

const SUCCESS_EVENTS: [(i64, i64); 4] = [(13, 1), (14, 1), (800, 1), (3, 1)];

/// Publishes `version` under load and checks the rollout of all instances to it.
pub async fn rolls_every_instance_to(fleet: &Fleet, version: &str) {
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let before: Vec<usize> = service_events(fleet)
        .await
        .iter()
        .map(|e| e.len())
        .collect();
    let load = fleet.load(RATE, STEP_TIMEOUT + Duration::from_secs(30));
    fleet.publish(version).await;
    if let Err(e) = fleet.wait_swap_started(&slots, SWAP_START_TIMEOUT).await {
        let report = load.finish().await;
        panic!(
            "rolling to {version}: {e}; load meanwhile: {}\n{}",
            report.describe_failures(5),
            fleet.logs(20)
        );
    }

    let done = poll_until(
        STEP_TIMEOUT,
        &format!("every unit on {version}"),
        || async {
            if count_keys(&fleet.client, HALT_PREFIX).await > 0 {
                return Ok(Err("the group was halted".to_string()));
            }
            let mut versions = Vec::new();
            for i in 0..fleet.instances.len() {
                versions.push(fleet.unit_version(i).await);
            }
            let registered = count_keys(&fleet.client, SERVERS_PREFIX).await;
            let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
            match versions.iter().all(|v| v == version) && registered == versions.len() && held == 0
            {
                true => Ok(Ok(())),
                false => Err(format!(
                    "units on {versions:?}, {registered} registered, {held} slots held"
                )),
            }
        },
    )
    .await;
    let report = finish_after_traefik_caught_up(load).await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(why)) => panic!("rolling to {version}: {why}\n{}", fleet.logs(40)),
        Err(e) => panic!("{e}\n{}", fleet.logs(40)),
    }
    eprintln!("rollout to {version}:\n{}", report.render_timeline());

    assert_eq!(report.failed(), 0, "{}", report.describe_failures(20));
    let last = report.duration.saturating_sub(Duration::from_secs(2));
    let tail = report.versions_after(last);
    assert_eq!(tail.keys().collect::<Vec<_>>(), [version], "{tail:?}");

    let rotation = rotation(&servers);
    assert!(
        rotation.max_out_at_once <= 1,
        "{} instances out of rotation at once: {:?}",
        rotation.max_out_at_once,
        rotation.stretches
    );
    let mut swapped: Vec<&str> = rotation
        .stretches
        .iter()
        .map(|s| s.instance.as_str())
        .collect();
    swapped.sort();
    swapped.dedup();
    assert_eq!(swapped.len(), fleet.instances.len(), "{swapped:?}");
    let holds = slot_holds(&slots);
    assert!(holds.len() >= fleet.instances.len(), "{holds:?}");
    assert!(holds.iter().all(|h| h.until.is_some()), "{holds:?}");
    assert_eq!(count_keys(&fleet.client, SLOTS_PREFIX).await, 0);

    for (i, events) in service_events(fleet).await.iter().enumerate() {
        let new = &events[before[i].min(events.len())..];
        for wanted in SUCCESS_EVENTS {
            assert!(
                new.contains(&wanted),
                "{}: service saw {new:?} for {version}, no {wanted:?}",
                fleet.instances[i].name
            );
        }
    }
}

/// Publishes the broken 3.0.0 under load: one instance tries it and rolls back, the halt stops
/// the others, no request fails.
/// Returns what `sidekick status` printed during the halt.
pub async fn broken_version_rolls_back_and_halts(fleet: &Fleet) -> String {
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let before: Vec<usize> = service_events(fleet)
        .await
        .iter()
        .map(|e| e.len())
        .collect();
    let load = fleet.load(RATE, STEP_TIMEOUT + HALT_WATCH);
    fleet.publish("3.0.0").await;

    let halted = poll_until(STEP_TIMEOUT, "the group halted", || async {
        match count_keys(&fleet.client, HALT_PREFIX).await {
            0 => Err("no halt marker"),
            _ => Ok(Instant::now()),
        }
    })
    .await;
    let halted = halted.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    fleet
        .wait_registered(fleet.instances.len(), STEP_TIMEOUT)
        .await;
    // The others keep polling; give them time to (wrongly) try 3.0.0 despite the halt.
    tokio::time::sleep(HALT_WATCH).await;
    let report = finish_after_traefik_caught_up(load).await;
    eprintln!("broken 3.0.0:\n{}", report.render_timeline());
    assert_eq!(report.failed(), 0, "{}", report.describe_failures(20));

    for i in 0..fleet.instances.len() {
        assert_eq!(fleet.unit_version(i).await, "2.0.0", "{}", fleet.logs(40));
    }
    let rotation = rotation(&servers);
    let tried: Vec<&str> = rotation
        .stretches
        .iter()
        .map(|s| s.instance.as_str())
        .collect();
    assert_eq!(tried.len(), 1, "out of rotation: {:?}", rotation.stretches);
    assert!(
        rotation.stretches.iter().all(|s| s.from < halted),
        "an instance left rotation after the halt: {:?}",
        rotation.stretches
    );
    let holds = slot_holds(&slots);
    assert_eq!(holds.len(), 1, "slot holds: {holds:?}");
    assert_eq!(count_keys(&fleet.client, SLOTS_PREFIX).await, 0);

    let tried_index = fleet
        .instances
        .iter()
        .position(|i| i.name == tried[0])
        .expect("instance that tried");
    let events_now = service_events(fleet).await;
    let new = &events_now[tried_index][before[tried_index]..];
    assert!(new.contains(&(3, 0)), "{}: service saw {new:?}", tried[0]);
    // Why it rolled back is one WARN line in the plain log (the message alone, as journalctl
    // shows it without -o json): the version, the cause, the rollback and the halt.
    let log = fleet.logs(400);
    let decisions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(": rolling back to 2.0.0, halting the group"))
        .collect();
    assert_eq!(decisions.len(), 1, "one rollback decision line:\n{log}");
    assert!(decisions[0].contains("3.0.0"), "{}", decisions[0]);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("halted the group's rollout at 3.0.0")),
        "no halt line:\n{log}"
    );
    for (i, events) in events_now
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != tried_index)
    {
        let new = &events[before[i].min(events.len())..];
        assert!(
            !new.contains(&(800, 1)),
            "{} started a swap during the halt: {new:?}",
            fleet.instances[i].name
        );
    }

    let (ok, status) = fleet.cli(&["status"]);
    assert!(ok, "sidekick status failed: {status}");
    let halts = status.split("\nHALTS\n").nth(1).unwrap_or_default();
    let halt_line = halts
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.contains("3.0.0"));
    assert!(
        halt_line.is_some(),
        "status shows no halt at 3.0.0:\n{status}"
    );
    status
}

/// Each instance's recorded events on the update service, in fleet order.
async fn service_events(fleet: &Fleet) -> Vec<Vec<(i64, i64)>> {
    let listing = fleet.updates.instances().await;
    (0..fleet.instances.len())
        .map(|i| {
            let id = fleet.machine_id(i);
            listing
                .iter()
                .find(|row: &&Value| row["machine_id"].as_str() == Some(id.as_str()))
                .map(events)
                .unwrap_or_default()
        })
        .collect()
}

/// Keeps the load running a few seconds past the end, so requests Traefik routed on its last
/// configuration are counted too, then stops it.
async fn finish_after_traefik_caught_up(load: super::load::Load) -> LoadReport {
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.finish().await
}
