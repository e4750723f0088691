//! `daemon.metrics`: a real Prometheus server scrapes a registered sidekick; after a real swap on
//! the systemd container (the example update service offering 2.0.0) the text counts it as
//! `updated` and times each step; `promtool check metrics` accepts what it serves.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;
use crate::support::{ProcessGuard, SignalTarget, find_binary, http_get};

const PROMETHEUS_NEEDS: &[Need] = &[Need::Binary("prometheus"), Need::Binary("promtool")];

/// One instant-query value of `query` from the Prometheus API, once it has one.
async fn query_value(api: &str, query: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let url = format!("{api}/api/v1/query?query={encoded}");
    poll_until(Duration::from_secs(30), query, || {
        let url = url.clone();
        async move {
            let (status, body) = http_get(&url).await?;
            let json: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
            json["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("no value yet: {body}"))
        }
    })
    .await
    .expect("Prometheus answers the query")
}

/// `promtool check metrics` finds nothing wrong with `text`.
fn assert_promtool_accepts(text: &str) {
    let promtool = find_binary("promtool").expect("promtool");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn prometheus_scrapes_the_phase_and_registration_and_promtool_accepts_the_text() {
    let needs = [etcd::NEEDS, systemd::NEEDS, PROMETHEUS_NEEDS].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let dir = temp_dir("reg-metrics");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let metrics_port = free_port();
    let config = format!(
        "{}[daemon]\nmetrics = \"127.0.0.1:{metrics_port}\"\n",
        config(&etcd.endpoint(), "seed", 8080, 10, "check = \"none\"")
    );
    let _sidekick = Sidekick::start(&systemd, dir.path(), "sk", &config);
    wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;

    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = poll_until(
        Duration::from_secs(10),
        "metrics show the registration",
        || {
            let url = url.clone();
            async move {
                let (_, text) = http_get(&url).await?;
                match text.contains("sidekick_registered 1") {
                    true => Ok(text),
                    false => Err(text),
                }
            }
        },
    )
    .await
    .expect("metrics served");
    assert!(
        text.contains("sidekick_phase{phase=\"serving\"} 1"),
        "{text}"
    );
    assert_promtool_accepts(&text);

    let prometheus_port = free_port();
    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: sidekick\n    static_configs:\n      \
             - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(find_binary("prometheus").expect("prometheus"));
    command.args([
        format!("--config.file={}", prometheus_config.display()),
        format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
    ]);
    let _prometheus = ProcessGuard::spawn(
        "prometheus",
        &mut command,
        &dir.path().join("prometheus.log"),
        SignalTarget::Group,
    );
    let api = format!("http://127.0.0.1:{prometheus_port}");
    assert_eq!(query_value(&api, "up{job=\"sidekick\"}").await, "1");
    assert_eq!(
        query_value(&api, "sidekick_phase{phase=\"serving\"}").await,
        "1"
    );
    assert_eq!(query_value(&api, "sidekick_registered").await, "1");
}

/// The value of the sample `name` in classic Prometheus text, if it is there.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sleeping app with the version and image a swap replaces.
const VERSIONED_UNIT: &str = "[Service]\n\
    Environment=SIDEKICK_VERSION=1.0.0 SIDEKICK_IMAGE=registry.example.com/web:1.0.0\n\
    ExecStart=/usr/bin/sleep infinity\n";

#[tokio::test]
async fn after_a_real_swap_the_metrics_count_it_as_updated_and_time_each_step() {
    let needs = [etcd::NEEDS, systemd::NEEDS, &[Need::Binary("promtool")]].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let dir = temp_dir("reg-swap-metrics");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, VERSIONED_UNIT).await;
    let updates = update_service::UpdateService::start(
        "2.0.0",
        "registry.example.com/web:2.0.0",
        Duration::from_secs(3600),
    )
    .await;
    let metrics_port = free_port();
    let config = format!(
        "[instance]\nunit = \"web@1.service\"\n\
         [etcd]\nendpoints = [\"{etcd}\"]\ntimeout = \"2s\"\n\
         [registration]\nlayout = \"seed\"\nhost = \"127.0.0.1\"\nport = 8080\nttl = \"10s\"\n\
         [health]\ncheck = \"none\"\n\
         [update]\nserver = \"{server}\"\napp_id = \"{app}\"\ntrack = \"{track}\"\n\
         interval = \"10s\"\nimage = \"{{codebase}}\"\n\
         [slot]\nbackend = \"etcd\"\nmax = 1\nttl = \"5s\"\n\
         [swap]\ndrain = \"1s\"\nstart_timeout = \"30s\"\nverify_timeout = \"30s\"\n\
         prepull = [\"/usr/bin/true\", \"{{image}}\"]\ndropin_dir = \"{dropins}\"\n\
         [rollout]\nmin_healthy = \"1s\"\n\
         [daemon]\nstate_dir = \"{state}\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n",
        etcd = etcd.endpoint(),
        server = updates.endpoint(),
        app = update_service::APP_ID,
        track = update_service::TRACK,
        dropins = systemd.unit_dir().display(),
        state = dir.path().display(),
    );
    let _sidekick = Sidekick::start(&systemd, dir.path(), "sk", &config);

    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = poll_until(Duration::from_secs(90), "metrics count the swap", || {
        let url = url.clone();
        async move {
            let (_, text) = http_get(&url).await?;
            match sample(&text, "sidekick_swaps_total{result=\"updated\"}") {
                Some(_) => Ok(text),
                None => Err(text),
            }
        }
    })
    .await
    .expect("the swap ends and is counted");
    // Shown with --nocapture: what an operator's scrape looks like after a swap.
    eprintln!("--- scraped after the swap ---\n{text}");
    let env = systemd::service_environment(&systemd.connection().await, "web@1.service").await;
    assert!(
        env.iter().any(|e| e == "SIDEKICK_VERSION=2.0.0"),
        "the unit runs the new version: {env:?}"
    );
    assert_eq!(
        sample(&text, "sidekick_swaps_total{result=\"updated\"}"),
        Some(1.0),
        "{text}"
    );
    for step in [
        "prepull",
        "slot",
        "deregister",
        "drain",
        "fence",
        "dropin",
        "restart",
        "verify",
        "register",
        "min_healthy",
        "release",
    ] {
        let count = sample(
            &text,
            &format!("sidekick_swap_step_seconds_count{{step=\"{step}\"}}"),
        );
        assert!(
            count.is_some_and(|n| n >= 1.0),
            "step {step}: {count:?}\n{text}"
        );
    }
    let drained = sample(&text, "sidekick_swap_step_seconds_sum{step=\"drain\"}");
    assert!(
        drained.is_some_and(|s| s >= 1.0),
        "the drain took swap.drain: {drained:?}\n{text}"
    );
    assert_eq!(
        sample(&text, "sidekick_slot_wait_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("step=\"rollback\""), "{text}");
    // The version label follows the swap, before any later pass reads it again.
    assert_eq!(
        sample(&text, "sidekick_version_info{version=\"2.0.0\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sidekick_version_info{version=\"1.0.0\"}"),
        None,
        "{text}"
    );
    assert_promtool_accepts(&text);
    let slots = client
        .clone()
        .get(
            "/sidekick/slots/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(slots.count(), 0, "the slot was given back");
}

/// SIGSTOPs processes (a stalled etcd: its sockets stay open, nothing answers); SIGCONT when
/// dropped, also when the test fails.
struct Paused(Vec<u32>);

impl Paused {
    fn pause(pids: Vec<u32>) -> Paused {
        for &pid in &pids {
            // SAFETY: kill(2) on the pid of an etcd this test started and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as in `pause`.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
    }
}

#[tokio::test]
async fn a_keepalive_answered_late_counts_as_a_keepalive_failure_and_the_registration_survives() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-keepalive-metrics");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let metrics_port = free_port();
    // TTL 15 s: a keepalive every 5 s, late after 5 s more, etcd expires the lease 15 s after the
    // last answered one: the stall is seen well before the lease is at risk.
    let config = format!(
        "{}[daemon]\nmetrics = \"127.0.0.1:{metrics_port}\"\n",
        config(&etcd.endpoint(), "seed", 8080, 15, "check = \"none\"")
    );
    let _sidekick = Sidekick::start(&systemd, dir.path(), "sk", &config);
    let (_, lease) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let failures = |url: String| async move {
        let (_, text) = http_get(&url).await?;
        sample(&text, "sidekick_lease_keepalive_failures_total")
            .ok_or_else(|| format!("no keepalive failure counter in:\n{text}"))
    };
    let before = poll_until(Duration::from_secs(10), "metrics served", || {
        failures(url.clone())
    })
    .await
    .expect("metrics served");
    assert_eq!(before, 0.0, "keepalive failures before etcd stalled");

    let stalled = Paused::pause(etcd.pids());
    let during = poll_until(Duration::from_secs(12), "a late keepalive counted", || {
        let url = url.clone();
        async move {
            match failures(url).await? {
                n if n >= 1.0 => Ok(n),
                n => Err(format!("{n} failures")),
            }
        }
    })
    .await
    .expect("the late keepalive is counted");
    drop(stalled);
    assert!(during >= 1.0);

    // The keeper re-opened its stream in time: the same lease still holds the registration.
    let (_, still) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    assert_eq!(still, lease, "the registration moved to another lease");
}

#[tokio::test]
async fn a_revoked_registration_lease_is_granted_again_and_counted_as_a_regrant() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-regrant-metrics");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let metrics_port = free_port();
    let config = format!(
        "{}[daemon]\nmetrics = \"127.0.0.1:{metrics_port}\"\n",
        config(&etcd.endpoint(), "seed", 8080, 15, "check = \"none\"")
    );
    let _sidekick = Sidekick::start(&systemd, dir.path(), "sk", &config);
    let (_, lease) = wait_for_key(&client, SEED_KEY, REGISTER_TIMEOUT).await;
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let regrants = |url: String| async move {
        let (_, text) = http_get(&url).await?;
        sample(&text, "sidekick_lease_regrants_total")
            .ok_or_else(|| format!("no regrant counter in:\n{text}"))
    };
    let before = poll_until(Duration::from_secs(10), "metrics served", || {
        regrants(url.clone())
    })
    .await
    .expect("metrics served");
    assert_eq!(before, 0.0, "regrants before the lease went");

    // Someone revokes the registration's lease: the key goes with it.
    client
        .clone()
        .lease_revoke(lease)
        .await
        .expect("revoke the registration lease");
    let client_ref = &client;
    let (_, again) = poll_until(
        REGISTER_TIMEOUT,
        "registered on a new lease",
        || async move {
            let got = client_ref
                .clone()
                .get(SEED_KEY, None)
                .await
                .map_err(|e| e.to_string())?;
            match got.kvs().first().map(|kv| kv.lease()) {
                Some(new) if new != lease => Ok(((), new)),
                other => Err(format!("lease {other:?}")),
            }
        },
    )
    .await
    .expect("the registration comes back on a new lease");
    assert_ne!(again, lease);
    let after = poll_until(Duration::from_secs(10), "the regrant counted", || {
        let url = url.clone();
        async move {
            match regrants(url).await? {
                1.0 => Ok(1.0),
                n => Err(format!("{n} regrants")),
            }
        }
    })
    .await
    .expect("one regrant counted");
    assert_eq!(after, 1.0);
}
