//! Acting on the bound unit during a swap: the version drop-in, `Reload()`, `RestartUnit` and the
//! pre-pull as a transient unit; or, with `swap.handoff = "environment-file"`, the version through
//! a root-owned environment file and the pre-pull through a template unit ([`envfile`]). The [`UnitControl`] seam has the D-Bus implementation
//! ([`DbusUnitControl`], through the `zbus_systemd` proxies, never `systemctl`) and an in-memory
//! one ([`MemoryUnitControl`]) for unit tests and `--dry-run`. Both refuse the same unsafe
//! drop-in values ([`dropin`]). A unit that Podman's Quadlet generates from a `.container` file
//! gets its drop-in in Quadlet's form ([`quadlet`]).

mod any;
mod dbus;
pub mod dropin;
mod dry_run;
pub mod envfile;
pub mod quadlet;
mod transient;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use thiserror::Error;

pub use any::AnyUnitControl;
pub use dbus::DbusUnitControl;
pub use dry_run::{DryRunHandoff, DryRunUnitControl};
pub use envfile::control::EnvFileUnitControl;
pub use quadlet::UnitKind;

/// What the swap writes into `<dropin_dir>/<unit>.d/50-sidekick.conf`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropIn {
    /// Value of `SIDEKICK_IMAGE`.
    pub image: String,
    /// Value of `SIDEKICK_VERSION`.
    pub version: String,
}

/// The drop-in file as it was before the swap wrote it, so a rollback can put it back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "contents", rename_all = "kebab-case")]
pub enum PreviousDropIn {
    /// There was none: a rollback removes the file.
    Absent,
    /// Its exact contents.
    Contents(String),
}

/// Why a control call failed.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("D-Bus call to systemd failed: {0}")]
    Bus(#[from] zbus::Error),
    /// The job was canceled: another job replaced it (an operator's `systemctl stop` or
    /// `restart` of the unit while ours was queued or running), so it is not the unit's failure.
    #[error("{unit}: job {job} was canceled (another job replaced it)")]
    Canceled { unit: String, job: String },
    #[error("{unit}: job {job} ended with result `{result}`")]
    JobFailed {
        unit: String,
        job: String,
        result: String,
    },
    /// A transient unit's command did not exit 0; `status` says how it ended.
    #[error("{unit}: the command {status} (job result `{result}`)")]
    CommandFailed {
        unit: String,
        result: String,
        status: String,
    },
    #[error("{unit}: no job result within {timeout:?}")]
    Timeout { unit: String, timeout: Duration },
    #[error("failed to write {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ControlError {
    /// A stable short name for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlError::Bus(_) => "bus",
            ControlError::Canceled { .. } => "canceled",
            ControlError::JobFailed { .. } => "job-failed",
            ControlError::CommandFailed { .. } => "command-failed",
            ControlError::Timeout { .. } => "timeout",
            ControlError::File { .. } => "file",
            ControlError::Invalid(_) => "invalid",
        }
    }
}

/// Acts on the bound unit. Every method is one side effect the swap journals before calling.
pub trait UnitControl: Send + Sync {
    /// Writes the drop-in atomically; returns what was there before.
    fn write_dropin(
        &self,
        dropin: &DropIn,
    ) -> impl Future<Output = Result<PreviousDropIn, ControlError>> + Send;

