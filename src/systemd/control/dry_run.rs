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

impl DryRunUnitControl {
    /// What writing the version would do, after the mode's own checks of the values.
    fn write_text(&self, dropin: &DropIn) -> Result<String, ControlError> {
        let (image, version) = (&dropin.image, &dropin.version);
        Ok(match &self.handoff {
            DryRunHandoff::DropIn {
                kind: UnitKind::Service,
                path,
            } => {
                super::dropin::render(dropin)?;
                format!(
                    "write {} setting SIDEKICK_IMAGE={image} SIDEKICK_VERSION={version}",
                    path.display()
                )
            }
            DryRunHandoff::DropIn { kind, path } => {
                kind.render(dropin)?;
                format!(
                    "write {} setting Image={image} and SIDEKICK_IMAGE={image} \
                     SIDEKICK_VERSION={version}",
                    path.display()
                )
            }
            DryRunHandoff::EnvironmentFile {
                request,
                version_unit,
                env_file,
            } => {
                envfile::check(dropin)?;
                format!(
                    "write {} (SIDEKICK_IMAGE={image} SIDEKICK_VERSION={version}) and start \
                     {version_unit} (StartUnit), which writes {}",
                    request.display(),
                    env_file.display()
                )
            }
        })
    }

    /// What putting `previous` back would do.
    fn restore_text(&self, previous: &PreviousDropIn) -> String {
        match (&self.handoff, previous) {
            (DryRunHandoff::DropIn { path, .. }, PreviousDropIn::Absent) => {
                format!("remove {}", path.display())
            }
            (DryRunHandoff::DropIn { path, .. }, PreviousDropIn::Contents(_)) => {
                format!("restore the previous {}", path.display())
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
                format!(
                    "write {} and start {version_unit} (StartUnit), which {does} {}",
                    request.display(),
                    env_file.display()
                )
            }
        }
    }

    /// What the reload would do; `None` where the real run reloads nothing (systemd reads
    /// `EnvironmentFile=` at each start).
    fn reload_text(&self) -> Option<String> {
        match &self.handoff {
            DryRunHandoff::DropIn {
                kind: UnitKind::Service,
                ..
            } => Some("reload systemd (Manager.Reload) to read the drop-in".into()),
            DryRunHandoff::DropIn {
                kind: UnitKind::Quadlet { container_file },
                ..
            } => Some(format!(
                "reload systemd (Manager.Reload): Quadlet generates {} again from \
                 {container_file} and its drop-in",
                self.unit
            )),
            DryRunHandoff::EnvironmentFile { .. } => None,
        }
    }

    /// What the pre-pull of `image` would run: `argv` as a transient unit, or the
    /// environment-file mode's template (its polkit rule grants no transient unit).
    fn prepull_text(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<String, ControlError> {
        let within = humantime::format_duration(timeout);
        match self.handoff {
            DryRunHandoff::EnvironmentFile { .. } => {
                let unit = envfile::template_unit(PREPULL_TEMPLATE, image)?;
                Ok(format!(
                    "start {unit} (StartUnit), which pulls {image}, and wait up to {within} for it"
                ))
            }
            DryRunHandoff::DropIn { .. } => Ok(format!(
                "run `{}` as a transient unit and wait up to {within} for it",
                argv.join(" ")
            )),
        }
    }
}

impl UnitControl for DryRunUnitControl {
    async fn write_dropin(&self, dropin: &DropIn) -> Result<PreviousDropIn, ControlError> {
        would(self.write_text(dropin)?);
        self.memory.write_dropin(dropin).await
    }

    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        would(self.restore_text(previous));
        self.memory.restore_dropin(previous).await
    }

