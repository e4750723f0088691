//! The tokio loop around the machine: each turn waits for one thing to happen (a unit change, a
//! probe result, a slow step's answer, an update pass back, a reload, an ask, a signal), turns it
//! into an [`Observation`], feeds it to [`state::next`], and carries the actions out ([`act`])
//! once the swap's phase they belong to is recorded off the loop's task ([`journaling`]).
//! A swap's slow steps run as one future at a time ([`crate::agent::update::steps`]) and an
//! update pass runs beside the loop too, so deregistration and SIGTERM stay instant. Puts
//! reloaded settings in force as they arrive ([`Reconfigure`]). Reports progress with sd_notify
//! STATUS ([`status`]), and pings systemd's watchdog from the loop itself, so that a stuck loop
//! is restarted.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::agent::machine::state::{Agent, Observation, Phase};
use crate::agent::machine::swap::{SwapAction, SwapObservation, SwapPhase};
use crate::agent::update::UpdatePass;
use crate::health::Probe;
use crate::metrics::Metrics;
use crate::notify;
use crate::registry::record::InstanceRecord;
use crate::registry::{Entry, Registry};
use crate::systemd::UnitState;
use crate::systemd::control::UnitControl;
use loop_state::LoopState;
use swap_metrics::SwapTimer;
use wait::{next_reload, probe_at, run_slow, run_some, sleep_until_some};

mod act;
mod asks;
mod journaling;
mod loop_state;
mod narrate;
mod once;
mod pass;
mod reconfigure;
mod record;
mod status;
mod swap_metrics;
mod turn;
mod wait;

#[cfg(test)]
pub(crate) use act::is_inline;
pub use reconfigure::Reconfigure;

/// How long shutdown may take to revoke the lease, leaving room in the 2 s stop budget.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(1500);

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverReport {
    /// etcd requests the registry made (RPCs and keepalive messages).
    pub etcd_requests: u64,
}

/// The outside world the loop acts on, built once by the command that runs it.
pub struct Seams<R: Registry, P: Probe, C: UnitControl> {
    pub registry: R,
    pub probe: P,
    /// The bound unit's `ActiveState` and departures from `active`, deduplicated.
    pub unit: watch::Receiver<UnitState>,
    /// Update checks and slots; `None` when this run does not look for updates.
    pub updates: Option<UpdatePass<C>>,
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The registration's keys and values.
    pub entries: Vec<Entry>,
    /// Probe period while the unit is active.
    pub interval: Duration,
    /// Instance name for log lines.
    pub instance: String,
    /// The bound unit's name, for status lines.
    pub unit_name: String,
    /// Stop after one whole pass (registration decided, one update pass) instead of running on.
    pub once: bool,
    /// Where the loop reports its phase, registration and update checks, if anywhere.
    pub metrics: Option<Metrics>,
    /// Publish the fleet view's instance record with the registration: the update group and
    /// the announced host.
    pub record: Option<RecordOptions>,
}

/// Where the instance record goes and what it names.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub group: String,
    pub host: String,
    /// The version the unit runs as read at start, for the first record.
    pub version: Option<String>,
}

/// The loop: observes, asks [`state::next`], acts.
pub struct Driver<R: Registry, P: Probe, C: UnitControl> {
    agent: Agent,
    seams: Seams<R, P, C>,
    options: DriverOptions,
    /// The instance record published with the registration, when configured.
    record: Option<InstanceRecord>,
    /// The entries changed (the record, or a reloaded configuration's keys) since the
    /// registration was last published.
    unpublished: bool,
    /// Times the swap's steps and counts its results.
    swap_timer: SwapTimer,
    /// The control socket's asks and state, when it is served ([`Self::with_control`]).
    asks: Option<asks::Asks>,
    /// Settings of reloaded configurations, from `sidekick run`.
    reloads: Option<mpsc::Receiver<Reconfigure<P>>>,
    /// Update settings reloaded while the update pass was out running; handed to it when it is
    /// back.
    held_update_reload: Option<crate::agent::update::UpdateReload>,
    /// A test's watchdog period and the count of its pings.
    #[cfg(test)]
    test_watchdog: Option<(Duration, std::sync::Arc<std::sync::atomic::AtomicU64>)>,
    /// The group's rollout, which records this instance's swaps step by step.
    rollout: Option<std::sync::Arc<crate::rollout::agent::RolloutAgent>>,
    /// A test's min-healthy in place of the group's policy (the rollout needs etcd).
    #[cfg(test)]
    test_min_healthy: Option<Duration>,
    /// A test's monitor in place of the group's policy.
    #[cfg(test)]
    test_monitor: Option<Duration>,
}

