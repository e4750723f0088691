//! `sidekick run` as a real process against real etcd, systemd (in its throw-away container),
//! Traefik and the Docker app images: the registration follows the unit and its health, survives
//! etcd and sidekick faults, and goes away on SIGTERM. Deregistration times are measured with etcd
//! watch events.

mod support;

use std::time::{Duration, Instant};

use etcd_client::Client;
use support::etcd::{self, Etcd};
use support::images::{self, Container};
use support::systemd::{self, Job, Systemd};
use support::traefik::{self, Traefik};
use support::{Need, free_port, http_client, poll_until, prerequisites_met, temp_dir};
use zbus_systemd::systemd1::ManagerProxy;

/// The sidekick process, units and etcd measuring helpers (`tests/registration/harness.rs`).
#[path = "registration/harness.rs"]
mod harness;
use harness::*;

/// Deregistration budget after the unit leaves `active` (the issue's requirement).
const DEREGISTER_BUDGET: Duration = Duration::from_secs(1);
/// SIGTERM to exit budget (the issue's requirement).
const STOP_BUDGET: Duration = Duration::from_secs(2);
/// Unit start, first health checks and the first registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Traefik follows etcd with a provider throttle of about 2 s.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);
/// Health check period in these tests.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

const SEED_KEY: &str = "/services/web/web-1";
const TRAEFIK_KEY: &str = "traefik/http/services/web/loadbalancer/servers/web-1/url";

fn needs_app() -> Vec<Need> {
    [etcd::NEEDS, systemd::NEEDS, images::NEEDS].concat()
}

