//! The loop running whole swaps over the in-memory seams: the unit restarts when the control
//! restarts it, and the probe fails while the unit runs a version the test calls bad.

use std::num::NonZeroU32;
use std::sync::Arc;

use super::*;
use crate::agent::driver::act::JOURNAL_RETRY;
use crate::agent::machine::swap::{SwapPhase, SwapPlan};
use crate::agent::update::fixtures::{self, step_settings, swap_config, update_settings, who};
use crate::agent::update::journal::Journal;
use crate::agent::update::policy::Denylist;
use crate::agent::update::{SwapConfig, UpdatePass};
use crate::health::ProbeError;
use crate::omaha::{
    AnyUpdateSource, Event, InMemoryUpdateSource, LocalRelease, UpdateBackend, error_code,
};
use crate::registry::Desired;
use crate::slot::{Acquisition, AnySlots, MemorySlots, SlotLock};
use crate::systemd::control::{
    ControlCall, ControlError, DropIn, MemoryUnitControl, PreviousDropIn, RunningVersion,
};

/// The in-memory control, plus what systemd does on a restart: the unit leaves active and
/// comes back.
#[derive(Clone)]
struct Restarting {
    inner: MemoryUnitControl,
    units: Arc<MemoryUnits>,
}

impl UnitControl for Restarting {
    async fn write_dropin(&self, dropin: &DropIn) -> Result<PreviousDropIn, ControlError> {
        self.inner.write_dropin(dropin).await
    }
    async fn restore_dropin(&self, previous: &PreviousDropIn) -> Result<(), ControlError> {
        self.inner.restore_dropin(previous).await
    }
    async fn reload(&self) -> Result<(), ControlError> {
        self.inner.reload().await
    }
    async fn restart(&self, timeout: Duration) -> Result<(), ControlError> {
        let restarted = self.inner.restart(timeout).await;
        match &restarted {
            Ok(()) => {
                self.units.set(ActiveState::Inactive);
                self.units.set(ActiveState::Active);
            }
            // An operator's stop replaced our job: the unit ends stopped.
            Err(ControlError::Canceled { .. }) => self.units.set(ActiveState::Inactive),
            Err(_) => {}
        }
        restarted
    }
    async fn run_transient(&self, argv: &[String], timeout: Duration) -> Result<(), ControlError> {
        self.inner.run_transient(argv, timeout).await
    }
    async fn running(&self) -> Result<RunningVersion, ControlError> {
        self.inner.running().await
    }
}

/// Healthy unless the unit runs the bad version.
struct VersionProbe {
    control: MemoryUnitControl,
    bad: &'static str,
}

impl Probe for VersionProbe {
    async fn check(&mut self) -> Result<(), ProbeError> {
        let running = self.control.running().await.ok().and_then(|r| r.version);
        match running.as_deref() == Some(self.bad) {
            true => Err(ProbeError::Timeout(Duration::ZERO)),
            false => Ok(()),
        }
    }
}

struct World {
    units: Arc<MemoryUnits>,
    control: MemoryUnitControl,
    source: InMemoryUpdateSource,
    slots: MemorySlots,
    registry: MemoryRegistry,
    dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<DriverReport>,
}

/// The registry's history as a load balancer sees it: the instance record left out, and a
/// re-publication that only changed the record folded into the one before.
fn balancer_history(registry: &MemoryRegistry) -> Vec<Desired> {
    let mut seen: Vec<Desired> = Vec::new();
    for desired in registry.history() {
        let desired = match desired {
            Desired::Present(entries) => Desired::Present(
                entries
                    .into_iter()
                    .filter(|(key, _)| !key.starts_with("/sidekick/instances/"))
                    .collect(),
            ),
            other => other,
        };
        if seen.last() != Some(&desired) {
            seen.push(desired);
        }
    }
    seen
}

