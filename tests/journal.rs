//! Logging to the journal: `sidekick run` started by systemd (in the throw-away container) finds
//! its stderr is the journal and writes structured entries with the unit they concern.

mod support;

use std::time::Duration;

use support::systemd::{self, Job, Systemd};
use support::{poll_until, prerequisites_met};

/// Where the container sees the host's `Systemd::bus_dir()`.
const SHARED: &str = "/run/dbus";

#[tokio::test]
async fn run_under_systemd_logs_to_the_journal_with_the_unit_field_and_reports_ready() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    let shared = systemd.bus_dir();
    std::fs::copy(env!("CARGO_BIN_EXE_sidekick"), shared.join("sidekick")).unwrap();
    std::fs::write(
        shared.join("sidekick.toml"),
        "[instance]\nunit = \"app@1.service\"\n[registration]\nenabled = false\n\
         [health]\ncheck = \"none\"\n[update]\nenabled = false\n",
    )
    .unwrap();
    systemd.write_unit(
        "app@.service",
        "[Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    // Type=notify: the start job completes only once the sidekick sends READY=1.
    systemd.write_unit(
        "sidekick-app.service",
        &format!(
            "[Service]\nType=notify\nExecStart={SHARED}/sidekick run --config {SHARED}/sidekick.toml\n"
        ),
    );
    systemd.write_unit(
        "dump-journal.service",
        &format!(
            "[Service]\nType=oneshot\nExecStart=/usr/bin/sh -c '/usr/bin/journalctl -o json \
             --no-pager -u sidekick-app.service > {SHARED}/journal.json'\n"
        ),
    );
    systemd.reload().await;
    let mgr = systemd.manager().await;
    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "app@1.service").await,
        "done"
    );
    let started = systemd::run_job(&mgr, Job::Start, "sidekick-app.service").await;
    assert_eq!(started, "done", "{}", systemd.log_tail(30));

    let entry = poll_until(
        Duration::from_secs(20),
        "the sidekick's entry in the journal",
        || {
            let mgr = &mgr;
            let shared = &shared;
            async move {
                if systemd::run_job(mgr, Job::Start, "dump-journal.service").await != "done" {
                    return Err("journalctl did not run".to_string());
                }
                let dump = std::fs::read_to_string(shared.join("journal.json")).unwrap_or_default();
                dump.lines()
                    .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                    .find(|e| {
                        e["MESSAGE"]
                            .as_str()
                            .is_some_and(|m| m.contains("following the unit without registering"))
                    })
                    .ok_or_else(|| format!("not in the journal yet:\n{dump}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(entry["UNIT"], "app@1.service", "{entry:#}");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "sidekick", "{entry:#}");
    assert_eq!(entry["PRIORITY"], "6", "INFO is priority 6: {entry:#}");
    assert_eq!(entry["_SYSTEMD_UNIT"], "sidekick-app.service", "{entry:#}");
    let message = entry["MESSAGE"].as_str().unwrap();
    assert!(
        !message.contains('\u{1b}'),
        "no terminal escapes in the journal: {message:?}"
    );

    assert_eq!(
        systemd::run_job(&mgr, Job::Stop, "sidekick-app.service").await,
        "done"
    );
}
