//! What goes in and out of the swap machine: the observations the driver feeds it (slow
//! actions' results, the unit and the probe) and the actions it asks for.

use crate::omaha::Event;
use crate::systemd::ActiveState;
use crate::systemd::control::{DropIn, PreviousDropIn};

/// What an owed halt is for, which decides whether `rollout.max_failures` applies to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HaltCause {
    /// Halt the group at once: a strand (the old version could not be brought back), or a journal
    /// written before causes were recorded.
    #[default]
    Immediate,
    /// The new version failed to restart or verify: a failure counted against the version's
    /// budget; the group halts when that spends it.
    Verify,
    /// The new version failed during min-healthy: counted as [`HaltCause::Verify`] is.
    MinHealthy,
    /// The new version failed inside `rollout.monitor`, after its release: counted as
    /// [`HaltCause::Verify`] is.
    Monitor,
}

impl HaltCause {
    /// The stage the version's state records the failure in; `None` for an immediate halt, which
    /// the failure budget does not apply to.
    pub fn budget_stage(self) -> Option<&'static str> {
        match self {
            HaltCause::Immediate => None,
            HaltCause::Verify => Some("verify"),
            HaltCause::MinHealthy => Some("min_healthy"),
            HaltCause::Monitor => Some("monitor"),
        }
    }
}

/// The answer to one slot acquire attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAnswer {
    Acquired,
    /// Every slot taken; wait and try again.
    Busy(String),
    /// The group is halted; wait for `slots resume`.
    Halted {
        version: String,
        reason: String,
    },
    /// The backend could not answer; try again.
    Failed(String),
}

/// Something the swap needs to know: a slow action's result, or what the unit and probe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapObservation {
    Prepulled(Result<(), String>),
    Slot(SlotAnswer),
    /// etcd confirmed the registration is gone.
    Deregistered,
    /// etcd confirmed the registration is back.
    Registered,
    DrainElapsed,
    /// The fence: whether the slot is still held (lease alive and the key ours).
    Fenced {
        held: bool,
    },
    DropInWritten(Result<PreviousDropIn, String>),
    /// `Reload()` plus the restart job's result (or the previous drop-in's restore failing).
    Restarted(Result<(), String>),
    /// The restart job ended `canceled`: another job replaced it, an operator's stop or restart
    /// (ours run one at a time, so it is never our own). Not the version's failure.
    RestartCanceled,
    /// The previous drop-in is back (with `Reload()`), the unit not restarted.
    DropInRestored(Result<(), String>),
    /// `swap.verify_timeout` passed since the restart finished.
    VerifyDeadline,
    /// `rollout.min_healthy` passed since the new version was registered again. `monitor`: the
    /// policy watches the version after the release (`rollout.monitor` above zero, as in force
    /// when the slot was requested).
    MinHealthyElapsed {
        monitor: bool,
    },
    /// `rollout.monitor` passed since the release.
    MonitorElapsed,
    /// The health check failed `fall` times in a row (the agent's streak says so); sent instead
    /// of the probe that made it so.
    Unhealthy,
    SlotReleased(Result<(), String>),
    /// The slot backend's answer to [`SwapAction::Halt`]: `Ok` once the group is halted (or,
    /// with no failure budget to ask, the halt marker set).
    GroupHalted(Result<(), String>),
    /// The answer to a [`SwapAction::Halt`] the failure budget applies to when the budget is not
    /// spent: the failure is counted in the version's state and the group is not halted.
    FailureCounted,
    Unit(ActiveState),
    LeftActive,
    Probe {
        passed: bool,
    },
    /// SIGTERM or SIGINT.
    Shutdown,
    /// The journal could not record the phase before the deregistration: nothing of the batch
    /// was done.
    JournalFailed,
}

