//! The rolling update of issue #10 under load, one step after another on one fleet: publish
//! 2.0.0 (all reach it, one out of rotation at a time, every event reported, no slot left);
//! publish the broken 3.0.0 (the first to try it rolls back, the halt stops the others); publish
//! 3.0.1 and resume (all reach it). Zero failed requests through Traefik throughout. The steps
//! are `tests/rollout/steps.rs`.

use super::fleet::{Fleet, FleetSpec};
use super::steps::{broken_version_rolls_back_and_halts, rolls_every_instance_to};
use super::{ROUTE_TIMEOUT, needs, sidekick_binary};
use crate::support::prerequisites_met;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_2_0_0_then_broken_3_0_0_halts_then_3_0_1_after_resume_with_zero_failed_requests()
 {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = vec!["2.0.0", "3.0.0", "3.0.1"];
    let fleet = Fleet::start(spec).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;

    rolls_every_instance_to(&fleet, "2.0.0").await;
    let status_during_halt = broken_version_rolls_back_and_halts(&fleet).await;

    // Publish first: an instance still holding a 3.0.0 offer must see 3.0.1 before it swaps.
    fleet.publish("3.0.1").await;
    let (resumed, out) = fleet.cli(&["slots", "resume"]);
    assert!(resumed, "slots resume: {out}");
    rolls_every_instance_to(&fleet, "3.0.1").await;

    // Checked last so that a missing versions table does not hide how step 3 went.
    assert!(
        status_during_halt.contains("2.0.0"),
        "status during the halt shows no versions:\n{status_during_halt}"
    );
}
