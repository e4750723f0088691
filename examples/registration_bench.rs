//! Registration benchmark (not a test): deregistration latency from `StopUnit` to the etcd watch's
//! delete event over 30 trials, and the idle cost of `sidekick run` (release build) holding one
//! registration for 60 s next to the seed's `etcdctl` shell loop doing the same job.
//!
//! `cargo build --release --bin sidekick && cargo run --release --example registration_bench`
//! (needs root: systemd runs in a throw-away nspawn container, see the README's test section).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType};
use support::etcd::Etcd;
use support::systemd::{self, Job, Systemd};
use support::{poll_until, temp_dir};

const TRIALS: usize = 30;
const IDLE_WINDOW: Duration = Duration::from_secs(60);
const TTL_SECS: u64 = 30;
const KEY: &str = "/services/web/web-1";
const UNIT: &str = "web@1.service";
/// RSS is sampled this often during the idle window; the maximum is reported.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// A process group that is killed on drop.
struct Group {
    child: Child,
    log: PathBuf,
    reaped: bool,
}

impl Group {
    fn spawn(cmd: &mut Command, log: &Path) -> Group {
        let out = std::fs::File::create(log).expect("log");
        let err = out.try_clone().expect("dup");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("spawn");
        Group {
            child,
            log: log.to_path_buf(),
            reaped: false,
        }
    }

