//! The group's rollout policy on one fleet (issue 17), stored with `sidekick rollout set` (stored
//! is authoritative over each sidekick's `[rollout]`), one step after another:
//! 1. a window closed now: no update check reaches the example service and no slot is taken,
//!    while `rollout status` names when the window opens;
//! 2. the window removed and `batch_delay = "10s"`: the rollout starts; `rollout pause` right
//!    after the first slot is taken lets that swap finish and takes no new slot; `rollout resume`
//!    goes on, and every gap between a release and the next slot (from etcd's watch) is ≥ 10 s;
//! 3. the version's state in etcd records each swap with its release and step durations.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;

use super::fleet::{Fleet, FleetSpec, SLOTS_PREFIX};
use super::rotation::{KeyWatch, count_keys, slot_holds};
use super::{needs, sidekick_binary};
use crate::support::{poll_until, prerequisites_met};

const BATCH_DELAY: Duration = Duration::from_secs(10);
/// Two update polls (10 s ± 10 %) with margin.
const HELD_PASS_TIMEOUT: Duration = Duration::from_secs(40);
/// After the paused swap's release: longer than the batch delay, so a slot taken in it would be
/// the pause failing, not the delay holding.
/// Two update intervals and their jitter, with margin.
const CLOSED_WATCH: Duration = Duration::from_secs(23);
const PAUSE_WATCH: Duration = Duration::from_secs(13);
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_window_holds_checks_then_pause_mid_rollout_and_batch_delay_space_the_slots() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = vec!["2.0.0"];
    let fleet = Fleet::start(spec).await;
    let group = group_of(&fleet);
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;

    closed_window_sends_no_check_and_takes_no_slot(&fleet, &group, &slots).await;

    let (set, out) = fleet.cli(&[
        "rollout",
        "set",
        "window=none",
        &format!("batch_delay={}s", BATCH_DELAY.as_secs()),
    ]);
    assert!(set, "rollout set: {out}");
    let first = poll_until(
        HELD_PASS_TIMEOUT + Duration::from_secs(30),
        "a slot taken",
        || async { slot_holds(&slots).into_iter().next().ok_or("none yet") },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(30)));
    let (paused, out) = fleet.cli(&["rollout", "pause"]);
    assert!(paused, "rollout pause: {out}");

    // The swap under way finishes: its slot is given back.
    let released = poll_until(
        Duration::from_secs(60),
        "the first slot released",
        || async {
            let holds = slot_holds(&slots);
            holds[0].until.ok_or("still held")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(30)));
    eprintln!("first slot {} held {:?}", first.key, released - first.from);
    // Another is told why it waits, and no slot is taken meanwhile.
    poll_until(
        Duration::from_secs(45),
        "another held by the pause",
        || async {
            let held = fleet
                .instances
                .iter()
                .enumerate()
                .filter(|(_, instance)| {
                    log_of(&fleet, &instance.name).contains("rollout is paused")
                })
                .count();
            // The example service lets one instance at a time hold a grant
            // (maxConcurrentUpdatesLimitReached), so one other is waiting for a slot.
            match held >= 1 {
                true => Ok(()),
                false => Err(format!("{held} logged the pause")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(30)));
    let watch_until = released + PAUSE_WATCH;
    tokio::time::sleep_until(tokio::time::Instant::from_std(watch_until)).await;
    let holds = slot_holds(&slots);
    assert_eq!(holds.len(), 1, "a slot was taken while paused: {holds:?}");

    let (resumed, out) = fleet.cli(&["rollout", "resume"]);
    assert!(resumed, "rollout resume: {out}");
    let resumed_at = Instant::now();
    every_instance_on(&fleet, "2.0.0").await;

    let holds = slot_holds(&slots);
    assert_eq!(holds.len(), 3, "{holds:?}");
    assert!(holds[1].from >= resumed_at, "{holds:?}");
    for pair in holds.windows(2) {
        let gap = pair[1].from - pair[0].until.expect("released");
        eprintln!("release → next slot: {gap:?}");
        assert!(
            gap >= BATCH_DELAY,
            "gap {gap:?} below batch_delay: {holds:?}"
        );
    }
    history_records_each_swap(&fleet, &group).await;
}

/// The log of the sidekick of `name`, as [`Fleet::logs`] shows it.
fn log_of(fleet: &Fleet, name: &str) -> String {
    let logs = fleet.logs(100_000);
    let head = format!("--- {name} ---\n");
    let start = logs.find(&head).map_or(logs.len(), |i| i + head.len());
    let rest = &logs[start..];
    rest[..rest.find("\n--- ").unwrap_or(rest.len())].to_string()
}

/// The group every instance is in, as `rollout status --json` names it.
fn group_of(fleet: &Fleet) -> String {
    let (ok, out) = fleet.cli(&["rollout", "status", "--json"]);
    assert!(ok, "rollout status: {out}");
    let json: Value = serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("status JSON {out}: {e}"));
    json["group"].as_str().expect("group").to_string()
}

