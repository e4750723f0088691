//! `sidekick status` on a host with sidekicks running: each answers on its control socket, also
//! one bound to a unit that does not exist (which has no registration, so nothing in etcd), and a
//! socket nobody answers on is shown as such, quickly.

use std::path::Path;
use std::time::{Duration, Instant};

use super::REGISTER_TIMEOUT;
use super::harness::{SLEEP_UNIT, Sidekick, config, start_unit, wait_for_key};
use super::support::etcd::{self, Etcd};
use super::support::systemd::{self, Systemd};
use super::support::{poll_until, prerequisites_met, temp_dir};

/// `config` for `unit`, with its control socket under `run_dir`.
fn config_for(etcd: &str, unit: &str, run_dir: &Path) -> String {
    let stem = unit.trim_end_matches(".service");
    let socket = run_dir.join(stem).join("control.sock");
    let text = config(etcd, "seed", 8080, 10, "check = \"none\"").replace("web@1.service", unit);
    format!(
        "{text}[daemon]\ncontrol_socket = \"{}\"\n",
        socket.display()
    )
}

/// `sidekick status --runtime-dir run_dir [--json]` with `config`: exit code, stdout, stderr.
async fn status(config: &Path, run_dir: &Path, json: bool) -> (Option<i32>, String, String) {
    let root = config.with_extension("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"));
    cmd.args(["status", "--config"])
        .arg(config)
        .arg("--runtime-dir")
        .arg(run_dir)
        .env("SIDEKICK_CONFIG_ROOT", &root)
        .env_remove("RUST_LOG");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn status_shows_each_local_daemon_a_not_found_unit_and_a_socket_nobody_answers() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("reg-local-status");
    let run_dir = dir.path().join("run");
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let web = config_for(&etcd.endpoint(), "web@1.service", &run_dir);
    let _web = Sidekick::start(&systemd, dir.path(), "web", &web);
    // Bound to a unit systemd has no file for.
    let ghost = config_for(&etcd.endpoint(), "ghost@1.service", &run_dir);
    let _ghost = Sidekick::start(&systemd, dir.path(), "ghost", &ghost);
    wait_for_key(&client, "/services/web/web-1", REGISTER_TIMEOUT).await;
    // A socket file of a daemon that is gone, and a socket that accepts but never answers.
    std::fs::create_dir_all(run_dir.join("gone@1")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(run_dir.join("gone@1/control.sock")).unwrap());
    std::fs::create_dir_all(run_dir.join("hung@1")).unwrap();
    let _hung =
        std::os::unix::net::UnixListener::bind(run_dir.join("hung@1/control.sock")).unwrap();

    let config = dir.path().join("web.toml");
    let local = poll_until(
        REGISTER_TIMEOUT,
        "both daemons answer with their unit's state",
        || {
            let (config, run_dir) = (config.clone(), run_dir.clone());
            async move {
                let (code, stdout, stderr) = status(&config, &run_dir, true).await;
                if code != Some(0) {
                    return Err(format!("exit {code:?}: {stderr}"));
                }
                let report: serde_json::Value =
                    serde_json::from_str(&stdout).map_err(|e| e.to_string())?;
                let local = report["local"].as_array().cloned().unwrap_or_default();
                let state = |unit: &str| {
                    local
                        .iter()
                        .find(|d| d["state"]["unit"] == unit)
                        .map(|d| d["state"].clone())
                };
                match (state("web@1.service"), state("ghost@1.service")) {
                    (Some(web), Some(ghost))
                        if web["registered"] == true && ghost["load_state"] == "not-found" =>
                    {
                        Ok(local)
                    }
                    _ => Err(stdout),
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let sockets: Vec<&str> = local
        .iter()
        .map(|d| d["socket"].as_str().unwrap_or_default())
        .collect();
    let under = |name: &str| {
        run_dir
            .join(name)
            .join("control.sock")
            .display()
            .to_string()
    };
    assert_eq!(
        sockets,
        [
            under("ghost@1"),
            under("gone@1"),
            under("hung@1"),
            under("web@1")
        ],
        "every socket, sorted"
    );
    let ghost = &local[0]["state"];
    assert_eq!(ghost["instance"], "ghost-1");
    assert_eq!(ghost["registered"], false);
    assert_eq!(
        ghost["status"],
        "not registered: unit ghost@1.service is not-found"
    );
    assert!(
        local[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no daemon answers")),
        "{:?}",
        local[1]
    );
    assert!(
        local[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer") && e.contains("within 2s")),
        "{:?}",
        local[2]
    );
    let web = &local[3]["state"];
    assert_eq!(
        (&web["active_state"], &web["load_state"], &web["status"]),
        (
            &serde_json::json!("active"),
            &serde_json::json!("loaded"),
            &serde_json::json!("registered")
        )
    );

    // The table: one row per socket, the ghost with its load state; the hung socket costs only
    // its short timeout.
    let started = Instant::now();
    let (code, table, stderr) = status(&config, &run_dir, false).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let section = table
        .split("LOCAL DAEMONS\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no LOCAL DAEMONS section:\n{table}"));
    let row = |first: &str| {
        section
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first}:\n{section}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("ghost-1")[..6],
        [
            "ghost-1",
            "ghost@1.service",
            "inactive",
            "not-found",
            "not-registered",
            "no"
        ]
    );
    assert_eq!(
        row("web-1")[..6],
        [
            "web-1",
            "web@1.service",
            "active",
            "loaded",
            "serving",
            "yes"
        ]
    );
    assert!(row("gone@1").contains(&"answer:"), "{section}");
    assert!(
        row("hung@1")
            .join(" ")
            .contains("no answer: no answer from"),
        "{section}"
    );
    // With etcd gone, the fleet view fails (exit 1) but the daemons on this host still show.
    etcd.stop();
    let (code, table, stderr) = status(&config, &run_dir, false).await;
    assert_eq!(code, Some(1), "{table}{stderr}");
    assert!(
        stderr.contains("did not answer within") && stderr.lines().count() == 1,
        "one line naming what failed: {stderr}"
    );
    assert!(table.starts_with("LOCAL DAEMONS\n"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some("web-1")),
        "{table}"
    );
    let (code, json, _) = status(&config, &run_dir, true).await;
    assert_eq!(code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["local"].as_array().map(Vec::len), Some(4), "{json}");
    assert!(report["etcd_error"].is_string(), "{json}");
    assert!(
        report.get("registrations").is_none(),
        "no fleet fields: {json}"
    );
}
