//! Nothing the harness starts outlives a test process that is SIGKILLed: drop guards never run
//! then, so `tests/support/reaper.rs` must end etcd, Traefik, the registry, the systemd
//! container, sidekicks and app containers. The test runs itself as a child process that starts
//! all of them, kills that child with SIGKILL, and checks that every one is gone, its temp dirs
//! too.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::etcd::{self, Etcd};
use support::images;
use support::registry::{self, Registry};
use support::systemd::{self, Systemd};
use support::traefik::{self, Traefik};
use support::{
    Need, ProcessGuard, SignalTarget, free_port, poll_until, prerequisites_met, temp_dir,
};

/// Set in the child: where it reports what it started.
const CHILD_REPORT_ENV: &str = "SIDEKICK_TEST_REAPER_CHILD_REPORT";
const TEST_NAME: &str = "nothing_the_harness_starts_outlives_a_sigkilled_test_process";
/// Starting everything on a loaded 2-core machine (the container boot dominates).
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// From the SIGKILL until every server is gone.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

fn needs() -> Vec<Need> {
    [
        etcd::NEEDS,
        systemd::NEEDS,
        images::NEEDS,
        traefik::NEEDS,
        registry::NEEDS,
    ]
    .concat()
}

/// What the child started, one `kind value` per line.
#[derive(Debug, Default)]
struct Report {
    ports: Vec<(String, u16)>,
    pids: Vec<(String, u32)>,
    containers: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Report {
    fn parse(text: &str) -> Report {
        let mut report = Report::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("port"), Some(what), Some(port)) => {
                    report
                        .ports
                        .push((what.into(), port.parse().expect("port")));
                }
                (Some("pid"), Some(what), Some(pid)) => {
                    report.pids.push((what.into(), pid.parse().expect("pid")));
                }
                (Some("container"), Some(name), None) => report.containers.push(name.into()),
                (Some("dir"), Some(path), None) => report.dirs.push(path.into()),
                _ => {}
            }
        }
        report
    }
}

/// Child mode: start one of everything, report it, and wait to be killed.
async fn hold_servers_until_killed(report: &Path) -> ! {
    let dir = temp_dir("reaper-child");
    let etcd = Etcd::start().await;
    let traefik = Traefik::start(&etcd.endpoint()).await;
    let registry = Registry::start().await;
    let systemd = Systemd::start().await;
    let app_port = free_port();
    let app = images::run_app(&images::app_image("1.0.0"), app_port);
    let config = dir.path().join("sidekick.toml");
    std::fs::write(
        &config,
        "[instance]\nunit = \"web@1.service\"\n[registration]\nhost = \"127.0.0.1\"\nport = 8080\n\
         [health]\ncheck = \"none\"\n[update]\nenabled = false\n",
    )
    .expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekick"));
    cmd.args(["run", "--dry-run", "--log", "stderr", "--config"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.bus_address())
        .env("SIDEKICK_CONFIG_ROOT", dir.path());
    let sidekick = ProcessGuard::spawn(
        "sidekick",
        &mut cmd,
        &dir.path().join("sidekick.log"),
        SignalTarget::Group,
    );
    let port_of = |url: &str| url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let lines = [
        format!(
            "port etcd {}",
            port_of(&etcd.endpoint()).expect("etcd port")
        ),
        format!(
            "port traefik {}",
            port_of(&traefik.url()).expect("traefik port")
        ),
        format!(
            "port registry {}",
            port_of(&registry.address()).expect("registry port")
        ),
        format!("port app {app_port}"),
        format!("pid systemd {}", systemd.init_pid()),
        format!("pid sidekick {}", sidekick.pid()),
        format!("container {}", app.name()),
        format!("dir {}", dir.path().display()),
    ];
    let tmp = report.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n").expect("write report");
    std::fs::rename(&tmp, report).expect("publish report");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &(std::net::Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A process that exists and is not a zombie waiting for its new parent to reap it.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(") ")?.1.to_string();
            after_name.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--format", "{{.Name}}", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn still_running(report: &Report) -> Vec<String> {
    let mut alive = Vec::new();
    for (what, port) in &report.ports {
        if port_open(*port) {
            alive.push(format!("{what} on port {port}"));
        }
    }
    for (what, pid) in &report.pids {
        if process_alive(*pid) {
            alive.push(format!("{what} pid {pid}"));
        }
    }
    for name in &report.containers {
        if container_exists(name) {
            alive.push(format!("container {name}"));
        }
    }
    for dir in &report.dirs {
        if dir.exists() {
            alive.push(format!("temp dir {}", dir.display()));
        }
    }
    alive
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_harness_starts_outlives_a_sigkilled_test_process() {
    if let Some(report) = std::env::var_os(CHILD_REPORT_ENV) {
        hold_servers_until_killed(&PathBuf::from(report)).await;
    }
    if !prerequisites_met(&needs()) {
        return;
    }
    let dir = temp_dir("reaper-parent");
    let report_path = dir.path().join("report");
    let log = dir.path().join("child.log");
    let mut child_cmd = Command::new(std::env::current_exe().expect("test binary"));
    child_cmd
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_REPORT_ENV, &report_path);
    // The child test process is itself guarded, so a failure here does not leak it either.
    let mut child = ProcessGuard::spawn("child test", &mut child_cmd, &log, SignalTarget::Pid);

    let text = poll_until(CHILD_READY_TIMEOUT, "the child reports its servers", || {
        let text = std::fs::read_to_string(&report_path);
        let running = child.is_running();
        async move {
            match (text, running) {
                (Ok(text), _) => Ok(text),
                (Err(_), false) => Err("the child test process exited".to_string()),
                (Err(e), true) => Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- child log ---\n{}", child.log_tail(40)));
    let report = Report::parse(&text);
    assert_eq!(report.ports.len(), 4, "{text}");
    // The app container exists before its server listens: wait until all eight are up.
    let up = poll_until(
        CHILD_READY_TIMEOUT,
        "everything the child started runs",
        || {
            let alive = still_running(&report);
            async move {
                match alive.len() {
                    8 => Ok(()),
                    _ => Err(alive),
                }
            }
        },
    )
    .await;
    if let Err(e) = up {
        panic!(
            "not everything ran before the kill: {e}\n--- child log ---\n{}",
            child.log_tail(40)
        );
    }

    // SIGKILL: no drop guard, no panic handler, no atexit runs in the child.
    let killed = std::time::Instant::now();
    child.kill();
    let gone = poll_until(GONE_TIMEOUT, "everything the child started is gone", || {
        let alive = still_running(&report);
        async move {
            match alive.is_empty() {
                true => Ok(()),
                false => Err(alive),
            }
        }
    })
    .await;
    if let Err(e) = gone {
        panic!("{e}\n--- child log ---\n{}", child.log_tail(40));
    }
    eprintln!(
        "everything was gone {:?} after the SIGKILL",
        killed.elapsed()
    );
}