    /// SIGTERM and wait for the exit.
    fn terminate(&mut self) {
        // SAFETY: kill(2) on our unreaped child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let _ = self.child.wait();
        self.reaped = true;
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: kill(2) on the process group we created and have not reaped.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Sum of VmRSS (KiB) over the processes of group `pgid`.
fn group_rss_kib(pgid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat_fields(*pid).is_some_and(|f| f[2] == pgid.to_string()))
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Fields of /proc/PID/stat after the command name (field 3 onwards).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds of `pid` including its reaped children (utime+stime+cutime+cstime).
fn cpu_seconds(pid: i32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    stat_fields(pid).map_or(0.0, |f| {
        f[11..15]
            .iter()
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>()
            / ticks
    })
}

/// The largest `etcd_requests=N` in a log.
fn last_request_count(log: &str) -> u64 {
    log.split("etcd_requests=")
        .skip(1)
        .filter_map(|s| {
            s.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

fn sidekick_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("sidekick"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release --bin sidekick` first",
        bin.display()
    );
    bin
}

fn start_sidekick(systemd: &Systemd, dir: &Path, etcd: &str) -> Group {
    let config = dir.join("sidekick.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\nunit = \"{UNIT}\"\n[etcd]\nendpoints = [\"{etcd}\"]\n\
             [registration]\nhost = \"127.0.0.1\"\nport = 8080\nttl = \"{TTL_SECS}s\"\n\
             [health]\ncheck = \"none\"\n[update]\nenabled = false\n"
        ),
    )
    .expect("config");
    std::fs::create_dir_all(dir.join("root")).expect("root");
    let mut cmd = Command::new(sidekick_binary());
    cmd.args(["run", "--log", "stderr", "--config"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.bus_address())
        .env("SIDEKICK_CONFIG_ROOT", dir.join("root"))
        .env(
            "RUST_LOG",
            "info,sidekick::registry=debug,sidekick::etcd=debug",
        )
        .env_remove("NOTIFY_SOCKET");
    Group::spawn(&mut cmd, &dir.join("sidekick.log"))
}

async fn key_present(client: &Client) -> Result<(), String> {
    let got = client
        .clone()
        .get(KEY, None)
        .await
        .map_err(|e| e.to_string())?;
    (got.count() == 1).then_some(()).ok_or("absent".to_string())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one idle run measured.
struct Idle {
    rss_kib: u64,
    cpu_s: f64,
    requests: u64,
}

async fn idle_window(pgid: i32, cpu_pid: i32) -> (u64, f64) {
    let cpu_before = cpu_seconds(cpu_pid);
    let end = Instant::now() + IDLE_WINDOW;
    let mut max_rss = 0;
    while Instant::now() < end {
        max_rss = max_rss.max(group_rss_kib(pgid));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    (max_rss, cpu_seconds(cpu_pid) - cpu_before)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !support::prerequisites_met(&[systemd::NEEDS, support::etcd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("bench");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "web@.service",
        "[Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let mgr = systemd.manager().await;
    let mut sidekick = start_sidekick(&systemd, dir.path(), &etcd.endpoint());

    // Deregistration latency: StopUnit call → delete event on a watch opened before it.
    let mut latencies = Vec::new();
    for _ in 0..TRIALS {
        assert_eq!(systemd::run_job(&mgr, Job::Start, UNIT).await, "done");
        poll_until(Duration::from_secs(10), "registered", || {
            key_present(&client)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
        let mut watch = client.clone().watch(KEY, None).await.expect("watch");
        let start = Instant::now();
        mgr.stop_unit(UNIT.into(), "replace".into())
            .await
            .expect("StopUnit");
        'wait: while let Some(resp) = watch.message().await.expect("watch") {
            for event in resp.events() {
                if event.event_type() == EventType::Delete {
                    latencies.push(start.elapsed());
                    break 'wait;
                }
            }
        }
    }
    latencies.sort();

    // Idle cost of the sidekick: fresh process, registered, then a 60 s window.
    drop(sidekick);
    assert_eq!(systemd::run_job(&mgr, Job::Start, UNIT).await, "done");
    sidekick = start_sidekick(&systemd, dir.path(), &etcd.endpoint());
    poll_until(Duration::from_secs(10), "registered", || {
        key_present(&client)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = last_request_count(&sidekick.log());
    let (rss_kib, cpu_s) = idle_window(sidekick.pid(), sidekick.pid()).await;
    sidekick.terminate();
    let ours = Idle {
        rss_kib,
        cpu_s,
        requests: last_request_count(&sidekick.log()) - before,
    };
    drop(sidekick);

    // The seed's loop, etcd v3 edition: a fresh 60 s lease and a put on it every 30 s.
    let seed_log = dir.path().join("seed-requests.log");
    let script = format!(
        "while true; do echo grant >>{log}; L=$(etcdctl --endpoints={ep} lease grant 60 | cut -d' ' -f2); \
         echo put >>{log}; etcdctl --endpoints={ep} put --lease=$L {KEY} '{{\"host\":\"127.0.0.1\",\"port\":8080}}' >/dev/null; \
         sleep 30; done",
        log = seed_log.display(),
        ep = etcd.endpoint()
    );
    let seed = Group::spawn(
        Command::new("sh")
            .args(["-c", &script])
            .env("ETCDCTL_API", "3"),
        &dir.path().join("seed.log"),
    );
    poll_until(Duration::from_secs(10), "seed registered", || {
        key_present(&client)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", seed.log()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = || {
        std::fs::read_to_string(&seed_log)
            .unwrap_or_default()
            .lines()
            .count() as u64
    };
    let before = count();
    let (rss_kib, cpu_s) = idle_window(seed.pid(), seed.pid()).await;
    let theirs = Idle {
        rss_kib,
        cpu_s,
        requests: count() - before,
    };
    drop(seed);

    let minutes = IDLE_WINDOW.as_secs_f64() / 60.0;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "\nderegistration latency, StopUnit -> etcd watch delete ({TRIALS} trials, release build)"
    );
    println!("| p50 | p99 | min | max | target p99 |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | <= 250 ms |",
        percentile(&latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&latencies, 99.0).as_secs_f64() * 1e3,
        latencies[0].as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
    );
    println!(
        "\nidle cost holding one registration for {}s (TTL {TTL_SECS}s)",
        IDLE_WINDOW.as_secs()
    );
    println!("| | max RSS (process group) | CPU seconds | CPU % of one core | etcd requests/min |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, idle) in [("sidekick run", &ours), ("seed sh+etcdctl loop", &theirs)] {
        println!(
            "| {name} | {:.1} MiB | {:.3} | {:.3} % | {:.1} |",
            idle.rss_kib as f64 / 1024.0,
            idle.cpu_s,
            idle.cpu_s / IDLE_WINDOW.as_secs_f64() * 100.0,
            idle.requests as f64 / minutes,
        );
    }
    println!(
        "| ratio sidekick/seed | {:.2} | {:.2} | | {:.2} |",
        ratio(ours.rss_kib as f64, theirs.rss_kib as f64),
        ratio(ours.cpu_s, theirs.cpu_s),
        ratio(ours.requests as f64, theirs.requests as f64),
    );
    println!(
        "sidekick: {:.1} etcd requests per {TTL_SECS}s TTL (target <= 3); seed loop: 60s lease, put every 30s",
        ours.requests as f64 / minutes / (60.0 / TTL_SECS as f64)
    );
}
