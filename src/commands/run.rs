//! `sidekick run`: the daemon. Keeps the instance registered in etcd exactly while its unit is
//! active and healthy, until SIGTERM or SIGINT; then revokes the lease and exits 0. SIGHUP reads
//! the configuration again and puts what can change in a running process in force ([`reload`]).
//!
//! `--dry-run` reads everything and writes nothing: each write is printed as `dry-run: would …`.
//! With no configuration at all, the dry run runs on the embedded defaults
//! (`config/embedded.toml`) over in-memory seams: an active unit running 1.0.0, a registry and
//! slots that write nowhere, and an update service offering the newest release of a release list.
//! `--once` stops after one pass.
//!
//! The daemon (a dry run too: the socket is in its runtime directory, not etcd or a unit) answers
//! `update-check` and `status` on its control socket, `daemon.control_socket`
//! ([`crate::control`]); one that cannot be set up is logged and the daemon runs without it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, info_span};

use crate::agent::update::journal::{JournalError, JournalLock};
use crate::agent::update::{Denylist, Journal, StepSettings, SwapConfig, UpdatePass};
use crate::agent::{Agent, Driver, DriverOptions, DriverReport, RecordOptions, Seams};
use crate::cli::{Cli, RunArgs};
use crate::config::{
    self, ConfigSources, Handoff, HealthCheck, LoadedConfig, Settings, SlotBackend,
};
use crate::control::server::ControlSocket;
use crate::control::{self, DaemonState};
use crate::etcd::EtcdConnection;
use crate::health::{HealthProbe, HealthStreak};
use crate::image::prune::Pruner;
use crate::metrics::Metrics;
use crate::omaha::{
    AnyUpdateSource, HttpTimeouts, HttpUpdateSource, InMemoryUpdateSource, ReleaseList,
    UpdateBackend,
};
use crate::registry::address::announced_host;
use crate::registry::{Announce, AnyRegistry, Entry, KeyLayout};
use crate::slot::ledger::LeaseLedger;
use crate::slot::{AnySlots, DryRunSlots, EtcdSlots, FleetLockSlots, MemorySlots, SlotHolder};
use crate::systemd::control::envfile;
use crate::systemd::control::{
    AnyUnitControl, DbusUnitControl, DryRunUnitControl, EnvFileUnitControl, RunningVersion,
};
use crate::systemd::environment::{IMAGE_VARIABLE, VERSION_VARIABLE};
use crate::systemd::{ActiveState, Bus, DbusUnits, MemoryUnits, UnitManager};

mod dry_run;
mod reload;
#[cfg(debug_assertions)]
mod stall;
use reload::Reloader;

/// The version and image the embedded example unit runs.
const EMBEDDED_RUNNING: (&str, &str) = ("1.0.0", "registry.example.com/web:1.0.0");

/// What `run` talks to.
enum World {
    /// The configured etcd, systemd and update service.
    Configured,
    /// Nothing outside the process: the embedded defaults of a dry run, offering these releases.
    Embedded(ReleaseList),
}

