//! The loop putting reloaded settings in force over the in-memory seams: new entries replace the
//! registration in one write, and a new probe and rules judge health from then on.

use std::num::NonZeroU32;

use super::*;
use crate::agent::machine::state::HealthRules;
use crate::agent::update::UpdateReload;
use crate::agent::update::fixtures::{step_settings, update_settings};
use crate::health::ProbeError;
use crate::registry::Desired;
use crate::systemd::control::MemoryUnitControl;

/// A probe that always gives the same answer.
struct Answer(bool);

impl Probe for Answer {
    async fn check(&mut self) -> Result<(), ProbeError> {
        match self.0 {
            true => Ok(()),
            false => Err(ProbeError::Timeout(Duration::ZERO)),
        }
    }
}

fn entries(value: &str) -> Vec<Entry> {
    vec![("/services/web/web-1".into(), value.into())]
}

fn rules(rise: u32, fall: u32) -> HealthRules {
    let n = |v| NonZeroU32::new(v).unwrap();
    HealthRules {
        rise: n(rise),
        fall: n(fall),
        unchecked: false,
    }
}

/// A reload of `entries` and a probe answering `passes`; update settings it carries go nowhere
/// (this driver has no update pass).
fn reload(entries: Vec<Entry>, passes: bool, rules: HealthRules) -> Reconfigure<Answer> {
    Reconfigure {
        entries,
        host: "127.0.0.1".into(),
        probe: Answer(passes),
        interval: Duration::from_millis(10),
        rules,
        updates: UpdateReload {
            settings: update_settings(Duration::from_secs(60)),
            source: None,
            steps: step_settings(Vec::new(), Duration::ZERO),
            verify_timeout: Duration::from_secs(1),
            rise: 1,
        },
        rollout: crate::rollout::RolloutPolicy::default(),
        rollout_floor: Duration::from_secs(1),
    }
}

struct Running {
    registry: MemoryRegistry,
    reloads: mpsc::Sender<Reconfigure<Answer>>,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<DriverReport>,
}

/// A driver over an active unit and a passing probe, registered with `entries("v1")`.
async fn registered() -> Running {
    let units = MemoryUnits::new(ActiveState::Active);
    let registry = MemoryRegistry::new();
    let agent = agent(1, 2, false);
    let (reloads, received) = mpsc::channel(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = driver::<_, MemoryUnitControl>(
        agent,
        registry.clone(),
        Answer(true),
        &units,
        None,
        options(entries("v1")),
    )
    .with_reloads(received);
    let run = tokio::spawn(driver.run(async move {
        let _ = stopped.await;
        drop(units);
    }));
    wait_until(&registry, |r| r.current() == Some(entries("v1"))).await;
    Running {
        registry,
        reloads,
        stop,
        run,
    }
}

async fn wait_until(registry: &MemoryRegistry, done: impl Fn(&MemoryRegistry) -> bool) {
    let mut published = registry.published();
    let wait = published.wait_for(|_| done(registry));
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("in time")
        .expect("registry alive");
}

#[tokio::test]
async fn reloaded_entries_replace_the_registration_in_one_write_without_withdrawing_it() {
    let world = registered().await;
    let before = world.registry.history().len();
    world
        .reloads
        .send(reload(entries("v2"), true, rules(1, 2)))
        .await
        .unwrap();
    wait_until(&world.registry, |r| r.current() == Some(entries("v2"))).await;
    assert_eq!(
        world.registry.history()[before..],
        [Desired::Present(entries("v2"))]
    );
    let _ = world.stop.send(());
    world.run.await.unwrap();
}

#[tokio::test]
async fn a_reloaded_probe_judges_health_from_then_on() {
    let world = registered().await;
    let before = world.registry.history().len();
    // The same entries, a probe that fails, and a fall of 3.
    world
        .reloads
        .send(reload(entries("v1"), false, rules(1, 3)))
        .await
        .unwrap();
    wait_until(&world.registry, |r| r.current().is_none()).await;
    assert_eq!(world.registry.history()[before..], [Desired::Absent]);
    let _ = world.stop.send(());
    world.run.await.unwrap();
}
