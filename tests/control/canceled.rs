//! systemd ends a restart job that another job replaced with the result `canceled`: an operator's
//! `systemctl stop` while ours is queued or running. It reaches the swap as
//! [`ControlError::Canceled`], not as a failure of the unit.

use std::time::Duration;

use sidekick::systemd::control::{ControlError, UnitControl};

use super::control_for;
use crate::support::systemd::{self, Systemd};
use crate::support::{poll_until, prerequisites_met};

#[tokio::test]
async fn an_operators_stop_replacing_our_restart_job_is_canceled_not_failed() {
    let needs = [systemd::NEEDS, systemd::SYSTEMCTL_NEEDS].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let systemd = Systemd::start().await;
    // Starts slowly enough for the operator to stop it while our job runs.
    systemd.write_unit(
        "slow.service",
        "[Service]\nExecStartPre=/usr/bin/sleep infinity\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let control = control_for(&systemd, "slow.service").await;
    let restart = tokio::spawn(async move { control.restart(super::JOB_TIMEOUT).await });
    let conn = systemd.connection().await;
    let activating = poll_until(
        Duration::from_secs(30),
        "our job starts the unit",
        || async {
            match systemd::active_state(&conn, "slow.service").await.as_str() {
                "activating" => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    activating.expect("the restart job runs");
    systemd.systemctl(&["stop", "slow.service"]);
    match restart.await.expect("the restart task") {
        Err(ControlError::Canceled { unit, .. }) => assert_eq!(unit, "slow.service"),
        other => panic!("expected Canceled, got {other:?}"),
    }
    // Stopped mid-start it ends `failed` (its ExecStartPre killed): the swap goes by the job's
    // result, not by this state, while its own job runs.
    let state = systemd::active_state(&conn, "slow.service").await;
    assert!(["failed", "inactive"].contains(&state.as_str()), "{state}");
}
