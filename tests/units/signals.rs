//! The shipped sidekick unit and systemd's side of the daemon's signals: the watchdog it pings
//! (`WatchdogSec=`) and the reload it answers (`ExecReload=` sends SIGHUP), with systemd 252 (or 257)
//! itself running the unit in the container.

use std::time::{Duration, Instant};

use super::*;

/// The watchdog period the tests give the shipped unit (it ships with 30 s).
const WATCHDOG: Duration = Duration::from_secs(2);
/// A sidekick that follows a sleeping app and talks to no server.
const QUIET_CONFIG: &str = "[registration]\nenabled = false\n[health]\ncheck = \"none\"\n\
                            [update]\nenabled = false\n";
const UNIT: &str = "sidekick@example-web@1.service";

/// The shipped units, a sleeping app and `config` as the host's drop-in; `service_dropin`, if
/// any, is added to the sidekick's unit. Starts the sidekick and returns its Manager proxy.
async fn start_quiet_sidekick(
    systemd: &Systemd,
    config: &str,
    service_dropin: Option<&str>,
) -> ManagerProxy<'static> {
    install_shipped_units(systemd);
    systemd.write_unit(
        "example-web@.service",
        "[Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    if let Some(dropin) = service_dropin {
        systemd.write_dropin("sidekick@.service", "50-test.conf", dropin);
    }
    write_host_config(systemd, config);
    systemd.reload().await;
    let mgr = systemd.manager().await;
    let started = systemd::run_job(&mgr, Job::Start, UNIT).await;
    assert_eq!(started, "done", "{}", systemd.log_tail(30));
    mgr
}

/// Writes `/etc/sidekick/config.d/10-test.toml` in the container.
fn write_host_config(systemd: &Systemd, config: &str) {
    let shared = systemd.bus_dir().join("10-test.toml");
    std::fs::write(&shared, config).unwrap();
    systemd.run(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p /etc/sidekick/config.d && cp {SHARED}/10-test.toml /etc/sidekick/config.d/"
        ),
    ]);
}

/// `systemctl show --property=PROPERTY --value UNIT`.
fn show(systemd: &Systemd, property: &str) -> String {
    systemd
        .systemctl(&["show", &format!("--property={property}"), "--value", UNIT])
        .trim()
        .to_string()
}

