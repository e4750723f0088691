//! The sidekick as a real process, the app and sleep units it follows, and etcd helpers that
//! measure with watch events.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchStream};
use zbus_systemd::systemd1::ManagerProxy;

use super::PROBE_INTERVAL;
use crate::support::images;
use crate::support::systemd::{self, Job, Systemd};
use crate::support::{poll_until, temp_dir};

/// A running `sidekick run`; SIGCONT + SIGKILL on drop.
pub struct Sidekick {
    child: Option<Child>,
    log: PathBuf,
}

impl Sidekick {
    /// Starts `sidekick run --config <config>` following units on the container's bus.
    pub fn start(systemd: &Systemd, dir: &Path, name: &str, config: &str) -> Sidekick {
        Sidekick::start_with(systemd, dir, name, config, &[])
    }

    /// [`Sidekick::start`] with `extra` arguments to `run` (e.g. `--dry-run`).
    pub fn start_with(
        systemd: &Systemd,
        dir: &Path,
        name: &str,
        config: &str,
        extra: &[&str],
    ) -> Sidekick {
        use crate::support::reaper::{self, Leftover};
        use std::os::unix::process::CommandExt;
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).expect("write config");
        let root = dir.join(format!("{name}-root"));
        std::fs::create_dir_all(&root).expect("config root");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("dup log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekick"));
        cmd.args(["run", "--log", "stderr", "--config"])
            .arg(&config_path)
            .args(extra)
            .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.bus_address())
            .env("SIDEKICK_CONFIG_ROOT", &root)
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info,sidekick=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = reaper::spawn(&mut cmd, libc::SIGKILL).expect("spawn sidekick");
        reaper::watch(&Leftover::ProcessGroup(child.id()));
        Sidekick {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, signal: i32) {
        if self.child.is_some() {
            // SAFETY: kill(2) on the pid of a child we have not reaped.
            unsafe { libc::kill(self.pid(), signal) };
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `timeout` for the process to exit; its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = poll_until(timeout, "sidekick exits", || {
            let status = child.try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
        .ok()?;
        let gone = crate::support::reaper::Leftover::ProcessGroup(self.pid() as u32);
        crate::support::reaper::forget(&gone);
        self.child = None;
        Some(status)
    }
}

impl Drop for Sidekick {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `signal`; SIGCONT first so a stopped process can die.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
                libc::kill(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.wait();
            let gone = crate::support::reaper::Leftover::ProcessGroup(child.id());
            crate::support::reaper::forget(&gone);
        }
        if std::thread::panicking() {
            eprintln!("--- sidekick log ---\n{}", self.log());
        }
    }
}

/// Config for instance `web-1` of unit `web@1.service`.
pub fn config(etcd: &str, layout: &str, port: u16, ttl: u64, health: &str) -> String {
    format!(
        "[instance]\nunit = \"web@1.service\"\n\
         [etcd]\nendpoints = [\"{etcd}\"]\ntimeout = \"2s\"\n\
         [registration]\nlayout = \"{layout}\"\nhost = \"127.0.0.1\"\nport = {port}\nttl = \"{ttl}s\"\n\
         [health]\n{health}\ninterval = \"{}ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n\
         [update]\nenabled = false\n",
        PROBE_INTERVAL.as_millis()
    )
}

/// `web@.service` running the 1.0.0 app image on `port`, serving `www` from the host.
pub fn app_unit(container: &str, port: u16, www: &Path) -> String {
    let docker = images::docker_path();
    let docker = docker.display();
    let image = images::app_image("1.0.0");
    format!(
        "[Service]\n\
         Environment=SIDEKICK_IMAGE={image}\n\
         ExecStartPre=-{docker} rm -f {container}\n\
         ExecStart={docker} run --rm --name {container} --network host -e PORT={port} -v {}:/www ${{SIDEKICK_IMAGE}}\n\
         ExecStop={docker} stop -t 5 {container}\n",
        www.display()
    )
}

/// `web@.service` that just sleeps: for tests about etcd and the sidekick, not the app.
pub const SLEEP_UNIT: &str = "[Service]\nExecStart=/usr/bin/sleep infinity\n";

/// Writes `web@.service`, reloads and starts `web@1.service`.
pub async fn start_unit(systemd: &Systemd, unit_file: &str) -> ManagerProxy<'static> {
    systemd.write_unit("web@.service", unit_file);
    systemd.reload().await;
    let mgr = systemd.manager().await;
    let result = systemd::run_job(&mgr, Job::Start, "web@1.service").await;
    assert_eq!(result, "done", "{}", systemd.log_tail(30));
    mgr
}

/// A page the app serves at `/`, in a host dir mounted as its web root.
pub fn web_root() -> tempfile::TempDir {
    let www = temp_dir("www");
    std::fs::write(www.path().join("index.html"), "sidekick test app 1.0.0\n").unwrap();
    std::fs::write(www.path().join("version"), "1.0.0\n").unwrap();
    www
}

/// The key's value and lease, polled until present.
pub async fn wait_for_key(client: &Client, key: &str, timeout: Duration) -> (String, i64) {
    poll_until(timeout, &format!("key {key} present"), || {
        let mut client = client.clone();
        async move {
            let got = client.get(key, None).await.map_err(|e| e.to_string())?;
            match got.kvs().first() {
                Some(kv) => Ok((kv.value_str().unwrap_or("").to_string(), kv.lease())),
                None => Err("absent".to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A watch on `key`, opened before the action it measures.
pub async fn watch(client: &Client, key: &str) -> WatchStream {
    client.clone().watch(key, None).await.expect("open watch")
}

/// Waits for the key's delete event; the time it arrived.
pub async fn deleted(stream: &mut WatchStream, timeout: Duration) -> Instant {
    let wait = async {
        while let Some(response) = stream.message().await.expect("watch stream") {
            if response
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Instant::now();
            }
        }
        panic!("watch stream ended");
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| panic!("no delete event within {timeout:?}"))
}

/// Number of keys under `prefix`.
pub async fn count_keys(client: &Client, prefix: &str) -> usize {
    let options = GetOptions::new().with_prefix().with_count_only();
    let got = client.clone().get(prefix, Some(options)).await.unwrap();
    got.count() as usize
}

pub async fn remaining_ttl(client: &Client, lease: i64) -> i64 {
    let mut client = client.clone();
    client
        .lease_time_to_live(lease, None)
        .await
        .expect("lease time-to-live")
        .ttl()
}
