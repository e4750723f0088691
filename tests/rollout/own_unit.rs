//! The sidekick as a unit in the systemd container (`sidekick@1.service`, `Wants=` + `After=`
//! `web@1.service`) swaps its app unit and survives the restart it causes: same `MainPID`, no
//! restart of its own.

use std::time::Duration;

use super::fleet::{Fleet, FleetSpec, SERVERS_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT};
use super::rotation::{KeyWatch, count_keys};
use super::{needs, sidekick_binary};
use crate::support::{poll_until, prerequisites_met};

const NEW_VERSION: &str = "2.0.0";
/// Poll (10 s), grant, pre-pull, slot, drain (5 s), restart, verify, register.
const SWAP_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidekick_unit_keeps_its_pid_across_the_swap_of_its_app_unit() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.instances = 1;
    spec.updates = true;
    spec.sidekick_units = true;
    spec.versions = vec![NEW_VERSION];
    let fleet = Fleet::start(spec).await;
    let (pid, restarts) = fleet.sidekick_unit_pid(0).await;
    assert_ne!(pid, 0, "sidekick@1.service has no main process");
    let app = fleet.unit_invocation(0).await;

    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    fleet.publish(NEW_VERSION).await;
    let started = fleet.wait_swap_started(&slots, SWAP_START_TIMEOUT).await;
    started.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    let swapped = poll_until(SWAP_TIMEOUT, "web@1 swapped to 2.0.0", || async {
        let version = fleet.unit_version(0).await;
        let registered = count_keys(&fleet.client, SERVERS_PREFIX).await;
        let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
        match version == NEW_VERSION && registered == 1 && held == 0 {
            true => Ok(()),
            false => Err(format!(
                "on {version}, {registered} registered, {held} held"
            )),
        }
    })
    .await;
    swapped.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));

    assert_ne!(
        fleet.unit_invocation(0).await,
        app,
        "web@1 was not restarted"
    );
    assert_eq!(
        fleet.sidekick_unit_pid(0).await,
        (pid, restarts),
        "the sidekick's MainPID or NRestarts changed across the swap"
    );
}
