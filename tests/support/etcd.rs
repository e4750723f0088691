//! Real etcd: one member or a 3-member cluster on free loopback ports, data in a temp dir.
//! Members can be stopped, killed and restarted on the same data dir for fault tests. Readiness
//! means a linearizable `get` answers (a leader exists).
//!
//! Which etcd: `SIDEKICK_ETCD_VERSION` (default [`DEFAULT_VERSION`]) names the version, found as
//! `$SIDEKICK_TEST_TOOLS/etcd/<version>/etcd` (default tools dir `/opt/sidekick-test-tools`, where
//! `scripts/setup` unpacks Debian's 3.5.16 and 3.5.30) or as the system's `/usr/bin/etcd` (Debian
//! 12's 3.4.23) when that reports the version. The binary must report the version asked for;
//! otherwise etcd tests skip, or fail with `SIDEKICK_REQUIRE_E2E=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::peer_links::PeerLinks;
use super::{Need, ProcessGuard, SignalTarget, free_port, poll_until, temp_dir};

/// What etcd tests need from the machine: the etcd binary of the chosen version.
pub const NEEDS: &[Need] = &[Need::Etcd];

/// Env var naming the etcd version the tests run against.
pub const VERSION_ENV: &str = "SIDEKICK_ETCD_VERSION";
/// The version tests run against when [`VERSION_ENV`] is unset (Debian unstable's).
pub const DEFAULT_VERSION: &str = "3.5.30";
/// Every version the test command runs (`scripts/test` runs the registration, slots and control
/// suites on each).
pub const TESTED_VERSIONS: &[&str] = &["3.4.23", "3.5.16", "3.5.30"];
/// Env var naming the test tools dir (as in `scripts/setup`).
const TOOLS_ENV: &str = "SIDEKICK_TEST_TOOLS";
const DEFAULT_TOOLS: &str = "/opt/sidekick-test-tools";
/// Debian 12's `etcd-server` (3.4.23).
const SYSTEM_BINARY: &str = "/usr/bin/etcd";

/// The etcd version tests run against ([`VERSION_ENV`], else [`DEFAULT_VERSION`]).
pub fn version() -> String {
    std::env::var(VERSION_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_VERSION.to_string())
}

/// True when the chosen etcd is older than `major.minor` (e.g. `older_than(3, 5)` on 3.4.23).
pub fn older_than(major: u32, minor: u32) -> bool {
    let v = version();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) < (major, minor)
}

/// The etcd binary of the chosen [`version`], checked once per process by its `--version`.
pub fn binary() -> Result<&'static Path, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let want = version();
            let tools = std::env::var(TOOLS_ENV).unwrap_or_else(|_| DEFAULT_TOOLS.to_string());
            let candidates = [
                Path::new(&tools).join("etcd").join(&want).join("etcd"),
                PathBuf::from(SYSTEM_BINARY),
            ];
            let mut seen = Vec::new();
            for path in candidates {
                match reported_version(&path) {
                    Some(got) if got == want => return Ok(path),
                    Some(got) => seen.push(format!("{} is {got}", path.display())),
                    None => seen.push(format!("no {}", path.display())),
                }
            }
            Err(format!(
                "etcd {want} ({VERSION_ENV}) not found: {} (run scripts/setup)",
                seen.join(", ")
            ))
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// What `etcd --version` at `path` reports, if it runs.
fn reported_version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(|v| v.trim().to_string())
}

/// How long a member (or a cluster) may take to answer after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One etcd member process; stopped on drop.
pub struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// The peer port the others dial: `peer_port`, or its gate's ([`PeerLinks`]).
    advertised_peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    cluster_token: String,
    process: Option<ProcessGuard>,
}

