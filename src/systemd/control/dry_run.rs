//! The unit control of `--dry-run`: prints each call the swap would make on the unit
//! (`dry-run: would …`) and plays it on an in-memory unit, so the swap goes on as if systemd had
//! done it: the version is kept in memory and a restart takes the in-memory unit out of `active`
//! and back. What it prints follows the hand-off the real run would use ([`DryRunHandoff`]): the
//! unit's drop-in or its Quadlet `.container` file's, or with `swap.handoff =
//! "environment-file"` the version request and `sidekick-version@<instance>.service`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::envfile::{self, PREPULL_TEMPLATE, VERSION_TEMPLATE};
use super::quadlet::UnitKind;
use super::{ControlError, DropIn, MemoryUnitControl, PreviousDropIn, RunningVersion, UnitControl};
use crate::dry_run::would;
use crate::systemd::{ActiveState, MemoryUnits};

/// How the real run would hand a version to the unit: what the dry run says it would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRunHandoff {
    /// `swap.handoff = "drop-in"`: the drop-in at `path` for a unit of `kind`, then `Reload()`.
    DropIn { kind: UnitKind, path: PathBuf },
    /// `swap.handoff = "environment-file"`: the request file, applied by
    /// `sidekick-version@<instance>.service` into `env_file`; the pre-pull through
    /// `sidekick-prepull@<image>.service`; no reload.
    EnvironmentFile {
        request: PathBuf,
        version_unit: String,
        env_file: PathBuf,
    },
}

impl DryRunHandoff {
    /// The drop-in hand-off of `unit` of `kind`, its file where the real run writes it.
    pub fn dropin(kind: UnitKind, unit: &str, dropin_dir: &Path, quadlet_dir: &Path) -> Self {
        let path = kind.dropin_path(unit, dropin_dir, quadlet_dir);
        DryRunHandoff::DropIn { kind, path }
    }

    /// The environment-file hand-off of `instance`, its files where the real run has them.
    pub fn environment_file(
        instance: &str,
        state_dir: &Path,
        versions_dir: &Path,
    ) -> Result<Self, ControlError> {
        envfile::check_instance_name(instance)?;
        Ok(DryRunHandoff::EnvironmentFile {
            request: envfile::request_path(state_dir, instance),
            version_unit: envfile::template_unit(VERSION_TEMPLATE, instance)?,
            env_file: envfile::env_path(versions_dir, instance),
        })
    }

    /// One line on how a granted update would reach `unit`, for a dry run that is never offered
    /// one (it sends no check to a real service).
    pub fn describe(&self, unit: &str) -> String {
        match self {
            DryRunHandoff::DropIn {
                kind: UnitKind::Service,
                path,
            } => format!(
                "swap {unit} on a granted update by writing its drop-in {}, reloading systemd \
                 and restarting it",
                path.display()
            ),
            DryRunHandoff::DropIn {
                kind: UnitKind::Quadlet { container_file },
                path,
            } => format!(
                "swap {unit} on a granted update by writing the drop-in {} of its Quadlet file \
                 {container_file} (Image=), reloading systemd (Quadlet generates {unit} again) \
                 and restarting it",
                path.display()
            ),
            DryRunHandoff::EnvironmentFile {
                request,
                version_unit,
                env_file,
            } => format!(
                "swap {unit} on a granted update by writing the version request {} and starting \
                 {version_unit}, which writes {}, then restarting it (no reload; the pre-pull \
                 runs as {PREPULL_TEMPLATE}@<image>.service)",
                request.display(),
                env_file.display()
            ),
        }
    }
}

/// Prints unit calls and plays them on memory.
pub struct DryRunUnitControl {
    unit: String,
    handoff: DryRunHandoff,
    memory: MemoryUnitControl,
    units: MemoryUnits,
}

impl DryRunUnitControl {
    /// Controls `unit` (in `units`) running `base`, handing versions over as `handoff` says.
    pub fn new(
        unit: &str,
        handoff: DryRunHandoff,
        base: RunningVersion,
        units: MemoryUnits,
    ) -> DryRunUnitControl {
        DryRunUnitControl {
            unit: unit.to_string(),
            handoff,
            memory: MemoryUnitControl::new(base),
            units,
        }
    }

    /// How versions would be handed over.
    pub fn handoff(&self) -> &DryRunHandoff {
        &self.handoff
    }
}

