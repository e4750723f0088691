//! Unit restarts the sidekick must not miss, however quickly they happen or while it cannot see
//! them, and etcd calls in flight that must not delay (or outlive) a deregistration. Real etcd and
//! the real systemd container; etcd answers are held back with a proxy.

use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchStream};

use super::harness::{SLEEP_UNIT, Sidekick, config, count_keys, start_unit, wait_for_key, watch};
use super::resilience::{
    BUS_LOST, BUS_RETRY, BUS_RETURN_TIMEOUT, lease_of, registered_unit, wait_for_log,
};
use super::support::etcd::{self, Etcd};
use super::support::proxy::HoldingProxy;
use super::support::systemd::{self, Job, Systemd};
use super::support::{poll_until, prerequisites_met, temp_dir};
use super::{DEREGISTER_BUDGET, REGISTER_TIMEOUT, SEED_KEY};

/// A unit that systemd restarts at once whenever its main process dies.
const RESTARTING_UNIT: &str =
    "[Service]\nExecStart=/usr/bin/sleep infinity\nRestart=always\nRestartSec=0\n";

/// One watch event on the key: its type, when it arrived and the lease of a put.
#[derive(Debug)]
struct Seen {
    kind: EventType,
    at: Instant,
    lease: i64,
}

/// Reads the key's events until a put arrives (within `timeout`); all of them, in order.
async fn events_until_put(stream: &mut WatchStream, timeout: Duration) -> Vec<Seen> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(response) = stream.message().await.expect("watch stream") {
            for event in response.events() {
                let lease = event.kv().map_or(0, |kv| kv.lease());
                let kind = event.event_type();
                seen.push(Seen {
                    kind,
                    at: Instant::now(),
                    lease,
                });
                if kind == EventType::Put {
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(timeout, read).await.is_err() {
        panic!("no put within {timeout:?}; events so far: {seen:?}");
    }
    seen
}

#[tokio::test]
async fn a_crash_and_instant_restart_deletes_the_key_before_it_is_registered_again() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-crash-restart");
    let (_etcd, client, systemd, sidekick, lease) =
        registered_unit(dir.path(), RESTARTING_UNIT).await;
    let mgr = systemd.manager().await;
    let mut events = watch(&client, SEED_KEY).await;

    let start = Instant::now();
    mgr.kill_unit("web@1.service".into(), "main".into(), libc::SIGKILL)
        .await
        .expect("KillUnit");
    let seen = events_until_put(&mut events, REGISTER_TIMEOUT).await;
    let log = sidekick.log();
    assert_eq!(
        seen.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [EventType::Delete, EventType::Put],
        "{log}"
    );
    let gone = seen[0].at - start;
    assert!(gone <= DEREGISTER_BUDGET, "key gone {gone:?} after SIGKILL");
    assert_ne!(seen[1].lease, lease, "registered again on the old lease");
    assert_eq!(count_keys(&client, "/services/").await, 1);
}

#[tokio::test]
async fn a_restart_while_the_bus_is_down_is_noticed_when_it_returns() {
    let needs = [etcd::NEEDS, systemd::NEEDS, systemd::SYSTEMCTL_NEEDS].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let dir = temp_dir("reg-bus-restart-unit");
    let (_etcd, client, systemd, sidekick, lease) = registered_unit(dir.path(), SLEEP_UNIT).await;

    systemd.systemctl(&["stop", "dbus.socket", "dbus.service"]);
    wait_for_log(&sidekick, "bus lost and a reconnect refused", |log| {
        log.contains(BUS_LOST) && log.contains(BUS_RETRY)
    })
    .await;
    // Active before and after: only the new activation timestamp tells.
    systemd.systemctl(&["restart", "web@1.service"]);
    let state = systemd.systemctl(&["show", "--property=ActiveState", "web@1.service"]);
    assert_eq!(state.trim(), "ActiveState=active");
    assert_eq!(lease_of(&client, SEED_KEY).await, Some(lease));

    let mut events = watch(&client, SEED_KEY).await;
    systemd.systemctl(&["start", "dbus.socket"]);
    let seen = events_until_put(&mut events, BUS_RETURN_TIMEOUT).await;
    let log = sidekick.log();
    assert_eq!(
        seen.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [EventType::Delete, EventType::Put],
        "{log}"
    );
    assert_ne!(seen[1].lease, lease, "registered again on the old lease");
    assert!(log.contains("came back between two reads"), "{log}");
    assert_eq!(count_keys(&client, "/services/").await, 1);
}

/// The store revision: unchanged as long as nothing is written.
async fn revision(client: &Client) -> i64 {
    let got = client.clone().get(SEED_KEY, None).await.expect("etcd get");
    got.header().expect("response header").revision()
}

async fn lease_count(client: &Client) -> usize {
    let leases = client.clone().leases().await.expect("list leases");
    leases.leases().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_a_lease_grant_is_unanswered_revokes_at_once_and_writes_nothing() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-inflight");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let proxy = HoldingProxy::start(etcd.endpoint().trim_start_matches("http://")).await;
    let systemd = Systemd::start().await;
    let mgr = start_unit(&systemd, SLEEP_UNIT).await;
    // A timeout far beyond the deregistration budget: waiting for it would show.
    let config = config(&proxy.endpoint(), "seed", 8080, 30, "check = \"none\"")
        .replace("timeout = \"2s\"", "timeout = \"10s\"");
    let sidekick = Sidekick::start(&systemd, dir.path(), "sk", &config);
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert_eq!(
        systemd::run_job(&mgr, Job::Stop, "web@1.service").await,
        "done"
    );
    poll_until(REGISTER_TIMEOUT, "first registration revoked", || async {
        match lease_count(&client).await {
            0 => Ok(()),
            n => Err(format!("{n} leases")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));

    // The grant reaches etcd, its answer does not reach the sidekick.
    proxy.hold();
    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "web@1.service").await,
        "done"
    );
    poll_until(REGISTER_TIMEOUT, "a lease granted, answer held", || async {
        match lease_count(&client).await {
            1 => Ok(()),
            n => Err(format!("{n} leases")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    let before = revision(&client).await;

    let start = Instant::now();
    assert_eq!(
        systemd::run_job(&mgr, Job::Stop, "web@1.service").await,
        "done"
    );
    let revoked = poll_until(
        DEREGISTER_BUDGET * 5,
        "the pending lease revoked",
        || async {
            match lease_count(&client).await {
                0 => Ok(start.elapsed()),
                n => Err(format!("{n} leases")),
            }
        },
    )
    .await;
    proxy.release();
    let revoked = revoked.unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    assert!(
        revoked <= DEREGISTER_BUDGET,
        "lease revoked {revoked:?} after StopUnit\n{}",
        sidekick.log()
    );

    // With the answers delivered, the abandoned grant must not turn into a registration.
    wait_for_log(&sidekick, "the revoke answered", |log| {
        log.matches("deregistered: lease revoked").count() >= 2
    })
    .await;
    let log = sidekick.log();
    assert_eq!(
        revision(&client).await,
        before,
        "etcd written after the stop\n{log}"
    );
    assert_eq!(lease_count(&client).await, 0, "{log}");
    assert_eq!(count_keys(&client, "/services/").await, 0);
}
