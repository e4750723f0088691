//! Rollout benchmark (not a test): one run on the `tests/rollout` fleet (etcd, registry, Traefik,
//! the example update service, three `web@N` units on Docker, three sidekicks), under a load of
//! 80 requests/s through Traefik, printing two tables:
//!
//! - **by hand**: each app unit restarted in turn the seed's way (`RestartUnit` while it is
//!   registered in Traefik, no deregistration or drain first) and drain first (the sidekick
//!   stopped, so it deregisters, then the drain, then `RestartUnit`); failed requests and time out
//!   of rotation;
//! - **the swap**: 2.0.0 published and rolled out by the sidekicks; each instance's time out of
//!   rotation against the floor (drain + restart + rise × probe interval), slot holds, the whole
//!   rollout, requests sent and failed, and the sidekicks' RSS and CPU during and after it. When
//!   the swap is missing from the build, the table says so and the rows by hand still print;
//! - **min_healthy** (issue 17), on a fleet of its own: 2.0.0 rolled out with
//!   `rollout.min_healthy = "10s"`; the whole rollout against its floor (per instance drain +
//!   restart + rise × probe interval + min_healthy, summed over the three), each swap's steps from
//!   the version's history in etcd, requests sent and failed, and the ETA that
//!   `sidekick rollout status --json --wait` printed at each change against the actual finish.
//!
//! `cargo build --release --bin sidekick --example rollout_bench && ./target/release/examples/rollout_bench`
//! (needs root: systemd runs in a throw-away nspawn container, see TESTING.md).
//! `--only swap` runs the first two tables, `--only min-healthy` the last.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "omaha_server/service/mod.rs"]
mod service;

#[path = "../tests/rollout/by_hand.rs"]
mod by_hand;
#[path = "../tests/rollout/fleet.rs"]
mod fleet;
#[path = "../tests/rollout/load.rs"]
mod load;
#[path = "../tests/rollout/quadlet.rs"]
mod quadlet;
#[path = "../tests/rollout/rotation.rs"]
mod rotation;
#[path = "../tests/rollout/sidekick_process.rs"]
mod sidekick_process;
#[path = "../tests/rollout/traffic.rs"]
mod traffic;
#[path = "../tests/rollout/units.rs"]
mod units;
#[path = "../tests/rollout/update_service.rs"]
mod update_service;

#[path = "rollout_bench/min_healthy.rs"]
mod min_healthy;
#[path = "rollout_bench/status_watch.rs"]
mod status_watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use by_hand::Method;
use fleet::{Fleet, FleetSpec, SERVERS_PREFIX, SLOTS_PREFIX};
use load::LoadReport;
use rotation::{KeyWatch, count_keys, rotation, slot_holds};
use support::poll_until;

const RATE: u32 = 80;
/// Bound of the load during one rolling restart by hand.
const BY_HAND_TIMEOUT: Duration = Duration::from_secs(240);
/// The whole rollout of three instances must end within this.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// Idle window after the rollout, for the sidekicks' resting cost.
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// RSS is sampled this often; the maximum is reported.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Time for Traefik to follow etcd before the load stops, so late failures are counted.
const SETTLE: Duration = Duration::from_secs(4);
const NEW_VERSION: &str = "2.0.0";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let needs = [
        support::etcd::NEEDS,
        support::systemd::NEEDS,
        support::images::NEEDS,
        support::registry::NEEDS,
        support::traefik::NEEDS,
    ]
    .concat();
    let parts = match Parts::from_args(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("rollout_bench: {e}");
            std::process::exit(2);
        }
    };
    if !support::prerequisites_met(&needs) {
        return;
    }
    println!("\n## rollout bench: 3 instances, {RATE} requests/s through Traefik");
    if parts.swap {
        by_hand_and_swap().await;
    }
    if parts.min_healthy {
        match min_healthy::run(RATE).await {
            Err(why) => println!(
                "\nthe swap with rollout.min_healthy = \"{}\": NOT MEASURED: {why}",
                humantime::format_duration(min_healthy::MIN_HEALTHY)
            ),
            Ok(run) => min_healthy::print(&run),
        }
    }
}

/// Which tables run.
struct Parts {
    swap: bool,
    min_healthy: bool,
}

impl Parts {
    /// No argument: all; `--only swap` (by hand and the swap) or `--only min-healthy`.
    fn from_args(args: &[String]) -> Result<Parts, String> {
        let (swap, min_healthy) = match args {
            [] => (true, true),
            [flag, only] if flag == "--only" => match only.as_str() {
                "swap" => (true, false),
                "min-healthy" => (false, true),
                other => return Err(format!("--only {other}: expected `swap` or `min-healthy`")),
            },
            _ => return Err("usage: rollout_bench [--only swap|min-healthy]".into()),
        };
        Ok(Parts { swap, min_healthy })
    }
}

