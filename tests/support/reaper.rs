//! Nothing outlives a killed test process. Two mechanisms, because drop guards do not run when a
//! test binary is SIGKILLed:
//!
//! - **`PR_SET_PDEATHSIG`** on every server the harness spawns: the kernel signals the child when
//!   its parent *thread* exits. So children are spawned from one thread that lives as long as the
//!   process ([`spawn`]), never from a test's or tokio's short-lived threads.
//! - **A guardian process** ([`watch`]/[`forget`]): a `sh` that reads what to clean up on its
//!   stdin, a pipe only this process holds (close-on-exec, so children do not keep it open). When
//!   this process dies, however it dies, the guardian reads EOF and kills what is still listed:
//!   process groups (grandchildren that no death signal reaches), cgroups (the systemd container
//!   and every unit in it), Docker containers (which belong to dockerd, not to us) and, last,
//!   temp dirs. Guards [`forget`] what they have cleaned up themselves, so a reused pid is never
//!   hit; a temp dir already removed is simply not there any more.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Something the guardian cleans up when this process dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// SIGKILL to the whole process group.
    ProcessGroup(u32),
    /// SIGTERM to one process (`systemd-nspawn` powers its container off on it).
    Process(u32),
    /// Every process in the cgroup and its children (`cgroup.kill`, else SIGKILL to each).
    Cgroup(PathBuf),
    /// `docker rm -f NAME`.
    DockerContainer(String),
    /// `rm -rf DIR`, after everything else: a temp dir whose guard never ran.
    Directory(PathBuf),
}

impl Leftover {
    fn line(&self) -> String {
        match self {
            Leftover::ProcessGroup(pgid) => format!("pgid {pgid}"),
            Leftover::Process(pid) => format!("pid {pid}"),
            Leftover::Cgroup(dir) => format!("cgroup {}", dir.display()),
            Leftover::DockerContainer(name) => format!("docker {name}"),
            Leftover::Directory(dir) => format!("dir {}", dir.display()),
        }
    }
}

/// The guardian: collects `+ ENTRY` and forgets `- ENTRY` lines until EOF, then cleans up.
const GUARDIAN: &str = r#"
entries=""
while IFS= read -r line; do
  case "$line" in
    "+ "*) entries="$entries
${line#+ }" ;;
    "- "*) entries=$(printf '%s\n' "$entries" | grep -vxF -- "${line#- }") ;;
  esac
done
kill_cgroup() {
  if [ -e "$1/cgroup.kill" ]; then echo 1 > "$1/cgroup.kill"; return; fi
  for procs in $(find "$1" -name cgroup.procs 2>/dev/null); do
    for p in $(cat "$procs"); do kill -KILL "$p"; done
  done
}
printf '%s\n' "$entries" | while IFS= read -r e; do
  case "$e" in
    pgid\ *) kill -KILL -- "-${e#pgid }" ;;
    pid\ *) kill -TERM "${e#pid }" ;;
    cgroup\ *) kill_cgroup "${e#cgroup }" ;;
    docker\ *) docker rm -f "${e#docker }" ;;
  esac
done >/dev/null 2>&1
printf '%s\n' "$entries" | while IFS= read -r e; do
  case "$e" in
    dir\ /*) rm -rf -- "${e#dir }" ;;
  esac
done >/dev/null 2>&1
"#;

fn guardian() -> &'static Mutex<Option<ChildStdin>> {
    static GUARDIAN_STDIN: OnceLock<Mutex<Option<ChildStdin>>> = OnceLock::new();
    GUARDIAN_STDIN.get_or_init(|| {
        // Its own process group: a signal to ours (or to a child's group) does not reach it.
        let child = Command::new("sh")
            .args(["-c", GUARDIAN])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match child {
            Ok(mut child) => Mutex::new(child.stdin.take()),
            Err(e) => {
                eprintln!("WARNING: no cleanup guardian ({e}): a SIGKILLed test leaks servers");
                Mutex::new(None)
            }
        }
    })
}

fn tell(line: String) {
    if let Ok(mut stdin) = guardian().lock()
        && let Some(stdin) = stdin.as_mut()
    {
        let _ = writeln!(stdin, "{line}");
    }
}

/// Cleans up `leftover` if this process dies before [`forget`]ting it.
pub fn watch(leftover: &Leftover) {
    tell(format!("+ {}", leftover.line()));
}

/// `leftover` was cleaned up (or reaped) by its guard: the guardian must not touch it.
pub fn forget(leftover: &Leftover) {
    tell(format!("- {}", leftover.line()));
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread every child is spawned from; it lives as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("support-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
                // Never return: the death signal of every child spawned here is tied to this
                // thread, and the channel's sender lives in a static, so this is unreachable.
                loop {
                    std::thread::park();
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it receives `death_signal` when this process dies: from the
/// long-lived spawner thread, with `PR_SET_PDEATHSIG` set between fork and exec.
pub fn spawn(cmd: &mut Command, death_signal: i32) -> std::io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: prctl(2) and getppid(2) are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: no signal will come.
            if libc::getppid() as u32 != parent {
                libc::raise(death_signal);
            }
            Ok(())
        });
    }
    let mut owned = std::mem::replace(cmd, Command::new("true"));
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let result = owned.spawn();
        let _ = tx.send((owned, result));
    });
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send(job)
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    let (owned, result) = rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    *cmd = owned;
    result
}
