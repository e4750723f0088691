//! The rollout policy and state against a real etcd: the store's compare-and-swap, bounds and
//! refusals of malformed values, and the `sidekick rollout` commands as an operator or a
//! pipeline runs them (including `status --wait` and its exit codes, driven by etcd's watch).

mod support;

#[path = "rollout_policy/agent.rs"]
mod agent_tests;
#[path = "rollout_policy/budget.rs"]
mod budget_tests;
#[path = "rollout_policy/live.rs"]
mod live_tests;
#[path = "rollout_policy/lost.rs"]
mod lost_tests;
#[path = "rollout_policy/metrics.rs"]
mod metrics_tests;
#[path = "rollout_policy/monitor.rs"]
mod monitor_tests;
#[path = "rollout_policy/store.rs"]
mod store_tests;
#[path = "rollout_policy/waiter.rs"]
mod waiter;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use etcd_client::Client;
use jiff::Timestamp;
use sidekick::registry::record::{InstanceRecord, key as record_key};
use sidekick::rollout::state::VersionState;
use sidekick::rollout::store;
use sidekick::slot::halt::{self, HaltMarker};
use support::etcd::{self, Etcd};
use support::{prerequisites_met, temp_dir};
use waiter::Waiter;

const GROUP: &str = "web/stable";