/// The tables by hand and of the swap, on one fleet (gone when this returns).
async fn by_hand_and_swap() {
    let mut spec = FleetSpec::new(sidekick_binary());
    spec.updates = true;
    spec.versions = vec![NEW_VERSION];
    let mut fleet = Fleet::start(spec.clone()).await;
    fleet.wait_all_routed(Duration::from_secs(30)).await;

    let seed = by_hand_run(&mut fleet, Method::SeedsWay).await;
    let drained = by_hand_run(&mut fleet, Method::DrainFirst(spec.drain)).await;
    let swap = swap_way(&fleet).await;

    println!("\nrolling restarts by hand, each instance routed again before the next:");
    println!(
        "| method | restarts | requests | failed | restart to answering (median) | out of rotation (median) | most out at once |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let drain = humantime::format_duration(spec.drain);
    for (method, run) in [
        (
            "the seed's way: RestartUnit while registered".to_string(),
            &seed,
        ),
        (
            format!("drain first: SIGTERM the sidekick, wait {drain}, RestartUnit"),
            &drained,
        ),
    ] {
        println!(
            "| {method} | {} | {} | {} | {:.2} s | {} | {} |",
            run.restarts.len(),
            run.load.sent(),
            run.load.failed(),
            median(&run.restarts).as_secs_f64(),
            median_opt(&run.out_of_rotation).map_or("-".into(), |d| secs(Some(d))),
            run.max_out_at_once,
        );
    }
    for (method, run) in [("seed's way", &seed), ("drain first", &drained)] {
        if run.load.failed() > 0 {
            println!("{method} failures: {}", failure_kinds(&run.load));
        }
    }
    let all_restarts: Vec<Duration> = seed
        .restarts
        .iter()
        .chain(&drained.restarts)
        .copied()
        .collect();
    let restart = median(&all_restarts);
    let floor = spec.drain + restart + spec.probe_interval * spec.rise;
    println!(
        "\nthe swap to {NEW_VERSION} (drain {}, slot.max 1, poll {}; floor = drain + restart {:.2} s + rise {} × {} = {:.2} s)",
        humantime::format_duration(spec.drain),
        humantime::format_duration(spec.update_interval),
        restart.as_secs_f64(),
        spec.rise,
        humantime::format_duration(spec.probe_interval),
        floor.as_secs_f64(),
    );
    match swap {
        Err(why) => println!("NOT MEASURED: {why}"),
        Ok(swap) => print_swap(&swap, floor),
    }
}

/// What one rolling restart by hand measured.
struct ByHand {
    load: LoadReport,
    restarts: Vec<Duration>,
    out_of_rotation: Vec<Duration>,
    max_out_at_once: usize,
}

/// Restarts each unit in turn by `method` under load, each routed again before the next.
async fn by_hand_run(fleet: &mut Fleet, method: Method) -> ByHand {
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let load = fleet.load(RATE, BY_HAND_TIMEOUT);
    let mut restarts = Vec::new();
    for i in 0..fleet.instances.len() {
        restarts.push(by_hand::restart_instance(fleet, i, method).await);
    }
    tokio::time::sleep(SETTLE).await;
    let load = load.finish().await;
    let rotation = rotation(&servers);
    ByHand {
        load,
        restarts,
        out_of_rotation: rotation
            .stretches
            .iter()
            .filter_map(|s| s.duration())
            .collect(),
        max_out_at_once: rotation.max_out_at_once,
    }
}

/// What the swap measured.
struct Swap {
    load: LoadReport,
    rollout: Duration,
    out_of_rotation: Vec<(String, Option<Duration>)>,
    max_out_at_once: usize,
    holds: Vec<Option<Duration>>,
    during: Usage,
    idle: Usage,
}

/// Publishes the new version under load and waits for all three to run it; then idles.
async fn swap_way(fleet: &Fleet) -> Result<Swap, String> {
    let servers = KeyWatch::start(&fleet.client, SERVERS_PREFIX).await;
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let sampler = UsageSampler::start(fleet.sidekick_pids());
    let load = fleet.load(RATE, ROLLOUT_TIMEOUT + SETTLE * 2);
    let start = Instant::now();
    fleet.publish(NEW_VERSION).await;
    if let Err(e) = fleet
        .wait_swap_started(&slots, fleet::SWAP_START_TIMEOUT)
        .await
    {
        let load = load.finish().await;
        let _ = sampler.finish().await;
        return Err(format!(
            "{e}; {} requests sent, {} failed meanwhile",
            load.sent(),
            load.failed()
        ));
    }
    let done = all_on_version(fleet, NEW_VERSION, ROLLOUT_TIMEOUT).await;
    let rollout = start.elapsed();
    tokio::time::sleep(SETTLE).await;
    let load = load.finish().await;
    let during = sampler.finish().await;
    if let Err(e) = done {
        return Err(format!(
            "{e} (is the swap in this build?); {} requests sent, {} failed meanwhile",
            load.sent(),
            load.failed()
        ));
    }
    let sampler = UsageSampler::start(fleet.sidekick_pids());
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = sampler.finish().await;
    let rotation = rotation(&servers);
    Ok(Swap {
        load,
        rollout,
        out_of_rotation: rotation
            .stretches
            .iter()
            .map(|s| (s.instance.clone(), s.duration()))
            .collect(),
        max_out_at_once: rotation.max_out_at_once,
        holds: slot_holds(&slots).iter().map(|h| h.duration()).collect(),
        during,
        idle,
    })
}

/// Waits until every unit runs `version`, every instance is registered and no slot is held.
async fn all_on_version(fleet: &Fleet, version: &str, timeout: Duration) -> Result<(), String> {
    poll_until(timeout, "every unit on the new version", || async {
        let mut versions = Vec::new();
        for i in 0..fleet.instances.len() {
            versions.push(fleet.unit_version(i).await);
        }
        let registered = count_keys(&fleet.client, SERVERS_PREFIX).await;
        let held = count_keys(&fleet.client, SLOTS_PREFIX).await;
        let all = versions.iter().all(|v| v == version);
        match all && registered == versions.len() && held == 0 {
            true => Ok(()),
            false => Err(format!(
                "units on {versions:?}, {registered} registered, {held} slots held"
            )),
        }
    })
    .await
}

fn print_swap(swap: &Swap, floor: Duration) {
    println!("| instance | out of rotation | floor | over the floor |");
    println!("| --- | --- | --- | --- |");
    for (instance, out) in &swap.out_of_rotation {
        let over = out.map(|o| o.as_secs_f64() - floor.as_secs_f64());
        println!(
            "| {instance} | {} | {:.2} s | {} |",
            secs(*out),
            floor.as_secs_f64(),
            over.map_or("-".into(), |o| format!("{o:+.2} s"))
        );
    }
    println!("\n| figure | value |");
    println!("| --- | --- |");
    let holds: Vec<String> = swap.holds.iter().map(|h| secs(*h)).collect();
    println!("| slot holds | {} |", holds.join(", "));
    println!(
        "| whole rollout (publish to all 3 registered on {NEW_VERSION}, no slot held) | {:.1} s |",
        swap.rollout.as_secs_f64()
    );
    println!(
        "| most instances out of rotation at once | {} |",
        swap.max_out_at_once
    );
    println!(
        "| requests sent / failed | {} / {} ({:.1} requests/s) |",
        swap.load.sent(),
        swap.load.failed(),
        swap.load.achieved_rate()
    );
    for (when, usage) in [
        ("during the rollout", &swap.during),
        ("idle after", &swap.idle),
    ] {
        println!(
            "| sidekick {when}: max RSS per process / CPU of one core, all 3 | {:.1} MiB / {:.2} % |",
            usage.max_rss_kib as f64 / 1024.0,
            usage.cpu_seconds / usage.window.as_secs_f64() * 100.0,
        );
    }
    if swap.load.failed() > 0 {
        println!("swap failures: {}", failure_kinds(&swap.load));
        println!("{}", swap.load.render_timeline());
    }
}

/// Failures grouped by what went wrong.
fn failure_kinds(report: &LoadReport) -> String {
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for s in report.failures() {
        let kind = match &s.outcome {
            load::Outcome::Status(code) => format!("HTTP {code}"),
            load::Outcome::ConnectionError(_) => "connection error".into(),
            load::Outcome::Timeout => "timeout".into(),
            load::Outcome::Answered(_) => continue,
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sidekicks' resources over a window.
struct Usage {
    max_rss_kib: u64,
    cpu_seconds: f64,
    window: Duration,
}

/// Samples RSS in the background and reads CPU time at the start and the end.
struct UsageSampler {
    pids: Vec<i32>,
    cpu_before: f64,
    start: Instant,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl UsageSampler {
    fn start(pids: Vec<i32>) -> UsageSampler {
        let cpu_before = pids.iter().map(|&p| cpu_seconds(p)).sum();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sampled = pids.clone();
        let task = tokio::spawn(async move {
            let mut max = 0;
            loop {
                for &pid in &sampled {
                    max = max.max(rss_kib(pid));
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = stopped.changed() => return max,
                }
            }
        });
        UsageSampler {
            pids,
            cpu_before,
            start: Instant::now(),
            stop,
            task,
        }
    }

    async fn finish(self) -> Usage {
        let _ = self.stop.send(true);
        let max_rss_kib = self.task.await.unwrap_or(0);
        let cpu_after: f64 = self.pids.iter().map(|&p| cpu_seconds(p)).sum();
        Usage {
            max_rss_kib,
            cpu_seconds: cpu_after - self.cpu_before,
            window: self.start.elapsed(),
        }
    }
}

/// VmRSS of `pid` in KiB (0 when gone).
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of `pid`.
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    fields
        .get(11..13)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum::<f64>()
        / ticks
}

fn median(values: &[Duration]) -> Duration {
    median_opt(values).unwrap_or_default()
}

fn median_opt(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("still out".into(), |d| format!("{:.2} s", d.as_secs_f64()))
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
