//! One simulated sidekick process: the real machine ([`state::next`], [`state::resume`],
//! [`recover`]) inside a model of the driver's loop (`driver/mod.rs`, `driver/act.rs`) and of the
//! update pass and swap steps (`update/pass.rs`, `update/steps.rs`): the swap journaled before
//! its side effects, failing closed; inline actions at once; slow ones as one chained batch whose
//! last answer comes back; SIGTERM dropping the batch in flight; a crash losing everything but the
//! journal, the denylist and what systemd and etcd hold.

use std::collections::{BTreeSet, VecDeque};
use std::num::NonZeroU32;

use super::rollout::RolloutClient;
use super::world::{Answer, Behaviour, DRAIN, Ms, SlotClient, VERIFY_TIMEOUT};
use super::{Sim, Violation};
use crate::agent::driver::is_inline;
use crate::agent::machine::recover;
use crate::agent::machine::state::{self, Action, Agent, Observation, Phase};
use crate::agent::machine::swap::{
    SlotAnswer, Stage, SwapAction, SwapObservation, SwapPhase, SwapPlan,
};
use crate::health::HealthStreak;
use crate::rollout::agent::SlotHold;
use crate::rollout::state::Claimant;
use crate::slot::{Acquisition, Holding};
use crate::systemd::ActiveState;
use crate::systemd::control::{DropIn, PreviousDropIn};

pub const RISE: u32 = 2;
pub const FALL: u32 = 2;
pub const PROBE_EVERY: Ms = 1_000;
pub const POLL_EVERY: Ms = 10_000;
pub const RETRY_AFTER: Ms = 30_000;
pub const RELEASE_RETRY: Ms = 5_000;
pub const HALT_RETRY: Ms = 5_000;
pub const JOURNAL_RETRY: Ms = 1_000;
pub const SHUTDOWN_DEADLINE: Ms = 1_500;
pub const RPC: Ms = 20;

/// What survives a crash: the host's files.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub journal: Option<SwapPhase>,
    pub denylist: BTreeSet<String>,
}

/// A slow step in flight.
#[derive(Debug, Clone)]
pub enum Current {
    /// Waiting before the action (a retry pause); `wake` on a slot delete or a change of the
    /// group's rollout (`EtcdSlots::wait_for_change`).
    Pause {
        action: SwapAction,
        until: Ms,
        wake: bool,
        seen: u64,
        seen_rollout: i64,
    },
    /// The call is out; its effect lands at `until`.
    Call { action: SwapAction, until: Ms },
    /// Waiting for the unit's restart job (of a rollback: a cancel reads as a failure there).
    Job { rollback: bool },
}

/// The process's own state: gone on a crash.
#[derive(Debug, Clone)]
pub struct Proc {
    pub life: u32,
    pub agent: Agent,
    pub recovered: Option<(SwapPhase, Vec<SwapAction>)>,
    pub pending: VecDeque<Observation>,
    pub queue: VecDeque<SwapAction>,
    pub current: Option<Current>,
    pub answer: Option<SwapObservation>,
    pub slow: bool,
    pub verify_at: Option<Ms>,
    pub next_probe: Ms,
    pub next_pass: Option<Ms>,
    pub passing: Option<Ms>,
    pub unrecorded: Option<(Vec<Action>, Ms)>,
    pub client: SlotClient,
    /// What the registry was last asked for, and what etcd has.
    pub wanted: bool,
    pub published: bool,
    pub sync_at: Option<Ms>,
    /// The sim's own health tracker for this process's probe results (checks the registration).
    pub passes: u32,
    pub fails: u32,
    pub healthy: bool,
    /// The slot lapsed after the fence while the unit was being restarted or verified.
    pub lost_after_fence: bool,
    /// The slot was held when this process queued its last restart job.
    pub slot_at_restart: bool,
    /// Started with no journal: a grant the service still holds is an earlier run's (`pass.rs`).
    pub stale_grant_possible: bool,
    /// The agent took offers when the pass in flight was sent (else it sends no check).
    pub pass_serving: bool,
    /// The process's `RolloutAgent`.
    pub rollout: RolloutClient,
    /// When min-healthy is over (`driver/turn.rs`'s `min_healthy_at`).
    pub min_healthy_at: Option<Ms>,
    /// When monitor is over (`driver/turn.rs`'s `monitor_at`).
    pub monitor_at: Option<Ms>,
}

