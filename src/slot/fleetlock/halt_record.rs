//! The halt of a FleetLock group on this host. FleetLock servers keep no halt marker, so the
//! halted instance keeps its lock and records the halt in
//! `<daemon.state_dir>/fleetlock-halt-<group>.json`. The record survives restarts; while it
//! exists the instance that halted never unlocks (not on release, not on start), and no
//! instance of the group on this host takes a slot. Only `sidekick slots resume` removes it.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::slot::SlotError;
use crate::slot::halt::HaltMarker;

/// A recorded halt: the holder id whose lock is kept, and the marker's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltRecord {
    pub holder: String,
    #[serde(flatten)]
    pub marker: HaltMarker,
}

/// Where the record of `group` lives; FleetLock groups never contain `/`.
pub fn path(state_dir: &Path, group: &str) -> PathBuf {
    state_dir.join(format!("fleetlock-halt-{group}.json"))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// The record at `path`, if there is one.
pub fn read(path: &Path) -> Result<Option<HaltRecord>, SlotError> {
    let raw = match fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|source| SlotError::Malformed {
            key: path.display().to_string(),
            source,
        })
}

/// Writes the record unless one exists (the first failure's reason is the useful one), atomically:
/// temp file, fsync, rename, fsync of the directory. Returns whether this call wrote it.
pub fn write_new(path: &Path, record: &HaltRecord) -> Result<bool, SlotError> {
    if read(path)?.is_some() {
        return Ok(false);
    }
    let json = serde_json::to_vec_pretty(record).map_err(|source| SlotError::Malformed {
        key: path.display().to_string(),
        source,
    })?;
    crate::atomic_file::write(path, &json).map_err(io_error(path))?;
    Ok(true)
}

/// Removes the record; returns the one removed, if any.
pub fn remove(path: &Path) -> Result<Option<HaltRecord>, SlotError> {
    let record = read(path)?;
    match fs::remove_file(path) {
        Ok(()) => Ok(record),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reason: &str) -> HaltRecord {
        HaltRecord {
            holder: "abc".into(),
            marker: HaltMarker {
                version: "3.0.0".into(),
                reason: reason.into(),
                instance: "web-1".into(),
                since: "2026-01-01T00:00:00Z".into(),
            },
        }
    }

    #[test]
    fn the_first_halt_is_kept_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(&dir.path().join("state"), "web");
        assert_eq!(read(&path).unwrap(), None);
        assert!(write_new(&path, &record("first")).unwrap());
        assert!(!write_new(&path, &record("second")).unwrap());
        assert_eq!(read(&path).unwrap(), Some(record("first")));
        assert_eq!(remove(&path).unwrap(), Some(record("first")));
        assert_eq!(remove(&path).unwrap(), None);
    }
}
