//! The rollout environment: etcd, the local image registry with the app versions pushed, Traefik
//! reading etcd, the example update service, the systemd container (Docker socket bound) running
//! `web@1..N` from one template unit, and one `sidekick run` per unit as a host process with the
//! `traefik` layout. Everything stops when the [`Fleet`] drops, sidekicks first.
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::Client;

use super::rotation::count_keys;
use super::sidekick_process::{SidekickConfig, SidekickProcess};
use super::update_service::{APP_ID, UpdateService};
use crate::support::etcd::Etcd;
use crate::support::images::{self, Container};
use crate::support::registry::Registry;
use crate::support::systemd::{self, Job, Systemd};
use crate::support::traefik::{self, Traefik};
use crate::support::{free_port, poll_until, temp_dir};

/// The app's service name (the unit prefix) and the `Host` its Traefik router matches.
pub const SERVICE: &str = "web";
pub const HOST: &str = "web.test";
/// Traefik server URL keys of the service, one per registered instance.
pub const SERVERS_PREFIX: &str = "traefik/http/services/web/loadbalancer/servers/";
/// Update slots and halt markers (DESIGN.md, "Wire formats and key layouts").
pub const SLOTS_PREFIX: &str = "/sidekick/slots/";
pub const HALT_PREFIX: &str = "/sidekick/halt/";
/// The version every unit starts on (the template's default).
pub const FIRST_VERSION: &str = "1.0.0";

/// From a publish to the first slot taken: a poll (10 s ± 10 %), a grant period, the pre-pull.
pub const SWAP_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Starting units, first health checks and the first registrations, on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How the fleet is set up.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The `sidekick` binary to run.
    pub sidekick: PathBuf,
    pub instances: usize,
    /// `update.enabled`: false for registration only.
    pub updates: bool,
    /// Versions pushed to the registry before anything starts (1.0.0 always is).
    pub versions: Vec<&'static str>,
    pub update_interval: Duration,
    /// The update service grants at most one update per this period.
    pub grant_period: Duration,
    pub drain: Duration,
    pub slot_ttl: Duration,
    /// `slot.max`.
    pub slot_max: u32,
    pub registration_ttl: Duration,
    pub probe_interval: Duration,
    /// `health.rise`: passes in a row before an instance is registered.
    pub rise: u32,
    pub verify_timeout: Duration,
    /// `rollout.min_healthy`: short unless a test is about it (the default 10 s would slow every
    /// swap of every fleet).
    pub min_healthy: Duration,
    /// `rollout.monitor`: 0 (off) unless a test is about it.
    pub monitor: Duration,
    /// `rollout.batch_delay`: 0 unless a test is about it.
    pub batch_delay: Duration,
    /// Run each sidekick as `sidekick@N.service` in the container (`Wants=` + `After=` its app
    /// unit) instead of as a host process.
    pub sidekick_units: bool,
    /// etcd members: 1, or a cluster whose members reach each other through cuttable gates
    /// ([`crate::support::peer_links::PeerLinks`]). With more than one, the fleet's client and
    /// Traefik use every member but the first (which the partition cases cut and kill); the
    /// sidekicks are configured with all of them.
    pub etcd_members: usize,
    /// What runs the app's containers.
    pub runtime: AppRuntime,
}

/// What runs the app's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppRuntime {
    /// `docker run` in `web@.service`, on the host's Docker engine (socket bound in).
    Docker,
    /// The shipped Quadlet unit (`units/example-web@.container` as `web@.container`, one linked
    /// file per instance) on the Podman of the systemd container's root
    /// (`tests/rollout/quadlet.rs`).
    Quadlet,
}

