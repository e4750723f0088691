//! Test environment: starts real servers (etcd, systemd in a throw-away container, Traefik, an image
//! registry) and app images on free loopback ports in temp dirs, and stops every one of them again
//! through drop guards, also when a test panics. See the README's test section.
//!
//! Used by integration tests as `mod support;`. Not every test binary uses every helper.
//!
//! ```ignore
//! mod support;
//! use support::{etcd::{self, Etcd}, prerequisites_met};
//!
//! #[tokio::test]
//! async fn deregisters_within_a_second_when_unit_stops() {
//!     if !prerequisites_met(&[etcd::NEEDS, support::systemd::NEEDS].concat()) {
//!         return; // printed `SKIPPED: <test>: <why>`; panics instead with SIDEKICK_REQUIRE_E2E=1
//!     }
//!     let etcd = Etcd::start().await;                     // stopped when `etcd` drops
//!     let systemd = support::systemd::Systemd::start().await;
//!     // ... etcd.endpoint(), systemd.bus_address(), systemd.unit_dir() ...
//! }
//! ```
#![allow(dead_code)]

pub mod blackhole;
pub mod cgroup;
pub mod etcd;
pub mod images;
pub mod peer_links;
pub mod pki;
pub mod proxy;
pub mod reaper;
pub mod registry;
pub mod systemd;
pub mod traefik;

use std::collections::HashSet;
use std::fmt::Debug;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Env var that turns a missing prerequisite from a skip into a failure (set by `.ci/run`).
pub const REQUIRE_E2E_ENV: &str = "SIDEKICK_REQUIRE_E2E";

/// How often `poll_until` retries.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Env var naming the ports this test process takes its own from, as `LOW-HIGH` (both
/// included). `scripts/test` runs a second `cargo test` beside the first and gives it a range
/// below the kernel's ephemeral one: the first process's ports come from the kernel, so the two
/// never hand out the same port.
pub const PORTS_ENV: &str = "SIDEKICK_TEST_PORTS";

/// A free TCP port on 127.0.0.1, never handed out twice by this process: from [`PORTS_ENV`]'s
/// range when it is set, else from the kernel.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive free TCP ports on 127.0.0.1, all of them recorded as handed
/// out, so no later [`free_port`] of this process returns one of them: from [`PORTS_ENV`]'s range
/// when it is set (the lowest such run), else starting at a port from the kernel.
pub fn free_ports(count: u16) -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    static RANGE: OnceLock<Option<(u16, u16)>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let range = *RANGE.get_or_init(|| {
        let value = std::env::var(PORTS_ENV).ok()?;
        Some(parse_port_range(&value).unwrap_or_else(|e| panic!("{PORTS_ENV}={value:?}: {e}")))
    });
    let bindable = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
    let Some(range) = range else {
        loop {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
            let first = listener.local_addr().expect("local_addr").port();
            drop(listener);
            let high = first.saturating_add(count - 1);
            let mut handed_out = handed_out.lock().unwrap();
            if let Some(first) = take_run((first, high), &mut handed_out, count, bindable) {
                return first;
            }
        }
    };
    let mut handed_out = handed_out.lock().unwrap();
    take_run(range, &mut handed_out, count, bindable).unwrap_or_else(|| {
        let (low, high) = range;
        panic!("{PORTS_ENV}: no {count} consecutive free ports left in {low}-{high}")
    })
}

/// The lowest `first` in `low..=high` whose `count` ports up from it all lie in the range, are
/// not in `handed_out` and are `bindable`; they are added to `handed_out`.
fn take_run(
    (low, high): (u16, u16),
    handed_out: &mut HashSet<u16>,
    count: u16,
    bindable: impl Fn(u16) -> bool,
) -> Option<u16> {
    assert!(count > 0, "a run of no ports");
    let last_first = high.checked_sub(count - 1)?;
    let first = (low..=last_first).find(|first| {
        (*first..*first + count).all(|port| !handed_out.contains(&port) && bindable(port))
    })?;
    handed_out.extend(first..first + count);
    Some(first)
}

/// `LOW-HIGH`, LOW ≤ HIGH, both non-zero.
fn parse_port_range(value: &str) -> Result<(u16, u16), String> {
    let (low, high) = value
        .split_once('-')
        .ok_or("expected LOW-HIGH, e.g. 20000-29999")?;
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(format!("{s:?} is not a port (1-65535)"))
    };
    let (low, high) = (port(low)?, port(high)?);
    match low <= high {
        true => Ok((low, high)),
        false => Err(format!("{low} is above {high}")),
    }
}

/// A fresh temp dir (removed on drop) whose name starts with `sidekick-<what>-`.
/// Also removed by the [`reaper`] if the test process is killed before the guard runs.
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("sidekick-{what}-"))
        .tempdir()
        .expect("create temp dir");
    reaper::watch(&reaper::Leftover::Directory(dir.path().to_path_buf()));
    dir
}