impl Proc {
    fn new(life: u32, now: Ms, rollout: RolloutClient) -> Proc {
        let rise = NonZeroU32::new(RISE).unwrap();
        let fall = NonZeroU32::new(FALL).unwrap();
        let mut agent = Agent::new(HealthStreak::new(rise, fall), false);
        agent.stale_slot = true;
        Proc {
            life,
            agent,
            recovered: None,
            pending: VecDeque::new(),
            queue: VecDeque::new(),
            current: None,
            answer: None,
            slow: false,
            verify_at: None,
            next_probe: now,
            next_pass: Some(now),
            passing: None,
            unrecorded: None,
            client: SlotClient::default(),
            wanted: false,
            published: false,
            sync_at: None,
            passes: 0,
            fails: 0,
            healthy: false,
            lost_after_fence: false,
            slot_at_restart: false,
            stale_grant_possible: false,
            pass_serving: false,
            rollout,
            min_healthy_at: None,
            monitor_at: None,
        }
    }

    pub fn stage(&self) -> Option<&Stage> {
        match &self.agent.phase {
            Phase::Updating(swap) => Some(&swap.stage),
            _ => None,
        }
    }
}

fn version_of(previous: &PreviousDropIn, old: &DropIn) -> String {
    match previous {
        PreviousDropIn::Contents(text) => text
            .strip_prefix("version=")
            .map(str::to_string)
            .unwrap_or_else(|| old.version.clone()),
        PreviousDropIn::Absent => old.version.clone(),
    }
}

impl Sim {
    pub(super) fn log(&mut self, i: usize, text: impl FnOnce() -> String) {
        if self.tracing {
            let line = format!("{:>8} #{i} {}", self.now, text());
            self.trace.push(line);
        }
    }

    /// Starts the sidekick of instance `i`: a fresh process resuming the journal, if any.
    pub(super) fn start(&mut self, i: usize) {
        let life = self.inst[i].gens + 1;
        self.inst[i].gens = life;
        let configured = self.drawn.configured();
        let mut proc = Proc::new(
            life,
            self.now,
            RolloutClient::new(
                configured,
                super::rollout::timestamp(self.now),
                // Unique per process of the group and the same on every replay of the seed; a
                // host's one boot (the world reboots no host).
                Claimant {
                    run: format!("{i:08x}{life:08x}"),
                    boot: self.inst[i].host.clone(),
                },
            ),
        );
        let unit = self.inst[i].unit.clone();
        if let Some(journal) = self.inst[i].disk.journal.clone() {
            let observed = crate::systemd::control::RunningVersion {
                version: Some(unit.loaded.clone()),
                image: Some(format!("example/web:{}", unit.loaded)),
            };
            // The Unit's `ActiveState` and `Job` properties: the twin's queued job is systemd's.
            let now = crate::systemd::control::UnitNow {
                active: unit.state.clone(),
                job_queued: unit.job.is_some(),
            };
            proc.recovered = Some(recover(journal, &observed, &now));
        }
        proc.stale_grant_possible = proc.recovered.is_none();
        proc.pending
            .push_back(Observation::Unit(unit.state.clone()));
        self.inst[i].proc = Some(proc);
        self.log(i, || "sidekick started".into());
    }

    /// SIGKILL: everything but the disk, the unit's queued job and etcd's keys is gone.
    pub(super) fn crash(&mut self, i: usize) {
        if self.inst[i].proc.take().is_some() {
            self.etcd.stop_keeping(i, self.now);
            self.log(i, || "sidekick killed".into());
        }
    }

