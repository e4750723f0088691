//! Commands against an etcd that does not answer (an unused loopback port): `status` still shows
//! this host's daemons (`LOCAL DAEMONS (none)` when there are none), `--json` carries
//! `etcd_error`, and every command says what failed in one line on stderr (no client debug
//! dump; that is for `-v`) and exits 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::support::{ProcessGuard, SignalTarget, free_port, poll_until_blocking, temp_dir};

/// The configured `etcd.timeout`: short, so a test waits little even for a silent endpoint.
const ETCD_TIMEOUT: &str = "1s";
/// How long a command may take against a refused endpoint (its timeout plus a loaded machine).
const COMMAND_BOUND: Duration = Duration::from_secs(10);
/// How long the dry-run daemon may take to answer on its control socket.
const DAEMON_START: Duration = Duration::from_secs(30);

/// A config file (outside the config root) whose only etcd endpoint is an unused loopback port.
fn dead_etcd_config(dir: &Path) -> (PathBuf, String) {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let path = dir.join("dead-etcd.toml");
    std::fs::write(
        &path,
        format!("[etcd]\nendpoints = [\"{endpoint}\"]\ntimeout = \"{ETCD_TIMEOUT}\"\n"),
    )
    .unwrap();
    (path, endpoint)
}

/// `sidekick <args> --config <config>` with `root` as the config root (its `run/sidekick` is
/// where `status` looks for control sockets).
fn sidekick_with(root: &Path, config: &Path, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SIDEKICK_CONFIG_ROOT", root)
        .env_remove("RUST_LOG")
        .output()
        .expect("sidekick binary runs");
    assert!(
        started.elapsed() < COMMAND_BOUND,
        "{args:?} took {:?}",
        started.elapsed()
    );
    out
}

/// Exit code 1 and exactly one stderr line naming the endpoint and the cause, with no debug
/// text of the etcd client; the line.
fn assert_one_line_failure(out: &Output, endpoint: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    let want = format!(
        "sidekick: etcd at {endpoint} did not answer within {ETCD_TIMEOUT} (connection refused)\n"
    );
    assert_eq!(stderr, want);
    for debug in ["tonic", "Error(", "Os {"] {
        assert!(!stderr.contains(debug), "{debug:?} in {stderr:?}");
    }
    stderr
}

#[test]
fn status_with_etcd_down_and_no_daemon_shows_local_daemons_none_and_says_why_in_one_line() {
    let dir = temp_dir("cli-etcd-down");
    let (config, endpoint) = dead_etcd_config(dir.path());

    let out = sidekick_with(dir.path(), &config, &["status"]);
    assert_one_line_failure(&out, &endpoint);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "LOCAL DAEMONS\n  (none)\n",
        "only what is known without etcd"
    );

    let out = sidekick_with(dir.path(), &config, &["status", "--json"]);
    let stderr = assert_one_line_failure(&out, &endpoint);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        json,
        serde_json::json!({
            "etcd_error": stderr.trim_end().trim_start_matches("sidekick: "),
            "local": [],
        }),
        "no fleet fields: an empty list would claim an empty fleet"
    );
}

#[test]
fn status_json_with_etcd_down_and_a_local_daemon_carries_etcd_error_and_the_daemon() {
    let dir = temp_dir("cli-etcd-down-daemon");
    let (config, endpoint) = dead_etcd_config(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // A real daemon on this host: the dry run on embedded defaults, with its control socket
    // under the config root's run/sidekick, where `status` looks.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_sidekick"));
    daemon
        .args(["run", "--dry-run"])
        .current_dir(dir.path())
        .env("SIDEKICK_CONFIG_ROOT", &root)
        .env("TMPDIR", dir.path())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET");
    let mut daemon = ProcessGuard::spawn(
        "dry-run daemon",
        &mut daemon,
        &dir.path().join("daemon.log"),
        SignalTarget::Group,
    );

    let json = poll_until_blocking(DAEMON_START, "the daemon answers in status", || {
        if !daemon.is_running() {
            panic!("the daemon exited: {}", daemon.log_tail(20));
        }
        let out = sidekick_with(&root, &config, &["status", "--json"]);
        assert_one_line_failure(&out, &endpoint);
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        match json["local"][0]["state"]["instance"].as_str() {
            Some("web-1") => Ok(json),
            _ => Err(json.to_string()),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_tail(20)));
    let reason = format!("etcd at {endpoint} did not answer within {ETCD_TIMEOUT}");
    assert!(
        json["etcd_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&reason)),
        "{json}"
    );
    assert_eq!(json["local"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json["local"][0]["state"]["unit"], "web@1.service", "{json}");
    assert!(json.get("instances").is_none(), "no fleet fields: {json}");

    // The table shows the daemon's row under LOCAL DAEMONS, and nothing that needs etcd.
    let out = sidekick_with(&root, &config, &["status"]);
    assert_one_line_failure(&out, &endpoint);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("LOCAL DAEMONS\n"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["web-1", "web@1.service"])),
        "{table}"
    );
    daemon.stop();
}

#[test]
fn slots_and_rollout_against_a_dead_endpoint_say_what_failed_in_one_line() {
    let dir = temp_dir("cli-etcd-down-slots");
    let (config, endpoint) = dead_etcd_config(dir.path());
    for args in [
        &["slots", "resume", "--group", "web/stable"][..],
        &[
            "slots",
            "release",
            "--group",
            "web/stable",
            "--holder",
            "host-1",
        ],
        &["slots", "set-max", "--group", "web/stable", "2"],
        &["rollout", "pause", "--group", "web/stable"],
    ] {
        let out = sidekick_with(dir.path(), &config, args);
        assert_one_line_failure(&out, &endpoint);
        assert!(out.stdout.is_empty(), "{args:?}: {:?}", out.stdout);
    }
    // The client's own account of the failure is there with `-v`.
    let out = sidekick_with(
        dir.path(),
        &config,
        &["-v", "slots", "resume", "--group", "web/stable"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ConnectionRefused"), "{stderr}");
}