/// Whether the published instance record names `version` and the serving phase.
fn record_says(registry: &MemoryRegistry, version: &str) -> bool {
    let version = format!(r#""version":"{version}""#);
    registry.current().is_some_and(|entries| {
        entries.iter().any(|(key, value)| {
            key == "/sidekick/instances/app/stable/web-1"
                && value.contains(&version)
                && value.contains(r#""phase":"serving""#)
        })
    })
}

fn release(version: &str) -> LocalRelease {
    fixtures::release(version, "example/web")
}

/// A registered sidekick for an active unit running 1.0.0, checking every 50 ms, then offered
/// `offered`; the unit is unhealthy while it runs `bad`.
async fn start(offered: &str, bad: &'static str, drain: Duration) -> World {
    start_with(Setup::new(offered, bad, drain)).await
}

/// How a test world starts.
struct Setup<'a> {
    offered: &'a str,
    bad: &'static str,
    drain: Duration,
    /// What an earlier life left in the journal, with the unit running its new version.
    journaled: Option<SwapPhase>,
    /// Who holds the group's one slot before the offer.
    slot_taken_by: Option<&'a str>,
    /// `swap.prepull`.
    prepull: Vec<String>,
    /// The journal's directory turns into a file once the loop runs: every journal write fails.
    journal_blocked: bool,
    /// The journal lives in its own directory, so that a test can block it ([`World::block_journal`]).
    journal_apart: bool,
    /// The journal is written through this gate: a disk that can be made to hang.
    journal_gate: Option<JournalGate>,
    /// The loop pings a watchdog every 10 ms and counts the pings here.
    watchdog: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The loop reports to these metrics.
    metrics: Option<crate::metrics::Metrics>,
    /// `rollout.min_healthy` (0 without a group's rollout).
    min_healthy: Option<Duration>,
    /// `rollout.monitor` (0 without a group's rollout).
    monitor: Option<Duration>,
}

impl<'a> Setup<'a> {
    fn new(offered: &'a str, bad: &'static str, drain: Duration) -> Self {
        Setup {
            offered,
            bad,
            drain,
            journaled: None,
            slot_taken_by: None,
            prepull: vec!["docker".into(), "pull".into(), "{image}".into()],
            journal_blocked: false,
            journal_apart: false,
            journal_gate: None,
            watchdog: None,
            metrics: None,
            min_healthy: None,
            monitor: None,
        }
    }
}

/// As [`start`], set up as `setup` says.
async fn start_with(setup: Setup<'_>) -> World {
    let Setup {
        offered,
        bad,
        drain,
        journaled,
        slot_taken_by,
        prepull,
        journal_blocked,
        journal_apart,
        journal_gate,
        watchdog,
        metrics,
        min_healthy,
        monitor,
    } = setup;
    let units = Arc::new(MemoryUnits::new(ActiveState::Active));
    let control = MemoryUnitControl::new(RunningVersion {
        version: Some("1.0.0".into()),
        image: Some("example/web:1.0.0".into()),
    });
    let source = InMemoryUpdateSource::new(None);
    let slots = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
    let registry = MemoryRegistry::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = update_settings(Duration::from_millis(50));
    let mut swaps = SwapConfig {
        steps: step_settings(prepull, drain),
        ..swap_config(dir.path(), 2)
    };
    // Readable at start (there is none), unwritable once the loop runs.
    let journal_dir = dir.path().join("journal");
    if journal_blocked || journal_apart {
        swaps.journal = Journal::new(&journal_dir, "web-1");
    }
    if let Some(phase) = &journaled {
        Journal::new(dir.path(), "web-1").write(phase).unwrap();
        // The earlier run's slot, still held (restarted within `slot.ttl`).
        slots.acquire(&phase.plan.new.version).await.unwrap();
        control.write_dropin(&phase.plan.new).await.unwrap();
    }
    let restarting = Restarting {
        inner: control.clone(),
        units: units.clone(),
    };
    let journal = swaps.journal.clone();
    let mut updates = UpdatePass::new(
        AnyUpdateSource::new(UpdateBackend::Memory(source.clone()), false),
        AnySlots::Memory(slots.join(who("web-1"))),
        restarting,
        settings,
        swaps,
    );
    if let Some(gate) = journal_gate {
        updates = updates.with_journal_store(gate.over(journal));
    }
    let probe = VersionProbe {
        control: control.clone(),
        bad,
    };
    let options = DriverOptions {
        metrics,
        record: Some(RecordOptions {
            group: "app/stable".into(),
            host: "127.0.0.1".into(),
            version: None,
        }),
        ..options(vec![("k".into(), "v".into())])
    };
    let mut driver = driver(
        agent(2, 1, false),
        registry.clone(),
        probe,
        &units,
        Some(updates),
        options,
    );
    if let Some(pings) = watchdog {
        driver.test_watchdog = Some((Duration::from_millis(10), pings));
    }
    driver.test_min_healthy = min_healthy;
    driver.test_monitor = monitor;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(driver.run(async move {
        let _ = stopped.await;
    }));
    eventually("registered before the offer", || registered(&registry)).await;
    if journal_blocked {
        std::fs::write(&journal_dir, "a file where the journal's directory goes").unwrap();
    }
    if let Some(other) = slot_taken_by {
        let taken = slots.join(who(other)).acquire(offered).await.unwrap();
        assert_eq!(taken, Acquisition::Acquired);
    }
    source.set_release(Some(release(offered)));
    World {
        units,
        control,
        source,
        slots,
        registry,
        dir,
        stop,
        run,
    }
}

impl World {
    /// Every journal write fails from now on (the journal's directory moves away and a file takes
    /// its place); needs `Setup::journal_apart`.
    fn block_journal(&self) {
        let journal = self.dir.path().join("journal");
        std::fs::rename(&journal, self.dir.path().join("journal.away")).unwrap();
        std::fs::write(&journal, "a file where the journal's directory goes").unwrap();
    }

    /// Undoes [`Self::block_journal`].
    fn unblock_journal(&self) {
        let journal = self.dir.path().join("journal");
        std::fs::remove_file(&journal).unwrap();
        std::fs::rename(self.dir.path().join("journal.away"), &journal).unwrap();
    }

    fn events(&self) -> Vec<Event> {
        self.source.events().into_iter().map(|e| e.event).collect()
    }

    async fn finish(self) -> (Vec<Desired>, tempfile::TempDir) {
        let _ = self.stop.send(());
        self.run.await.unwrap();
        (self.registry.history(), self.dir)
    }
}

/// Polls `done` until it holds, failing after 5 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn registered(registry: &MemoryRegistry) -> bool {
    registry.current().is_some()
}

fn prepull(version: &str) -> ControlCall {
    ControlCall::RunTransient(
        vec![
            "docker".into(),
            "pull".into(),
            format!("example/web:{version}"),
        ],
        crate::agent::update::steps::PREPULL_TIMEOUT,
    )
}

