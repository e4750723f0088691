//! The sidekick's own unit and the app restart it causes, on real systemd: with `Wants=` +
//! `After=` (what `units/sidekick@.service` uses) it keeps its main process; with `BindsTo=`,
//! `PartOf=` or `Requires=` it does not (DESIGN.md's table).

use std::time::Duration;

use sidekick::systemd::control::UnitControl;

use super::support::systemd::{self, Job, Systemd};
use super::support::{poll_until, prerequisites_met};
use super::{JOB_TIMEOUT, control_for, main_pid};

/// A stand-in for the sidekick's unit with `dependency=app.service` + `After=app.service`.
fn sidekick_unit(dependency: &str) -> String {
    format!(
        "[Unit]\n{dependency}=app.service\nAfter=app.service\n\
         [Service]\nExecStart=/usr/bin/sleep infinity\n"
    )
}

#[tokio::test]
async fn sidekick_unit_with_wants_after_keeps_its_pid_across_the_app_restart_unlike_bindsto() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "app.service",
        "[Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    let others = ["BindsTo", "PartOf", "Requires"];
    systemd.write_unit("sk-wants.service", &sidekick_unit("Wants"));
    for dependency in others {
        let name = format!("sk-{}.service", dependency.to_lowercase());
        systemd.write_unit(&name, &sidekick_unit(dependency));
    }
    systemd.reload().await;
    let mgr = systemd.manager().await;
    let conn = systemd.connection().await;
    let mut before = Vec::new();
    for dependency in ["Wants"].iter().chain(others.iter()) {
        let name = format!("sk-{}.service", dependency.to_lowercase());
        assert_eq!(
            systemd::run_job(&mgr, Job::Start, &name).await,
            "done",
            "{name}"
        );
        let pid = main_pid(&conn, &name).await;
        assert_ne!(pid, 0, "{name} runs");
        before.push((name, pid));
    }
    let app_pid = main_pid(&conn, "app.service").await;

    let control = control_for(&systemd, "app.service").await;
    control.restart(JOB_TIMEOUT).await.expect("restart the app");
    assert_ne!(
        main_pid(&conn, "app.service").await,
        app_pid,
        "the app restarted"
    );

    let (wants, wants_pid) = &before[0];
    assert_eq!(
        main_pid(&conn, wants).await,
        *wants_pid,
        "Wants+After keeps the PID"
    );
    assert_eq!(systemd::active_state(&conn, wants).await, "active");
    for (name, pid) in &before[1..] {
        // Stopped (PID 0) or started again (a new PID): either way the old process is gone.
        poll_until(
            Duration::from_secs(30),
            &format!("{name} loses PID {pid}"),
            || async {
                let now = main_pid(&conn, name).await;
                if now != *pid { Ok(()) } else { Err(now) }
            },
        )
        .await
        .unwrap();
    }
}
