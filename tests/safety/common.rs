//! Steps the safety cases share: app versions beyond the four the support builds, each
//! sidekick's etcd paths behind cuttable proxies, finding the slot holder, waiting for a rollout
//! to end, the checks every case makes at its end, and what the cases of a version that dies
//! after its verification watch and check.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, FleetSpec, HALT_PREFIX, SERVERS_PREFIX, SLOTS_PREFIX};
use crate::load::LoadReport;
use crate::rotation::{KeyWatch, count_keys, server_instance, slot_holds};
use crate::support::blackhole::Blackhole;
use crate::support::images::{self, REPOSITORY};
use crate::support::{poll_until, run, temp_dir};
use crate::unit_watch::{UnitWatch, holder};

/// Serialises image builds with the support's (the tags are shared machine-wide).
const BUILD_LOCK: &str = "/tmp/sidekick-test-images.lock";

/// Builds the healthy app image of `version` (any semver but the broken 3.0.0) with the
/// walkthrough's context script, pushes it to the fleet's registry and publishes it.
pub async fn publish_any(fleet: &Fleet, version: &str) {
    let image = format!("{REPOSITORY}:{version}");
    {
        let _lock = images::lock_file(BUILD_LOCK);
        let context = temp_dir("image");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/walkthrough/image/context");
        run(Command::new(&script)
            .env("BUSYBOX", "/bin/busybox")
            .arg(context.path())
            .arg(version));
        run(Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "--label", "sidekick-test=1", "-t", &image])
            .arg(context.path()));
    }
    let pushed = images::push(&image, &fleet.registry.address());
    fleet.updates.publish(version, &pushed).await;
}

/// Starts the fleet every fault case runs, updating to `version`: four instances, not three (with
/// one out of rotation by the fault and one swapping, two still serve, so one health check timing
/// out on a loaded machine does not empty Traefik), a 6 s `slot.ttl`, a 2 s grant period, every
/// instance allowed a grant at once ([`allow_concurrent_updates`]); `adjust` changes the rest.
pub async fn start_fault_fleet(
    version: &'static str,
    adjust: impl FnOnce(&mut FleetSpec),
) -> Fleet {
    let mut spec = FleetSpec::new(crate::sidekick_binary());
    spec.updates = true;
    spec.instances = 4;
    spec.versions = vec![version];
    spec.slot_ttl = Duration::from_secs(6);
    spec.grant_period = Duration::from_secs(2);
    adjust(&mut spec);
    let fleet = start_fleet(spec).await;
    allow_concurrent_updates(&fleet, fleet.instances.len() as u32).await;
    fleet
}

/// Starts the fleet and says how long that took (a figure for the report).
pub async fn start_fleet(spec: FleetSpec) -> Fleet {
    let begun = Instant::now();
    let fleet = Fleet::start(spec).await;
    eprintln!("fleet started in {:.1} s", begun.elapsed().as_secs_f64());
    fleet
}

/// Lets the update service grant up to `n` updates per period and have `n` in progress (the
/// fleet starts with 1): with a holder down or cut off, its grant stays in progress on the
/// service (until `update_timeout`, 10 min), and only the etcd slot is then left to keep the
/// others to `slot.max`, which is what these cases test.
pub async fn allow_concurrent_updates(fleet: &Fleet, n: u32) {
    let endpoint = fleet.updates.endpoint();
    let base = endpoint.trim_end_matches("/v1/update/");
    let policy = serde_json::json!({
        "updates_enabled": true,
        "max_updates_per_period": n,
        "period_interval": humantime::format_duration(fleet.spec().grant_period).to_string(),
        "update_timeout": "10m",
    });
    let url = format!(
        "{base}/api/apps/{}/groups/{}/policy",
        crate::update_service::APP_ID,
        crate::update_service::GROUP
    );
    let response = crate::support::http_client()
        .put(&url)
        .header("content-type", "application/json")
        .body(policy.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "PUT {url}: {status} {text}");
}

/// Puts each sidekick's path to each etcd member behind its own cuttable proxy
/// (`[sidekick][member]`): stops it, points its config at its proxies, starts it again, and waits
/// until all are registered again.
pub async fn behind_member_paths(fleet: &mut Fleet) -> Vec<Vec<Blackhole>> {
    let members = fleet.etcd.endpoints();
    let mut paths = Vec::new();
    for i in 0..fleet.instances.len() {
        let mut mine = Vec::new();
        for member in &members {
            mine.push(Blackhole::start(member.trim_start_matches("http://")).await);
        }
        fleet.stop_sidekick(i);
        let config = &fleet.instances[i].config;
        let mut text = std::fs::read_to_string(config).expect("read sidekick config");
        for (member, path) in members.iter().zip(&mine) {
            let quoted = format!("\"{member}\"");
            assert!(
                text.contains(&quoted),
                "no {quoted} in {}",
                config.display()
            );
            text = text.replace(&quoted, &format!("\"{}\"", path.endpoint()));
        }
        std::fs::write(config, text).expect("write sidekick config");
        fleet.start_sidekick(i);
        paths.push(mine);
    }
    fleet
        .wait_registered(fleet.instances.len(), Duration::from_secs(90))
        .await;
    paths
}

/// The most of `stretches` (each from, until; `None`: not over) that overlap at one moment; one
/// ending as another begins does not count as overlapping.
pub fn most_at_once(stretches: impl IntoIterator<Item = (Instant, Option<Instant>)>) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for (from, until) in stretches {
        edges.push((from, 1));
        if let Some(until) = until {
            edges.push((until, -1));
        }
    }
    // An end and a beginning at the same instant: the end first.
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let (mut now, mut most) = (0, 0);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

