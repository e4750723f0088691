//! The pre-pull as a transient unit: success, a failing command's exit status, a hang stopped at
//! the timeout, and a real `docker pull` from the local registry through the bound Docker socket.

use std::process::Command;
use std::time::Duration;

use sidekick::systemd::control::{ControlError, UnitControl};
use zbus_systemd::systemd1::ManagerProxy;

use super::support::images;
use super::support::registry::{self, Registry};
use super::support::systemd::{self, Systemd};
use super::support::{poll_until, prerequisites_met};
use super::{JOB_TIMEOUT, control_for};

/// The pre-pull units systemd still knows, in any state.
async fn prepull_units(systemd: &Systemd) -> Vec<(String, String)> {
    let conn = systemd.connection().await;
    let mgr = ManagerProxy::new(&conn).await.expect("manager proxy");
    mgr.list_units_by_patterns(Vec::new(), vec!["sidekick-prepull-*".to_string()])
        .await
        .expect("ListUnitsByPatterns")
        .into_iter()
        .map(|unit| (unit.0, unit.3))
        .collect()
}

/// Polls until systemd has forgotten every pre-pull unit.
async fn assert_no_prepull_unit_remains(systemd: &Systemd) {
    poll_until(
        Duration::from_secs(10),
        "no sidekick-prepull unit left",
        || async {
            let units = prepull_units(systemd).await;
            if units.is_empty() { Ok(()) } else { Err(units) }
        },
    )
    .await
    .unwrap();
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn prepull_of_bin_true_succeeds_and_leaves_no_unit_behind() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let control = control_for(&systemd, "app.service").await;
    control
        .run_transient(&argv(&["/bin/true"]), JOB_TIMEOUT)
        .await
        .expect("/bin/true as a transient unit");
    assert_no_prepull_unit_remains(&systemd).await;
}

#[tokio::test]
async fn prepull_of_false_resolved_on_path_fails_naming_exit_status_1() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let control = control_for(&systemd, "app.service").await;
    let err = control
        .run_transient(&argv(&["false"]), JOB_TIMEOUT)
        .await
        .unwrap_err();
    match &err {
        ControlError::CommandFailed {
            unit,
            result,
            status,
        } => {
            assert!(unit.starts_with("sidekick-prepull-web_1-"), "{unit}");
            assert_eq!(result, "failed");
            assert!(status.contains("exited with status 1"), "{status}");
            assert!(status.contains("exit-code"), "{status}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("exited with status 1"), "{err}");
    // The failed unit was read, then reset so systemd forgets it.
    assert_no_prepull_unit_remains(&systemd).await;
}

#[tokio::test]
async fn prepull_of_a_bare_name_the_sidekick_cannot_find_is_left_to_systemd_which_says_203_exec() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let control = control_for(&systemd, "app.service").await;
    let err = control
        .run_transient(&argv(&["no-such-puller", "pull"]), JOB_TIMEOUT)
        .await
        .unwrap_err();
    match &err {
        ControlError::CommandFailed { result, status, .. } => {
            assert_eq!(result, "failed");
            assert!(status.contains("exited with status 203"), "{status}");
            assert!(
                status.contains("systemd could not execute the program"),
                "{status}"
            );
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    assert_no_prepull_unit_remains(&systemd).await;
}

#[tokio::test]
async fn prepull_hanging_past_the_timeout_is_a_timeout_and_its_unit_is_stopped_and_gone() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let control = control_for(&systemd, "app.service").await;
    let timeout = Duration::from_secs(2);
    let err = control
        .run_transient(&argv(&["/usr/bin/sleep", "600"]), timeout)
        .await
        .unwrap_err();
    match &err {
        ControlError::Timeout { unit, timeout: t } => {
            assert!(unit.starts_with("sidekick-prepull-web_1-"), "{unit}");
            assert_eq!(*t, timeout);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_no_prepull_unit_remains(&systemd).await;
}

/// Succeeds only inside the pre-pull's sandbox: no new privileges, no capability, and neither
/// /etc nor /var writable (the container's /etc is a writable tmpfs outside it).
const SANDBOX_PROBE: &str = "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status \
    && grep -q '^CapBnd:[[:space:]]*0000000000000000' /proc/self/status \
    && ! touch /etc/sidekick-prepull-probe 2>/dev/null \
    && ! mkdir -p /var/lib/sidekick-prepull-probe 2>/dev/null";

#[tokio::test]
async fn prepull_runs_sandboxed_read_only_without_privileges() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let control = control_for(&systemd, "app.service").await;
    control
        .run_transient(&argv(&["/bin/sh", "-c", SANDBOX_PROBE]), JOB_TIMEOUT)
        .await
        .expect("the probe passes only inside the sandbox");
    let out = systemd.exec(&["test", "-e", "/etc/sidekick-prepull-probe"]);
    assert!(!out.status.success(), "the probe wrote /etc");
    assert_no_prepull_unit_remains(&systemd).await;
}

#[tokio::test]
async fn prepull_docker_pull_fetches_the_image_from_the_local_registry() {
    let needs = [systemd::NEEDS, images::NEEDS, registry::NEEDS].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let registry = Registry::start().await;
    let remote = images::push(&images::app_image("1.0.0"), &registry.address());
    images::remove_tag(&remote);
    let systemd = Systemd::start().await;
    let control = control_for(&systemd, "app.service").await;
    let docker = images::docker_path();
    let pulled = control
        .run_transient(
            &argv(&[docker.to_str().expect("UTF-8 path"), "pull", &remote]),
            JOB_TIMEOUT,
        )
        .await;
    let present = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &remote])
        .output()
        .expect("run docker image inspect");
    images::remove_tag(&remote);
    pulled.expect("docker pull as a transient unit");
    assert!(
        present.status.success(),
        "{remote} is not in the host's Docker after the pull: {}",
        String::from_utf8_lossy(&present.stderr)
    );
    assert_no_prepull_unit_remains(&systemd).await;
}

#[tokio::test]
async fn prepull_abandoned_by_its_caller_is_stopped_and_gone() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let control = control_for(&systemd, "app.service").await;
    let sleep = argv(&["/usr/bin/sleep", "600"]);
    // Boxed, so that `drop` below drops the future itself.
    let mut pull = Box::pin(control.run_transient(&sleep, JOB_TIMEOUT));
    // A running oneshot is `activating` until its command exits.
    let started = poll_until(JOB_TIMEOUT, "the pre-pull unit runs", || async {
        let units = prepull_units(&systemd).await;
        match units.as_slice() {
            [(_, state)] if state == "activating" => Ok(()),
            _ => Err(units),
        }
    });
    tokio::select! {
        ended = &mut pull => panic!("the pre-pull ended on its own: {ended:?}"),
        started = started => started.unwrap(),
    }
    // The caller gives up (as the daemon does on shutdown): dropping the future stops the unit.
    drop(pull);
    assert_no_prepull_unit_remains(&systemd).await;
}
