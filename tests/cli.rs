//! The `sidekick` binary's configuration commands, run as a user would run them.

use std::path::Path;
use std::process::{Command, Output};

fn sidekick(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(args)
        .env("SIDEKICK_CONFIG_ROOT", root)
        .env_remove("RUST_LOG")
        .output()
        .expect("sidekick binary runs")
}

fn example_config() -> String {
    format!("{}/examples/config/web.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn version_flag_prints_the_crate_version() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sidekick {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_says_what_this_version_does_status_shows_registrations_and_no_rolling_update_is_claimed() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Show registrations, update slot holders and halted groups"),
        "{help}"
    );
    assert!(!help.to_lowercase().contains("rolls"), "{help}");
    assert!(!help.to_lowercase().contains("without downtime"), "{help}");
}

#[test]
fn check_config_prints_effective_settings_with_their_sources() {
    let root = tempfile::tempdir().unwrap();
    let config = example_config();
    let out = sidekick(root.path(), &["check-config", "--config", &config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("# read {config}")), "{stdout}");
    assert!(
        stdout.contains(&format!("layout = \"traefik\"  # from {config}:12")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("port = 8081  # from {config}:13")),
        "{stdout}"
    );
    assert!(
        stdout.contains("name = \"example-web-1\"  # derived"),
        "{stdout}"
    );
    // Values left at their defaults carry no source.
    assert!(stdout.contains("drain = \"5s\"\n"), "{stdout}");
    // The output is itself valid TOML a user can start from.
    let table: toml::Table = toml::from_str(&stdout).expect("output parses as TOML");
    assert_eq!(
        table["instance"]["unit"].as_str(),
        Some("example-web@1.service")
    );
}

#[test]
fn check_config_reads_dropins_under_the_config_root_and_flags_win() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/sidekick/config.d");
    std::fs::create_dir_all(&dir).unwrap();
    let dropin = dir.join("10-web.toml");
    std::fs::write(&dropin, "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 9000\n[update]\nenabled = false\n").unwrap();
    let out = sidekick(root.path(), &["check-config", "--unit", "web@2.service"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("port = 9000  # from {}:4", dropin.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("unit = \"web@2.service\"  # from flag --unit"),
        "{stdout}"
    );
}

fn assert_rejected(text: &str, line: usize, key: &str, detail: &str) {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("bad.toml");
    std::fs::write(&file, text).unwrap();
    let out = sidekick(
        root.path(),
        &["check-config", "--config", file.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing is printed on stdout for a bad config"
    );
    let expected = format!("{}:{line}: key `{key}`", file.display());
    assert!(stderr.contains(&expected), "want {expected:?} in {stderr}");
    assert!(stderr.contains(detail), "want {detail:?} in {stderr}");
}

#[test]
fn check_config_rejects_an_unknown_key_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[health]\nchek = \"tcp\"\n",
        4,
        "health.chek",
        "unknown field",
    );
}

#[test]
fn check_config_rejects_a_wrong_type_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[slot]\nmax = \"two\"\n",
        4,
        "slot.max",
        "invalid type",
    );
}

#[test]
fn check_config_rejects_a_bad_duration_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[registration]\nttl = \"thirty\"\n",
        4,
        "registration.ttl",
        "thirty",
    );
}

#[test]
fn check_config_rejects_an_invalid_value_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[registration]\nport = 80\n[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
        6,
        "etcd.endpoints",
        "must be an http:// or https:// URL",
    );
}