/// Loads the configuration and runs the daemon on a single-threaded runtime (the work is all
/// waiting; one thread keeps the footprint small).
pub fn main(cli: &Cli, args: &RunArgs) -> ExitCode {
    let sources = cli.config_sources();
    let embedded = args.dry_run && matches!(config::is_absent(&sources), Ok(true));
    let loaded = if embedded {
        config::load_embedded(&sources.root).map_err(|err| {
            eprintln!("sidekick: invalid embedded configuration: {err}");
            ExitCode::from(super::EXIT_CONFIG)
        })
    } else {
        super::load_config(&sources)
    };
    let settings = match loaded {
        Ok(LoadedConfig { settings, .. }) => settings,
        Err(code) => return code,
    };
    let world = if embedded {
        let releases = match &args.releases {
            Some(path) => ReleaseList::from_file(path),
            None => ReleaseList::built_in(),
        };
        match releases {
            Ok(releases) => {
                info!("no configuration found: dry run on the embedded defaults, with no server");
                World::Embedded(releases)
            }
            Err(err) => {
                eprintln!("sidekick: unusable release list: {err}");
                return ExitCode::from(super::EXIT_CONFIG);
            }
        }
    } else {
        if args.releases.is_some() {
            eprintln!(
                "sidekick: --releases applies only to a dry run on the embedded defaults, \
                 and a configuration was found"
            );
            return ExitCode::from(super::EXIT_CONFIG);
        }
        World::Configured
    };
    // One daemon per unit: a second one would swap the same unit beside the first.
    let _journal_lock = match lock_journal(&settings, &world, args.dry_run) {
        Ok(lock) => lock,
        Err(code) => return code,
    };
    // An address that cannot be announced is a configuration problem: exit 2, no restart loop.
    let host = match announced_host(settings.registration.host.as_deref()) {
        Ok(host) => host,
        Err(err) => {
            eprintln!("sidekick: invalid configuration: {err}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sidekick: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Every record carries the unit: the journal gets UNIT= on each entry. The runtime is
    // single-threaded, so the span stays entered for every task it polls.
    let _instance = info_span!("instance", unit = %settings.instance.unit).entered();
    let started = Instant::now();
    match runtime.block_on(run(settings, host, world, sources, args)) {
        Ok(report) => {
            info!(
                etcd_requests = report.etcd_requests,
                uptime_s = format!("{:.1}", started.elapsed().as_secs_f64()),
                "stopped"
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Wires the seams of `world` from `settings` and drives them until a stop signal (or one pass).
async fn run(
    settings: Settings,
    host: String,
    world: World,
    sources: ConfigSources,
    args: &RunArgs,
) -> anyhow::Result<DriverReport> {
    let mut terminate = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let hangups = signal(SignalKind::hangup()).context("failed to handle SIGHUP")?;
    let configured = matches!(world, World::Configured);
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM: stopping"),
            _ = interrupt.recv() => info!("SIGINT: stopping"),
        }
    };
    #[cfg(debug_assertions)]
    stall::on_sigusr2()?;
    let dry_run = args.dry_run;
    let registration = &settings.registration;
    let entries = registration_entries(&settings, &host);
    let probe = HealthProbe::from_settings(&settings.health)
        .context("failed to set up the health check")?;
    let etcd = match world {
        World::Configured => Some(&settings.etcd),
        World::Embedded(_) => None,
    };
    let registry = AnyRegistry::from_settings(registration, etcd, &settings.instance.name, dry_run);
    if !registration.enabled {
        info!("registration.enabled is false: following the unit without registering");
    }
    // The version the unit runs, for the first instance record (before any update pass).
    let running;
    // The unit follower lives as long as the run: dropping it ends its watch.
    let (follower, updates): (Box<dyn UnitManager>, _) = match world {
        World::Embedded(releases) => {
            let (version, image) = EMBEDDED_RUNNING;
            running = Some(version.to_string());
            info!(
                unit = %settings.instance.unit,
                "the embedded unit is active and runs {VERSION_VARIABLE}={version} {IMAGE_VARIABLE}={image}"
            );
            let source = InMemoryUpdateSource::new(releases.newest().cloned());
            let units = MemoryUnits::new(ActiveState::Active);
            // The swap's unit calls are printed, and played on the in-memory unit.
            let control = AnyUnitControl::DryRun(DryRunUnitControl::new(
                &settings.instance.unit,
                dry_run::embedded_handoff(&settings),
                RunningVersion {
                    version: Some(version.to_string()),
                    image: Some(image.to_string()),
                },
                units.clone(),
            ));
            let pass = UpdatePass::new(
                AnyUpdateSource::new(UpdateBackend::Memory(source), true),
                dry_run_slots(&settings),
                control,
                settings.update.clone(),
                swap_config(&settings, true)?,
            );
            (Box::new(units), Some(pass))
        }
        World::Configured => {
            let bus = match system_bus(settings.etcd.timeout).await {
                Ok(conn) => Some(conn),
                // One pass cannot follow a unit it cannot see: say so and stop, not retry.
                Err(why) if args.once => anyhow::bail!("run --once: {why}"),
                Err(why) => {
                    tracing::debug!("{why}; the unit's version is read once the bus answers");
                    None
                }
            };
            running = match &bus {
                Some(conn) => match file_version(&settings) {
                    Some(version) => Some(version),
                    None => version_of(conn, &settings.instance.unit).await,
                },
                None => None,
            };
            let units = DbusUnits::start(Bus::System, settings.instance.unit.clone());
            let pass = if !settings.update.enabled {
                None
            } else if dry_run {
                dry_run::configured_updates(&settings, bus.as_ref())
                    .await
                    .unwrap_or_else(|err| {
                        tracing::warn!("{err:#}; the dry run goes on without update checks");
                        None
                    })
            } else {
                configured_updates(&settings).await.unwrap_or_else(|err| {
                    tracing::error!("{err:#}; no updates are applied: registration only");
                    None
                })
            };
            (Box::new(units), pass)
        }
    };
    let unit = follower.unit_state();
    info!(
        instance = %settings.instance.name,
        unit = %settings.instance.unit,
        address = format!("{host}:{}", registration.port),
        layout = ?registration.keys.layout,
        "following the unit"
    );
    let health = &settings.health;
    let agent = Agent::new(
        HealthStreak::new(health.rise, health.fall),
        health.check == HealthCheck::None,
    );
    let seams = Seams {
        registry,
        probe,
        unit,
        updates,
    };
    let metrics = match settings.daemon.metrics {
        Some(listen) => {
            let metrics = Metrics::new();
            let counted = metrics.clone();
            crate::etcd::lease::on_keepalive_failure(move || counted.keepalive_failed());
            let counted = metrics.clone();
            crate::registry::lease::on_regrant(move || counted.lease_regranted());
            let (bound, _) = crate::metrics::serve(listen, metrics.clone())
                .await
                .with_context(|| format!("failed to serve metrics on {listen}"))?;
            info!("serving Prometheus metrics at http://{bound}/metrics");
            Some(metrics)
        }
        None => None,
    };
    let rollout = seams.updates.as_ref().and_then(|u| u.rollout());
    if let (Some(metrics), Some(rollout)) = (&metrics, rollout) {
        rollout.set_metrics(metrics.rollout().clone());
    }
    let options = DriverOptions {
        entries,
        interval: health.interval,
        instance: settings.instance.name.clone(),
        unit_name: settings.instance.unit.clone(),
        once: args.once,
        metrics,
        // The fleet view: who runs which version, for `sidekick status`.
        record: (registration.enabled && settings.update.enabled).then(|| RecordOptions {
            group: settings.slot.group.clone(),
            host: host.clone(),
            version: running,
        }),
    };
    let (reloads, reloaded) = mpsc::channel(1);
    let reloader = Reloader {
        root: sources.root.clone(),
        sources: configured.then_some(sources),
        running: settings.clone(),
        host: host.clone(),
        dry_run,
    };
    let reloading = tokio::spawn(reloader.follow(hangups, reloads));
    let mut driver = Driver::new(agent, seams, options).with_reloads(reloaded);
    // The instance's runtime directory, when this run makes it: removed again on the way out, so
    // a dry run leaves nothing behind (under systemd, RuntimeDirectory= owns it).
    let created_dirs: Vec<std::path::PathBuf> = settings
        .daemon
        .control_socket
        .as_deref()
        .and_then(std::path::Path::parent)
        .map(|dir| {
            dir.ancestors()
                .take_while(|d| !d.exists())
                .map(std::path::Path::to_path_buf)
                .collect()
        })
        .unwrap_or_default();
    // Removes the socket file when dropped, after the driver stopped.
    let control = match &settings.daemon.control_socket {
        None => {
            info!("daemon.control_socket is off: update-check cannot ask this daemon to check");
            None
        }
        Some(path) => match ControlSocket::bind(path) {
            Ok(socket) => {
                let (link, handle) = control::link(DaemonState::default());
                driver = driver.with_control(link);
                info!(path = %socket.path().display(), "answering update-check and status on the control socket");
                Some(socket.serve(handle))
            }
            Err(err) => {
                tracing::warn!(
                    kind = err.kind(),
                    "{err}; update-check cannot ask this daemon to check"
                );
                None
            }
        },
    };
    let report = driver.run(shutdown).await;
    reloading.abort();
    drop(control);
    drop(follower);
    // Deepest first, and only when empty: nothing else's is removed.
    for dir in created_dirs {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(report)
}

/// The system bus, within `limit`, or one line naming it and why not.
async fn system_bus(limit: std::time::Duration) -> Result<zbus::Connection, String> {
    let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".into());
    match tokio::time::timeout(limit, zbus::Connection::system()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(format!("cannot reach the system bus at {address}: {err}")),
        Err(_) => Err(format!(
            "the system bus at {address} did not answer within {}",
            humantime::format_duration(limit)
        )),
    }
}

/// In environment-file mode, the version in the unit's root-owned environment file, which wins
/// over the unit's `Environment=` as systemd applies them; `None` otherwise.
fn file_version(settings: &Settings) -> Option<String> {
    match settings.swap.handoff {
        Handoff::EnvironmentFile => {
            envfile::file_values(Path::new(envfile::VERSIONS_DIR), &settings.instance.name)
                .map(|values| values.version)
        }
        Handoff::DropIn => None,
    }
}

/// `SIDEKICK_VERSION` of `unit` as systemd reports it; `None` when it cannot be read.
async fn version_of(conn: &zbus::Connection, unit: &str) -> Option<String> {
    let environment = crate::systemd::environment::service_environment(conn, unit)
        .await
        .map_err(|err| tracing::debug!("failed to read the environment of {unit}: {err}"))
        .ok()?;
    crate::systemd::environment::variable(&environment, VERSION_VARIABLE).map(str::to_string)
}

/// The exclusive lock on this instance's journal, for a daemon that applies updates (a dry run
/// writes no journal and takes none). A second daemon of the unit exits 2 saying so; a lock that
/// cannot be taken for another reason is logged, and the swap's journal writes will say more.
fn lock_journal(
    settings: &Settings,
    world: &World,
    dry_run: bool,
) -> Result<Option<JournalLock>, ExitCode> {
    if dry_run || !settings.update.enabled || !matches!(world, World::Configured) {
        return Ok(None);
    }
    // Files of an earlier release, kept flat in the state directory, move into the instance's
    // own directory first (under that release's lock), so a journal a swap left is resumed.
    let (state_dir, name) = (&settings.daemon.state_dir, &settings.instance.name);
    match crate::state_layout::migrate(state_dir, name) {
        Ok(done) => {
            for (from, to) in &done.moved {
                tracing::info!(from = %from.display(), to = %to.display(),
                    "moved a state file into the instance's directory");
            }
            for left in &done.left {
                tracing::warn!(path = %left.display(),
                    "a state file of an earlier release is left in place: the instance's directory already holds its newer one");
            }
        }
        Err(err @ crate::state_layout::MigrationError::Locked { .. }) => {
            eprintln!("sidekick: another sidekick runs for this instance: {err}");
            return Err(ExitCode::from(super::EXIT_CONFIG));
        }
        Err(err) => tracing::warn!("{err}"),
    }
    match Journal::new(&settings.daemon.state_dir, &settings.instance.name).lock() {
        Ok(lock) => Ok(Some(lock)),
        Err(err @ JournalError::Locked { .. }) => {
            eprintln!("sidekick: {err}");
            Err(ExitCode::from(super::EXIT_CONFIG))
        }
        Err(err) => {
            tracing::warn!(kind = err.kind(), "{err}");
            Ok(None)
        }
    }
}

/// The registration's keys and values for `settings`, announcing `host`.
fn registration_entries(settings: &Settings, host: &str) -> Vec<Entry> {
    let registration = &settings.registration;
    KeyLayout::from_settings(&registration.keys).entries(&Announce {
        service: settings.instance.service.clone(),
        instance: settings.instance.name.clone(),
        host: host.to_string(),
        port: registration.port,
        ttl: registration.ttl,
    })
}

/// The update pass of the daemon: the configured update service, slots and the unit over D-Bus,
/// applying what it is offered. `None` without an update server.
async fn configured_updates(
    settings: &Settings,
) -> anyhow::Result<Option<UpdatePass<AnyUnitControl>>> {
    let Some(server) = settings.update.server.clone() else {
        return Ok(None);
    };
    let instance = super::update_check::app_instance(&settings.update, &settings.instance)
        .context("failed to identify the instance to the update service")?;
    let who = SlotHolder {
        holder: instance.machine_id.clone(),
        instance: settings.instance.name.clone(),
    };
    let source = update_client(server, instance, settings)?;
    let slot = &settings.slot;
    let mut rollout = None;
    let slots = match slot.backend {
        SlotBackend::Etcd => {
            let etcd = EtcdConnection::new(settings.etcd.clone());
            let agent = std::sync::Arc::new(rollout_agent(settings, etcd.clone()));
            rollout = Some(agent.clone());
            let ledger = LeaseLedger::new(&settings.daemon.state_dir, &settings.instance.name);
            let slots = EtcdSlots::from_settings(etcd, slot, who)
                .with_rollout(agent)
                .with_ledger(ledger);
            AnySlots::Etcd(Box::new(slots))
        }
        SlotBackend::Fleetlock => {
            let url = slot
                .fleetlock_url
                .as_ref()
                .context("slot.backend is fleetlock but slot.fleetlock_url is not set")?;
            let slots = FleetLockSlots::new(url, &slot.group, &who, &settings.daemon.state_dir)
                .context("failed to set up the FleetLock client")?;
            AnySlots::FleetLock(slots)
        }
        SlotBackend::None => AnySlots::Memory(MemorySlots::new(slot.max, who)),
    };
    let bus = zbus::Connection::system()
        .await
        .context("failed to connect to the system bus")?;
    let control = DbusUnitControl::new(
        bus.clone(),
        &settings.instance.unit,
        &settings.swap.dropin_dir,
        &settings.swap.quadlet_dir,
        &settings.instance.name,
    )
    .await
    .context("failed to set up the unit control")?;
    let (swap, instance) = (&settings.swap, &settings.instance);
    let state_dir = &settings.daemon.state_dir;
    let control = match swap.handoff {
        Handoff::DropIn => {
            // Image housekeeping after each swap (`swap.prune`): starts from the image running now.
            if let Some(pruner) =
                Pruner::new(&swap.prune, state_dir, &instance.name, &instance.unit, bus)
            {
                pruner.note_running(&control).await;
                crate::image::prune::install(pruner);
            }
            AnyUnitControl::Dbus(control)
        }
        Handoff::EnvironmentFile => {
            let control = EnvFileUnitControl::new(
                control,
                &instance.name,
                state_dir,
                Path::new(crate::systemd::control::envfile::VERSIONS_DIR),
            )
            .context("failed to set up the environment-file handoff")?;
            if !swap.prune.is_empty() {
                tracing::info!(
                    "swap.prune is not run with swap.handoff = \"environment-file\": removing images takes a transient unit, which that mode's polkit rule does not grant"
                );
            }
            tracing::info!(path = %control.env_file().display(),
                "the version reaches the unit through its environment file (sidekick-version@.service)");
            match control.unit_reads_env_file().await {
                Ok(true) => {}
                Ok(false) => {
                    let path = control.env_file().display();
                    tracing::error!(
                        unit = %instance.unit,
                        "the unit has no EnvironmentFile= naming {path}: an update would write a \
                         version the unit never reads, fail its verification and halt the group; \
                         add EnvironmentFile=-{path} to the unit (operator guide, \"A non-root \
                         user\")"
                    )
                }
                Err(err) => {
                    tracing::warn!(unit = %instance.unit, "cannot read the unit's EnvironmentFiles: {err}")
                }
            }
            AnyUnitControl::EnvFile(control)
        }
    };
    let pass = UpdatePass::new(
        AnyUpdateSource::new(UpdateBackend::Http(source), false),
        slots,
        control,
        settings.update.clone(),
        swap_config(settings, false)?,
    );
    Ok(Some(match rollout {
        Some(rollout) => pass.with_rollout(rollout),
        None => pass,
    }))
}

/// This instance in its group's rollout: the configured `[rollout]` (a stored policy wins), the
/// floor of the swap estimate from `[swap]`.
fn rollout_agent(settings: &Settings, etcd: EtcdConnection) -> crate::rollout::agent::RolloutAgent {
    crate::rollout::agent::RolloutAgent::new(
        etcd,
        &settings.slot.group,
        &settings.instance.name,
        settings.rollout.clone(),
        rollout_floor(settings),
    )
}

/// The floor of a swap's estimated duration: `swap.drain + swap.start_timeout +
/// swap.verify_timeout` (the rollout adds `min_healthy`).
fn rollout_floor(settings: &Settings) -> std::time::Duration {
    let swap = &settings.swap;
    swap.drain + swap.start_timeout + swap.verify_timeout
}

/// The client of the configured update service.
fn update_client(
    server: url::Url,
    instance: crate::omaha::AppInstance,
    settings: &Settings,
) -> anyhow::Result<HttpUpdateSource> {
    HttpUpdateSource::new(
        server,
        instance,
        HttpTimeouts::default(),
        settings.update.ca_file.as_deref(),
    )
    .context("failed to set up the update client")
}

/// The swap's slow steps as `[swap]` configures them.
fn step_settings(settings: &Settings) -> StepSettings {
    let swap = &settings.swap;
    StepSettings {
        prepull: swap.prepull.clone(),
        drain: swap.drain,
        start_timeout: swap.start_timeout,
    }
}

/// The passes a swap's verification counts: `health.rise`, or 0 with no check.
fn verify_rise(settings: &Settings) -> u32 {
    match settings.health.check {
        HealthCheck::None => 0,
        _ => settings.health.rise.get(),
    }
}

/// How the pass swaps: the configured steps; a dry run writes no journal and no denylist.
fn swap_config(settings: &Settings, dry_run: bool) -> anyhow::Result<SwapConfig> {
    let state_dir = &settings.daemon.state_dir;
    let instance = &settings.instance.name;
    Ok(SwapConfig {
        steps: step_settings(settings),
        verify_timeout: settings.swap.verify_timeout,
        rise: verify_rise(settings),
        journal: Journal::new(state_dir, instance),
        denylist: Denylist::load(state_dir, instance)
            .context("failed to read the update denylist")?,
        dry_run,
    })
}

/// The slots of a dry run: print what would be taken, take nothing.
fn dry_run_slots(settings: &Settings) -> AnySlots {
    let who = SlotHolder {
        holder: settings.instance.name.clone(),
        instance: settings.instance.name.clone(),
    };
    AnySlots::DryRun(DryRunSlots::new(
        settings.slot.group.clone(),
        settings.slot.max,
        who,
    ))
}
