//! systemd 252 as PID 1 of a throw-away `systemd-nspawn -D / --volatile=yes` container, exactly as
//! the README's test section describes: tmpfs root, host `/usr` read-only, host network, its system bus exported
//! through a bind-mounted directory, a temp unit directory bound at `/etc/systemd/system` and the
//! host's `/run/docker.sock` bound in. Each container starts in a cgroup of its own, so parallel
//! containers do not share (and kill) each other's unit cgroups.
//!
//! Which systemd: `SIDEKICK_SYSTEMD_VERSION` (default: the host's own, Debian 12's 252). Another
//! version boots the same way from a root tree instead of `/`: `systemd-nspawn -D ROOT
//! --volatile=yes` (tmpfs root, ROOT's `/usr` read-only), where ROOT is
//! `$SIDEKICK_TEST_TOOLS/systemd/<version>/root`; `scripts/setup` debootstraps Debian 13's systemd
//! 257 there. The host's static Docker CLI is bound in at `/usr/local/bin/docker`. The tree's
//! systemd package must be of the version asked for; otherwise systemd tests skip, or fail with
//! `SIDEKICK_REQUIRE_E2E=1`.
//!
//! NEVER start systemd any other way: run directly on the host (even in `unshare`) it takes over
//! the host's `/tmp`, services and consoles.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::Connection;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

use super::cgroup::ContainerCgroup;
use super::{Need, ProcessGuard, SignalTarget, poll_until, temp_dir};

/// What systemd tests need from the machine: root, nspawn, and the root tree of the systemd
/// version `SIDEKICK_SYSTEMD_VERSION` names.
pub const NEEDS: &[Need] = &[Need::Root, Need::Binary("systemd-nspawn"), Need::Systemd];

/// Env var naming the systemd version the tests boot (a major version: `252`, `257`).
pub const VERSION_ENV: &str = "SIDEKICK_SYSTEMD_VERSION";
/// Every version the test command runs the systemd suites on (`scripts/test`).
pub const TESTED_VERSIONS: &[u32] = &[252, 257];
/// Env var naming the test tools dir (as in `scripts/setup`).
const TOOLS_ENV: &str = "SIDEKICK_TEST_TOOLS";
const DEFAULT_TOOLS: &str = "/opt/sidekick-test-tools";
/// The host's static Docker CLI, bound into a root tree's container (the tree has a mount point).
const HOST_DOCKER_CLI: &str = "/usr/local/bin/docker";

/// What [`Systemd::systemctl`] needs besides [`NEEDS`].
pub const SYSTEMCTL_NEEDS: &[Need] = &[Need::Binary("nsenter"), Need::Binary("systemctl")];

/// Booting takes a few seconds; much more on a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// The container powers off on SIGTERM; give its services time to stop.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a unit job (start, restart, stop) may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// The host's Docker socket, bound into the container when it exists.
const DOCKER_SOCKET: &str = "/run/docker.sock";

/// The systemd major version tests boot: [`VERSION_ENV`], else the host's own.
pub fn version() -> u32 {
    match tree() {
        Ok(tree) => tree.version,
        Err(_) => requested_version().unwrap_or(0),
    }
}

/// The version [`VERSION_ENV`] asks for, `None` when unset.
fn requested_version() -> Option<u32> {
    let v = std::env::var(VERSION_ENV).ok().filter(|v| !v.is_empty())?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{VERSION_ENV}={v:?}: not a systemd major version")),
    )
}

/// The tree a container boots and the systemd version its package database says it has.
struct Tree {
    root: PathBuf,
    version: u32,
}

