//! `rollout.monitor` against a real etcd: a version that fails after its release halts the group
//! through the swap's halt step, then the failing instance takes a slot again through that halt
//! (`AcquireSlot { away }`) — the slot limit still applies, a halt on another version still
//! refuses, a newcomer is still refused — and its release records the failure with stage
//! `monitor` in the version's state.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use semver::Version;
use sidekick::agent::machine::state::Phase;
use sidekick::agent::machine::swap::{
    self as swap, Failure, HaltCause, SlotAnswer, Stage, SwapAction, SwapObservation, SwapPlan,
};
use sidekick::agent::update::StepSettings;
use sidekick::agent::update::steps::{SwapSeams, run_steps};
use sidekick::etcd::EtcdConnection;
use sidekick::omaha::{AnyUpdateSource, InMemoryUpdateSource, UpdateBackend, error_code};
use sidekick::rollout::RolloutPolicy;
use sidekick::rollout::agent::RolloutAgent;
use sidekick::rollout::policy::PolicyText;
use sidekick::rollout::store;
use sidekick::slot::halt;
use sidekick::slot::{Acquisition, AnySlots, EtcdSlots, SlotHolder, SlotLock};
use sidekick::systemd::control::{DropIn, MemoryUnitControl, RunningVersion};

use super::{GROUP, start};

const TTL: Duration = Duration::from_secs(5);
const REASON: &str = "2.0.0 failed during monitor: the unit failed";

struct Instance {
    rollout: Arc<RolloutAgent>,
    seams: Arc<SwapSeams<MemoryUnitControl>>,
}

/// One instance in a group of one slot, with `monitor = "30s"`.
fn instance(client: &Client, name: &str) -> Instance {
    let policy: RolloutPolicy = PolicyText {
        monitor: Duration::from_secs(30),
        ..PolicyText::default()
    }
    .validate()
    .expect("a valid policy");
    let rollout = Arc::new(RolloutAgent::new(
        EtcdConnection::from_client(client.clone()),
        GROUP,
        name,
        policy,
        Duration::from_secs(50),
    ));
    let who = SlotHolder {
        holder: format!("id-{name}"),
        instance: name.to_string(),
    };
    let max = NonZeroU32::new(1).expect("non-zero");
    let slots = EtcdSlots::new(client.clone(), GROUP, max, TTL, who).with_rollout(rollout.clone());
    let seams = Arc::new(SwapSeams {
        source: AnyUpdateSource::new(
            UpdateBackend::Memory(InMemoryUpdateSource::new(None)),
            false,
        ),
        slots: AnySlots::Etcd(Box::new(slots)),
        control: MemoryUnitControl::new(RunningVersion::default()),
    });
    Instance { rollout, seams }
}

/// One swap action through the driver's step.
async fn step(i: &Instance, action: SwapAction) -> SwapObservation {
    let settings = StepSettings {
        prepull: Vec::new(),
        drain: Duration::ZERO,
        start_timeout: Duration::from_secs(1),
    };
    let step = run_steps(
        i.seams.clone(),
        settings,
        Version::new(1, 0, 0),
        vec![action],
    );
    step.await.expect("the step answers")
}

/// The rollback's slot: taken again (ungated), leaving `version` (`away`).
fn away(version: &str) -> SwapAction {
    SwapAction::AcquireSlot {
        version: version.into(),
        retry: false,
        again: true,
        away: true,
    }
}

fn plan() -> SwapPlan {
    SwapPlan {
        old: DropIn {
            image: "web:1.0.0".into(),
            version: "1.0.0".into(),
        },
        new: DropIn {
            image: "web:2.0.0".into(),
            version: "2.0.0".into(),
        },
        rise: 1,
    }
}

#[tokio::test]
async fn a_monitor_failure_halts_then_rolls_back_through_its_own_halt_and_records_stage_monitor() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let (a, b) = (instance(&client, "web-1"), instance(&client, "web-2"));
    // web-1 swapped to 2.0.0, passed min-healthy (3/1) and released: the slot is free.
    let acquired = a.seams.slots.acquire("2.0.0").await.expect("acquire");
    assert_eq!(acquired, Acquisition::Acquired);
    let (mut phase, _) = swap::start(plan());
    phase.stage = Stage::Releasing;
    phase.report = Some(swap::Report::Complete);
    a.rollout.observe(&Phase::Updating(phase));
    a.seams.slots.release().await.expect("release");
    assert_eq!(a.rollout.monitor(), Duration::from_secs(30));
    // Inside monitor 2.0.0 fails: the halt first (max_failures 1: at once).
    let halt = SwapAction::Halt {
        version: "2.0.0".into(),
        reason: REASON.into(),
        retry: false,
        cause: HaltCause::Monitor,
    };
    assert_eq!(step(&a, halt).await, SwapObservation::GroupHalted(Ok(())));
    let marker = halt::get(&mut client.clone(), GROUP)
        .await
        .expect("read")
        .expect("halted");
    assert_eq!(
        (marker.version.as_str(), marker.instance.as_str()),
        ("2.0.0", "web-1")
    );
    // A newcomer for 2.0.0 is refused by the halt; a rollback leaving another version is too.
    assert!(
        matches!(b.seams.slots.acquire("2.0.0").await.expect("acquire"), Acquisition::Halted { ref version, .. } if version == "2.0.0")
    );
    assert!(matches!(
        step(&b, away("3.0.0")).await,
        SwapObservation::Slot(SlotAnswer::Halted { .. })
    ));
    // The rollback leaving 2.0.0 takes a slot through the halt on 2.0.0.
    assert_eq!(
        step(&a, away("2.0.0")).await,
        SwapObservation::Slot(SlotAnswer::Acquired)
    );
    // The limit applies to it as to anyone: one slot, held by web-1 now.
    assert!(matches!(
        step(&b, away("2.0.0")).await,
        SwapObservation::Slot(SlotAnswer::Busy(_))
    ));
    // Rolled back and registered again: the release records the failure with stage `monitor`.
    let (mut phase, _) = swap::start(plan());
    phase.away = true;
    phase.stage = Stage::Registering {
        failure: Some(Failure {
            code: error_code::MONITOR_FAILED,
            reason: REASON.into(),
            halt: true,
        }),
    };
    a.rollout.observe(&Phase::Updating(phase));
    a.seams.slots.release().await.expect("release");
    let (state, _) = store::get_version(&mut client.clone(), GROUP, "2.0.0")
        .await
        .expect("read")
        .expect("the version's state exists");
    let failures: Vec<(String, String)> = state
        .failures
        .iter()
        .map(|f| (f.instance.clone(), f.stage.clone()))
        .collect();
    assert_eq!(failures, [("web-1".to_string(), "monitor".to_string())]);
    // Still halted after the rollback: only `slots resume` lifts it.
    assert!(
        halt::get(&mut client.clone(), GROUP)
            .await
            .expect("read")
            .is_some()
    );
}
