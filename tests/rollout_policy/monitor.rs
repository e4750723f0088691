//! `rollout.monitor` against a real etcd: a version that fails after its release halts the group
//! through the swap's halt step, then the failing instance takes a slot again through that halt
//! (`AcquireSlot { away }`) — the slot limit still applies, a halt on another version still
//! refuses, a newcomer is still refused — and its release records the failure with stage
//! `monitor` in the version's state.

use std::time::Duration;

use etcd_client::Client;
use sidekick::agent::machine::state::Phase;
use sidekick::agent::machine::swap::{
    self as swap, Failure, HaltCause, SlotAnswer, Stage, SwapAction, SwapObservation,
};
use sidekick::omaha::error_code;
use sidekick::slot::halt;
use sidekick::slot::{Acquisition, SlotLock};

use super::agent_tests::{SwapMember, plan, policy, state, step, swap_member};
use super::{GROUP, start};

const REASON: &str = "2.0.0 failed during monitor: the unit failed";

/// One instance in a group of one slot, with `monitor = "30s"`.
fn instance(client: &Client, name: &str) -> SwapMember {
    swap_member(
        client,
        name,
        &policy(|p| p.monitor = Duration::from_secs(30)),
        1,
    )
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
    let failures: Vec<(String, String)> = state(&client)
        .await
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
