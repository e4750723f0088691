//! The tokio loop around the state machine: turns unit changes, probe results and signals into
//! observations, feeds them to [`state::next`], and performs the actions through the seams
//! ([`Registry`], [`Probe`], the update pass). A swap's slow steps run as one future at a time
//! ([`crate::agent::update::steps`]) polled beside the unit watch, the probe and the stop signal; their results
//! come back as observations, so deregistration and SIGTERM stay instant. Puts reloaded settings
//! in force as they arrive ([`Reconfigure`]). Reports progress with sd_notify STATUS, and pings
//! systemd's watchdog from the loop itself, so that a stuck loop is restarted.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::agent::machine::state::{self, Action, Agent, Observation, Phase};
use crate::agent::machine::swap::{Stage, SwapAction, SwapObservation};
use crate::agent::update::UpdatePass;
use crate::agent::update::pass::PassResult;
use crate::agent::update::steps::SlowStep;
use crate::dry_run::would;
use crate::health::Probe;
use crate::metrics::Metrics;
use crate::notify::{self, NotifyState, Watchdog};
use crate::registry::record::InstanceRecord;
use crate::registry::{Entry, Published, Registry};
use crate::systemd::control::UnitControl;
use crate::systemd::{ActiveState, LoadState, UnitState};
use swap_metrics::SwapTimer;

