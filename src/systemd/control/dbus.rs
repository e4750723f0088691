//! [`DbusUnitControl`]: the [`UnitControl`] seam over systemd's D-Bus API, through the
//! `zbus_systemd` `systemd1` proxies only (never `systemctl`, never a shell).
//!
//! Every job is awaited the same way: `Manager.Subscribe()` (systemd sends no job signals to a
//! client that has not subscribed), a match on `JobRemoved` set up *before* the call that queues
//! the job, then the `JobRemoved` whose job path is the one the call returned. A job that finishes
//! before the call's reply arrives is therefore still seen.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tracing::{debug, info, warn};
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath};
use zbus_systemd::systemd1::{JobRemovedStream, ManagerProxy, ServiceProxy, UnitProxy};

use super::dropin::{self, dropin_path};
use super::transient;
use super::{ControlError, DropIn, PreviousDropIn, RunningVersion, UnitControl, UnitNow};
use crate::systemd::environment::{self, IMAGE_VARIABLE, VERSION_VARIABLE};

/// systemd's answer to a second `Subscribe()` on one connection: harmless.
const ALREADY_SUBSCRIBED: &str = "org.freedesktop.systemd1.AlreadySubscribed";
/// Extra time, beyond systemd's own stop timeout, to wait for a timed-out pre-pull to stop.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// Controls one unit over a system bus connection.
pub struct DbusUnitControl {
    conn: Connection,
    manager: ManagerProxy<'static>,
    unit: String,
    dropin: PathBuf,
    instance: String,
    /// Suffix of the next transient unit; starts at random so a restarted sidekick does not
    /// collide with a unit left by its earlier life.
    next_transient: AtomicU32,
}

impl DbusUnitControl {
    /// Controls `unit` on `conn`; its drop-in lives in `<dropin_dir>/<unit>.d/`, and transient
    /// units are named after `instance`.
    pub async fn new(
        conn: Connection,
        unit: &str,
        dropin_dir: &Path,
        instance: &str,
    ) -> Result<DbusUnitControl, ControlError> {
        if unit.is_empty() || unit.contains('/') || unit.starts_with('.') {
            return Err(ControlError::Invalid(format!(
                "unit name {unit:?} cannot name a drop-in directory"
            )));
        }
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(DbusUnitControl {
            conn,
            manager,
            unit: unit.to_string(),
            dropin: dropin_path(dropin_dir, unit),
            instance: instance.to_string(),
            next_transient: AtomicU32::new(fastrand::u32(..)),
        })
    }

    /// Where the drop-in is written.
    pub fn dropin_path(&self) -> &Path {
        &self.dropin
    }

    async fn on_file<T: Send + 'static>(
        &self,
        work: impl FnOnce(PathBuf) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let path = self.dropin.clone();
        tokio::task::spawn_blocking(move || work(path))
            .await
            .map_err(|join| ControlError::File {
                path: self.dropin.clone(),
                source: std::io::Error::other(join.to_string()),
            })?
    }

    /// The Manager proxy (for the environment-file handoff's template units).
    pub(super) fn manager(&self) -> &ManagerProxy<'static> {
        &self.manager
    }

    /// The bound unit's name.
    pub(super) fn unit(&self) -> &str {
        &self.unit
    }

    /// The system bus connection.
    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// How a failed transient unit's main process ended, read before it is reset.
    pub(super) async fn exit_status(&self, unit: &str) -> String {
        let read = async {
            let path = self.manager.get_unit(unit.to_string()).await?;
            let service = ServiceProxy::builder(&self.conn)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            let (code, status) = (
                service.exec_main_code().await?,
                service.exec_main_status().await?,
            );
            let result = service.result().await?;
            zbus::Result::Ok(format!(
                "{} (unit result `{result}`)",
                transient::describe_exit(code, status)
            ))
        };
        read.await
            .unwrap_or_else(|err| format!("exit status unknown ({err})"))
    }
}

/// Subscribed, with a `JobRemoved` stream that sees every job queued after it returns.
pub(super) async fn job_signals(
    manager: &ManagerProxy<'_>,
) -> Result<JobRemovedStream, ControlError> {
    match manager.subscribe().await {
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == ALREADY_SUBSCRIBED => {}
        other => other?,
    }
    Ok(manager.receive_job_removed().await?)
}

/// Stops a transient unit and waits for the stop job, so nothing keeps running; then clears a
/// failed state so systemd forgets the unit. Failures are logged: there is nothing else to do.
pub(super) async fn stop_transient(manager: &ManagerProxy<'_>, unit: &str) {
    let stopped = async {
        let mut removed = job_signals(manager).await?;
        let job = manager
            .stop_unit(unit.to_string(), "replace".into())
            .await?;
        wait_removed(&mut removed, &job, transient::STOP_TIMEOUT + STOP_SLACK).await
    };
    match stopped.await {
        Ok(Some(result)) => debug!(unit, result, "stopped the transient unit"),
        Ok(None) => warn!(unit, "the transient unit did not stop in time"),
        Err(err) => warn!(unit, error = %err, "cannot stop the transient unit"),
    }
    forget(manager, unit).await;
}

/// `ResetFailedUnit`, so a failed transient unit is collected; a unit already gone is fine.
async fn forget(manager: &ManagerProxy<'_>, unit: &str) {
    if let Err(err) = manager.reset_failed_unit(unit.to_string()).await {
        debug!(unit, error = %err, "transient unit not reset (already gone?)");
    }
}

/// Stops the transient unit when its caller stops waiting for it (the future is dropped, e.g.
/// when the swap is abandoned), unless [`StopOnDrop::disarm`] was called. A process that exits
/// right after may not get to send the stop.
struct StopOnDrop {
    manager: ManagerProxy<'static>,
    unit: Option<String>,
}