/// Calls `attempt` every 100 ms until it returns `Ok` or `timeout` passes; the error names `what`
/// and the last failure.
pub async fn poll_until<T, E, F, Fut>(
    timeout: Duration,
    what: &str,
    mut attempt: F,
) -> Result<T, String>
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(remaining.max(POLL_INTERVAL), attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => format!("{e:?}"),
            Err(_) => "attempt timed out".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {timeout:?}; last: {last}"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Blocking variant of [`poll_until`] for guards and other sync code.
pub fn poll_until_blocking<T, E: Debug>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match attempt() {
            Ok(value) => return Ok(value),
            Err(e) => format!("{e:?}"),
        };
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {timeout:?}; last: {last}"));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// How a [`ProcessGuard`] delivers its stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalTarget {
    /// The whole process group the guard created (the child is its leader).
    Group,
    /// Only the child's pid; the child runs in a new session (`setsid`), as `systemd-nspawn`
    /// wants, which powers its container off on SIGTERM to its pid.
    Pid,
}

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) and reaped when
/// the guard drops, also during a panic. The child leads its own process group. When the test
/// process is killed outright, [`reaper`] ends the child instead.
pub struct ProcessGuard {
    name: String,
    child: Option<Child>,
    target: SignalTarget,
    log: Option<PathBuf>,
}

impl ProcessGuard {
    /// Spawns `cmd` in a new process group, stdin from /dev/null, stdout+stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path, target: SignalTarget) -> Self {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        match target {
            SignalTarget::Group => {
                cmd.process_group(0);
            }
            // SAFETY: setsid(2) is async-signal-safe; it runs in the child between fork and exec.
            SignalTarget::Pid => unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            },
        }
        // nspawn powers its container off on SIGTERM; everything else just dies.
        let death_signal = match target {
            SignalTarget::Group => libc::SIGKILL,
            SignalTarget::Pid => libc::SIGTERM,
        };
        let child = reaper::spawn(cmd, death_signal)
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        reaper::watch(&leftover(target, child.id()));
        ProcessGuard {
            name: name.to_string(),
            child: Some(child),
            target,
            log: Some(log.to_path_buf()),
        }
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// True while the child has not exited. Does not reap it: until the guard reaps it, its pid
    /// (and so its process group id) cannot be reused by an unrelated process.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_ref() else {
            return false;
        };
        // SAFETY: zeroed siginfo_t is a valid out-parameter; WNOWAIT leaves the child unreaped.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_PID, child.id(), &mut info, flags) != 0 {
                return false; // already reaped (ECHILD)
            }
            info.si_pid() == 0
        }
    }

    /// The last `lines` lines of the child's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.log
            .as_deref()
            .map(|p| tail(p, lines))
            .unwrap_or_default()
    }

    /// Sends `signal` to the child (or its group) without waiting.
    pub fn signal(&self, signal: i32) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        let target = match self.target {
            SignalTarget::Group => -pid,
            SignalTarget::Pid => pid,
        };
        // SAFETY: plain kill(2) on a pid/pgid this guard created and has not reaped yet.
        unsafe {
            libc::kill(target, signal);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps. Idempotent.
    pub fn stop_within(&mut self, grace: Duration) {
        if self.child.is_none() {
            return;
        }
        if self.is_running() {
            self.signal(libc::SIGTERM);
            let name = self.name.clone();
            let exited = poll_until_blocking(grace, &name, || match self.is_running() {
                false => Ok(()),
                true => Err("still running"),
            });
            if exited.is_err() {
                eprintln!(
                    "{} ignored SIGTERM for {grace:?}; sending SIGKILL",
                    self.name
                );
            }
        }
        // Even after the leader exited, members of its group may linger: kill the group.
        if self.target == SignalTarget::Group || self.is_running() {
            self.signal(libc::SIGKILL);
        }
        self.reap();
    }

    /// Waits for the child and tells the reaper it is gone. Idempotent.
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
            reaper::forget(&leftover(self.target, child.id()));
        }
    }

    /// [`Self::stop_within`] with the default grace period.
    pub fn stop(&mut self) {
        self.stop_within(STOP_GRACE);
    }

    /// SIGKILL to the child (or its group) and reap it, as a crash would.
    pub fn kill(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
        }
        self.reap();
    }
}

