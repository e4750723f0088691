//! Fleet simulation (not a test): N agents in one process, each with the real etcd registry
//! (registration and instance record on one lease) and, unless `--registration-only`, the real
//! etcd slot holder, against a real etcd it starts on loopback in a temp dir (`--members 1|3`).
//! Units are in memory: a swap takes `--swap` seconds. After every agent is registered and a
//! steady window of one TTL, one new version is offered to all at once; each agent takes a slot,
//! drains (deregisters), swaps, registers the new version and releases. The slot is taken as the
//! daemon's swap takes it: the rollout's gate (no policy stored: the defaults with min_healthy 0)
//! asked before joining the queue and when first in line, and waits in line of up to 30 s each,
//! keeping the place. Prints one table.
//!
//! `cargo run --release --example fleet_sim -- --agents 1000 --max 50 --swap 5`
//! `cargo run --release --example fleet_sim -- --agents 10000 --registration-only --ramp 100`
//! (`--ramp`: agents started per second, default 1,000; `--ttl`, `--members` also)
//!
//! etcd requests are counted by etcd itself (`grpc_server_msg_received_total`: every unary call
//! and every stream message, keepalives included), so the figure does not depend on the client.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use etcd_client::GetOptions;
use observe::{SlotChanges, keepalive_probe, monitor, slot_changes};
use sidekick::etcd::EtcdConnection;
use sidekick::etcd::EtcdOptions;
use sidekick::registry::record::{self, InstanceRecord};
use sidekick::registry::{EtcdRegistry, Published, Registry};
use sidekick::rollout::RolloutPolicy;
use sidekick::rollout::agent::RolloutAgent;
use sidekick::slot::{Acquisition, AnySlots, EtcdSlots, SlotHolder, SlotLock};
use support::etcd::Etcd;
use tokio::sync::watch;

const GROUP: &str = "fleet/stable";
const PREFIX: &str = "/fleet/web/";
const NEW_VERSION: &str = "2.0.0";
/// Agents start in waves of `--ramp` per second (default 1,000), as hosts boot over a while.
const WAVES_PER_SEC: usize = 4;
const PHASE_RAMP: u8 = 0;
const PHASE_STEADY: u8 = 1;
const PHASE_ROLLOUT: u8 = 2;

/// The run's parameters (from the command line).
#[derive(Clone, Copy, Debug)]
struct Sim {
    agents: usize,
    max: u32,
    swap: Duration,
    ttl: Duration,
    members: usize,
    slots: bool,
    ramp: usize,
}

impl Sim {
    fn from_args() -> anyhow::Result<Sim> {
        let mut sim = Sim {
            agents: 1000,
            max: 50,
            swap: Duration::from_secs(5),
            ttl: Duration::from_secs(30),
            members: 1,
            slots: true,
            ramp: 1000,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--registration-only" {
                sim.slots = false;
                continue;
            }
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let n: u64 = value
                .parse()
                .with_context(|| format!("{flag} {value}: not a whole number"))?;
            match flag.as_str() {
                "--agents" => sim.agents = n as usize,
                "--max" => sim.max = n as u32,
                "--swap" => sim.swap = Duration::from_secs(n),
                "--ttl" => sim.ttl = Duration::from_secs(n),
                "--members" => sim.members = n as usize,
                "--ramp" => sim.ramp = n as usize,
                _ => anyhow::bail!("unknown flag {flag} (see the example's doc comment)"),
            }
        }
        ensure!(
            sim.agents > 0 && sim.max > 0 && sim.members > 0,
            "counts must be > 0"
        );
        Ok(sim)
    }
}

/// What the agents record for the table.
#[derive(Default)]
struct Shared {
    /// Each acquire: when, and the etcd requests the holder made for it.
    acquires: Mutex<Vec<(Instant, u64)>>,
    /// Each release: when it was called and when it returned.
    releases: Mutex<Vec<(Instant, Instant)>>,
    /// Each slot key's delete and creation, when a watcher of the slots saw it.
    slot_changes: Arc<Mutex<SlotChanges>>,
    swapped: AtomicUsize,
    /// Agents whose task ended in an error (the rollout waits for swapped + ended).
    ended: AtomicUsize,
    /// etcd requests that failed and were retried, and the first such error.
    retries: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn failed(&self, what: &str) {
        self.retries.fetch_add(1, Ordering::SeqCst);
        self.first_error
            .lock()
            .unwrap()
            .get_or_insert_with(|| what.to_string());
    }
}