    /// Puts back what [`UnitControl::write_dropin`] returned (removes the file for `Absent`).
    fn restore_dropin(
        &self,
        previous: &PreviousDropIn,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// `Manager.Reload()`: makes systemd read the drop-in.
    fn reload(&self) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// `RestartUnit(unit, "replace")`, waiting for that job's `JobRemoved` within `timeout`;
    /// `Ok` only for the result `done`, [`ControlError::Canceled`] for `canceled`.
    fn restart(&self, timeout: Duration) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// Runs `argv` (no shell) as a transient oneshot unit and waits within `timeout` for it to
    /// exit; `Ok` only when it exited 0.
    fn run_transient(
        &self,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// Pulls `image` ahead of the swap: `argv` (`swap.prepull` with `{image}` filled in) as a
    /// transient unit, or what the control's mode uses instead.
    fn prepull(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ControlError>> + Send {
        let _ = image;
        self.run_transient(argv, timeout)
    }

    /// The unit's `SIDEKICK_VERSION` and `SIDEKICK_IMAGE` as systemd reports them (the Service's
    /// `Environment` property), `None` where unset.
    fn running(&self) -> impl Future<Output = Result<RunningVersion, ControlError>> + Send;

    /// The unit's `ActiveState` and whether a job is queued for it (the Unit's `Job` property),
    /// read now. A control that cannot tell (the in-memory and dry-run ones) says
    /// [`UnitNow::unknown`].
    fn unit_now(&self) -> impl Future<Output = Result<UnitNow, ControlError>> + Send {
        std::future::ready(Ok(UnitNow::unknown()))
    }
}

/// The unit as systemd reports it at one moment: what a start reads before it resumes a
/// journaled swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitNow {
    pub active: crate::systemd::ActiveState,
    /// A job (start, stop, restart) is queued or running for the unit.
    pub job_queued: bool,
}

impl UnitNow {
    /// Nothing known: no decision rests on it.
    pub fn unknown() -> UnitNow {
        UnitNow {
            active: crate::systemd::ActiveState::Unknown,
            job_queued: false,
        }
    }

    /// Stopped by someone, with nothing in flight: `inactive` and no job queued. A restart job
    /// passes through `inactive` only while it is still queued (systemd turns it into a start
    /// job once the stop is done), and the sidekick's own jobs end `active` or `failed`; so a
    /// unit found so after a stop of the sidekick was stopped by an operator (`systemctl stop`).
    pub fn stopped(&self) -> bool {
        self.active == crate::systemd::ActiveState::Inactive && !self.job_queued
    }
}

/// What the unit runs, read back from systemd.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunningVersion {
    pub version: Option<String>,
    pub image: Option<String>,
}

/// One call the in-memory control saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCall {
    WriteDropIn(DropIn),
    RestoreDropIn(PreviousDropIn),
    Reload,
    Restart,
    /// The transient unit's argv and the time it was given.
    RunTransient(Vec<String>, Duration),
}

/// An in-memory unit control: records calls, keeps the drop-in in memory, and fails the calls a
/// test asks it to fail.
#[derive(Debug, Clone, Default)]
pub struct MemoryUnitControl {
    inner: Arc<Mutex<MemoryControlState>>,
}

#[derive(Debug, Default)]
struct MemoryControlState {
    calls: Vec<ControlCall>,
    dropin: Option<DropIn>,
    base: RunningVersion,
    fail_restart: bool,
    cancel_restart: bool,
    fail_transient: bool,
}

