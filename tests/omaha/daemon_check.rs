//! `sidekick update-check` and the instance's daemon: a running `sidekick run` is asked over its
//! control socket and its check is the only one the example update service sees; with no daemon
//! the command refuses to check (an offer is a grant) and sends nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::example_service::{LocalService, relaxed_policy};
use super::support::systemd::{self as container, Job, Systemd};
use super::support::{self, ProcessGuard, SignalTarget, poll_until, prerequisites_met};
use super::*;

/// Starting the daemon and its first pass on a loaded 2-core machine.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

/// The control socket a daemon of `web@1.service` binds under `root`.
fn socket_under(root: &Path) -> PathBuf {
    root.join("run/sidekick/web@1/control.sock")
}

/// `update-check` for `web@1.service` with `config`, config root `root`; exit code, the JSON
/// it printed, stderr.
async fn update_check(
    root: &Path,
    config: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["update-check", "--unit", "web@1.service", "--config"])
        .arg(config)
        .args(extra)
        .env("SIDEKICK_CONFIG_ROOT", root)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}): {stdout}\nstderr: {stderr}")
    });
    (out.status.code(), json, stderr)
}

/// Update checks the service answered for the app's instances, in total.
async fn checks_seen(server: &LocalService) -> u64 {
    server
        .instances(APP)
        .await
        .iter()
        .map(|row| row["update_checks"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn update_check_with_no_daemon_refuses_without_standalone_and_sends_nothing() {
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    server.publish(APP, "2.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let config = super::update_check_cli::config_for(dir.path(), &server, APP);
    let version = ["--current-version", "1.0.0"];

    // No socket file at all.
    let (code, json, stderr) = update_check(&root, &config, &version).await;
    assert_eq!(code, Some(1), "{json}\n{stderr}");
    assert_eq!(json["status"], "error");
    assert_eq!(json["kind"], "no-daemon", "{json}");
    for why in [
        "--standalone",
        "is a grant",
        &socket_under(&root).display().to_string(),
    ] {
        assert!(stderr.contains(why), "stderr names `{why}`: {stderr}");
    }

    // A stale socket file of a daemon that is gone: nobody answers, so still no daemon.
    let socket = socket_under(&root);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (code, json, _) = update_check(&root, &config, &version).await;
    assert_eq!(
        (code, &json["kind"]),
        (Some(1), &serde_json::json!("no-daemon"))
    );

    assert_eq!(
        server.instances(APP).await.len(),
        0,
        "the service saw no check from a refused update-check"
    );

    // The same with --standalone checks, and gets the grant.
    let (code, json, _) =
        update_check(&root, &config, &[&version[..], &["--standalone"]].concat()).await;
    assert_eq!(
        (code, &json["status"]),
        (Some(0), &serde_json::json!("update")),
        "{json}"
    );
    assert_eq!(checks_seen(&server).await, 1);
}

/// A unit that sleeps, running version 1.0.0.
const UNIT: &str = "[Service]\n\
    Environment=SIDEKICK_VERSION=1.0.0\n\
    Environment=SIDEKICK_IMAGE=registry.example.com/web:1.0.0\n\
    ExecStart=/usr/bin/sleep infinity\n";

/// The daemon's config: no registration, no health check, no slot server, a pre-pull that does
/// nothing; updates from `server` checked hourly, so the checks in the test are the first pass's
/// and the asked ones. The swap drains for a minute, long enough to ask it while it swaps.
fn daemon_config(dir: &Path, server: &LocalService) -> PathBuf {
    let path = dir.join("daemon.toml");
    let state = dir.join("state");
    let dropins = dir.join("dropins");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&dropins).unwrap();
    let text = format!(
        "[instance]\nunit = \"web@1.service\"\n\
         [registration]\nenabled = false\nport = 8080\n\
         [health]\ncheck = \"none\"\n\
         [update]\nserver = \"{}\"\napp_id = \"{APP}\"\nimage = \"{{codebase}}\"\ninterval = \"1h\"\n\
         [slot]\nbackend = \"none\"\n\
         [swap]\ndrain = \"60s\"\nprepull = [\"/usr/bin/true\"]\ndropin_dir = \"{}\"\n\
         [daemon]\nstate_dir = \"{}\"\n",
        server.endpoint(),
        dropins.display(),
        state.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn update_check_is_answered_by_the_daemon_whose_check_is_the_only_one_the_service_sees() {
    if !prerequisites_met(container::NEEDS) {
        return;
    }
    let server = LocalService::start().await;
    server.setup_app(APP, relaxed_policy()).await;
    let systemd = Systemd::start().await;
    systemd.write_unit("web@1.service", UNIT);
    systemd.reload().await;
    let result = container::run_job(&systemd.manager().await, Job::Start, "web@1.service").await;
    assert_eq!(result, "done");

    let dir = support::temp_dir("daemon-check");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let config = daemon_config(dir.path(), &server);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekick"));
    cmd.args(["run", "--log", "stderr", "--config"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.bus_address())
        .env("SIDEKICK_CONFIG_ROOT", &root)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    let log = dir.path().join("daemon.log");
    let mut daemon = ProcessGuard::spawn("sidekick", &mut cmd, &log, SignalTarget::Group);
    let socket = socket_under(&root);

    // Its first pass: no update yet.
    let first = poll_until(DAEMON_TIMEOUT, "the daemon's first check", || {
        let socket = socket.clone();
        async move {
            let state = sidekick::control::client::state(&socket, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            match state.last_result.as_deref() {
                Some("no-update") => Ok(state),
                other => Err(format!("last result {other:?}")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(30)));
    assert_eq!(first.version.as_deref(), Some("1.0.0"));
    assert_eq!(checks_seen(&server).await, 1);

    server.publish(APP, "2.0.0").await;
    // Asked with --standalone too: a daemon that answers is always the one that checks.
    let (code, json, stderr) = update_check(&root, &config, &["--standalone"]).await;
    assert_eq!(code, Some(0), "{json}\n{stderr}\n{}", daemon.log_tail(30));
    assert_eq!(
        json,
        serde_json::json!({
            "status": "update",
            "version": "2.0.0",
            "image": "registry.example.com/web:2.0.0",
            "sha256": "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043",
        })
    );
    let rows = server.instances(APP).await;
    assert_eq!(rows.len(), 1, "one machine id, the daemon's: {rows:?}");
    assert_eq!(
        rows[0]["update_checks"], 2,
        "exactly one check for update-check, made by the daemon: {rows:?}"
    );
    assert!(!stderr.contains("checking standalone"), "{stderr}");

    // The daemon acts on its grant: while it swaps it checks nothing more, and says why.
    let (code, json, stderr) = update_check(&root, &config, &["--current-version", "1.0.0"]).await;
    assert!(
        stderr.contains("apply to a standalone check only"),
        "a flag the daemon does not use is named: {stderr}"
    );
    assert_eq!(code, Some(1), "{json}\n{}", daemon.log_tail(40));
    assert_eq!(json["kind"], "swap-in-progress", "{json}");
    assert_eq!(checks_seen(&server).await, 2);

    daemon.stop();
    assert!(daemon.log_tail(200).contains("control socket: check now"));
    assert!(
        !socket.exists(),
        "the daemon removes its socket when it stops"
    );
}
