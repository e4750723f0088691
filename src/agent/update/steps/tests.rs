//! The restart job's result reaches the machine as systemd ended it: `canceled` (another job
//! replaced ours, an operator's stop or restart) apart from a failure.

use std::num::NonZeroU32;
use std::time::Duration;

use super::*;
use crate::agent::update::fixtures::{memory_source, step_settings, who};
use crate::slot::MemorySlots;
use crate::systemd::control::{ControlCall, MemoryUnitControl, RunningVersion};

fn seams() -> Arc<SwapSeams<MemoryUnitControl>> {
    let slots = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
    Arc::new(SwapSeams {
        source: memory_source(None, false),
        slots: AnySlots::Memory(slots.join(who("web-1"))),
        control: MemoryUnitControl::new(RunningVersion::default()),
    })
}

async fn run(seams: &Arc<SwapSeams<MemoryUnitControl>>, action: SwapAction) -> SwapObservation {
    let settings = step_settings(Vec::new(), Duration::ZERO);
    let step = run_steps(seams.clone(), settings, Version::new(1, 0, 0), vec![action]);
    step.await.expect("the step answers")
}

#[tokio::test]
async fn a_canceled_restart_job_reaches_the_machine_apart_from_a_failed_one() {
    let seams = seams();
    seams.control.cancel_restart(true);
    assert_eq!(
        run(&seams, SwapAction::Restart).await,
        SwapObservation::RestartCanceled
    );
    seams.control.cancel_restart(false);
    seams.control.fail_restart(true);
    assert!(matches!(
        run(&seams, SwapAction::Restart).await,
        SwapObservation::Restarted(Err(_))
    ));
}

#[tokio::test]
async fn restoring_the_dropin_for_an_operator_reloads_and_never_restarts() {
    let seams = seams();
    let old = DropIn {
        image: "example/web:1.0.0".into(),
        version: "1.0.0".into(),
    };
    let answer = run(
        &seams,
        SwapAction::RestoreDropIn {
            previous: Some(PreviousDropIn::Absent),
            old,
        },
    )
    .await;
    assert_eq!(answer, SwapObservation::DropInRestored(Ok(())));
    assert_eq!(
        seams.control.calls(),
        [
            ControlCall::RestoreDropIn(PreviousDropIn::Absent),
            ControlCall::Reload
        ]
    );
}

#[tokio::test]
async fn the_prepull_runs_swap_prepull_with_the_image_and_an_empty_one_runs_nothing() {
    let seams = seams();
    let prepull = vec!["podman".into(), "pull".into(), "{image}".into()];
    let settings = step_settings(prepull, Duration::ZERO);
    let action = SwapAction::Prepull {
        image: "example/web:2.0.0".into(),
    };
    let step = run_steps(seams.clone(), settings, Version::new(1, 0, 0), vec![action]);
    assert_eq!(step.await, Some(SwapObservation::Prepulled(Ok(()))));
    assert_eq!(
        seams.control.calls(),
        [ControlCall::RunTransient(
            vec!["podman".into(), "pull".into(), "example/web:2.0.0".into()],
            // Half an hour: a large image over a slow link.
            Duration::from_secs(1800),
        )]
    );
    let seams = self::seams();
    let action = SwapAction::Prepull {
        image: "example/web:2.0.0".into(),
    };
    assert_eq!(
        run(&seams, action).await,
        SwapObservation::Prepulled(Ok(()))
    );
    assert_eq!(seams.control.calls(), [], "swap.prepull = [] pulls nothing");
}

#[tokio::test]
async fn a_slot_an_earlier_run_left_under_this_holder_id_is_released() {
    let earlier = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
    earlier.acquire("2.0.0").await.unwrap();
    let seams = Arc::new(SwapSeams {
        source: memory_source(None, false),
        slots: AnySlots::Memory(earlier.join(who("web-1"))),
        control: MemoryUnitControl::new(RunningVersion::default()),
    });
    let settings = step_settings(Vec::new(), Duration::ZERO);
    let step = run_steps(
        seams,
        settings,
        Version::new(1, 0, 0),
        vec![SwapAction::ReleaseStaleSlot],
    );
    assert_eq!(step.await, None, "nothing for the machine");
    assert!(earlier.holders().is_empty(), "{:?}", earlier.holders());
}

#[tokio::test]
async fn a_failed_step_reaches_the_machine_with_systemds_error() {
    let seams = seams();
    seams.control.fail_transient(true);
    let settings = step_settings(vec!["podman".into(), "pull".into()], Duration::ZERO);
    let action = SwapAction::Prepull {
        image: "example/web:2.0.0".into(),
    };
    let step = run_steps(seams, settings, Version::new(1, 0, 0), vec![action]);
    let failed = ControlError::JobFailed {
        unit: "memory-transient".into(),
        job: "0".into(),
        result: "failed".into(),
    };
    assert_eq!(
        step.await,
        Some(SwapObservation::Prepulled(Err(failed.to_string())))
    );
}

/// The group's in-memory slots behind `seams`.
fn memory_slots(seams: &SwapSeams<MemoryUnitControl>) -> &MemorySlots {
    match &seams.slots {
        AnySlots::Memory(slots) => slots,
        _ => panic!("the seams hold memory slots"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_release_that_keeps_failing_is_tried_three_times_five_seconds_apart() {
    let seams = seams();
    let slots = memory_slots(&seams);
    slots.fail_stale_releases(u32::MAX);
    let started = tokio::time::Instant::now();
    assert_eq!(
        run_steps(
            seams.clone(),
            step_settings(Vec::new(), Duration::ZERO),
            Version::new(1, 0, 0),
            vec![SwapAction::ReleaseStaleSlot],
        )
        .await,
        None
    );
    assert_eq!(slots.stale_releases(), STALE_RELEASE_ATTEMPTS);
    // A pause between attempts, none after the last.
    assert_eq!(
        started.elapsed(),
        RELEASE_RETRY * (STALE_RELEASE_ATTEMPTS - 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_release_that_fails_once_frees_the_earlier_runs_slot_at_the_second_try() {
    let earlier = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
    assert_eq!(
        earlier.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let later = earlier.join(who("web-1"));
    let seams = Arc::new(SwapSeams {
        source: memory_source(None, false),
        slots: AnySlots::Memory(later.clone()),
        control: MemoryUnitControl::new(RunningVersion::default()),
    });
    later.fail_stale_releases(1);
    let started = tokio::time::Instant::now();
    let step = run_steps(
        seams,
        step_settings(Vec::new(), Duration::ZERO),
        Version::new(1, 0, 0),
        vec![SwapAction::ReleaseStaleSlot],
    );
    assert_eq!(step.await, None);
    assert_eq!(later.stale_releases(), 2);
    assert_eq!(started.elapsed(), RELEASE_RETRY);
    assert!(later.holders().is_empty(), "{:?}", later.holders());
}
