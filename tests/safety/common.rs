//! Steps the safety cases share: app versions beyond the four the support builds, finding the
//! slot holder, waiting for a rollout to end, the checks every case makes at its end, and what
//! the cases of a version that dies after its verification watch and check.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fleet::{FIRST_VERSION, Fleet, FleetSpec, HALT_PREFIX, SERVERS_PREFIX, SLOTS_PREFIX};
use crate::load::{Load, LoadReport};
use crate::rotation::{KeyEvent, KeyWatch, count_keys, server_instance, slot_holds};
use crate::support::images::{self, REPOSITORY};
use crate::support::{poll_until, run, temp_dir};
use crate::unit_watch::{UnitWatch, holder};
use crate::update_service::{APP_ID, TRACK};

/// From the unit leaving `active` to its server key gone: the D-Bus signal (or `fall = 2` probes
/// 250 ms apart), with margin for a loaded machine.
const DEREGISTER_BOUND: Duration = Duration::from_secs(3);
/// Traefik's provider throttle (~2 s) plus margin: how long it may still route to a key gone.
const TRAEFIK_LAG: Duration = Duration::from_secs(4);

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

/// What a case of a dying version (`late_failure.rs`, `monitor_failure.rs`) watches from before
/// its version can be swapped to.
pub struct Watches {
    pub started: Instant,
    /// When the load started: its `sent_at` counts from about then (a little later).
    pub load_started: Instant,
    pub slots: KeyWatch,
    pub servers: KeyWatch,
    pub units: UnitWatch,
}

/// When the instance a version died on registered on it, left `active` and was deregistered.
pub struct Departure {
    pub registered: Instant,
    pub died: Instant,
    pub deregistered: Instant,
}

impl Watches {
    /// Starts the watches, then the load through Traefik (returned beside them).
    pub async fn start(fleet: &Fleet) -> (Watches, Load) {
        let started = Instant::now();
        let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
        let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
        let units = UnitWatch::start(fleet).await;
        let load_started = Instant::now();
        let load = fleet.load(crate::RATE, Duration::from_secs(300));
        let watches = Watches {
            started,
            load_started,
            slots,
            servers,
            units,
        };
        (watches, load)
    }

    /// Exactly one instance ever ran `version`: the others never restarted, and every unit,
    /// instance `i`'s too, is back on (or still on) the first version.
    pub async fn assert_only_one_ran(&self, fleet: &Fleet, i: usize, version: &str, what: &str) {
        let holder = &fleet.instances[i].name;
        for other in (0..fleet.instances.len()).filter(|&o| o != i) {
            let name = &fleet.instances[other].name;
            let restarts = self.units.restarts_of(name, self.started, Instant::now());
            assert!(
                restarts.is_empty(),
                "{what}: {name} restarted {} time(s) though only {holder} may run {version}\n{}",
                restarts.len(),
                fleet.logs(40)
            );
            assert_eq!(fleet.unit_version(other).await, FIRST_VERSION, "{what}");
        }
        assert_eq!(fleet.unit_version(i).await, FIRST_VERSION, "{what}");
    }

    /// Instance `i`, registered again after its slot taken at `swapped`, was deregistered within
    /// [`DEREGISTER_BOUND`] of its unit leaving `active` (the first sample after that
    /// registration and after `died_after` where it is not), and no request failed later than
    /// Traefik's lag after that deregistration.
    pub fn assert_deregistered_when_it_died(
        &self,
        fleet: &Fleet,
        report: &LoadReport,
        i: usize,
        swapped: Instant,
        died_after: Instant,
        what: &str,
    ) -> Departure {
        let holder = &fleet.instances[i].name;
        let of_holder = |e: &&KeyEvent| server_instance(&e.key) == Some(holder.as_str());
        let events = self.servers.events();
        let registered = events
            .iter()
            .filter(of_holder)
            .find(|e| e.put && e.at > swapped)
            .unwrap_or_else(|| panic!("{what}: {holder} never registered after its swap"))
            .at;
        let deregistered = events
            .iter()
            .filter(of_holder)
            .find(|e| !e.put && e.at > registered)
            .unwrap_or_else(|| panic!("{what}: {holder} was not deregistered after it died"))
            .at;
        let died = self
            .units
            .samples()
            .into_iter()
            .find(|s| s.at > registered.max(died_after) && s.units[i].active != "active")
            .unwrap_or_else(|| panic!("{what}: {holder}'s unit never left active"))
            .at;
        assert!(
            deregistered <= died + DEREGISTER_BOUND,
            "{what}: {holder} left active at +{:?} but was deregistered only at +{:?}\n{}",
            died - self.started,
            deregistered - self.started,
            fleet.logs(40)
        );
        let latest_failure_allowed = (deregistered + TRAEFIK_LAG) - self.load_started;
        let late: Vec<_> = report
            .failures()
            .into_iter()
            .filter(|s| s.sent_at > latest_failure_allowed)
            .map(|s| (s.sent_at, s.outcome.clone()))
            .collect();
        assert!(
            late.is_empty(),
            "{what}: requests failed after {holder} was deregistered (+{:?}) and Traefik caught \
             up: {late:?}",
            deregistered - self.started
        );
        Departure {
            registered,
            died,
            deregistered,
        }
    }

