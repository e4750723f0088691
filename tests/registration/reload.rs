//! SIGHUP against the real etcd and the real systemd container: a changed registration is
//! rewritten on the same lease with no moment where the key is absent (an etcd watch opened
//! before the signal sees no delete), an invalid configuration is refused with its file, line
//! and key while the daemon and its registration carry on, and a dry run reloads without writing.

use etcd_client::{EventType, WatchStream};

use super::harness::{Sidekick, config, count_keys, watch};
use super::resilience::{lease_of, registered_unit, wait_for_log};
use super::support::etcd::{self, Etcd};
use super::support::systemd::{self, Systemd};
use super::support::{prerequisites_met, temp_dir};
use super::{REGISTER_TIMEOUT, SEED_KEY, harness};

/// The registration `registered_unit` makes, and the config it starts with.
const PORT: u16 = 8080;
const TTL: u64 = 30;
const NO_CHECK: &str = "check = \"none\"";

fn seed_value(port: u16) -> String {
    format!(r#"{{"host":"127.0.0.1","port":{port}}}"#)
}

/// Replaces the sidekick's config file (`<dir>/sk.toml`) and sends SIGHUP.
fn reload_with(sidekick: &Sidekick, dir: &std::path::Path, config: &str) {
    std::fs::write(dir.join("sk.toml"), config).expect("write config");
    sidekick.signal(libc::SIGHUP);
}

/// Watch events on the key until a put of `value`; panics on a delete before it.
async fn put_without_delete(events: &mut WatchStream, value: &str, sidekick: &Sidekick) {
    let wait = async {
        while let Some(response) = events.message().await.expect("watch stream") {
            for event in response.events() {
                let kv = event.kv().expect("event kv");
                let seen = kv.value_str().unwrap_or("?");
                match event.event_type() {
                    EventType::Delete => {
                        panic!(
                            "the key was deleted before {value} was put\n{}",
                            sidekick.log()
                        )
                    }
                    EventType::Put if seen == value => return,
                    EventType::Put => {}
                }
            }
        }
        panic!("watch stream ended");
    };
    tokio::time::timeout(REGISTER_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("no put of {value}\n{}", sidekick.log()));
}

#[tokio::test]
async fn sighup_with_a_new_port_rewrites_the_key_on_the_same_lease_never_absent_in_between() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-reload");
    let (etcd, client, _systemd, sidekick, lease) =
        registered_unit(dir.path(), harness::SLEEP_UNIT).await;
    let mut events = watch(&client, SEED_KEY).await;

    // A live key and one that waits for a restart, in one reload.
    let changed = config(&etcd.endpoint(), "seed", PORT + 1, TTL, NO_CHECK)
        .replace("timeout = \"2s\"", "timeout = \"3s\"");
    reload_with(&sidekick, dir.path(), &changed);
    put_without_delete(&mut events, &seed_value(PORT + 1), &sidekick).await;

    assert_eq!(
        lease_of(&client, SEED_KEY).await,
        Some(lease),
        "a new lease"
    );
    assert_eq!(count_keys(&client, "/services/").await, 1);
    let log = wait_for_log(&sidekick, "the reload's summary", |log| {
        log.contains("configuration reloaded: applied registration.port")
    })
    .await;
    assert!(
        log.contains("etcd.timeout changed: takes effect after a restart"),
        "{log}"
    );
}

#[tokio::test]
async fn sighup_with_an_invalid_configuration_logs_file_line_and_key_and_changes_nothing() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-reload-bad");
    let (etcd, client, _systemd, mut sidekick, lease) =
        registered_unit(dir.path(), harness::SLEEP_UNIT).await;
    let mut events = watch(&client, SEED_KEY).await;

    let good = config(&etcd.endpoint(), "seed", PORT + 1, TTL, NO_CHECK);
    // A misspelt key after a changed port: nothing of the file applies.
    let bad = good.replace("[registration]\n", "[registration]\nprot = 1\n");
    let line = bad
        .lines()
        .position(|l| l == "prot = 1")
        .expect("the bad line")
        + 1;
    reload_with(&sidekick, dir.path(), &bad);
    let where_ = format!("sk.toml:{line}: key `registration.prot`");
    let log = wait_for_log(&sidekick, "the refused reload", |log| {
        log.contains("configuration not reloaded")
    })
    .await;
    let refused = log
        .lines()
        .find(|l| l.contains("configuration not reloaded"))
        .unwrap_or_default();
    assert!(refused.contains(" ERROR "), "{refused}");
    assert!(refused.contains(&where_), "{refused}");
    assert!(sidekick.is_running(), "{log}");
    assert_eq!(lease_of(&client, SEED_KEY).await, Some(lease));
    let (value, _) = harness::wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert_eq!(
        value,
        seed_value(PORT),
        "the port of the refused file applied"
    );

    // The configuration in force is the old one: a good reload afterwards is the first change.
    reload_with(&sidekick, dir.path(), &good);
    put_without_delete(&mut events, &seed_value(PORT + 1), &sidekick).await;
    assert_eq!(lease_of(&client, SEED_KEY).await, Some(lease));
}

#[tokio::test]
async fn a_dry_run_reloads_the_same_way_and_writes_nothing() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-reload-dry");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    harness::start_unit(&systemd, harness::SLEEP_UNIT).await;
    let start = config(&etcd.endpoint(), "seed", PORT, TTL, NO_CHECK);
    let sidekick = Sidekick::start_with(&systemd, dir.path(), "sk", &start, &["--dry-run"]);
    let would = |port| format!("dry-run: would register {SEED_KEY} = {}", seed_value(port));
    wait_for_log(&sidekick, "the dry run's registration", |log| {
        log.contains(&would(PORT))
    })
    .await;

    let changed = config(&etcd.endpoint(), "seed", PORT + 1, TTL, NO_CHECK);
    reload_with(&sidekick, dir.path(), &changed);
    wait_for_log(&sidekick, "the reloaded registration, printed", |log| {
        log.contains(&would(PORT + 1))
    })
    .await;
    assert_eq!(
        count_keys(&client, "").await,
        0,
        "the dry run wrote to etcd"
    );
    let leases = client.clone().leases().await.expect("list leases");
    assert!(leases.leases().is_empty(), "{:?}", leases.leases());
}
