//! The swap of the bound unit to a new version, as a pure sub-machine of the agent
//! ([`super::state::Phase::Updating`]): `step(phase, observation) -> (phase, actions)`, no I/O.
//!
//! It owns the order of the swap (diagram and errorcodes in `docs/swap.md`): 13/1, pre-pull,
//! 14/1, slot, 800/1, deregister, drain, fence, drop-in, restart, verify, register (confirmed by
//! etcd), min-healthy (registered, slot kept: active, healthy and unrestarted for
//! `rollout.min_healthy`), 3/1, release;
//! and on failure: halt the group first (when the version is to blame), fence, restore the
//! previous drop-in, restart, verify the old version, register, 3/0, denylist the version,
//! release. Slow actions are futures in the driver whose results come back as
//! [`SwapObservation`]s.
//!
//! The halt is durable: owed from the moment a failure that blames the version (or a strand) is
//! known, journaled with the phase ([`GroupHalt`]), re-sent by recovery and on the way out, and
//! retried until the backend confirms it; the slot is not released before. No unit restart
//! without a held slot checked right before it: the rollback fences as the forward restart does,
//! and a slot found lost there is taken again ([`Stage::Reacquiring`]) before the unit is touched.
//!
//! Every grant ends in exactly one terminal 3/x: the update service holds a granted instance
//! (`error-updateInProgressOnInstance`) until it gets one. An attempt given up for a reason that is
//! not the version's fault reports 3/0 with its own errorcode and neither halts nor denylists:
//! a lost fence ([`error_code::SLOT_LOST`]), SIGTERM while nothing was changed yet
//! ([`error_code::INTERRUPTED`]), an operator's action ([`error_code::OPERATOR_ACTION`]).
//!
//! SIGTERM mid-swap: until the drop-in is written nothing was changed, so the attempt is dropped
//! (slot released, 3/0, journal cleared). From the drop-in write until the release the sidekick
//! stops at once: a rollback does not fit in the stop budget, so the journal and the slot stay,
//! and the next start's [`super::recover::recover`] finishes or rolls back. An owed halt goes out
//! first whatever the stage, and stays journaled until confirmed.
//!
//! Operator actions: the sidekick never starts a unit an operator stopped. The unit leaving
//! `active` before the drop-in is written gives the attempt up; stopped while the drop-in is
//! written, or while the new version is verified (`inactive`), or a restart job of ours
//! `canceled` by another job, the previous drop-in is put back with no restart
//! ([`Stage::StandingDown`]). A unit that *fails* is still the version's failure.
//!
//! Min-healthy ([`Stage::MinHealthy`]): the verified new version serves again but keeps its slot
//! until `rollout.min_healthy` has passed with the unit `active`, no restart (a departure from
//! `active`, seen or not: with `Restart=always` a crashing unit reads `failed` for an instant
//! at most, and a grown `NRestarts` counts as a departure) and no `fall` failed checks in a row. A failure there is
//! the version's ([`error_code::MIN_HEALTHY_FAILED`]): the halt first (owed and journaled), the
//! deregistration at once, then the rollback as after a failed verification, slot still held.
//! `inactive` there is an operator's stop, as during verification: deregistered, the previous
//! drop-in put back with no restart.
//!
//! Monitor ([`Stage::Monitoring`], only when `rollout.monitor` is above zero; with `0s` the swap
//! ends at its release as it always did): after 3/1 and the release the swap stays journaled
//! and watches the unit as min-healthy does, holding no slot. A failure there still counts
//! against the version ([`error_code::MONITOR_FAILED`], [`HaltCause::Monitor`]): the halt first
//! (owed and journaled), the deregistration at once, then the rollback taking a slot again like
//! any swap (through the halt on the version it leaves: `away`), restore, restart, verify,
//! register, denylist, release. Nothing more goes to the update service: it has its 3/1 for the
//! grant; the errorcode is recorded in the journal and the version's rollout state.

use crate::omaha::{Event, error_code};
use crate::systemd::ActiveState;
use crate::systemd::control::{DropIn, PreviousDropIn};

mod messages;
mod rollback;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_budget;
#[cfg(test)]
mod tests_halt;
#[cfg(test)]
mod tests_min_healthy;
#[cfg(test)]
mod tests_monitor;
#[cfg(test)]
mod tests_operator;

pub use messages::{HaltCause, SlotAnswer, SwapAction, SwapObservation};
pub(super) use rollback::reacquire;
pub(super) use rollback::stopped_while_down;
use rollback::{fail, restore, resume_unit, strand};

/// What a swap moves from and to, fixed when it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwapPlan {
    /// The version and image the unit runs now, read from systemd.
    pub old: DropIn,
    /// The validated offer's version and image.
    pub new: DropIn,
    /// Health passes in a row that make a started unit verified; 0 when no check is configured
    /// (the unit being active is enough).
    pub rise: u32,
}

/// Why the swap gave up on the new version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// The 3/0 `errorcode` (see [`error_code`]).
    pub code: u32,
    /// For the halt marker and the log.
    pub reason: String,
    /// Whether the version is to blame: halt the group and denylist it once rolled back.
    pub halt: bool,
}

/// The group's halt a failed swap owes: journaled with the phase, so that neither a stop nor a
/// failed call loses it (a halt is idempotent: re-sending it is always safe).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum GroupHalt {
    /// Nothing failed that halts the group.
    #[default]
    NotNeeded,
    /// Known to be needed, not yet confirmed by the slot backend: sent first, retried, and the
    /// slot is not released until it is confirmed. A version's failure (`cause`) is counted
    /// against `rollout.max_failures` first and halts the group only when that spends it.
    Owed {
        reason: String,
        /// Absent in journals from before the failure budget: an immediate halt, as then.
        #[serde(default)]
        cause: HaltCause,
    },
    /// The backend confirmed the halt marker.
    Confirmed,
    /// The version's failure budget counted this instance's failure and is not spent: the group
    /// is not halted. A strand still owes a halt after it.
    Counted,
}

