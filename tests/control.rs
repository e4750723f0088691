//! `DbusUnitControl` against systemd 252 (or 257) in its throw-away container: the version drop-in,
//! reload and restart; waiting for restart jobs; the pre-pull as a transient unit (and as the
//! environment-file mode's template unit); the sidekick's own unit surviving the app's restart.
//! Every call goes over the container's system bus.

mod support;

use std::time::Duration;

use sidekick::systemd::control::{
    ControlError, DbusUnitControl, DropIn, PreviousDropIn, RunningVersion, UnitControl,
};
use support::prerequisites_met;
use support::systemd::{self, Systemd};
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy};

/// Pre-pull as a transient unit (`tests/control/transient.rs`).
#[path = "control/transient.rs"]
mod transient;

/// Pre-pull as the environment-file mode's template unit (`tests/control/template.rs`).
#[path = "control/template.rs"]
mod template;

/// Our restart job replaced by an operator's stop (`tests/control/canceled.rs`).
#[path = "control/canceled.rs"]
mod canceled;

/// The sidekick's unit across the app's restart (`tests/control/survival.rs`).
#[path = "control/survival.rs"]
mod survival;

/// Generous: unit jobs on a loaded 2-core machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// The app under test: writes the version and image it was started with to `/run/dbus`, where
/// the container sees the host's `Systemd::bus_dir()`, before it runs (`$$` keeps systemd from expanding the variables: the shell reads
/// its own environment).
const APP_UNIT: &str = "[Service]\n\
    Environment=SIDEKICK_VERSION=1.0.0 SIDEKICK_IMAGE=app:1.0.0\n\
    ExecStartPre=/usr/bin/sh -c 'echo \"$$SIDEKICK_VERSION $$SIDEKICK_IMAGE\" > /run/dbus/app.env'\n\
    ExecStart=/usr/bin/sleep infinity\n";

/// A control for `unit`, writing drop-ins into the container's `/etc/systemd/system`.
async fn control_for(systemd: &Systemd, unit: &str) -> DbusUnitControl {
    DbusUnitControl::new(
        systemd.connection().await,
        unit,
        &systemd.unit_dir(),
        &systemd.unit_dir(),
        "web@1",
    )
    .await
    .expect("DbusUnitControl::new")
}

fn dropin(version: &str) -> DropIn {
    DropIn {
        image: format!("app:{version}"),
        version: version.to_string(),
    }
}

fn running(version: &str) -> RunningVersion {
    RunningVersion {
        version: Some(version.to_string()),
        image: Some(format!("app:{version}")),
    }
}

/// What the app's ExecStartPre wrote: `<version> <image>`.
fn started_with(systemd: &Systemd) -> String {
    std::fs::read_to_string(systemd.bus_dir().join("app.env"))
        .expect("the app wrote its environment")
        .trim()
        .to_string()
}

/// The service's `MainPID` now (0 when it has no main process).
async fn main_pid(conn: &zbus::Connection, unit: &str) -> u32 {
    let mgr = ManagerProxy::new(conn).await.expect("manager proxy");
    let path = mgr.load_unit(unit.to_string()).await.expect("LoadUnit");
    let service = ServiceProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("service proxy");
    service.main_pid().await.expect("MainPID")
}