impl FleetSpec {
    /// Three instances with short timings: a 10 s poll (the shortest allowed), 5 s drain
    /// (above Traefik's ~2 s reaction, DESIGN.md), 10 s slot and registration TTLs.
    pub fn new(sidekick: PathBuf) -> FleetSpec {
        FleetSpec {
            sidekick,
            instances: 3,
            updates: false,
            versions: vec![FIRST_VERSION],
            update_interval: Duration::from_secs(10),
            grant_period: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            slot_ttl: Duration::from_secs(10),
            slot_max: 1,
            registration_ttl: Duration::from_secs(10),
            probe_interval: Duration::from_millis(250),
            rise: 2,
            verify_timeout: Duration::from_secs(20),
            min_healthy: Duration::from_secs(1),
            monitor: Duration::ZERO,
            batch_delay: Duration::ZERO,
            sidekick_units: false,
            etcd_members: 1,
            runtime: AppRuntime::Docker,
        }
    }
}

/// One app unit and its sidekick.
pub struct Instance {
    pub unit: String,
    pub name: String,
    pub port: u16,
    pub config: PathBuf,
    sidekick: Option<SidekickProcess>,
}

/// The whole environment. Fields drop in order: sidekicks, the container, the app containers,
/// then the servers.
pub struct Fleet {
    pub instances: Vec<Instance>,
    pub systemd: Systemd,
    _containers: Vec<Container>,
    pub traefik: Traefik,
    pub updates: UpdateService,
    pub registry: Registry,
    pub client: Client,
    pub etcd: Etcd,
    images: BTreeMap<String, String>,
    spec: FleetSpec,
    dir: tempfile::TempDir,
    /// Released last: the next fleet of this process starts only when this one is gone.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

/// One fleet at a time per process: each is a systemd container, etcd, Traefik, a registry and
/// three app containers, and the tests' timings assume the 2 cores are not shared by two.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Fleet {
    /// Starts everything and waits until every instance is registered.
    pub async fn start(spec: FleetSpec) -> Fleet {
        let one_at_a_time = ONE_FLEET.lock().await;
        let dir = temp_dir("rollout");
        let etcd = match spec.etcd_members {
            0 | 1 => Etcd::start().await,
            n => Etcd::start_linked_cluster(n).await,
        };
        let observed = match spec.etcd_members {
            0 | 1 => etcd.endpoints(),
            _ => etcd.endpoints()[1..].to_vec(),
        };
        let client = crate::support::etcd::connect(&observed)
            .await
            .expect("connect to etcd");
        client.clone().status().await.expect("etcd status");
        let registry = Registry::start().await;
        let mut images = BTreeMap::new();
        for version in std::iter::once(FIRST_VERSION).chain(spec.versions.iter().copied()) {
            if images.contains_key(version) {
                continue;
            }
            let local = images::app_image(version);
            images.insert(
                version.to_string(),
                images::push(&local, &registry.address()),
            );
        }
        let traefik_etcd: Vec<&str> = observed
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        let traefik = Traefik::start(&traefik_etcd.join(",")).await;
        for (key, value) in traefik::router_keys(SERVICE, HOST, SERVICE) {
            client
                .clone()
                .put(key, value, None)
                .await
                .expect("router key");
        }
        let updates =
            UpdateService::start(FIRST_VERSION, &images[FIRST_VERSION], spec.grant_period).await;
        let prefix = images::unique_name("rollout");
        let (systemd, containers) = match spec.runtime {
            AppRuntime::Docker => {
                let systemd = Systemd::start().await;
                systemd.write_unit(
                    "web@.service",
                    &images::app_unit(&prefix, &images[FIRST_VERSION], FIRST_VERSION),
                );
                let containers = (1..=spec.instances)
                    .map(|i| Container::guard(&format!("{prefix}-{i}")))
                    .collect();
                (systemd, containers)
            }
            // Podman's containers live in the systemd container and go with it.
            AppRuntime::Quadlet => {
                let config = super::quadlet::podman_config(dir.path(), &registry.address());
                let bind = (config.as_path(), super::quadlet::CONTAINERS_CONFIG);
                (Systemd::start_with_binds(&[bind]).await, Vec::new())
            }
        };
        let mut fleet = Fleet {
            instances: Vec::new(),
            systemd,
            _containers: containers,
            traefik,
            updates,
            registry,
            client,
            etcd,
            images,
            spec,
            dir,
            _one_at_a_time: one_at_a_time,
        };
        fleet.start_units().await;
        fleet.start_sidekicks().await;
        fleet
            .wait_registered(fleet.instances.len(), START_TIMEOUT)
            .await;
        fleet
    }

