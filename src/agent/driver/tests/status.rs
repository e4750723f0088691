//! The loop over in-memory seams without updates: it follows the unit and the probe, and says
//! what is true in its status line.

use super::*;
use crate::agent::driver::status::status_line;
use crate::health::ProbeError;
use crate::registry::Desired;
use crate::systemd::LoadState;
use crate::systemd::control::MemoryUnitControl;

/// A probe whose answers the test flips.
#[derive(Clone)]
struct Switch(watch::Receiver<bool>);

impl Probe for Switch {
    async fn check(&mut self) -> Result<(), ProbeError> {
        match *self.0.borrow() {
            true => Ok(()),
            false => Err(ProbeError::Timeout(Duration::ZERO)),
        }
    }
}

/// A driver over in-memory seams that does not look for updates.
fn without_updates(
    agent: Agent,
    registry: MemoryRegistry,
    probe: Switch,
    units: &MemoryUnits,
) -> Driver<MemoryRegistry, Switch, MemoryUnitControl> {
    driver(
        agent,
        registry,
        probe,
        units,
        None,
        options(vec![("k".into(), "v".into())]),
    )
}

#[test]
fn status_says_not_registered_while_etcd_is_unreachable_or_the_unit_unusable() {
    let mut agent = agent(1, 1, true);
    agent.unit = ActiveState::Active;
    agent.registered = true;
    let unreachable = Published::Unreachable {
        error: "connection refused".into(),
    };
    let loaded = LoadState::Loaded;
    assert_eq!(
        status_line(&agent, &unreachable, &loaded, "web@1.service"),
        "not registered: etcd unreachable (connection refused)"
    );
    let registered = Published::Registered { lease: 7 };
    assert_eq!(
        status_line(&agent, &registered, &loaded, "web@1.service"),
        "registered"
    );
    assert_eq!(
        status_line(&agent, &registered, &LoadState::NotFound, "web@1.service"),
        "not registered: unit web@1.service is not-found"
    );
    agent.registered = false;
    agent.unit = ActiveState::Inactive;
    assert_eq!(
        status_line(&agent, &unreachable, &loaded, "web@1.service"),
        "not registered: unit is inactive"
    );
}

async fn wait_for(registry: &MemoryRegistry, want: bool) {
    let mut published = registry.published();
    let wait = published.wait_for(|p| matches!(p, Published::Registered { .. }) == want);
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("registry state in time")
        .expect("registry alive");
}

#[tokio::test]
async fn follows_unit_and_probe_and_deregisters_on_shutdown() {
    let units = MemoryUnits::new(ActiveState::Inactive);
    let registry = MemoryRegistry::new();
    let (healthy, probe) = watch::channel(true);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = without_updates(agent(2, 1, false), registry.clone(), Switch(probe), &units);
    let run = tokio::spawn(driver.run(async {
        let _ = stopped.await;
    }));
    units.set(ActiveState::Active);
    wait_for(&registry, true).await;
    healthy.send_replace(false);
    wait_for(&registry, false).await;
    healthy.send_replace(true);
    wait_for(&registry, true).await;
    units.set(ActiveState::Deactivating);
    wait_for(&registry, false).await;
    let _ = stop.send(());
    run.await.unwrap();
    assert_eq!(registry.history().last(), Some(&Desired::Shutdown));
    assert_eq!(registry.current(), None);
}

#[tokio::test]
async fn a_restart_seen_only_as_active_again_deregisters_and_waits_for_rise() {
    let units = MemoryUnits::new(ActiveState::Active);
    let registry = MemoryRegistry::new();
    let (_healthy, probe) = watch::channel(true);
    let driver = without_updates(agent(2, 2, false), registry.clone(), Switch(probe), &units);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(driver.run(async {
        let _ = stopped.await;
    }));
    wait_for(&registry, true).await;
    let before = registry.history().len();
    // All three before the driver runs again: it sees only the latest value.
    units.set(ActiveState::Deactivating);
    units.set(ActiveState::Activating);
    units.set(ActiveState::Active);
    let mut published = registry.published();
    let again = published.wait_for(|_| registry.history().len() >= before + 2);
    tokio::time::timeout(Duration::from_secs(5), again)
        .await
        .expect("deregistered and registered again in time")
        .expect("registry alive");
    let entries = vec![("k".to_string(), "v".to_string())];
    assert_eq!(
        registry.history()[before..],
        [Desired::Absent, Desired::Present(entries)]
    );
    let _ = stop.send(());
    run.await.unwrap();
}

#[test]
fn a_swap_step_that_lasts_shows_its_time_in_whole_minutes_once_past_a_minute() {
    use crate::agent::driver::status::with_step_time;
    let line = || "updating to 2.0.0: waiting for a slot (1 of 1 slots held)".to_string();
    assert_eq!(with_step_time(line(), None), line());
    let short = Some(("slot", Duration::from_secs(59)));
    assert_eq!(with_step_time(line(), short), line());
    let long = Some(("slot", Duration::from_secs(2 * 3600 + 3 * 60 + 59)));
    assert_eq!(
        with_step_time(line(), long),
        format!("{} (for 2h 3m)", line())
    );
}
