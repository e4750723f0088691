//! [`EnvFileUnitControl`]: the [`UnitControl`] of `swap.handoff = "environment-file"`. Restart and
//! the unit's state go through the D-Bus control as in drop-in mode; the version goes through
//! `sidekick-version@.service` and the pre-pull through `sidekick-prepull@.service` (both started
//! with `StartUnit`, as the polkit rule allows; a pre-pull the swap gives up on is stopped with
//! `StopUnit`, as the transient one is), and there is nothing to reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, warn};
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::ServiceProxy;

use super::super::dbus::{self, DbusUnitControl};
use super::super::{ControlError, DropIn, PreviousDropIn, RunningVersion, UnitControl, UnitNow};
use super::{PREPULL_TEMPLATE, VERSION_TEMPLATE};
use crate::systemd::environment::{self, IMAGE_VARIABLE, VERSION_VARIABLE};

/// Longest `sidekick-version@` run: it reads and writes two short files.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The unit control of a sidekick that hands the version over through an environment file.
pub struct EnvFileUnitControl {
    dbus: DbusUnitControl,
    instance: String,
    request: PathBuf,
    env_file: PathBuf,
}

impl EnvFileUnitControl {
    /// Hands `instance`'s versions over through `<state_dir>/<instance>/version.request` and
    /// `<versions_dir>/<instance>.env`; restarts through `dbus`.
    pub fn new(
        dbus: DbusUnitControl,
        instance: &str,
        state_dir: &Path,
        versions_dir: &Path,
    ) -> Result<EnvFileUnitControl, ControlError> {
        super::check_instance_name(instance)?;
        super::template_unit(VERSION_TEMPLATE, instance)?;
        Ok(EnvFileUnitControl {
            dbus,
            instance: instance.to_string(),
            request: super::request_path(state_dir, instance),
            env_file: super::env_path(versions_dir, instance),
        })
    }

    /// The file the app unit reads (`EnvironmentFile=`).
    pub fn env_file(&self) -> &Path {
        &self.env_file
    }

    /// Whether the unit names the file in its `EnvironmentFile=` (its `EnvironmentFiles`
    /// property): without that, a swap would write a version the unit never reads.
    pub async fn unit_reads_env_file(&self) -> Result<bool, ControlError> {
        let path = self
            .dbus
            .manager()
            .load_unit(self.unit().to_string())
            .await?;
        let service = ServiceProxy::builder(self.dbus.connection())
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let files = service.environment_files().await?;
        Ok(files
            .iter()
            .any(|(file, _)| Path::new(file) == self.env_file))
    }

    /// `StartUnit(unit)` and its `JobRemoved`: `Ok` for `done`, else how its command ended.
    async fn run_unit(&self, unit: &str, timeout: Duration) -> Result<(), ControlError> {
        let manager = self.dbus.manager();
        let mut removed = dbus::job_signals(manager).await?;
        let job = manager
            .start_unit(unit.to_string(), "replace".into())
            .await?;
        debug!(unit, job = job.as_str(), "template unit started");
        match dbus::wait_removed(&mut removed, &job, timeout).await? {
            Some(result) if result == "done" => Ok(()),
            Some(result) => Err(ControlError::CommandFailed {
                unit: unit.to_string(),
                status: self.dbus.exit_status(unit).await,
                result,
            }),
            None => {
                dbus::stop_transient(manager, unit).await;
                Err(ControlError::Timeout {
                    unit: unit.to_string(),
                    timeout,
                })
            }
        }
    }

    /// Writes the request and has `sidekick-version@` apply it.
    async fn hand_over(&self, text: String) -> Result<(), ControlError> {
        let path = self.request.clone();
        let written =
            tokio::task::spawn_blocking(move || crate::atomic_file::write(&path, text.as_bytes()))
                .await
                .map_err(|join| std::io::Error::other(join.to_string()))
                .and_then(|r| r);
        written.map_err(|source| ControlError::File {
            path: self.request.clone(),
            source,
        })?;
        let unit = super::template_unit(VERSION_TEMPLATE, &self.instance)?;
        self.run_unit(&unit, APPLY_TIMEOUT).await
    }