    async fn start_units(&mut self) {
        for i in 1..=self.spec.instances {
            let unit = format!("{SERVICE}@{i}.service");
            let port = free_port();
            match self.spec.runtime {
                AppRuntime::Docker => {
                    let port_conf = format!("[Service]\nEnvironment=WEB_PORT={port}\n");
                    self.systemd.write_dropin(&unit, "10-port.conf", &port_conf);
                }
                AppRuntime::Quadlet => super::quadlet::install_instance(
                    &self.dir.path().join(super::quadlet::CONFIG_DIR),
                    i,
                    port,
                    &self.images[FIRST_VERSION],
                ),
            }
            self.instances.push(Instance {
                config: self.dir.path().join(format!("{SERVICE}-{i}.toml")),
                name: format!("{SERVICE}-{i}"),
                unit,
                port,
                sidekick: None,
            });
        }
        self.systemd.reload().await;
        let mgr = self.systemd.manager().await;
        for instance in &self.instances {
            let result = systemd::run_job(&mgr, Job::Start, &instance.unit).await;
            assert_eq!(result, "done", "{}", self.systemd.log_tail(30));
        }
        for instance in &self.instances {
            let url = format!("http://127.0.0.1:{}/", instance.port);
            if let Err(e) = crate::support::wait_for_http_ok(&url, START_TIMEOUT).await {
                panic!("{}: {e}\n{}", instance.unit, self.systemd.log_tail(30));
            }
        }
    }

    /// Writes each sidekick's config and starts it as a host process, or as `sidekick@N.service`
    /// in the container when the spec says so.
    async fn start_sidekicks(&mut self) {
        let in_units = self.spec.sidekick_units;
        for i in 0..self.instances.len() {
            let name = self.instances[i].name.clone();
            let (dropin_dir, state_dir) = match in_units {
                true => (
                    PathBuf::from(super::units::CONTAINER_UNIT_DIR),
                    PathBuf::from(format!("/var/lib/sidekick/{name}")),
                ),
                false => (
                    self.systemd.unit_dir(),
                    self.dir.path().join(format!("state-{name}")),
                ),
            };
            if in_units {
                self.instances[i].config = self.systemd.unit_dir().join(format!("{name}.toml"));
            }
            let config = SidekickConfig {
                spec: &self.spec,
                unit: &self.instances[i].unit,
                port: self.instances[i].port,
                // Rendered inside `endpoints = ["…"]`: the members, each quoted.
                etcd: &self.etcd.endpoints().join("\", \""),
                update_server: &self.updates.endpoint(),
                dropin_dir: &dropin_dir,
                state_dir: &state_dir,
            }
            .render();
            let config = match self.spec.runtime {
                AppRuntime::Docker => config,
                AppRuntime::Quadlet => super::quadlet::sidekick_config(config, self.dir.path()),
            };
            std::fs::write(&self.instances[i].config, config).expect("write sidekick config");
            if !in_units {
                self.start_sidekick(i);
            }
        }
        if in_units {
            self.start_sidekick_units().await;
        }
    }

    /// Starts (or starts again) the sidekick of instance `i` (0-based) on its config.
    pub fn start_sidekick(&mut self, i: usize) {
        self.start_sidekick_with_env(i, &[]);
    }