impl EtcdMember {
    /// The member's name (`--name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The process id while it runs (for benchmarks reading `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessGuard::pid)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ProcessGuard::is_running)
    }

    /// Last lines of this member's log.
    pub fn log_tail(&self, lines: usize) -> String {
        super::tail(&self.log, lines)
    }

    /// Starts the process (no readiness wait). A restart reuses the data dir and ports.
    fn spawn(&mut self) {
        assert!(self.process.is_none(), "{} already running", self.name);
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let advertised = format!("http://127.0.0.1:{}", self.advertised_peer_port);
        let mut cmd = Command::new(binary().unwrap_or_else(|e| panic!("{e}")));
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &advertised])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.cluster_token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        self.process = Some(ProcessGuard::spawn(
            &format!("etcd {}", self.name),
            &mut cmd,
            &self.log,
            SignalTarget::Group,
        ));
    }

    /// Stops the member gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Kills the member with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts a stopped member again on the same data dir and ports (no readiness wait; use
    /// [`EtcdMember::wait_ready`] or the cluster's).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Waits until this member serves a linearizable read (needs a cluster leader).
    pub async fn wait_ready(&mut self) {
        let endpoint = self.endpoint();
        let ready = poll_until(READY_TIMEOUT, &format!("etcd {} ready", self.name), || {
            let endpoint = endpoint.clone();
            async move {
                let mut c = connect(&[endpoint]).await?;
                c.get("sidekick-test-readiness", None).await.map(|_| ())
            }
        })
        .await;
        if let Err(e) = ready {
            panic!("{e}\n--- etcd {} log ---\n{}", self.name, self.log_tail(30));
        }
    }
}

/// A running etcd cluster of one or more members in one temp dir; every member stops on drop.
pub struct Etcd {
    members: Vec<EtcdMember>,
    links: Option<PeerLinks>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts a single-member etcd and waits until it answers.
    pub async fn start() -> Etcd {
        Etcd::start_cluster(1).await
    }

    /// Starts an `n`-member cluster (use 3 for failover tests) and waits until every member
    /// answers a linearizable read.
    pub async fn start_cluster(n: usize) -> Etcd {
        Etcd::start_members(n, false).await
    }

    /// An `n`-member cluster whose members reach each other only through [`PeerLinks`] gates,
    /// so a test can cut one member from the others ([`Etcd::links`]).
    pub async fn start_linked_cluster(n: usize) -> Etcd {
        Etcd::start_members(n, true).await
    }

    async fn start_members(n: usize, linked: bool) -> Etcd {
        assert!(n > 0, "a cluster needs a member");
        let dir = temp_dir("etcd");
        let token = dir
            .path()
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sidekick-test".into());
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let links = match linked {
            true => Some(PeerLinks::start(&ports.iter().map(|p| p.1).collect::<Vec<_>>()).await),
            false => None,
        };
        let advertised = |i: usize| links.as_ref().map_or(ports[i].1, |l| l.port(i));
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", advertised(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<EtcdMember> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| EtcdMember {
                name: format!("m{i}"),
                client_port,
                peer_port,
                advertised_peer_port: advertised(i),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                initial_cluster: initial_cluster.clone(),
                cluster_token: token.clone(),
                process: None,
            })
            .collect();
        for (i, m) in members.iter_mut().enumerate() {
            m.spawn();
            if let Some(links) = &links {
                links.set_pid(i, m.pid());
            }
        }
        for m in &mut members {
            m.wait_ready().await;
        }
        Etcd {
            members,
            links,
            _dir: dir,
        }
    }

    /// The gates between the members of a [`Etcd::start_linked_cluster`].
    pub fn links(&self) -> Option<&PeerLinks> {
        self.links.as_ref()
    }

    /// The client URL of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// The client URL of the first member (the only one for a single-member etcd).
    pub fn endpoint(&self) -> String {
        self.members[0].endpoint()
    }

    /// The members, for fault tests (`stop`, `kill`, `restart`).
    pub fn members_mut(&mut self) -> &mut [EtcdMember] {
        &mut self.members
    }

    /// The process id of every running member (for benchmarks reading `/proc`).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(EtcdMember::pid).collect()
    }

    /// One member, for fault tests.
    pub fn member(&mut self, i: usize) -> &mut EtcdMember {
        &mut self.members[i]
    }

    /// A client connected to every member, with a status RPC already answered.
    pub async fn client(&self) -> Client {
        let endpoints = self.endpoints();
        let mut c = connect(&endpoints).await.expect("connect to etcd");
        c.status().await.expect("etcd status");
        c
    }

    /// Stops every member gracefully.
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }

    /// Restarts every stopped member on its data dir and waits until all answer.
    pub async fn restart(&mut self) {
        for (i, m) in self.members.iter_mut().enumerate() {
            if !m.is_running() {
                m.stop();
                m.spawn();
                if let Some(links) = &self.links {
                    links.set_pid(i, m.pid());
                }
            }
        }
        for m in &mut self.members {
            m.wait_ready().await;
        }
    }
}

/// A client with short timeouts; `Client::connect` is lazy, so callers must still make an RPC.
pub async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(opts)).await
}
