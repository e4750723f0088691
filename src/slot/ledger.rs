//! The slot leases this instance's sidekick granted, kept in a file of its state directory
//! (`<daemon.state_dir>/<instance>/slot-leases`), so that the stale release of a later run
//! revokes only a lease a run of this sidekick granted (issue 18). A key in the group may name
//! this holder id and this host and still be bound to somebody else's lease (written by another
//! tenant with write access to the group's prefix); revoking that lease would take down
//! whatever else lives on it, such as a victim's registration. Such a key is still deleted (it
//! names this holder), its lease is left to its owner.
//!
//! The file holds one lease id per line, in hex as etcd tools print them, the newest last, at
//! most [`KEPT`] of them (a lease is granted per slot held or wait in line, so the file stays a
//! few lines long). It is written with [`crate::atomic_file`] right after the grant, before any
//! key is put on the lease. A failed write costs only speed: the lease is then not revoked by
//! the next run's stale release and expires within `slot.ttl` by itself.

use std::path::{Path, PathBuf};

use crate::atomic_file;

/// Lease ids kept; older ones are dropped as new ones are recorded.
pub const KEPT: usize = 16;

/// The file of one instance's granted slot leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLedger {
    path: PathBuf,
}

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("failed to access the slot lease ledger {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the slot lease ledger {}:{line} is malformed: {text:?} is not a lease id in hex",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

impl LeaseLedger {
    /// The ledger of `instance` in `state_dir`.
    pub fn new(state_dir: &Path, instance: &str) -> LeaseLedger {
        LeaseLedger {
            path: crate::state_layout::instance_dir(state_dir, instance)
                .join(crate::state_layout::SLOT_LEASES),
        }
    }

    /// The ledger at `path` (tests and examples).
    pub fn at(path: impl Into<PathBuf>) -> LeaseLedger {
        LeaseLedger { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lease ids recorded, oldest first; none when the file does not exist.
    pub fn read(&self) -> Result<Vec<i64>, LedgerError> {
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let Some(bytes) = atomic_file::read(&self.path).map_err(io)? else {
            return Ok(Vec::new());
        };
        let text = String::from_utf8_lossy(&bytes);
        parse(&text).map_err(|(line, text)| LedgerError::Malformed {
            path: self.path.clone(),
            line,
            text,
        })
    }

    /// Records `lease` as granted by this sidekick, keeping the newest [`KEPT`]. A malformed
    /// file is replaced (what it held cannot be trusted anyway).
    pub fn record(&self, lease: i64) -> Result<(), LedgerError> {
        let mut leases = self.read().unwrap_or_default();
        leases.retain(|&l| l != lease);
        leases.push(lease);
        let skip = leases.len().saturating_sub(KEPT);
        let text: String = leases[skip..].iter().map(|l| format!("{l:x}\n")).collect();
        atomic_file::write(&self.path, text.as_bytes()).map_err(|source| LedgerError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// The ids of `text`, one hex id per line (blank lines skipped); else the first bad line's
/// number (from 1) and text.
fn parse(text: &str) -> Result<Vec<i64>, (usize, String)> {
    let mut leases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match i64::from_str_radix(line, 16) {
            Ok(id) if id > 0 => leases.push(id),
            _ => return Err((n + 1, line.chars().take(40).collect())),
        }
    }
    Ok(leases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ledger_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = LeaseLedger::new(dir.path(), "web-1");
        assert_eq!(ledger.path(), dir.path().join("web-1/slot-leases"));
        assert_eq!(ledger.read().unwrap(), Vec::<i64>::new());
    }

    #[test]
    fn recorded_leases_read_back_in_order_without_repeats_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = LeaseLedger::new(dir.path(), "web-1");
        ledger.record(0x694d_8a1b_2c3d_4e5f).unwrap();
        ledger.record(7).unwrap();
        ledger.record(0x694d_8a1b_2c3d_4e5f).unwrap();
        assert_eq!(ledger.read().unwrap(), vec![7, 0x694d_8a1b_2c3d_4e5f]);
        let text = std::fs::read_to_string(ledger.path()).unwrap();
        assert_eq!(text, "7\n694d8a1b2c3d4e5f\n");
        for id in 100..100 + KEPT as i64 {
            ledger.record(id).unwrap();
        }
        let kept = ledger.read().unwrap();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.first(), Some(&100));
        assert_eq!(kept.last(), Some(&(100 + KEPT as i64 - 1)));
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_the_file_and_line_and_recording_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = LeaseLedger::new(dir.path(), "web-1");
        std::fs::create_dir_all(dir.path().join("web-1")).unwrap();
        std::fs::write(ledger.path(), "1f\n\nnot-a-lease\n").unwrap();
        let err = ledger.read().unwrap_err().to_string();
        assert!(err.contains("web-1/slot-leases:3"), "{err}");
        assert!(err.contains("\"not-a-lease\""), "{err}");
        std::fs::write(ledger.path(), "0\n").unwrap();
        assert!(ledger.read().unwrap_err().to_string().contains(":1 "));
        ledger.record(0x20).unwrap();
        assert_eq!(ledger.read().unwrap(), vec![0x20]);
    }

    #[test]
    fn an_unreadable_ledger_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = LeaseLedger::new(dir.path(), "web-1");
        std::fs::create_dir_all(ledger.path()).unwrap();
        let err = ledger.read().unwrap_err().to_string();
        assert!(
            err.contains("failed to access the slot lease ledger"),
            "{err}"
        );
        assert!(err.contains("web-1/slot-leases"), "{err}");
        let err = ledger.record(1).unwrap_err().to_string();
        assert!(err.contains("web-1/slot-leases"), "{err}");
    }
}
