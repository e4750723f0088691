//! The swap journal: the in-flight swap persisted at `<daemon.state_dir>/<instance>/journal.json`, written
//! atomically ([`crate::atomic_file`]) before each side effect, so a sidekick killed at any step
//! reaches a consistent end on its next start; what that end is, [`crate::agent::machine::recover`]
//! decides. This module is the file only.
//!
//! A journal that cannot be read is an error naming the file, never discarded: it may be the only
//! record that an instance is deregistered and holds its group's slot.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::agent::machine::swap::SwapPhase;

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
    #[error(
        "another sidekick runs for this instance: its journal lock {} is held; one daemon per \
         unit (check `systemctl status` for a second sidekick of this unit)",
        path.display()
    )]
    Locked { path: PathBuf },
}

impl JournalError {
    /// A stable short name for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            JournalError::Io { .. } => "io",
            JournalError::Malformed { .. } => "malformed",
            JournalError::Format { .. } => "format",
            JournalError::Locked { .. } => "locked",
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

/// The exclusive lock on an instance's journal, held while it lives: one daemon per unit.
#[derive(Debug)]
pub struct JournalLock {
    _file: std::fs::File,
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
            path: crate::state_layout::instance_dir(state_dir, instance)
                .join(crate::state_layout::JOURNAL),
            instance: instance.to_string(),
        }
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the journal's lock lives: beside the journal, not on it, since each write replaces
    /// the journal's file (a lock on it would be left on the old one) and the end of a swap
    /// removes it.
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    /// Takes the exclusive lock on this instance's journal (`flock`), for as long as the returned
    /// value lives; refused with [`JournalError::Locked`] while another process holds it.
    pub fn lock(&self) -> Result<JournalLock, JournalError> {
        let path = self.lock_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| self.io(source))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| JournalError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(JournalLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => Err(JournalError::Io { path, source }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::machine::fixtures::{at, every_stage};
    use crate::agent::machine::swap::Stage;

    #[test]
    fn a_second_lock_on_an_instances_journal_is_refused_naming_the_file_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), "web-1");
        let held = journal.lock().unwrap();
        // A second daemon of the same unit: its own open of the lock file.
        let err = Journal::new(dir.path(), "web-1").lock().unwrap_err();
        assert!(matches!(err, JournalError::Locked { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&journal.lock_path().display().to_string()),
            "{err}"
        );
        // Another instance on the same host is not excluded.
        let other = Journal::new(dir.path(), "web-2").lock();
        assert!(other.is_ok(), "{other:?}");
        drop(held);
        assert!(journal.lock().is_ok(), "free once the first daemon is gone");
        // The journal itself is written and removed beside the lock.
        journal.write(&at(Stage::Draining)).unwrap();
        journal.clear().unwrap();
        assert!(journal.lock_path().exists());
    }

    #[test]
    fn every_journaled_step_reads_back_as_written_and_clear_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), "web-1");
        assert_eq!(journal.path(), dir.path().join("web-1/journal.json"));
        assert_eq!(journal.read().unwrap(), None);
        for stage in every_stage() {
            let phase = at(stage);
            journal.write(&phase).unwrap();
            assert_eq!(journal.read().unwrap(), Some(phase));
        }
        let text = std::fs::read_to_string(journal.path()).unwrap();
        assert!(
            text.contains("\"format\": 1") && text.contains("\"instance\": \"web-1\""),
            "{text}"
        );
        journal.clear().unwrap();
        assert_eq!(journal.read().unwrap(), None);
        journal.clear().unwrap();
    }

    #[test]
    fn a_malformed_journal_is_an_error_naming_the_file_and_is_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), "web-1");
        std::fs::create_dir_all(dir.path().join("web-1")).unwrap();
        for text in [
            "{\"format\": 1, \"instance\": \"web-1\"",
            "",
            "{\"format\":1}",
        ] {
            std::fs::write(journal.path(), text).unwrap();
            let err = journal.read().unwrap_err();
            assert_eq!(err.kind(), "malformed", "{text:?}");
            assert!(
                err.to_string()
                    .contains(&journal.path().display().to_string()),
                "{err}"
            );
            assert_eq!(std::fs::read_to_string(journal.path()).unwrap(), text);
        }
        journal.write(&at(Stage::Draining)).unwrap();
        let text = std::fs::read_to_string(journal.path()).unwrap();
        std::fs::write(
            journal.path(),
            text.replace("\"format\": 1", "\"format\": 2"),
        )
        .unwrap();
        let err = journal.read().unwrap_err();
        assert_eq!(err.kind(), "format");
        assert!(err.to_string().contains("web-1/journal.json"), "{err}");
    }

    #[test]
    fn an_unwritable_state_dir_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, "").unwrap();
        let journal = Journal::new(&blocked, "web-1");
        let err = journal.write(&at(Stage::Prepulling)).unwrap_err();
        assert_eq!(err.kind(), "io");
        assert!(
            err.to_string().contains("not-a-dir/web-1/journal.json"),
            "{err}"
        );
    }
}
