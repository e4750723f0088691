//! The sidekick against a system bus that goes away and comes back, and `run --dry-run`, each
//! against the real etcd and the real systemd container.
//!
//! The bus is cut the way it goes in production: `dbus.service` restarts (a package upgrade), or
//! `dbus.socket` and `dbus.service` stop for a while. Either way `dbus-daemon` exits and every
//! client connection ends; systemd itself reconnects once the daemon is back. While the bus is
//! down, the test reaches systemd with `systemctl` inside the container, which uses
//! `/run/systemd/private` instead of the bus.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use super::harness::{
    SLEEP_UNIT, Sidekick, app_unit, config, count_keys, deleted, start_unit, wait_for_key, watch,
    web_root,
};
use super::support::etcd::{self, Etcd};
use super::support::images::{self, Container};
use super::support::systemd::{self, Job, Systemd};
use super::support::{free_port, poll_until, prerequisites_met, temp_dir};
use super::{DEREGISTER_BUDGET, REGISTER_TIMEOUT, SEED_KEY, STOP_BUDGET};

/// `dbus-daemon` restarting, systemd rejoining the bus and the sidekick's reconnect backoff
/// (capped at 5 s) together.
pub(super) const BUS_RETURN_TIMEOUT: Duration = Duration::from_secs(30);
/// Logged by the unit watch when its connection ends (`src/systemd/watch.rs`).
pub(super) const BUS_LOST: &str = "system bus connection lost";
/// Logged (debug) by the unit watch each time it has subscribed and read the state.
const FOLLOWING: &str = "following unit over D-Bus";
/// Logged by the unit watch when a reconnect attempt fails.
pub(super) const BUS_RETRY: &str = "cannot follow the unit over D-Bus";

/// Starts etcd, the container with the sleeping `web@1.service` and a sidekick (seed layout, no
/// health check) and waits for its registration; returns the key's lease.
async fn registered_sleeper(dir: &std::path::Path) -> (Etcd, Client, Systemd, Sidekick, i64) {
    registered_unit(dir, SLEEP_UNIT).await
}

/// [`registered_sleeper`] with `unit_file` as `web@.service`.
pub(super) async fn registered_unit(
    dir: &std::path::Path,
    unit_file: &str,
) -> (Etcd, Client, Systemd, Sidekick, i64) {
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, unit_file).await;
    let sidekick = Sidekick::start(
        &systemd,
        dir,
        "sk",
        &config(&etcd.endpoint(), "seed", 8080, 30, "check = \"none\""),
    );
    let (_, lease) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    (etcd, client, systemd, sidekick, lease)
}

/// Polls the sidekick's log until `what` holds; the log.
pub(super) async fn wait_for_log(
    sidekick: &Sidekick,
    what: &str,
    holds: impl Fn(&str) -> bool,
) -> String {
    let seen = poll_until(BUS_RETURN_TIMEOUT, what, || {
        let log = sidekick.log();
        let ok = holds(&log);
        async move { if ok { Ok(log) } else { Err("not yet") } }
    })
    .await;
    seen.unwrap_or_else(|e| panic!("{e}\n--- sidekick log ---\n{}", sidekick.log()))
}

/// The key's lease now, or `None` when it is absent.
pub(super) async fn lease_of(client: &Client, key: &str) -> Option<i64> {
    let got = client.clone().get(key, None).await.expect("etcd get");
    got.kvs().first().map(|kv| kv.lease())
}

#[tokio::test]
async fn after_dbus_restarts_the_sidekick_resubscribes_and_still_deregisters_within_a_second() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-bus-restart");
    let (_etcd, client, systemd, sidekick, lease) = registered_sleeper(dir.path()).await;
    wait_for_log(&sidekick, "first subscription logged", |log| {
        log.contains(FOLLOWING)
    })
    .await;

    // The reply may or may not make it out before dbus-daemon exits and drops this connection too.
    let restart = systemd
        .manager()
        .await
        .restart_unit("dbus.service".into(), "replace".into())
        .await;
    eprintln!("RestartUnit(dbus.service): {restart:?}");
    let restarted = Instant::now();
    wait_for_log(&sidekick, "bus lost, then followed again", |log| {
        log.contains(BUS_LOST) && log.matches(FOLLOWING).count() >= 2
    })
    .await;
    eprintln!(
        "sidekick following again {:?} after RestartUnit",
        restarted.elapsed()
    );
    // The last known state stood through the outage: same registration, same lease.
    assert_eq!(lease_of(&client, SEED_KEY).await, Some(lease));

    let mgr = systemd.manager().await;
    let mut events = watch(&client, SEED_KEY).await;
    let start = Instant::now();
    mgr.stop_unit("web@1.service".into(), "replace".into())
        .await
        .expect("StopUnit");
    let gone = deleted(&mut events, Duration::from_secs(10)).await - start;
    assert!(
        gone <= DEREGISTER_BUDGET,
        "key gone {gone:?} after StopUnit on the new bus connection\n{}",
        sidekick.log()
    );

    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "web@1.service").await,
        "done"
    );
    let (_, new_lease) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert_ne!(new_lease, lease);
    assert_eq!(count_keys(&client, "/services/").await, 1);
}

