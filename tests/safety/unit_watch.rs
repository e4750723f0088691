//! systemd's view of the app units, sampled every 100 ms over the container's bus: each unit's
//! `ActiveState` and `InvocationID` (a new one for every start, restarts included). From the
//! samples: how many units were restarting or not active at once, and each restart with the
//! interval it happened in, to be matched against the slot holds seen in etcd.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};

use crate::fleet::Fleet;
use crate::rotation::SlotHold;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One unit at one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitState {
    pub active: String,
    pub invocation: Vec<u8>,
}

/// All units at one moment, in fleet order.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub units: Vec<UnitState>,
}

/// A start of a unit seen between two samples: it happened after `after` and before `by`.
#[derive(Debug, Clone)]
pub struct Restart {
    pub instance: String,
    pub after: Instant,
    pub by: Instant,
}

/// The sampler; stops when dropped.
pub struct UnitWatch {
    names: Vec<String>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl UnitWatch {
    /// Starts sampling every unit of the fleet; the first sample is taken before this returns.
    pub async fn start(fleet: &Fleet) -> UnitWatch {
        let conn = fleet.systemd.connection().await;
        let mgr = ManagerProxy::new(&conn).await.expect("manager proxy");
        let mut proxies = Vec::new();
        for instance in &fleet.instances {
            let path = mgr
                .load_unit(instance.unit.clone())
                .await
                .expect("LoadUnit");
            let unit = UnitProxy::builder(&conn)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .expect("unit proxy");
            proxies.push(unit);
        }
        let samples = Arc::new(Mutex::new(Vec::new()));
        let first = sample(&proxies).await;
        samples.lock().unwrap().push(first);
        let sink = samples.clone();
        let task = tokio::spawn(async move {
            let _conn = conn;
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                let next = sample(&proxies).await;
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(next);
            }
        });
        UnitWatch {
            names: fleet.instances.iter().map(|i| i.name.clone()).collect(),
            samples,
            task,
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The most units restarting or not active at one sample, and that sample's units. A unit
    /// whose invocation changed since the sample before counts as restarting even when both
    /// samples saw it active (a restart quicker than the sampling).
    pub fn most_down_at_once(&self) -> (usize, Vec<String>) {
        let samples = self.samples();
        let mut most = (0, Vec::new());
        for (k, sample) in samples.iter().enumerate() {
            let down: Vec<String> = sample
                .units
                .iter()
                .enumerate()
                .filter(|(u, state)| {
                    let restarted =
                        k > 0 && samples[k - 1].units[*u].invocation != state.invocation;
                    !is_up(&state.active) || restarted
                })
                .map(|(u, state)| format!("{} ({})", self.names[u], state.active))
                .collect();
            if down.len() > most.0 {
                most = (down.len(), down);
            }
        }
        most
    }

    /// Every start of a unit after the first sample. A restart runs from the last sample that
    /// saw the unit up on its old invocation (the stop may begin right after it) to the first
    /// sample on the new one.
    pub fn restarts(&self) -> Vec<Restart> {
        let samples = self.samples();
        let mut restarts = Vec::new();
        for k in 1..samples.len() {
            for (u, name) in self.names.iter().enumerate() {
                let old = &samples[k - 1].units[u].invocation;
                if *old == samples[k].units[u].invocation {
                    continue;
                }
                let began = (0..k)
                    .rev()
                    .take_while(|&j| samples[j].units[u].invocation == *old)
                    .find(|&j| is_up(&samples[j].units[u].active))
                    .unwrap_or(k - 1);
                restarts.push(Restart {
                    instance: name.clone(),
                    after: samples[began].at,
                    by: samples[k].at,
                });
            }
        }
        restarts
    }

    /// The restarts of `instance` between `from` and `until`.
    pub fn restarts_of(&self, instance: &str, from: Instant, until: Instant) -> Vec<Restart> {
        self.restarts()
            .into_iter()
            .filter(|r| r.instance == instance && r.by >= from && r.after <= until)
            .collect()
    }

    /// Restarts during which the restarted instance held no slot: no hold of its own (etcd's
    /// slot key with its name) overlaps the interval the restart happened in.
    pub fn restarts_without_slot(&self, holds: &[SlotHold]) -> Vec<Restart> {
        self.restarts()
            .into_iter()
            .filter(|restart| {
                !holds.iter().any(|hold| {
                    holder(hold).as_deref() == Some(restart.instance.as_str())
                        && hold.from <= restart.by
                        && hold.until.is_none_or(|until| until >= restart.after)
                })
            })
            .collect()
    }
}

impl Drop for UnitWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The instance named in a slot key's value (`{"instance": "web-1", ...}`).
pub fn holder(hold: &SlotHold) -> Option<String> {
    serde_json::from_str::<Value>(&hold.value)
        .ok()
        .and_then(|v| v["instance"].as_str().map(str::to_string))
}

/// `active` and `reloading` serve; everything else is out.
fn is_up(active: &str) -> bool {
    matches!(active, "active" | "reloading")
}

async fn sample(proxies: &[UnitProxy<'_>]) -> Sample {
    let mut units = Vec::new();
    for unit in proxies {
        let active = unit
            .active_state()
            .await
            .unwrap_or_else(|e| format!("<{e}>"));
        let invocation = unit.invocation_id().await.unwrap_or_default();
        units.push(UnitState { active, invocation });
    }
    Sample {
        at: Instant::now(),
        units,
    }
}
