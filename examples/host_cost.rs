//! A host's cost of its sidekicks (not a test; issue 19): N app units (`web@1` … `web@N`, default
//! 20) in the throw-away systemd container, each with its own `sidekick run` (release build),
//! each with its real etcd connection (a registration under a 30 s TTL lease) and its real D-Bus
//! connection following its unit. Once every instance is registered and a settling pause has
//! passed, it measures an idle window: each process's PSS, RSS and anonymous memory from
//! `/proc/<pid>/smaps_rollup`, and its CPU time from `/proc/<pid>/stat`. Prints one table.
//!
//! `cargo build --release --bin sidekick && cargo run --example host_cost [-- N [IDLE_SECS]]`
//! (needs root: systemd runs in a throw-away nspawn container, see the README's test section).
//! The sidekick measured is `target/release/sidekick` (`SIDEKICK_BIN` overrides it).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use support::etcd::Etcd;
use support::systemd::{self, Job, Systemd};
use support::{ProcessGuard, SignalTarget, poll_until, temp_dir};

const TTL_SECS: u64 = 30;
const SETTLE: Duration = Duration::from_secs(10);

fn sidekick_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SIDEKICK_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir");
    let bin = target.join("release").join("sidekick");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release --bin sidekick` first",
        bin.display()
    );
    bin
}

fn start_sidekick(systemd: &Systemd, dir: &Path, etcd: &str, n: usize) -> ProcessGuard {
    std::fs::create_dir_all(dir.join("root")).expect("config root");
    let config = dir.join("sidekick.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\nunit = \"web@{n}.service\"\n[etcd]\nendpoints = [\"{etcd}\"]\n\
             [registration]\nhost = \"127.0.0.1\"\nport = {port}\nttl = \"{TTL_SECS}s\"\n\
             [health]\ncheck = \"none\"\n[update]\nenabled = false\n\
             [daemon]\nstate_dir = \"{state}\"\n",
            port = 8000 + n,
            state = dir.join("state").display(),
        ),
    )
    .expect("config");
    let mut cmd = Command::new(sidekick_binary());
    cmd.args(["run", "--log", "stderr", "--config"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.bus_address())
        .env("SIDEKICK_CONFIG_ROOT", dir.join("root"))
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    ProcessGuard::spawn(
        "sidekick",
        &mut cmd,
        &dir.join("sidekick.log"),
        SignalTarget::Group,
    )
}

/// `Rss`, `Pss` and `Anonymous` of `pid` in KiB, from `/proc/<pid>/smaps_rollup`.
fn memory_kib(pid: u32) -> [u64; 3] {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in smaps_rollup of {pid}"))
    };
    [field("Rss:"), field("Pss:"), field("Anonymous:")]
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("stat of {pid}: {e}"));
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn registered(client: &Client) -> i64 {
    let got = client
        .clone()
        .get(
            "/services/web/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count registrations");
    got.count()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !support::prerequisites_met(&[systemd::NEEDS, support::etcd::NEEDS].concat()) {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = args.first().map_or(20, |a| a.parse().expect("N"));
    let idle = Duration::from_secs(args.get(1).map_or(60, |a| a.parse().expect("IDLE_SECS")));
    let dir = temp_dir("host-cost");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "web@.service",
        "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0 SIDEKICK_IMAGE=web:1.0.0\n\
         ExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let mgr = systemd.manager().await;
    for n in 1..=count {
        let unit = format!("web@{n}.service");
        assert_eq!(systemd::run_job(&mgr, Job::Start, &unit).await, "done");
    }
    let sidekicks: Vec<ProcessGuard> = (1..=count)
        .map(|n| {
            let own = dir.path().join(format!("web-{n}"));
            start_sidekick(&systemd, &own, &etcd.endpoint(), n)
        })
        .collect();
    let all = count as i64;
    poll_until(Duration::from_secs(60), "every instance registered", || {
        let client = &client;
        async move {
            match registered(client).await {
                n if n == all => Ok(()),
                n => Err(format!("{n} of {all}")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekicks[0].log_tail(20)));
    tokio::time::sleep(SETTLE).await;

    let pids: Vec<u32> = sidekicks.iter().map(ProcessGuard::pid).collect();
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    tokio::time::sleep(idle).await;
    let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let memory: Vec<[u64; 3]> = pids.iter().map(|&p| memory_kib(p)).collect();
    assert_eq!(registered(&client).await, all, "a registration was lost");

    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let column = |i: usize| memory.iter().map(|m| mib(m[i])).collect::<Vec<f64>>();
    let (rss, pss, anon) = (column(0), column(1), column(2));
    let ticks: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total_ticks: u64 = ticks.iter().sum();
    let cpu_pct = total_ticks as f64 / hz / idle.as_secs_f64() * 100.0;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "\n{count} sidekicks on one host, each registered in etcd and following its unit over D-Bus; \
         idle window {}s",
        idle.as_secs()
    );
    println!("| figure | median per sidekick | max per sidekick | total |");
    println!("| --- | --- | --- | --- |");
    for (name, v) in [("PSS", &pss), ("RSS", &rss), ("anonymous", &anon)] {
        println!(
            "| {name} | {:.2} MiB | {:.2} MiB | {:.1} MiB |",
            median(v.clone()),
            max(v),
            v.iter().sum::<f64>()
        );
    }
    println!(
        "| CPU, idle | {:.4} % | {} ticks | {total_ticks} ticks = {cpu_pct:.4} % of one core |",
        median(ticks.iter().map(|&t| t as f64).collect()) / hz / idle.as_secs_f64() * 100.0,
        ticks.iter().max().unwrap(),
    );
    drop(sidekicks);
}
