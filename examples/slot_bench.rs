//! Benchmark of the etcd slot backend (not a test): starts its own etcd on free loopback ports in
//! a temp dir, runs 100 and then 1,000 contenders on `max = 5` (each waiting in the group's queue
//! with `acquire_within`), prints a table and stops etcd again.
//!
//! Each count runs twice. **In a formed line**: five other holders hold every slot while the
//! contenders join, and release once all of them are in line; from then on the hand-overs are
//! timed (at 100 contenders each goes three times, joining again at the end of the line after
//! each release). **While the line forms**: the contenders join in waves of 100 every 200 ms
//! while the slots already pass from one to the next, so hand-overs compete with a thousand
//! lease grants and queue puts in two seconds (each joiner's read of the line is a sorted range,
//! which etcd serves by reading the whole line). A rollout's sidekicks join as each learns of the
//! version, spread over its update checks; the second run is the worst case, not the usual one.
//! Every holder connects before its run starts, as a sidekick is connected long before a rollout
//! reaches it.
//!
//! Run: `cargo run --release --example slot_bench`

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::net::TcpListener;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use sidekick::slot::{Acquisition, EtcdSlots, SlotHolder, SlotLock};

/// (contenders, rounds each).
const RUNS: [(usize, usize); 2] = [(100, 3), (1000, 1)];
const MAX: u32 = 5;
const HOLD: Duration = Duration::from_millis(20);
const FREE_SAMPLES: usize = 200;
/// Long enough that a thousand keepalives do not load the machine being measured.
const TTL: Duration = Duration::from_secs(60);
const GROUP: &str = "bench/stable";

/// The etcd process, killed on drop, and its data dir, removed after it.
struct EtcdProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_etcd() -> anyhow::Result<(EtcdProcess, String)> {
    let dir = tempfile::tempdir()?;
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.path().join("etcd.log"))?;
    // The version the tests default to (`SIDEKICK_ETCD_VERSION` picks another), as `fleet_sim`.
    let binary = support::etcd::binary().map_err(anyhow::Error::msg)?;
    let child = Command::new(binary)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let etcd = EtcdProcess { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect([client_url.as_str()], None).await
            && c.get("ready", None).await.is_ok()
        {
            return Ok((etcd, client_url));
        }
        anyhow::ensure!(Instant::now() < deadline, "etcd did not answer within 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn holder(endpoint: &str, id: usize) -> anyhow::Result<EtcdSlots> {
    let client = Client::connect([endpoint], None).await?;
    let who = SlotHolder {
        holder: format!("holder-{id}"),
        instance: format!("web-{id}"),
    };
    let max = NonZeroU32::new(MAX).unwrap_or(NonZeroU32::MIN);
    Ok(EtcdSlots::new(client, GROUP, max, TTL, who))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        sidekick::logging::init(sidekick::logging::LogTarget::Stderr, 0);
    }
    let (_etcd, endpoint) = start_etcd().await?;

    // 1. A slot is free: one holder acquires and releases, again and again.
    let solo = holder(&endpoint, 0).await?;
    let mut free = Vec::new();
    let mut free_requests = 0;
    for _ in 0..FREE_SAMPLES {
        let before = solo.requests();
        let started = Instant::now();
        anyhow::ensure!(solo.acquire("2.0.0").await? == Acquisition::Acquired);
        free.push(started.elapsed());
        free_requests += solo.requests() - before;
        solo.release().await?;
    }
    free.sort();

    let mut rows = Vec::new();
    for (contenders, rounds) in RUNS {
        for line in [Line::Formed, Line::Forming] {
            rows.push(contended(&endpoint, contenders, rounds, line).await?);
        }
    }

    let metrics = etcd_metrics(&endpoint).await?;
    println!(
        "slot_bench: max = {MAX}, hold {HOLD:?}, etcd {} on loopback",
        support::etcd::version()
    );
    println!();
    println!("| measure | p50 | p99 | samples |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| acquire latency, slot free | {} | {} | {} |",
        ms(percentile(&free, 0.5)),
        ms(percentile(&free, 0.99)),
        free.len()
    );
    for row in &rows {
        println!(
            "| hand-over, release called -> next waiter's acquire, {} contenders, {} | {} | {} | {} |",
            row.contenders,
            row.line,
            ms(percentile(&row.handover, 0.5)),
            ms(percentile(&row.handover, 0.99)),
            row.handover.len()
        );
        println!(
            "| hand-over, release returned -> next waiter's acquire, {} contenders, {} | {} | {} | {} |",
            row.contenders,
            row.line,
            ms(percentile(&row.handover_returned, 0.5)),
            ms(percentile(&row.handover_returned, 0.99)),
            row.handover_returned.len()
        );
    }
    println!();
    println!("| etcd requests per acquire (client side, incl. queueing and watches) | mean |");
    println!("| --- | --- |");
    println!(
        "| slot free | {:.1} |",
        free_requests as f64 / FREE_SAMPLES as f64
    );
    for row in &rows {
        println!(
            "| {} contenders on max = {MAX}, {} | {:.1} |",
            row.contenders,
            row.line,
            row.requests as f64 / row.acquires as f64
        );
    }
    println!();
    println!("| etcd's own figures over the whole bench (its /metrics) | p99 at most | samples |");
    println!("| --- | --- | --- |");
    for (what, name) in [
        ("WAL fsync", "etcd_disk_wal_fsync_duration_seconds_bucket{"),
        (
            "backend commit",
            "etcd_disk_backend_commit_duration_seconds_bucket{",
        ),
        (
            "write transaction applied",
            "etcd_server_apply_duration_seconds_bucket{op=\"Txn\"",
        ),
    ] {
        let (p99, samples) = bucket_p99(&metrics, name);
        println!("| {what} | {} | {samples} |", ms(p99));
    }
    println!();
    for row in &rows {
        println!(
            "{} contenders, {}: {} contended acquires in {:.2} s ({:.0} hand-overs/s)",
            row.contenders,
            row.line,
            row.acquires,
            row.elapsed.as_secs_f64(),
            row.acquires as f64 / row.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// How the contenders come into the line (see the module doc).
#[derive(Clone, Copy, PartialEq)]
enum Line {
    /// All in line before the first slot is handed over.
    Formed,
    /// Joining in waves while the slots already pass along.
    Forming,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Line::Formed => "in a formed line",
            Line::Forming => "while the line forms",
        })
    }
}