/// The terminal 3/x event of a swap, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Report {
    /// 3/1.
    Complete,
    /// 3/0 with this errorcode.
    Failed { error_code: u32 },
}

impl Report {
    /// The event sent for it.
    pub fn event(self) -> Event {
        match self {
            Report::Complete => Event::UpdateComplete,
            Report::Failed { error_code } => Event::Failed { error_code },
        }
    }
}

/// Where the swap is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Stage {
    /// 13/1 sent; the pre-pull runs as a transient unit.
    Prepulling,
    /// 14/1 sent; waiting for a slot while registered and serving. `waiting` says why the last
    /// attempt did not get one.
    AcquiringSlot { waiting: Option<String> },
    /// Slot held, 800/1 sent; waiting for etcd to confirm the registration is gone.
    Deregistering,
    /// Waiting `swap.drain` for the load balancer to stop routing here.
    Draining,
    /// Checking the slot is still ours before touching the unit.
    Fencing,
    /// Writing the drop-in with the new version.
    WritingDropIn,
    /// `Reload()` and `RestartUnit` onto the new version.
    Restarting,
    /// Waiting for the unit to be active and pass `rise` checks within `swap.verify_timeout`.
    Verifying { passes: u32 },
    /// Rolling back: the halt first when owed, then the fence, then restoring the previous
    /// drop-in and restarting onto the old version.
    RollingBack { failure: Failure },
    /// Waiting for the old version to be active and healthy again.
    VerifyingOld { failure: Failure, passes: u32 },
    /// Registered again on the verified new version, slot kept: it must stay `active`, pass its
    /// checks and not restart for `rollout.min_healthy` before 3/1 and the release. `departed`:
    /// the unit left `active` (seen or not) and its next state decides whether it was stopped
    /// (`inactive`: an operator) or crashed or restarted (the version's failure).
    MinHealthy {
        #[serde(default)]
        departed: bool,
    },
    /// Verified (the new version, or the old one after a rollback when `failure` is set):
    /// registering again, waiting for etcd to confirm before the events and the release, so the
    /// next instance never leaves rotation while this one is not back.
    Registering { failure: Option<Failure> },
    /// Registered again (on the new or the old version), events sent; giving the slot back.
    Releasing,
    /// Released after 3/1, with `rollout.monitor` above zero: registered, no slot, watched as in
    /// min-healthy until `rollout.monitor` has passed; a failure rolls back ([`SwapPhase::away`]).
    Monitoring {
        #[serde(default)]
        departed: bool,
    },
    /// An operator stopped (or restarted) the unit after the drop-in was written: putting the
    /// previous drop-in back, with no restart; then 3/0 and the release. `failure.halt` is false.
    StandingDown { failure: Failure },
    /// The old version could not be brought back: deregistered, slot kept, the group held.
    Stranded { failure: Failure, why: String },
    /// Resumed after a stop (or the rollback's fence found the slot gone): taking the slot
    /// again (idempotent for our own key) before `resume` touches the unit, deregistered, and
    /// waiting while the group is busy or halted. `waiting` says why the last attempt failed.
    Reacquiring {
        resume: Box<Stage>,
        waiting: Option<String>,
    },
    /// Nothing left to do: the agent is back to serving.
    Finished,
}

impl Stage {
    /// The step this stage is timed and recorded as (the `step` label of
    /// `sidekick_swap_step_seconds`, the steps of a rollout's history); `None` for stages that
    /// are not steps.
    pub fn step_label(&self) -> Option<&'static str> {
        Some(match self {
            Self::Prepulling => "prepull",
            Self::AcquiringSlot { .. } => "slot",
            Self::Deregistering => "deregister",
            Self::Draining => "drain",
            Self::Fencing => "fence",
            Self::WritingDropIn => "dropin",
            Self::Restarting => "restart",
            Self::Verifying { .. } => "verify",
            Self::RollingBack { .. } => "rollback",
            Self::VerifyingOld { .. } => "verify-old",
            Self::StandingDown { .. } => "stand-down",
            Self::Registering { .. } => "register",
            Self::MinHealthy { .. } => "min_healthy",
            Self::Releasing => "release",
            Self::Monitoring { .. } => "monitor",
            Self::Reacquiring { .. } => "reacquire",
            Self::Stranded { .. } | Self::Finished => return None,
        })
    }
}

/// The swap's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwapPhase {
    pub plan: SwapPlan,
    pub stage: Stage,
    /// What the drop-in write replaced, once known; a rollback restores it.
    pub previous: Option<PreviousDropIn>,
    /// Whether this swap holds (or may hold) a slot it must give back.
    pub slot_held: bool,
    /// The unit's last seen state was `active`.
    pub unit_active: bool,
    /// The group's halt this swap owes or has confirmed.
    #[serde(default)]
    pub halt: GroupHalt,
    /// The terminal 3/x decided once registered again, kept until the journal is cleared so that
    /// a start that finds the swap Releasing sends it again (it may have been cut off).
    #[serde(default)]
    pub report: Option<Report>,
    /// The unit's last seen state was `inactive`: stopped, by an operator unless a restart job of
    /// ours is running.
    #[serde(default)]
    pub unit_stopped: bool,
    /// The release after 3/1 enters [`Stage::Monitoring`] (`rollout.monitor` above zero, told
    /// with [`SwapObservation::MinHealthyElapsed`]).
    #[serde(default)]
    pub monitor: bool,
    /// Rolling back after a failure inside monitor: the version released its slot with 3/1, so
    /// the rollback takes one again through the halt on the version it leaves, and nothing more
    /// is sent to the update service (it has its 3/1).
    #[serde(default)]
    pub away: bool,
    /// The version is to be denylisted (journaled with the denylist action, so a start that
    /// finds the swap Releasing writes it again: a kill between the two lost it in the first
    /// attempt at monitor, its sim seed 3101).
    #[serde(default)]
    pub denylist: bool,
}

