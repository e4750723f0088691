//! The failure budget (`rollout.max_failures`) through the swap's halt step against a real etcd:
//! each failure of a version is counted in its state once per instance (a re-sent halt changes
//! nothing), the group is halted only by the failure that spends the budget, and the budget then
//! holds every further slot for that version, also once the halt is lifted. With 1 the halt step
//! halts at once and writes nothing else, as before the budget.

use etcd_client::Client;
use sidekick::agent::machine::state::Phase;
use sidekick::agent::machine::swap::{
    self as swap, Failure, HaltCause, Stage, SwapAction, SwapObservation,
};
use sidekick::rollout::store;
use sidekick::slot::halt;
use sidekick::slot::{Acquisition, SlotLock};

use super::agent_tests::{SwapMember, plan, policy, state, step, swap_member};
use super::{GROUP, start};

const REASON: &str = "2.0.0 not healthy within the verify timeout";

/// One instance in a group of three slots, with `max_failures`.
fn instance(client: &Client, name: &str, max_failures: u32) -> SwapMember {
    swap_member(client, name, &policy(|p| p.max_failures = max_failures), 3)
}

/// The halt the swap owes for a failed verification of 2.0.0, through the driver's step.
async fn halt_step(i: &SwapMember) -> SwapObservation {
    let halt = SwapAction::Halt {
        version: "2.0.0".into(),
        reason: REASON.into(),
        retry: false,
        cause: HaltCause::Verify,
    };
    step(i, halt).await
}

/// The rolled-back swap registers the old version again with the failure, then releases: the
/// release records the failure as it always did.
async fn roll_back_and_release(i: &SwapMember) {
    let (mut phase, _) = swap::start(plan());
    phase.stage = Stage::Registering {
        failure: Some(Failure {
            code: sidekick::omaha::error_code::UNHEALTHY_AFTER_SWAP,
            reason: REASON.into(),
            halt: true,
        }),
    };
    i.rollout.observe(&Phase::Updating(phase));
    i.seams.slots.release().await.expect("release");
}

async fn failures(client: &Client) -> Vec<String> {
    let failures = state(client).await.failures;
    failures.into_iter().map(|f| f.instance).collect()
}

async fn marker(client: &Client) -> Option<halt::HaltMarker> {
    halt::get(&mut client.clone(), GROUP).await.expect("read")
}

#[tokio::test]
async fn with_max_failures_2_the_first_failure_is_counted_the_second_halts_and_the_budget_holds() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let (a, b, c) = (
        instance(&client, "web-1", 2),
        instance(&client, "web-2", 2),
        instance(&client, "web-3", 2),
    );
    let acquired = a.seams.slots.acquire("2.0.0").await.expect("acquire");
    assert_eq!(acquired, Acquisition::Acquired);
    // The first failure is counted, not halted; sent again (a retried halt) it counts once.
    for _ in 0..2 {
        assert_eq!(halt_step(&a).await, SwapObservation::FailureCounted);
        assert_eq!(failures(&client).await, ["web-1"]);
        assert!(marker(&client).await.is_none(), "below the budget: no halt");
    }
    roll_back_and_release(&a).await;
    assert_eq!(failures(&client).await, ["web-1"], "the release adds none");
    // Below the budget the version may take another slot: that is what the key means.
    let acquired = b.seams.slots.acquire("2.0.0").await.expect("acquire");
    assert_eq!(acquired, Acquisition::Acquired);
    // The second instance's failure spends the budget: the group halts, naming the count.
    for _ in 0..2 {
        assert_eq!(halt_step(&b).await, SwapObservation::GroupHalted(Ok(())));
        assert_eq!(failures(&client).await, ["web-1", "web-2"]);
    }
    let halted = marker(&client).await.expect("halted");
    assert_eq!(halted.version, "2.0.0");
    assert_eq!(halted.instance, "web-2");
    assert_eq!(
        halted.reason,
        format!("{REASON} (2 instances failed on the version, max_failures 2)")
    );
    match c.seams.slots.acquire("2.0.0").await.expect("acquire") {
        Acquisition::Halted { version, .. } => assert_eq!(version, "2.0.0"),
        other => panic!("expected the halt, got {other:?}"),
    }
    roll_back_and_release(&b).await;
    assert_eq!(failures(&client).await, ["web-1", "web-2"]);
    // Lifting the halt does not lift the budget: 2.0.0 takes no more slots. Nothing but a new
    // version lifts it, so a swap is refused as on a halt (it gives its grant back) instead of
    // waiting busy for good, whether it asks once or waits in the group's queue.
    store::resume(&mut client, GROUP).await.expect("resume");
    let once = c.seams.slots.acquire("2.0.0").await.expect("acquire");
    let in_line = c
        .seams
        .slots
        .acquire_in_line("2.0.0", false, true, false)
        .await;
    for answer in [once, in_line.expect("acquire in line")] {
        match answer {
            Acquisition::Halted { version, reason } => {
                assert_eq!(version, "2.0.0");
                assert!(
                    reason.contains("2 instances failed on this version (max_failures 2)"),
                    "{reason}"
                );
            }
            other => panic!("expected the budget's refusal, got {other:?}"),
        }
    }
    // A swap taking back the slot it held (recovery rolling back from 2.0.0) is not judged by
    // the gate again: the spent budget of the very version it leaves does not hold it.
    let again = c
        .seams
        .slots
        .acquire_in_line("2.0.0", false, false, false)
        .await;
    assert_eq!(again.expect("taken again"), Acquisition::Acquired);
    c.seams.slots.release().await.expect("release");
}

#[tokio::test]
async fn with_max_failures_1_the_halt_step_halts_at_once_and_writes_no_count_first() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let a = instance(&client, "web-1", 1);
    let acquired = a.seams.slots.acquire("2.0.0").await.expect("acquire");
    assert_eq!(acquired, Acquisition::Acquired);
    assert_eq!(halt_step(&a).await, SwapObservation::GroupHalted(Ok(())));
    let halted = marker(&client).await.expect("halted");
    assert_eq!(halted.reason, REASON, "the failure's own reason, as before");
    assert!(
        failures(&client).await.is_empty(),
        "nothing counted before the halt"
    );
    roll_back_and_release(&a).await;
    assert_eq!(
        failures(&client).await,
        ["web-1"],
        "recorded at the release"
    );
}
