//! The unit control of `--dry-run`: prints each call the swap would make on the unit
//! (`dry-run: would …`) and plays it on an in-memory unit, so the swap goes on as if systemd had
//! done it: the drop-in is kept in memory and a restart takes the in-memory unit out of `active`
//! and back.

use std::path::PathBuf;
use std::time::Duration;

use super::dropin::dropin_path;
use super::{ControlError, DropIn, MemoryUnitControl, PreviousDropIn, RunningVersion, UnitControl};
use crate::dry_run::would;
use crate::systemd::{ActiveState, MemoryUnits};

/// Prints unit calls and plays them on memory.
pub struct DryRunUnitControl {
    unit: String,
    dropin: PathBuf,
    memory: MemoryUnitControl,
    units: MemoryUnits,
}

impl DryRunUnitControl {
    /// Controls `unit` (in `units`) running `base`; the drop-in would live under `dropin_dir`.
    pub fn new(
        unit: &str,
        dropin_dir: &std::path::Path,
        base: RunningVersion,
        units: MemoryUnits,
    ) -> DryRunUnitControl {
        DryRunUnitControl {
            unit: unit.to_string(),
            dropin: dropin_path(dropin_dir, unit),
            memory: MemoryUnitControl::new(base),
            units,
        }
    }
}

impl UnitControl for DryRunUnitControl {
    async fn write_dropin(&self, dropin: &DropIn) -> Result<PreviousDropIn, ControlError> {
        would(format_args!(
            "write {} setting SIDEKICK_IMAGE={} SIDEKICK_VERSION={}",
            self.dropin.display(),
            dropin.image,
            dropin.version
        ));
        self.memory.write_dropin(dropin).await
    }

    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        match previous {
            PreviousDropIn::Absent => would(format_args!("remove {}", self.dropin.display())),
            PreviousDropIn::Contents(_) => would(format_args!(
                "restore the previous {}",
                self.dropin.display()
            )),
        }
        self.memory.restore_dropin(previous).await
    }

    async fn reload(&self) -> Result<(), ControlError> {
        would("reload systemd (Manager.Reload) to read the drop-in");
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
        would(format_args!(
            "run `{}` as a transient unit and wait up to {} for it",
            argv.join(" "),
            humantime::format_duration(timeout)
        ));
        self.memory.run_transient(argv, timeout).await
    }

    async fn running(&self) -> Result<RunningVersion, ControlError> {
        self.memory.running().await
    }
}