/// Starts a swap for a validated offer: 13/1 and the pre-pull.
pub fn start(plan: SwapPlan) -> (SwapPhase, Vec<SwapAction>) {
    let image = plan.new.image.clone();
    let phase = SwapPhase {
        plan,
        stage: Stage::Prepulling,
        previous: None,
        slot_held: false,
        unit_active: true,
        halt: GroupHalt::NotNeeded,
        report: None,
        unit_stopped: false,
        monitor: false,
        away: false,
        denylist: false,
    };
    let actions = vec![
        SwapAction::SendEvent(Event::PrepullStarted),
        SwapAction::Prepull { image },
    ];
    (phase, actions)
}

impl SwapPhase {
    /// Whether the instance may be registered: before it is deregistered for the swap and after
    /// it is registered again.
    pub fn allows_registration(&self) -> bool {
        matches!(
            self.stage,
            Stage::Prepulling
                | Stage::AcquiringSlot { .. }
                | Stage::Registering { .. }
                | Stage::MinHealthy { .. }
                | Stage::Releasing
                | Stage::Monitoring { .. }
                | Stage::Finished
        )
    }

    /// One line for sd_notify STATUS and logs.
    pub fn status(&self) -> String {
        let to = &self.plan.new.version;
        match &self.stage {
            Stage::Prepulling => format!("updating to {to}: pre-pulling {}", self.plan.new.image),
            Stage::AcquiringSlot { waiting: None } => format!("updating to {to}: taking a slot"),
            Stage::AcquiringSlot { waiting: Some(why) } => {
                format!("updating to {to}: waiting for a slot ({why})")
            }
            Stage::Deregistering => format!("updating to {to}: deregistering"),
            Stage::Draining => format!("updating to {to}: draining"),
            Stage::Fencing => format!("updating to {to}: checking the slot is still held"),
            Stage::WritingDropIn => format!("updating to {to}: writing the drop-in"),
            Stage::Restarting => format!("updating to {to}: restarting the unit"),
            Stage::Verifying { passes } => {
                format!(
                    "updating to {to}: verifying, health {passes}/{}",
                    self.plan.rise
                )
            }
            Stage::RollingBack { failure } => format!(
                "rolling back {to} to {}: {}",
                self.plan.old.version, failure.reason
            ),
            Stage::VerifyingOld { passes, .. } => format!(
                "rolling back {to} to {}: verifying, health {passes}/{}",
                self.plan.old.version, self.plan.rise
            ),
            Stage::Registering { failure: None } => {
                format!("updating to {to}: verified, registering again")
            }
            Stage::Registering { failure: Some(_) } => format!(
                "update to {to} rolled back: {} verified, registering again",
                self.plan.old.version
            ),
            Stage::StandingDown { failure } => format!(
                "update to {to} given up: {}; putting the {} drop-in back, not restarting",
                failure.reason, self.plan.old.version
            ),
            Stage::MinHealthy { .. } => format!(
                "updating to {to}: registered, min-healthy (keeping the slot until it has stayed \
                 active and healthy for rollout.min_healthy)"
            ),
            Stage::Releasing if self.away => {
                format!("update to {to} rolled back after failing in monitor: releasing the slot")
            }
            Stage::Releasing => format!("update to {to} over: releasing the slot"),
            Stage::Monitoring { .. } => format!(
                "updated to {to}: monitor (slot released; a failure within rollout.monitor still \
                 rolls it back)"
            ),
            Stage::Stranded { failure, why } => format!(
                "ROLLBACK FAILED: {to} failed ({}) and {} could not be brought back ({why}); \
                 staying deregistered and keeping the slot so the group stays held: \
                 fix the unit, then restart sidekick",
                failure.reason, self.plan.old.version
            ),
            Stage::Reacquiring { waiting: None, .. } => {
                format!("resuming the update to {to}: taking the slot again")
            }
            Stage::Reacquiring {
                waiting: Some(why), ..
            } => format!(
                "resuming the update to {to}: deregistered, waiting for the slot again ({why})"
            ),
            Stage::Finished => format!("update to {to} over"),
        }
    }

    /// The event for the update service, unless this is a rollback after monitor: the service
    /// has its 3/1 for the grant, and nothing more is sent for it.
    pub fn tell(&self, event: Event) -> Option<SwapAction> {
        (!self.away).then_some(SwapAction::SendEvent(event))
    }

    /// Whether the version is watched after this swap's release: it passed (3/1) and
    /// `rollout.monitor` is above zero.
    fn watches(&self) -> bool {
        self.monitor && self.report == Some(Report::Complete) && !self.away
    }

    /// The halt action when one is owed (after a pause when `retry`).
    pub fn halt_action(&self, retry: bool) -> Option<SwapAction> {
        match &self.halt {
            GroupHalt::Owed { reason, cause } => Some(SwapAction::Halt {
                version: self.plan.new.version.clone(),
                reason: reason.clone(),
                retry,
                cause: *cause,
            }),
            _ => None,
        }
    }

