//! SIGTERM and SIGKILL right after a failed verification: the broken 3.0.0 fails its health check
//! on the first instance that tries it; the moment its sidekick starts the rollback (the drop-in
//! no longer names 3.0.0) the sidekick gets the signal, and is started again. The group must be
//! halted every time: the halt marker appears and stays, nobody else takes a slot for 3.0.0, the
//! instance is back on the old version and registered, no request fails.

use std::time::{Duration, Instant};

use crate::common::{Observed, finish_after_traefik_caught_up, index_of, wait_new_holder};
use crate::dying::wait_halted_and_back;
use crate::fleet::{
    FIRST_VERSION, Fleet, FleetSpec, HALT_PREFIX, SLOTS_PREFIX, SWAP_START_TIMEOUT,
};
use crate::rotation::{KeyWatch, count_keys, slot_holds};
use crate::support::{poll_until, prerequisites_met};
use crate::unit_watch::UnitWatch;
use crate::{RATE, ROUTE_TIMEOUT, needs, sidekick_binary};

const BROKEN: &str = crate::support::images::BROKEN_VERSION;
/// From the slot to the failed verification: pre-pull, drain, restart, `swap.verify_timeout`.
const VERIFY_FAILS_TIMEOUT: Duration = Duration::from_secs(120);
/// From the restart of the signalled sidekick to the halt marker and the instance back.
const HALT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the others are watched for not taking a slot once the group is halted: a poll
/// (10 s) and a grant period, with margin.
const HALT_WATCH: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_a_failed_verification_still_halts_the_group() {
    signalled_after_failed_verification(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_a_failed_verification_still_halts_the_group() {
    signalled_after_failed_verification(libc::SIGKILL).await;
}

async fn signalled_after_failed_verification(signal: i32) {
    if !prerequisites_met(&needs()) {
        return;
    }
    let what = match signal {
        libc::SIGTERM => "SIGTERM after a failed verification",
        _ => "SIGKILL after a failed verification",
    }
    .to_string();
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = vec![BROKEN];
    spec.verify_timeout = Duration::from_secs(8);
    spec.grant_period = Duration::from_secs(2);
    let mut fleet = crate::common::start_fleet(spec).await;
    fleet.wait_all_routed(ROUTE_TIMEOUT).await;
    let started = Instant::now();
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let units = UnitWatch::start(&fleet).await;
    let load = fleet.load(RATE, Duration::from_secs(400));
    fleet.publish(BROKEN).await;

    let holder = wait_new_holder(&fleet, &slots, started, &[], SWAP_START_TIMEOUT).await;
    let i = index_of(&fleet, &holder);
    let names_broken = |fleet: &Fleet| {
        std::fs::read_to_string(fleet.sidekick_dropin(i))
            .is_ok_and(|t| t.contains(&format!("SIDEKICK_VERSION={BROKEN}")))
    };
    let tried = poll_until(VERIFY_FAILS_TIMEOUT, "the holder tries 3.0.0", || async {
        names_broken(&fleet)
            .then_some(())
            .ok_or("drop-in not on 3.0.0")
    })
    .await;
    tried.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));
    let failed = poll_until(VERIFY_FAILS_TIMEOUT, "the rollback starts", || async {
        (!names_broken(&fleet))
            .then_some(())
            .ok_or("drop-in still on 3.0.0")
    })
    .await;
    failed.unwrap_or_else(|e| panic!("{what}: {e}\n{}", fleet.logs(40)));
    match signal {
        libc::SIGKILL => fleet.kill_sidekick(i),
        _ => fleet.stop_sidekick(i),
    }
    let signalled = Instant::now();
    let halted_before_restart = count_keys(&fleet.client, HALT_PREFIX).await > 0;
    fleet.start_sidekick(i);

    if let Err(e) = wait_halted_and_back(&fleet, i, HALT_TIMEOUT).await {
        let report = load.finish().await;
        panic!(
            "{what} ({holder}; halted before its restart: {halted_before_restart}): {e}\n\
             load: {} sent, {} failed\n{}",
            report.sent(),
            report.failed(),
            fleet.logs(40)
        );
    }
    // The others keep polling; they must not take a slot for 3.0.0 while the group is halted.
    let halted_at = Instant::now();
    let took = poll_until(HALT_WATCH, "another instance takes a slot", || async {
        let later = slot_holds(&slots)
            .into_iter()
            .filter(|h| h.from >= halted_at)
            .count();
        match later {
            0 => Err("none"),
            _ => Ok(()),
        }
    })
    .await;
    let report = finish_after_traefik_caught_up(load).await;
    assert!(
        took.is_err(),
        "{what}: a slot was taken while the group was halted\n{}",
        fleet.logs(40)
    );
    assert!(
        count_keys(&fleet.client, HALT_PREFIX).await > 0,
        "{what}: the halt marker went away\n{}",
        fleet.logs(40)
    );
    for other in (0..fleet.instances.len()).filter(|&o| o != i) {
        assert_eq!(fleet.unit_version(other).await, FIRST_VERSION);
    }
    eprintln!(
        "{what}: {holder} halted and back {:.1} s after the signal; halted before its \
         restart: {halted_before_restart}",
        (halted_at - signalled).as_secs_f64()
    );
    Observed {
        what,
        units: &units,
        slots: &slots,
        report: &report,
        started,
    }
    .check(&fleet);
}
