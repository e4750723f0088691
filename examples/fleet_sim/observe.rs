//! The fleet simulation's observers: a monitor sampling etcd every second (registrations
//! present, its request and watcher counters, CPU and RSS from `/proc`) and a keepalive probe.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use super::PREFIX;
use super::support::{self, etcd::Etcd};

/// One second of the monitor's view.
pub struct Sample {
    pub at: Instant,
    pub phase: u8,
    pub present: i64,
    pub requests: f64,
    pub watchers: f64,
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

/// Sum of a Prometheus metric family's samples in etcd's `/metrics` text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// utime + stime (clock ticks) and VmRSS (KiB) of `pid`.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // After ")": state is field 0, utime field 11, stime field 12.
    (tick(11) + tick(12), rss)
}

/// Every second: registrations present, etcd's request and watcher counters, CPU and RSS.
pub async fn monitor(
    etcd: Arc<Etcd>,
    mut client: Client,
    phase: Arc<AtomicU8>,
    out: Arc<Mutex<Vec<Sample>>>,
) {
    let http = support::http_client();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let present = client
            .get(
                PREFIX,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map(|r| r.count())
            .unwrap_or(-1);
        let (mut requests, mut watchers) = (0.0, 0.0);
        for ep in etcd.endpoints() {
            let text = match http.get(format!("{ep}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            requests += metric_sum(&text, "grpc_server_msg_received_total");
            watchers += metric_sum(&text, "etcd_debugging_mvcc_watcher_total");
        }
        let (mut cpu_ticks, mut rss_kib) = (0, 0);
        for pid in etcd.pids() {
            let (c, r) = proc_usage(pid);
            cpu_ticks += c;
            rss_kib += r;
        }
        out.lock().unwrap().push(Sample {
            at: Instant::now(),
            phase: phase.load(Ordering::SeqCst),
            present,
            requests,
            watchers,
            cpu_ticks,
            rss_kib,
        });
    }
}

/// A client of its own sends one keepalive a second and times the answer; a failed one counts
/// as an answer at the failure and the probe starts over on a new lease.
pub async fn keepalive_probe(
    mut client: Client,
    phase: Arc<AtomicU8>,
    out: Arc<Mutex<Vec<(u8, f64)>>>,
) {
    loop {
        let Ok(lease) = client.lease_grant(60, None).await else {
            continue;
        };
        let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease.id()).await else {
            continue;
        };
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let started = Instant::now();
            let ok =
                keeper.keep_alive().await.is_ok() && matches!(stream.message().await, Ok(Some(_)));
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            out.lock().unwrap().push((phase.load(Ordering::SeqCst), ms));
            if !ok {
                break;
            }
        }
    }
}

/// Watches the group's slot keys from now on (a watch opened at the current revision gets each
/// event as it commits) and notes when each delete and each creation arrived: a slot freed and
/// taken in etcd, without the rollout's writes around them (the swap's start after the take,
/// its end before the release's delete).
pub async fn slot_changes(mut client: Client, group: String, out: Arc<Mutex<SlotChanges>>) {
    let prefix = sidekick::slot::keys::group_prefix(&group);
    let options = etcd_client::WatchOptions::new().with_prefix();
    let Ok(mut stream) = client.watch(prefix, Some(options)).await else {
        return;
    };
    while let Ok(Some(resp)) = stream.message().await {
        let at = Instant::now();
        let mut out = out.lock().unwrap();
        for event in resp.events() {
            match (event.event_type(), event.kv()) {
                (etcd_client::EventType::Delete, _) => out.freed.push(at),
                (etcd_client::EventType::Put, Some(kv)) if kv.version() == 1 => out.taken.push(at),
                _ => {}
            }
        }
    }
}

/// When a watcher of the group's slots saw each slot key deleted and each one created.
#[derive(Default)]
pub struct SlotChanges {
    pub freed: Vec<Instant>,
    pub taken: Vec<Instant>,
}
