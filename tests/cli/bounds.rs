//! Every duration key's floor and ceiling, through `check-config` as a user runs it, and the
//! README's configuration table stating each bound.

use std::time::Duration;

use sidekick::config::bounds::{DURATION_BOUNDS, ETCD_MAX_LEASE_TTL};

use super::{assert_rejected, config_with, sidekick};

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[test]
fn check_config_refuses_every_duration_above_its_ceiling_with_exit_2_and_file_line_key() {
    for bounds in DURATION_BOUNDS {
        let value = show(bounds.max + Duration::from_secs(1));
        let (text, line) = config_with(bounds.key, &format!("\"{value}\""));
        let ceiling = format!("must be at most {}", show(bounds.max));
        assert_rejected(&text, line, bounds.key, &ceiling);
    }
}

#[test]
fn check_config_refuses_every_duration_below_its_floor_with_exit_2_and_file_line_key() {
    for bounds in DURATION_BOUNDS.iter().filter(|b| !b.min.is_zero()) {
        let value = show(bounds.min - Duration::from_nanos(1));
        let (text, line) = config_with(bounds.key, &format!("\"{value}\""));
        let floor = format!("must be at least {}", show(bounds.min));
        assert_rejected(&text, line, bounds.key, &floor);
    }
}

#[test]
fn check_config_refuses_health_interval_of_300000000000y_and_of_1ns() {
    let (text, line) = config_with("health.interval", "\"300000000000y\"");
    assert_rejected(&text, line, "health.interval", "must be at most 1h");
    let (text, line) = config_with("health.interval", "\"1ns\"");
    assert_rejected(&text, line, "health.interval", "must be at least 100ms");
    let (text, line) = config_with("etcd.timeout", "\"1ns\"");
    assert_rejected(&text, line, "etcd.timeout", "must be at least 100ms");
}

#[test]
fn check_config_refuses_lease_ttls_etcd_would_not_grant() {
    let above_etcd = show(ETCD_MAX_LEASE_TTL + Duration::from_secs(1));
    for key in ["registration.ttl", "slot.ttl"] {
        let (text, line) = config_with(key, &format!("\"{above_etcd}\""));
        assert_rejected(&text, line, key, "etcd itself refuses lease TTLs");
        let (text, line) = config_with(key, "\"5s 500ms\"");
        assert_rejected(&text, line, key, "whole number of seconds");
    }
}

#[test]
fn check_config_accepts_every_duration_at_its_floor_and_at_its_ceiling() {
    for bounds in DURATION_BOUNDS {
        for value in [bounds.min, bounds.max] {
            let (text, _) = config_with(bounds.key, &format!("\"{}\"", show(value)));
            let root = tempfile::tempdir().unwrap();
            let file = root.path().join("edge.toml");
            std::fs::write(&file, &text).unwrap();
            let out = sidekick(
                root.path(),
                &["check-config", "--config", file.to_str().unwrap()],
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{} = {}: {}",
                bounds.key,
                show(value),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn readme_configuration_table_states_each_duration_bound() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for bounds in DURATION_BOUNDS {
        let row = readme
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`{}`", bounds.key)))
            .unwrap_or_else(|| panic!("no README row for {}", bounds.key));
        let stated = format!("`{}` … `{}`", show(bounds.min), show(bounds.max));
        assert!(
            row.contains(&stated),
            "{}: want {stated:?} in {row}",
            bounds.key
        );
    }
}