/// The root tree of the chosen [`version`], checked once per process.
fn tree() -> Result<&'static Tree, String> {
    static FOUND: OnceLock<Result<Tree, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let host = Path::new("/");
            let host_version = package_version(host);
            let want = requested_version();
            match (want, host_version) {
                (None, Some(v)) => {
                    return Ok(Tree {
                        root: host.into(),
                        version: v,
                    });
                }
                (None, None) => return Err("no systemd package on this host".to_string()),
                (Some(w), Some(v)) if w == v => {
                    return Ok(Tree {
                        root: host.into(),
                        version: v,
                    });
                }
                _ => {}
            }
            let want = want.unwrap_or_default();
            let tools = std::env::var(TOOLS_ENV).unwrap_or_else(|_| DEFAULT_TOOLS.to_string());
            let root = Path::new(&tools).join(format!("systemd/{want}/root"));
            match package_version(&root) {
                Some(v) if v == want => Ok(Tree { root, version: v }),
                Some(v) => Err(format!(
                    "{VERSION_ENV}={want}: {} has systemd {v} (run scripts/setup)",
                    root.display()
                )),
                None => Err(format!(
                    "{VERSION_ENV}={want}: no systemd root at {} (run scripts/setup)",
                    root.display()
                )),
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// `None` when the tree of the chosen version has the Debian package `package` installed, else
/// why not (for [`Need::RootPackage`]).
pub fn missing_package(package: &str) -> Option<String> {
    let tree = match tree() {
        Ok(tree) => tree,
        Err(why) => return Some(why),
    };
    let status = std::fs::read_to_string(tree.root.join("var/lib/dpkg/status")).unwrap_or_default();
    let installed = status.split("\n\n").any(|stanza| {
        stanza.lines().any(|l| l == format!("Package: {package}"))
            && stanza.lines().any(|l| l == "Status: install ok installed")
    });
    (!installed).then(|| {
        format!(
            "the systemd {} tree {} has no package `{package}` (run scripts/setup{})",
            tree.version,
            tree.root.display(),
            match tree.root == Path::new("/") {
                true => format!(", and set {VERSION_ENV} to a version whose root has it"),
                false => String::new(),
            }
        )
    })
}

/// `None` when the tree for the chosen version is there, else why not (for [`Need::Systemd`]).
pub fn missing() -> Option<String> {
    tree().err()
}

/// The major version of the `systemd` package in `root`'s dpkg database (`257.13-1~deb13u1` ->
/// 257); read from the database, never by running a systemd outside its container.
fn package_version(root: &Path) -> Option<u32> {
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).ok()?;
    let stanza = status
        .split("\n\n")
        .find(|s| s.lines().any(|l| l == "Package: systemd"))?;
    let version = stanza.lines().find_map(|l| l.strip_prefix("Version: "))?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A running systemd container; powered off (SIGTERM to `systemd-nspawn`) on drop.
pub struct Systemd {
    process: ProcessGuard,
    bus_address: String,
    dir: tempfile::TempDir,
    /// Removed after `process` stops (fields drop in order).
    _cgroup: ContainerCgroup,
}

impl Systemd {
    /// Boots the container and waits until `Manager.Version` answers on its bus.
    pub async fn start() -> Systemd {
        Systemd::start_with_binds(&[]).await
    }

    /// [`Systemd::start`] with each `(host directory, path in the container)` of `binds` bound
    /// in as well (e.g. a Podman configuration at `/etc/containers`).
    pub async fn start_with_binds(binds: &[(&Path, &str)]) -> Systemd {
        let dir = temp_dir("systemd");
        let bus = dir.path().join("bus");
        let units = dir.path().join("units");
        std::fs::create_dir_all(&bus).expect("create bus dir");
        std::fs::create_dir_all(&units).expect("create unit dir");
        // Unique, so parallel containers do not share nspawn's per-machine state under /run.
        let suffix = dir.path().file_name().unwrap_or_default().to_string_lossy();
        let machine = format!("sk-{}-{}", std::process::id(), suffix.replace('.', "-"));
        let tree = tree().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("-D")
            .arg(&tree.root)
            .args(["--volatile=yes", "--register=no", "--keep-unit"])
            .arg(format!("--machine={machine}"))
            .arg(format!("--bind={}:/run/dbus", bus.display()))
            .arg(format!("--bind={}:/etc/systemd/system", units.display()));
        for (host, inside) in binds {
            cmd.arg(format!("--bind={}:{inside}", host.display()));
        }
        if Path::new(DOCKER_SOCKET).exists() {
            cmd.arg(format!("--bind={DOCKER_SOCKET}"));
        }
        let docker_mount_point = tree.root.join(HOST_DOCKER_CLI.trim_start_matches('/'));
        if tree.root != Path::new("/") && docker_mount_point.exists() {
            cmd.arg(format!("--bind-ro={HOST_DOCKER_CLI}"));
        }
        cmd.args(["-b", "--", "--unit=basic.target", "systemd.firstboot=off"]);
        let cgroup = ContainerCgroup::create(&machine);
        cgroup.enter_on_spawn(&mut cmd);
        let log = dir.path().join("nspawn.log");
        let process = ProcessGuard::spawn("systemd-nspawn", &mut cmd, &log, SignalTarget::Pid);
        let bus_address = format!("unix:path={}", bus.join("system_bus_socket").display());
        let mut systemd = Systemd {
            process,
            bus_address,
            dir,
            _cgroup: cgroup,
        };
        systemd.wait_ready().await;
        systemd
    }

    async fn wait_ready(&mut self) {
        let socket = self.bus_dir().join("system_bus_socket");
        let address = self.bus_address.clone();
        let ready = poll_until(BOOT_TIMEOUT, "systemd Manager.Version answers", || {
            let (socket, address) = (socket.clone(), address.clone());
            async move {
                if !socket.exists() {
                    return Err("no bus socket yet".to_string());
                }
                let conn = connect(&address).await.map_err(|e| e.to_string())?;
                let mgr = ManagerProxy::new(&conn).await.map_err(|e| e.to_string())?;
                mgr.version().await.map_err(|e| e.to_string())
            }
        })
        .await;
        let answered =
            ready.unwrap_or_else(|e| panic!("{e}\n--- nspawn log ---\n{}", self.log_tail(40)));
        // The systemd that booted is the one asked for, not a tree's mislabelled package.
        let major = answered.split(|c: char| !c.is_ascii_digit()).next();
        assert_eq!(
            major,
            Some(version().to_string().as_str()),
            "{VERSION_ENV}: Manager.Version says {answered:?}"
        );
    }

    /// The container's system bus, `unix:path=<tmp>/bus/system_bus_socket`.
    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// Host directory that appears in the container as `/run/dbus` (handy for scripts).
    pub fn bus_dir(&self) -> PathBuf {
        self.dir.path().join("bus")
    }

    /// Host directory bound at the container's `/etc/systemd/system`.
    pub fn unit_dir(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    /// Writes `/etc/systemd/system/<name>` (call [`Systemd::reload`] afterwards).
    pub fn write_unit(&self, name: &str, contents: &str) {
        std::fs::write(self.unit_dir().join(name), contents).expect("write unit file");
    }

    /// Writes `/etc/systemd/system/<unit>.d/<file>` (call [`Systemd::reload`] afterwards).
    pub fn write_dropin(&self, unit: &str, file: &str, contents: &str) {
        let dir = self.unit_dir().join(format!("{unit}.d"));
        std::fs::create_dir_all(&dir).expect("create drop-in dir");
        std::fs::write(dir.join(file), contents).expect("write drop-in");
    }

    /// A new connection to the container's system bus.
    pub async fn connection(&self) -> Connection {
        connect(&self.bus_address)
            .await
            .expect("connect to the container's bus")
    }

    /// A Manager proxy on a new connection, already `Subscribe()`d to unit signals.
    pub async fn manager(&self) -> ManagerProxy<'static> {
        let conn = self.connection().await;
        let mgr = ManagerProxy::new(&conn).await.expect("manager proxy");
        mgr.subscribe().await.expect("Manager.Subscribe");
        mgr
    }

    /// `Manager.Reload()` (daemon-reload).
    pub async fn reload(&self) {
        self.manager().await.reload().await.expect("Manager.Reload");
    }

    /// The container's PID 1 (systemd) as the host sees it: `systemd-nspawn`'s child.
    pub fn init_pid(&self) -> u32 {
        let nspawn = self.process.pid();
        let children = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
            .expect("read systemd-nspawn's children");
        let mut pids = children.split_whitespace();
        match (pids.next(), pids.next()) {
            (Some(pid), None) => pid.parse().expect("pid"),
            _ => panic!("systemd-nspawn {nspawn} has children {children:?}, not just PID 1"),
        }
    }

    /// Runs `systemctl ARGS` inside the container, where it talks to systemd over
    /// `/run/systemd/private`, not the system bus: the way to reach systemd while the bus is down.
    /// Returns stdout; panics when it fails.
    pub fn systemctl(&self, args: &[&str]) -> String {
        let target = self.init_pid().to_string();
        super::run(
            Command::new("nsenter")
                .args(["--target", &target, "--mount", "--pid", "--", "systemctl"])
                .args(args),
        )
    }

    /// Runs `argv` inside the container (its mount and PID namespaces, as root) and returns its
    /// output, whether it succeeded or not.
    pub fn exec(&self, argv: &[&str]) -> std::process::Output {
        let target = self.init_pid().to_string();
        Command::new("nsenter")
            .args(["--target", &target, "--mount", "--pid", "--"])
            .args(argv)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {argv:?}: {e}"))
    }

    /// Runs `argv` inside the container as [`Systemd::exec`] does; panics with its output when
    /// it fails. Returns stdout.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "{argv:?} in the container: {}\n{}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Last lines of the container's console log (systemd's boot and unit messages).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Powers the container off (SIGTERM to `systemd-nspawn`) and waits for it to exit.
    pub fn stop(&mut self) {
        self.process.stop_within(POWEROFF_TIMEOUT);
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects to a bus address such as `unix:path=/tmp/x/bus/system_bus_socket`.
pub async fn connect(address: &str) -> zbus::Result<Connection> {
    zbus::connection::Builder::address(address).build().await
}

/// Which unit job to run and wait for.
#[derive(Clone, Copy, Debug)]
pub enum Job {
    Start,
    Stop,
    Restart,
    /// `ReloadUnit`: runs the unit's `ExecReload=`.
    Reload,
}

/// Runs `job` on `unit` with mode "replace" and waits for its `JobRemoved`; returns its result
/// (`done`, `failed`, `timeout`, ...).
pub async fn run_job(mgr: &ManagerProxy<'_>, job: Job, unit: &str) -> String {
    let mut removed = mgr.receive_job_removed().await.expect("JobRemoved stream");
    let (name, mode) = (unit.to_string(), "replace".to_string());
    let path = match job {
        Job::Start => mgr.start_unit(name, mode).await,
        Job::Stop => mgr.stop_unit(name, mode).await,
        Job::Restart => mgr.restart_unit(name, mode).await,
        Job::Reload => mgr.reload_unit(name, mode).await,
    }
    .unwrap_or_else(|e| panic!("{job:?} {unit}: {e}"));
    let wait = async {
        while let Some(signal) = removed.next().await {
            let args = signal.args().expect("JobRemoved args");
            if args.job.as_str() == path.as_str() {
                return args.result.clone();
            }
        }
        panic!("JobRemoved stream ended");
    };
    tokio::time::timeout(JOB_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("{job:?} {unit}: no JobRemoved within {JOB_TIMEOUT:?}"))
}

/// The unit's current `ActiveState` (fresh, not cached).
pub async fn active_state(conn: &Connection, unit: &str) -> String {
    let mgr = ManagerProxy::new(conn).await.expect("manager proxy");
    let path = mgr.load_unit(unit.to_string()).await.expect("LoadUnit");
    let unit = UnitProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("unit proxy");
    unit.active_state().await.expect("ActiveState")
}

/// The service's `Environment` property as systemd reports it now (fresh, not cached).
pub async fn service_environment(conn: &Connection, unit: &str) -> Vec<String> {
    let mgr = ManagerProxy::new(conn).await.expect("manager proxy");
    let path = mgr.load_unit(unit.to_string()).await.expect("LoadUnit");
    let service = ServiceProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("service proxy");
    service.environment().await.expect("Service.Environment")
}

/// The version the unit runs: the last `SIDEKICK_VERSION=` of its `Environment`, `<unset>`
/// without one.
pub async fn unit_version(conn: &Connection, unit: &str) -> String {
    service_environment(conn, unit)
        .await
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("SIDEKICK_VERSION="))
        .unwrap_or("<unset>")
        .to_string()
}