impl MemoryUnitControl {
    /// A unit running `base` (its own `Environment=` defaults) with no drop-in.
    pub fn new(base: RunningVersion) -> MemoryUnitControl {
        let control = MemoryUnitControl::default();
        control.lock().base = base;
        control
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<ControlCall> {
        self.lock().calls.clone()
    }

    /// Makes later restarts fail (or succeed again).
    pub fn fail_restart(&self, fail: bool) {
        self.lock().fail_restart = fail;
    }

    /// Makes later restarts end as systemd ends a restart job another job replaced (or succeed
    /// again).
    pub fn cancel_restart(&self, cancel: bool) {
        self.lock().cancel_restart = cancel;
    }

    /// Makes later transient runs fail (or succeed again).
    pub fn fail_transient(&self, fail: bool) {
        self.lock().fail_transient = fail;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryControlState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl UnitControl for MemoryUnitControl {
    async fn write_dropin(&self, dropin: &DropIn) -> Result<PreviousDropIn, ControlError> {
        let mut state = self.lock();
        state.calls.push(ControlCall::WriteDropIn(dropin.clone()));
        dropin::render(dropin)?;
        let previous = match state.dropin.replace(dropin.clone()) {
            Some(old) => PreviousDropIn::Contents(dropin::render(&old)?),
            None => PreviousDropIn::Absent,
        };
        Ok(previous)
    }

    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        let mut state = self.lock();
        state
            .calls
            .push(ControlCall::RestoreDropIn(previous.clone()));
        state.dropin = match previous {
            PreviousDropIn::Absent => None,
            PreviousDropIn::Contents(text) => {
                let value = |name: &str| {
                    text.lines().find_map(|line| {
                        line.strip_prefix("Environment=")?
                            .strip_prefix(name)?
                            .strip_prefix('=')
                            .map(str::to_string)
                    })
                };
                match (value("SIDEKICK_IMAGE"), value("SIDEKICK_VERSION")) {
                    (Some(image), Some(version)) => Some(DropIn { image, version }),
                    _ => None,
                }
            }
        };
        Ok(())
    }

    async fn reload(&self) -> Result<(), ControlError> {
        self.lock().calls.push(ControlCall::Reload);
        Ok(())
    }

    async fn restart(&self, timeout: Duration) -> Result<(), ControlError> {
        let mut state = self.lock();
        state.calls.push(ControlCall::Restart);
        if state.cancel_restart {
            return Err(ControlError::Canceled {
                unit: "memory".into(),
                job: "0".into(),
            });
        }
        if state.fail_restart {
            return Err(ControlError::Timeout {
                unit: "memory".into(),
                timeout,
            });
        }
        Ok(())
    }

    async fn run_transient(&self, argv: &[String], timeout: Duration) -> Result<(), ControlError> {
        let mut state = self.lock();
        state
            .calls
            .push(ControlCall::RunTransient(argv.to_vec(), timeout));
        if state.fail_transient {
            return Err(ControlError::JobFailed {
                unit: "memory-transient".into(),
                job: "0".into(),
                result: "failed".into(),
            });
        }
        Ok(())
    }

    async fn running(&self) -> Result<RunningVersion, ControlError> {
        let state = self.lock();
        Ok(match &state.dropin {
            Some(dropin) => RunningVersion {
                version: Some(dropin.version.clone()),
                image: Some(dropin.image.clone()),
            },
            None => state.base.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_control_reports_the_dropin_and_restores_the_previous_one() {
        let base = RunningVersion {
            version: Some("1.0.0".into()),
            image: Some("web:1.0.0".into()),
        };
        let control = MemoryUnitControl::new(base.clone());
        let v2 = DropIn {
            image: "web:2.0.0".into(),
            version: "2.0.0".into(),
        };
        let previous = control.write_dropin(&v2).await.unwrap();
        assert_eq!(previous, PreviousDropIn::Absent);
        assert_eq!(
            control.running().await.unwrap().version.as_deref(),
            Some("2.0.0")
        );
        let v3 = DropIn {
            image: "web:3.0.0".into(),
            version: "3.0.0".into(),
        };
        let previous = control.write_dropin(&v3).await.unwrap();
        control.restore_dropin(&previous).await.unwrap();
        assert_eq!(
            control.running().await.unwrap().version.as_deref(),
            Some("2.0.0")
        );
        control
            .restore_dropin(&PreviousDropIn::Absent)
            .await
            .unwrap();
        assert_eq!(control.running().await.unwrap(), base);
        control.fail_restart(true);
        assert!(control.restart(Duration::from_secs(1)).await.is_err());
        assert_eq!(control.calls().len(), 5);
    }

    #[tokio::test]
    async fn memory_control_refuses_the_same_unsafe_values_as_the_dbus_one() {
        let control = MemoryUnitControl::new(RunningVersion::default());
        let unsafe_dropin = DropIn {
            image: "web:2\nExecStartPre=/bin/false".into(),
            version: "2.0.0".into(),
        };
        let err = control.write_dropin(&unsafe_dropin).await.unwrap_err();
        assert_eq!(err.kind(), "invalid");
        assert_eq!(control.running().await.unwrap(), RunningVersion::default());
    }
}
