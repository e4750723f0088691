//! End to end: etcd, the systemd container with Docker, the local registry, Traefik, the example
//! update service, three app units and three `sidekick run` processes, with a load generator
//! through Traefik counting every failed request. The harness lives in `tests/rollout/` and is
//! shared with `examples/rollout_bench.rs`.

mod support;

/// The load, the routing timeout, what the fleet needs and the binary (`tests/rollout/harness.rs`).
#[path = "rollout/harness.rs"]
mod harness;
pub use harness::{MIN_RATE, RATE, ROUTE_TIMEOUT, needs, sidekick_binary};

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;

#[path = "rollout/by_hand.rs"]
mod by_hand;
#[path = "rollout/fleet.rs"]
mod fleet;
#[path = "rollout/load.rs"]
mod load;
#[path = "rollout/quadlet.rs"]
mod quadlet;
#[path = "rollout/rotation.rs"]
mod rotation;
#[path = "rollout/sidekick_process.rs"]
mod sidekick_process;
#[path = "rollout/steps.rs"]
mod steps;
#[path = "rollout/traffic.rs"]
mod traffic;
#[path = "rollout/units.rs"]
mod units;
#[path = "rollout/update_service.rs"]
mod update_service;

/// The swap under load: 2.0.0, a broken 3.0.0 that halts the group, and 3.0.1 after resume
/// (`tests/rollout/rolling_update.rs`).
#[path = "rollout/rolling_update.rs"]
mod rolling_update;

/// The swap when its sidekick is killed or paused mid-way (`tests/rollout/faults.rs`).
#[path = "rollout/faults.rs"]
mod faults;

/// An operator's `systemctl stop` mid-swap is respected (`tests/rollout/operator.rs`).
#[path = "rollout/operator.rs"]
mod operator;
/// The group's rollout policy: a closed window, pause mid-rollout, batch_delay
/// (`tests/rollout/policy.rs`).
#[path = "rollout/policy.rs"]
mod policy;

/// The sidekick as a unit survives its app unit's swap (`tests/rollout/own_unit.rs`).
#[path = "rollout/own_unit.rs"]
mod own_unit;

use std::time::Duration;

use fleet::{FIRST_VERSION, Fleet, FleetSpec, SERVERS_PREFIX};
use support::prerequisites_met;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_serves_three_instances_through_traefik() {
    const WINDOW: Duration = Duration::from_secs(10);
    if !prerequisites_met(&needs()) {
        return;
    }
    let fleet = Fleet::start(FleetSpec::new(sidekick_binary())).await;

    let servers = fleet
        .client
        .clone()
        .get(
            SERVERS_PREFIX,
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get server keys");
    let mut urls: Vec<String> = servers
        .kvs()
        .iter()
        .map(|kv| kv.value_str().unwrap_or_default().to_string())
        .collect();
    urls.sort();
    let mut expected: Vec<String> = fleet
        .instances
        .iter()
        .map(|i| format!("http://127.0.0.1:{}", i.port))
        .collect();
    expected.sort();
    assert_eq!(urls, expected, "one Traefik server per instance");
    for i in 0..fleet.instances.len() {
        assert_eq!(fleet.unit_version(i).await, FIRST_VERSION);
    }
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    let before = fleet.served_by();

    let report = fleet.load(RATE, WINDOW).wait().await;
    eprintln!("{}", report.render_timeline());

    assert_eq!(report.failed(), 0, "{}", report.describe_failures(10));
    // The floor, not the target rate: the machine's load must not fail the test.
    let floor = MIN_RATE * WINDOW.as_secs();
    assert!(report.sent() >= floor, "sent {} < {floor}", report.sent());
    assert!(
        report.achieved_rate() >= MIN_RATE as f64,
        "{:.1} requests/s",
        report.achieved_rate()
    );
    let versions = report.versions();
    assert_eq!(
        versions.keys().collect::<Vec<_>>(),
        [FIRST_VERSION],
        "{versions:?}"
    );
    // Traefik balances round robin: each of the three answered a fair share of the window.
    let after = fleet.served_by();
    for instance in &fleet.instances {
        let served = after.get(&instance.name).copied().unwrap_or(0)
            - before.get(&instance.name).copied().unwrap_or(0);
        assert!(
            served >= report.sent() / 5,
            "{} answered {served} of {}: {after:?}",
            instance.name,
            report.sent()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_rolling_restart_by_hand_loses_no_request_through_traefik() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let spec = FleetSpec::new(sidekick_binary());
    let drain = spec.drain;
    let mut fleet = Fleet::start(spec).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    let servers = rotation::KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let load = fleet.load(RATE, Duration::from_secs(240));

    for i in 0..fleet.instances.len() {
        by_hand::restart_instance(&mut fleet, i, by_hand::Method::DrainFirst(drain)).await;
    }
    // Requests Traefik routed on its last configuration are counted too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = load.finish().await;
    eprintln!("{}", report.render_timeline());

    assert_eq!(report.failed(), 0, "{}", report.describe_failures(20));
    assert!(
        report.achieved_rate() >= MIN_RATE as f64,
        "{:.1}/s",
        report.achieved_rate()
    );
    let rotation = rotation::rotation(&servers);
    assert_eq!(rotation.max_out_at_once, 1, "{:?}", rotation.stretches);
    let mut out: Vec<&str> = rotation
        .stretches
        .iter()
        .map(|s| s.instance.as_str())
        .collect();
    out.sort();
    assert_eq!(out, ["web-1", "web-2", "web-3"], "{:?}", rotation.stretches);
    assert!(rotation.stretches.iter().all(|s| s.until.is_some()));
}