    /// The invariants of every safety case but the requests (a dying instance fails some): no
    /// more than one unit down at once, no restart without a slot.
    pub fn assert_one_down_and_no_unslotted_restart(&self, fleet: &Fleet, what: &str) {
        let (most, down) = self.units.most_down_at_once();
        assert!(most <= 1, "{what}: {most} units down at once: {down:?}");
        let unslotted = self.units.restarts_without_slot(&slot_holds(&self.slots));
        assert!(
            unslotted.is_empty(),
            "{what}: restarts without a slot: {unslotted:?}\n{}",
            fleet.logs(40)
        );
    }
}

/// Waits until the group is halted and instance `i` is back on the first version, registered,
/// with no slot held.
pub async fn wait_halted_and_back(
    fleet: &Fleet,
    i: usize,
    timeout: Duration,
) -> Result<(), String> {
    let holder = &fleet.instances[i].name;
    poll_until(timeout, "halted, and the holder back", || async {
        let halts = count_keys(&fleet.client, HALT_PREFIX).await;
        let now = fleet.unit_version(i).await;
        let is_registered = registered(fleet, holder).await;
        let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
        match halts > 0 && now == FIRST_VERSION && is_registered && held == 0 {
            true => Ok(()),
            false => Err(format!(
                "{halts} halt markers; {holder} on {now}, registered: {is_registered}; \
                 {held} slots held"
            )),
        }
    })
    .await
}

/// The update service's 3/x events of instance `i` as (3, result, errorcode); `None` while the
/// service does not list the instance.
pub async fn update_ends(fleet: &Fleet, i: usize) -> Option<Vec<(i64, i64, Option<i64>)>> {
    let id = fleet.machine_id(i);
    let rows = fleet.updates.instances().await;
    let row = rows
        .iter()
        .find(|row: &&Value| row["machine_id"].as_str() == Some(id.as_str()))?;
    let events = row["last_events"].as_array().cloned().unwrap_or_default();
    let ends = events
        .iter()
        .filter(|e| e["event_type"].as_i64() == Some(3))
        .map(|e| {
            let n = |k: &str| e[k].as_i64();
            (3, n("event_result").unwrap_or(-1), n("error_code"))
        })
        .collect();
    Some(ends)
}

/// `version`'s rollout state records a failure of instance `i` in `stage`.
pub async fn assert_failure_recorded(
    fleet: &Fleet,
    i: usize,
    version: &str,
    stage: &str,
    what: &str,
) {
    let holder = &fleet.instances[i].name;
    let group = format!("{APP_ID}/{TRACK}");
    let snapshot = sidekick::rollout::store::read_group(&mut fleet.client.clone(), &group)
        .await
        .unwrap_or_else(|e| panic!("{what}: read the rollout of {group}: {e}"));
    let state = snapshot
        .versions
        .iter()
        .find(|v| v.version == version)
        .unwrap_or_else(|| panic!("{what}: no rollout state for {version}"));
    assert!(
        state
            .failures
            .iter()
            .any(|f| &f.instance == holder && f.stage == stage),
        "{what}: failures recorded: {:?}",
        state.failures
    );
}
