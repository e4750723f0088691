//! The swap journal: the in-flight swap persisted at `<daemon.state_dir>/<instance>.json`, written
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::machine::fixtures::{at, every_stage};
    use crate::agent::machine::swap::Stage;

    #[test]
    fn every_journaled_step_reads_back_as_written_and_clear_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path(), "web-1");
        assert_eq!(journal.path(), dir.path().join("web-1.json"));
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
        assert!(err.to_string().contains("web-1.json"), "{err}");
    }

    #[test]
    fn an_unwritable_state_dir_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, "").unwrap();
        let journal = Journal::new(&blocked, "web-1");
        let err = journal.write(&at(Stage::Prepulling)).unwrap_err();
        assert_eq!(err.kind(), "io");
        assert!(err.to_string().contains("not-a-dir/web-1.json"), "{err}");
    }
}