#[tokio::test]
async fn traefik_routes_to_the_registered_app_and_stops_when_its_unit_stops() {
    if !prerequisites_met(&[needs_app(), traefik::NEEDS.to_vec()].concat()) {
        return;
    }
    let dir = temp_dir("reg-traefik");
    let www = web_root();
    let port = free_port();
    let container = Container::guard(&images::unique_name("reg"));
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let traefik = Traefik::start(&etcd.endpoint()).await;
    for (key, value) in traefik::router_keys("web", "web.test", "web") {
        client.clone().put(key, value, None).await.unwrap();
    }
    let systemd = Systemd::start().await;
    let mgr = start_unit(&systemd, &app_unit(container.name(), port, www.path())).await;
    let health = "check = \"http\"";
    let _sidekick = Sidekick::start(
        &systemd,
        dir.path(),
        "sk",
        &config(&etcd.endpoint(), "traefik", port, 10, health),
    );

    let (url, _) = wait_for_key(&client, TRAEFIK_KEY, REGISTER_TIMEOUT).await;
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    let http = http_client();
    let get = || async {
        let response = http
            .get(traefik.url())
            .header("Host", "web.test")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok::<_, String>((status, response.text().await.unwrap_or_default()))
    };
    let routed = poll_until(ROUTE_TIMEOUT, "Traefik routes to the app", || async {
        match get().await? {
            (200, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let body = routed.unwrap_or_else(|e| panic!("{e}\n{}", traefik.log_tail(20)));
    assert!(body.contains("1.0.0"), "{body}");

    assert_eq!(
        systemd::run_job(&mgr, Job::Stop, "web@1.service").await,
        "done"
    );
    // A dead server still in etcd would answer 502 (Bad Gateway) forever; only a removed key
    // leaves the router without a server: 404 (router dropped) or 503 (no available server).
    let stopped = poll_until(ROUTE_TIMEOUT, "Traefik has no server", || async {
        match get().await? {
            (status @ (404 | 503), _) => Ok(status),
            (status, body) => Err(format!("answered {status}: {body}")),
        }
    })
    .await;
    let stopped = stopped.unwrap_or_else(|e| panic!("{e}\n{}", traefik.log_tail(20)));
    let left = client.clone().get(TRAEFIK_KEY, None).await.unwrap();
    assert!(left.kvs().is_empty(), "server key still in etcd");
    eprintln!("Traefik answers {stopped} after the unit stopped");
}

/// Starts etcd, the container with the app unit and a sidekick (seed layout, HTTP check) and
/// waits for the registration. Returns everything the caller must keep alive.
async fn registered_app() -> (
    Etcd,
    Client,
    Systemd,
    ManagerProxy<'static>,
    Sidekick,
    [tempfile::TempDir; 2],
    Container,
) {
    let dir = temp_dir("reg-app");
    let www = web_root();
    let port = free_port();
    let container = Container::guard(&images::unique_name("reg"));
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    let mgr = start_unit(&systemd, &app_unit(container.name(), port, www.path())).await;
    let sidekick = Sidekick::start(
        &systemd,
        dir.path(),
        "sk",
        &config(&etcd.endpoint(), "seed", port, 10, "check = \"http\""),
    );
    let (value, _) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert_eq!(value, format!(r#"{{"host":"127.0.0.1","port":{port}}}"#));
    (etcd, client, systemd, mgr, sidekick, [dir, www], container)
}

#[tokio::test]
async fn key_is_gone_within_a_second_after_stop_unit() {
    if !prerequisites_met(&needs_app()) {
        return;
    }
    let (_etcd, client, _systemd, mgr, _sk, _dirs, _c) = registered_app().await;
    let mut events = watch(&client, SEED_KEY).await;
    let start = Instant::now();
    mgr.stop_unit("web@1.service".into(), "replace".into())
        .await
        .expect("StopUnit");
    let gone = deleted(&mut events, Duration::from_secs(10)).await - start;
    assert!(
        gone <= DEREGISTER_BUDGET,
        "key gone {gone:?} after StopUnit"
    );
}

#[tokio::test]
async fn key_is_gone_within_a_second_after_the_apps_main_process_is_killed() {
    if !prerequisites_met(&needs_app()) {
        return;
    }
    let (_etcd, client, _systemd, mgr, _sk, _dirs, _c) = registered_app().await;
    let mut events = watch(&client, SEED_KEY).await;
    let start = Instant::now();
    mgr.kill_unit("web@1.service".into(), "main".into(), libc::SIGKILL)
        .await
        .expect("KillUnit");
    let gone = deleted(&mut events, Duration::from_secs(10)).await - start;
    assert!(gone <= DEREGISTER_BUDGET, "key gone {gone:?} after SIGKILL");
}

#[tokio::test]
async fn key_is_gone_within_a_second_after_the_app_fails_its_check_fall_times_and_the_message_says_why()
 {
    if !prerequisites_met(&needs_app()) {
        return;
    }
    let (_etcd, client, _systemd, _mgr, sk, dirs, _c) = registered_app().await;
    let mut events = watch(&client, SEED_KEY).await;
    // `/` answers 404 from now on; the first failing check runs within one interval, the
    // `fall`-th (2nd) one interval later.
    let start = Instant::now();
    std::fs::remove_file(dirs[1].path().join("index.html")).unwrap();
    let gone = deleted(&mut events, Duration::from_secs(10)).await - start;
    let budget = PROBE_INTERVAL * 2 + DEREGISTER_BUDGET;
    assert!(
        gone <= budget,
        "key gone {gone:?} after the page went (budget {budget:?})"
    );
    // The reason is in the message text itself, not only in a structured field.
    let log = sk.log();
    assert!(
        log.lines()
            .any(|l| l.contains("health check failed: GET http://") && l.contains("answered 404")),
        "{log}"
    );
}

#[tokio::test]
async fn registration_is_back_within_one_ttl_after_etcd_restarts_with_exactly_one_key() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    const TTL: Duration = Duration::from_secs(6);
    let dir = temp_dir("reg-etcd");
    let mut etcd = Etcd::start().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let mut sidekick = Sidekick::start(
        &systemd,
        dir.path(),
        "sk",
        &config(
            &etcd.endpoint(),
            "seed",
            8080,
            TTL.as_secs(),
            "check = \"none\"",
        ),
    );
    let (_, lease) = wait_for_key(&etcd.client().await, SEED_KEY, REGISTER_TIMEOUT).await;

    etcd.member(0).stop();
    // The outage itself: longer than the TTL, so a lease not re-kept after the restart would go.
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    etcd.restart().await;
    let restarted = Instant::now();
    let client = etcd.client().await;
    let (_, lease_now) = wait_for_key(&client, SEED_KEY, TTL).await;

    // etcd resets lease TTLs on restart; a remaining TTL that rises again after falling proves
    // that keepalives resumed.
    let lowest = std::cell::Cell::new(i64::MAX);
    let kept = poll_until(TTL, "a keepalive after the restart", || {
        let client = client.clone();
        let lowest = &lowest;
        async move {
            let ttl = remaining_ttl(&client, lease_now).await;
            if ttl > lowest.get() {
                return Ok(ttl);
            }
            lowest.set(ttl);
            Err(format!("remaining ttl {ttl}"))
        }
    })
    .await;
    kept.unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    assert!(restarted.elapsed() <= TTL, "took {:?}", restarted.elapsed());
    assert_eq!(count_keys(&client, "/services/").await, 1);
    assert!(sidekick.is_running());
    eprintln!("lease before {lease:x}, after {lease_now:x}");
}

#[tokio::test]
async fn sidekick_stopped_longer_than_the_ttl_loses_the_key_and_reregisters_on_a_new_lease() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    const TTL: Duration = Duration::from_secs(5);
    let dir = temp_dir("reg-stop");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let mut sidekick = Sidekick::start(
        &systemd,
        dir.path(),
        "sk",
        &config(
            &etcd.endpoint(),
            "seed",
            8080,
            TTL.as_secs(),
            "check = \"none\"",
        ),
    );
    let (_, old_lease) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    let mut events = watch(&client, SEED_KEY).await;

    sidekick.signal(libc::SIGSTOP);
    deleted(&mut events, TTL * 3).await;
    sidekick.signal(libc::SIGCONT);

    let new_lease = poll_until(TTL * 2, "registered on a new lease", || {
        let mut client = client.clone();
        async move {
            let got = client
                .get(SEED_KEY, None)
                .await
                .map_err(|e| e.to_string())?;
            match got.kvs().first().map(|kv| kv.lease()) {
                Some(lease) if lease != old_lease => Ok(lease),
                other => Err(format!("lease {other:?}")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    assert_ne!(new_lease, old_lease);
    assert!(
        remaining_ttl(&client, old_lease).await <= 0,
        "old lease lives"
    );
    assert_eq!(count_keys(&client, "/services/").await, 1);
    assert!(sidekick.is_running());
}

#[tokio::test]
async fn sigterm_removes_the_key_and_exits_zero_within_two_seconds() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-term");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let mut sidekick = Sidekick::start(
        &systemd,
        dir.path(),
        "sk",
        &config(&etcd.endpoint(), "seed", 8080, 30, "check = \"none\""),
    );
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    let mut events = watch(&client, SEED_KEY).await;

    let start = Instant::now();
    sidekick.signal(libc::SIGTERM);
    let status = sidekick.wait_exit(STOP_BUDGET * 2).await;
    let exited = start.elapsed();
    let gone = deleted(&mut events, STOP_BUDGET).await - start;
    let status = status.expect("sidekick exited");
    assert!(status.success(), "exit status {status}");
    assert!(exited <= STOP_BUDGET, "exited after {exited:?}");
    assert!(gone <= STOP_BUDGET, "key gone after {gone:?}");
    assert_eq!(count_keys(&client, "/services/").await, 0);
}

/// The D-Bus connection cut and restored, and `run --dry-run` (`tests/registration/resilience.rs`).
#[path = "registration/resilience.rs"]
mod resilience;

/// etcd with TLS, client certificates and auth (`tests/registration/secure.rs`).
#[path = "registration/secure.rs"]
mod secure;

/// Unit restarts the sidekick must not miss, and etcd calls that must not delay deregistration
/// (`tests/registration/restarts.rs`).
#[path = "registration/restarts.rs"]
mod restarts;

/// `daemon.metrics` scraped by a real Prometheus.
#[path = "registration/metrics.rs"]
mod metrics;

/// The example update service in-process, for the swap the metrics test scrapes after.
#[path = "../examples/omaha_server/service/mod.rs"]
mod service;
#[path = "rollout/update_service.rs"]
mod update_service;

/// Self-healing registrations, duplicate instances and the real registry's fault promises.
#[path = "registration/heal.rs"]
mod heal;

/// Expiring auth tokens (`tests/registration/auth.rs`).
#[path = "registration/auth.rs"]
mod auth;

/// A 3-member cluster losing its leader or its quorum (`tests/registration/cluster.rs`).
#[path = "registration/cluster.rs"]
mod cluster;

/// `status` asking the sidekicks on this host over their control sockets
/// (`tests/registration/local_status.rs`).
#[path = "registration/local_status.rs"]
mod local_status;

/// SIGHUP: a live change without a gap, an invalid file refused, a dry run
/// (`tests/registration/reload.rs`).
#[path = "registration/reload.rs"]
mod reload;

/// The etcd behaviours the sidekick rests on, per etcd version (`tests/registration/etcd_versions.rs`).
#[path = "registration/etcd_versions.rs"]
mod etcd_versions;