impl StopOnDrop {
    fn disarm(&mut self) {
        self.unit = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(unit) = self.unit.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(
                unit,
                "abandoned transient unit left running: no runtime to stop it"
            );
            return;
        };
        let manager = self.manager.clone();
        info!(unit, "stopping the abandoned transient unit");
        runtime.spawn(async move { stop_transient(&manager, &unit).await });
    }
}

/// The result of `job`'s `JobRemoved`, or `None` when it does not come within `timeout`.
pub(super) async fn wait_removed(
    removed: &mut JobRemovedStream,
    job: &OwnedObjectPath,
    timeout: Duration,
) -> Result<Option<String>, ControlError> {
    let wait = async {
        while let Some(signal) = removed.next().await {
            let args = signal.args()?;
            if args.job.as_str() == job.as_str() {
                return Ok(args.result.to_string());
            }
        }
        Err(ControlError::Bus(zbus::Error::Failure(
            "the system bus connection closed while waiting for a job".into(),
        )))
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result.map(Some),
        Err(_) => Ok(None),
    }
}

impl UnitControl for DbusUnitControl {
    async fn write_dropin(&self, dropin: &DropIn) -> Result<PreviousDropIn, ControlError> {
        let contents = dropin::render(dropin)?;
        let previous = self
            .on_file(move |path| dropin::replace(&path, &contents))
            .await?;
        info!(unit = %self.unit, image = %dropin.image, version = %dropin.version,
            path = %self.dropin.display(), "wrote the version drop-in");
        Ok(previous)
    }

    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        let owned = previous.clone();
        self.on_file(move |path| dropin::restore(&path, &owned))
            .await?;
        let how = match previous {
            PreviousDropIn::Absent => "removed the version drop-in",
            PreviousDropIn::Contents(_) => "restored the previous version drop-in",
        };
        info!(unit = %self.unit, path = %self.dropin.display(), "{how}");
        Ok(())
    }

    async fn reload(&self) -> Result<(), ControlError> {
        Ok(self.manager.reload().await?)
    }

    async fn restart(&self, timeout: Duration) -> Result<(), ControlError> {
        let mut removed = job_signals(&self.manager).await?;
        let job = self
            .manager
            .restart_unit(self.unit.clone(), "replace".into())
            .await?;
        debug!(unit = %self.unit, job = job.as_str(), "restart job queued");
        // On a timeout the job stays queued: the rollback's own restart (mode `replace`)
        // supersedes it.
        match wait_removed(&mut removed, &job, timeout).await? {
            Some(result) if result == "done" => Ok(()),
            // `replace` on a conflicting job (an operator's stop or restart) cancels ours.
            Some(result) if result == "canceled" => Err(ControlError::Canceled {
                unit: self.unit.clone(),
                job: job.as_str().to_string(),
            }),
            Some(result) => Err(ControlError::JobFailed {
                unit: self.unit.clone(),
                job: job.as_str().to_string(),
                result,
            }),
            None => Err(ControlError::Timeout {
                unit: self.unit.clone(),
                timeout,
            }),
        }
    }

    async fn run_transient(&self, argv: &[String], timeout: Duration) -> Result<(), ControlError> {
        let program = transient::resolve_program(argv, std::env::var_os("PATH").as_deref())?;
        let name = transient::unit_name(
            &self.instance,
            self.next_transient.fetch_add(1, Ordering::Relaxed),
        );
        let description = format!(
            "sidekick pre-pull for {}: {}",
            self.instance,
            argv.join(" ")
        );
        let properties = transient::properties(&program, argv, description)?;
        let mut removed = job_signals(&self.manager).await?;
        // Armed before the call: a caller that gives up while it is in flight stops the unit.
        let mut guard = StopOnDrop {
            manager: self.manager.clone(),
            unit: Some(name.clone()),
        };
        let job = match self
            .manager
            .start_transient_unit(name.clone(), "fail".into(), properties, Vec::new())
            .await
        {
            Ok(job) => job,
            Err(err) => {
                guard.disarm();
                return Err(err.into());
            }
        };
        debug!(unit = %name, job = job.as_str(), argv = ?argv, "transient unit started");
        let ended = wait_removed(&mut removed, &job, timeout).await;
        match ended {
            Ok(Some(result)) if result == "done" => {
                guard.disarm();
                Ok(())
            }
            Ok(Some(result)) => {
                guard.disarm();
                let status = self.exit_status(&name).await;
                forget(&self.manager, &name).await;
                Err(ControlError::CommandFailed {
                    unit: name,
                    result,
                    status,
                })
            }
            Ok(None) => {
                stop_transient(&self.manager, &name).await;
                guard.disarm();
                Err(ControlError::Timeout {
                    unit: name,
                    timeout,
                })
            }
            // Lost track of it (the bus went away): the guard stops it if it can.
            Err(err) => Err(err),
        }
    }

    async fn running(&self) -> Result<RunningVersion, ControlError> {
        let env = environment::service_environment(&self.conn, &self.unit).await?;
        let value = |name| environment::variable(&env, name).map(str::to_string);
        Ok(RunningVersion {
            version: value(VERSION_VARIABLE),
            image: value(IMAGE_VARIABLE),
        })
    }
    async fn unit_now(&self) -> Result<UnitNow, ControlError> {
        let path = self.manager.load_unit(self.unit.clone()).await?;
        let unit = UnitProxy::builder(&self.conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let active: String = unit.active_state().await?;
        let active = crate::systemd::ActiveState::parse(&active);
        let (job, _) = unit.job().await?;
        Ok(UnitNow {
            active,
            job_queued: job != 0,
        })
    }
}
