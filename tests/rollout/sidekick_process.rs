//! One `sidekick run` as a host process following a unit on the container's bus, and the config
//! file the rollout writes for it (only keys that exist in `src/config/fragments.rs`).
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::fleet::FleetSpec;
use super::update_service::{APP_ID, TRACK};
use crate::support::images;
use crate::support::{ProcessGuard, SignalTarget};

/// What one instance's config file says.
pub struct SidekickConfig<'a> {
    pub spec: &'a FleetSpec,
    pub unit: &'a str,
    pub port: u16,
    pub etcd: &'a str,
    pub update_server: &'a str,
    pub dropin_dir: &'a Path,
    pub state_dir: &'a Path,
}

impl SidekickConfig<'_> {
    /// The TOML text: traefik layout on 127.0.0.1:port, HTTP check, updates from the example
    /// service with `{codebase}` as the image, `slot_max` etcd slots, `docker pull {image}` as pre-pull.
    pub fn render(&self) -> String {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let spec = self.spec;
        // `allow_major_jump`: the fault tests publish the broken 3.0.0 straight over 1.0.0.
        format!(
            "[instance]\nunit = \"{unit}\"\n\
             [etcd]\nendpoints = [\"{etcd}\"]\ntimeout = \"2s\"\n\
             [registration]\nlayout = \"traefik\"\nhost = \"127.0.0.1\"\nport = {port}\nttl = \"{reg_ttl}\"\n\
             [health]\ncheck = \"http\"\ninterval = \"{probe}\"\ntimeout = \"1s\"\nrise = {rise}\nfall = 2\n\
             [update]\nenabled = {updates}\nserver = \"{server}\"\napp_id = \"{APP_ID}\"\n\
             track = \"{TRACK}\"\ninterval = \"{interval}\"\nimage = \"{{codebase}}\"\n\
             allow_major_jump = true\n\
             [slot]\nbackend = \"etcd\"\nmax = {slot_max}\nttl = \"{slot_ttl}\"\n\
             [swap]\ndrain = \"{drain}\"\nstart_timeout = \"60s\"\nverify_timeout = \"{verify}\"\n\
             prepull = [\"{docker}\", \"pull\", \"{{image}}\"]\ndropin_dir = \"{dropins}\"\n\
             [rollout]\nmin_healthy = \"{min_healthy}\"\nmonitor = \"{monitor}\"\n\
             batch_delay = \"{batch_delay}\"\n\
             [daemon]\nstate_dir = \"{state}\"\n",
            unit = self.unit,
            etcd = self.etcd,
            port = self.port,
            reg_ttl = d(spec.registration_ttl),
            probe = d(spec.probe_interval),
            rise = spec.rise,
            updates = spec.updates,
            server = self.update_server,
            interval = d(spec.update_interval),
            slot_ttl = d(spec.slot_ttl),
            slot_max = spec.slot_max,
            drain = d(spec.drain),
            verify = d(spec.verify_timeout),
            min_healthy = d(spec.min_healthy),
            monitor = d(spec.monitor),
            batch_delay = d(spec.batch_delay),
            docker = images::docker_path().display(),
            dropins = self.dropin_dir.display(),
            state = self.state_dir.display(),
        )
    }
}

/// A running `sidekick run`; on drop it is continued (if stopped), then stopped.
pub struct SidekickProcess {
    guard: ProcessGuard,
    log: PathBuf,
}

impl SidekickProcess {
    /// Starts `binary run --config <config>` in its own process group; no drop-in directories
    /// apply (`SIDEKICK_CONFIG_ROOT` is `config_root`), logs go to `log`.
    pub fn spawn(
        binary: &Path,
        config: &Path,
        config_root: &Path,
        bus_address: &str,
        log: &Path,
    ) -> SidekickProcess {
        SidekickProcess::spawn_with_env(binary, config, config_root, bus_address, log, &[])
    }

    /// [`SidekickProcess::spawn`] with `env` added to its environment (e.g. libfaketime's).
    pub fn spawn_with_env(
        binary: &Path,
        config: &Path,
        config_root: &Path,
        bus_address: &str,
        log: &Path,
        env: &[(&str, &str)],
    ) -> SidekickProcess {
        std::fs::create_dir_all(config_root).expect("config root");
        let mut cmd = Command::new(binary);
        cmd.args(["run", "--log", "stderr", "--config"])
            .arg(config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
            .env("SIDEKICK_CONFIG_ROOT", config_root)
            .env("RUST_LOG", "info,sidekick::agent=debug")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied());
        let name = config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let guard = ProcessGuard::spawn(&name, &mut cmd, log, SignalTarget::Group);
        SidekickProcess {
            guard,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.guard.pid() as i32
    }

    pub fn signal(&self, signal: i32) {
        self.guard.signal(signal);
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }

    /// SIGTERM, wait for the exit (SIGKILL after a grace period); reaped.
    pub fn stop(&mut self) {
        self.guard.stop();
    }

    /// SIGKILL, as a crash would; reaped.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.guard.log_tail(lines)
    }
}

impl Drop for SidekickProcess {
    fn drop(&mut self) {
        self.guard.signal(libc::SIGCONT);
    }
}