/// A configuration naming the group and etcd at `endpoint`, with `extra` appended.
fn config(dir: &Path, endpoint: &str, extra: &str) -> String {
    let path = dir.join("sidekick.toml");
    let text = format!(
        "[instance]\nunit = \"web@1.service\"\n\n[etcd]\nendpoints = [\"{endpoint}\"]\n\
         timeout = \"2s\"\n\n[registration]\nenabled = false\nport = 8080\n\n[health]\n\
         check = \"none\"\n\n[update]\nenabled = false\n\n[slot]\ngroup = \"{GROUP}\"\n{extra}"
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn command(dir: &Path, cfg: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekick"));
    cmd.arg("rollout")
        .args(args)
        .args(["--config", cfg])
        .env("SIDEKICK_CONFIG_ROOT", dir)
        .env("USER", "ops")
        .env_remove("RUST_LOG");
    cmd
}

fn rollout(dir: &Path, cfg: &str, args: &[&str]) -> Output {
    command(dir, cfg, args).output().expect("sidekick runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn put_state(client: &mut Client, state: &VersionState) {
    client
        .put(
            store::version_key(GROUP, &state.version),
            state.encode(),
            None,
        )
        .await
        .expect("put state");
}

async fn put_instance(client: &mut Client, name: &str, version: &str) {
    put_record(client, name, version, None).await;
}

async fn put_record(client: &mut Client, name: &str, version: &str, policy: Option<String>) {
    let record = InstanceRecord {
        version: version.into(),
        phase: "serving".into(),
        since: Timestamp::now().to_string(),
        last_check: None,
        result: None,
        host: "127.0.0.1".into(),
        target: None,
        step: None,
        policy,
    };
    let value = serde_json::to_string(&record).expect("json");
    client
        .put(record_key(GROUP, name), value, None)
        .await
        .expect("put record");
}

async fn start() -> Option<(Etcd, Client)> {
    if !prerequisites_met(etcd::NEEDS) {
        return None;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    Some((etcd, client))
}

#[tokio::test]
async fn set_stores_a_policy_over_the_configured_one_and_clear_removes_it() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-set");
    let cfg = config(
        dir.path(),
        &etcd.endpoint(),
        "\n[rollout]\nmin_healthy = \"25s\"\n",
    );
    let out = ok(rollout(
        dir.path(),
        &cfg,
        &[
            "set",
            "canary=1",
            "promote=manual",
            "window=Mon,Tue/02:00/120",
        ],
    ));
    assert!(out.contains("over each sidekick's [rollout]"), "{out}");
    let snap = store::read_group(&mut client, GROUP).await.expect("read");
    let stored = snap.stored_policy.expect("stored");
    assert_eq!(stored.canary, 1);
    assert_eq!(
        stored.min_healthy,
        Duration::from_secs(25),
        "based on the configured policy"
    );
    assert_eq!(stored.windows.len(), 1);
    // A second set starts from the stored policy.
    let out = ok(rollout(dir.path(), &cfg, &["set", "max_failures=2"]));
    assert!(out.contains("replacing the stored one"), "{out}");
    let stored = store::read_group(&mut client, GROUP)
        .await
        .expect("read")
        .stored_policy
        .expect("stored");
    assert_eq!((stored.canary, stored.max_failures.get()), (1, 2));
    // Bad edits are a bad configuration (exit 2) and store nothing.
    for bad in ["speed=1", "canary=5000", "window=Mon", "promote"] {
        let out = rollout(dir.path(), &cfg, &["set", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
    }
    let out = ok(rollout(dir.path(), &cfg, &["set", "--clear"]));
    assert!(out.contains("removed the stored rollout policy"), "{out}");
    assert!(
        store::read_group(&mut client, GROUP)
            .await
            .expect("read")
            .stored_policy
            .is_none()
    );
    let out = ok(rollout(dir.path(), &cfg, &["set", "--clear"]));
    assert!(out.contains("nothing to remove"), "{out}");
}

#[tokio::test]
async fn pause_holds_and_resume_lifts_the_pause_and_a_halt() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-pause");
    let cfg = config(dir.path(), &etcd.endpoint(), "");
    let out = ok(rollout(dir.path(), &cfg, &["pause"]));
    assert!(out.contains("group web/stable is paused (by ops"), "{out}");
    put_state(&mut client, &VersionState::new("2.0.0", Timestamp::now())).await;
    let status: serde_json::Value =
        serde_json::from_str(&ok(rollout(dir.path(), &cfg, &["status", "--json"]))).expect("json");
    assert_eq!(status["stage"], "paused", "{status}");
    assert_eq!(status["paused"]["by"], "ops");
    let marker = HaltMarker {
        version: "2.0.0".into(),
        reason: "not healthy within 60s".into(),
        instance: "web-1".into(),
        since: Timestamp::now().to_string(),
    };
    assert!(halt::put(&mut client, GROUP, &marker).await.expect("halt"));
    let out = ok(rollout(dir.path(), &cfg, &["resume"]));
    assert!(
        out.contains(
            "lifted the pause by ops and the halt at version 2.0.0 by web-1: not healthy within 60s"
        ),
        "{out}"
    );
    let snap = store::read_group(&mut client, GROUP).await.expect("read");
    assert!(snap.paused.is_none() && snap.halt.is_none());
    let out = ok(rollout(dir.path(), &cfg, &["resume"]));
    assert!(out.contains("neither paused nor halted"), "{out}");
}

#[tokio::test]
async fn promote_marks_the_newest_version_and_history_shows_it() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-promote");
    let cfg = config(dir.path(), &etcd.endpoint(), "");
    let out = rollout(dir.path(), &cfg, &["promote"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no rollout is recorded in group web/stable: name the version to promote")
            && err.contains("`sidekick rollout promote --group web/stable VERSION`"),
        "{err}"
    );
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
    put_state(&mut client, &VersionState::new("1.0.0", t0)).await;
    let mut new = VersionState::new("2.0.0", t0 + jiff::SignedDuration::from_secs(60));
    new.add_canary("web-1", None, t0);
    new.canary_result("web-1", true, t0);
    put_state(&mut client, &new).await;
    let out = ok(rollout(dir.path(), &cfg, &["promote"]));
    assert!(
        out.contains("version 2.0.0 of group web/stable is promoted (by ops"),
        "{out}"
    );
    let (state, _) = store::get_version(&mut client, GROUP, "2.0.0")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(state.promoted.expect("promoted").by, "ops");
    let out = ok(rollout(dir.path(), &cfg, &["history"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("2.0.0  started")
            && lines[0].contains("canaries 1/1 passed")
            && lines[0].contains("promoted"),
        "{out}"
    );
    assert!(lines[1].starts_with("1.0.0  started"), "{out}");
    // A version nobody started is recorded with its promotion; with no instance on it or
    // waiting for it the output says so, naming the key that removes a mistyped one.
    let out = ok(rollout(dir.path(), &cfg, &["promote", "9.9.9"]));
    assert!(
        out.contains("its rollout was not recorded before, it is now")
            && out.contains("no instance of the group runs or waits for 9.9.9 yet")
            && out.contains("etcdctl del /sidekick/rollouts/web/stable/9.9.9"),
        "{out}"
    );
    // Not a version: a bad argument, refused before etcd.
    let out = rollout(dir.path(), &cfg, &["promote", "9.9/9"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`9.9/9` is not a version"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn status_wait_exits_3_awaiting_promotion_then_0_when_every_instance_serves_it() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-wait");
    let cfg = config(
        dir.path(),
        &etcd.endpoint(),
        "\n[rollout]\ncanary = 1\npromote = \"manual\"\n",
    );
    let t0 = Timestamp::now();
    let mut state = VersionState::new("2.0.0", t0);
    state.add_canary("web-1", None, t0);
    state.canary_result("web-1", true, t0);
    put_state(&mut client, &state).await;
    put_instance(&mut client, "web-1", "2.0.0").await;
    put_instance(&mut client, "web-2", "1.0.0").await;
    let out = rollout(dir.path(), &cfg, &["status", "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("awaiting promotion (`sidekick rollout promote`); 1 of 2 instances serve it"),
        "{}",
        text(&out)
    );

    ok(rollout(dir.path(), &cfg, &["promote"]));
    let started = Instant::now();
    let mut waiter = Waiter::spawn(command(
        dir.path(),
        &cfg,
        &["status", "--wait", "--timeout", "30s"],
    ));
    // The first line is printed once the waiter has read etcd; its watch goes on from there.
    let first = waiter.first_line();
    assert!(first.contains("2.0.0: rolling; 1 of 2"), "{first}");
    put_instance(&mut client, "web-2", "2.0.0").await;
    let out = waiter.finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the watch, not the timeout, ended it"
    );
    assert!(out.stdout.contains("done; 2 of 2"), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

/// `--wait` is not done while a swap is under way: an instance on the version that is still in
/// its swap (min-healthy) does not serve it yet, and a held slot counts one instance more than
/// those serving, since the holder's record can be briefly absent (rollout_bench saw `--wait`
/// exit 0 with 2 of 2 while the third instance had just taken its slot).
#[tokio::test]
async fn status_wait_is_not_done_while_a_slot_is_held_or_an_instance_is_still_in_its_swap() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-wait-held");
    let cfg = config(dir.path(), &etcd.endpoint(), "");
    put_state(&mut client, &VersionState::new("2.0.0", Timestamp::now())).await;
    put_instance(&mut client, "web-1", "2.0.0").await;
    put_instance(&mut client, "web-2", "2.0.0").await;
    // web-3 took its slot and is between leases: no record.
    let slot = sidekick::slot::etcd::slot_key(GROUP, 0);
    client
        .put(slot.as_str(), r#"{"holder":"id-web-3"}"#, None)
        .await
        .expect("put slot");
    let out = rollout(dir.path(), &cfg, &["status", "--wait", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rolling; 2 of 3 instances serve it"),
        "{}",
        text(&out)
    );
    // Its record back, restarted on 2.0.0 and in min-healthy, the slot still held.
    let mut record = serde_json::json!({
        "version": "2.0.0", "phase": "updating", "since": Timestamp::now().to_string(),
        "last_check": null, "result": null, "host": "127.0.0.1", "target": "2.0.0",
        "step": "min-healthy"
    });
    client
        .put(record_key(GROUP, "web-3"), record.to_string(), None)
        .await
        .expect("put record");
    let mut waiter = Waiter::spawn(command(
        dir.path(),
        &cfg,
        &["status", "--wait", "--timeout", "30s"],
    ));
    let first = waiter.first_line();
    assert!(first.contains("rolling; 2 of 3"), "{first}");
    // Released: the slot goes, then the record says serving.
    client
        .delete(slot.as_str(), None)
        .await
        .expect("delete slot");
    record["phase"] = "serving".into();
    record["target"] = serde_json::Value::Null;
    record["step"] = serde_json::Value::Null;
    client
        .put(record_key(GROUP, "web-3"), record.to_string(), None)
        .await
        .expect("put record");
    let out = waiter.finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("done; 3 of 3"), "{out:?}");
}

#[tokio::test]
async fn status_wait_exits_1_on_a_halt_and_4_on_the_timeout() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-wait-halt");
    let cfg = config(dir.path(), &etcd.endpoint(), "");
    put_state(&mut client, &VersionState::new("2.0.0", Timestamp::now())).await;
    put_instance(&mut client, "web-1", "1.0.0").await;
    let started = Instant::now();
    let out = rollout(dir.path(), &cfg, &["status", "--wait", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_secs(1));

    let mut waiter = Waiter::spawn(command(dir.path(), &cfg, &["status", "--wait", "--json"]));
    let first: serde_json::Value = serde_json::from_str(&waiter.first_line()).expect("json");
    assert_eq!(first["stage"], "rolling", "{first}");
    let marker = HaltMarker {
        version: "2.0.0".into(),
        reason: "left active during min_healthy".into(),
        instance: "web-1".into(),
        since: Timestamp::now().to_string(),
    };
    halt::put(&mut client, GROUP, &marker).await.expect("halt");
    let out = waiter.finish();
    assert_eq!(out.code, Some(1), "{out:?}");
    let last: serde_json::Value =
        serde_json::from_str(out.stdout.lines().last().expect("a line")).expect("json");
    assert_eq!(last["stage"], "halted", "{last}");
    assert_eq!(last["halt"]["reason"], "left active during min_healthy");
}

#[tokio::test]
async fn status_names_the_next_window_and_no_group_is_a_bad_configuration() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-window");
    // A one-minute window a day before now (UTC): closed now, opens within the day.
    let now = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let yesterday = now.yesterday().expect("yesterday");
    let day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [yesterday.weekday().to_monday_zero_offset() as usize];
    let start = format!("{:02}:{:02}", yesterday.hour(), yesterday.minute());
    let extra = format!(
        "\n[[rollout.window]]\ndays = [\"{day}\"]\nstart_time = \"{start}\"\nlength_minutes = 1\n"
    );
    let cfg = config(dir.path(), &etcd.endpoint(), &extra);
    put_state(&mut client, &VersionState::new("2.0.0", Timestamp::now())).await;
    let out = ok(rollout(dir.path(), &cfg, &["status"]));
    assert!(out.contains("next window opens 20"), "{out}");
    assert!(out.contains("waiting for a window that opens 20"), "{out}");
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.endpoint()),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["rollout", "status", "--config", &bare.display().to_string()])
        .env("SIDEKICK_CONFIG_ROOT", dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn status_warns_while_the_instances_enforce_different_policies_and_none_is_stored() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let dir = temp_dir("rollout-hash");
    let cfg = config(dir.path(), &etcd.endpoint(), "");
    let default = sidekick::rollout::RolloutPolicy::default();
    let canary = sidekick::rollout::PolicyText {
        canary: 1,
        ..Default::default()
    }
    .validate()
    .expect("valid");
    assert_ne!(default.short_hash(), canary.short_hash());
    assert_eq!(default.short_hash().len(), 8);
    put_record(&mut client, "web-1", "1.0.0", Some(default.short_hash())).await;
    put_record(&mut client, "web-2", "1.0.0", Some(default.short_hash())).await;
    let agreeing = ok(rollout(dir.path(), &cfg, &["status"]));
    assert!(!agreeing.contains("WARNING"), "{agreeing}");
    put_record(&mut client, "web-3", "1.0.0", Some(canary.short_hash())).await;
    let warned = ok(rollout(dir.path(), &cfg, &["status"]));
    let expected = format!(
        "WARNING: the instances enforce different [rollout] policies ({} on web-1, web-2; {} on web-3)",
        default.short_hash(),
        canary.short_hash()
    );
    let (first, second) = (default.short_hash(), canary.short_hash());
    let ordered = if first < second {
        expected
    } else {
        format!(
            "WARNING: the instances enforce different [rollout] policies ({second} on web-3; {first} on web-1, web-2)"
        )
    };
    assert!(warned.contains(&ordered), "{warned}");
    let json = ok(rollout(dir.path(), &cfg, &["status", "--json"]));
    assert!(json.contains("policy_warning"), "{json}");
    // A stored policy is the one all enforce: no warning.
    ok(rollout(dir.path(), &cfg, &["set", "canary=1"]));
    let stored = ok(rollout(dir.path(), &cfg, &["status"]));
    assert!(!stored.contains("WARNING"), "{stored}");
}