    /// Records that the group's halt is needed for `cause`, unless it is done already: the
    /// backend confirmed the halt, or (for a version's failure) counted the failure. An owed
    /// immediate halt stays immediate.
    fn owe_halt(&mut self, reason: &str, cause: HaltCause) {
        let cause = match (&self.halt, cause) {
            (GroupHalt::Confirmed, _) => return,
            (GroupHalt::Counted, cause) if cause != HaltCause::Immediate => return,
            (GroupHalt::Owed { cause: owed, .. }, _) if *owed == HaltCause::Immediate => *owed,
            (_, cause) => cause,
        };
        self.halt = GroupHalt::Owed {
            reason: reason.to_string(),
            cause,
        };
    }
}

/// The next phase and the actions that take the world there.
pub fn step(mut phase: SwapPhase, observation: SwapObservation) -> (SwapPhase, Vec<SwapAction>) {
    use SwapObservation as O;
    let (observation, answered_by_budget) = counted(&mut phase, observation);
    match &observation {
        O::Unit(state) => {
            phase.unit_active = state.is_active();
            phase.unit_stopped = *state == ActiveState::Inactive;
        }
        O::LeftActive => phase.unit_active = false,
        O::GroupHalted(Ok(())) if !answered_by_budget => phase.halt = GroupHalt::Confirmed,
        _ => {}
    }
    let stage = std::mem::replace(&mut phase.stage, Stage::Finished);
    let (stage, actions) = match (stage, observation) {
        (stage, O::Shutdown) => return shutdown(phase, stage),
        // The journal fails closed: an attempt it cannot record before the deregistration is
        // dropped (release what may be held, stay registered). The grant the offer took still
        // ends in a 3/x (Nebraska keeps it open until one comes): 3/0 generic.
        (
            Stage::Prepulling | Stage::AcquiringSlot { .. } | Stage::Deregistering,
            O::JournalFailed,
        ) => {
            let mut actions = match phase.slot_held {
                true => vec![SwapAction::ReleaseSlot { retry: false }],
                false => Vec::new(),
            };
            actions.push(SwapAction::SendEvent(Event::Failed {
                error_code: error_code::GENERIC,
            }));
            actions.push(SwapAction::ClearJournal);
            phase.slot_held = false;
            (Stage::Finished, actions)
        }
        // The unit left `active` before anything was changed: an operator's stop or restart (or a
        // crash of the old version). No restart: give the attempt up, serve again if wanted.
        (stage, observation) if untouched(&stage) && departed(&observation) => {
            given_up(&mut phase, error_code::OPERATOR_ACTION, Vec::new())
        }
        (Stage::Prepulling, O::Prepulled(Ok(()))) => {
            phase.slot_held = true;
            let version = phase.plan.new.version.clone();
            let actions = vec![
                SwapAction::SendEvent(Event::PrepullFinished),
                SwapAction::AcquireSlot {
                    version,
                    retry: false,
                    again: false,
                    away: false,
                },
            ];
            (Stage::AcquiringSlot { waiting: None }, actions)
        }
        (Stage::Prepulling, O::Prepulled(Err(_))) => {
            let event = Event::Failed {
                error_code: error_code::PREPULL_FAILED,
            };
            let actions = vec![SwapAction::SendEvent(event), SwapAction::ClearJournal];
            (Stage::Finished, actions)
        }
        // A halt stops the rollout: the grant is given back untried, so the version a later
        // check offers (after `slots resume`) is the one swapped to, not this stale one.
        (Stage::AcquiringSlot { .. }, O::Slot(SlotAnswer::Halted { .. })) => {
            // A holder is answered Acquired even when halted since: this answer means none held.
            phase.slot_held = false;
            let event = Event::Failed {
                error_code: error_code::ROLLOUT_HALTED,
            };
            let actions = vec![SwapAction::SendEvent(event), SwapAction::ClearJournal];
            (Stage::Finished, actions)
        }
        (Stage::AcquiringSlot { .. }, O::Slot(answer)) => match waiting_reason(answer) {
            None => {
                let actions = vec![
                    SwapAction::SendEvent(Event::SwapStarted),
                    SwapAction::Deregister,
                ];
                (Stage::Deregistering, actions)
            }
            Some(waiting) => {
                let version = phase.plan.new.version.clone();
                let actions = vec![SwapAction::AcquireSlot {
                    version,
                    retry: true,
                    again: false,
                    away: false,
                }];
                let stage = Stage::AcquiringSlot {
                    waiting: Some(waiting),
                };
                (stage, actions)
            }
        },
        (Stage::Deregistering, O::Deregistered) => (Stage::Draining, vec![SwapAction::Drain]),
        (Stage::Draining, O::DrainElapsed) => (Stage::Fencing, vec![SwapAction::CheckSlot]),
        (Stage::Fencing, O::Fenced { held: true }) => {
            let dropin = SwapAction::WriteDropIn(phase.plan.new.clone());
            (Stage::WritingDropIn, vec![dropin])
        }
        (Stage::Fencing, O::Fenced { held: false }) => {
            // The slot may be someone else's now: no restart. Serve again, drop the attempt.
            given_up(
                &mut phase,
                error_code::SLOT_LOST,
                vec![SwapAction::Register],
            )
        }
        // Stopped while the drop-in was written: put it back, do not start the unit.
        (Stage::WritingDropIn, O::DropInWritten(Ok(previous))) if !phase.unit_active => {
            phase.previous = Some(previous);
            stand_down(&phase, "the unit was stopped before the restart")
        }
        (Stage::WritingDropIn, O::DropInWritten(Err(_))) if !phase.unit_active => {
            given_up(&mut phase, error_code::OPERATOR_ACTION, Vec::new())
        }
        (Stage::WritingDropIn, O::DropInWritten(Ok(previous))) => {
            phase.previous = Some(previous);
            phase.unit_active = false;
            (Stage::Restarting, vec![SwapAction::Restart])
        }
        (Stage::WritingDropIn, O::DropInWritten(Err(error))) => {
            // The atomic write left the old drop-in in place: nothing to roll back, and the
            // version is not to blame, so no halt and no denylist.
            let failure = Failure {
                code: error_code::SWAP_FAILED,
                reason: format!("writing the drop-in failed: {error}"),
                halt: false,
            };
            let stage = Stage::Registering {
                failure: Some(failure),
            };
            (stage, vec![SwapAction::Register])
        }
        (Stage::Restarting, O::Restarted(Ok(()))) => {
            let stage = Stage::Verifying { passes: 0 };
            let (stage, mut actions) = verified(&phase, stage);
            actions.insert(0, SwapAction::StartVerifyDeadline);
            (stage, actions)
        }
        (Stage::Restarting, O::RestartCanceled) => {
            stand_down(&phase, "the restart job was canceled by another job")
        }
        (Stage::Restarting, O::Restarted(Err(error))) => {
            let failure = Failure {
                code: error_code::SWAP_FAILED,
                reason: format!("restart onto {} failed: {error}", phase.plan.new.version),
                halt: true,
            };
            fail(&mut phase, failure)
        }
        (Stage::Verifying { passes }, observation) => match observation {
            // systemd sends the unit's state before the restart job's end and the loop reads the
            // unit first, so `inactive` seen here is a stop after our restart finished.
            O::Unit(ActiveState::Inactive) => {
                stand_down(&phase, "the unit was stopped while it was verified")
            }
            // A stop seen while our restart job ran, after it was done.
            O::VerifyDeadline if phase.unit_stopped => {
                stand_down(&phase, "the unit was stopped while it was verified")
            }
            O::VerifyDeadline => {
                let failure = Failure {
                    code: error_code::UNHEALTHY_AFTER_SWAP,
                    reason: format!(
                        "{} not healthy within the verify timeout",
                        phase.plan.new.version
                    ),
                    halt: true,
                };
                fail(&mut phase, failure)
            }
            O::Unit(ActiveState::Failed) => {
                let failure = Failure {
                    code: error_code::UNHEALTHY_AFTER_SWAP,
                    reason: format!("the unit failed on {}", phase.plan.new.version),
                    halt: true,
                };
                fail(&mut phase, failure)
            }
            other => {
                let passes = count(&phase, passes, &other);
                verified(&phase, Stage::Verifying { passes })
            }
        },
        // The halt answered (confirmed or not: a failed one is retried before the release, the
        // rollback does not wait for a backend that may stay down): fence, then restore.
        (Stage::RollingBack { failure }, O::GroupHalted(_)) => {
            (Stage::RollingBack { failure }, vec![SwapAction::CheckSlot])
        }
        (Stage::RollingBack { failure }, O::Fenced { held: true }) => {
            (Stage::RollingBack { failure }, vec![restore(&mut phase)])
        }
        // The slot went after the forward fence: no restart until it is ours again.
        (Stage::RollingBack { failure }, O::Fenced { held: false }) => {
            let resume = Stage::RollingBack { failure };
            let (stage, mut actions) = reacquire(&mut phase, resume);
            actions.insert(0, SwapAction::NoteSlotLost);
            (stage, actions)
        }
        (Stage::Reacquiring { resume, .. }, O::GroupHalted(_)) => {
            let stage = Stage::Reacquiring {
                resume,
                waiting: None,
            };
            (stage, vec![phase.acquire(false)])
        }
        (Stage::Reacquiring { resume, .. }, O::Slot(answer)) => {
            match waiting_reason(answer.clone()) {
                // The group halted on the very version a recovered swap was moving to: it goes no
                // further toward it (no restart onto it, no verification), it rolls back once the
                // slot is ours again; the halt's owner blamed the version, not this instance.
                Some(waiting)
                    if halted_on(&answer, &phase.plan.new.version) && forward(&resume) =>
                {
                    let failure = Failure {
                        code: error_code::ROLLOUT_HALTED,
                        reason: format!("the group halted on {}", phase.plan.new.version),
                        halt: false,
                    };
                    let resume = Box::new(Stage::RollingBack { failure });
                    let stage = Stage::Reacquiring {
                        resume,
                        waiting: Some(waiting),
                    };
                    (stage, vec![phase.acquire(true)])
                }
                None => {
                    phase.slot_held = true;
                    // Found stopped (`inactive`; no job of ours is queued while the slot is
                    // taken again), right before the restart: an operator's stop, not started
                    // again.
                    if let (true, Stage::RollingBack { .. } | Stage::Restarting) =
                        (phase.unit_stopped, resume.as_ref())
                    {
                        let recorded = match *resume {
                            Stage::RollingBack { failure } => Some(failure),
                            _ => None,
                        };
                        let why = "the unit was stopped while the slot was taken again";
                        return stopped_while_down(phase, recorded, why);
                    }
                    resume_unit(&mut phase, *resume)
                }
                Some(waiting) => {
                    let stage = Stage::Reacquiring {
                        resume,
                        waiting: Some(waiting),
                    };
                    (stage, vec![phase.acquire(true)])
                }
            }
        }
        (Stage::RollingBack { failure }, O::Restarted(Ok(()))) => {
            let stage = Stage::VerifyingOld { failure, passes: 0 };
            let (stage, mut actions) = verified(&phase, stage);
            actions.insert(0, SwapAction::StartVerifyDeadline);
            (stage, actions)
        }
        (Stage::RollingBack { failure }, O::Restarted(Err(error))) => strand(
            &mut phase,
            failure,
            format!("restart onto the old version failed: {error}"),
        ),
        (Stage::VerifyingOld { failure, passes }, observation) => match observation {
            O::VerifyDeadline => strand(
                &mut phase,
                failure,
                "not healthy within the verify timeout".into(),
            ),
            O::Unit(ActiveState::Failed) => strand(&mut phase, failure, "the unit failed".into()),
            other => {
                let passes = count(&phase, passes, &other);
                verified(&phase, Stage::VerifyingOld { failure, passes })
            }
        },
        (Stage::StandingDown { failure }, O::DropInRestored(_)) => {
            // A failed restore is logged by the step; the unit stays stopped either way.
            given_up(&mut phase, failure.code, Vec::new())
        }
        // The new version serves again; it keeps the slot through min-healthy.
        (Stage::Registering { failure: None }, O::Registered) => (
            Stage::MinHealthy { departed: false },
            vec![SwapAction::StartMinHealthy],
        ),
        // Verified, but it leaves `active` (or fails its checks) before etcd confirmed the
        // registration: the registration never comes (the unit must be active for it), so it is
        // judged as in min-healthy, which this is the start of (sim seed 2393: the swap waited
        // here for good, holding its slot).
        (Stage::Registering { failure: None }, observation)
            if departed(&observation) || observation == O::Unhealthy =>
        {
            min_healthy(&mut phase, false, observation)
        }
        (Stage::Registering { failure }, O::Registered) => registered(&mut phase, failure),
        (Stage::MinHealthy { departed }, observation) => {
            min_healthy(&mut phase, departed, observation)
        }
        // Inside monitor already (released after 3/1 once this release is done): the unit
        // failing (or any state off `active` but an operator's `inactive`) halts the group now,
        // first; the release waits for it, the rollback follows it.
        (Stage::Releasing, O::Unit(state))
            if phase.watches()
                && phase.halt == GroupHalt::NotNeeded
                && !state.is_active()
                && !matches!(state, ActiveState::Unknown | ActiveState::Inactive) =>
        {
            let reason = format!(
                "{} failed during monitor: the unit left active during the release",
                phase.plan.new.version
            );
            phase.owe_halt(&reason, HaltCause::Monitor);
            (
                Stage::Releasing,
                phase.halt_action(false).into_iter().collect(),
            )
        }
        // The release waits for the halt: confirmed now, or tried again.
        (Stage::Releasing, O::GroupHalted(Ok(()))) => {
            (Stage::Releasing, vec![SwapAction::CheckSlot])
        }
        // Was the slot held through the restart and verification? A loss since the fence (the
        // lease lapsed, the key went) is logged and counted; the release deletes only our own
        // key (compared on value and lease), so another holder's stays either way.
        // A halt owed since the check went out (a failure inside monitor during the release):
        // it goes first, and the release waits for its answer.
        (Stage::Releasing, O::Fenced { .. }) if phase.halt_action(false).is_some() => {
            let actions = phase.halt_action(false).into_iter().collect();
            (Stage::Releasing, actions)
        }
        (Stage::Releasing, O::Fenced { held }) => {
            let mut actions = Vec::new();
            if !held {
                actions.push(SwapAction::NoteSlotLost);
            }
            actions.push(SwapAction::ReleaseSlot { retry: false });
            (Stage::Releasing, actions)
        }
        (stage @ (Stage::Releasing | Stage::Stranded { .. }), O::GroupHalted(Err(_))) => {
            let actions = phase.halt_action(true).into_iter().collect();
            (stage, actions)
        }
        (Stage::Releasing, O::SlotReleased(Ok(()))) => {
            phase.slot_held = false;
            // Only a version that passed is watched on; `monitor` unset (`0s`): over, as always.
            match phase.watches() {
                // It left `active` while the release went on (sim seed 3: the 3/1 took 28 s):
                // a failure inside monitor, its halt made before the release.
                // An operator's stop (`inactive`) ends the watch, as inside monitor.
                true if phase.unit_stopped && phase.halt == GroupHalt::NotNeeded => {
                    (Stage::Finished, vec![SwapAction::ClearJournal])
                }
                true if !phase.unit_active || phase.halt != GroupHalt::NotNeeded => {
                    monitor_failed(&mut phase, "the unit left active during the release")
                }
                true => (
                    Stage::Monitoring { departed: false },
                    vec![SwapAction::StartMonitor],
                ),
                false => (Stage::Finished, vec![SwapAction::ClearJournal]),
            }
        }
        (Stage::Monitoring { departed }, observation) => {
            monitoring(&mut phase, departed, observation)
        }
        (Stage::Releasing, O::SlotReleased(Err(_))) => {
            let actions = vec![SwapAction::ReleaseSlot { retry: true }];
            (Stage::Releasing, actions)
        }
        // Anything else (a late answer, a unit change while the unit is being restarted on
        // purpose, a probe outside verification) changes nothing.
        (stage, _) => (stage, Vec::new()),
    };
    phase.stage = stage;
    (phase, actions)
}

