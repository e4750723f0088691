//! Where each instance's files live under `daemon.state_dir`: one directory per instance,
//! `<state_dir>/<instance>/`, holding its swap journal and lock, denylist, slot lease ledger,
//! image record and (in environment-file mode) its version request. Earlier releases kept them
//! flat, as `<state_dir>/<instance>.json` and so on; [`migrate`] moves those in on the first start.
//!
//! The FleetLock halt record (`fleetlock-halt-<group>.json`) is the group's, shared by the
//! instances of a host, and stays at the top.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

/// The swap journal's file name.
pub const JOURNAL: &str = "journal.json";
/// The journal's lock file name (beside the journal: each write replaces the journal's file).
pub const JOURNAL_LOCK: &str = "journal.lock";
/// The denylist's file name.
pub const DENYLIST: &str = "denylist.json";
/// The slot lease ledger's file name.
pub const SLOT_LEASES: &str = "slot-leases";
/// The image record's file name (`swap.prune`).
pub const IMAGES: &str = "images.json";

/// `<state_dir>/<instance>`.
pub fn instance_dir(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join(instance)
}

/// The flat files of earlier releases and where each goes now, for `instance`.
pub fn flat_files(state_dir: &Path, instance: &str) -> Vec<(PathBuf, PathBuf)> {
    let dir = instance_dir(state_dir, instance);
    [
        ("json", JOURNAL),
        ("denylist.json", DENYLIST),
        ("slot-leases", SLOT_LEASES),
        ("images.json", IMAGES),
    ]
    .into_iter()
    .map(|(old, new)| (state_dir.join(format!("{instance}.{old}")), dir.join(new)))
    .collect()
}

/// What [`migrate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migration {
    /// Files moved, (from, to).
    pub moved: Vec<(PathBuf, PathBuf)>,
    /// Flat files left where they are because the new place already holds one.
    pub left: Vec<PathBuf>,
}

/// Why [`migrate`] did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A daemon of an earlier release holds the flat journal's lock: it runs this instance now.
    #[error("{} is locked: a sidekick of an earlier release runs this instance", path.display())]
    Locked { path: PathBuf },
    #[error("failed to move {} to its instance directory: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Creates `<state_dir>/<instance>/` (mode 0700) and moves the flat files of an earlier release
/// into it, under the flat journal's lock, so a journal a swap left is resumed from its new place.
/// A file whose new place is taken is left where it is (and reported); the flat lock file goes last.
pub fn migrate(state_dir: &Path, instance: &str) -> Result<Migration, MigrationError> {
    let dir = instance_dir(state_dir, instance);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrationError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let old_lock = state_dir.join(format!("{instance}.lock"));
    let held = match OpenOptions::new().write(true).open(&old_lock) {
        Ok(file) => match file.try_lock() {
            Ok(()) => Some(file),
            Err(fs::TryLockError::WouldBlock) => {
                return Err(MigrationError::Locked { path: old_lock });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(MigrationError::Io {
                    path: old_lock,
                    source,
                });
            }
        },
        Err(err) if err.kind() == ErrorKind::NotFound => None,
        Err(source) => {
            return Err(MigrationError::Io {
                path: old_lock,
                source,
            });
        }
    };
    let mut migration = Migration::default();
    for (old, new) in flat_files(state_dir, instance) {
        if fs::symlink_metadata(&old).is_err() {
            continue;
        }
        if fs::symlink_metadata(&new).is_ok() {
            migration.left.push(old);
            continue;
        }
        fs::rename(&old, &new).map_err(io(&old))?;
        migration.moved.push((old, new));
    }
    if held.is_some() {
        fs::remove_file(&old_lock).map_err(io(&old_lock))?;
    }
    if !migration.moved.is_empty() {
        // The renames survive a power cut once the directories are on disk.
        for synced in [&dir, &state_dir.to_path_buf()] {
            fs::File::open(synced)
                .and_then(|d| d.sync_all())
                .map_err(io(synced))?;
        }
    }
    Ok(migration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_the_flat_files_in_and_keeps_a_journal_a_swap_left() {
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        std::fs::write(s.join("web-1.json"), "{\"swap\":1}").unwrap();
        std::fs::write(s.join("web-1.denylist.json"), "[]").unwrap();
        std::fs::write(s.join("web-1.slot-leases"), "7\n").unwrap();
        std::fs::write(s.join("web-1.images.json"), "[\"a:1\"]").unwrap();
        std::fs::write(s.join("web-1.lock"), "").unwrap();
        // Another instance's files stay.
        std::fs::write(s.join("web-2.json"), "{}").unwrap();
        let done = migrate(s, "web-1").unwrap();
        assert_eq!(done.moved.len(), 4, "{done:?}");
        assert_eq!(
            std::fs::read_to_string(s.join("web-1").join(JOURNAL)).unwrap(),
            "{\"swap\":1}"
        );
        assert_eq!(
            std::fs::read_to_string(s.join("web-1").join(SLOT_LEASES)).unwrap(),
            "7\n"
        );
        assert!(!s.join("web-1.json").exists() && !s.join("web-1.lock").exists());
        assert!(s.join("web-2.json").exists());
        // A second start finds nothing to move.
        assert_eq!(migrate(s, "web-1").unwrap(), Migration::default());
    }

    #[test]
    fn a_taken_place_is_not_overwritten_and_a_held_flat_lock_refuses() {
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        std::fs::create_dir_all(s.join("web-1")).unwrap();
        std::fs::write(s.join("web-1").join(JOURNAL), "new").unwrap();
        std::fs::write(s.join("web-1.json"), "old").unwrap();
        let done = migrate(s, "web-1").unwrap();
        assert_eq!(done.left, vec![s.join("web-1.json")]);
        assert_eq!(
            std::fs::read_to_string(s.join("web-1").join(JOURNAL)).unwrap(),
            "new"
        );
        let lock = std::fs::File::create(s.join("web-1.lock")).unwrap();
        lock.try_lock().unwrap();
        let err = migrate(s, "web-1").unwrap_err();
        assert!(matches!(err, MigrationError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("earlier release"), "{err}");
    }
}
