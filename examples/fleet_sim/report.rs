//! The fleet simulation's table: figures computed from the agents' timestamps, the monitor's
//! one-second samples and the keepalive probe.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Requests/s the simulation's own observers send (one count, one probe keepalive).
const OBSERVER_RATE: f64 = 2.0;

use super::observe::Sample;
use super::{PHASE_ROLLOUT, PHASE_STEADY, Shared, Sim, percentile};

/// etcd requests/s between the first and last sample of `phase`, CPU % of one core, peak RSS.
fn window(samples: &[Sample], phase: u8) -> Option<(f64, f64, u64, f64)> {
    let w: Vec<&Sample> = samples.iter().filter(|s| s.phase == phase).collect();
    let (first, last) = (w.first()?, w.last()?);
    let secs = last.at.duration_since(first.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    // Less the monitor's own count and the probe's keepalive, one each per second.
    let rate = ((last.requests - first.requests) / secs - OBSERVER_RATE).max(0.0);
    // Clock ticks are 1/100 s on Linux.
    let cpu = (last.cpu_ticks - first.cpu_ticks) as f64 / 100.0 / secs * 100.0;
    let rss = w.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let watchers = w.iter().map(|s| s.watchers).fold(0.0, f64::max);
    Some((rate, cpu, rss, watchers))
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn probe_p99(probes: &[(u8, f64)], phase: u8) -> String {
    let mut ms: Vec<f64> = probes
        .iter()
        .filter(|p| p.0 == phase)
        .map(|p| p.1)
        .collect();
    ms.sort_by(f64::total_cmp);
    format!("{:.1} ms ({} probes)", percentile(&ms, 0.99), ms.len())
}

/// A table row of `ms`'s p50 and p99 (sorted): `what`, then the count of `of` in brackets.
fn p50_p99_row(what: &str, of: &str, ms: &[f64], goal: &str) {
    println!(
        "| {what} ({} {of}) | {:.1} ms / {:.1} ms | {goal} |",
        ms.len(),
        percentile(ms, 0.5),
        percentile(ms, 0.99)
    );
}

/// Hand-over: each acquire after the first `skip` against the latest release before it, counted
/// from the release's call (`from_call`: the slot may be free before the release returns, which
/// also revokes the lease) or from its return (the figure before issue 19's change).
fn handovers(shared: &Shared, skip: usize, from_call: bool) -> (Vec<f64>, f64) {
    let mut acquires = shared.acquires.lock().unwrap().clone();
    acquires.sort_by_key(|a| a.0);
    let releases: Vec<Instant> = shared
        .releases
        .lock()
        .unwrap()
        .iter()
        .map(|(called, returned)| if from_call { *called } else { *returned })
        .collect();
    let contended = acquires.iter().skip(skip);
    let mut ms: Vec<f64> = contended
        .clone()
        .filter_map(|(at, _)| {
            let before: &Instant = releases.iter().filter(|r| *r <= at).max()?;
            Some(at.duration_since(*before).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let n = contended.clone().count().max(1);
    let per_acquire = contended.map(|a| a.1).sum::<u64>() as f64 / n as f64;
    (ms, per_acquire)
}

pub fn print(
    sim: Sim,
    ramp: Duration,
    leases: usize,
    rollout: Option<Duration>,
    shared: &Shared,
    samples: &[Sample],
    probes: &[(u8, f64)],
) {
    let version = super::support::etcd::version();
    let ttl = sim.ttl.as_secs_f64();
    println!(
        "\nfleet_sim: {} agents, {} etcd {version} member(s) on loopback, TTL {ttl:.0} s, {}",
        sim.agents,
        sim.members,
        if sim.slots {
            format!("slot.max = {}, swap {:?}", sim.max, sim.swap)
        } else {
            "registration only".to_string()
        }
    );
    println!("\n| figure | measured | goal |\n| --- | --- | --- |");
    println!(
        "| all agents registered after start ({} started per second) | {:.1} s | |",
        sim.ramp,
        ramp.as_secs_f64()
    );
    let ended = shared.ended.load(Ordering::SeqCst);
    let retries = shared.retries.load(Ordering::SeqCst);
    let first = shared
        .first_error
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_default();
    println!(
        "| agents ended in an error / etcd requests retried | {ended} / {retries} {first} | 0 / 0 |"
    );
    if let Some(rollout) = rollout {
        let rounds = sim.agents.div_ceil(sim.max as usize) as f64;
        let ideal = rounds * sim.swap.as_secs_f64();
        println!(
            "| rollout time vs the ideal ⌈N/max⌉ × swap | {:.1} s vs {ideal:.0} s = {:.3} × ideal | ≤ 1.10 × ideal |",
            rollout.as_secs_f64(),
            rollout.as_secs_f64() / ideal
        );
    }
    if let Some((rate, cpu, rss, watchers)) = window(samples, PHASE_STEADY) {
        let per_agent = rate * ttl / sim.agents as f64;
        println!(
            "| etcd requests/s, steady | {rate:.0} /s = {per_agent:.2} per agent per TTL | ≤ 3 per agent per TTL |"
        );
        println!("| etcd CPU (all members), steady | {cpu:.1} % of one core | |");
        println!("| etcd RSS (all members), steady | {} | |", mib(rss));
        println!("| leases / watchers, steady | {leases} / {watchers:.0} | |");
    }
    if let Some((rate, cpu, rss, watchers)) = window(samples, PHASE_ROLLOUT) {
        println!("| etcd requests/s, rollout | {rate:.0} /s | |");
        println!("| etcd CPU (all members), rollout | {cpu:.1} % of one core | |");
        println!("| etcd RSS (all members), rollout peak | {} | |", mib(rss));
        println!("| watchers, rollout peak | {watchers:.0} | |");
    }
    println!(
        "| keepalive answer p99, steady | {} | ≤ 50 ms |",
        probe_p99(probes, PHASE_STEADY)
    );
    if sim.slots {
        println!(
            "| keepalive answer p99, rollout | {} | ≤ 50 ms |",
            probe_p99(probes, PHASE_ROLLOUT)
        );
        for (from_call, from) in [(true, "release called"), (false, "release returned")] {
            let (ms, _) = handovers(shared, sim.max as usize, from_call);
            let what = format!("slot hand-over p50 / p99 from the {from}");
            p50_p99_row(&what, "hand-overs", &ms, "p99 ≤ 20 ms");
        }
        // In etcd, as one watcher saw it: from a slot key's delete to the next slot key's
        // creation, the queue's own hand-over, without the rollout's writes on the version's key
        // (the swap's end before the delete, its start after the take).
        let changes = shared.slot_changes.lock().unwrap();
        let mut ms: Vec<f64> = changes
            .taken
            .iter()
            .skip(sim.max as usize)
            .filter_map(|at| {
                let before = changes.freed.iter().filter(|f| *f <= at).max()?;
                Some(at.duration_since(*before).as_secs_f64() * 1000.0)
            })
            .collect();
        drop(changes);
        ms.sort_by(f64::total_cmp);
        p50_p99_row(
            "slot hand-over p50 / p99 in etcd, a slot key's delete to the next one's creation, as a watcher saw them",
            "hand-overs",
            &ms,
            "p99 ≤ 20 ms",
        );
        let mut took: Vec<f64> = shared
            .releases
            .lock()
            .unwrap()
            .iter()
            .map(|(called, returned)| returned.duration_since(*called).as_secs_f64() * 1000.0)
            .collect();
        took.sort_by(f64::total_cmp);
        p50_p99_row(
            "release call, called to returned, p50 / p99",
            "releases",
            &took,
            "",
        );
        // The second round on: without the start, when every agent asked at once.
        let (ms, _) = handovers(shared, 2 * sim.max as usize, true);
        p50_p99_row(
            "slot hand-over p50 / p99 from the release called, from the second round",
            "hand-overs",
            &ms,
            "p99 ≤ 20 ms",
        );
        let (_, per_acquire) = handovers(shared, sim.max as usize, true);
        println!("| etcd requests per contended acquire (client side) | {per_acquire:.1} | ≤ 6 |");
        let during: Vec<i64> = samples
            .iter()
            .filter(|s| s.phase == PHASE_ROLLOUT)
            .map(|s| s.present)
            .collect();
        let floor = sim.agents as i64 - sim.max as i64;
        let answered: Vec<i64> = during.iter().copied().filter(|p| *p >= 0).collect();
        let min = answered.iter().copied().min().unwrap_or(-1);
        let below = answered.iter().filter(|p| **p < floor).count();
        println!(
            "| registrations present vs expected, every second | min {min} of {}, {below} of {} seconds below N − max = {floor} ({} counts unanswered within 5 s, shown as -1) | never fewer than N − max |",
            sim.agents,
            answered.len(),
            during.len() - answered.len()
        );
        let series: Vec<String> = during.iter().map(i64::to_string).collect();
        println!(
            "\nregistrations present each second of the rollout: {}",
            series.join(" ")
        );
    } else {
        let present: Vec<i64> = samples
            .iter()
            .filter(|s| s.phase == PHASE_STEADY)
            .map(|s| s.present)
            .collect();
        let min = present.iter().copied().min().unwrap_or(-1);
        println!(
            "| registrations present, every second (steady) | min {min} of {} over {} s | N |",
            sim.agents,
            present.len()
        );
    }
}
