//! The unit control of `run --dry-run`: the hand-off it prints is the one the real run would
//! use for the configured `swap.handoff` and the unit's kind (a unit file of its own or a
//! Quadlet `.container`).

use std::path::Path;

use anyhow::Context as _;

use super::{dry_run_slots, swap_config, update_client};
use crate::agent::update::UpdatePass;
use crate::config::{Handoff, Settings};
use crate::dry_run::would;
use crate::omaha::{AnyUpdateSource, UpdateBackend};
use crate::systemd::control::{
    AnyUnitControl, DbusUnitControl, DryRunHandoff, DryRunUnitControl, RunningVersion, UnitKind,
    envfile,
};
use crate::systemd::{ActiveState, MemoryUnits};

/// The embedded example's hand-off: a drop-in for its unit file (nothing on the host is asked).
pub(super) fn embedded_handoff(settings: &Settings) -> DryRunHandoff {
    let swap = &settings.swap;
    DryRunHandoff::dropin(
        UnitKind::Service,
        &settings.instance.unit,
        &swap.dropin_dir,
        &swap.quadlet_dir,
    )
}

/// The hand-off the real run would use, and how the unit's kind was learnt. The real run reads
/// the kind from the unit's `SourcePath` over D-Bus; so does the dry run when `bus` answers,
/// else it decides from `swap.quadlet_dir`'s files ([`UnitKind::from_quadlet_dir`]) and says so.
/// A unit the real run would refuse is an error.
async fn configured_handoff(
    settings: &Settings,
    bus: Option<&zbus::Connection>,
) -> anyhow::Result<(DryRunHandoff, String)> {
    let (swap, instance) = (&settings.swap, &settings.instance);
    if swap.handoff == Handoff::EnvironmentFile {
        let handoff = DryRunHandoff::environment_file(
            &instance.name,
            &settings.daemon.state_dir,
            Path::new(envfile::VERSIONS_DIR),
        )
        .context("the real run would refuse the environment-file hand-off")?;
        return Ok((handoff, "swap.handoff = \"environment-file\"".into()));
    }
    let asked = match bus {
        Some(conn) => DbusUnitControl::kind_of(conn, &instance.unit)
            .await
            .map_err(|err| tracing::debug!("cannot read the unit's SourcePath: {err}"))
            .ok(),
        None => None,
    };
    let (kind, how) = match asked {
        Some(kind) => (
            kind,
            "the unit's kind from its SourcePath in systemd".to_string(),
        ),
        None => (
            UnitKind::from_quadlet_dir(&instance.unit, &swap.quadlet_dir)
                .context("the real run would refuse the unit")?,
            format!(
                "systemd not asked, no system bus: the unit's kind from the files in \
                 swap.quadlet_dir {}",
                swap.quadlet_dir.display()
            ),
        ),
    };
    let handoff = DryRunHandoff::dropin(kind, &instance.unit, &swap.dropin_dir, &swap.quadlet_dir);
    Ok((handoff, how))
}

/// The update pass of a dry run against the configured service: it names the service and sends
/// nothing to it, so it is offered nothing to swap to; it says once how a granted update would
/// reach the unit.
pub(super) async fn configured_updates(
    settings: &Settings,
    bus: Option<&zbus::Connection>,
) -> anyhow::Result<Option<UpdatePass<AnyUnitControl>>> {
    let Some(server) = settings.update.server.clone() else {
        return Ok(None);
    };
    let instance =
        crate::commands::update_check::app_instance(&settings.update, &settings.instance)
            .context("failed to identify the instance to the update service")?;
    let source = update_client(server, instance, settings)?;
    let (handoff, how) = configured_handoff(settings, bus).await?;
    let unit = &settings.instance.unit;
    would(format_args!("{} ({how})", handoff.describe(unit)));
    // The pass never asks this control: a dry run sends no check to a real service.
    Ok(Some(UpdatePass::new(
        AnyUpdateSource::new(UpdateBackend::Http(source), true),
        dry_run_slots(settings),
        AnyUnitControl::DryRun(DryRunUnitControl::new(
            unit,
            handoff,
            RunningVersion::default(),
            MemoryUnits::new(ActiveState::Unknown),
        )),
        settings.update.clone(),
        swap_config(settings, true)?,
    )))
}