/// Min-healthy: passed when its clock runs out; the unit leaving `active` (a restart whose states
/// were not seen included), failing, or the checks failing `fall` times in a row is the version's
/// failure; `inactive` is an operator's stop.
fn min_healthy(
    phase: &mut SwapPhase,
    departed: bool,
    observation: SwapObservation,
) -> (Stage, Vec<SwapAction>) {
    use SwapObservation as O;
    let why = match observation {
        O::MinHealthyElapsed { monitor } => {
            phase.monitor = monitor;
            return registered(phase, None);
        }
        O::Unit(ActiveState::Inactive) => {
            let (stage, mut actions) = stand_down(phase, "the unit was stopped during min-healthy");
            actions.insert(0, SwapAction::Deregister);
            return (stage, actions);
        }
        O::LeftActive => return (Stage::MinHealthy { departed: true }, Vec::new()),
        O::Unit(ActiveState::Active) if departed => "the unit restarted".to_string(),
        O::Unit(ActiveState::Failed) => "the unit failed".to_string(),
        O::Unit(state) if !state.is_active() && state != ActiveState::Unknown => {
            format!("the unit left active ({state})")
        }
        O::Unhealthy => "the health check failed `fall` times in a row".to_string(),
        _ => return (Stage::MinHealthy { departed }, Vec::new()),
    };
    let failure = Failure {
        code: error_code::MIN_HEALTHY_FAILED,
        reason: format!(
            "{} failed during min-healthy: {why}",
            phase.plan.new.version
        ),
        halt: true,
    };
    let (stage, mut actions) = fail(phase, failure);
    // Out of rotation at once; the halt stays the first action (journaled before either runs).
    actions.push(SwapAction::Deregister);
    (stage, actions)
}