/// What one contended run measured.
struct Contended {
    contenders: usize,
    line: Line,
    acquires: usize,
    requests: u64,
    /// From the release's call to the next acquire, and from its return (the figure before
    /// issue 19's change; the slot may be free before the release returns, as it also revokes).
    handover: Vec<Duration>,
    handover_returned: Vec<Duration>,
    elapsed: Duration,
}

/// `contenders` holders on max = 5, each acquiring `rounds` times in line; releases and acquires
/// are timestamped so each acquire is matched to the release just before it.
async fn contended(
    endpoint: &str,
    contenders: usize,
    rounds: usize,
    line: Line,
) -> anyhow::Result<Contended> {
    // Each release: when it was called and when it returned.
    let releases = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    // In a formed line, every slot is held until all contenders are in line.
    let mut blockers = Vec::new();
    if line == Line::Formed {
        for id in 0..MAX as usize {
            let blocker = holder(endpoint, 100_000 + id).await?;
            anyhow::ensure!(blocker.acquire("2.0.0").await? == Acquisition::Acquired);
            blockers.push(blocker);
        }
    }
    // Connected before the run, as a sidekick is long before a rollout reaches it: the
    // connections' set-up is not part of a hand-over.
    let mut holders = Vec::with_capacity(contenders);
    for id in 1..=contenders {
        holders.push(holder(endpoint, id).await?);
    }
    let mut tasks = Vec::new();
    for (me, id) in holders.into_iter().zip(1..) {
        let releases = releases.clone();
        tasks.push(tokio::spawn(async move {
            let mut acquired = Vec::new();
            let mut requests = 0;
            for _ in 0..rounds {
                let before = me.requests();
                let r = me.acquire_within("2.0.0", Duration::from_secs(600)).await?;
                anyhow::ensure!(r == Acquisition::Acquired, "not acquired: {r:?}");
                let at = Instant::now();
                acquired.push(at);
                requests += me.requests() - before;
                tokio::time::sleep(HOLD.saturating_sub(at.elapsed())).await;
                let releasing = Instant::now();
                me.release().await?;
                if let Ok(mut r) = releases.lock() {
                    r.push((releasing, Instant::now()));
                }
            }
            Ok::<_, anyhow::Error>((acquired, requests))
        }));
        // Join in waves, so etcd is not asked for a thousand leases in one instant.
        if id % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if line == Line::Formed {
        let mut client = Client::connect([endpoint], None).await?;
        let queue = sidekick::slot::keys::queue_prefix(GROUP);
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .get(queue.as_str(), Some(options.clone()))
            .await?
            .count()
            < contenders as i64
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the line did not form within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for blocker in &blockers {
            let releasing = Instant::now();
            blocker.release().await?;
            if let Ok(mut r) = releases.lock() {
                r.push((releasing, Instant::now()));
            }
        }
    }
    let started = Instant::now();
    let mut acquired = Vec::new();
    let mut requests = 0;
    for t in tasks {
        let (a, r) = t.await??;
        acquired.extend(a);
        requests += r;
    }
    let elapsed = started.elapsed();
    let releases = releases.lock().map(|r| r.clone()).unwrap_or_default();
    let handover = |from_call: bool| {
        let mut ms: Vec<Duration> = acquired
            .iter()
            .filter_map(|at| {
                let before = releases
                    .iter()
                    .map(|(called, returned)| if from_call { called } else { returned })
                    .filter(|r| *r <= at)
                    .max()?;
                Some(at.duration_since(*before))
            })
            .collect();
        ms.sort();
        ms
    };
    let (handover, handover_returned) = (handover(true), handover(false));
    Ok(Contended {
        contenders,
        line,
        acquires: contenders * rounds,
        requests,
        handover,
        handover_returned,
        elapsed,
    })
}

/// The upper bound of the histogram bucket that holds the 99th percentile of the Prometheus
/// histogram whose bucket lines start with `name` in `metrics` (the series it matches summed,
/// bucket by bucket), and its sample count.
fn bucket_p99(metrics: &str, name: &str) -> (Duration, u64) {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for (le, count) in metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count: u64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le.parse().unwrap_or(f64::INFINITY), count))
        })
    {
        match buckets.iter_mut().find(|b| b.0 == le) {
            Some(bucket) => bucket.1 += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    let p99 = buckets
        .iter()
        .find(|b| b.1 as f64 >= 0.99 * total as f64)
        .map_or(0.0, |b| b.0);
    (Duration::from_secs_f64(p99.min(1e6)), total)
}

/// etcd's Prometheus metrics, read over plain HTTP from its client URL.
async fn etcd_metrics(endpoint: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}
