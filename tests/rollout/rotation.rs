//! Watches etcd for who is in rotation and who holds an update slot: every put and delete under
//! a prefix, timed as it arrives, starting from a consistent snapshot. From the registration keys
//! it derives each instance's time out of rotation and the most instances ever out at once; from
//! the slot keys, each hold's duration.
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::task::JoinHandle;

/// One change seen on the watch.
#[derive(Debug, Clone)]
pub struct KeyEvent {
    pub at: Instant,
    pub key: String,
    pub put: bool,
    pub value: String,
}

/// A watch on every key under a prefix, recording events until dropped.
pub struct KeyWatch {
    prefix: String,
    initial: BTreeMap<String, String>,
    events: Arc<Mutex<Vec<KeyEvent>>>,
    task: JoinHandle<()>,
    started: Instant,
}

impl KeyWatch {
    /// Snapshots the keys under `prefix`, then records every change after that snapshot.
    pub async fn start(client: &Client, prefix: &str) -> KeyWatch {
        let mut client = client.clone();
        let snapshot = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect("snapshot get");
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let initial = snapshot
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().unwrap_or_default().to_string();
                (key, kv.value_str().unwrap_or_default().to_string())
            })
            .collect();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch(prefix, Some(options))
            .await
            .expect("open watch");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let at = Instant::now();
                let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    sink.push(KeyEvent {
                        at,
                        key: kv.key_str().unwrap_or_default().to_string(),
                        put: event.event_type() == EventType::Put,
                        value: kv.value_str().unwrap_or_default().to_string(),
                    });
                }
            }
        });
        KeyWatch {
            prefix: prefix.to_string(),
            initial,
            events,
            task,
            started: Instant::now(),
        }
    }

    /// When the watch started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The keys present when the watch started.
    pub fn initial(&self) -> &BTreeMap<String, String> {
        &self.initial
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<KeyEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The prefix watched.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The instance a Traefik server URL key names: `.../servers/<instance>/url`.
pub fn server_instance(key: &str) -> Option<&str> {
    let rest = key.strip_suffix("/url")?;
    let (_, instance) = rest.rsplit_once("/servers/")?;
    Some(instance)
}

/// One stretch out of rotation of one instance (deregistered until registered again).
#[derive(Debug, Clone)]
pub struct OutOfRotation {
    pub instance: String,
    pub from: Instant,
    /// `None` when it was still out when the watch was read.
    pub until: Option<Instant>,
}

impl OutOfRotation {
    pub fn duration(&self) -> Option<Duration> {
        self.until.map(|u| u - self.from)
    }
}

/// What the registration keys say about rotation.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Every stretch out of rotation, in the order they began.
    pub stretches: Vec<OutOfRotation>,
    /// The most instances out of rotation at once, of those registered at the start.
    pub max_out_at_once: usize,
}

/// Reads rotation from a [`KeyWatch`] on the Traefik server keys.
pub fn rotation(watch: &KeyWatch) -> Rotation {
    rotation_from(watch.initial().keys(), &watch.events())
}

/// Rotation from the server keys present at the start and the events after it.
pub fn rotation_from<'a>(
    initial: impl IntoIterator<Item = &'a String>,
    events: &[KeyEvent],
) -> Rotation {
    let mut registered: BTreeSet<String> = initial
        .into_iter()
        .filter_map(|k| server_instance(k).map(str::to_string))
        .collect();
    let all = registered.len();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut stretches = Vec::new();
    let mut max_out_at_once = 0;
    for event in events {
        let Some(instance) = server_instance(&event.key) else {
            continue;
        };
        if event.put {
            registered.insert(instance.to_string());
            if let Some(i) = open.remove(instance) {
                let stretch: &mut OutOfRotation = &mut stretches[i];
                stretch.until = Some(event.at);
            }
        } else {
            registered.remove(instance);
            open.entry(instance.to_string()).or_insert_with(|| {
                stretches.push(OutOfRotation {
                    instance: instance.to_string(),
                    from: event.at,
                    until: None,
                });
                stretches.len() - 1
            });
        }
        max_out_at_once = max_out_at_once.max(all.saturating_sub(registered.len()));
    }
    Rotation {
        stretches,
        max_out_at_once,
    }
}

/// One slot hold: the slot key's creation until its deletion.
#[derive(Debug, Clone)]
pub struct SlotHold {
    pub key: String,
    pub value: String,
    pub from: Instant,
    pub until: Option<Instant>,
}

impl SlotHold {
    pub fn duration(&self) -> Option<Duration> {
        self.until.map(|u| u - self.from)
    }
}

/// Slot holds from a [`KeyWatch`] on the slot prefix (holds already present at the start are
/// left out: their beginning is unknown).
pub fn slot_holds(watch: &KeyWatch) -> Vec<SlotHold> {
    slot_holds_from(&watch.events())
}

/// Slot holds from the events on the slot prefix.
pub fn slot_holds_from(events: &[KeyEvent]) -> Vec<SlotHold> {
    let mut holds: Vec<SlotHold> = Vec::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    for event in events {
        match (event.put, open.get(&event.key)) {
            (true, None) => {
                open.insert(event.key.clone(), holds.len());
                holds.push(SlotHold {
                    key: event.key.clone(),
                    value: event.value.clone(),
                    from: event.at,
                    until: None,
                });
            }
            (true, Some(_)) => {}
            (false, Some(&i)) => {
                holds[i].until = Some(event.at);
                open.remove(&event.key);
            }
            (false, None) => {}
        }
    }
    holds
}

/// The number of keys under `prefix` now.
pub async fn count_keys(client: &Client, prefix: &str) -> usize {
    let options = GetOptions::new().with_prefix().with_count_only();
    let got = client
        .clone()
        .get(prefix, Some(options))
        .await
        .expect("count keys");
    got.count() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(instance: &str) -> String {
        format!("traefik/http/services/web/loadbalancer/servers/{instance}/url")
    }

    fn event(at: Instant, key: String, put: bool) -> KeyEvent {
        KeyEvent {
            at,
            key,
            put,
            value: String::new(),
        }
    }

    #[test]
    fn rotation_counts_overlapping_stretches_and_closes_each_on_its_next_put() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let initial = [key("web-1"), key("web-2"), key("web-3")];
        let events = [
            event(t, key("web-1"), false),
            event(t + s, key("web-1"), true),
            event(t + 2 * s, key("web-2"), false),
            event(t + 3 * s, key("web-3"), false),
            event(t + 4 * s, key("web-2"), true),
            event(t + 5 * s, "traefik/http/routers/web/rule".into(), false),
        ];
        let rotation = rotation_from(&initial, &events);
        assert_eq!(rotation.max_out_at_once, 2);
        let out: Vec<(&str, Option<Duration>)> = rotation
            .stretches
            .iter()
            .map(|r| (r.instance.as_str(), r.duration()))
            .collect();
        assert_eq!(
            out,
            [("web-1", Some(s)), ("web-2", Some(2 * s)), ("web-3", None)]
        );
    }

    #[test]
    fn slot_holds_run_from_creation_to_deletion_and_ignore_refreshes() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let slot = "/sidekick/slots/app/g1/0".to_string();
        let events = [
            event(t, slot.clone(), true),
            event(t + s, slot.clone(), true),
            event(t + 3 * s, slot.clone(), false),
            event(t + 4 * s, slot.clone(), true),
        ];
        let holds: Vec<Option<Duration>> = slot_holds_from(&events)
            .iter()
            .map(SlotHold::duration)
            .collect();
        assert_eq!(holds, [Some(3 * s), None]);
    }
}