/// Monitor: over when its clock runs out; a failure as in min-healthy is still the version's
/// ([`error_code::MONITOR_FAILED`]): the halt first (owed and journaled), out of rotation at once,
/// then the slot again (`away`: through the halt on the version it leaves) before the rollback
/// touches the unit. `inactive` is an operator's stop: the watch ends, nothing is rolled back.
fn monitoring(
    phase: &mut SwapPhase,
    departed: bool,
    observation: SwapObservation,
) -> (Stage, Vec<SwapAction>) {
    use SwapObservation as O;
    let why = match observation {
        O::MonitorElapsed | O::Unit(ActiveState::Inactive) => {
            return (Stage::Finished, vec![SwapAction::ClearJournal]);
        }
        O::LeftActive => return (Stage::Monitoring { departed: true }, Vec::new()),
        O::Unit(ActiveState::Active) if departed => "the unit restarted".to_string(),
        O::Unit(ActiveState::Failed) => "the unit failed".to_string(),
        O::Unit(state) if !state.is_active() && state != ActiveState::Unknown => {
            format!("the unit left active ({state})")
        }
        O::Unhealthy => "the health check failed `fall` times in a row".to_string(),
        _ => return (Stage::Monitoring { departed }, Vec::new()),
    };
    monitor_failed(phase, &why)
}