/// What the reaper must end for a child spawned with `target`.
fn leftover(target: SignalTarget, pid: u32) -> reaper::Leftover {
    match target {
        SignalTarget::Group => reaper::Leftover::ProcessGroup(pid),
        SignalTarget::Pid => reaper::Leftover::Process(pid),
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// An executable, by absolute path or name on `PATH`.
    Binary(&'static str),
    /// The etcd binary of the version `SIDEKICK_ETCD_VERSION` names (see [`etcd::binary`]).
    Etcd,
    /// Running as root (systemd-nspawn, docker socket).
    Root,
    /// The root tree of the systemd version `SIDEKICK_SYSTEMD_VERSION` names (see
    /// [`systemd::version`]).
    Systemd,
    /// A Debian package installed in that root tree (e.g. `podman` in the 257 root).
    RootPackage(&'static str),
    /// A Docker daemon that answers `docker info`.
    Docker,
    /// A port on 127.0.0.1 nothing listens on (e.g. a default endpoint that must be refused).
    FreePort(u16),
    /// A file that must exist (e.g. a library a test preloads), by absolute path.
    File(&'static str),
}

impl Need {
    /// `None` when met, else why not.
    fn missing(self) -> Option<String> {
        match self {
            Need::Binary(name) => find_binary(name)
                .is_none()
                .then(|| format!("`{name}` not found on PATH (run scripts/setup)")),
            Need::Etcd => etcd::binary().err(),
            Need::Systemd => systemd::missing(),
            Need::RootPackage(package) => systemd::missing_package(package),
            // SAFETY: geteuid has no preconditions.
            Need::Root => (unsafe { libc::geteuid() } != 0).then(|| "needs root".to_string()),
            Need::Docker => docker_unavailable().clone(),
            Need::FreePort(port) => TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .is_err()
                .then(|| format!("127.0.0.1:{port} is in use on this host")),
            Need::File(path) => (!Path::new(path).is_file())
                .then(|| format!("{path} not found (run scripts/setup)")),
        }
    }
}

/// Returns true when every need is met. Otherwise prints one line
/// `SKIPPED: <test>: <why>` and returns false (the test should `return`), or panics when
/// `SIDEKICK_REQUIRE_E2E=1`. The test name is the current libtest thread's name.
pub fn prerequisites_met(needs: &[Need]) -> bool {
    let why: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if why.is_empty() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let why = why.join("; ");
    if std::env::var(REQUIRE_E2E_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: missing prerequisite ({REQUIRE_E2E_ENV}=1): {why}");
    }
    // Straight to fd 2: libtest captures `println!`/`eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
    false
}

/// Resolves `name` (absolute, or searched on `PATH`) to an executable file.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

/// `Some(reason)` when the Docker daemon does not answer; checked once per process.
fn docker_unavailable() -> &'static Option<String> {
    static CHECK: OnceLock<Option<String>> = OnceLock::new();
    CHECK.get_or_init(|| {
        if find_binary("docker").is_none() {
            return Some("`docker` CLI not found on PATH".to_string());
        }
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "docker daemon does not answer: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run docker: {e}")),
        }
    })
}

/// Runs a command to completion; panics with its output when it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of a file this repository ships (`path` from its root, e.g. `units/...`).
pub fn shipped(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A reqwest client for tests: ring as the rustls provider, no proxies, 5 s timeout.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("build reqwest client")
}

/// GET `url`; returns the status code and body, or the transport error as text.
pub async fn http_get(url: &str) -> Result<(u16, String), String> {
    let response = http_client()
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Polls `url` until it answers 2xx; returns that body.
pub async fn wait_for_http_ok(url: &str, timeout: Duration) -> Result<String, String> {
    poll_until(timeout, &format!("GET {url} answers 2xx"), || async {
        match http_get(url).await? {
            (200..=299, body) => Ok(body),
            (status, body) => Err(format!("status {status}: {body}")),
        }
    })
    .await
}

#[test]
fn a_run_of_ports_is_handed_out_whole_and_never_again() {
    let mut handed_out = HashSet::new();
    let busy = |port: u16| port != 20003;
    // 20003 is taken by another process: the first run of three is 20000-20002.
    assert_eq!(
        take_run((20000, 20010), &mut handed_out, 3, busy),
        Some(20000)
    );
    // The next single port skips the three handed out.
    assert_eq!(
        take_run((20000, 20010), &mut handed_out, 1, busy),
        Some(20004)
    );
    // Two more runs of three: 20005-20007, then 20008-20010; then none is left.
    assert_eq!(
        take_run((20000, 20010), &mut handed_out, 3, busy),
        Some(20005)
    );
    assert_eq!(
        take_run((20000, 20010), &mut handed_out, 3, busy),
        Some(20008)
    );
    assert_eq!(take_run((20000, 20010), &mut handed_out, 1, busy), None);
    assert_eq!(handed_out.len(), 10);
    // A run longer than the range is none.
    assert_eq!(
        take_run((20000, 20001), &mut HashSet::new(), 3, |_| true),
        None
    );
}

#[test]
fn a_port_range_is_low_dash_high_and_anything_else_is_named() {
    assert_eq!(parse_port_range("20000-29999"), Ok((20000, 29999)));
    assert_eq!(parse_port_range("20000-20000"), Ok((20000, 20000)));
    for (bad, says) in [
        ("20000", "expected LOW-HIGH"),
        ("0-10", "\"0\" is not a port"),
        ("20000-70000", "\"70000\" is not a port"),
        ("30000-20000", "30000 is above 20000"),
    ] {
        let err = parse_port_range(bad).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