/// The instance records of the group: name → (result, last_check, version).
async fn records(fleet: &Fleet, group: &str) -> Vec<(String, String, String)> {
    let prefix = format!("/sidekick/instances/{group}/");
    let resp = fleet
        .client
        .clone()
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("records");
    resp.kvs()
        .iter()
        .map(|kv| {
            let v: Value = serde_json::from_slice(kv.value()).expect("record JSON");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("result"), s("last_check"), s("version"))
        })
        .collect()
}

/// Update checks the example service answered, all instances together.
async fn service_checks(fleet: &Fleet) -> u64 {
    fleet
        .updates
        .instances()
        .await
        .iter()
        .map(|i| i["update_checks"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until every instance's record says its last pass was held by the rollout.
async fn all_held(fleet: &Fleet, group: &str) {
    poll_until(
        HELD_PASS_TIMEOUT,
        "a held pass on every instance",
        || async {
            let now = records(fleet, group).await;
            match now.len() == fleet.instances.len() && now.iter().all(|r| r.0 == "rollout-hold") {
                true => Ok(()),
                false => Err(format!("records: {now:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(30)));
}

async fn closed_window_sends_no_check_and_takes_no_slot(
    fleet: &Fleet,
    group: &str,
    slots: &KeyWatch,
) {
    // A one-hour window opening two hours from now, in UTC.
    let opens = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(2))
        .expect("time")
        .to_zoned(jiff::tz::TimeZone::UTC);
    let window = format!(
        "window={}/{:02}:{:02}/60",
        sidekick::rollout::policy::day_name(opens.weekday()),
        opens.hour(),
        opens.minute()
    );
    let (set, out) = fleet.cli(&["rollout", "set", &window]);
    assert!(set, "rollout set: {out}");
    all_held(fleet, group).await;
    let checks = service_checks(fleet).await;
    fleet.publish("2.0.0").await;
    // No check is the claim, so it is watched for a while: a held pass comes back after the
    // update interval (10 s), so each instance passes at least twice in it. The record is not
    // written for a pass that changed nothing, so it cannot count them.
    tokio::time::sleep(CLOSED_WATCH).await;
    assert_eq!(service_checks(fleet).await, checks, "a check went out");
    assert!(
        records(fleet, group)
            .await
            .iter()
            .all(|r| r.0 == "rollout-hold"),
        "{:?}",
        records(fleet, group).await
    );
    assert!(slot_holds(slots).is_empty(), "{:?}", slots.events());
    assert_eq!(count_keys(&fleet.client, SLOTS_PREFIX).await, 0);
    let (ok, status) = fleet.cli(&["rollout", "status"]);
    assert!(ok, "{status}");
    let when = format!("next window opens {}", opens.strftime("%Y-%m-%dT%H:%M"));
    assert!(status.contains(&when), "`{when}` not in: {status}");
}

async fn every_instance_on(fleet: &Fleet, version: &str) {
    poll_until(
        ROLLOUT_TIMEOUT,
        &format!("every unit on {version}"),
        || async {
            let mut versions = Vec::new();
            for i in 0..fleet.instances.len() {
                versions.push(fleet.unit_version(i).await);
            }
            let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
            match versions.iter().all(|v| v == version) && held == 0 {
                true => Ok(()),
                false => Err(format!("units on {versions:?}, {held} slots held")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(40)));
}

/// `/sidekick/rollouts/<group>/2.0.0` holds the three swaps, each released with its steps.
async fn history_records_each_swap(fleet: &Fleet, group: &str) {
    let (state, _) =
        sidekick::rollout::store::get_version(&mut fleet.client.clone(), group, "2.0.0")
            .await
            .expect("read the version's state")
            .expect("the version's state exists");
    assert_eq!(state.swaps.len(), 3, "{state:?}");
    for swap in &state.swaps {
        assert!(swap.released.is_some(), "{swap:?}");
        for step in ["drain", "restart", "verify"] {
            assert!(swap.steps_ms.contains_key(step), "{step}: {swap:?}");
        }
        eprintln!(
            "{}: {:?} {:?}",
            swap.instance,
            swap.duration(),
            swap.steps_ms
        );
    }
    let (ok, history) = fleet.cli(&["rollout", "history"]);
    assert!(ok && history.contains("2.0.0"), "{history}");
}

/// Checks of each instance at the example service, by fleet index.
async fn checks_by_instance(fleet: &Fleet) -> Vec<u64> {
    let listed = fleet.updates.instances().await;
    (0..fleet.instances.len())
        .map(|i| {
            let id = fleet.machine_id(i);
            listed
                .iter()
                .find(|l| l["machine_id"].as_str() == Some(id.as_str()))
                .and_then(|l| l["update_checks"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

/// `sidekick rollout status ARGS` on instance 0's configuration: its exit code and output.
fn status(fleet: &Fleet, args: &[&str]) -> (Option<i32>, String) {
    let root = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(&fleet.spec().sidekick)
        .args(["rollout", "status"])
        .args(args)
        .arg("--config")
        .arg(&fleet.instances[0].config)
        .env("SIDEKICK_CONFIG_ROOT", root.path())
        .output()
        .expect("run sidekick");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_canary_with_manual_promotion_holds_the_rest_and_their_grants_until_promote() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = vec!["2.0.0"];
    let fleet = Fleet::start(spec).await;
    let group = group_of(&fleet);
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let (set, out) = fleet.cli(&["rollout", "set", "canary=1", "promote=manual"]);
    assert!(set, "rollout set: {out}");
    fleet.publish("2.0.0").await;

    // The canary swaps and passes (3/1, slot released).
    let canary = poll_until(ROLLOUT_TIMEOUT, "the canary passed", || async {
        let state =
            sidekick::rollout::store::get_version(&mut fleet.client.clone(), &group, "2.0.0")
                .await
                .map_err(|e| e.to_string())?;
        match state.map(|(s, _)| s) {
            Some(s) if s.canaries.len() == 1 && s.canaries[0].passed.is_some() => {
                Ok(s.canaries[0].instance.clone())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs(30)));
    let (code, out) = status(&fleet, &["--wait", "--timeout", "20s"]);
    assert_eq!(code, Some(3), "awaiting promotion: {out}");

    // Meanwhile the others send no check (they would take a grant they cannot use) and take no
    // slot; only the canary runs 2.0.0.
    let before = checks_by_instance(&fleet).await;
    tokio::time::sleep(CLOSED_WATCH).await;
    let after = checks_by_instance(&fleet).await;
    for (i, instance) in fleet.instances.iter().enumerate() {
        let version = fleet.unit_version(i).await;
        if instance.name == canary {
            assert_eq!(version, "2.0.0");
            assert!(after[i] > before[i], "the canary checks as usual");
        } else {
            assert_eq!(version, "1.0.0", "{}", instance.name);
            assert_eq!(
                after[i], before[i],
                "{} checked while waiting",
                instance.name
            );
        }
    }
    assert_eq!(slot_holds(&slots).len(), 1, "{:?}", slot_holds(&slots));

    let (promoted, out) = fleet.cli(&["rollout", "promote"]);
    assert!(promoted, "rollout promote: {out}");
    let (code, out) = status(&fleet, &["--wait", "--timeout", "150s"]);
    assert_eq!(code, Some(0), "after promote: {out}\n{}", fleet.logs(30));
    every_instance_on(&fleet, "2.0.0").await;
    assert_eq!(slot_holds(&slots).len(), 3, "{:?}", slot_holds(&slots));
}