#[tokio::test]
async fn the_loop_swaps_to_a_healthy_version_and_serves_it_with_the_slot_given_back() {
    let world = start("2.0.0", "none", Duration::from_millis(20)).await;
    eventually("3/1", || world.events().contains(&Event::UpdateComplete)).await;
    eventually("slot released and registered", || {
        world.slots.holders().is_empty() && registered(&world.registry)
    })
    .await;
    // The fleet view: the record published with the registration names the new version.
    eventually("the instance record says 2.0.0, serving", || {
        record_says(&world.registry, "2.0.0")
    })
    .await;
    assert_eq!(
        world.events(),
        [
            Event::PrepullStarted,
            Event::PrepullFinished,
            Event::SwapStarted,
            Event::UpdateComplete
        ]
    );
    assert_eq!(
        world.control.calls(),
        [
            prepull("2.0.0"),
            ControlCall::WriteDropIn(DropIn {
                image: "example/web:2.0.0".into(),
                version: "2.0.0".into()
            }),
            ControlCall::Reload,
            ControlCall::Restart,
        ]
    );
    let running = world.control.running().await.unwrap();
    assert_eq!(running.version.as_deref(), Some("2.0.0"));
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("journal cleared", || !journal.exists()).await;
    // Registered, out for the swap, registered again.
    let entries = vec![("k".to_string(), "v".to_string())];
    assert_eq!(
        balancer_history(&world.registry),
        [
            Desired::Present(entries.clone()),
            Desired::Absent,
            Desired::Present(entries)
        ]
    );
    world.finish().await;
}