/// The index of the instance named `name`.
pub fn index_of(fleet: &Fleet, name: &str) -> usize {
    fleet
        .instances
        .iter()
        .position(|i| i.name == name)
        .unwrap_or_else(|| panic!("no instance {name}"))
}

/// Waits for a slot taken after `since` by an instance not in `except`; its name.
pub async fn wait_new_holder(
    fleet: &Fleet,
    slots: &KeyWatch,
    since: Instant,
    except: &[&str],
    timeout: Duration,
) -> String {
    let found = poll_until(timeout, "an instance takes an update slot", || async {
        let holds = slot_holds(slots);
        holds
            .iter()
            .filter(|h| h.from >= since)
            .filter_map(holder)
            .find(|name| !except.contains(&name.as_str()))
            .ok_or("no slot taken")
    })
    .await;
    found.unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)))
}

/// Whether `name` has a Traefik server key now.
pub async fn registered(fleet: &Fleet, name: &str) -> bool {
    let response = fleet
        .client
        .clone()
        .get(
            SERVERS_PREFIX,
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await;
    response.is_ok_and(|r| {
        r.kvs()
            .iter()
            .any(|kv| kv.key_str().ok().and_then(server_instance) == Some(name))
    })
}

/// Waits until every unit runs `version`, every instance is registered, no slot is held and
/// the group is not halted.
pub async fn wait_rolled_to(fleet: &Fleet, version: &str, timeout: Duration) -> Result<(), String> {
    poll_until(timeout, &format!("every unit on {version}"), || async {
        let mut versions = Vec::new();
        for i in 0..fleet.instances.len() {
            versions.push(fleet.unit_version(i).await);
        }
        let registered = count_keys(&fleet.client, SERVERS_PREFIX).await;
        let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
        let halted = count_keys(&fleet.client, HALT_PREFIX).await;
        match versions.iter().all(|v| v == version)
            && registered == versions.len()
            && held == 0
            && halted == 0
        {
            true => Ok(()),
            false => Err(format!(
                "units on {versions:?}, {registered} registered, {held} slots held, \
                 {halted} halt markers"
            )),
        }
    })
    .await
}

/// What a case saw, checked at its end.
pub struct Observed<'a> {
    pub what: String,
    pub units: &'a UnitWatch,
    pub slots: &'a KeyWatch,
    pub report: &'a LoadReport,
    pub started: Instant,
}

impl Observed<'_> {
    /// One line for the report: requests sent and failed, most units down at once, the time.
    pub fn summary(&self) -> String {
        let (most, _) = self.units.most_down_at_once();
        format!(
            "{}: {} requests sent, {} failed, {:.1}/s; at most {most} app unit(s) restarting or \
             not active at once; {} unit starts; {:.0} s",
            self.what,
            self.report.sent(),
            self.report.failed(),
            self.report.achieved_rate(),
            self.units.restarts().len(),
            self.started.elapsed().as_secs_f64()
        )
    }

    /// The invariants: at most `max` (1) units restarting or not active at once, no
    /// restart without a slot held by the restarted instance, no failed request through Traefik
    /// and the rate. Each broken one, described.
    pub fn violations(&self) -> Vec<String> {
        self.violations_within(1)
    }

    /// [`Observed::violations`] with at most `max` units restarting or not active at once.
    pub fn violations_within(&self, max: usize) -> Vec<String> {
        eprintln!("{}", self.summary());
        let mut broken = Vec::new();
        let (most, down) = self.units.most_down_at_once();
        if most > max {
            broken.push(format!(
                "{}: {most} app units restarting or not active at once: {down:?}",
                self.what
            ));
        }
        let holds = slot_holds(self.slots);
        let unslotted = self.units.restarts_without_slot(&holds);
        if !unslotted.is_empty() {
            let names: BTreeSet<&str> = unslotted.iter().map(|r| r.instance.as_str()).collect();
            let holds: Vec<_> = holds
                .iter()
                .map(|h| {
                    (
                        holder(h),
                        h.from - self.started,
                        h.until.map(|u| u - self.started),
                    )
                })
                .collect();
            broken.push(format!(
                "{}: {names:?} restarted without holding a slot ({} restart(s) at {:?} after the \
                 start; slot holds: {holds:?})",
                self.what,
                unslotted.len(),
                unslotted
                    .iter()
                    .map(|r| r.by - self.started)
                    .collect::<Vec<_>>()
            ));
        }
        if self.report.failed() > 0 {
            broken.push(format!(
                "{}: {}",
                self.what,
                self.report.describe_failures(20)
            ));
        }
        if self.report.achieved_rate() < crate::MIN_RATE as f64 {
            broken.push(format!(
                "{}: {:.1} requests/s",
                self.what,
                self.report.achieved_rate()
            ));
        }
        broken
    }

    /// Panics with every broken invariant (see [`Observed::violations`]).
    pub fn check(&self, fleet: &Fleet) {
        self.check_within(fleet, 1);
    }

    /// [`Observed::check`] with at most `max` units restarting or not active at once.
    pub fn check_within(&self, fleet: &Fleet, max: usize) {
        let broken = self.violations_within(max);
        assert!(
            broken.is_empty(),
            "{}\n{}",
            broken.join("\n"),
            fleet.logs(40)
        );
    }
}

/// Keeps the load running a few seconds past the end, so requests Traefik routed on its last
/// configuration are counted too, then stops it.
pub async fn finish_after_traefik_caught_up(load: crate::load::Load) -> LoadReport {
    // Traefik's provider throttle (~2 s) plus margin: a bound on its lag, not a wait for a state.
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.finish().await
}
