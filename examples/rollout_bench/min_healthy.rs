//! The rollout under `rollout.min_healthy = "10s"` (issue 17's figures), on a fleet of its own
//! (nothing measured before it, as on a group's first rollout) under the same load: the whole
//! rollout against its floor, each swap's steps from the version's history in etcd, and the ETA
//! that `sidekick rollout status --json --wait` reported at each change against the actual
//! finish, the last slot release.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use sidekick::rollout::state::SwapRecord;

use super::status_watch::{StatusRun, StatusWatch};
use crate::fleet::{self, Fleet, FleetSpec, SLOTS_PREFIX};
use crate::load::LoadReport;
use crate::rotation::{KeyWatch, slot_holds};
use crate::{NEW_VERSION, ROLLOUT_TIMEOUT, SETTLE};

pub const MIN_HEALTHY: Duration = Duration::from_secs(10);
/// The status has printed its last line when the rollout is done; this bounds its exit.
const STATUS_GRACE: Duration = Duration::from_secs(5);
/// Steps shown in columns of their own; the rest go to "other steps".
const MAIN_STEPS: [&str; 4] = ["drain", "restart", "verify", "min_healthy"];

/// What the rollout measured.
pub struct MinHealthyRun {
    spec: FleetSpec,
    load: LoadReport,
    published: Timestamp,
    /// Slot holds seen on etcd's watch, on the wall clock: taken, released.
    holds: Vec<(Timestamp, Option<Timestamp>)>,
    /// The version's swaps from its history in etcd, in the order the slots were taken.
    swaps: Vec<SwapRecord>,
    status: StatusRun,
}

/// Starts a fleet with `min_healthy` 10 s, publishes the new version under load at `rate`, runs
/// `rollout status --wait` from the first slot taken, and waits until all run it with no slot held.
pub async fn run(rate: u32) -> Result<MinHealthyRun, String> {
    let mut spec = FleetSpec::new(crate::sidekick_binary());
    spec.updates = true;
    spec.versions = vec![NEW_VERSION];
    spec.min_healthy = MIN_HEALTHY;
    let fleet = Fleet::start(spec.clone()).await;
    fleet.wait_all_routed(Duration::from_secs(30)).await;
    let slots = KeyWatch::start(&fleet.client, SLOTS_PREFIX).await;
    let load = fleet.load(rate, ROLLOUT_TIMEOUT + SETTLE * 2);
    // The watch times events on the monotonic clock, the status and the history on the wall
    // clock: one reading of both maps the first to the second.
    let anchor = (Instant::now(), Timestamp::now());
    fleet.publish(NEW_VERSION).await;
    if let Err(e) = fleet
        .wait_swap_started(&slots, fleet::SWAP_START_TIMEOUT)
        .await
    {
        let load = load.finish().await;
        return Err(format!(
            "{e}; {} requests sent, {} failed meanwhile",
            load.sent(),
            load.failed()
        ));
    }
    let status = StatusWatch::start(&fleet, ROLLOUT_TIMEOUT);
    let done = crate::all_on_version(&fleet, NEW_VERSION, ROLLOUT_TIMEOUT).await;
    tokio::time::sleep(SETTLE).await;
    let load = load.finish().await;
    let status = status.finish(STATUS_GRACE).await;
    if let Err(e) = done {
        return Err(format!(
            "{e}; {} requests sent, {} failed meanwhile\n{}",
            load.sent(),
            load.failed(),
            fleet.logs(20)
        ));
    }
    let group = status
        .samples
        .iter()
        .find_map(|s| Some(s.json.as_ref().ok()?["group"].as_str()?.to_string()))
        .ok_or_else(|| {
            format!(
                "`rollout status` printed no group (exit {:?}): {}",
                status.exit, status.stderr
            )
        })?;
    let snap = sidekick::rollout::store::read_group(&mut fleet.client.clone(), &group)
        .await
        .map_err(|e| format!("reading the rollout history of group {group}: {e}"))?;
    let mut swaps = snap
        .versions
        .into_iter()
        .find(|v| v.version == NEW_VERSION)
        .map(|v| v.swaps)
        .unwrap_or_default();
    swaps.sort_by_key(|s| s.took_slot);
    let holds = slot_holds(&slots)
        .iter()
        .map(|h| (wall(anchor, h.from), h.until.map(|u| wall(anchor, u))))
        .collect();
    Ok(MinHealthyRun {
        spec,
        load,
        published: anchor.1,
        holds,
        swaps,
        status,
    })
}

