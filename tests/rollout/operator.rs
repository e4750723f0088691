//! An operator's `systemctl stop` of the app unit in the middle of its swap: while the sidekick
//! drains, and while it verifies the new version. The unit stays stopped (also when the next
//! update check is offered the version again), the group is not halted, the version not
//! denylisted, and the grant ends with 3/0 errorcode 1004 (`OPERATOR_ACTION`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fleet::{Fleet, FleetSpec, HALT_PREFIX, SERVERS_PREFIX, SLOTS_PREFIX};
use super::rotation::{KeyWatch, count_keys};
use super::{needs, sidekick_binary};
use crate::support::{poll_until, prerequisites_met};

const NEW_VERSION: &str = "2.0.0";
/// Poll (10 s) + grant + pre-pull, then the step itself.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// From the stop to the sidekick's 3/0 and the slot given back.
const GIVEN_UP_TIMEOUT: Duration = Duration::from_secs(30);
const OPERATOR_ACTION: i64 = 1004;

/// Where the operator stops the unit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopAt {
    /// Deregistered, the drop-in not written yet.
    Draining,
    /// Restarted onto the new version, not yet verified (out of rotation).
    Verifying,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_stop_while_draining_keeps_the_unit_stopped_with_no_halt_or_denylist() {
    operators_stop(StopAt::Draining).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_stop_while_verifying_keeps_the_unit_stopped_with_no_halt_or_denylist() {
    operators_stop(StopAt::Verifying).await;
}

async fn operators_stop(at: StopAt) {
    if !prerequisites_met(&needs()) {
        return;
    }
    let begun = Instant::now();
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.instances = 1;
    spec.updates = true;
    spec.versions = vec![NEW_VERSION];
    // Room to act in the step: a 15 s drain, or 40 probes (10 s) to verify.
    match at {
        StopAt::Draining => spec.drain = Duration::from_secs(15),
        StopAt::Verifying => spec.rise = 40,
    }
    spec.verify_timeout = Duration::from_secs(30);
    let fleet = Fleet::start(spec).await;
    let unit = fleet.instances[0].unit.clone();
    // The app's container does not exit 0 on SIGTERM (busybox httpd as PID 1 ignores it, so
    // `docker stop` kills it): without this an operator's stop ends `failed`, which no unit
    // state tells from a crash (docs/swap.md, operator actions).
    let dropin_dir = fleet.systemd.unit_dir().join(format!("{unit}.d"));
    std::fs::create_dir_all(&dropin_dir).expect("drop-in dir");
    std::fs::write(
        dropin_dir.join("10-stop-status.conf"),
        "[Service]\nSuccessExitStatus=137 143\n",
    )
    .expect("write the exit-status drop-in");
    fleet.systemd.reload().await;
    let first_invocation = fleet.unit_invocation(0).await;
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    fleet.publish(NEW_VERSION).await;

    let reached = poll_until(STEP_TIMEOUT, &format!("{at:?}"), || async {
        let registered = count_keys(&fleet.client, SERVERS_PREFIX).await == 1;
        let slot_taken = slots.events().iter().any(|e| e.put);
        let written = new_dropin(&fleet);
        let restarted = fleet.unit_invocation(0).await != first_invocation;
        let active = active_state(&fleet, &unit) == "active";
        let there = match at {
            StopAt::Draining => slot_taken && !registered && !written,
            // Serving already (a stop in the first instants of `docker run` fails the unit).
            StopAt::Verifying => {
                written && restarted && active && !registered && serves(&fleet).await
            }
        };
        match there {
            true => Ok(()),
            false => Err("not yet"),
        }
    })
    .await;
    reached.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    fleet.systemd.systemctl(&["stop", &unit]);
    let stopped_at = Instant::now();

    let given_up = poll_until(
        GIVEN_UP_TIMEOUT,
        "3/0 OPERATOR_ACTION, slot free",
        || async {
            let row = service_row(&fleet).await;
            let last = row["last_events"]
                .as_array()
                .and_then(|events| events.last().cloned())
                .unwrap_or(Value::Null);
            let ended = last["event_type"] == 3
                && last["event_result"] == 0
                && last["error_code"] == OPERATOR_ACTION;
            let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
            match ended && held == 0 && !fleet.journal(0).exists() {
                true => Ok(row["update_checks"].as_u64().unwrap_or(0)),
                false => Err(format!("last event {last}, {held} slots held")),
            }
        },
    )
    .await;
    let checks = given_up.unwrap_or_else(|e| {
        let show = [
            "show",
            "-p",
            "ActiveState,Result,ExecMainCode,ExecMainStatus",
            &unit,
        ];
        panic!(
            "{e}\n{}\n{}",
            fleet.systemd.systemctl(&show),
            fleet.logs(40)
        )
    });
    eprintln!(
        "stopped while {at:?}: given up {:.1} s later",
        stopped_at.elapsed().as_secs_f64()
    );

    // The next update pass sends no check: a stopped unit could not take an offer, and the
    // service would keep it granted (docs/swap.md, operator actions).
    let next_pass = poll_until(GIVEN_UP_TIMEOUT, "the next update pass", || async {
        match fleet
            .logs(200)
            .contains("not checked: the unit is not active and registered")
        {
            true => Ok(()),
            false => Err("no pass since the 3/0"),
        }
    })
    .await;
    next_pass.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
    let row = service_row(&fleet).await;
    assert_eq!(
        row["update_checks"].as_u64().unwrap_or(0),
        checks,
        "stopped while {at:?}: an update check was sent for a stopped unit"
    );
    assert_eq!(
        active_state(&fleet, &unit),
        "inactive",
        "stopped while {at:?}: the sidekick started the unit again\n{}",
        fleet.logs(40)
    );
    assert!(
        !new_dropin(&fleet),
        "stopped while {at:?}: the drop-in still names {NEW_VERSION}"
    );
    assert_eq!(
        count_keys(&fleet.client, HALT_PREFIX).await,
        0,
        "stopped while {at:?}: the group was halted"
    );
    let denylist = std::fs::read_to_string(denylist(&fleet)).unwrap_or_default();
    assert!(
        !denylist.contains(NEW_VERSION),
        "stopped while {at:?}: {NEW_VERSION} denylisted: {denylist}"
    );
    let events = super::update_service::events(&service_row(&fleet).await);
    assert!(
        !events.contains(&(3, 1)) && events.iter().filter(|e| e.0 == 3).count() == 1,
        "stopped while {at:?}: one terminal event, the 3/0: {events:?}"
    );
    eprintln!(
        "stopped while {at:?}: {:.1} s in all",
        begun.elapsed().as_secs_f64()
    );
}

/// Whether instance 0's version drop-in names the new version.
fn new_dropin(fleet: &Fleet) -> bool {
    std::fs::read_to_string(fleet.sidekick_dropin(0))
        .is_ok_and(|text| text.contains(&format!("SIDEKICK_VERSION={NEW_VERSION}")))
}

/// `systemctl is-active UNIT` inside the container.
fn active_state(fleet: &Fleet, unit: &str) -> String {
    let out = fleet.systemd.exec(&["systemctl", "is-active", unit]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Instance 0's row in the update service's listing.
async fn service_row(fleet: &Fleet) -> Value {
    let id = fleet.machine_id(0);
    fleet
        .updates
        .instances()
        .await
        .into_iter()
        .find(|row| row["machine_id"].as_str() == Some(id.as_str()))
        .unwrap_or(Value::Null)
}

/// Instance 0's denylist, beside its journal.
fn denylist(fleet: &Fleet) -> PathBuf {
    fleet.journal(0).with_file_name("denylist.json")
}

/// Whether instance 0's app answers with the new version's page.
async fn serves(fleet: &Fleet) -> bool {
    let url = format!("http://127.0.0.1:{}/", fleet.instances[0].port);
    let page = crate::support::http_get(&url).await.ok();
    page.as_ref()
        .and_then(|(_, body)| super::load::page_version(body))
        == Some(NEW_VERSION)
}