#[tokio::test]
async fn a_unit_stopped_while_the_bus_is_down_is_deregistered_when_the_bus_returns() {
    let needs = [etcd::NEEDS, systemd::NEEDS, systemd::SYSTEMCTL_NEEDS].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let dir = temp_dir("reg-bus-down");
    let (_etcd, client, systemd, sidekick, lease) = registered_sleeper(dir.path()).await;

    // Stopping the socket stops dbus.service too (it `Requires=` the socket) and leaves nothing
    // to socket-activate it: the bus stays down until the socket is started again.
    systemd.systemctl(&["stop", "dbus.socket", "dbus.service"]);
    wait_for_log(&sidekick, "bus lost and a reconnect refused", |log| {
        log.contains(BUS_LOST) && log.contains(BUS_RETRY)
    })
    .await;
    systemd.systemctl(&["stop", "web@1.service"]);
    let state = systemd.systemctl(&["show", "--property=ActiveState", "web@1.service"]);
    assert_eq!(state.trim(), "ActiveState=inactive");
    // Nobody could tell the sidekick: it keeps the last known state.
    assert_eq!(lease_of(&client, SEED_KEY).await, Some(lease));

    let mut events = watch(&client, SEED_KEY).await;
    let start = Instant::now();
    systemd.systemctl(&["start", "dbus.socket"]);
    let gone = deleted(&mut events, BUS_RETURN_TIMEOUT).await - start;
    eprintln!("key gone {gone:?} after dbus.socket started again");
    let log = sidekick.log();
    assert!(log.contains("unit is inactive (was active)"), "{log}");

    let mgr = systemd.manager().await;
    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "web@1.service").await,
        "done"
    );
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert_eq!(count_keys(&client, "/services/").await, 1);
}

/// A registration left by someone else, read (never replaced) by the dry run.
const OLD_VALUE: &str = r#"{"host":"10.9.9.9","port":1}"#;

#[tokio::test]
async fn dry_run_reads_etcd_logs_the_registration_against_the_current_value_and_writes_nothing() {
    if !prerequisites_met(&super::needs_app()) {
        return;
    }
    let dir = temp_dir("reg-dry-run");
    let www = web_root();
    let port = free_port();
    let container = Container::guard(&images::unique_name("reg"));
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    client.clone().put(SEED_KEY, OLD_VALUE, None).await.unwrap();
    let revision = store_revision(&client).await;
    let systemd = Systemd::start().await;
    let mgr = start_unit(&systemd, &app_unit(container.name(), port, www.path())).await;
    let mut sidekick = Sidekick::start_with(
        &systemd,
        dir.path(),
        "sk",
        &config(&etcd.endpoint(), "seed", port, 10, "check = \"http\""),
        &["--dry-run"],
    );

    let put = format!(
        r#"dry-run: would register {SEED_KEY} = {{"host":"127.0.0.1","port":{port}}} (on a 10s lease; now: {OLD_VALUE})"#
    );
    let log = wait_for_log(&sidekick, "dry-run registration logged", |log| {
        log.contains(&put)
    })
    .await;
    assert!(log.contains("dry run: etcd answers"), "{log}");
    assert_etcd_untouched(&client, revision).await;

    assert_eq!(
        systemd::run_job(&mgr, Job::Stop, "web@1.service").await,
        "done"
    );
    let log = wait_for_log(&sidekick, "dry-run deregistration logged", |log| {
        log.contains("dry-run: would deregister: revoke the registration lease")
    })
    .await;
    assert!(
        log.contains("unit active and healthy: registering"),
        "{log}"
    );
    assert_etcd_untouched(&client, revision).await;

    sidekick.signal(libc::SIGTERM);
    let status = sidekick.wait_exit(STOP_BUDGET * 2).await.expect("exited");
    assert!(status.success(), "exit status {status}");
    assert_etcd_untouched(&client, revision).await;
    // Shutdown after the deregistration has nothing left to revoke.
    let log = sidekick.log();
    assert_eq!(log.matches("would deregister").count(), 1, "{log}");
}

#[tokio::test]
async fn dry_run_without_etcd_says_so_on_each_retry_and_still_follows_the_unit() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-dry-run-down");
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut sidekick = Sidekick::start_with(
        &systemd,
        dir.path(),
        "sk",
        &config(&nowhere, "seed", 8080, 10, "check = \"none\""),
        &["--dry-run"],
    );
    let put = format!("dry-run: would register {SEED_KEY} = ");
    let log = wait_for_log(
        &sidekick,
        "two retries and the registration logged",
        |log| log.matches("dry run: etcd unreachable").count() >= 2 && log.contains(&put),
    )
    .await;
    let line = log.lines().find(|l| l.contains(&put)).unwrap_or_default();
    assert!(line.contains("; now: unknown"), "{line}");
    let line = log
        .lines()
        .find(|l| l.contains("etcd unreachable"))
        .unwrap_or_default();
    assert!(
        line.contains(&nowhere) && line.contains("instance=web-1"),
        "{line}"
    );
    assert!(sidekick.is_running(), "{log}");
}

/// The store revision (it moves with every write).
async fn store_revision(client: &Client) -> i64 {
    let got = client.clone().get(SEED_KEY, None).await.expect("etcd get");
    got.header().expect("response header").revision()
}

/// Only the pre-existing key, unchanged; no write since `revision`; no lease granted.
async fn assert_etcd_untouched(client: &Client, revision: i64) {
    let mut client = client.clone();
    let all = GetOptions::new().with_all_keys();
    let got = client.get("", Some(all)).await.expect("get all keys");
    let keys: Vec<_> = got
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap_or("?"), kv.value_str().unwrap_or("?")))
        .collect();
    assert_eq!(keys, [(SEED_KEY, OLD_VALUE)], "etcd keys changed");
    assert_eq!(store_revision(&client).await, revision, "etcd written");
    let leases = client.leases().await.expect("list leases");
    assert!(
        leases.leases().is_empty(),
        "leases granted: {:?}",
        leases.leases()
    );
}