/// `at` on the wall clock, from an (instant, timestamp) pair read together.
fn wall(anchor: (Instant, Timestamp), at: Instant) -> Timestamp {
    let since =
        SignedDuration::try_from(at.saturating_duration_since(anchor.0)).unwrap_or_default();
    anchor.1.checked_add(since).unwrap_or(anchor.1)
}

/// Seconds from `from` to `to` (negative when `to` is earlier).
fn secs_between(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64()
}

fn step(swap: &SwapRecord, name: &str) -> Option<Duration> {
    swap.steps_ms.get(name).map(|ms| Duration::from_millis(*ms))
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

pub fn print(run: &MinHealthyRun) {
    let spec = &run.spec;
    let rise = spec.probe_interval * spec.rise;
    let at = |t: Timestamp| format!("{:.1} s", secs_between(run.published, t));
    println!(
        "\nthe swap to {NEW_VERSION} with rollout.min_healthy = \"{}\" (a fleet of its own, nothing \
         measured before; drain {}, slot.max 1, poll {}, rise {} × {}). Floor per instance = drain \
         + restart (that swap's `restart` step in the version's history in etcd) + rise × probe \
         interval + min_healthy; the rollout's floor is their sum over the 3 instances, one after \
         another (slot.max 1). Times are seconds after the publish.",
        humantime::format_duration(spec.min_healthy),
        humantime::format_duration(spec.drain),
        humantime::format_duration(spec.update_interval),
        spec.rise,
        humantime::format_duration(spec.probe_interval),
    );
    println!(
        "| instance | slot taken | slot held | drain | restart | verify | min_healthy | other steps | floor | over the floor |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut floor_sum = Duration::ZERO;
    let mut restarts = Vec::new();
    for swap in &run.swaps {
        let restart = step(swap, "restart");
        let floor = restart.map(|r| spec.drain + r + rise + spec.min_healthy);
        floor_sum += floor.unwrap_or_default();
        restarts.push(opt_secs(restart));
        let held = swap.duration();
        let others: Vec<String> = swap
            .steps_ms
            .iter()
            .filter(|(name, _)| !MAIN_STEPS.contains(&name.as_str()))
            .map(|(name, ms)| format!("{name} {:.2}", *ms as f64 / 1000.0))
            .collect();
        let over = held.zip(floor).map_or("-".into(), |(h, f)| {
            format!("{:+.2} s", h.as_secs_f64() - f.as_secs_f64())
        });
        let mut main = MAIN_STEPS.iter().map(|name| opt_secs(step(swap, name)));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {over} |",
            swap.instance,
            at(swap.took_slot),
            opt_secs(held),
            main.next().unwrap_or_default(),
            main.next().unwrap_or_default(),
            main.next().unwrap_or_default(),
            main.next().unwrap_or_default(),
            match others.is_empty() {
                true => "-".to_string(),
                false => format!("{} s", others.join(", ")),
            },
            opt_secs(floor),
        );
    }
    if run.swaps.len() != 3 || run.swaps.iter().any(|s| step(s, "restart").is_none()) {
        println!(
            "WARNING: {} swaps in the history ({} with a restart step): the floor below is partial",
            run.swaps.len(),
            run.swaps
                .iter()
                .filter(|s| step(s, "restart").is_some())
                .count()
        );
    }

    let finish = run.holds.iter().filter_map(|h| h.1).max();
    let first_slot = run.holds.first().map(|h| h.0);
    println!("\n| figure | value |");
    println!("| --- | --- |");
    match finish {
        Some(finish) => {
            let whole = secs_between(run.published, finish);
            let floor = floor_sum.as_secs_f64();
            println!(
                "| whole rollout: publish to the last slot released (all 3 on {NEW_VERSION}, past min_healthy) | {whole:.1} s |"
            );
            println!(
                "| its floor: Σ (drain {} + restart + rise {} × {} + min_healthy {}), restarts {} | {floor:.2} s |",
                humantime::format_duration(spec.drain),
                spec.rise,
                humantime::format_duration(spec.probe_interval),
                humantime::format_duration(spec.min_healthy),
                restarts.join(", "),
            );
            println!(
                "| over the floor | {:+.1} s ({:+.0} %) |",
                whole - floor,
                (whole - floor) / floor * 100.0
            );
        }
        None => println!("| whole rollout | no slot release seen |"),
    }
    if let Some(first) = first_slot {
        println!(
            "| of which publish to the first slot taken (update poll, grant, pre-pull) | {} |",
            at(first)
        );
    }
    let held: Vec<String> = run
        .holds
        .iter()
        .map(|h| {
            h.1.map_or("still held".into(), |u| {
                format!("{:.2} s", secs_between(h.0, u))
            })
        })
        .collect();
    println!("| of which slots held | {} |", held.join(", "));
    let gaps: Vec<String> = run
        .holds
        .windows(2)
        .map(|w| {
            w[0].1
                .map_or("-".into(), |u| format!("{:.2} s", secs_between(u, w[1].0)))
        })
        .collect();
    println!(
        "| of which a slot released to the next taken (the next instance's update poll, grant, pre-pull) | {} |",
        gaps.join(", ")
    );
    let done = run
        .status
        .samples
        .iter()
        .find(|s| s.stage() == "done")
        .map(|s| s.at);
    println!(
        "| `rollout status --wait` said done (exit {}) | {} |",
        run.status
            .exit
            .map_or("none: killed".into(), |c| c.to_string()),
        match (done, finish) {
            (Some(d), Some(f)) => format!(
                "at {}, {:.1} s before the last slot release",
                at(d),
                secs_between(d, f)
            ),
            (Some(d), None) => format!("at {}", at(d)),
            (None, _) => "never".into(),
        }
    );
    println!(
        "| requests sent / failed | {} / {} ({:.1} requests/s) |",
        run.load.sent(),
        run.load.failed(),
        run.load.achieved_rate()
    );
    if run.load.failed() > 0 {
        println!(
            "min_healthy rollout failures: {}",
            crate::failure_kinds(&run.load)
        );
        println!("{}", run.load.render_timeline());
    }
    print_eta(run, finish);
}

/// Each status line's predicted finish against the actual one.
fn print_eta(run: &MinHealthyRun, finish: Option<Timestamp>) {
    let at = |t: Timestamp| format!("{:.1} s", secs_between(run.published, t));
    println!(
        "\nthe ETA of `sidekick rollout status --json --wait` (started right after the first slot \
         was taken; one line at its start and one per change it shows) against the actual finish \
         (the last slot release{}). Error = predicted − actual (negative: too early); % of the \
         time that was left when the line was read.",
        finish.map_or(": none seen".into(), |f| format!(", {}", at(f)))
    );
    println!(
        "| line read at | serving (of the instance records read) | stage | estimate per instance | predicted finish | error | time left | error % |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for sample in &run.status.samples {
        let eta = sample.eta();
        let (error, left, pct) = match (eta, finish) {
            (Some(eta), Some(finish)) => {
                let error = secs_between(finish, eta);
                let left = secs_between(sample.at, finish);
                (
                    format!("{error:+.1} s"),
                    format!("{left:.1} s"),
                    format!("{:+.0} %", error / left * 100.0),
                )
            }
            (None, Some(finish)) => (
                "no ETA".into(),
                format!("{:.1} s", secs_between(sample.at, finish)),
                "-".into(),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {error} | {left} | {pct} |",
            at(sample.at),
            sample
                .serving()
                .map_or("-".into(), |(n, of)| format!("{n} of {of}")),
            sample.stage(),
            sample
                .swap_estimate()
                .map_or("-".into(), |s| format!("{s:.1} s")),
            eta.map_or("-".into(), at),
        );
    }
    if run.status.samples.is_empty() || run.status.exit != Some(0) {
        println!(
            "rollout status: exit {:?}, stderr: {}",
            run.status.exit,
            run.status.stderr.trim()
        );
    }
}