/// Min-healthy in the loop: registered again on 2.0.0 with the slot kept and no 3/1 yet; the
/// unit failing then deregisters it at once, halts the group, restores and restarts 1.0.0 while
/// the slot is held, registers it, reports 3/0 1008, denylists 2.0.0 and releases the slot.
#[tokio::test]
async fn a_unit_that_fails_during_min_healthy_is_rolled_back_with_the_slot_held_and_the_group_halted()
 {
    let world = start_with(Setup {
        min_healthy: Some(Duration::from_secs(60)),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    // `sidekick status` shows the step: the record published with the registration names it.
    let proving = |registry: &MemoryRegistry| {
        registry.current().is_some_and(|entries| {
            entries.iter().any(|(key, value)| {
                key == "/sidekick/instances/app/stable/web-1"
                    && value.contains(r#""version":"2.0.0""#)
                    && value.contains(r#""step":"min-healthy""#)
            })
        })
    };
    eventually("registered again on 2.0.0 in min-healthy", || {
        proving(&world.registry)
    })
    .await;
    assert_eq!(world.slots.holders().len(), 1, "the slot is kept");
    assert!(
        !world.events().contains(&Event::UpdateComplete),
        "no 3/1 yet"
    );
    let restarts = world.control.calls().len();
    world.units.set(ActiveState::Failed);
    let failed = Event::Failed {
        error_code: error_code::MIN_HEALTHY_FAILED,
    };
    eventually("3/0 1008", || world.events().contains(&failed)).await;
    eventually("slot released and registered on 1.0.0", || {
        world.slots.holders().is_empty()
            && registered(&world.registry)
            && record_says(&world.registry, "1.0.0")
    })
    .await;
    assert_eq!(
        world.control.calls()[restarts..],
        [
            ControlCall::RestoreDropIn(PreviousDropIn::Absent),
            ControlCall::Reload,
            ControlCall::Restart
        ]
    );
    // Out of rotation from the failure until 1.0.0 was back: registered, out for the swap, back
    // on 2.0.0, out at the failure, back on 1.0.0.
    let entries = vec![("k".to_string(), "v".to_string())];
    assert_eq!(
        balancer_history(&world.registry),
        [
            Desired::Present(entries.clone()),
            Desired::Absent,
            Desired::Present(entries.clone()),
            Desired::Absent,
            Desired::Present(entries)
        ]
    );
    let other = world.slots.join(who("web-2"));
    assert!(
        matches!(other.acquire("2.0.0").await.unwrap(), Acquisition::Halted { ref version, .. } if version == "2.0.0"),
        "the group is halted by 2.0.0"
    );
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("journal cleared", || !journal.exists()).await;
    let denylist = Denylist::load(world.dir.path(), "web-1").unwrap();
    assert!(denylist.contains(&semver::Version::new(2, 0, 0)));
    assert!(!world.events().contains(&Event::UpdateComplete));
    world.finish().await;
}

/// Monitor in the loop: 3/1 sent and the slot released on 2.0.0, the swap still journaled; the
/// unit failing then deregisters it at once, halts the group, takes a slot again through that
/// halt, restores and restarts 1.0.0, registers it, denylists 2.0.0 and releases the slot, with
/// no event after the 3/1.
#[tokio::test]
async fn a_unit_that_fails_inside_monitor_halts_the_group_and_rolls_back_taking_a_slot_again() {
    let world = start_with(Setup {
        monitor: Some(Duration::from_secs(60)),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("3/1 sent, the slot released, watched in monitor", || {
        world.events().contains(&Event::UpdateComplete)
            && world.slots.holders().is_empty()
            && journal.exists()
            && world.registry.current().is_some_and(|entries| {
                entries
                    .iter()
                    .any(|(_, value)| value.contains(r#""step":"monitoring""#))
            })
    })
    .await;
    let events = world.events().len();
    let restarts = world.control.calls().len();
    world.units.set(ActiveState::Failed);
    eventually("slot released and registered on 1.0.0", || {
        !journal.exists()
            && world.slots.holders().is_empty()
            && registered(&world.registry)
            && record_says(&world.registry, "1.0.0")
    })
    .await;
    assert_eq!(
        world.control.calls()[restarts..],
        [
            ControlCall::RestoreDropIn(PreviousDropIn::Absent),
            ControlCall::Reload,
            ControlCall::Restart
        ]
    );
    assert_eq!(world.events().len(), events, "nothing sent after the 3/1");
    let other = world.slots.join(who("web-2"));
    assert!(
        matches!(other.acquire("2.0.0").await.unwrap(), Acquisition::Halted { ref version, .. } if version == "2.0.0"),
        "the group is halted by 2.0.0"
    );
    let denylist = Denylist::load(world.dir.path(), "web-1").unwrap();
    assert!(denylist.contains(&semver::Version::new(2, 0, 0)));
    world.finish().await;
}

/// With `monitor = "0s"` the swap is over at its release, journal cleared, as before monitor.
#[tokio::test]
async fn with_no_monitor_the_swap_is_over_at_its_release() {
    let world = start_with(Setup {
        monitor: Some(Duration::ZERO),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("3/1, released, journal cleared, serving", || {
        world.events().contains(&Event::UpdateComplete)
            && world.slots.holders().is_empty()
            && !journal.exists()
            && record_says(&world.registry, "2.0.0")
    })
    .await;
    world.finish().await;
}

#[tokio::test]
async fn the_swapping_instance_keeps_its_record_apart_from_the_registration_until_it_is_back() {
    let world = start("2.0.0", "none", Duration::from_millis(500)).await;
    eventually("deregistered, the record held as swapping", || {
        !registered(&world.registry)
            && world.registry.held().is_some_and(|(key, value)| {
                key == "/sidekick/instances/app/stable/web-1"
                    && value.contains(r#""phase":"swapping""#)
                    && value.contains(r#""target":"2.0.0""#)
            })
    })
    .await;
    eventually("registered again, nothing held", || {
        record_says(&world.registry, "2.0.0") && world.registry.held().is_none()
    })
    .await;
    world.finish().await;
}

#[tokio::test]
async fn an_unhealthy_version_is_rolled_back_reported_halted_and_denylisted() {
    let world = start("3.0.0", "3.0.0", Duration::from_millis(20)).await;
    let failed = Event::Failed {
        error_code: error_code::UNHEALTHY_AFTER_SWAP,
    };
    eventually("3/0", || world.events().contains(&failed)).await;
    eventually("slot released and registered", || {
        world.slots.holders().is_empty() && registered(&world.registry)
    })
    .await;
    // The fleet view: the record names the version rolled back to.
    eventually("the instance record says 1.0.0 again, serving", || {
        record_says(&world.registry, "1.0.0")
    })
    .await;
    assert_eq!(
        world.events(),
        [
            Event::PrepullStarted,
            Event::PrepullFinished,
            Event::SwapStarted,
            failed
        ]
    );
    let calls = world.control.calls();
    assert_eq!(
        calls[calls.len() - 3..],
        [
            ControlCall::RestoreDropIn(PreviousDropIn::Absent),
            ControlCall::Reload,
            ControlCall::Restart
        ]
    );
    let running = world.control.running().await.unwrap();
    assert_eq!(running.version.as_deref(), Some("1.0.0"));
    let other = world.slots.join(who("web-2"));
    assert!(
        matches!(other.acquire("3.0.0").await.unwrap(), Acquisition::Halted { ref version, .. } if version == "3.0.0"),
        "the group is halted by 3.0.0"
    );
    // Saved off the loop's task, before the journal's removal.
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("journal cleared", || !journal.exists()).await;
    let denylist = Denylist::load(world.dir.path(), "web-1").unwrap();
    assert!(denylist.contains(&semver::Version::new(3, 0, 0)));
    // Later checks meet 3.0.0 again and skip it: no second attempt.
    let checks = world.registry.history().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        world.registry.history().len(),
        checks,
        "no new deregistration"
    );
    assert_eq!(world.events().len(), 4);
    world.finish().await;
}

#[tokio::test]
async fn a_halt_while_waiting_gives_the_grant_back_and_no_check_is_sent_until_resume() {
    let world = start_with(Setup {
        slot_taken_by: Some("web-2"),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    eventually("waiting for the slot web-2 holds", || {
        world.events() == [Event::PrepullStarted, Event::PrepullFinished]
    })
    .await;
    // web-2's version failed: it halts the group, then gives its slot back.
    let other = world.slots.join(who("web-2"));
    other.halt("2.0.0", "unhealthy").await.unwrap();
    other.release().await.unwrap();
    let given_back = Event::Failed {
        error_code: error_code::ROLLOUT_HALTED,
    };
    eventually("the grant given back with 3/0", || {
        world.events().contains(&given_back)
    })
    .await;
    assert!(world.slots.holders().is_empty(), "no slot taken");
    // A later pass sees the halt and sends no check: the record says so.
    let checks = world.source.checks();
    eventually("a pass that found the group halted", || {
        world.registry.current().is_some_and(|entries| {
            entries
                .iter()
                .any(|(_, value)| value.contains(r#""result":"halted""#))
        })
    })
    .await;
    assert_eq!(
        world.source.checks(),
        checks,
        "a check was sent while halted"
    );
    assert!(registered(&world.registry), "serving throughout");
    assert!(!world.registry.history().contains(&Desired::Absent));
    // After the resume the next check is offered the version again, and this time it swaps.
    other.resume().await.unwrap();
    eventually("3/1 after the resume", || {
        world.events().contains(&Event::UpdateComplete)
    })
    .await;
    assert_eq!(
        world.events(),
        [
            Event::PrepullStarted,
            Event::PrepullFinished,
            given_back,
            Event::PrepullStarted,
            Event::PrepullFinished,
            Event::SwapStarted,
            Event::UpdateComplete
        ]
    );
    world.finish().await;
}

#[tokio::test]
async fn with_no_prepull_configured_the_swap_runs_no_transient_unit_and_still_reports_14_1() {
    let world = start_with(Setup {
        prepull: Vec::new(),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    eventually("3/1", || world.events().contains(&Event::UpdateComplete)).await;
    assert_eq!(
        world.events(),
        [
            Event::PrepullStarted,
            Event::PrepullFinished,
            Event::SwapStarted,
            Event::UpdateComplete
        ]
    );
    assert!(
        !world
            .control
            .calls()
            .iter()
            .any(|c| matches!(c, ControlCall::RunTransient(..))),
        "{:?}",
        world.control.calls()
    );
    world.finish().await;
}

#[tokio::test]
async fn a_unit_that_stops_while_an_update_check_hangs_is_deregistered_at_once() {
    // Offered what it runs: every pass is a check that finds no update.
    let world = start("1.0.0", "none", Duration::from_millis(20)).await;
    world.source.hold_checks();
    let before = world.source.checks();
    eventually("a check in flight, unanswered", || {
        world.source.checks() > before
    })
    .await;
    let in_flight = world.source.checks();
    world.units.set(ActiveState::Inactive);
    eventually("deregistered while the check hangs", || {
        !registered(&world.registry)
    })
    .await;
    assert_eq!(world.source.checks(), in_flight, "still the same check");
    // The unit comes back while the check still hangs: registered again after `rise` passes.
    world.units.set(ActiveState::Active);
    eventually("registered again", || registered(&world.registry)).await;
    assert_eq!(world.source.checks(), in_flight, "still the same check");
    world.source.answer_checks();
    eventually("the next check", || world.source.checks() > in_flight).await;
    world.finish().await;
}

#[tokio::test]
async fn an_offer_answered_after_the_unit_stopped_is_given_back_with_3_0_not_serving() {
    // The check goes out while the unit serves; the unit stops before the answer (an offer of
    // 2.0.0) comes: no swap, and the grant ends at once instead of lingering in the service.
    let world = start("2.0.0", "none", Duration::from_millis(20)).await;
    world.source.hold_checks();
    let before = world.source.checks();
    eventually("a check in flight, unanswered", || {
        world.source.checks() > before
    })
    .await;
    world.units.set(ActiveState::Inactive);
    eventually("deregistered while the check hangs", || {
        !registered(&world.registry)
    })
    .await;
    world.source.answer_checks();
    let given_back = Event::Failed {
        error_code: error_code::NOT_SERVING,
    };
    eventually("3/0 NOT_SERVING", || world.events().contains(&given_back)).await;
    assert_eq!(world.events(), [given_back], "no swap started");
    assert!(
        world.control.calls().is_empty(),
        "{:?}",
        world.control.calls()
    );
    assert!(world.slots.holders().is_empty());
    world.finish().await;
}

#[tokio::test]
async fn a_failed_prepull_reports_errorcode_9_takes_no_slot_and_never_deregisters() {
    let world = start("2.0.0", "none", Duration::from_millis(20)).await;
    world.control.fail_transient(true);
    let failed = Event::Failed {
        error_code: error_code::PREPULL_FAILED,
    };
    eventually("3/0", || world.events().contains(&failed)).await;
    assert_eq!(world.events(), [Event::PrepullStarted, failed]);
    assert_eq!(world.control.calls(), [prepull("2.0.0")]);
    assert!(world.slots.holders().is_empty());
    let (history, _dir) = world.finish().await;
    assert!(!history.contains(&Desired::Absent), "{history:?}");
}

#[tokio::test]
async fn a_slot_lost_during_the_drain_means_no_restart_and_registered_again() {
    let world = start("2.0.0", "none", Duration::from_millis(300)).await;
    eventually("deregistered for the swap", || {
        world.registry.history().contains(&Desired::Absent)
    })
    .await;
    // Someone frees our slot behind our back (an expired lease, an operator).
    world.slots.join(who("web-1")).release().await.unwrap();
    // The attempt is dropped, its grant ended with 3/0, and the next check tries again, from its
    // pre-pull.
    eventually("a second attempt", || {
        let pulls = world
            .events()
            .iter()
            .filter(|e| **e == Event::PrepullStarted)
            .count();
        pulls == 2
    })
    .await;
    let events = world.events();
    assert_eq!(
        events[..5],
        [
            Event::PrepullStarted,
            Event::PrepullFinished,
            Event::SwapStarted,
            Event::Failed {
                error_code: error_code::SLOT_LOST
            },
            Event::PrepullStarted
        ]
    );
    let calls = world.control.calls();
    assert_eq!(
        calls[..2],
        [prepull("2.0.0"), prepull("2.0.0")],
        "no drop-in and no restart in the first attempt"
    );
    // Between the attempts the instance served again.
    let entries = vec![("k".to_string(), "v".to_string())];
    let history = balancer_history(&world.registry);
    assert_eq!(
        history[..3],
        [
            Desired::Present(entries.clone()),
            Desired::Absent,
            Desired::Present(entries)
        ]
    );
    world.finish().await;
}

fn journaled(stage: Stage) -> SwapPhase {
    let dropin = |version: &str| DropIn {
        image: format!("example/web:{version}"),
        version: version.into(),
    };
    SwapPhase {
        plan: SwapPlan {
            old: dropin("1.0.0"),
            new: dropin("2.0.0"),
            rise: 2,
        },
        stage,
        previous: Some(PreviousDropIn::Absent),
        slot_held: true,
        unit_active: false,
        halt: Default::default(),
        report: None,
        unit_stopped: false,
        monitor: false,
        away: false,
        denylist: false,
    }
}

#[tokio::test]
async fn a_start_after_a_crash_mid_restart_restarts_onto_the_new_version_verifies_it_and_finishes_with_3_1()
 {
    let world = start_with(Setup {
        journaled: Some(journaled(Stage::Restarting)),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("journal cleared", || !journal.exists()).await;
    assert_eq!(world.events(), [Event::UpdateComplete]);
    // The set-up's own drop-in write, then a reload and restart onto it (systemd reports the
    // new version from the reload on, so the old process may still run); no rollback.
    assert_eq!(
        world.control.calls(),
        [
            ControlCall::WriteDropIn(DropIn {
                image: "example/web:2.0.0".into(),
                version: "2.0.0".into()
            }),
            ControlCall::Reload,
            ControlCall::Restart
        ]
    );
    assert!(world.slots.holders().is_empty());
    world.finish().await;
}

#[tokio::test]
async fn a_start_after_a_crash_mid_rollback_brings_the_old_version_back_and_reports_3_0() {
    let failure = crate::agent::machine::swap::Failure {
        code: error_code::UNHEALTHY_AFTER_SWAP,
        reason: "2.0.0 not healthy".into(),
        halt: true,
    };
    let world = start_with(Setup {
        journaled: Some(journaled(Stage::RollingBack { failure })),
        ..Setup::new("2.0.0", "2.0.0", Duration::from_millis(20))
    })
    .await;
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("journal cleared", || !journal.exists()).await;
    assert_eq!(
        world.events(),
        [Event::Failed {
            error_code: error_code::UNHEALTHY_AFTER_SWAP
        }]
    );
    let running = world.control.running().await.unwrap();
    assert_eq!(running.version.as_deref(), Some("1.0.0"));
    let denylist = Denylist::load(world.dir.path(), "web-1").unwrap();
    assert!(denylist.contains(&semver::Version::new(2, 0, 0)));
    world.finish().await;
}

#[tokio::test]
async fn a_journal_that_cannot_be_written_drops_the_attempt_before_anything_is_done() {
    let world = start_with(Setup {
        journal_blocked: true,
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    // Offered again at every check, dropped every time.
    let checks = world.source.checks();
    eventually("two more checks", || world.source.checks() >= checks + 2).await;
    // Each dropped attempt still ends the grant its offer took (3/0 generic), and nothing else.
    let events = world.events();
    let ended = Event::Failed {
        error_code: error_code::GENERIC,
    };
    assert!(
        !events.is_empty() && events.iter().all(|e| *e == ended),
        "{events:?}"
    );
    assert_eq!(
        world.control.calls(),
        [],
        "no pre-pull, no drop-in, no restart"
    );
    assert!(world.slots.holders().is_empty());
    assert!(registered(&world.registry));
    let (history, _dir) = world.finish().await;
    let withdrawn = history[..history.len() - 1]
        .iter()
        .any(|d| matches!(d, Desired::Absent));
    assert!(
        !withdrawn,
        "never deregistered before the stop: {history:?}"
    );
}

#[tokio::test]
async fn a_journal_write_failing_after_the_deregistration_holds_the_swap_until_it_is_written() {
    let world = start_with(Setup {
        journal_apart: true,
        ..Setup::new("2.0.0", "none", Duration::from_millis(300))
    })
    .await;
    eventually("deregistered for the swap", || {
        world.registry.history().contains(&Desired::Absent)
    })
    .await;
    // Draining now: the fence's record (the next write) fails.
    world.block_journal();
    let writes_drop_in = |calls: &[ControlCall]| {
        calls
            .iter()
            .any(|c| matches!(c, ControlCall::WriteDropIn(_)))
    };
    // Held over the drain and more than one retry: nothing further happens unrecorded. (An
    // absence can only be watched for a while.)
    tokio::time::sleep(Duration::from_millis(300) + JOURNAL_RETRY + JOURNAL_RETRY / 2).await;
    assert!(
        !writes_drop_in(&world.control.calls()),
        "the drop-in was written with its step unrecorded: {:?}",
        world.control.calls()
    );
    assert!(
        !registered(&world.registry),
        "held in place: still out of the load balancer"
    );
    world.unblock_journal();
    eventually("3/1 once the journal takes the record", || {
        world.events().contains(&Event::UpdateComplete)
    })
    .await;
    assert!(writes_drop_in(&world.control.calls()));
    world.finish().await;
}

/// The unit stays stopped and the version unblamed after an operator's stop: no restart after
/// the stop, no halt, no denylist, the slot free, the grant ended with 3/0 errorcode 1004, and
/// no check sent while it is stopped (an offer could not be taken), three passes over.
async fn stays_stopped(world: &World, metrics: &crate::metrics::Metrics, restarts_before: usize) {
    let operator = Event::Failed {
        error_code: error_code::OPERATOR_ACTION,
    };
    eventually("3/0 OPERATOR_ACTION", || world.events().contains(&operator)).await;
    eventually("the slot free", || world.slots.holders().is_empty()).await;
    let checks = world.source.checks();
    let passes = || {
        let text = metrics.encode();
        let line = r#"sidekick_update_checks_total{result="not-serving"} "#;
        text.lines()
            .find_map(|l| l.strip_prefix(line).and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0)
    };
    eventually("three passes that send no check", || passes() >= 3).await;
    assert_eq!(
        world.source.checks(),
        checks,
        "a stopped unit sends no check"
    );
    let events = world.events();
    assert_eq!(events.last(), Some(&operator), "{events:?}");
    let pulls = events.iter().filter(|e| **e == Event::PrepullStarted);
    assert_eq!(
        pulls.count(),
        1,
        "a stopped unit takes no offer: {events:?}"
    );
    let restarts = world
        .control
        .calls()
        .into_iter()
        .filter(|c| *c == ControlCall::Restart);
    assert_eq!(
        restarts.count(),
        restarts_before,
        "the stopped unit was started again"
    );
    let unit = world.units.unit_state().borrow().active.clone();
    assert_eq!(unit, ActiveState::Inactive);
    assert_eq!(
        world.control.running().await.unwrap().version.as_deref(),
        Some("1.0.0")
    );
    let halt = world.slots.join(who("web-2")).halted().await.unwrap();
    assert_eq!(halt, None, "the group was halted");
    let denylist = std::fs::read_to_string(world.dir.path().join("web-1/denylist.json"));
    assert!(
        !denylist.unwrap_or_default().contains("2.0.0"),
        "2.0.0 denylisted"
    );
}

#[tokio::test]
async fn a_unit_stopped_while_draining_is_not_restarted_and_its_grant_ends_with_3_0_1004() {
    let metrics = crate::metrics::Metrics::new();
    let world = start_with(Setup {
        metrics: Some(metrics.clone()),
        ..Setup::new("2.0.0", "none", Duration::from_millis(300))
    })
    .await;
    eventually("deregistered for the swap", || {
        world.registry.history().contains(&Desired::Absent)
    })
    .await;
    world.units.set(ActiveState::Deactivating);
    world.units.set(ActiveState::Inactive);
    stays_stopped(&world, &metrics, 0).await;
    assert!(
        !world
            .control
            .calls()
            .iter()
            .any(|c| matches!(c, ControlCall::WriteDropIn(_))),
        "the drop-in was written"
    );
    world.finish().await;
}

#[tokio::test]
async fn a_restart_job_canceled_by_an_operators_stop_puts_the_dropin_back_and_starts_nothing() {
    let metrics = crate::metrics::Metrics::new();
    let world = start_with(Setup {
        metrics: Some(metrics.clone()),
        ..Setup::new("2.0.0", "none", Duration::ZERO)
    })
    .await;
    world.control.cancel_restart(true);
    stays_stopped(&world, &metrics, 1).await;
    let calls = world.control.calls();
    let after_write = calls
        .iter()
        .skip_while(|c| !matches!(c, ControlCall::WriteDropIn(_)))
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        after_write,
        [
            ControlCall::WriteDropIn(fixtures_dropin("2.0.0")),
            ControlCall::Reload,
            ControlCall::Restart,
            ControlCall::RestoreDropIn(PreviousDropIn::Absent),
            ControlCall::Reload,
        ]
    );
    world.finish().await;
}

#[tokio::test]
async fn sigterm_while_waiting_for_a_slot_ends_the_grant_with_3_0_1006_and_frees_no_other_slot() {
    let setup = Setup {
        slot_taken_by: Some("web-2"),
        ..Setup::new("2.0.0", "none", Duration::ZERO)
    };
    let world = start_with(setup).await;
    eventually("14/1: waiting for the slot", || {
        world.events().contains(&Event::PrepullFinished)
    })
    .await;
    let source = world.source.clone();
    let slots = world.slots.clone();
    world.finish().await;
    let events: Vec<Event> = source.events().into_iter().map(|e| e.event).collect();
    let interrupted = Event::Failed {
        error_code: error_code::INTERRUPTED,
    };
    assert_eq!(events.last(), Some(&interrupted), "{events:?}");
    assert_eq!(slots.holders(), ["web-2"]);
}

#[tokio::test]
async fn sigterm_with_the_update_service_not_answering_stops_within_the_shutdown_deadline() {
    let setup = Setup {
        slot_taken_by: Some("web-2"),
        ..Setup::new("2.0.0", "none", Duration::ZERO)
    };
    let world = start_with(setup).await;
    eventually("14/1: waiting for the slot", || {
        world.events().contains(&Event::PrepullFinished)
    })
    .await;
    // The 3/0 that ends the grant cannot be sent: the stop must not wait for it (an event
    // send may take 45 s), and the deregistration goes ahead beside it.
    world.source.hold_events();
    let registry = world.registry.clone();
    let source = world.source.clone();
    let stopping = Instant::now();
    world.finish().await;
    let took = stopping.elapsed();
    assert!(
        took < SHUTDOWN_DEADLINE + Duration::from_millis(500),
        "the stop took {took:?}"
    );
    assert_eq!(registry.history().last(), Some(&Desired::Shutdown));
    let events: Vec<Event> = source.events().into_iter().map(|e| e.event).collect();
    assert_eq!(events.last(), Some(&Event::PrepullFinished), "{events:?}");
}

fn fixtures_dropin(version: &str) -> DropIn {
    DropIn {
        image: format!("example/web:{version}"),
        version: version.into(),
    }
}
/// A disk that hangs on demand: journal records wait while the gate is shut. Opens on drop, so
/// that a failing test does not leave the writer thread hanging.
#[derive(Clone, Default)]
struct JournalGate {
    shut: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    /// Records waiting at the gate now.
    stuck: Arc<std::sync::atomic::AtomicU64>,
}

/// The gate in front of a journal.
struct Gated {
    gate: JournalGate,
    journal: Journal,
}

impl JournalGate {
    fn over(&self, journal: Journal) -> Gated {
        Gated {
            gate: self.clone(),
            journal,
        }
    }

    fn set(&self, shut: bool) {
        let (lock, changed) = &*self.shut;
        *lock.lock().unwrap() = shut;
        changed.notify_all();
    }

    fn stuck(&self) -> u64 {
        self.stuck.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn pass(&self) {
        let (lock, changed) = &*self.shut;
        let mut shut = lock.lock().unwrap();
        if *shut {
            self.stuck.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while *shut {
                shut = changed.wait(shut).unwrap();
            }
            self.stuck.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Opens the gate when the test ends, however it ends.
struct OpenOnDrop(JournalGate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl crate::agent::update::pass::JournalStore for Gated {
    fn write(&self, swap: &SwapPhase) -> Result<(), crate::agent::update::journal::JournalError> {
        self.gate.pass();
        self.journal.write(swap)
    }
    fn clear(&self) -> Result<(), crate::agent::update::journal::JournalError> {
        self.gate.pass();
        self.journal.clear()
    }
}

// Multi-threaded: a record made on the loop's task would stall the loop, not this test's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_journal_delays_neither_a_deregistration_nor_the_watchdog_and_the_swap_waits_for_it()
 {
    let gate = JournalGate::default();
    let _open = OpenOnDrop(gate.clone());
    let pings = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let world = start_with(Setup {
        slot_taken_by: Some("web-2"),
        journal_gate: Some(gate.clone()),
        watchdog: Some(pings.clone()),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    eventually("waiting for the slot web-2 holds", || {
        world.events() == [Event::PrepullStarted, Event::PrepullFinished]
    })
    .await;
    // The disk hangs; the unit fails while the swap waits for its slot.
    gate.set(true);
    world.units.set(ActiveState::Failed);
    eventually("deregistered while the disk hangs", || {
        !registered(&world.registry)
    })
    .await;
    let before = pings.load(std::sync::atomic::Ordering::SeqCst);
    eventually("watchdog pings while the disk hangs", || {
        pings.load(std::sync::atomic::Ordering::SeqCst) >= before + 3
    })
    .await;
    // web-2 gives its slot back and the unit is back: the swap goes on only as its records are
    // made, and none of its steps ran while they could not be.
    world.units.set(ActiveState::Active);
    world.slots.join(who("web-2")).release().await.unwrap();
    eventually("a record waiting at the gate", || gate.stuck() > 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !world.events().contains(&Event::SwapStarted),
        "a swap step ran with its phase unrecorded: {:?}",
        world.events()
    );
    assert!(gate.stuck() > 0, "still hanging");
    gate.set(false);
    eventually("3/1 once the disk answers", || {
        world.events().contains(&Event::UpdateComplete)
    })
    .await;
    let journal = world.dir.path().join("web-1/journal.json");
    eventually("journal cleared", || !journal.exists()).await;
    world.finish().await;
}

#[tokio::test]
async fn a_slot_an_earlier_run_left_is_released_once_registered_and_no_check_goes_out_before() {
    // The unit is inactive at start: its passes send no check (an offer could not be taken)
    // until it is registered; the earlier run's slot is released once the registration is
    // confirmed, and the check that follows goes out.
    let units = Arc::new(MemoryUnits::new(ActiveState::Inactive));
    let control = MemoryUnitControl::new(RunningVersion {
        version: Some("1.0.0".into()),
        image: Some("example/web:1.0.0".into()),
    });
    let source = InMemoryUpdateSource::new(Some(release("1.0.0")));
    source.hold_checks();
    let slots = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
    // An earlier run of web-1 took the slot and was killed with it.
    let earlier = slots.join(who("web-1"));
    assert_eq!(
        earlier.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let dir = tempfile::tempdir().unwrap();
    let updates = UpdatePass::new(
        AnyUpdateSource::new(UpdateBackend::Memory(source.clone()), false),
        AnySlots::Memory(slots.join(who("web-1"))),
        control.clone(),
        update_settings(Duration::from_millis(50)),
        swap_config(dir.path(), 2),
    );
    let registry = MemoryRegistry::new();
    let driver = driver(
        agent(1, 1, true),
        registry.clone(),
        VersionProbe {
            control,
            bad: "none",
        },
        &units,
        Some(updates),
        options(vec![("k".into(), "v".into())]),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(driver.run(async move {
        let _ = stopped.await;
    }));
    units.set(ActiveState::Active);
    eventually("registered", || registered(&registry)).await;
    eventually("the earlier run's slot released", || {
        slots.holders().is_empty()
    })
    .await;
    eventually("a check out once registered", || source.checks() > 0).await;
    source.answer_checks();
    let _ = stop.send(());
    run.await.unwrap();
}

#[tokio::test]
async fn a_slot_wait_shows_in_the_metrics_with_its_attempts_and_the_time_it_began() {
    let metrics = crate::metrics::Metrics::new();
    let world = start_with(Setup {
        slot_taken_by: Some("web-2"),
        metrics: Some(metrics.clone()),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    eventually("a busy attempt counted", || {
        metrics
            .encode()
            .contains("sidekick_slot_attempts_total{result=\"busy\"} 1")
    })
    .await;
    let text = metrics.encode();
    let started = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("sidekick_swap_step_started_timestamp_seconds{step=\"slot\"} ")
        })
        .unwrap_or_else(|| panic!("no start time of the slot wait in\n{text}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let started: u64 = started.parse().unwrap();
    assert!(started <= now && now - started < 60, "{started} vs {now}");
    // web-2 gives its slot back: the swap goes on and ends, and no step is current any more.
    world.slots.join(who("web-2")).release().await.unwrap();
    eventually("3/1", || world.events().contains(&Event::UpdateComplete)).await;
    eventually("swap over", || {
        metrics
            .encode()
            .contains("sidekick_swaps_total{result=\"updated\"} 1")
    })
    .await;
    let text = metrics.encode();
    assert!(
        text.contains("sidekick_slot_attempts_total{result=\"acquired\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("sidekick_swap_step_started_timestamp_seconds{"),
        "{text}"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_journal_record_hanging_stops_within_the_stop_budget() {
    let gate = JournalGate::default();
    let _open = OpenOnDrop(gate.clone());
    let world = start_with(Setup {
        slot_taken_by: Some("web-2"),
        journal_gate: Some(gate.clone()),
        ..Setup::new("2.0.0", "none", Duration::from_millis(20))
    })
    .await;
    eventually("waiting for the slot web-2 holds", || {
        world.events() == [Event::PrepullStarted, Event::PrepullFinished]
    })
    .await;
    gate.set(true);
    // web-2 lets go: the next attempt's record hangs at the gate.
    world.slots.join(who("web-2")).release().await.unwrap();
    eventually("a record waiting at the gate", || gate.stuck() > 0).await;
    let asked = Instant::now();
    let _ = world.stop.send(());
    world.run.await.unwrap();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the stop waited {took:?} for a hanging disk"
    );
    assert!(gate.stuck() > 0, "still hanging when the driver was gone");
    assert!(
        world.registry.current().is_none(),
        "deregistered on the way out"
    );
}
