//! The halt marker with `sidekick slots resume`, and the `status` and `slots` commands, run as
//! an operator would run them against a populated etcd.

use std::path::Path;
use std::process::{Command, Output};

use etcd_client::Client;
use sidekick::slot::etcd::read_group;
use sidekick::slot::{Acquisition, EtcdSlots, SlotLock};

use super::support::etcd::{self, Etcd};
use super::support::{free_port, prerequisites_met, temp_dir};
use super::{GROUP, TTL, max, one, slots, who};

/// A configuration for `sidekick` pointing at `endpoint`, written under `dir`.
fn config(dir: &Path, endpoint: &str) -> String {
    let path = dir.join("sidekick.toml");
    let text = format!(
        "[instance]\nunit = \"web@1.service\"\n\n[etcd]\nendpoints = [\"{endpoint}\"]\n\
         timeout = \"2s\"\n\n[registration]\nenabled = false\nport = 8080\n\n[health]\ncheck = \"none\"\n\n\
         [update]\nenabled = false\n\n[slot]\ngroup = \"{GROUP}\"\n"
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

pub fn sidekick(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(args)
        .env("SIDEKICK_CONFIG_ROOT", dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("sidekick binary runs")
}

pub fn stdout(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn halt_blocks_acquire_until_slots_resume_removes_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = temp_dir("slots-halt");
    let cfg = config(dir.path(), &etcd.endpoint());
    let failed = slots(&client, one(), "failed");
    let next = slots(&client, one(), "next");

    failed
        .halt("3.0.0", "not healthy within 60s")
        .await
        .unwrap();
    let halted = Acquisition::Halted {
        version: "3.0.0".into(),
        reason: "not healthy within 60s".into(),
    };
    assert_eq!(next.acquire("3.0.0").await.unwrap(), halted);
    assert_eq!(failed.acquire("3.0.0").await.unwrap(), halted);

    let out = stdout(&sidekick(
        dir.path(),
        &["slots", "resume", "--config", &cfg],
    ));
    assert_eq!(
        out.trim(),
        format!(
            "resumed group {GROUP} (was halted at version 3.0.0 by web-failed: not healthy within 60s)"
        )
    );
    assert_eq!(next.acquire("3.0.0").await.unwrap(), Acquisition::Acquired);

    let again = stdout(&sidekick(
        dir.path(),
        &["slots", "resume", "--config", &cfg],
    ));
    assert_eq!(
        again.trim(),
        format!("group {GROUP} is not halted; nothing to resume")
    );
}

/// Two groups with holders and one halt.
async fn populate(client: &Client) -> Vec<EtcdSlots> {
    let web1 = slots(client, max(2), "id-web-1");
    let web2 = slots(client, max(2), "id-web-2");
    let api = EtcdSlots::new(client.clone(), "api/beta", one(), TTL, who("id-api-1"));
    for s in [&web1, &web2, &api] {
        assert_eq!(s.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    }
    api.halt("2.0.0", "rolled back").await.unwrap();
    vec![web1, web2, api]
}

#[tokio::test]
async fn status_shows_registrations_holders_and_halts_as_aligned_tables_and_as_json() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let _held = populate(&client).await;
    // One registration in the configured (seed) layout, and a key under its prefix that is not one.
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let with_lease = etcd_client::PutOptions::new().with_lease(lease);
    let registration = r#"{"host":"10.0.0.5","port":8080}"#;
    client
        .put("/services/web/web-1", registration, Some(with_lease))
        .await
        .unwrap();
    client
        .put("/services/web", "not a registration", None)
        .await
        .unwrap();
    let dir = temp_dir("slots-status");
    let cfg = config(dir.path(), &etcd.endpoint());

    let table = stdout(&sidekick(dir.path(), &["status", "--config", &cfg]));
    let all: Vec<&str> = table.lines().collect();
    // The fleet view's sections come first; no sidekick runs here, so they are empty.
    assert_eq!(
        all[..6],
        ["VERSIONS", "  (none)", "", "INSTANCES", "  (none)", ""],
        "{table}"
    );
    let lines = &all[6..];
    assert_eq!(lines[0], "REGISTRATIONS", "{table}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["SERVICE", "INSTANCE", "HOST", "PORT", "TTL"]
    );
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&cells[..4], ["web", "web-1", "10.0.0.5", "8080"], "{table}");
    assert_eq!(lines[3], "", "{table}");
    assert_eq!(lines[4], "UPDATE SLOTS", "{table}");
    let header = lines[5];
    let rows: Vec<&str> = lines[6..9].to_vec();
    assert!(rows[0].contains("api/beta") && rows[0].contains("web-id-api-1"));
    assert!(rows[1].contains("web/stable") && rows[1].contains("web-id-web-1"));
    assert!(rows[2].contains("web/stable") && rows[2].contains("web-id-web-2"));
    for column in ["INSTANCE", "VERSION", "TTL", "HOLDER"] {
        let at = header.find(column).expect(column);
        for row in &rows {
            assert_eq!(
                &row[at - 2..at],
                "  ",
                "column {column} misaligned:\n{table}"
            );
        }
    }
    assert!(rows[1].contains("2.0.0") && rows[1].contains("id-web-1"));
    let halts = table.split("\nHALTS\n").nth(1).expect("a HALTS section");
    let halt_row = halts.lines().nth(1).unwrap_or_default();
    assert!(
        halt_row.contains("api/beta") && halt_row.contains("rolled back"),
        "{table}"
    );
    // No sidekick runs on this host (under this config root).
    assert!(table.ends_with("\nLOCAL DAEMONS\n  (none)\n"), "{table}");

    let json = stdout(&sidekick(
        dir.path(),
        &["status", "--json", "--config", &cfg],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json parses");
    assert_eq!(
        v["registrations"].as_array().map(Vec::len),
        Some(1),
        "{json}"
    );
    assert_eq!(v["registrations"][0]["host"], "10.0.0.5");
    assert_eq!(v["registrations"][0]["port"], 8080);
    let reg_ttl = v["registrations"][0]["ttl_left"].as_i64().unwrap();
    assert!(
        (1..=30).contains(&reg_ttl),
        "registration ttl_left {reg_ttl}"
    );
    let groups = v["slot_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[1]["group"], "web/stable");
    let holder = &groups[1]["holders"][0];
    assert_eq!(holder["slot"], "0");
    assert_eq!(holder["instance"], "web-id-web-1");
    assert_eq!(holder["version"], "2.0.0");
    assert!(humantime::parse_rfc3339(holder["since"].as_str().unwrap()).is_ok());
    let ttl = holder["ttl_left"].as_i64().unwrap();
    assert!((1..=5).contains(&ttl), "ttl_left {ttl}");
    assert_eq!(v["halts"][0]["group"], "api/beta");
    assert_eq!(v["halts"][0]["reason"], "rolled back");
    assert_eq!(v["halts"][0]["instance"], "web-id-api-1");
}

#[tokio::test]
async fn slots_release_clears_only_the_named_holder() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let _held = populate(&client).await;
    let dir = temp_dir("slots-release");
    let cfg = config(dir.path(), &etcd.endpoint());

    let args = ["slots", "release", "--holder", "id-web-1", "--config", &cfg];
    let out = stdout(&sidekick(dir.path(), &args));
    assert_eq!(
        out.trim(),
        "released /sidekick/slots/web/stable/0 held by id-web-1"
    );
    let left = read_group(&mut client, GROUP).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].holder(), Some("id-web-2"));
    assert_eq!(read_group(&mut client, "api/beta").await.unwrap().len(), 1);

    let again = stdout(&sidekick(dir.path(), &args));
    assert_eq!(
        again.trim(),
        "no slot of group web/stable is held by id-web-1; nothing to release"
    );

    let api = [
        "slots", "release", "--holder", "id-api-1", "--group", "api/beta", "--config", &cfg,
    ];
    stdout(&sidekick(dir.path(), &api));
    assert!(
        read_group(&mut client, "api/beta")
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn status_and_slots_exit_non_zero_when_etcd_is_unreachable() {
    let dir = temp_dir("slots-down");
    let cfg = config(dir.path(), &format!("http://127.0.0.1:{}", free_port()));
    for args in [
        vec!["status", "--config", &cfg],
        vec!["slots", "resume", "--config", &cfg],
        vec!["slots", "release", "--holder", "x", "--config", &cfg],
    ] {
        let out = sidekick(dir.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        // status still shows this host's daemons (none here); slots print nothing.
        let expected = if args[0] == "status" {
            "LOCAL DAEMONS\n  (none)\n"
        } else {
            ""
        };
        assert_eq!(stdout, expected, "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("etcd"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    }
}

#[tokio::test]
async fn slots_set_max_stores_the_limit_and_status_shows_it_without_control_characters() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let dir = temp_dir("slots-set-max");
    let cfg = config(dir.path(), &etcd.endpoint());
    let out = stdout(&sidekick(
        dir.path(),
        &["slots", "set-max", "2", "--config", &cfg],
    ));
    assert!(
        out.contains(&format!("stored limit 2 for group {GROUP}")),
        "{out}"
    );
    let stored = client
        .get("/sidekick/limits/web/stable", None)
        .await
        .unwrap();
    assert_eq!(stored.kvs()[0].value(), b"2");
    let zero = sidekick(dir.path(), &["slots", "set-max", "0", "--config", &cfg]);
    assert_eq!(zero.status.code(), Some(2), "a limit of 0 is refused");

    // A value written by someone else, with a terminal escape in it.
    let hostile =
        r#"{"holder":"x","instance":"web-1\u001b]0;owned\u0007","version":"2.0.0","since":""}"#;
    client
        .put(format!("/sidekick/slots/{GROUP}/0"), hostile, None)
        .await
        .unwrap();
    let table = stdout(&sidekick(dir.path(), &["status", "--config", &cfg]));
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
    assert!(table.contains("web-1\\u{1b}]0;owned\\u{7}"), "{table}");
    assert!(table.contains("SLOT LIMITS (stored)"), "{table}");
    let limits = table
        .lines()
        .skip_while(|l| !l.starts_with("SLOT LIMITS"))
        .nth(2)
        .unwrap_or_default();
    assert_eq!(limits.split_whitespace().collect::<Vec<_>>(), [GROUP, "2"]);
    let json = stdout(&sidekick(
        dir.path(),
        &["status", "--json", "--config", &cfg],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["slot_limits"][0]["group"], GROUP);
    assert_eq!(v["slot_limits"][0]["max"], 2);
}
