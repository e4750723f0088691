//! The shipped units in `units/`, loaded unchanged into the systemd container (systemd 252 as PID
//! 1, or 257 with `SIDEKICK_SYSTEMD_VERSION=257`): `systemd-analyze verify` accepts them, and
//! systemd itself starts `sidekick@example-web@<n>.service` beside the shipped app template, with
//! the shipped example configuration. The test only adds what a host provides: the binary at the
//! unit's `/usr/bin/sidekick`, `/etc/environment`, and drop-ins naming the test's etcd, port and
//! image.

mod support;

use std::time::Duration;

use zbus_systemd::systemd1::ManagerProxy;

use support::etcd::{self, Etcd};
use support::systemd::{self, Job, Systemd};
use support::{Need, free_port, images, poll_until, prerequisites_met, shipped, wait_for_http_ok};

/// Where the container sees the host's `Systemd::bus_dir()`.
const SHARED: &str = "/run/dbus";
/// What running things inside the container needs besides `systemd::NEEDS`.
const IN_CONTAINER: &[Need] = &[
    Need::Binary("nsenter"),
    Need::Binary("systemd-analyze"),
    Need::Binary("journalctl"),
];

/// Loads both shipped units as they are, and makes the unit's `/usr/bin/sidekick` exist in the
/// container: a read-only overlay on the container's `/usr/bin` (its own mount namespace; the
/// host's `/usr` is not touched) adds this build's binary.
fn install_shipped_units(systemd: &Systemd) {
    for unit in [
        "sidekick@.service",
        "sidekick-prepull@.service",
        "sidekick-version@.service",
    ] {
        systemd.write_unit(unit, &shipped(&format!("units/{unit}")));
    }
    systemd.write_unit(
        "example-web@.service",
        &shipped("units/example-web@.service"),
    );
    // The host's Docker engine, reached through the socket the container has bound in; the app
    // unit requires docker.service, which a Docker host has (Debian 13's root tree has none).
    systemd.write_unit(
        "docker.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    );
    let bin = systemd.bus_dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_sidekick"), bin.join("sidekick")).unwrap();
    let lower = format!("lowerdir={SHARED}/bin:/usr/bin");
    systemd.run(&[
        "mount", "-t", "overlay", "overlay", "-o", &lower, "/usr/bin",
    ]);
}

#[tokio::test]
async fn systemd_analyze_verify_accepts_each_shipped_unit() {
    if !prerequisites_met(&[systemd::NEEDS, IN_CONTAINER].concat()) {
        return;
    }
    let systemd = Systemd::start().await;
    install_shipped_units(&systemd);
    // Templates are verified as instances, linked the way `systemctl enable` links them.
    for (instance, template) in [
        ("example-web@1.service", "example-web@.service"),
        ("sidekick@example-web@1.service", "sidekick@.service"),
        (
            "sidekick-prepull@registry.example.com_sexample-web.service",
            "sidekick-prepull@.service",
        ),
        (
            "sidekick-version@example-web-1.service",
            "sidekick-version@.service",
        ),
    ] {
        std::os::unix::fs::symlink(template, systemd.unit_dir().join(instance)).unwrap();
        let path = format!("/etc/systemd/system/{instance}");
        let out = systemd.exec(&["systemd-analyze", "verify", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{instance}: {}\n{stderr}", out.status);
        // verify exits 0 on some problems it only prints (unknown keys, bad specifiers).
        let about_it: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(template) || l.contains(instance))
            .collect();
        assert!(about_it.is_empty(), "{instance}: {stderr}");
    }
}

/// The highest `systemd-analyze security` exposure the shipped sidekick unit may have (issue 18;
/// it was 8.9 "EXPOSED" before the unit was hardened).
const MAX_EXPOSURE: f64 = 2.5;

#[tokio::test]
async fn systemd_analyze_security_rates_the_shipped_sidekick_unit_and_the_templates_at_most_2_5() {
    if !prerequisites_met(&[systemd::NEEDS, IN_CONTAINER].concat()) {
        return;
    }
    let systemd = Systemd::start().await;
    install_shipped_units(&systemd);
    systemd.reload().await;
    // The daemon's unit, and the two root templates of non-root mode.
    for unit in [
        "sidekick@example-web@1.service",
        "sidekick-prepull@registry.example.com_sweb.service",
        "sidekick-version@example-web-1.service",
    ] {
        let report = systemd.run(&["systemd-analyze", "security", "--no-pager", unit]);
        let overall = report
            .lines()
            .find_map(|line| line.split_once(&format!("Overall exposure level for {unit}: ")))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|score| score.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no overall score in:\n{report}"));
        eprintln!("systemd-analyze security {unit}: {overall}");
        assert!(
            overall <= MAX_EXPOSURE,
            "{unit}: exposure {overall} > {MAX_EXPOSURE}:\n{report}"
        );
    }
}

/// One shipped app instance and its shipped sidekick in the container, against `etcd`.
struct Deployment {
    app: String,
    sidekick: String,
    port: u16,
    _container: images::Container,
}

/// Loads the shipped units and the shipped example config, with the host-specific parts added
/// as drop-ins (the test's etcd, a free port, the test app image), and starts the app.
async fn deploy(systemd: &Systemd, etcd: &Etcd, mgr: &ManagerProxy<'_>) -> Deployment {
    install_shipped_units(systemd);
    // A free port as the instance string keeps container names unique on a shared Docker host.
    let port = free_port();
    let app = format!("example-web@{port}.service");
    let sidekick = format!("sidekick@example-web@{port}.service");
    let container = images::Container::guard(&format!("example-web-{port}"));
    systemd.write_dropin(
        &app,
        "10-test.conf",
        &format!(
            "[Service]\nEnvironment=SIDEKICK_IMAGE={}\nEnvironment=PORT={port}\n",
            images::app_image("1.0.0")
        ),
    );
    let config = systemd.bus_dir().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("10-web.toml"),
        shipped("examples/config/web.toml"),
    )
    .unwrap();
    std::fs::write(
        config.join("20-test.toml"),
        format!(
            "[etcd]\nendpoints = [\"{}\"]\n[registration]\nport = {port}\n\
             [health]\nurl = \"http://127.0.0.1:{port}/\"\ninterval = \"1s\"\n\
             [update]\nenabled = false\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    // The host's part: drop-ins in /etc/sidekick/config.d, and /etc/environment, which the unit
    // reads for COREOS_PUBLIC_IPV4 (the example config sets no registration.host).
    systemd.run(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p /etc/sidekick/config.d && cp {SHARED}/config/*.toml /etc/sidekick/config.d/ \
                 && echo COREOS_PUBLIC_IPV4=127.0.0.1 > /etc/environment"
        ),
    ]);
    systemd.reload().await;
    assert_eq!(systemd::run_job(mgr, Job::Start, &app).await, "done");
    wait_for_http_ok(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("{app} does not serve: {e}\n{}", systemd.log_tail(30)));
    Deployment {
        app,
        sidekick,
        port,
        _container: container,
    }
}

/// The sidekick's journal entries, as JSON objects.
fn journal(systemd: &Systemd, unit: &str) -> Vec<serde_json::Value> {
    let dump = systemd.run(&["journalctl", "-o", "json", "--no-pager", "-u", unit]);
    dump.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test]
async fn systemd_starts_the_shipped_sidekick_unit_which_reports_ready_registers_and_logs_structured_fields()
 {
    let needs = [etcd::NEEDS, systemd::NEEDS, IN_CONTAINER, images::NEEDS].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let etcd = Etcd::start().await;
    let systemd = Systemd::start().await;
    let mgr = systemd.manager().await;
    let d = deploy(&systemd, &etcd, &mgr).await;

    // Type=notify: the start job is done only once the daemon sent READY=1.
    let started = systemd::run_job(&mgr, Job::Start, &d.sidekick).await;
    assert_eq!(started, "done", "{}", systemd.log_tail(30));
    let conn = systemd.connection().await;
    assert_eq!(systemd::active_state(&conn, &d.sidekick).await, "active");

    let mut client = etcd.client().await;
    let key = format!(
        "traefik/http/services/example-web/loadbalancer/servers/example-web-{}/url",
        d.port
    );
    let url = poll_until(Duration::from_secs(30), "the registration key", || {
        let (mut client, key) = (client.clone(), &key);
        async move {
            let resp = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| e.to_string())?;
            match resp.kvs().first() {
                Some(kv) => Ok(kv.value_str().unwrap_or_default().to_string()),
                None => Err("not registered yet".to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:#?}", journal(&systemd, &d.sidekick)));
    assert_eq!(url, format!("http://127.0.0.1:{}", d.port));

    let entries = journal(&systemd, &d.sidekick);
    let registering = entries
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("registering"))
        })
        .unwrap_or_else(|| panic!("no registering line: {entries:#?}"));
    assert_eq!(registering["UNIT"], d.app.as_str(), "{registering:#}");
    let instance = format!("example-web-{}", d.port);
    assert_eq!(
        registering["INSTANCE"],
        instance.as_str(),
        "{registering:#}"
    );
    assert_eq!(
        registering["SYSLOG_IDENTIFIER"], "sidekick",
        "{registering:#}"
    );
    assert_eq!(
        registering["_SYSTEMD_UNIT"],
        d.sidekick.as_str(),
        "{registering:#}"
    );

    // The sandbox the daemon runs in: /etc is read-only but for the app's drop-in directory
    // (where an update writes the new version), and its state directory is writable.
    let pid = systemd.systemctl(&["show", "--property=MainPID", "--value", &d.sidekick]);
    let pid = pid.trim();
    let touch = |path: &str| {
        let argv = ["nsenter", "--target", pid, "--mount", "--", "touch", path];
        systemd.exec(&argv).status.success()
    };
    assert!(touch(&format!("/etc/systemd/system/{}.d/.writable", d.app)));
    assert!(touch("/var/lib/sidekick/.writable"));
    assert!(!touch("/etc/systemd/system/.not-writable"));
    assert!(!touch("/usr/lib/.not-writable"));

    // Stopping the unit deregisters (SIGTERM revokes the lease) and the app keeps running.
    assert_eq!(systemd::run_job(&mgr, Job::Stop, &d.sidekick).await, "done");
    let resp = client.get(key.as_str(), None).await.unwrap();
    assert!(resp.kvs().is_empty(), "still registered after stop");
    assert_eq!(systemd::active_state(&conn, &d.app).await, "active");
}

#[tokio::test]
async fn a_bad_configuration_fails_the_shipped_sidekick_unit_once_without_restarts() {
    if !prerequisites_met(&[systemd::NEEDS, IN_CONTAINER].concat()) {
        return;
    }
    let systemd = Systemd::start().await;
    install_shipped_units(&systemd);
    // A sleeping app: this test is about the sidekick's unit, not the app.
    systemd.write_unit(
        "example-web@.service",
        "[Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.run(&[
        "sh",
        "-c",
        "mkdir -p /etc/sidekick/config.d && \
             printf '[registration]\\nprot = 80\\n' > /etc/sidekick/config.d/10-bad.toml",
    ]);
    systemd.reload().await;
    let mgr = systemd.manager().await;
    let unit = "sidekick@example-web@1.service";
    // Exit code 2 before READY=1: the start job fails, and RestartPreventExitStatus=2 keeps
    // Restart=on-failure from starting it again and again.
    assert_eq!(systemd::run_job(&mgr, Job::Start, unit).await, "failed");
    let show = |property: &str| {
        systemd
            .systemctl(&["show", &format!("--property={property}"), "--value", unit])
            .trim()
            .to_string()
    };
    let status = systemd.exec(&["systemctl", "status", "--no-pager", "-l", unit]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(show("ExecMainStatus"), "2", "{status}");
    // Long enough for RestartSec=2s to have passed twice, had a restart been scheduled.
    let restarted = poll_until(Duration::from_secs(5), "a restart", || async {
        match show("NRestarts").as_str() {
            "0" => Err("no restart"),
            _ => Ok(()),
        }
    })
    .await;
    assert!(restarted.is_err(), "restarted: {}", show("NRestarts"));
    assert_eq!(show("ActiveState"), "failed");
}

/// The watchdog and reload of the shipped unit (`tests/units/signals.rs`).
#[path = "units/signals.rs"]
mod signals;
