//! Registrations that heal themselves and refuse to overwrite a duplicate instance, and the
//! real registry's promises about etcd and sidekick faults, measured with etcd watch events.

use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};

use super::harness::{
    SLEEP_UNIT, Sidekick, config, count_keys, deleted, start_unit, wait_for_key, watch,
};
use super::support::etcd::{self, Etcd};
use super::support::systemd::{self, Systemd};
use super::support::{Need, poll_until, prerequisites_met, temp_dir};
use super::{REGISTER_TIMEOUT, SEED_KEY};

/// `etcdctl del key` against `endpoint`, as an operator would run it; fails the test when
/// etcdctl itself fails.
fn etcdctl_del(endpoint: &str, key: &str) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "del", key])
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl del failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "deleted one key"
    );
}

fn needs() -> Vec<Need> {
    [etcd::NEEDS, systemd::NEEDS, &[Need::Binary("etcdctl")]].concat()
}

#[tokio::test]
async fn a_key_deleted_by_an_operator_is_back_within_a_second_measured_with_a_watch() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let dir = temp_dir("reg-heal");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let cfg = config(&etcd.endpoint(), "seed", 8080, 10, "check = \"none\"");
    let sidekick = Sidekick::start(&systemd, dir.path(), "sk", &cfg);
    let (value, lease) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;

    for round in 0..3 {
        let mut stream = watch(&client, SEED_KEY).await;
        etcdctl_del(&etcd.endpoint(), SEED_KEY);
        let gone = deleted(&mut stream, Duration::from_secs(2)).await;
        let back = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(resp) = stream.message().await.expect("watch") {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Put)
                {
                    return Instant::now();
                }
            }
            panic!("watch ended");
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: not back within 2 s\n{}", sidekick.log()));
        let took = back.duration_since(gone);
        assert!(
            took <= Duration::from_secs(1),
            "round {round}: back after {took:?}"
        );
        let (again, lease_again) = wait_for_key(&client, SEED_KEY, Duration::from_secs(1)).await;
        assert_eq!(
            (again, lease_again),
            (value.clone(), lease),
            "same value, same lease"
        );
    }
}

#[tokio::test]
async fn a_second_instance_of_one_name_never_overwrites_the_first_and_takes_over_when_it_stops() {
    if !prerequisites_met(&needs()) {
        return;
    }
    const TTL: u64 = 5;
    let dir = temp_dir("reg-dup");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let cfg = config(&etcd.endpoint(), "seed", 8080, TTL, "check = \"none\"");
    let mut first = Sidekick::start(&systemd, dir.path(), "first", &cfg);
    let (value, lease) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert!(value.contains("127.0.0.1"), "{value}");
    let second_cfg = cfg.replace("host = \"127.0.0.1\"", "host = \"127.0.0.2\"");
    let second = Sidekick::start(&systemd, dir.path(), "second", &second_cfg);

    let logged = poll_until(REGISTER_TIMEOUT, "the second logs the duplicate", || {
        let log = second.log();
        async move {
            match log
                .lines()
                .find(|l| l.contains("ERROR") && l.contains("duplicate instance"))
            {
                Some(line) => Ok(line.to_string()),
                None => Err("not yet".to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    assert!(
        logged.contains(SEED_KEY) && logged.contains("127.0.0.1"),
        "{logged}"
    );
    // Two more retries at the TTL leave the first one's key alone.
    let mut stream = client
        .clone()
        .watch(SEED_KEY, Some(WatchOptions::new()))
        .await
        .unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(2 * TTL + 1), async {
        while let Some(resp) = stream.message().await.expect("watch") {
            if !resp.events().is_empty() {
                return resp;
            }
        }
        panic!("watch ended");
    })
    .await;
    assert!(
        changed.is_err(),
        "the key changed: {changed:?}\n{}",
        second.log()
    );
    assert_eq!(count_keys(&client, "/services/").await, 1);
    let (still, lease_still) = wait_for_key(&client, SEED_KEY, Duration::from_secs(1)).await;
    assert_eq!((still.as_str(), lease_still), (value.as_str(), lease));
    let status = Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["status", "--config"])
        .arg(dir.path().join("second.toml"))
        .env("SIDEKICK_CONFIG_ROOT", dir.path().join("second-root"))
        .output()
        .expect("sidekick status");
    let table = String::from_utf8_lossy(&status.stdout);
    let row = table
        .lines()
        .skip_while(|l| !l.starts_with("DUPLICATE INSTANCES"))
        .nth(2)
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().take(3).collect::<Vec<_>>(),
        [SEED_KEY, "127.0.0.1", "127.0.0.2"],
        "{table}"
    );

    let mut stream = watch(&client, SEED_KEY).await;
    first.signal(libc::SIGTERM);
    let gone = deleted(&mut stream, Duration::from_secs(3)).await;
    assert!(first.wait_exit(Duration::from_secs(3)).await.is_some());
    let (taken, _) = wait_for_key(&client, SEED_KEY, Duration::from_secs(TTL + 1)).await;
    let took = gone.elapsed();
    assert!(taken.contains("127.0.0.2"), "{taken}");
    assert!(
        took <= Duration::from_secs(TTL + 1),
        "took over after {took:?}"
    );
    assert_eq!(count_keys(&client, "/sidekick/duplicates/").await, 0);
}

#[tokio::test]
async fn a_sigkilled_sidekicks_key_is_gone_within_the_ttl_plus_one_second() {
    if !prerequisites_met(&needs()) {
        return;
    }
    const TTL: Duration = Duration::from_secs(5);
    let dir = temp_dir("reg-kill");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let cfg = config(
        &etcd.endpoint(),
        "seed",
        8080,
        TTL.as_secs(),
        "check = \"none\"",
    );
    let mut sidekick = Sidekick::start(&systemd, dir.path(), "sk", &cfg);
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    let mut stream = watch(&client, SEED_KEY).await;
    let killed = Instant::now();
    sidekick.signal(libc::SIGKILL);
    let gone = deleted(&mut stream, TTL + Duration::from_secs(3)).await;
    let took = gone.duration_since(killed);
    assert!(took <= TTL + Duration::from_secs(1), "gone after {took:?}");
    assert!(sidekick.wait_exit(Duration::from_secs(1)).await.is_some());
}

#[tokio::test]
async fn with_etcd_unreachable_at_start_the_real_registry_registers_as_soon_as_etcd_answers() {
    if !prerequisites_met(&needs()) {
        return;
    }
    const TTL: u64 = 6;
    let dir = temp_dir("reg-late-etcd");
    let mut etcd = Etcd::start().await;
    etcd.member(0).stop();
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let cfg = config(&etcd.endpoint(), "seed", 8080, TTL, "check = \"none\"");
    let sidekick = Sidekick::start(&systemd, dir.path(), "sk", &cfg);
    poll_until(REGISTER_TIMEOUT, "a failed attempt logged", || {
        let log = sidekick.log();
        async move {
            match log.matches("etcd registration failed").count() >= 2 {
                true => Ok(()),
                false => Err("not yet"),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    etcd.restart().await;
    let answered = Instant::now();
    let client = etcd.client().await;
    // Retries while a registration is wanted are at most TTL/3 apart (plus jitter and a request).
    wait_for_key(&client, SEED_KEY, Duration::from_secs(TTL / 3 + 2)).await;
    let took = answered.elapsed();
    assert!(
        took <= Duration::from_secs(TTL / 3 + 2),
        "registered {took:?} after etcd answered"
    );
}