    async fn reload(&self) -> Result<(), ControlError> {
        if let Some(text) = self.reload_text() {
            would(text);
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
        would(self.prepull_text("", argv, timeout)?);
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
        would(self.prepull_text(image, argv, timeout)?);
        Ok(())
    }

    async fn running(&self) -> Result<RunningVersion, ControlError> {
        self.memory.running().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(handoff: DryRunHandoff) -> DryRunUnitControl {
        DryRunUnitControl::new(
            "web@1.service",
            handoff,
            RunningVersion::default(),
            MemoryUnits::new(ActiveState::Active),
        )
    }

    fn dropin(image: &str) -> DropIn {
        DropIn {
            image: image.into(),
            version: "2.0.0".into(),
        }
    }

    #[test]
    fn each_call_is_worded_for_the_handoff_the_real_run_uses() {
        let (dropins, quadlets) = (Path::new("/etc/systemd/system"), Path::new("/q"));
        let unit = "web@1.service";
        let service = control(DryRunHandoff::dropin(
            UnitKind::Service,
            unit,
            dropins,
            quadlets,
        ));
        let quadlet = control(DryRunHandoff::dropin(
            UnitKind::Quadlet {
                container_file: "web@1.container".into(),
            },
            unit,
            dropins,
            quadlets,
        ));
        let envfile = control(
            DryRunHandoff::environment_file("web-1", Path::new("/s"), Path::new("/v")).unwrap(),
        );
        let v2 = dropin("localhost:5000/web:2.0.0");
        assert_eq!(
            service.write_text(&v2).unwrap(),
            "write /etc/systemd/system/web@1.service.d/50-sidekick.conf setting \
             SIDEKICK_IMAGE=localhost:5000/web:2.0.0 SIDEKICK_VERSION=2.0.0"
        );
        assert_eq!(
            quadlet.write_text(&v2).unwrap(),
            "write /q/web@1.container.d/50-sidekick.conf setting Image=localhost:5000/web:2.0.0 \
             and SIDEKICK_IMAGE=localhost:5000/web:2.0.0 SIDEKICK_VERSION=2.0.0"
        );
        assert_eq!(
            envfile.write_text(&v2).unwrap(),
            "write /s/web-1/version.request (SIDEKICK_IMAGE=localhost:5000/web:2.0.0 \
             SIDEKICK_VERSION=2.0.0) and start sidekick-version@web-1.service (StartUnit), which \
             writes /v/web-1.env"
        );
        assert_eq!(
            quadlet.restore_text(&PreviousDropIn::Absent),
            "remove /q/web@1.container.d/50-sidekick.conf"
        );
        assert_eq!(
            envfile.restore_text(&PreviousDropIn::Contents(String::new())),
            "write /s/web-1/version.request and start sidekick-version@web-1.service \
             (StartUnit), which restores the previous /v/web-1.env"
        );
        assert!(
            service
                .reload_text()
                .unwrap()
                .contains("to read the drop-in")
        );
        assert!(
            quadlet
                .reload_text()
                .unwrap()
                .contains("Quadlet generates web@1.service again from web@1.container")
        );
        assert_eq!(envfile.reload_text(), None, "the real run reloads nothing");
        let argv = ["docker".to_string(), "pull".into(), "web:2".into()];
        let within = Duration::from_secs(60);
        assert_eq!(
            service.prepull_text("web:2", &argv, within).unwrap(),
            "run `docker pull web:2` as a transient unit and wait up to 1m for it"
        );
        assert_eq!(
            envfile
                .prepull_text("localhost:5000/web:2.0.0", &argv, within)
                .unwrap(),
            "start sidekick-prepull@localhost:5000_sweb:2.0.0.service (StartUnit), which pulls \
             localhost:5000/web:2.0.0, and wait up to 1m for it"
        );
    }

    #[tokio::test]
    async fn values_the_real_run_of_the_mode_refuses_are_refused() {
        let envfile = control(
            DryRunHandoff::environment_file("web-1", Path::new("/s"), Path::new("/v")).unwrap(),
        );
        // Not an image reference: sidekick-version@ would refuse it.
        let err = envfile.write_dropin(&dropin("web 2")).await.unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let err = envfile
            .run_transient(&["/bin/true".to_string()], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        assert!(DryRunHandoff::environment_file("../x", Path::new("/s"), Path::new("/v")).is_err());
    }
}
