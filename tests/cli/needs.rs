//! Commands that read less ask for less: `status` and `slots` validate only etcd and the sections
//! they read, so they run on a host with only an etcd drop-in, or with no configuration at all,
//! and still refuse a bad value in what they do read with exit 2 and its file, line and key.

use std::path::{Path, PathBuf};

use super::sidekick;
use super::support::etcd::{self, Etcd};
use super::support::{Need, prerequisites_met};

/// The endpoint `[etcd]` defaults to.
const DEFAULT_ETCD_PORT: u16 = 2379;

/// Writes `text` as the drop-in `/etc/sidekick/config.d/50-etcd.toml` under `root`.
fn etcd_dropin(root: &Path, text: &str) -> PathBuf {
    let dir = root.join("etc/sidekick/config.d");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("50-etcd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_with_no_configuration_at_all_tries_the_default_etcd_endpoint_not_a_config_error() {
    // The refusal is etcd's only when nothing listens on the default port.
    if !prerequisites_met(&[Need::FreePort(DEFAULT_ETCD_PORT)]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["status"]);
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("etcd at http://127.0.0.1:2379 did not answer"),
        "{stderr}"
    );
    assert!(!stderr.contains("invalid configuration"), "{stderr}");
}

#[tokio::test]
async fn status_and_slots_run_with_only_an_etcd_dropin_no_unit_no_port_no_update_server() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client
        .put(
            "lb/http/services/web/loadbalancer/servers/web-1/url",
            "http://10.0.0.5:8080",
            None,
        )
        .await
        .unwrap();
    // Updates stay enabled (the default) with no server, registration with no port, no unit:
    // the daemon would refuse this, `status` and `slots` read none of it.
    let root = tempfile::tempdir().unwrap();
    etcd_dropin(
        root.path(),
        &format!(
            "[etcd]\nendpoints = [\"{}\"]\n[registration]\nlayout = \"traefik\"\nprefix = \"lb\"\n\
             [update]\napp_id = \"web-app\"\n",
            etcd.endpoint()
        ),
    );
    let out = sidekick(root.path(), &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["registrations"][0]["instance"], "web-1", "{json}");
    assert_eq!(json["registrations"][0]["port"], 8080, "{json}");

    // With no unit, the app id names the default group.
    let out = sidekick(root.path(), &["slots", "set-max", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "stored limit 2 for group web-app/stable (was slot.max of each sidekick)"
    );
    let out = sidekick(root.path(), &["slots", "resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "group web-app/stable is not halted; nothing to resume"
    );
}

#[test]
fn slots_with_nothing_to_name_a_group_asks_for_group_with_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["slots", "resume"]);
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no slot group: pass --group, or set slot.group or update.app_id"),
        "{stderr}"
    );
}

#[test]
fn status_and_slots_refuse_a_bad_value_in_a_section_they_read_with_file_line_and_key() {
    let root = tempfile::tempdir().unwrap();
    let bad_endpoint =
        "[registration]\nlayout = \"seed\"\n[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n";
    let cases: [(&[&str], &str, usize, &str, &str); 4] = [
        (
            &["status"],
            bad_endpoint,
            4,
            "etcd.endpoints",
            "must be an http:// or https:// URL",
        ),
        (
            &["status"],
            "[registration]\nprefix = \"my services\"\n",
            2,
            "registration.prefix",
            "must not contain whitespace",
        ),
        (
            &["slots", "resume", "--group", "web/stable"],
            bad_endpoint,
            4,
            "etcd.endpoints",
            "must be an http:// or https:// URL",
        ),
        (
            &["slots", "resume"],
            "[slot]\nbackend = \"fleetlock\"\ngroup = \"web/stable\"\nfleetlock_url = \"http://127.0.0.1:1/\"\n",
            3,
            "slot.group",
            "is not a FleetLock group",
        ),
    ];
    for (command, text, line, key, why) in cases {
        let path = etcd_dropin(root.path(), text);
        let out = sidekick(root.path(), command);
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        let at = format!("{}:{line}: key `{key}`", path.display());
        assert!(stderr.contains(&at), "{command:?}: want {at:?} in {stderr}");
        assert!(
            stderr.contains(why),
            "{command:?}: want {why:?} in {stderr}"
        );
    }
}

#[test]
fn update_check_with_only_a_unit_asks_the_daemon_without_demanding_a_port_or_server() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["update-check", "--unit", "web@1"]);
    let text = stderr(&out);
    // No daemon answers under the temp root: the refusal is that, not the configuration.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("registration.port"), "{text}");
    assert!(!text.contains("invalid configuration"), "{text}");
    assert!(text.contains("--standalone"), "{text}");
    // A standalone check does need the update service: that is the one thing it names.
    let out = sidekick(
        root.path(),
        &["update-check", "--unit", "web@1", "--standalone"],
    );
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("key `update.server`: required"), "{text}");
    assert!(!text.contains("registration.port"), "{text}");
}

#[test]
fn slots_set_max_zero_says_why_in_sidekicks_words() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(
        root.path(),
        &["slots", "set-max", "0", "--group", "web/stable"],
    );
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("a group's limit is at least 1"), "{text}");
    assert!(text.contains("sidekick rollout pause"), "{text}");
    assert!(!text.contains("non-zero type"), "{text}");
}

#[test]
fn check_config_names_every_error_in_one_run() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("web.toml");
    std::fs::write(
        &file,
        "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\nttl = \"15\"\n\
         [swap]\ndrain = \"soon\"\n",
    )
    .unwrap();
    let config = file.display().to_string();
    let out = sidekick(root.path(), &["check-config", "--config", &config]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("2 errors"), "{text}");
    assert!(
        text.contains(&format!("{config}:5: key `registration.ttl`")),
        "{text}"
    );
    assert!(text.contains("e.g. \"15s\""), "{text}");
    assert!(
        text.contains(&format!("{config}:7: key `swap.drain`")),
        "{text}"
    );
}