#[tokio::test]
async fn dropin_reload_restart_runs_the_new_version_and_restore_brings_back_the_default() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit("app.service", APP_UNIT);
    systemd.reload().await;
    let control = control_for(&systemd, "app.service").await;
    control.restart(JOB_TIMEOUT).await.expect("first start");
    assert_eq!(started_with(&systemd), "1.0.0 app:1.0.0");
    assert_eq!(control.running().await.unwrap(), running("1.0.0"));

    let previous = control.write_dropin(&dropin("2.0.0")).await.unwrap();
    assert_eq!(previous, PreviousDropIn::Absent);
    let file = systemd.unit_dir().join("app.service.d/50-sidekick.conf");
    assert_eq!(control.dropin_path(), file);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "[Service]\nEnvironment=SIDEKICK_IMAGE=app:2.0.0\nEnvironment=SIDEKICK_VERSION=2.0.0\n"
    );
    control.reload().await.unwrap();
    control
        .restart(JOB_TIMEOUT)
        .await
        .expect("restart on 2.0.0");
    assert_eq!(started_with(&systemd), "2.0.0 app:2.0.0");
    assert_eq!(control.running().await.unwrap(), running("2.0.0"));
    assert_eq!(
        systemd::active_state(&systemd.connection().await, "app.service").await,
        "active"
    );

    control.restore_dropin(&previous).await.unwrap();
    assert!(!file.exists(), "restoring `Absent` removes the drop-in");
    control.reload().await.unwrap();
    control
        .restart(JOB_TIMEOUT)
        .await
        .expect("restart on the default");
    assert_eq!(started_with(&systemd), "1.0.0 app:1.0.0");
    assert_eq!(control.running().await.unwrap(), running("1.0.0"));
}

#[tokio::test]
async fn restore_puts_back_the_exact_previous_dropin_and_systemd_reads_it_after_reload() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit("app.service", APP_UNIT);
    // An operator's own drop-in, with a comment the sidekick would never write.
    let operator = "# pinned by hand\n[Service]\nEnvironment=SIDEKICK_VERSION=2.0.0\n\
                    Environment=SIDEKICK_IMAGE=app:2.0.0\n";
    systemd.write_dropin("app.service", "50-sidekick.conf", operator);
    systemd.reload().await;
    let control = control_for(&systemd, "app.service").await;
    assert_eq!(control.running().await.unwrap(), running("2.0.0"));

    let previous = control.write_dropin(&dropin("3.0.0")).await.unwrap();
    assert_eq!(previous, PreviousDropIn::Contents(operator.to_string()));
    control.reload().await.unwrap();
    assert_eq!(control.running().await.unwrap(), running("3.0.0"));

    control.restore_dropin(&previous).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(control.dropin_path()).unwrap(),
        operator
    );
    control.reload().await.unwrap();
    assert_eq!(control.running().await.unwrap(), running("2.0.0"));
}

#[tokio::test]
async fn a_journaled_previous_dropin_with_a_command_is_restored_without_it() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit("app.service", APP_UNIT);
    systemd.reload().await;
    let control = control_for(&systemd, "app.service").await;
    control.write_dropin(&dropin("3.0.0")).await.unwrap();
    // The journal's record of the previous drop-in, edited by someone who can write the state
    // directory: a command for systemd to run as root before the app.
    let tampered = "[Service]\nEnvironment=SIDEKICK_VERSION=2.0.0\n\
                    ExecStartPre=+/bin/touch /tmp/owned\n\
                    Environment=SIDEKICK_IMAGE=app:2.0.0\n";
    control
        .restore_dropin(&PreviousDropIn::Contents(tampered.into()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(control.dropin_path()).unwrap(),
        "[Service]\nEnvironment=SIDEKICK_VERSION=2.0.0\nEnvironment=SIDEKICK_IMAGE=app:2.0.0\n"
    );
    control.reload().await.unwrap();
    assert_eq!(control.running().await.unwrap(), running("2.0.0"));
    let shown = systemd.systemctl(&["show", "-p", "ExecStartPre", "app.service"]);
    assert!(!shown.contains("touch"), "systemd runs it: {shown}");
}

#[tokio::test]
async fn write_dropin_refuses_unsafe_values_naming_them_and_leaves_the_file_alone() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit("app.service", APP_UNIT);
    systemd.reload().await;
    let control = control_for(&systemd, "app.service").await;
    control.write_dropin(&dropin("2.0.0")).await.unwrap();
    let before = std::fs::read_to_string(control.dropin_path()).unwrap();
    let unsafe_values = [
        ("app:2\nExecStartPre=/usr/bin/false", "2.0.0"),
        ("app:%H", "2.0.0"),
        ("app:2", "2.0.0 x"),
        ("app:\"2\"", "2.0.0"),
        ("app:2", "2.0.0\\"),
    ];
    for (image, version) in unsafe_values {
        let refused = DropIn {
            image: image.into(),
            version: version.into(),
        };
        let err = control.write_dropin(&refused).await.unwrap_err();
        assert!(matches!(err, ControlError::Invalid(_)), "{err:?}");
        let bad = if image == "app:2" { version } else { image };
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(control.dropin_path()).unwrap(),
        before
    );
    control.reload().await.unwrap();
    assert_eq!(control.running().await.unwrap(), running("2.0.0"));
}

