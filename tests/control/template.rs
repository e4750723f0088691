//! The pre-pull of `swap.handoff = "environment-file"`: the template
//! `sidekick-prepull@<escaped image>.service`, started with `StartUnit`, is stopped when the swap
//! gives up on it (its timeout, or the caller dropping it on a stop or cancellation), as the
//! transient pre-pull is. A stand-in template that hangs replaces the shipped one (whose
//! `sidekick pull-image` is not in the container); the grant to stop it is polkit's
//! (`tests/polkit.rs`).

use std::path::Path;
use std::time::Duration;

use sidekick::systemd::control::envfile::{PREPULL_TEMPLATE, template_unit};
use sidekick::systemd::control::{ControlError, EnvFileUnitControl, UnitControl};
use zbus_systemd::systemd1::ManagerProxy;

use super::support::poll_until;
use super::support::prerequisites_met;
use super::support::systemd::{self, Systemd};
use super::{JOB_TIMEOUT, control_for};

const IMAGE: &str = "localhost:5000/web:2.0.0";
/// A pull that never ends.
const HANGING_TEMPLATE: &str = "[Service]\nType=oneshot\nExecStart=/usr/bin/sleep 600\n";

/// The environment-file control of instance `web-1`, its files under `dir`, with the hanging
/// template installed.
async fn envfile_control(systemd: &Systemd, dir: &Path) -> EnvFileUnitControl {
    systemd.write_unit(&format!("{PREPULL_TEMPLATE}@.service"), HANGING_TEMPLATE);
    systemd.reload().await;
    EnvFileUnitControl::new(
        control_for(systemd, "app.service").await,
        "web-1",
        &dir.join("state"),
        &dir.join("versions"),
    )
    .expect("EnvFileUnitControl::new")
}

/// The `ActiveState` of `unit`, `None` once systemd has unloaded it.
async fn active_state(systemd: &Systemd, unit: &str) -> Option<String> {
    let conn = systemd.connection().await;
    let mgr = ManagerProxy::new(&conn).await.expect("manager proxy");
    mgr.list_units_by_names(vec![unit.to_string()])
        .await
        .expect("ListUnitsByNames")
        .into_iter()
        .find(|u| u.2 != "not-found")
        .map(|u| u.3)
}

/// Polls until `unit` no longer runs: inactive, failed or unloaded.
async fn assert_stopped(systemd: &Systemd, unit: &str) {
    poll_until(
        Duration::from_secs(20),
        "the pre-pull unit stopped",
        || async {
            match active_state(systemd, unit).await {
                None => Ok(()),
                Some(state) if state == "inactive" || state == "failed" => Ok(()),
                Some(state) => Err(state),
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn template_prepull_abandoned_by_its_caller_is_stopped() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let control = envfile_control(&systemd, dir.path()).await;
    let unit = template_unit(PREPULL_TEMPLATE, IMAGE).unwrap();
    // Boxed, so that `drop` below drops the future itself.
    let mut pull = Box::pin(control.prepull(IMAGE, &[], JOB_TIMEOUT));
    let started = poll_until(JOB_TIMEOUT, "the template pre-pull runs", || async {
        match active_state(&systemd, &unit).await {
            Some(state) if state == "activating" => Ok(()),
            other => Err(other),
        }
    });
    tokio::select! {
        ended = &mut pull => panic!("the pre-pull ended on its own: {ended:?}"),
        started = started => started.unwrap(),
    }
    // The swap gives up (the daemon stops, the swap is canceled): dropping the future stops it.
    drop(pull);
    assert_stopped(&systemd, &unit).await;
}

#[tokio::test]
async fn template_prepull_hanging_past_the_timeout_is_a_timeout_and_stopped() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let control = envfile_control(&systemd, dir.path()).await;
    let unit = template_unit(PREPULL_TEMPLATE, IMAGE).unwrap();
    let timeout = Duration::from_secs(2);
    let err = control.prepull(IMAGE, &[], timeout).await.unwrap_err();
    match &err {
        ControlError::Timeout {
            unit: u,
            timeout: t,
        } => {
            assert_eq!(u, &unit);
            assert_eq!(*t, timeout);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_stopped(&systemd, &unit).await;
}