    /// [`Fleet::start_sidekick`] with `env` added to the sidekick's environment.
    pub fn start_sidekick_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let root = self.dir.path().join("config-root");
        let instance = &mut self.instances[i];
        let log = self.dir.path().join(format!("{}.log", instance.name));
        instance.sidekick = Some(SidekickProcess::spawn_with_env(
            &self.spec.sidekick,
            &instance.config,
            &root,
            self.systemd.bus_address(),
            &log,
            env,
        ));
    }

    /// The pids of the sidekicks running now.
    pub fn sidekick_pids(&self) -> Vec<i32> {
        self.instances
            .iter()
            .filter_map(|i| i.sidekick.as_ref().map(SidekickProcess::pid))
            .collect()
    }

    /// The sidekick of instance `i` (0-based); panics when it was never started.
    pub fn sidekick(&mut self, i: usize) -> &mut SidekickProcess {
        self.instances[i]
            .sidekick
            .as_mut()
            .expect("sidekick started")
    }

    /// Stops the sidekick of instance `i` with SIGTERM (it deregisters) and waits for its exit.
    pub fn stop_sidekick(&mut self, i: usize) {
        if let Some(mut sidekick) = self.instances[i].sidekick.take() {
            sidekick.stop();
        }
    }

    /// SIGKILLs the sidekick of instance `i`, as a crash would.
    pub fn kill_sidekick(&mut self, i: usize) {
        if let Some(mut sidekick) = self.instances[i].sidekick.take() {
            sidekick.kill();
        }
    }

    /// The image reference of `version` in the local registry (pushed at start).
    pub fn image(&self, version: &str) -> &str {
        self.images
            .get(version)
            .unwrap_or_else(|| panic!("version {version} was not pushed: add it to the spec"))
    }

    /// Publishes `version` on the update service, pointing at its image in the registry.
    pub async fn publish(&self, version: &str) {
        self.updates.publish(version, self.image(version)).await;
    }

    /// Waits until some instance takes an update slot (seen on `slots`, a watch on
    /// [`SLOTS_PREFIX`]): the first sign that a swap started after a publish.
    pub async fn wait_swap_started(
        &self,
        slots: &super::rotation::KeyWatch,
        timeout: Duration,
    ) -> Result<(), String> {
        poll_until(timeout, "an instance takes an update slot", || async {
            match slots.events().iter().any(|e| e.put) {
                true => Ok(()),
                false => Err("no slot taken (is the swap in this build?)"),
            }
        })
        .await
    }

    /// Waits until `n` instances have a Traefik server key.
    pub async fn wait_registered(&self, n: usize, timeout: Duration) {
        let registered = poll_until(timeout, &format!("{n} instances registered"), || async {
            match count_keys(&self.client, SERVERS_PREFIX).await {
                count if count == n => Ok(()),
                count => Err(format!("{count} registered")),
            }
        })
        .await;
        if let Err(e) = registered {
            panic!("{e}\n{}", self.logs(20));
        }
    }

    /// The journal of instance `i` (`daemon.state_dir/<instance>/journal.json`).
    pub fn journal(&self, i: usize) -> PathBuf {
        let name = &self.instances[i].name;
        self.dir
            .path()
            .join(format!("state-{name}"))
            .join(name)
            .join("journal.json")
    }

    /// The fleet's temp dir (configs, state, the Podman configuration).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How the fleet was set up.
    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    /// Runs `sidekick ARGS --config <instance 0's config>`; its stdout and stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.spec.sidekick)
            .args(args)
            .arg("--config")
            .arg(&self.instances[0].config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.systemd.bus_address())
            .env("SIDEKICK_CONFIG_ROOT", self.dir.path().join("config-root"))
            .output()
            .expect("run sidekick");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The Omaha machine id of instance `i`, as its sidekick derives it.
    pub fn machine_id(&self, i: usize) -> String {
        sidekick::identity::read_app_machine_id(
            Path::new(sidekick::identity::MACHINE_ID_PATH),
            APP_ID,
            &self.instances[i].unit,
        )
        .expect("app machine id")
    }

    /// The last `lines` of every sidekick's log, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for instance in &self.instances {
            let tail = match &instance.sidekick {
                Some(sidekick) => sidekick.log_tail(lines),
                None => crate::support::tail(&self.sidekick_unit_log(&instance.name), lines),
            };
            out.push_str(&format!("--- {} ---\n{tail}\n", instance.name));
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(60));
        }
    }
}
