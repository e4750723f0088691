//! Swap phases the machine's tests, the journal's and the driver's share.

use super::swap::{
    Failure, GroupHalt, Stage, SwapAction, SwapObservation, SwapPhase, SwapPlan, step,
};
use crate::omaha::error_code;
use crate::systemd::control::{DropIn, PreviousDropIn};

pub(crate) fn dropin(version: &str) -> DropIn {
    DropIn {
        image: format!("example/web:{version}"),
        version: version.into(),
    }
}

pub(crate) fn failure(halt: bool) -> Failure {
    Failure {
        code: error_code::UNHEALTHY_AFTER_SWAP,
        reason: "2.0.0 not healthy".into(),
        halt,
    }
}

pub(crate) fn at(stage: Stage) -> SwapPhase {
    SwapPhase {
        plan: SwapPlan {
            old: dropin("1.0.0"),
            new: dropin("2.0.0"),
            rise: 2,
        },
        stage,
        previous: Some(PreviousDropIn::Contents(
            "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0\n".into(),
        )),
        slot_held: true,
        unit_active: true,
        halt: GroupHalt::NotNeeded,
        report: None,
        unit_stopped: false,
        monitor: false,
        away: false,
        denylist: false,
    }
}

/// A swap of 1.0.0 to 2.0.0 (rise 1) verified and registering again, holding its slot.
pub(crate) fn registering() -> SwapPhase {
    let mut phase = at(Stage::Registering { failure: None });
    phase.plan.rise = 1;
    phase.previous = Some(PreviousDropIn::Absent);
    phase
}

/// [`registering`] once its registration is confirmed: just into min-healthy.
pub(crate) fn proving() -> SwapPhase {
    let (phase, actions) = step(registering(), SwapObservation::Registered);
    assert_eq!(actions, [SwapAction::StartMinHealthy]);
    assert_eq!(phase.stage, Stage::MinHealthy { departed: false });
    phase
}

/// Feeds `phase` each observation in turn, checking the actions of each step; the phase after.
pub(crate) fn run(mut phase: SwapPhase, steps: &[(SwapObservation, &[SwapAction])]) -> SwapPhase {
    for (i, (observation, expected)) in steps.iter().enumerate() {
        let (next, actions) = step(phase, observation.clone());
        assert_eq!(actions, *expected, "step {i}: {observation:?}");
        phase = next;
    }
    phase
}

/// Every stage the driver journals before a side effect.
pub(crate) fn every_stage() -> Vec<Stage> {
    vec![
        Stage::Prepulling,
        Stage::AcquiringSlot {
            waiting: Some("busy".into()),
        },
        Stage::Deregistering,
        Stage::Draining,
        Stage::Fencing,
        Stage::WritingDropIn,
        Stage::Restarting,
        Stage::Verifying { passes: 1 },
        Stage::RollingBack {
            failure: failure(true),
        },
        Stage::VerifyingOld {
            failure: failure(true),
            passes: 1,
        },
        Stage::Registering { failure: None },
        Stage::MinHealthy { departed: false },
        Stage::MinHealthy { departed: true },
        Stage::Registering {
            failure: Some(failure(true)),
        },
        Stage::Releasing,
        Stage::Monitoring { departed: false },
        Stage::Monitoring { departed: true },
        Stage::Stranded {
            failure: failure(true),
            why: "restart failed".into(),
        },
        Stage::Reacquiring {
            resume: Box::new(Stage::RollingBack {
                failure: failure(true),
            }),
            waiting: Some("busy".into()),
        },
        Stage::Finished,
    ]
}
