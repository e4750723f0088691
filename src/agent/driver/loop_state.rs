//! The loop's own state between two turns: what it waits for next (the probe, the next update
//! pass, the verify deadline, READY=1, the next STATUS), what is in flight (a slow swap step, an
//! update pass, a journal record), the actions waiting for the journal or for the pass, the
//! observations queued for the machine, and what the last turn reported.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use tokio::time::Instant;

use super::READY_WAIT;
use crate::agent::machine::state::{Action, Observation};
use crate::agent::machine::swap::{SwapAction, SwapPhase};
use crate::agent::update::UpdatePass;
use crate::agent::update::pass::JournalWrite;
use crate::agent::update::pass::PassResult;
use crate::agent::update::steps::SlowStep;
use crate::notify::Watchdog;
use crate::registry::Published;
use crate::systemd::control::UnitControl;
use crate::systemd::{ActiveState, UnitState};

/// An update pass out running beside the loop; it gives the pass back with its result.
pub(super) type PassInFlight<C> = Pin<Box<dyn Future<Output = (UpdatePass<C>, PassResult)> + Send>>;

/// The loop's locals.
pub(super) struct LoopState<C: UnitControl> {
    /// What etcd holds of the registration.
    pub(super) published: watch::Receiver<Published>,
    /// Whether the unit watch still runs.
    pub(super) unit_open: bool,
    /// The unit's departures from `active` seen so far.
    pub(super) departures: u64,
    pub(super) started: Instant,
    pub(super) next_probe: Instant,
    /// When the next update pass is due; `None` once `--once` is done.
    pub(super) next_pass: Option<Instant>,
    /// READY=1 is due by then at the latest; `None` once sent.
    pub(super) ready_by: Option<Instant>,
    pub(super) verify_at: Option<Instant>,
    /// When min-healthy is over, while the swap is in it.
    pub(super) min_healthy_at: Option<Instant>,
    /// When monitor is over, while the released swap is in it.
    pub(super) monitor_at: Option<Instant>,
    pub(super) watchdog: Watchdog,
    /// Observations for the machine before the loop waits again.
    pub(super) pending: VecDeque<Observation>,
    /// The swap's slow step in flight.
    pub(super) slow: Option<SlowStep>,
    /// An update pass in flight: it runs beside the unit watch, the probe and the stop signal,
    /// so a unit that stops during a slow check is deregistered at once.
    pub(super) passing: Option<PassInFlight<C>>,
    /// A journaled swap to resume at the first turn.
    pub(super) recovered: Option<(SwapPhase, Vec<SwapAction>)>,
    /// The last STATUS line sent.
    pub(super) status: String,
    /// Actions held in place because the journal could not record the swap's phase after the
    /// deregistration, and when the write is tried again.
    pub(super) unrecorded: Option<(Vec<Action>, Instant)>,
    /// Batches of actions waiting, in order, for the record of the phase they were decided in
    /// (see [`super::journaling`]).
    pub(super) waiting: VecDeque<Waiting>,
    /// The record of the first waiting batch's phase, in flight off the loop's task.
    pub(super) recording: Option<JournalWrite>,
    /// Actions that need the update pass's seams, kept while it is out (see
    /// [`super::journaling`]).
    pub(super) after_pass: Vec<Action>,
    /// When STATUS is sent again while a swap runs ([`super::status::STATUS_REFRESH`]).
    pub(super) status_at: Option<Instant>,
}

/// One turn's actions waiting for the journal.
pub(super) struct Waiting {
    /// The swap's phase they were decided in; `None`: nothing to record (not swapping, or no
    /// update side), they only wait for the batches before them.
    pub(super) phase: Option<SwapPhase>,
    pub(super) actions: Vec<Action>,
}

impl<C: UnitControl> LoopState<C> {
    /// The state at start: the unit's first state queued when it is known already. The first
    /// pass waits until the unit's state is known and the registration settled, so its lines
    /// follow the registration's.
    pub(super) fn start(published: watch::Receiver<Published>, unit: &UnitState) -> Self {
        let started = Instant::now();
        let mut pending = VecDeque::new();
        if unit.active != ActiveState::Unknown {
            pending.push_back(Observation::Unit(unit.active.clone()));
        }
        LoopState {
            published,
            unit_open: true,
            departures: unit.departures,
            started,
            next_probe: started,
            next_pass: Some(started),
            // READY=1 once the unit's first state is known (or, with the bus silent, after a
            // bound the start job can wait for, with STATUS saying why).
            ready_by: Some(started + READY_WAIT),
            verify_at: None,
            min_healthy_at: None,
            monitor_at: None,
            watchdog: Watchdog::from_env(),
            pending,
            slow: None,
            passing: None,
            recovered: None,
            status: String::new(),
            unrecorded: None,
            waiting: VecDeque::new(),
            recording: None,
            after_pass: Vec::new(),
            status_at: None,
        }
    }
}
