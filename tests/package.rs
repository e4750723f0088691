//! The Debian package's description (`[package.metadata.deb]` in Cargo.toml, `packaging/`) stays in
//! step with the repository: every file it ships exists, every unit in `units/` is shipped, and the
//! maintainer scripts are valid `sh`. Building and installing the package is
//! `scripts/package-install-test` (a release check: it builds the release binary twice).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(source, destination)` of each asset in `[package.metadata.deb]`.
fn assets() -> Vec<(String, String)> {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    assets
        .iter()
        .map(|asset| {
            let fields = asset
                .as_array()
                .expect("an asset is [source, destination, mode]");
            let text = |i: usize| fields[i].as_str().unwrap().to_string();
            (text(0), text(1))
        })
        .collect()
}

/// Files of the repository that `pattern` (a path, or `dir/*.ext`) names.
fn matches(pattern: &str) -> Vec<PathBuf> {
    let path = repo().join(pattern);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    match name.split_once('*') {
        None => path.exists().then_some(path.clone()).into_iter().collect(),
        Some((prefix, suffix)) => std::fs::read_dir(path.parent().unwrap())
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .filter(|p| {
                        let n = p.file_name().unwrap().to_string_lossy();
                        n.starts_with(prefix) && n.ends_with(suffix)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[test]
fn every_file_the_package_ships_from_the_repository_exists() {
    let mut missing = Vec::new();
    for (source, _) in assets() {
        // Built by cargo, or written by scripts/package before `cargo deb` runs.
        if source.starts_with("target/") {
            continue;
        }
        if matches(&source).is_empty() {
            missing.push(source);
        }
    }
    assert!(
        missing.is_empty(),
        "assets not in the repository: {missing:?}"
    );
}

#[test]
fn every_unit_and_rule_in_units_is_shipped() {
    let shipped: Vec<PathBuf> = assets()
        .iter()
        .flat_map(|(source, _)| matches(source))
        .collect();
    for entry in std::fs::read_dir(repo().join("units")).unwrap() {
        let unit = entry.unwrap().path();
        assert!(
            shipped.contains(&unit),
            "{} is not in the package's assets",
            unit.display()
        );
    }
    let destination = |file: &str| {
        assets()
            .into_iter()
            .find(|(source, _)| source == file)
            .map(|(_, destination)| destination)
    };
    // The non-root mode's templates are root's: where systemd finds them, from the package.
    for unit in [
        "units/sidekick@.service",
        "units/sidekick-prepull@.service",
        "units/sidekick-version@.service",
    ] {
        assert_eq!(
            destination(unit).as_deref(),
            Some("usr/lib/systemd/system/"),
            "{unit}"
        );
    }
    assert_eq!(
        destination("units/50-sidekick.rules").as_deref(),
        Some("usr/share/polkit-1/rules.d/")
    );
}

#[test]
fn the_maintainer_scripts_are_valid_sh() {
    let dir = repo().join("packaging/debian");
    let mut scripts = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let script = entry.unwrap().path();
        check_sh(&script);
        scripts += 1;
    }
    assert_eq!(
        scripts,
        3,
        "postinst, prerm and postrm in {}",
        dir.display()
    );
}

fn check_sh(script: &Path) {
    let text = std::fs::read_to_string(script).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"), "{}", script.display());
    assert!(
        text.contains("\nset -e\n"),
        "{} does not set -e",
        script.display()
    );
    let out = Command::new("sh").arg("-n").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "sh -n {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