/// What the driver must do for the swap, in order. It journals the new phase before performing
/// any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapAction {
    SendEvent(Event),
    /// Run `swap.prepull` for this image as a transient unit; answers [`SwapObservation::Prepulled`].
    Prepull {
        image: String,
    },
    /// One acquire attempt (after waiting for a change when `retry`); answers
    /// [`SwapObservation::Slot`]. `again`: the slot is taken again by a swap that held it
    /// (recovery after a restart, a fence found lost) to finish or roll back; the rollout's gate
    /// (pause, canaries, windows, the failure budget) judged this swap when it first took it, and
    /// does not hold it now (a halt still does, as the backend answers it). `away`: a rollback
    /// after a failure inside `rollout.monitor` takes a slot to leave `version`: a halt on
    /// `version` itself (the one its own failure placed) does not refuse it; any other does.
    AcquireSlot {
        version: String,
        retry: bool,
        again: bool,
        away: bool,
    },
    /// Withdraw the registration; answers [`SwapObservation::Deregistered`] once etcd confirms.
    Deregister,
    /// Wait `swap.drain`; answers [`SwapObservation::DrainElapsed`].
    Drain,
    /// Ask the backend whether the slot is still held; answers [`SwapObservation::Fenced`].
    CheckSlot,
    /// Answers [`SwapObservation::DropInWritten`].
    WriteDropIn(DropIn),
    /// Put the previous drop-in back (or write the old version's when it is unknown), then
    /// reload and restart; answers [`SwapObservation::Restarted`].
    RestoreAndRestart {
        previous: Option<PreviousDropIn>,
        old: DropIn,
    },
    /// Put the previous drop-in back (or write the old version's when it is unknown) and
    /// `Reload()`, with no restart: an operator stopped the unit; answers
    /// [`SwapObservation::DropInRestored`].
    RestoreDropIn {
        previous: Option<PreviousDropIn>,
        old: DropIn,
    },
    /// `Reload()`, then `RestartUnit` within `swap.start_timeout`; answers
    /// [`SwapObservation::Restarted`].
    Restart,
    /// Start the `swap.verify_timeout` clock; answers [`SwapObservation::VerifyDeadline`].
    StartVerifyDeadline,
    /// Start the `rollout.min_healthy` clock (the group's policy in force when the slot was
    /// taken); answers [`SwapObservation::MinHealthyElapsed`].
    StartMinHealthy,
    /// Start the `rollout.monitor` clock (the group's policy in force when the slot was taken);
    /// answers [`SwapObservation::MonitorElapsed`].
    StartMonitor,
    /// Publish the registration; after verification answers [`SwapObservation::Registered`]
    /// once etcd confirms.
    Register,
    /// Set the group's halt marker (after a pause when `retry`); answers
    /// [`SwapObservation::GroupHalted`]. Idempotent. For a version's failure (`cause` not
    /// [`HaltCause::Immediate`]) with etcd slots, the failure is counted in the version's state
    /// first and the marker set only when that spends `rollout.max_failures`; otherwise it answers
    /// [`SwapObservation::FailureCounted`].
    Halt {
        version: String,
        reason: String,
        retry: bool,
        cause: HaltCause,
    },
    /// Skip this version until a newer one is offered.
    Denylist {
        version: String,
    },
    /// Answers [`SwapObservation::SlotReleased`] (retried after a pause on failure).
    ReleaseSlot {
        retry: bool,
    },
    /// The slot was found lost after the fence (the lease lapsed or the key went while the unit
    /// was being swapped): log it and count it. Nothing is released for it: the key may be
    /// another holder's now.
    NoteSlotLost,
    /// The swap is over: remove the journal.
    ClearJournal,
    /// Not the swap's own: on start, once registered with no swap in flight, give back any slot
    /// an earlier run left under this holder id ([`crate::slot::SlotLock::release_stale`]).
    ReleaseStaleSlot,
    /// Deregister and exit (the agent's [`crate::agent::machine::state::Action::Stop`]).
    Stop,
}