#[tokio::test]
async fn restart_returns_only_once_the_unit_is_active() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    // Two seconds in `activating` before the main process runs.
    systemd.write_unit(
        "slow.service",
        "[Service]\nExecStartPre=/usr/bin/sleep 2\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let control = control_for(&systemd, "slow.service").await;
    let conn = systemd.connection().await;
    for round in 0..2 {
        control.restart(JOB_TIMEOUT).await.expect("restart");
        assert_eq!(
            systemd::active_state(&conn, "slow.service").await,
            "active",
            "round {round}"
        );
        assert_ne!(main_pid(&conn, "slow.service").await, 0, "round {round}");
    }
}

#[tokio::test]
async fn restart_of_a_unit_whose_start_fails_is_job_failed_with_result_failed() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "broken.service",
        "[Service]\nExecStartPre=/usr/bin/false\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let control = control_for(&systemd, "broken.service").await;
    match control.restart(JOB_TIMEOUT).await {
        Err(ControlError::JobFailed { unit, job, result }) => {
            assert_eq!(unit, "broken.service");
            assert_eq!(result, "failed");
            assert!(job.starts_with("/org/freedesktop/systemd1/job/"), "{job}");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn restart_whose_start_hangs_past_the_timeout_is_a_timeout() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "hangs.service",
        "[Service]\nExecStartPre=/usr/bin/sleep infinity\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let control = control_for(&systemd, "hangs.service").await;
    let timeout = Duration::from_secs(2);
    match control.restart(timeout).await {
        Err(ControlError::Timeout { unit, timeout: t }) => {
            assert_eq!(unit, "hangs.service");
            assert_eq!(t, timeout);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let conn = systemd.connection().await;
    assert_eq!(
        systemd::active_state(&conn, "hangs.service").await,
        "activating"
    );
}

#[tokio::test]
async fn rollback_after_a_start_timeout_restores_the_dropin_and_its_restart_replaces_the_stuck_job()
{
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    // Version 3.0.0 never finishes starting; any other version starts at once.
    let hang_on_3 = "ExecStartPre=/usr/bin/sh -c 'test \"$$SIDEKICK_VERSION\" != 3.0.0 || \
                     exec /usr/bin/sleep infinity'\n";
    systemd.write_unit(
        "app.service",
        &APP_UNIT.replace("[Service]\n", &format!("[Service]\n{hang_on_3}")),
    );
    systemd.reload().await;
    let control = control_for(&systemd, "app.service").await;
    control.restart(JOB_TIMEOUT).await.expect("start on 1.0.0");
    assert_eq!(started_with(&systemd), "1.0.0 app:1.0.0");

    let previous = control.write_dropin(&dropin("3.0.0")).await.unwrap();
    control.reload().await.unwrap();
    let err = control
        .restart(Duration::from_secs(2))
        .await
        .expect_err("3.0.0 hangs in ExecStartPre");
    assert_eq!(err.kind(), "timeout", "{err}");
    let conn = systemd.connection().await;
    assert_eq!(
        systemd::active_state(&conn, "app.service").await,
        "activating"
    );

    // The rollback: previous drop-in back, reload, restart with mode `replace`. The old start's
    // record goes first, so the one read below proves a fresh start.
    std::fs::remove_file(systemd.bus_dir().join("app.env")).unwrap();
    control.restore_dropin(&previous).await.unwrap();
    control.reload().await.unwrap();
    control
        .restart(JOB_TIMEOUT)
        .await
        .expect("restart on 1.0.0");
    assert_eq!(systemd::active_state(&conn, "app.service").await, "active");
    assert_eq!(started_with(&systemd), "1.0.0 app:1.0.0");
    assert_eq!(control.running().await.unwrap(), running("1.0.0"));
}