/// A failure inside monitor: the version's, found after its release (see [`monitoring`]).
fn monitor_failed(phase: &mut SwapPhase, why: &str) -> (Stage, Vec<SwapAction>) {
    let failure = Failure {
        code: error_code::MONITOR_FAILED,
        reason: format!("{} failed during monitor: {why}", phase.plan.new.version),
        halt: true,
    };
    phase.away = true;
    phase.unit_active = false;
    phase.owe_halt(&failure.reason, HaltCause::Monitor);
    let (stage, mut actions) = reacquire(phase, Stage::RollingBack { failure });
    // Out of rotation at once; the halt stays the first action (journaled before either runs).
    actions.push(SwapAction::Deregister);
    (stage, actions)
}

/// The failure budget's answer to an owed halt for a version's failure: `Counted`, and from
/// here on as a confirmed halt's answer goes (the rollback's fence, the release); `true` with it.
/// An answer for a halt owed at once since (a strand in between) confirms nothing: tried again.
fn counted(phase: &mut SwapPhase, observation: SwapObservation) -> (SwapObservation, bool) {
    if observation != SwapObservation::FailureCounted {
        return (observation, false);
    }
    let answer = match &phase.halt {
        GroupHalt::Owed { cause, .. } if *cause != HaltCause::Immediate => {
            phase.halt = GroupHalt::Counted;
            Ok(())
        }
        GroupHalt::Owed { .. } => Err("an immediate halt is owed, not a count".to_string()),
        // A late answer: nothing is owed any more.
        _ => Ok(()),
    };
    (SwapObservation::GroupHalted(answer), true)
}

/// Whether the swap has changed nothing on the instance yet (the drop-in not being written).
fn untouched(stage: &Stage) -> bool {
    matches!(
        stage,
        Stage::Prepulling
            | Stage::AcquiringSlot { .. }
            | Stage::Deregistering
            | Stage::Draining
            | Stage::Fencing
    )
}

/// Whether the unit left `active` (an unknown state is no news).
fn departed(observation: &SwapObservation) -> bool {
    match observation {
        SwapObservation::LeftActive => true,
        SwapObservation::Unit(state) => !state.is_active() && *state != ActiveState::Unknown,
        _ => false,
    }
}

/// Gives an attempt up that is not the version's fault: `first`, then the slot back (when one may
/// be held) and 3/0 with `code`, which ends the grant; no halt, no denylist. Registration follows
/// the unit again.
fn given_up(phase: &mut SwapPhase, code: u32, first: Vec<SwapAction>) -> (Stage, Vec<SwapAction>) {
    let mut actions = first;
    if phase.slot_held {
        // Before the event: the group need not wait for the update service.
        actions.push(SwapAction::ReleaseSlot { retry: false });
    }
    phase.slot_held = false;
    actions.extend(phase.tell(Event::Failed { error_code: code }));
    actions.push(SwapAction::ClearJournal);
    (Stage::Finished, actions)
}

