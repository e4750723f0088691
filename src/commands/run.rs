//! `sidekick run`: the daemon. Keeps the instance registered in etcd exactly while its unit is
//! active and healthy, until SIGTERM or SIGINT; then revokes the lease and exits 0.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, info_span};

use crate::agent::{Agent, Driver, DriverReport};
use crate::cli::{Cli, RunArgs};
use crate::config::{HealthCheck, Settings};
use crate::health::{HealthProbe, HealthStreak};
use crate::registry::address::announced_host;
use crate::registry::{
    Announce, DryRunRegistry, Entry, EtcdRegistry, KeyLayout, MemoryRegistry, Registry,
};
use crate::systemd::{Bus, DbusUnits, UnitManager};

/// Loads the configuration and runs the daemon on a single-threaded runtime (the work is all
/// waiting; one thread keeps the footprint small).
pub fn main(cli: &Cli, args: &RunArgs) -> ExitCode {
    let settings = match super::load_settings(&cli.config_sources()) {
        Ok(settings) => settings,
        Err(code) => return code,
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
    match runtime.block_on(run(settings, args.dry_run)) {
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

/// Wires the production seams from `settings` and drives them until a stop signal.
pub async fn run(settings: Settings, dry_run: bool) -> anyhow::Result<DriverReport> {
    let mut terminate = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM: stopping"),
            _ = interrupt.recv() => info!("SIGINT: stopping"),
        }
    };
    if settings.update.enabled {
        info!(
            "update.enabled is set, but this version does not handle updates yet: registration only"
        );
    }
    let registration = &settings.registration;
    let host = announced_host(registration.host.as_deref())?;
    let entries = KeyLayout::from_settings(registration).entries(&Announce {
        service: settings.instance.service.clone(),
        instance: settings.instance.name.clone(),
        host: host.clone(),
        port: registration.port,
        ttl: registration.ttl,
    });
    let probe = HealthProbe::from_settings(&settings.health)
        .context("failed to set up the health check")?;
    let units = DbusUnits::start(Bus::System, settings.instance.unit.clone());
    info!(
        instance = %settings.instance.name,
        unit = %settings.instance.unit,
        address = format!("{host}:{}", registration.port),
        layout = ?registration.layout,
        "following the unit"
    );
    let report = if !registration.enabled {
        info!("registration.enabled is false: following the unit without registering");
        drive(
            &settings,
            MemoryRegistry::new(),
            probe,
            &units,
            entries,
            shutdown,
        )
        .await
    } else if dry_run {
        let registry = DryRunRegistry::start(settings.etcd.clone(), settings.instance.name.clone());
        drive(&settings, registry, probe, &units, entries, shutdown).await
    } else {
        let registry = EtcdRegistry::start(
            settings.etcd.clone(),
            settings.instance.name.clone(),
            registration.ttl,
        );
        drive(&settings, registry, probe, &units, entries, shutdown).await
    };
    Ok(report)
}

/// Builds the driver around `registry` and runs it.
async fn drive<R: Registry>(
    settings: &Settings,
    registry: R,
    probe: HealthProbe,
    units: &DbusUnits,
    entries: Vec<Entry>,
    shutdown: impl std::future::Future<Output = ()>,
) -> DriverReport {
    let health = &settings.health;
    let driver = Driver {
        agent: Agent::new(
            HealthStreak::new(health.rise, health.fall),
            health.check == HealthCheck::None,
        ),
        registry,
        probe,
        unit: units.unit_state(),
        entries,
        interval: health.interval,
        instance: settings.instance.name.clone(),
    };
    driver.run(shutdown).await
}