    /// SIGTERM: the machine decides; the batch in flight is dropped, the stop's own batch gets
    /// the shutdown deadline; then the process exits.
    pub(super) fn sigterm(&mut self, i: usize) {
        if self.inst[i].proc.is_none() {
            return;
        }
        self.log(i, || "SIGTERM".into());
        let batch = self.turn(i, Observation::Shutdown).unwrap_or_default();
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.queue.clear();
            p.current = None;
            p.answer = None;
        }
        let (inline, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(is_inline);
        for action in inline {
            self.inline(i, action);
        }
        let mut spent = 0;
        for action in batch {
            if matches!(action, SwapAction::ReleaseSlot { retry: true }) {
                break;
            }
            spent += RPC;
            if spent > SHUTDOWN_DEADLINE || self.inst[i].proc.is_none() {
                break;
            }
            if let Some(p) = self.inst[i].proc.as_mut() {
                p.current = Some(Current::Call {
                    action: action.clone(),
                    until: self.now,
                });
            }
            self.finish_call(i, action);
        }
        self.crash(i);
    }

    /// One turn of the loop: the machine decides, the actions are carried out; `Some` when the
    /// machine stops the driver (the swap actions to give back on the way out).
    pub(super) fn turn(&mut self, i: usize, observation: Observation) -> Option<Vec<SwapAction>> {
        let p = self.inst[i].proc.as_mut()?;
        if let Observation::Probe { passed } = observation
            && p.agent.probing()
        {
            if passed {
                p.passes += 1;
                p.fails = 0;
                p.healthy |= p.passes >= RISE;
            } else {
                p.passes = 0;
                p.fails += 1;
                p.healthy &= p.fails < FALL;
            }
        }
        if matches!(&observation, Observation::LeftActive)
            || matches!(&observation, Observation::Unit(s) if !s.is_active())
        {
            p.passes = 0;
            p.fails = 0;
            p.healthy = false;
        }
        let became_active = matches!(&observation, Observation::Unit(s) if s.is_active())
            && !p.agent.unit.is_active();
        if became_active {
            p.next_probe = self.now;
        }
        let was_updating = matches!(p.agent.phase, Phase::Updating(_));
        let agent = p.agent.clone();
        let shown = format!("{observation:?}");
        let (agent, actions) = match p.recovered.take() {
            Some((swap, actions)) => {
                p.pending.push_front(observation);
                state::resume(agent, swap, actions)
            }
            None => state::next(agent, observation),
        };
        p.agent = agent;
        p.rollout.observe(&p.agent.phase);
        let stage = format!("{:?}", p.stage());
        self.log(i, || format!("{shown} -> {stage} {actions:?}"));
        if let Some(batch) = self.act(i, actions) {
            return Some(batch);
        }
        let p = self.inst[i].proc.as_mut()?;
        if !matches!(
            p.stage(),
            Some(Stage::Verifying { .. } | Stage::VerifyingOld { .. })
        ) {
            p.verify_at = None;
        }
        if !matches!(p.stage(), Some(Stage::MinHealthy { .. })) {
            p.min_healthy_at = None;
        }
        if !matches!(p.stage(), Some(Stage::Monitoring { .. })) {
            p.monitor_at = None;
        }
        if let Some(confirmed) = confirmation(p) {
            p.pending.push_back(confirmed);
        }
        if was_updating && p.agent.phase == Phase::Serving {
            p.next_pass = p.next_pass.or(Some(self.now));
        }
        None
    }

