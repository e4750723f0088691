//! The unit control `run` wires, as one type (enum dispatch): D-Bus for the daemon, the printing
//! one for `--dry-run`, the
//! environment-file handoff of non-root mode.

use std::time::Duration;

use super::{
    ControlError, DbusUnitControl, DropIn, DryRunUnitControl, EnvFileUnitControl, PreviousDropIn,
    RunningVersion, UnitControl, UnitNow,
};

/// Any of the unit controls `run` uses.
pub enum AnyUnitControl {
    Dbus(DbusUnitControl),
    DryRun(DryRunUnitControl),
    EnvFile(EnvFileUnitControl),
}

macro_rules! dispatch {
    ($self:ident, $control:ident => $call:expr) => {
        match $self {
            AnyUnitControl::Dbus($control) => $call,
            AnyUnitControl::DryRun($control) => $call,
            AnyUnitControl::EnvFile($control) => $call,
        }
    };
}

impl UnitControl for AnyUnitControl {
    async fn write_dropin(&self, dropin: &DropIn) -> Result<PreviousDropIn, ControlError> {
        dispatch!(self, c => c.write_dropin(dropin).await)
    }

    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        dispatch!(self, c => c.restore_dropin(previous).await)
    }

    async fn reload(&self) -> Result<(), ControlError> {
        dispatch!(self, c => c.reload().await)
    }

    async fn restart(&self, timeout: Duration) -> Result<(), ControlError> {
        dispatch!(self, c => c.restart(timeout).await)
    }

    async fn run_transient(&self, argv: &[String], timeout: Duration) -> Result<(), ControlError> {
        dispatch!(self, c => c.run_transient(argv, timeout).await)
    }

    async fn prepull(
        &self,
        image: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), ControlError> {
        dispatch!(self, c => c.prepull(image, argv, timeout).await)
    }

    async fn running(&self) -> Result<RunningVersion, ControlError> {
        dispatch!(self, c => c.running().await)
    }
    async fn unit_now(&self) -> Result<UnitNow, ControlError> {
        dispatch!(self, c => c.unit_now().await)
    }
}