fn entries(name: &str, version: &str) -> Vec<(String, String)> {
    let record = InstanceRecord {
        version: version.to_string(),
        phase: "serving".to_string(),
        since: "2026-01-01T00:00:00Z".to_string(),
        last_check: None,
        result: None,
        host: "10.0.0.1".to_string(),
        target: None,
        step: None,
        policy: None,
    };
    vec![
        (
            format!("{PREFIX}{name}"),
            r#"{"host":"10.0.0.1","port":8080}"#.into(),
        ),
        record::entry(GROUP, name, &record),
    ]
}

async fn wait_published(
    published: &mut watch::Receiver<Published>,
    want: fn(&Published) -> bool,
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), published.wait_for(want))
        .await
        .context("registry did not converge within 120 s")??;
    Ok(())
}

/// One agent: registers, waits for the offer, then slot → drain → swap → register → release.
async fn agent(
    id: usize,
    sim: Sim,
    settings: EtcdOptions,
    mut offer: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let name = format!("web-{id:05}");
    let mut registry = EtcdRegistry::start(settings.clone(), name.clone(), sim.ttl);
    let mut published = registry.published();
    registry.register(entries(&name, "1.0.0"));
    if sim.slots {
        let who = SlotHolder {
            holder: name.clone(),
            instance: name.clone(),
        };
        let max = NonZeroU32::new(sim.max).unwrap_or(NonZeroU32::MIN);
        // As `sidekick run` builds them: the slots and the rollout agent on one connection, the
        // rollout's gate asked before joining the queue and again when first in line.
        let etcd = EtcdConnection::new(settings);
        let rollout = Arc::new(RolloutAgent::new(
            etcd.clone(),
            GROUP,
            &name,
            RolloutPolicy {
                min_healthy: Duration::ZERO,
                ..RolloutPolicy::default()
            },
            sim.swap,
        ));
        let slots = EtcdSlots::new(etcd, GROUP, max, sim.ttl, who).with_rollout(rollout);
        // As the daemon's first pass does: release what an earlier run left, which also opens
        // the slots' connection before any offer.
        while let Err(e) = slots.release_stale().await {
            shared.failed(&format!("release_stale: {e}"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        offer.wait_for(|o| *o).await?;
        // As the daemon's AcquireSlot step does: one ask, then waits in line of up to
        // RETRY_AFTER each, keeping its place; a failed etcd request is retried at the next pass
        // (here: 1 s).
        let slots = AnySlots::Etcd(Box::new(slots));
        let before = etcd_requests(&slots);
        let mut retry = false;
        let acquired = loop {
            match slots.acquire_in_line(NEW_VERSION, retry, true, false).await {
                Ok(Acquisition::Acquired) => break Instant::now(),
                Ok(Acquisition::Busy { .. }) => retry = true,
                Ok(other) => anyhow::bail!("{name}: not acquired: {other:?}"),
                Err(e) => {
                    shared.failed(&format!("acquire: {e}"));
                    retry = false;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let requests = etcd_requests(&slots) - before;
        shared.acquires.lock().unwrap().push((acquired, requests));
        registry.deregister(); // drain: out of rotation for the swap
        wait_published(&mut published, |p| matches!(p, Published::Absent)).await?;
        tokio::time::sleep(sim.swap).await; // the in-memory unit's swap
        registry.register(entries(&name, NEW_VERSION));
        wait_published(&mut published, |p| {
            matches!(p, Published::Registered { .. })
        })
        .await?;
        let releasing = Instant::now();
        while let Err(e) = slots.release().await {
            shared.failed(&format!("release: {e}"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let released = Instant::now();
        shared.releases.lock().unwrap().push((releasing, released));
        shared.swapped.fetch_add(1, Ordering::SeqCst);
    }
    stop.wait_for(|s| *s).await?;
    registry.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// The etcd requests the slot holder made so far (the rollout's gate reads share its
/// connection but are counted by etcd only, in the table's request rate).
fn etcd_requests(slots: &AnySlots) -> u64 {
    match slots {
        AnySlots::Etcd(slots) => slots.requests(),
        _ => 0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = Sim::from_args()?;
    // The agents' own log lines (registry, slots, leases) on stderr, only when asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        sidekick::logging::init(sidekick::logging::LogTarget::Stderr, 0);
    }
    raise_fd_limit(); // each agent holds its own etcd connections, as separate sidekicks would
    let etcd = Arc::new(Etcd::start_cluster(sim.members).await);
    let settings = EtcdOptions {
        endpoints: etcd
            .endpoints()
            .iter()
            .map(|e| e.parse())
            .collect::<Result<_, _>>()?,
        timeout: Duration::from_secs(5),
        auth: None,
        ca_file: None,
        client_cert: None,
    };
    let phase = Arc::new(AtomicU8::new(PHASE_RAMP));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let probes = Arc::new(Mutex::new(Vec::new()));
    // Every observer's client is connected before the agents load etcd.
    let mut client = etcd.client().await;
    let (monitor_client, probe_client) = (etcd.client().await, etcd.client().await);
    let mon = tokio::spawn(monitor(
        etcd.clone(),
        monitor_client,
        phase.clone(),
        samples.clone(),
    ));
    let probe = tokio::spawn(keepalive_probe(probe_client, phase.clone(), probes.clone()));
    let shared = Arc::new(Shared::default());
    let watcher = tokio::spawn(slot_changes(
        etcd.client().await,
        GROUP.to_string(),
        shared.slot_changes.clone(),
    ));
    let (offer_tx, offer) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let mut agents = Vec::new();
    for id in 0..sim.agents {
        let task = agent(
            id,
            sim,
            settings.clone(),
            offer.clone(),
            stop.clone(),
            shared.clone(),
        );
        agents.push(tokio::spawn(task));
        if (id + 1) % (sim.ramp / WAVES_PER_SEC).max(1) == 0 {
            tokio::time::sleep(Duration::from_millis(1000 / WAVES_PER_SEC as u64)).await;
        }
    }
    let count = GetOptions::new().with_prefix().with_count_only();
    support::poll_until(Duration::from_secs(600), "every agent registered", || {
        let (mut c, count) = (client.clone(), count.clone());
        async move {
            let n = c
                .get(PREFIX, Some(count))
                .await
                .map_err(|e| e.to_string())?
                .count();
            if n as usize == sim.agents {
                Ok(())
            } else {
                Err(format!("{n} registered"))
            }
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let ramp = started.elapsed();
    eprintln!(
        "fleet_sim: {} agents registered after {:.1} s",
        sim.agents,
        ramp.as_secs_f64()
    );
    phase.store(PHASE_STEADY, Ordering::SeqCst);
    tokio::time::sleep(sim.ttl + Duration::from_secs(2)).await;
    let leases = client.leases().await?.leases().len();
    let mut rollout = None;
    if sim.slots {
        phase.store(PHASE_ROLLOUT, Ordering::SeqCst);
        let t0 = Instant::now();
        offer_tx.send(true)?;
        let mut last_note = Instant::now();
        loop {
            let (done, ended) = (
                shared.swapped.load(Ordering::SeqCst),
                shared.ended.load(Ordering::SeqCst),
            );
            if done + ended >= sim.agents {
                break;
            }
            if last_note.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "fleet_sim: {:.0} s into the rollout: {done} swapped, {ended} ended in an error",
                    t0.elapsed().as_secs_f64()
                );
                last_note = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rollout = Some(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(1500)).await; // one more sample after the end
    }
    mon.abort();
    probe.abort();
    watcher.abort();
    stop_tx.send(true)?;
    let mut errors = Vec::new();
    for a in agents {
        if let Err(e) = a.await? {
            errors.push(e.to_string());
        }
    }
    if !errors.is_empty() {
        eprintln!(
            "fleet_sim: {} agents ended in an error, first: {}",
            errors.len(),
            errors[0]
        );
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let probes = std::mem::take(&mut *probes.lock().unwrap());
    report::print(sim, ramp, leases, rollout, &shared, &samples, &probes);
    Ok(())
}

#[path = "fleet_sim/observe.rs"]
mod observe;
#[path = "fleet_sim/report.rs"]
mod report;