    /// `driver/act.rs`: journal first (failing closed), then the actions in order up to a stop.
    pub(super) fn act(&mut self, i: usize, actions: Vec<Action>) -> Option<Vec<SwapAction>> {
        let now = self.now;
        let p = self.inst[i].proc.as_mut()?;
        let stopping = actions.iter().any(|a| matches!(a, Action::Stop));
        let actions = match p.unrecorded.take() {
            Some((mut held, at)) if !stopping => {
                held.extend(actions);
                p.unrecorded = Some((held, at));
                return None;
            }
            _ => actions,
        };
        if let (Phase::Updating(swap), false) = (&p.agent.phase, actions.is_empty()) {
            let swap = swap.clone();
            let fault = &mut self.inst[i].faults;
            if fault.journal_fails > 0 {
                fault.journal_fails -= 1;
                let before = matches!(
                    swap.stage,
                    Stage::Prepulling | Stage::AcquiringSlot { .. } | Stage::Deregistering
                );
                self.log(i, || "journal write failed".into());
                let p = self.inst[i].proc.as_mut()?;
                if before && !stopping {
                    p.pending
                        .push_back(Observation::Swap(SwapObservation::JournalFailed));
                    return None;
                }
                if !stopping {
                    p.unrecorded = Some((actions, now + JOURNAL_RETRY));
                    return None;
                }
            } else {
                self.inst[i].disk.journal = Some(swap);
                if let Some(n) = self.inst[i].faults.crash_after_journal.as_mut() {
                    *n -= 1;
                    if *n == 0 {
                        self.inst[i].faults.crash_after_journal = None;
                        self.crash(i);
                        return None;
                    }
                }
            }
        }
        let mut batch = Vec::new();
        for action in actions {
            match action {
                Action::Register => self.ask_registry(i, true),
                Action::Deregister => self.ask_registry(i, false),
                Action::Stop => return Some(batch),
                Action::Swap(action) => batch.push(action),
            }
        }
        // A batch with a halt runs beside the step in flight (`act.rs` joins them): the halt
        // goes first; an event still being sent lands now.
        let halting = batch.iter().any(|a| matches!(a, SwapAction::Halt { .. }));
        let mut front = Vec::new();
        if halting
            && let Some(Current::Call {
                action: action @ SwapAction::SendEvent(_),
                ..
            }) = self.inst[i].proc.as_ref()?.current.clone()
        {
            let queued = std::mem::take(&mut self.inst[i].proc.as_mut()?.queue);
            self.finish_call(i, action);
            self.inst[i].proc.as_mut()?.queue = queued;
        }
        for action in batch {
            match action {
                inline if is_inline(&inline) => self.inline(i, inline),
                slow if halting => front.push(slow),
                slow => {
                    let p = self.inst[i].proc.as_mut()?;
                    p.queue.push_back(slow);
                    p.slow = true;
                }
            }
        }
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.slow |= !front.is_empty();
            for action in front.into_iter().rev() {
                p.queue.push_front(action);
            }
        }
        self.next_step(i);
        None
    }

    /// An action the driver carries out at once ([`is_inline`], `driver/act.rs`).
    fn inline(&mut self, i: usize, action: SwapAction) {
        match action {
            SwapAction::StartVerifyDeadline => {
                if let Some(p) = self.inst[i].proc.as_mut() {
                    p.verify_at = Some(self.now + VERIFY_TIMEOUT);
                }
            }
            SwapAction::Denylist { version } => {
                self.blame(i, &version, "denylisted");
                self.inst[i].disk.denylist.insert(version);
            }
            SwapAction::ClearJournal => self.inst[i].disk.journal = None,
            // The policy's `min_healthy` in force when the slot was requested (`turn.rs`).
            SwapAction::StartMinHealthy => {
                let now = self.now;
                if let Some(p) = self.inst[i].proc.as_mut() {
                    let ms = p.rollout.min_healthy().as_millis() as Ms;
                    p.min_healthy_at = Some(now + ms);
                }
                self.log(i, || "min-healthy starts".into());
            }
            // The policy's `monitor` in force when the slot was requested (`turn.rs`).
            SwapAction::StartMonitor => {
                let now = self.now;
                if let Some(p) = self.inst[i].proc.as_mut() {
                    let ms = p.rollout.monitor().as_millis() as Ms;
                    p.monitor_at = Some(now + ms);
                }
                self.log(i, || "monitor starts".into());
            }
            // A log line and a metric in the driver: nothing the world sees.
            SwapAction::NoteSlotLost => {}
            // The agent's own actions, carried out by the loop (`act`).
            SwapAction::Register | SwapAction::Deregister | SwapAction::Stop => {}
            other => panic!("the simulation does not know the inline action {other:?}: teach it"),
        }
    }

    fn ask_registry(&mut self, i: usize, wanted: bool) {
        let now = self.now;
        let cut = self.cut(i);
        let Some(p) = self.inst[i].proc.as_mut() else {
            return;
        };
        p.wanted = wanted;
        p.sync_at = (!cut).then_some(now + RPC);
        if wanted {
            self.check_registration(i);
        }
    }

    /// etcd caught up with the registry: the confirmation the machine waits for, if any.
    pub(super) fn synced(&mut self, i: usize) {
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.sync_at = None;
            p.published = p.wanted;
            if let Some(confirmed) = confirmation(p) {
                p.pending.push_back(confirmed);
            }
        }
    }

    /// Starts the next queued slow step, or hands the batch's answer back when none is left.
    pub(super) fn next_step(&mut self, i: usize) {
        let now = self.now;
        let deletions = self.etcd.deletions;
        let seen_rollout = self.rollout.revision;
        let Some(p) = self.inst[i].proc.as_mut() else {
            return;
        };
        if p.current.is_some() {
            return;
        }
        let Some(action) = p.queue.pop_front() else {
            if p.slow {
                p.slow = false;
                if let Some(answer) = p.answer.take() {
                    p.pending.push_back(Observation::Swap(answer));
                }
            }
            return;
        };
        let slow_events = self.inst[i].faults.slow_events_until > now;
        let current = match action {
            SwapAction::AcquireSlot { retry: true, .. } => {
                let jitter = self.rng.u64(0..=RETRY_AFTER / 10);
                Current::Pause {
                    action,
                    until: now + RETRY_AFTER + jitter,
                    wake: true,
                    seen: deletions,
                    seen_rollout,
                }
            }
            SwapAction::Halt { retry: true, .. } => Current::Pause {
                action,
                until: now + HALT_RETRY,
                wake: false,
                seen: deletions,
                seen_rollout,
            },
            SwapAction::ReleaseSlot { retry: true } => Current::Pause {
                action,
                until: now + RELEASE_RETRY,
                wake: false,
                seen: deletions,
                seen_rollout,
            },
            SwapAction::Restart | SwapAction::RestoreAndRestart { .. } => {
                self.restart_unit(i, &action);
                let rollback = matches!(action, SwapAction::RestoreAndRestart { .. });
                Current::Job { rollback }
            }
            SwapAction::SendEvent(_) if slow_events => {
                let until = now + self.rng.u64(5_000..45_000);
                Current::Call { action, until }
            }
            SwapAction::Prepull { .. } => Current::Call {
                action,
                until: now + self.rng.u64(500..5_000),
            },
            SwapAction::Drain => Current::Call {
                action,
                until: now + DRAIN,
            },
            action => Current::Call {
                action,
                until: now + RPC,
            },
        };
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.current = Some(current);
        }
    }

    /// A pause is over: the call goes out.
    pub(super) fn paused(&mut self, i: usize) {
        let now = self.now;
        let Some(p) = self.inst[i].proc.as_mut() else {
            return;
        };
        if let Some(Current::Pause { action, .. }) = p.current.take() {
            p.current = Some(Current::Call {
                action,
                until: now + RPC,
            });
        }
    }

    /// The call lands: its effect on the world, and its answer.
    pub(super) fn finish_call(&mut self, i: usize, action: SwapAction) {
        let cut = self.cut(i);
        let holder = self.inst[i].holder.clone();
        let host = self.inst[i].host.clone();
        let Some(life) = self.inst[i].proc.as_ref().map(|p| p.life) else {
            return;
        };
        let mut client = self.inst[i].proc.as_ref().unwrap().client.clone();
        self.etcd.purge(self.now);
        let answer = match action.clone() {
            SwapAction::SendEvent(event) => {
                let accepted = self.nebraska.event(i, event);
                self.log(i, || format!("event {event:?} accepted={accepted}"));
                None
            }
            SwapAction::Halt {
                version, reason, ..
            } => {
                if cut || std::mem::take(&mut self.inst[i].faults.halt_fails) {
                    self.log(i, || "halt failed".into());
                    Some(SwapObservation::GroupHalted(Err("halt failed".into())))
                } else {
                    self.blame(i, &version, "halted");
                    self.halted_versions.insert(version.clone());
                    self.etcd.halt.get_or_insert((version, reason));
                    Some(SwapObservation::GroupHalted(Ok(())))
                }
            }
            SwapAction::RestoreDropIn { previous, old } => {
                let unit = &mut self.inst[i].unit;
                unit.file = match previous {
                    Some(previous) => version_of(&previous, &old),
                    None => old.version.clone(),
                };
                unit.loaded = unit.file.clone();
                Some(SwapObservation::DropInRestored(Ok(())))
            }
            SwapAction::Prepull { .. } => Some(SwapObservation::Prepulled(Ok(()))),
            SwapAction::AcquireSlot {
                version,
                again,
                away,
                ..
            } => {
                // `EtcdSlots::acquire`: the rollout's slot gate first for a slot not held, unless
                // the swap takes back the slot it held (`acquire_within_ungated`).
                let hold = match !cut && client.key.is_none() && !again {
                    true => self.slot_hold(i, &version),
                    false => None,
                };
                let answer = match (cut, hold) {
                    (true, _) => SlotAnswer::Failed("cannot reach etcd".into()),
                    (false, Some(SlotHold::Busy(detail))) => SlotAnswer::Busy(detail),
                    (false, Some(SlotHold::Refused(reason))) => SlotAnswer::Halted {
                        version: version.clone(),
                        reason,
                    },
                    (false, None) => {
                        let had = self.etcd.holds(&holder, &host);
                        let newly = client.key.is_none();
                        match self.etcd.acquire(
                            &mut client,
                            (i, life),
                            (&holder, &host),
                            &version,
                            away,
                        ) {
                            Acquisition::Acquired => {
                                if newly {
                                    self.took_slot(i, &version);
                                }
                                if !had {
                                    self.newly_acquired(i, &version);
                                }
                                SlotAnswer::Acquired
                            }
                            Acquisition::Busy { detail } => SlotAnswer::Busy(detail),
                            Acquisition::Halted { version, reason } => {
                                SlotAnswer::Halted { version, reason }
                            }
                        }
                    }
                };
                Some(SwapObservation::Slot(answer))
            }
            SwapAction::Drain => Some(SwapObservation::DrainElapsed),
            SwapAction::CheckSlot => {
                let held = !cut && self.etcd.held(&client, &holder) == Holding::Held;
                Some(SwapObservation::Fenced { held })
            }
            SwapAction::WriteDropIn(dropin) => {
                let unit = &mut self.inst[i].unit;
                let previous = PreviousDropIn::Contents(format!("version={}", unit.file));
                unit.file = dropin.version;
                Some(SwapObservation::DropInWritten(Ok(previous)))
            }
            SwapAction::ReleaseSlot { .. } => {
                // `EtcdSlots::release`: the swap's end recorded before the key goes.
                if client.key.is_some() {
                    self.rollout_released(i, !cut);
                }
                if cut || std::mem::take(&mut self.inst[i].faults.release_fails) {
                    // `release` forgets the key and the lease even when the calls fail: the
                    // lease is no longer kept alive and lapses within its TTL.
                    client.key = None;
                    if let Some(lease) = client.lease.take() {
                        self.etcd.stop_keeping_lease(lease, self.now);
                    }
                    Some(SwapObservation::SlotReleased(Err("release failed".into())))
                } else {
                    self.etcd.release(&mut client, &holder, &host);
                    Some(SwapObservation::SlotReleased(Ok(())))
                }
            }
            SwapAction::ReleaseStaleSlot => {
                if !cut {
                    self.etcd.release_stale(&mut client, &holder, &host);
                }
                None
            }
            other => panic!("the simulation does not know the slow step {other:?}: teach it"),
        };
        if let Some(p) = self.inst[i].proc.as_mut() {
            p.client = client;
            p.current = None;
            if answer.is_some() {
                p.answer = answer;
            }
        }
        self.next_step(i);
    }

    /// `Reload()` then `RestartUnit`: the job is queued at once and outlives the process.
    fn restart_unit(&mut self, i: usize, action: &SwapAction) {
        let unit = &mut self.inst[i].unit;
        if let SwapAction::RestoreAndRestart { previous, old } = action {
            unit.file = match previous {
                Some(previous) => version_of(previous, old),
                None => old.version.clone(),
            };
        }
        unit.loaded = unit.file.clone();
        let duration = self.rng.u64(300..3_000);
        self.inst[i].unit.job = Some(super::world::Job {
            done_at: self.now + duration,
            by_sidekick: true,
        });
        let loaded = self.inst[i].unit.loaded.clone();
        self.log(i, || format!("restart job queued onto {loaded}"));
        self.restart_started(i);
        self.set_unit(i, ActiveState::Activating);
    }

    /// The unit's restart job finished; a sidekick waiting for it gets the result.
    pub(super) fn job_done(&mut self, i: usize) {
        let Some(job) = self.inst[i].unit.job.take() else {
            return;
        };
        let unit = &self.inst[i].unit;
        let behaviour = self.behaviour(&unit.loaded);
        let started = !unit.broken && behaviour != Behaviour::Strand;
        if behaviour == Behaviour::Strand {
            self.inst[i].unit.broken = true;
        }
        let result = match started {
            true => {
                self.inst[i].unit.process = self.inst[i].unit.loaded.clone();
                self.set_unit(i, ActiveState::Active);
                self.started_process(i);
                Ok(())
            }
            false => {
                self.set_unit(i, ActiveState::Failed);
                Err("the start job failed".to_string())
            }
        };
        self.log(i, || format!("restart job done: {result:?}"));
        self.job_result(i, job.by_sidekick, result);
    }

    /// A sidekick waiting on the job gets its result (a canceled job reads as failed, as
    /// systemd's job result `canceled` does in `restart`).
    pub(super) fn job_result(&mut self, i: usize, by_sidekick: bool, result: Result<(), String>) {
        if let Some(p) = self.inst[i].proc.as_mut()
            && by_sidekick
            && let Some(Current::Job { rollback }) = p.current
        {
            p.current = None;
            p.answer = Some(match result {
                // `restart` reads systemd's job result `canceled` as ControlError::Canceled.
                Err(e) if e.contains("canceled") && !rollback => SwapObservation::RestartCanceled,
                result => SwapObservation::Restarted(result),
            });
            self.next_step(i);
        }
    }

    /// The unit's process was started: a version that fails late exits after a while.
    pub(super) fn started_process(&mut self, i: usize) {
        let unit = &self.inst[i].unit;
        if let Behaviour::Late { after } = self.behaviour(&unit.process) {
            self.inst[i].unit.dies_at = Some(self.now + after);
        }
    }

    /// The unit's process exits by itself: `failed`.
    pub(super) fn process_died(&mut self, i: usize) {
        self.inst[i].unit.dies_at = None;
        if self.inst[i].unit.state.is_active() {
            let process = self.inst[i].unit.process.clone();
            self.log(i, || format!("the unit's process ({process}) exited"));
            self.note_monitor_failure(i, &process);
            self.set_unit(i, ActiveState::Failed);
        }
    }

    /// The unit's `ActiveState` changes; the unit watch tells the sidekick.
    pub(super) fn set_unit(&mut self, i: usize, state: ActiveState) {
        let was = self.inst[i].unit.state.clone();
        if was == state {
            return;
        }
        if !state.is_active() {
            self.inst[i].unit.dies_at = None;
        }
        self.inst[i].unit.state = state.clone();
        if let Some(p) = self.inst[i].proc.as_mut() {
            if was.is_active() && !state.is_active() {
                p.pending.push_back(Observation::LeftActive);
            }
            p.pending.push_back(Observation::Unit(state));
        }
    }

    /// One update pass comes back: halt marker, check, denylist, plan.
    pub(super) fn pass_done(&mut self, i: usize) {
        let now = self.now;
        let cut = self.cut(i);
        let running = self.inst[i].unit.loaded.clone();
        let halted = !cut && self.etcd.halt.is_some();
        let stale_possible = self.inst[i]
            .proc
            .as_ref()
            .is_some_and(|p| p.stale_grant_possible);
        let serving = self.inst[i].proc.as_ref().is_some_and(|p| p.pass_serving);
        // `UpdatePass::poll`: the rollout's kept writes and lost canary places first.
        self.rollout_settle(i, serving.then_some(running.as_str()));
        if !serving {
            // `UpdatePass::poll`: no check while an offer could not be taken.
            let delay = POLL_EVERY + self.rng.u64(0..POLL_EVERY / 10);
            if let Some(p) = self.inst[i].proc.as_mut() {
                p.passing = None;
                p.next_pass = Some(now + delay);
            }
            self.log(i, || "update pass: not serving, no check".into());
            return;
        }
        // `UpdatePass::poll`: the rollout may hold the check (windows, promotion).
        if let Some(delay) = self.hold_check(i, &running, POLL_EVERY) {
            if let Some(p) = self.inst[i].proc.as_mut() {
                p.passing = None;
                p.next_pass = Some(now + delay);
            }
            return;
        }
        let mut answer = match halted {
            true => Answer::Refused("halted"),
            false => self.nebraska.check(i, &running, now),
        };
        // `UpdatePass::ask`: the first answer after a start with no journal that finds the
        // instance locked ends that grant with 3/0 STALE_GRANT and checks again.
        if !halted && stale_possible {
            if answer == Answer::Refused("error-updateInProgressOnInstance") {
                let failed = crate::omaha::Event::Failed {
                    error_code: crate::omaha::error_code::STALE_GRANT,
                };
                self.nebraska.event(i, failed);
                answer = self.nebraska.check(i, &running, now);
            }
            if let Some(p) = self.inst[i].proc.as_mut() {
                p.stale_grant_possible = false;
            }
        }
        let delay = POLL_EVERY + self.rng.u64(0..POLL_EVERY / 10);
        let denied = self.inst[i].disk.denylist.clone();
        let Some(p) = self.inst[i].proc.as_mut() else {
            return;
        };
        p.passing = None;
        p.next_pass = Some(now + delay);
        self.log(i, || format!("update pass running {running}: {answer:?}"));
        if let Answer::Update(version) = answer {
            if denied.contains(&version) {
                // A denylisted offer's grant is given back (3/0 DENYLISTED).
                let failed = crate::omaha::Event::Failed {
                    error_code: crate::omaha::error_code::DENYLISTED,
                };
                self.nebraska.event(i, failed);
                return;
            }
            let image = |v: &str| format!("example/web:{v}");
            let plan = SwapPlan {
                old: DropIn {
                    image: image(&running),
                    version: running.clone(),
                },
                new: DropIn {
                    image: image(&version),
                    version,
                },
                rise: RISE,
            };
            let p = self.inst[i].proc.as_mut().unwrap();
            p.pending.push_back(Observation::Offer(plan));
        }
    }

    /// Whether the loop would send the update pass out now (`driver/mod.rs` `observe`).
    pub(super) fn can_pass(p: &Proc) -> bool {
        let settled = p.agent.unit != ActiveState::Unknown && p.agent.registered == p.published;
        settled && p.agent.phase == Phase::Serving && p.passing.is_none()
    }

    pub(super) fn behaviour(&self, version: &str) -> Behaviour {
        self.behaviours
            .get(version)
            .copied()
            .unwrap_or(Behaviour::Good)
    }

    pub(super) fn violation(&mut self, v: Violation, detail: String) {
        self.log(usize::MAX, || format!("VIOLATION {v:?}: {detail}"));
        self.violations.push((v, self.now, detail));
    }
}

/// `Driver::confirmation`: what etcd confirms that the machine waits for.
fn confirmation(p: &Proc) -> Option<Observation> {
    let registered = p.published && p.agent.registered;
    let Phase::Updating(swap) = &p.agent.phase else {
        let first = registered && p.agent.stale_slot && p.agent.phase == Phase::Serving;
        return first.then_some(Observation::Registered);
    };
    let confirmed = match (&swap.stage, p.published) {
        (Stage::Deregistering, false) => SwapObservation::Deregistered,
        (Stage::Registering { .. }, _) if registered => SwapObservation::Registered,
        _ => return None,
    };
    Some(Observation::Swap(confirmed))
}
