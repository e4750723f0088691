//! A cgroup of its own for each systemd container. `systemd-nspawn --keep-unit` splits the cgroup
//! it starts in into `supervisor` and `payload`, and the container's systemd puts its units under
//! `payload` (`payload/system.slice/system-web.slice/web@1.service`). Containers started from one
//! cgroup would share those directories, so stopping `web@1.service` in one container would kill
//! the `web@1.service` processes of every other container running in parallel.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Fresh cgroup directories, one per hierarchy systemd uses; removed (once empty) on drop.
pub struct ContainerCgroup {
    dirs: Vec<PathBuf>,
}

impl ContainerCgroup {
    /// Creates `<current cgroup>/<name>` in the unified hierarchy and, on hybrid hosts, in the
    /// `name=systemd` one.
    pub fn create(name: &str) -> ContainerCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let root = Path::new(CGROUP_ROOT);
        let mut dirs = Vec::new();
        for line in own.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let mount = match (id, controllers) {
                // Pure cgroup v2 is mounted at the root; hybrid hosts mount it at `unified`.
                ("0", "") if root.join("cgroup.controllers").exists() => root.to_path_buf(),
                ("0", "") => root.join("unified"),
                (_, "name=systemd") => root.join("systemd"),
                _ => continue,
            };
            if mount.join("cgroup.procs").exists() {
                let dir = mount.join(path.trim_start_matches('/')).join(name);
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
                dirs.push(dir);
            }
        }
        assert!(!dirs.is_empty(), "no cgroup hierarchy found in {own:?}");
        // Killed by the reaper if the test process dies with the container still running.
        for dir in &dirs {
            super::reaper::watch(&super::reaper::Leftover::Cgroup(dir.clone()));
        }
        ContainerCgroup { dirs }
    }

    /// Makes `cmd`'s process join these cgroups before it execs.
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        let procs: Vec<CString> = self
            .dirs
            .iter()
            .map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()
            .expect("cgroup path without NUL");
        // SAFETY: only open/write/close (async-signal-safe) on paths prepared before the fork;
        // writing "0" to `cgroup.procs` moves the writing process.
        unsafe {
            cmd.pre_exec(move || {
                for path in &procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(error);
                    }
                }
                Ok(())
            });
        }
    }
}

impl Drop for ContainerCgroup {
    /// Best effort: a cgroup still holding a process stays behind.
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_tree(dir);
            super::reaper::forget(&super::reaper::Leftover::Cgroup(dir.clone()));
        }
    }
}

/// Removes a cgroup and its children, deepest first (`rmdir` is how cgroups are removed).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
