//! Crash-safe file replacement: a reader sees the old contents or the new ones, never a mix, and
//! the new contents survive a power cut once [`write`] returns (temp file, fsync, rename, fsync of
//! the directory). Used for the swap journal, the unit drop-in and the FleetLock halt record.
//!
//! The temp file has an unguessable name and is created with `O_EXCL|O_NOFOLLOW`, so nobody can
//! plant a file or a symlink there for us to write through; and the directory must belong to
//! this process's user or root and be writable by no one else, or another user could swap the
//! file between our write and systemd's read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Mode of a written file: systemd and the operator read drop-ins and journals, only we write.
const FILE_MODE: u32 = 0o644;
/// Attempts at a fresh temp name before giving up (a clash means someone is guessing).
const TEMP_NAME_ATTEMPTS: u32 = 8;

/// Replaces `path` with `contents` atomically, creating the parent directory if needed.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    fs::create_dir_all(dir)?;
    check_directory(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "path has no file name"))?;
    let (tmp, mut file) = create_temp(dir, name)?;
    let written = (|| {
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(err) = written {
        // Leave nothing half-written behind.
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    sync_dir(dir)
}

/// Removes `path` durably; true when there was a file to remove.
pub fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent(path))?;
            Ok(true)
        }
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// The contents of `path`, or `None` when it does not exist.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(contents) => Ok(Some(contents)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// A new temp file beside the target, `.<name>.<random>.tmp`, that did not exist before.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(std::path::PathBuf, File)> {
    let mut last = None;
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{:016x}.tmp", fastrand::u64(..)));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT|O_EXCL: never an existing file or symlink
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(FILE_MODE)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temp name could be created")))
}

/// Refuses a directory that another user could write to or owns: what we write there could be
/// replaced or redirected before it is read.
fn check_directory(dir: &Path) -> io::Result<()> {
    let meta = fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let owner_ok = meta.uid() == euid || meta.uid() == 0;
    let writable_by_others = meta.mode() & 0o022 != 0;
    if owner_ok && !writable_by_others {
        return Ok(());
    }
    Err(io::Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "refusing to write in {}: it is owned by uid {} with mode {:o}; it must belong to \
             uid {euid} or root and be writable by no one else (chmod go-w)",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ),
    ))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_removes_leaving_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, b"one").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"one"[..]));
        write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn a_failed_write_leaves_the_old_contents_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"old").unwrap();
        // A directory in the way of the rename makes it fail after the temp file was written.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn a_planted_temp_name_or_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // What the old, predictable temp name was: a symlink there must not be followed.
        let predictable = dir
            .path()
            .join(format!(".state.json.tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &predictable).unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        // Two writes use two different temp names.
        let first = create_temp(dir.path(), std::ffi::OsStr::new("x"))
            .unwrap()
            .0;
        let second = create_temp(dir.path(), std::ffi::OsStr::new("x"))
            .unwrap()
            .0;
        assert_ne!(first, second);
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused_with_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o775, 0o1777] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
            let err = write(&dir.path().join("state.json"), b"x").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{mode:o}");
            assert!(err.to_string().contains(&format!("mode {mode:o}")), "{err}");
            assert!(!dir.path().join("state.json").exists());
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        write(&dir.path().join("state.json"), b"x").unwrap();
    }
}
