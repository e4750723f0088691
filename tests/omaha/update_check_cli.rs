//! `sidekick update-check --standalone` as a user runs it with no daemon for the instance: the
//! binary against the example update service over HTTP, and reading the current version from a
//! unit over D-Bus in the systemd container. (With a daemon: `daemon_check.rs`.)

use super::example_service::{LocalService, relaxed_policy};
use super::support::{self, images, prerequisites_met, systemd::Systemd};
use super::*;

struct CheckRun {
    code: Option<i32>,
    json: serde_json::Value,
    stderr: String,
}

pub(crate) fn config_for(dir: &std::path::Path, server: &LocalService, app: &str) -> PathBuf {
    let path = dir.join("sidekick.toml");
    let text = format!(
        "[registration]\nport = 8080\n[update]\nserver = \"{}\"\napp_id = \"{app}\"\nimage = \"{{codebase}}\"\n",
        server.endpoint()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn update_check(
    config: &std::path::Path,
    unit: &str,
    extra: &[&str],
    bus: Option<&str>,
) -> CheckRun {
    update_check_logging(config, unit, extra, bus, None).await
}

/// As [`update_check`], with `RUST_LOG` set to `rust_log` when given. Standalone: the config root
/// is a fresh temp dir, so no daemon's control socket is under it.
async fn update_check_logging(
    config: &std::path::Path,
    unit: &str,
    extra: &[&str],
    bus: Option<&str>,
    rust_log: Option<&str>,
) -> CheckRun {
    let root = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"));
    cmd.args(["update-check", "--standalone", "--config"])
        .arg(config)
        .args(["--unit", unit])
        .args(extra)
        .env("SIDEKICK_CONFIG_ROOT", root.path())
        .env_remove("RUST_LOG");
    if let Some(bus) = bus {
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus);
    }
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    CheckRun {
        code: out.status.code(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn update_check_reports_no_update_then_the_published_version() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &server, APP);

    let first = update_check(&config, "web@1", &["--current-version", "1.0.0"], None).await;
    assert_eq!(
        (first.code, &first.json),
        (Some(0), &serde_json::json!({"status": "no-update"}))
    );
    // Standalone, it says why that is not the usual way.
    assert!(
        first.stderr.contains("checking standalone")
            && first.stderr.contains("gets an offer is a grant")
            && first.stderr.contains("no daemon answers on"),
        "{}",
        first.stderr
    );

    server.publish(APP, "2.0.0").await;
    let second = update_check(&config, "web@1", &["--current-version", "1.0.0"], None).await;
    assert_eq!(second.code, Some(0));
    assert_eq!(
        second.json,
        serde_json::json!({
            "status": "update",
            "version": "2.0.0",
            "image": "registry.example.com/web:2.0.0",
            "sha256": "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043",
        })
    );
    // update-check sends no events of its own.
    let rows = server.instances(APP).await;
    assert_eq!(
        rows[0]["last_events"].as_array().map(Vec::len),
        Some(0),
        "{rows:?}"
    );
}

#[tokio::test]
async fn update_check_of_a_second_instance_is_on_hold_with_one_update_per_period() {
    let server = LocalService::start().await;
    let policy = serde_json::json!({"max_updates_per_period": 1, "period_interval": "1h", "update_timeout": "1h"});
    server.setup_app(APP, policy).await;
    server.publish(APP, "2.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &server, APP);
    let args = ["--current-version", "1.0.0"];

    let granted = update_check(&config, "web@1", &args, None).await;
    assert_eq!(granted.json["status"], "update", "{:?}", granted.json);
    let held = update_check(&config, "web@2", &args, None).await;
    assert_eq!(held.code, Some(0), "on-hold is a completed check");
    assert_eq!(
        held.json,
        serde_json::json!({"status": "on-hold", "reason": "error-maxUpdatesPerPeriodLimitReached"})
    );
}

#[tokio::test]
async fn update_check_of_an_unknown_app_is_an_error_with_exit_1() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &server, "00000000-0000-4000-8000-000000000000");
    let run = update_check(&config, "web@1", &["--current-version", "1.0.0"], None).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.json["status"], "error");
    assert_eq!(run.json["kind"], "unknown-app", "{:?}", run.json);
}

#[tokio::test]
async fn update_check_refuses_an_offer_with_a_malicious_codebase_and_reports_it() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    server
        .publish_url(APP, "2.0.0", "registry.example.com/web:2.0.0;reboot")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &server, APP);
    let run = update_check(&config, "web@1", &["--current-version", "1.0.0"], None).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.json["status"], "error", "{:?}", run.json);
    let rows = server.instances(APP).await;
    let events = rows[0]["last_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events.iter().any(|e| e["event_type"] == 3
            && e["event_result"] == 0
            && e["error_code"] == error_code::OFFER_REFUSED),
        "a 3/0 event with the refusal code was sent: {events:?}"
    );
    // The refusal is logged as a warning: -q keeps warnings, -qq hides them, RUST_LOG wins.
    let args = ["--current-version", "1.0.0"];
    let logged = |run: &CheckRun| run.stderr.contains("refused the offered update");
    assert!(
        logged(&run),
        "default level shows the warning: {}",
        run.stderr
    );
    let quiet = update_check(&config, "web@1", &[&["-q"][..], &args].concat(), None).await;
    assert!(logged(&quiet), "-q still shows warnings: {}", quiet.stderr);
    let quieter = update_check(&config, "web@1", &[&["-qq"][..], &args].concat(), None).await;
    assert!(
        !logged(&quieter),
        "-qq shows errors only: {}",
        quieter.stderr
    );
    let env = update_check_logging(
        &config,
        "web@1",
        &[&["-qq"][..], &args].concat(),
        None,
        Some("warn"),
    )
    .await;
    assert!(logged(&env), "RUST_LOG overrides -qq: {}", env.stderr);
}

#[tokio::test]
async fn update_check_reads_the_current_version_from_the_unit_over_dbus() {
    if !prerequisites_met(support::systemd::NEEDS) {
        return;
    }
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    server.publish(APP, "2.0.0").await;
    let systemd = Systemd::start().await;
    // The unit need not run: its environment is what systemd reports for it.
    systemd.write_unit(
        "web@1.service",
        &format!(
            "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0\nExecStart={} sleep 1\n",
            images::docker_path().display()
        ),
    );
    systemd.write_dropin(
        "web@1.service",
        "50-sidekick.conf",
        "[Service]\nEnvironment=SIDEKICK_VERSION=2.0.0\n",
    );
    systemd.reload().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &server, APP);

    let run = update_check(&config, "web@1", &[], Some(systemd.bus_address())).await;
    assert_eq!(run.code, Some(0));
    assert_eq!(
        run.json,
        serde_json::json!({"status": "no-update"}),
        "2.0.0 from the drop-in is current"
    );

    systemd.write_dropin(
        "web@1.service",
        "50-sidekick.conf",
        "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0\n",
    );
    systemd.reload().await;
    let run = update_check(&config, "web@1", &[], Some(systemd.bus_address())).await;
    assert_eq!(run.json["status"], "update", "{:?}", run.json);
    assert_eq!(run.json["version"], "2.0.0");
}