/// The MESSAGE of each journal entry of the sidekick's unit (its own lines and systemd's).
fn messages(systemd: &Systemd) -> Vec<String> {
    journal(systemd, UNIT)
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn systemd_restarts_the_shipped_unit_when_its_loop_stops_pinging_the_watchdog() {
    if !prerequisites_met(&[systemd::NEEDS, systemd::SYSTEMCTL_NEEDS, IN_CONTAINER].concat()) {
        return;
    }
    if !cfg!(debug_assertions) {
        eprintln!(
            "SKIPPED: the watchdog test needs the stall hook of a debug build (SIGUSR2), and this \
             is a release build"
        );
        return;
    }
    let systemd = Systemd::start().await;
    // A short watchdog; no core file from the SIGABRT that ends a stuck process.
    let dropin = format!(
        "[Service]\nWatchdogSec={}s\nLimitCORE=0\n",
        WATCHDOG.as_secs()
    );
    let mgr = start_quiet_sidekick(&systemd, QUIET_CONFIG, Some(&dropin)).await;
    assert_eq!(show(&systemd, "WatchdogUSec"), "2s");
    let first = show(&systemd, "MainPID");

    // Healthy: the pings arrive (systemd stamps each one) and, well past several periods, it
    // is the same process, never restarted.
    let stamp = show(&systemd, "WatchdogTimestampMonotonic");
    let pinged = poll_until(WATCHDOG * 2, "a newer watchdog ping", || async {
        match show(&systemd, "WatchdogTimestampMonotonic") {
            now if now != stamp && now != "0" => Ok(now),
            now => Err(now),
        }
    })
    .await;
    pinged.unwrap_or_else(|e| panic!("{e}\n{:#?}", messages(&systemd)));
    let healthy_for = WATCHDOG * 4;
    let since = Instant::now();
    let restarted = poll_until(healthy_for, "a restart while healthy", || async {
        let (pid, restarts) = (show(&systemd, "MainPID"), show(&systemd, "NRestarts"));
        match (
            pid == first,
            restarts.as_str(),
            show(&systemd, "ActiveState").as_str(),
        ) {
            (true, "0", "active") => Err("same process, active"),
            _ => Ok(format!("MainPID {pid}, NRestarts {restarts}")),
        }
    })
    .await;
    assert!(
        restarted.is_err(),
        "{restarted:?} within {:?}\n{:#?}",
        since.elapsed(),
        messages(&systemd)
    );
    assert!(since.elapsed() >= healthy_for);

    // Stuck: the debug build's hook blocks the loop; systemd's watchdog ends it and
    // Restart=on-failure starts a new process.
    mgr.kill_unit(UNIT.into(), "main".into(), libc::SIGUSR2)
        .await
        .expect("KillUnit SIGUSR2");
    let stalled = Instant::now();
    let second = poll_until(
        Duration::from_secs(30),
        "a new process after the watchdog",
        || async {
            let (pid, restarts) = (show(&systemd, "MainPID"), show(&systemd, "NRestarts"));
            match (show(&systemd, "ActiveState").as_str(), restarts.as_str()) {
                ("active", "1") if pid != first && pid != "0" => Ok(pid),
                (state, _) => Err(format!("{state}, MainPID {pid}, NRestarts {restarts}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:#?}", messages(&systemd)));
    let took = stalled.elapsed();
    let log = messages(&systemd);
    assert!(
        log.iter().any(|m| m.contains("blocking the loop's thread")),
        "the hook did not run: {log:#?}"
    );
    assert!(
        log.iter().any(|m| m.contains("Watchdog timeout")),
        "restarted, but not by the watchdog: {log:#?}"
    );
    eprintln!("watchdog restart: MainPID {first} -> {second} after {took:?}");
}

#[tokio::test]
async fn systemctl_reload_of_the_shipped_unit_rereads_the_configuration_in_the_same_process() {
    if !prerequisites_met(&[systemd::NEEDS, systemd::SYSTEMCTL_NEEDS, IN_CONTAINER].concat()) {
        return;
    }
    let systemd = Systemd::start().await;
    let mgr = start_quiet_sidekick(&systemd, QUIET_CONFIG, None).await;
    let pid = show(&systemd, "MainPID");

    // A live key, and one that waits for a restart.
    let edited = QUIET_CONFIG.replace("[health]\n", "[health]\ninterval = \"5s\"\n")
        + "[daemon]\nstate_dir = \"/var/lib/sidekick/elsewhere\"\n";
    write_host_config(&systemd, &edited);
    // ExecReload= sends SIGHUP; the job is done once it has.
    assert_eq!(
        systemd::run_job(&mgr, Job::Reload, UNIT).await,
        "done",
        "{:#?}",
        messages(&systemd)
    );
    let log = poll_until(
        Duration::from_secs(20),
        "the reload in the journal",
        || async {
            let log = messages(&systemd);
            match log.iter().any(|m| m.contains("configuration reloaded")) {
                true => Ok(log),
                false => Err(log),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        log.iter()
            .any(|m| m.contains("configuration reloaded: applied health.interval")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|m| m.contains("daemon.state_dir changed: takes effect after a restart")),
        "{log:#?}"
    );
    // The same process, running on, back from reloading.
    let settled = poll_until(
        Duration::from_secs(10),
        "active after the reload",
        || async {
            match show(&systemd, "ActiveState").as_str() {
                "active" => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    settled.unwrap_or_else(|e| panic!("{e}\n{log:#?}"));
    assert_eq!(show(&systemd, "MainPID"), pid);
    assert_eq!(show(&systemd, "NRestarts"), "0");
}
