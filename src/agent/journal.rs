//! The swap journal: the in-flight swap persisted at `<daemon.state_dir>/<instance>.json`, written
//! atomically ([`crate::atomic_file`]) before each side effect, so a sidekick killed at any step
//! reaches a consistent end on its next start. [`recover`] decides that end, purely: finish when
//! the unit runs the new version (the swap's own verification then decides), else roll back; send
//! the matching event; release the slot; clear the journal.
//!
//! A journal that cannot be read is an error naming the file, never discarded: it may be the only
//! record that an instance is deregistered and holds its group's slot.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::swap::{self, Failure, Stage, SwapAction, SwapPhase};
use crate::omaha::{Event, error_code};
use crate::systemd::control::RunningVersion;

/// The journal's format; a file with another one is refused.
pub const FORMAT: u32 = 1;

/// Why the journal could not be used.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("failed to access the swap journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the swap journal {} is unreadable ({source}); it records an interrupted update: \
         check the unit's drop-in and the group's slot, then remove the file",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the swap journal {} has format {found}, this sidekick reads format {FORMAT}", path.display())]
    Format { path: PathBuf, found: u32 },
}

impl JournalError {
    /// A stable short name for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            JournalError::Io { .. } => "io",
            JournalError::Malformed { .. } => "malformed",
            JournalError::Format { .. } => "format",
        }
    }
}

/// The file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: u32,
    instance: String,
    swap: SwapPhase,
}

/// One instance's journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    path: PathBuf,
    instance: String,
}

impl Journal {
    /// The journal of `instance` under `state_dir`.
    pub fn new(state_dir: &Path, instance: &str) -> Journal {
        Journal {
            path: state_dir.join(format!("{instance}.json")),
            instance: instance.to_string(),
        }
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the swap's phase, replacing the previous record atomically.
    pub fn write(&self, swap: &SwapPhase) -> Result<(), JournalError> {
        let record = Record {
            format: FORMAT,
            instance: self.instance.clone(),
            swap: swap.clone(),
        };
        let mut text =
            serde_json::to_vec_pretty(&record).map_err(|source| JournalError::Malformed {
                path: self.path.clone(),
                source,
            })?;
        text.push(b'\n');
        crate::atomic_file::write(&self.path, &text).map_err(|source| self.io(source))
    }

    /// The journaled swap, `None` when there is none.
    pub fn read(&self) -> Result<Option<SwapPhase>, JournalError> {
        let Some(text) = crate::atomic_file::read(&self.path).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        let record: Record =
            serde_json::from_slice(&text).map_err(|source| JournalError::Malformed {
                path: self.path.clone(),
                source,
            })?;
        if record.format != FORMAT {
            return Err(JournalError::Format {
                path: self.path.clone(),
                found: record.format,
            });
        }
        Ok(Some(record.swap))
    }

    /// Removes the journal: the swap is over.
    pub fn clear(&self) -> Result<(), JournalError> {
        crate::atomic_file::remove(&self.path)
            .map(|_| ())
            .map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Where a start resumes a journaled swap, and what it does first. `observed` is what systemd
/// says the unit runs now (never the journal alone).
///
/// - Nothing touched the instance yet (pre-pull, slot): release the slot, no event.
/// - Deregistered but the unit untouched (drain, fence): serve again, 3/0 [`error_code::GENERIC`],
///   release.
/// - The drop-in may be written (write, restart, verify): when systemd reports the new version,
///   restart onto it unless the journal says the restart finished (systemd reports the new
///   version from `Reload()` on, while the old process still runs), then verify it (healthy in
///   time: 3/1; else the usual rollback); otherwise roll back without blaming the version (3/0
///   [`error_code::GENERIC`], no halt).
/// - Rolling back, or stranded: restore and restart the old version again, keeping the recorded
///   failure.
/// - Registering (verified, not yet confirmed in etcd): register again, then report and release.
/// - Releasing: release again.
pub fn recover(journal: SwapPhase, observed: &RunningVersion) -> (SwapPhase, Vec<SwapAction>) {
    let mut phase = journal;
    let runs_new = observed.version.as_deref() == Some(phase.plan.new.version.as_str());
    let stage = std::mem::replace(&mut phase.stage, Stage::Finished);
    let (stage, actions) = match stage {
        Stage::Prepulling | Stage::AcquiringSlot { .. } | Stage::Releasing => (
            Stage::Releasing,
            vec![SwapAction::ReleaseSlot { retry: false }],
        ),
        Stage::Deregistering | Stage::Draining | Stage::Fencing => {
            let event = Event::Failed {
                error_code: error_code::GENERIC,
            };
            let actions = vec![
                SwapAction::SendEvent(event),
                SwapAction::ReleaseSlot { retry: false },
            ];
            (Stage::Releasing, actions)
        }
        // systemd reports the new version from `Reload()` on, before any restart: unless the
        // journal says the restart finished, restart onto it again before verifying.
        Stage::WritingDropIn | Stage::Restarting if runs_new => {
            phase.unit_active = false;
            (Stage::Restarting, vec![SwapAction::Restart])
        }
        Stage::Verifying { .. } if runs_new => {
            phase.unit_active = false;
            let actions = vec![SwapAction::StartVerifyDeadline];
            (Stage::Verifying { passes: 0 }, actions)
        }
        Stage::WritingDropIn | Stage::Restarting | Stage::Verifying { .. } => {
            let failure = Failure {
                code: error_code::GENERIC,
                reason: format!(
                    "the update to {} was interrupted before it ran",
                    phase.plan.new.version
                ),
                halt: false,
            };
            swap::roll_back(&mut phase, failure)
        }
        Stage::RollingBack { failure }
        | Stage::VerifyingOld { failure, .. }
        | Stage::Stranded { failure, .. } => swap::roll_back(&mut phase, failure),
        // Verified before the stop: registered again once healthy, then reported and released.
        Stage::Registering { failure } => {
            (Stage::Registering { failure }, vec![SwapAction::Register])
        }
        Stage::Finished => (Stage::Finished, vec![SwapAction::ClearJournal]),
    };
    phase.stage = stage;
    (phase, actions)
}

#[cfg(test)]
mod tests;
