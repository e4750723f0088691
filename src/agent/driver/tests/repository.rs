//! The loop and `update.allowed_repositories`: an offer may move the unit only within the
//! repository it runs now, or to one the list names; anything else is refused with 3/0 and
//! nothing reaches systemd.

use std::num::NonZeroU32;

use super::*;
use crate::agent::update::UpdatePass;
use crate::agent::update::fixtures::{release, swap_config, update_settings, who};
use crate::health::ProbeError;
use crate::omaha::{AnyUpdateSource, Event, InMemoryUpdateSource, UpdateBackend, error_code};
use crate::slot::{AnySlots, MemorySlots};
use crate::systemd::control::{ControlCall, MemoryUnitControl, RunningVersion};

/// A probe that always passes.
struct Healthy;

impl Probe for Healthy {
    async fn check(&mut self) -> Result<(), ProbeError> {
        Ok(())
    }
}

/// A running loop for `web-1`, whose unit runs `reg/web:1.0.0`, offered 2.0.0 from `codebase`
/// (images `{codebase}:{version}`) with `allowed` as `update.allowed_repositories`.
struct World {
    control: MemoryUnitControl,
    source: InMemoryUpdateSource,
    _dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<DriverReport>,
}

fn start(codebase: &str, allowed: &[&str]) -> World {
    let units = MemoryUnits::new(ActiveState::Active);
    let control = MemoryUnitControl::new(RunningVersion {
        version: Some("1.0.0".into()),
        image: Some("reg/web:1.0.0".into()),
    });
    let source = InMemoryUpdateSource::new(Some(release("2.0.0", codebase)));
    let slots = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
    let dir = tempfile::tempdir().unwrap();
    let mut settings = update_settings(Duration::from_millis(50));
    settings.allowed_repositories = allowed.iter().map(|r| r.to_string()).collect();
    let updates = UpdatePass::new(
        AnyUpdateSource::new(UpdateBackend::Memory(source.clone()), false),
        AnySlots::Memory(slots.join(who("web-1"))),
        control.clone(),
        settings,
        swap_config(dir.path(), 1),
    );
    let options = options(vec![("k".into(), "v".into())]);
    let driver = driver(
        agent(1, 1, false),
        MemoryRegistry::new(),
        Healthy,
        &units,
        Some(updates),
        options,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(driver.run(async move {
        let _ = stopped.await;
    }));
    World {
        control,
        source,
        _dir: dir,
        stop,
        run,
    }
}

impl World {
    /// Polls until `done` holds, failing after 5 s.
    async fn eventually(&self, what: &str, done: impl Fn(&World) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn wrote(&self, image: &str) -> bool {
        self.control
            .calls()
            .iter()
            .any(|call| matches!(call, ControlCall::WriteDropIn(d) if d.image == image))
    }

    fn restarted(&self) -> bool {
        self.control.calls().contains(&ControlCall::Restart)
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        self.run.await.unwrap();
    }
}

#[tokio::test]
async fn an_offer_from_another_registry_is_refused_and_nothing_reaches_systemd() {
    let world = start("evil.example.net/web", &[]);
    let refused = Event::Failed {
        error_code: error_code::OFFER_REFUSED,
    };
    // Several checks, each refused with 3/0 and none acted on.
    world
        .eventually("three refused checks", |w| {
            w.source
                .events()
                .iter()
                .filter(|e| e.event == refused)
                .count()
                >= 3
        })
        .await;
    assert!(
        world.control.calls().is_empty(),
        "no drop-in, reload or restart: {:?}",
        world.control.calls()
    );
    world.finish().await;
}

#[tokio::test]
async fn a_new_tag_of_the_running_repository_still_swaps() {
    let world = start("reg/web", &[]);
    world
        .eventually("the new tag written and the unit restarted", |w| {
            w.wrote("reg/web:2.0.0") && w.restarted()
        })
        .await;
    world.finish().await;
}

#[tokio::test]
async fn a_repository_in_allowed_repositories_swaps_too() {
    let world = start(
        "mirror.example.com/team/web",
        &["mirror.example.com/team/web"],
    );
    world
        .eventually(
            "the listed repository written and the unit restarted",
            |w| w.wrote("mirror.example.com/team/web:2.0.0") && w.restarted(),
        )
        .await;
    world.finish().await;
}