mod asks;
mod reconfigure;
mod record;
mod swap_metrics;

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
        let record = options.record.as_ref().map(|r| InstanceRecord {
            version: "unknown".into(),
            phase: agent.phase.label().into(),
            since: crate::slot::now_rfc3339(),
            last_check: None,
            result: None,
            host: r.host.clone(),
        });
        Driver {
            agent,
            seams,
            swap_timer: SwapTimer::new(options.metrics.clone()),
            options,
            record,
            unpublished: false,
            asks: None,
            reloads: None,
            held_update_reload: None,
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
        let mut published = self.seams.registry.published();
        let mut unit_open = true;
        let mut next_probe = Instant::now();
        let started = Instant::now();
        // The first pass waits until the unit's state is known and the registration settled, so
        // its lines follow the registration's.
        let mut next_pass = Some(started);
        let mut status = String::new();
        // READY=1 once the unit's first state is known (or, with the bus silent, after a bound
        // the start job can wait for, with STATUS saying why).
        let mut ready_by = Some(started + READY_WAIT);
        let mut watchdog = Watchdog::from_env();
        if let Some(period) = watchdog.period() {
            debug!(instance = %self.options.instance, "pinging the systemd watchdog every {period:?}");
        }
        let initial = self.seams.unit.borrow_and_update().clone();
        let mut departures = initial.departures;
        let mut pending = VecDeque::new();
        if initial.active != ActiveState::Unknown {
            pending.push_back(Observation::Unit(initial.active));
        }
        // The swap's slow step in flight, and its verify deadline.
        let mut slow: Option<SlowStep> = None;
        // An update pass in flight: it runs beside the unit watch, the probe and the stop
        // signal, so a unit that stops during a slow check is deregistered at once.
        let mut passing = None;
        let mut verify_at: Option<Instant> = None;
        let mut recovered = watchdog.awaiting(self.recover()).await;
        loop {
            let observation = match pending.pop_front() {
                Some(observation) => observation,
                None => {
                    let probing = self.agent.probing();
                    let settled = self.settled(&published.borrow(), started);
                    let serving = self.agent.phase == Phase::Serving;
                    // While a pass is out, `updates` is with it.
                    let can_pass = settled && serving && self.seams.updates.is_some();
                    let pass_at = next_pass.filter(|_| can_pass);
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => Observation::Shutdown,
                        _ = watchdog.due() => {
                            watchdog.ping();
                            continue;
                        }
                        _ = sleep_until_some(ready_by), if ready_by.is_some() => {
                            warn!(instance = %self.options.instance,
                                "the unit's state is not known after {READY_WAIT:?}: ready anyway, following it when the bus answers");
                            notify::ready();
                            ready_by = None;
                            continue;
                        }
                        reload = next_reload(&mut self.reloads), if self.reloads.is_some() => match reload {
                            Some(reload) => self.reconfigure(reload, &mut next_probe, &mut next_pass),
                            None => {
                                self.reloads = None;
                                continue;
                            }
                        },
                        changed = self.seams.unit.changed(), if unit_open => match changed {
                            Ok(()) => {
                                let now = self.seams.unit.borrow_and_update().clone();
                                // A departure whose states were coalesced away still counts.
                                if now.departures != departures {
                                    departures = now.departures;
                                    pending.push_back(Observation::Unit(now.active));
                                    Observation::LeftActive
                                } else {
                                    Observation::Unit(now.active)
                                }
                            }
                            Err(_) => {
                                warn!(instance = %self.options.instance, "unit watch ended; keeping the last known state");
                                unit_open = false;
                                continue;
                            }
                        },
                        passed = probe_at(&mut self.seams.probe, next_probe, &self.options.instance), if probing => {
                            next_probe = Instant::now() + self.options.interval;
                            Observation::Probe { passed }
                        }
                        _ = published.changed() => {
                            let now = published.borrow_and_update().clone();
                            self.report_status(&mut status, &now);
                            match self.confirmation(&now) {
                                Some(confirmed) => confirmed,
                                None => continue,
                            }
                        }
                        answer = run_slow(&mut slow), if slow.is_some() => {
                            slow = None;
                            match answer {
                                Some(answer) => Observation::Swap(answer),
                                None => continue,
                            }
                        }
                        _ = sleep_until_some(verify_at), if verify_at.is_some() => {
                            verify_at = None;
                            Observation::Swap(SwapObservation::VerifyDeadline)
                        }
                        _ = sleep_until_some(pass_at), if pass_at.is_some() => {
                            if let Some(updates) = self.seams.updates.take() {
                                passing = Some(Box::pin(run_pass(updates)));
                            }
                            continue;
                        }
                        (updates, pass) = run_some(&mut passing), if passing.is_some() => {
                            passing = None;
                            let (next, offer) = self.pass_finished(updates, pass);
                            next_pass = next;
                            match offer {
                                Some(plan) => Observation::Offer(plan),
                                None if next_pass.is_none() => Observation::Shutdown,
                                None => continue,
                            }
                        }
                        ask = asks::next_ask(&mut self.asks) => {
                            // One that comes while a pass is out is answered with its result.
                            if self.take_ask(ask, can_pass || passing.is_some()) {
                                next_pass = Some(Instant::now());
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until(started + ONCE_UNIT_WAIT),
                            if self.options.once && !settled => {
                            warn!(instance = %self.options.instance,
                                "the unit's state is not known after {ONCE_UNIT_WAIT:?}; going on without it");
                            continue;
                        }
                    }
                }
            };
            if ready_by.is_some()
                && matches!(&observation, Observation::Unit(s) if *s != ActiveState::Unknown)
            {
                notify::ready();
                ready_by = None;
            }
            let became_active = matches!(&observation, Observation::Unit(s) if s.is_active())
                && !self.agent.unit.is_active();
            if became_active {
                next_probe = Instant::now();
            }
            let was_updating = matches!(self.agent.phase, Phase::Updating(_));
            let (agent, actions) = match recovered.take() {
                Some((swap, actions)) => {
                    pending.push_front(observation);
                    state::resume(self.agent, swap, actions)
                }
                None => state::next(self.agent, observation),
            };
            self.agent = agent;
            self.swap_timer.observe(&self.agent.phase);
            // Before the actions: a registration they publish carries the record as it is now.
            self.update_record(None, None);
            let mut batch = Vec::new();
            for action in actions {
                match action {
                    Action::Register => {
                        info!(instance = %self.options.instance, "unit active and healthy: registering");
                        self.seams.registry.register(self.entries());
                        self.unpublished = false;
                    }
                    Action::Deregister => {
                        info!(instance = %self.options.instance, "{}: deregistering", self.agent.status());
                        self.seams.registry.deregister();
                    }
                    Action::Stop => {
                        notify::notify(&[
                            NotifyState::Stopping,
                            NotifyState::Status("stopping: deregistering"),
                        ]);
                        // What the swap gives back on the way out (a slot not yet used).
                        if let Some(last) =
                            self.swap_steps(std::mem::take(&mut batch), &mut verify_at)
                        {
                            let _ = tokio::time::timeout(SHUTDOWN_DEADLINE, last).await;
                        }
                        let etcd_requests = self.seams.registry.requests();
                        self.seams.registry.shutdown(SHUTDOWN_DEADLINE).await;
                        return DriverReport { etcd_requests };
                    }
                    Action::Swap(action) => batch.push(action),
                }
            }
            if let Some(step) = self.swap_steps(batch, &mut verify_at) {
                // A step still in flight (an event being sent) finishes first.
                slow = Some(match slow.take() {
                    Some(earlier) => Box::pin(async move {
                        let first = earlier.await;
                        step.await.or(first)
                    }),
                    None => step,
                });
            }
            if !matches!(&self.agent.phase, Phase::Updating(s) if matches!(s.stage, Stage::Verifying { .. } | Stage::VerifyingOld { .. }))
            {
                verify_at = None;
            }
            if let Some(confirmed) = self.confirmation(&published.borrow()) {
                pending.push_back(confirmed);
            }
            if was_updating && self.agent.phase == Phase::Serving {
                info!(instance = %self.options.instance, "swap over");
                match self.options.once {
                    true => pending.push_back(Observation::Shutdown),
                    false => next_pass = next_pass.or(Some(Instant::now())),
                }
            }
            self.publish_changes();
            self.report_status(&mut status, &published.borrow());
        }
    }

    /// Journals the swap, does its quick steps at once and returns the slow ones as one future.
    fn swap_steps(
        &mut self,
        batch: Vec<SwapAction>,
        verify_at: &mut Option<Instant>,
    ) -> Option<SlowStep> {
        let updates = self.seams.updates.as_mut()?;
        if batch.is_empty() {
            return None;
        }
        // Events report the version the instance ran before the swap.
        let current = match &self.agent.phase {
            Phase::Updating(swap) => {
                updates.journal(swap);
                if let Stage::Stranded { .. } = swap.stage {
                    tracing::error!(instance = %self.options.instance, "{}", swap.status());
                }
                semver::Version::parse(&swap.plan.old.version).ok()
            }
            _ => None,
        };
        let current = current
            .or_else(|| updates.running().cloned())
            .unwrap_or_else(|| semver::Version::new(0, 0, 0));
        for action in &batch {
            match action {
                SwapAction::StartVerifyDeadline => {
                    let timeout = updates.verify_timeout();
                    *verify_at = Some(Instant::now() + timeout);
                    if updates.dry_run() {
                        let health = match self.agent.unchecked {
                            true => "no health check configured".to_string(),
                            false => format!(
                                "the health check passing {} times in a row",
                                self.agent.health.progress().1
                            ),
                        };
                        let within = humantime::format_duration(timeout);
                        would(format_args!(
                            "verify {}: active, and {health}, within {within}",
                            self.options.unit_name
                        ));
                    }
                }
                SwapAction::Denylist { version } => updates.deny(version),
                SwapAction::ClearJournal => updates.clear_journal(),
                _ => {}
            }
        }
        Some(updates.steps(current, batch))
    }

    /// What etcd confirms that the agent waits for: the swap's deregistration gone, or its
    /// registration back after verification; outside a swap, the first registration after start.
    fn confirmation(&self, published: &Published) -> Option<Observation> {
        let registered = matches!(published, Published::Registered { .. }) && self.agent.registered;
        let Phase::Updating(swap) = &self.agent.phase else {
            let first = registered && self.agent.stale_slot && self.agent.phase == Phase::Serving;
            return first.then_some(Observation::Registered);
        };
        let confirmed = match (&swap.stage, published) {
            (Stage::Deregistering, Published::Absent) => SwapObservation::Deregistered,
            (Stage::Registering { .. }, _) if registered => SwapObservation::Registered,
            _ => return None,
        };
        Some(Observation::Swap(confirmed))
    }

    /// On start: a swap left in the journal, resumed; an unreadable journal stops updates here.
    async fn recover(
        &mut self,
    ) -> Option<(crate::agent::machine::swap::SwapPhase, Vec<SwapAction>)> {
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

    /// Whether the registration has caught up with the agent's decision on a known unit state
    /// (or `--once` waited long enough for one).
    fn settled(&self, published: &Published, started: Instant) -> bool {
        if self.options.once && started.elapsed() >= ONCE_UNIT_WAIT {
            return true;
        }
        let known = self.agent.unit != ActiveState::Unknown;
        let caught_up = self.agent.registered == matches!(published, Published::Registered { .. });
        known && caught_up
    }

    /// Takes back the update pass that `pass` ran on; returns when the next one is due (`None`
    /// when `once` is done) and the swap a valid offer asks for.
    fn pass_finished(
        &mut self,
        mut updates: UpdatePass<C>,
        pass: PassResult,
    ) -> (
        Option<Instant>,
        Option<crate::agent::machine::swap::SwapPlan>,
    ) {
        let PassResult { label, delay, plan } = pass;
        if let Some(reload) = self.held_update_reload.take() {
            updates.hold_reload(reload);
        }
        let running = updates.running().map(ToString::to_string);
        self.seams.updates = Some(updates);
        if let Some(metrics) = &self.options.metrics {
            metrics.update_checked(label);
            if let Some(running) = &running {
                metrics.set_version(running);
            }
        }
        let next = (!self.options.once || plan.is_some()).then(|| Instant::now() + delay);
        self.update_record(Some(label), running);
        self.publish_changes();
        self.pass_done(label);
        (next, plan)
    }

    /// Sends STATUS when the line changed.
    fn report_status(&self, last: &mut String, published: &Published) {
        if let Some(metrics) = &self.options.metrics {
            metrics.set_phase(self.agent.phase.label());
            metrics.set_registered(matches!(published, Published::Registered { .. }));
        }
        let load = self.seams.unit.borrow().load.clone();
        let line = status_line(&self.agent, published, &load, &self.options.unit_name);
        self.show_state();
        if *last != line {
            debug!(instance = %self.options.instance, "status: {line}");
            notify::notify(&[NotifyState::Status(&line)]);
            *last = line;
        }
    }
}

/// The sd_notify STATUS line: what is true of the registration, and why not when it is not.
fn status_line(agent: &Agent, published: &Published, load: &LoadState, unit: &str) -> String {
    match published {
        _ if load.is_unusable() => format!("not registered: unit {unit} is {load}"),
        Published::Unreachable { error } if agent.registered => {
            format!("not registered: etcd unreachable ({error})")
        }
        _ => agent.status(),
    }
}

/// Runs one update pass on `updates`, taken out of the seams for the time, and gives it back.
async fn run_pass<C: UnitControl + 'static>(
    mut updates: UpdatePass<C>,
) -> (UpdatePass<C>, PassResult) {
    let result = updates.poll().await;
    (updates, result)
}

/// The output of the future in `slot`; never resolves when there is none.
async fn run_some<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The slow step's answer; never resolves when none is in flight.
async fn run_slow(slow: &mut Option<SlowStep>) -> Option<SwapObservation> {
    match slow {
        Some(step) => step.await,
        None => std::future::pending().await,
    }
}

/// The next reloaded settings; never resolves without a channel.
async fn next_reload<T>(reloads: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match reloads {
        Some(reloads) => reloads.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never resolves for `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until `at`, runs the probe once and logs a failure.
async fn probe_at<P: Probe>(probe: &mut P, at: Instant, instance: &str) -> bool {
    tokio::time::sleep_until(at).await;
    match probe.check().await {
        Ok(()) => true,
        Err(err) => {
            warn!(instance = %instance, kind = err.kind(), "health check failed: {err}");
            false
        }
    }
}

#[cfg(test)]
mod tests;