impl UnitControl for DryRunUnitControl {
    async fn write_dropin(&self, dropin: &DropIn) -> Result<PreviousDropIn, ControlError> {
        let (image, version) = (&dropin.image, &dropin.version);
        match &self.handoff {
            DryRunHandoff::DropIn {
                kind: UnitKind::Service,
                path,
            } => would(format_args!(
                "write {} setting SIDEKICK_IMAGE={image} SIDEKICK_VERSION={version}",
                path.display()
            )),
            DryRunHandoff::DropIn { kind, path } => {
                // Refused by the real run as it would be.
                kind.render(dropin)?;
                would(format_args!(
                    "write {} setting Image={image} and SIDEKICK_IMAGE={image} \
                     SIDEKICK_VERSION={version}",
                    path.display()
                ))
            }
            DryRunHandoff::EnvironmentFile {
                request,
                version_unit,
                env_file,
            } => {
                envfile::check(dropin)?;
                would(format_args!(
                    "write {} (SIDEKICK_IMAGE={image} SIDEKICK_VERSION={version}) and start \
                     {version_unit} (StartUnit), which writes {}",
                    request.display(),
                    env_file.display()
                ))
            }
        }
        self.memory.write_dropin(dropin).await
    }

    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        match (&self.handoff, previous) {
            (DryRunHandoff::DropIn { path, .. }, PreviousDropIn::Absent) => {
                would(format_args!("remove {}", path.display()))
            }
            (DryRunHandoff::DropIn { path, .. }, PreviousDropIn::Contents(_)) => {
                would(format_args!("restore the previous {}", path.display()))
            }
            (
                DryRunHandoff::EnvironmentFile {
                    request,
                    version_unit,
                    env_file,
                },
                previous,
            ) => {
                let does = match previous {
                    PreviousDropIn::Absent => "removes",
                    PreviousDropIn::Contents(_) => "restores the previous",
                };
                would(format_args!(
                    "write {} and start {version_unit} (StartUnit), which {does} {}",
                    request.display(),
                    env_file.display()
                ))
            }
        }
        self.memory.restore_dropin(previous).await
    }

    async fn reload(&self) -> Result<(), ControlError> {
        match &self.handoff {
            DryRunHandoff::DropIn {
                kind: UnitKind::Service,
                ..
            } => would("reload systemd (Manager.Reload) to read the drop-in"),
            DryRunHandoff::DropIn {
                kind: UnitKind::Quadlet { container_file },
                ..
            } => would(format_args!(
                "reload systemd (Manager.Reload): Quadlet generates {} again from \
                 {container_file} and its drop-in",
                self.unit
            )),
            // systemd reads `EnvironmentFile=` at each start: the real run reloads nothing.
            DryRunHandoff::EnvironmentFile { .. } => {}
        }
        self.memory.reload().await
    }

    async fn restart(&self, timeout: Duration) -> Result<(), ControlError> {
        would(format_args!(
            "restart {} (RestartUnit, replace) and wait up to {} for the job",
            self.unit,
            humantime::format_duration(timeout)
        ));
        self.memory.restart(timeout).await?;
        self.units.set(ActiveState::Inactive);
        self.units.set(ActiveState::Active);
        Ok(())
    }

    async fn run_transient(&self, argv: &[String], timeout: Duration) -> Result<(), ControlError> {
        if let DryRunHandoff::EnvironmentFile { .. } = self.handoff {
            // As the real control of that mode: its polkit rule grants no transient unit.
            return Err(ControlError::Invalid(format!(
                "no transient unit in environment-file mode ({})",
                argv.join(" ")
            )));
        }
        would(format_args!(
            "run `{}` as a transient unit and wait up to {} for it",
            argv.join(" "),
            humantime::format_duration(timeout)
        ));
        self.memory.run_transient(argv, timeout).await
    }

    async fn prepull(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let DryRunHandoff::EnvironmentFile { .. } = self.handoff else {
            return self.run_transient(argv, timeout).await;
        };
        let unit = envfile::template_unit(PREPULL_TEMPLATE, image)?;
        would(format_args!(
            "start {unit} (StartUnit), which pulls {image}, and wait up to {} for it",
            humantime::format_duration(timeout)
        ));
        Ok(())
    }

    async fn running(&self) -> Result<RunningVersion, ControlError> {
        self.memory.running().await
    }
}