/// An operator stopped the unit after the drop-in was written: put the previous one back, no
/// restart.
fn stand_down(phase: &SwapPhase, why: &str) -> (Stage, Vec<SwapAction>) {
    let failure = Failure {
        code: error_code::OPERATOR_ACTION,
        reason: why.to_string(),
        halt: false,
    };
    let action = SwapAction::RestoreDropIn {
        previous: phase.previous.clone(),
        old: phase.plan.old.clone(),
    };
    (Stage::StandingDown { failure }, vec![action])
}

/// Counts a probe while the unit is active; a failed check or a departure starts over.
fn count(phase: &SwapPhase, passes: u32, observation: &SwapObservation) -> u32 {
    match observation {
        SwapObservation::Probe { passed: true } if phase.unit_active => passes + 1,
        SwapObservation::Probe { passed: false } => 0,
        SwapObservation::Unit(_) | SwapObservation::LeftActive if !phase.unit_active => 0,
        _ => passes,
    }
}

/// Whether a slot answer is the group's halt on `version`.
fn halted_on(answer: &SlotAnswer, version: &str) -> bool {
    matches!(answer, SlotAnswer::Halted { version: halted, .. } if halted == version)
}

/// Whether a recovered swap would resume toward its new version (restart onto it, verify it).
fn forward(resume: &Stage) -> bool {
    matches!(resume, Stage::Restarting | Stage::Verifying { .. })
}

/// Why an acquire attempt left the swap waiting; `None` when it got the slot.
fn waiting_reason(answer: SlotAnswer) -> Option<String> {
    match answer {
        SlotAnswer::Acquired => None,
        SlotAnswer::Busy(detail) => Some(format!("busy: {detail}")),
        SlotAnswer::Halted { version, reason } => {
            Some(format!("group halted by {version}: {reason}"))
        }
        SlotAnswer::Failed(error) => Some(format!("slot backend failed: {error}")),
    }
}

/// Moves on from a verifying stage once the unit is active and has passed `rise` checks.
fn verified(phase: &SwapPhase, stage: Stage) -> (Stage, Vec<SwapAction>) {
    let passes = match &stage {
        Stage::Verifying { passes } | Stage::VerifyingOld { passes, .. } => *passes,
        _ => return (stage, Vec::new()),
    };
    if !phase.unit_active || passes < phase.plan.rise {
        return (stage, Vec::new());
    }
    let failure = match stage {
        Stage::VerifyingOld { failure, .. } => Some(failure),
        _ => None,
    };
    (Stage::Registering { failure }, vec![SwapAction::Register])
}

/// etcd confirmed the registration: the halt first if it is still owed, then report the outcome,
/// denylist a failed version, and, once no halt is owed any more, check the slot is still ours
/// before giving it back.
fn registered(phase: &mut SwapPhase, failure: Option<Failure>) -> (Stage, Vec<SwapAction>) {
    let halt = phase.halt_action(false);
    let owed = halt.is_some();
    let mut actions: Vec<SwapAction> = halt.into_iter().collect();
    let report = match &failure {
        Some(failure) => Report::Failed {
            error_code: failure.code,
        },
        None => Report::Complete,
    };
    // Journaled with Releasing before the event goes: recovery sends it again if cut off.
    phase.report = Some(report);
    actions.extend(phase.tell(report.event()));
    if let Some(failure) = failure
        && failure.halt
    {
        let version = phase.plan.new.version.clone();
        phase.denylist = true;
        actions.push(SwapAction::Denylist { version });
    }
    if !owed {
        actions.push(SwapAction::CheckSlot);
    }
    (Stage::Releasing, actions)
}

/// SIGTERM: drop an attempt that has not touched the instance yet (the slot back, 3/0
/// [`error_code::INTERRUPTED`] to end the grant); otherwise stop at once and leave the journal and
/// the slot to the next start. The driver bounds what is sent on the way out by its stop deadline;
/// a 3/0 that does not make it is sent by the next start, which finds the grant with no journal.
/// An owed halt is sent on the way out (and stays journaled until confirmed, so the next start
/// sends it again).
fn shutdown(mut phase: SwapPhase, stage: Stage) -> (SwapPhase, Vec<SwapAction>) {
    if let Some(halt) = phase.halt_action(false) {
        phase.stage = stage;
        return (phase, vec![halt, SwapAction::Stop]);
    }
    let interrupted = untouched(&stage);
    match stage {
        stage if interrupted || matches!(stage, Stage::Releasing | Stage::Finished) => {
            // A release from a stage that holds no slot could only hit another holder's key.
            let mut actions = match phase.slot_held {
                true => vec![SwapAction::ReleaseSlot { retry: false }],
                false => Vec::new(),
            };
            if interrupted {
                actions.push(SwapAction::SendEvent(Event::Failed {
                    error_code: error_code::INTERRUPTED,
                }));
            }
            // The recorded 3/x may still be in flight (or not sent yet): once more on the way
            // out, since the journal that would resend it is cleared.
            if let (Stage::Releasing, Some(report)) = (&stage, phase.report) {
                actions.extend(phase.tell(report.event()));
            }
            actions.extend([SwapAction::ClearJournal, SwapAction::Stop]);
            phase.slot_held = false;
            phase.stage = Stage::Finished;
            (phase, actions)
        }
        other => {
            phase.stage = other;
            (phase, vec![SwapAction::Stop])
        }
    }
}