    /// The environment file's text now, `None` when there is none.
    async fn read_env_file(&self) -> Result<Option<String>, ControlError> {
        let path = self.env_file.clone();
        let read = tokio::task::spawn_blocking(move || crate::atomic_file::read(&path))
            .await
            .map_err(|join| std::io::Error::other(join.to_string()))
            .and_then(|r| r);
        let file_error = |source| ControlError::File {
            path: self.env_file.clone(),
            source,
        };
        match read.map_err(file_error)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
                file_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the environment file is not UTF-8",
                ))
            }),
        }
    }
}

impl UnitControl for EnvFileUnitControl {
    async fn write_dropin(&self, values: &DropIn) -> Result<PreviousDropIn, ControlError> {
        let text = super::render(values)?;
        let previous = match self.read_env_file().await? {
            None => PreviousDropIn::Absent,
            Some(text) => PreviousDropIn::Contents(text),
        };
        self.hand_over(text.clone()).await?;
        // The root side validated and wrote it; what systemd will read must be what was asked.
        let now = self.read_env_file().await?;
        if now.as_deref() != Some(text.as_str()) {
            return Err(ControlError::Invalid(format!(
                "{} does not hold the new version after sidekick-version@ ran",
                self.env_file.display()
            )));
        }
        info!(image = %values.image, version = %values.version,
            path = %self.env_file.display(), "handed the new version to the unit's environment file");
        Ok(previous)
    }

    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        let text = match previous {
            PreviousDropIn::Absent => String::new(),
            PreviousDropIn::Contents(text) => match super::restorable(text) {
                (Some(values), _) => super::render(&values)?,
                (None, why) => {
                    warn!(path = %self.env_file.display(), why = why.as_deref().unwrap_or("empty"),
                        "the journaled environment file is not put back as it was: it is removed, so the unit's own defaults apply");
                    String::new()
                }
            },
        };
        let removing = text.is_empty();
        self.hand_over(text).await?;
        let how = if removing {
            "removed the environment file"
        } else {
            "restored the previous environment file"
        };
        info!(path = %self.env_file.display(), "{how}");
        Ok(())
    }

    /// systemd reads `EnvironmentFile=` at each start: nothing to reload.
    async fn reload(&self) -> Result<(), ControlError> {
        Ok(())
    }

    async fn restart(&self, timeout: Duration) -> Result<(), ControlError> {
        self.dbus.restart(timeout).await
    }

    /// Refused: the polkit rule of this mode grants no transient unit (`swap.prune` is not run).
    async fn run_transient(&self, argv: &[String], _: Duration) -> Result<(), ControlError> {
        Err(ControlError::Invalid(format!(
            "no transient unit in environment-file mode ({})",
            argv.join(" ")
        )))
    }

    async fn prepull(
        &self,
        image: &str,
        _argv: &[String],
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let unit = super::template_unit(PREPULL_TEMPLATE, image)?;
        // Armed before the start, as for the transient pre-pull: a swap that gives up on the
        // pull (the daemon stops, the swap is canceled) drops this future and the unit stops
        // (`StopUnit`, which the polkit rule grants for `sidekick-prepull@*`). A timeout stops it
        // in `run_unit`.
        let mut guard = dbus::StopOnDrop::new(self.dbus.manager().clone(), &unit);
        let pulled = self.run_unit(&unit, timeout).await;
        // Lost track of it (the bus went away): the guard stops it if it can.
        if !matches!(pulled, Err(ControlError::Bus(_))) {
            guard.disarm();
        }
        pulled
    }

    /// The unit's `Environment` with the environment file's values over it, as systemd applies
    /// them (`EnvironmentFile=` wins over `Environment=`).
    async fn running(&self) -> Result<RunningVersion, ControlError> {
        let env = environment::service_environment(self.dbus.connection(), self.unit()).await?;
        let value = |name| environment::variable(&env, name).map(str::to_string);
        let mut running = RunningVersion {
            version: value(VERSION_VARIABLE),
            image: value(IMAGE_VARIABLE),
        };
        if let Some(text) = self.read_env_file().await? {
            match super::parse(&text) {
                Ok(Some(values)) => {
                    running.version = Some(values.version);
                    running.image = Some(values.image);
                }
                Ok(None) => {}
                Err(err) => warn!(path = %self.env_file.display(),
                    "the environment file is not one sidekick-version@ writes ({err})"),
            }
        }
        Ok(running)
    }

    async fn unit_now(&self) -> Result<UnitNow, ControlError> {
        self.dbus.unit_now().await
    }
}

impl EnvFileUnitControl {
    fn unit(&self) -> &str {
        self.dbus.unit()
    }
}