/// How long the start waits for the unit's first state before it tells systemd it is ready.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// How long `--once` waits for the unit's first state before it goes on without it.
pub const ONCE_UNIT_WAIT: Duration = Duration::from_secs(10);

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// A driver starting from `agent` over `seams`.
    pub fn new(mut agent: Agent, seams: Seams<R, P, C>, options: DriverOptions) -> Self {
        // Only a run that swaps takes slots, so only it can have left one in an earlier life.
        agent.stale_slot = seams.updates.as_ref().is_some_and(UpdatePass::checks);
        let rollout = seams.updates.as_ref().and_then(|u| u.rollout().cloned());
        let record = options.record.as_ref().map(|r| InstanceRecord {
            version: r.version.clone().unwrap_or_else(|| "unknown".into()),
            phase: agent.phase.label().into(),
            since: crate::slot::now_rfc3339(),
            last_check: None,
            result: None,
            host: r.host.clone(),
            target: None,
            step: None,
            policy: rollout.as_ref().map(|r| r.policy_hash()),
        });
        Driver {
            agent,
            seams,
            rollout,
            swap_timer: SwapTimer::new(options.metrics.clone()),
            options,
            record,
            unpublished: false,
            asks: None,
            reloads: None,
            held_update_reload: None,
            #[cfg(test)]
            test_watchdog: None,
            #[cfg(test)]
            test_min_healthy: None,
            #[cfg(test)]
            test_monitor: None,
        }
    }

    /// Also puts in force the reloaded settings that arrive on `reloads`.
    pub fn with_reloads(mut self, reloads: mpsc::Receiver<Reconfigure<P>>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// Runs until `shutdown` resolves (or, with `once`, one pass is done), then deregisters and
    /// returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> DriverReport {
        tokio::pin!(shutdown);
        let initial = self.seams.unit.borrow_and_update().clone();
        let mut state = LoopState::start(self.seams.registry.published(), &initial);
        #[cfg(test)]
        if let Some((period, _)) = &self.test_watchdog {
            state.watchdog = crate::notify::Watchdog::every(Some(*period));
        }
        if let Some(period) = state.watchdog.period() {
            debug!(instance = %self.options.instance, "pinging the systemd watchdog every {period:?}");
        }
        state.recovered = state.watchdog.awaiting(self.recover()).await;
        loop {
            let observation = match state.pending.pop_front() {
                Some(observation) => observation,
                None => match self.observe(&mut state, shutdown.as_mut()).await {
                    Some(observation) => observation,
                    None => continue,
                },
            };
            if let Some(batch) = self.turn(observation, &mut state) {
                return self.stop(batch, &mut state).await;
            }
        }
    }

    /// Waits for the next thing to happen; `None` when it needs no decision of the machine.
    async fn observe<S: Future<Output = ()>>(
        &mut self,
        state: &mut LoopState<C>,
        mut shutdown: Pin<&mut S>,
    ) -> Option<Observation> {
        let probing = self.agent.probing();
        let settled = self.settled(&state.published.borrow(), state.started);
        let serving = self.agent.phase == Phase::Serving;
        // While a pass is out, `updates` is with it.
        let can_pass = settled && serving && self.seams.updates.is_some();
        let pass_at = state.next_pass.filter(|_| can_pass);
        if self.once_done(settled, state.passing.is_some()) {
            return Some(Observation::Shutdown);
        }
        let instance = &self.options.instance;
        let observation = tokio::select! {
            biased;
            _ = &mut shutdown => Observation::Shutdown,
            _ = state.watchdog.due() => {
                state.watchdog.ping();
                #[cfg(test)]
                if let Some((_, pings)) = &self.test_watchdog {
                    pings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                return None;
            }
            _ = sleep_until_some(state.ready_by), if state.ready_by.is_some() => {
                warn!(instance = %instance,
                    "the unit's state is not known after {READY_WAIT:?}: ready anyway, following it when the bus answers");
                notify::ready();
                state.ready_by = None;
                return None;
            }
            reload = next_reload(&mut self.reloads), if self.reloads.is_some() => match reload {
                Some(reload) => self.reconfigure(reload, &mut state.next_probe, &mut state.next_pass),
                None => {
                    self.reloads = None;
                    return None;
                }
            },
            changed = self.seams.unit.changed(), if state.unit_open => match changed {
                Ok(()) => {
                    let now = self.seams.unit.borrow_and_update().clone();
                    // A departure whose states were coalesced away still counts.
                    if now.departures == state.departures {
                        return Some(Observation::Unit(now.active));
                    }
                    state.departures = now.departures;
                    state.pending.push_back(Observation::Unit(now.active));
                    Observation::LeftActive
                }
                Err(_) => {
                    warn!(instance = %instance, "unit watch ended; keeping the last known state");
                    state.unit_open = false;
                    return None;
                }
            },
            passed = probe_at(&mut self.seams.probe, state.next_probe, instance), if probing => {
                state.next_probe = Instant::now() + self.options.interval;
                Observation::Probe { passed }
            }
            _ = state.published.changed() => {
                let now = state.published.borrow_and_update().clone();
                self.report_status(&mut state.status, &now);
                // Told once the actions waiting for the journal ran (`journaling`).
                return self.confirmation(&now).filter(|_| Self::journal_idle(state));
            }
            written = run_some(&mut state.recording), if state.recording.is_some() => {
                self.recorded(written, state);
                return None;
            }
            answer = run_slow(&mut state.slow), if state.slow.is_some() => {
                state.slow = None;
                return answer.map(Observation::Swap);
            }
            _ = sleep_until_some(state.status_at), if state.status_at.is_some() => {
                state.status_at = self.updating().then(|| Instant::now() + status::STATUS_REFRESH);
                self.report_status(&mut state.status, &state.published.borrow());
                return None;
            }
            _ = sleep_until_some(state.verify_at), if state.verify_at.is_some() => {
                state.verify_at = None;
                Observation::Swap(SwapObservation::VerifyDeadline)
            }
            _ = sleep_until_some(state.min_healthy_at), if state.min_healthy_at.is_some() => {
                state.min_healthy_at = None;
                let monitor = !self.monitor().is_zero();
                Observation::Swap(SwapObservation::MinHealthyElapsed { monitor })
            }
            _ = sleep_until_some(state.monitor_at), if state.monitor_at.is_some() => {
                state.monitor_at = None;
                Observation::Swap(SwapObservation::MonitorElapsed)
            }
            _ = sleep_until_some(pass_at), if pass_at.is_some() => {
                self.send_pass(state);
                return None;
            }
            (updates, pass) = run_some(&mut state.passing), if state.passing.is_some() => {
                state.passing = None;
                let (next, offer) = self.pass_finished(updates, pass);
                state.next_pass = next;
                let kept = std::mem::take(&mut state.after_pass);
                if !kept.is_empty() {
                    let stop = self.dispatch(kept, state);
                    debug_assert!(stop.is_none(), "a stop is never kept for the pass");
                }
                match offer {
                    Some(plan) => Observation::Offer(plan),
                    None if state.next_pass.is_none() => Observation::Shutdown,
                    None => return None,
                }
            }
            _ = sleep_until_some(state.unrecorded.as_ref().map(|(_, at)| *at)), if state.unrecorded.is_some() => {
                self.retry_held(state);
                return None;
            }
            ask = asks::next_ask(&mut self.asks) => {
                // One that comes while a pass is out is answered with its result.
                if self.take_ask(ask, can_pass || state.passing.is_some()) {
                    state.next_pass = Some(Instant::now());
                }
                return None;
            }
            _ = tokio::time::sleep_until(state.started + ONCE_UNIT_WAIT),
                if self.options.once && !settled => {
                warn!(instance = %instance,
                    "the unit's state is not known after {ONCE_UNIT_WAIT:?}; going on without it");
                return None;
            }
        };
        Some(observation)
    }

    /// On start: a swap left in the journal, resumed; an unreadable journal stops updates here.
    async fn recover(&mut self) -> Option<(SwapPhase, Vec<SwapAction>)> {
        let updates = self.seams.updates.as_mut()?;
        match updates.recover().await {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(instance = %self.options.instance, "{err:#}; no updates are applied until it is resolved");
                self.seams.updates = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
