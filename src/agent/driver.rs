//! The tokio loop around the state machine: turns unit changes, probe results and signals into
//! observations, feeds them to [`state::next`], and performs the actions through the seams
//! ([`Registry`], [`Probe`]). Reports progress with sd_notify STATUS.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::state::{self, Action, Agent, Observation};
use crate::health::Probe;
use crate::registry::{Entry, Published, Registry};
use crate::systemd::{ActiveState, UnitState};

/// How long shutdown may take to revoke the lease, leaving room in the 2 s stop budget.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(1500);

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverReport {
    /// etcd requests the registry made (RPCs and keepalive messages).
    pub etcd_requests: u64,
}

/// The loop's inputs and seams.
pub struct Driver<R: Registry, P: Probe> {
    pub agent: Agent,
    pub registry: R,
    pub probe: P,
    /// The bound unit's `ActiveState` and departures from `active`, deduplicated.
    pub unit: watch::Receiver<UnitState>,
    /// The registration's keys and values.
    pub entries: Vec<Entry>,
    /// Probe period while the unit is active.
    pub interval: Duration,
    /// Instance name for log lines.
    pub instance: String,
}

impl<R: Registry, P: Probe> Driver<R, P> {
    /// Runs until `shutdown` resolves, then deregisters and returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> DriverReport {
        tokio::pin!(shutdown);
        let mut published = self.registry.published();
        let mut unit_open = true;
        let mut next_probe = Instant::now();
        let mut status = String::new();
        notify(&[sd_notify::NotifyState::Ready]);
        let initial = self.unit.borrow_and_update().clone();
        let mut departures = initial.departures;
        let mut pending = VecDeque::new();
        if initial.active != ActiveState::Unknown {
            pending.push_back(Observation::Unit(initial.active));
        }
        loop {
            let observation = match pending.pop_front() {
                Some(observation) => observation,
                None => {
                    let probing = self.agent.probing();
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => Observation::Shutdown,
                        changed = self.unit.changed(), if unit_open => match changed {
                            Ok(()) => {
                                let now = self.unit.borrow_and_update().clone();
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
                                warn!(instance = %self.instance, "unit watch ended; keeping the last known state");
                                unit_open = false;
                                continue;
                            }
                        },
                        passed = probe_at(&mut self.probe, next_probe, &self.instance), if probing => {
                            next_probe = Instant::now() + self.interval;
                            Observation::Probe { passed }
                        }
                        _ = published.changed() => {
                            self.report_status(&mut status, &published.borrow_and_update());
                            continue;
                        }
                    }
                }
            };
            let became_active = matches!(&observation, Observation::Unit(s) if s.is_active())
                && !self.agent.unit.is_active();
            if became_active {
                next_probe = Instant::now();
            }
            let (agent, actions) = state::next(self.agent, observation);
            self.agent = agent;
            for action in actions {
                match action {
                    Action::Register => {
                        info!(instance = %self.instance, "unit active and healthy: registering");
                        self.registry.register(self.entries.clone());
                    }
                    Action::Deregister => {
                        info!(instance = %self.instance, "{}: deregistering", self.agent.status());
                        self.registry.deregister();
                    }
                    Action::Stop => {
                        notify(&[
                            sd_notify::NotifyState::Stopping,
                            sd_notify::NotifyState::Status("stopping: deregistering"),
                        ]);
                        let etcd_requests = self.registry.requests();
                        self.registry.shutdown(SHUTDOWN_DEADLINE).await;
                        return DriverReport { etcd_requests };
                    }
                    // Nothing feeds offers to the agent yet, so no swap step reaches here.
                    Action::Swap(action) => {
                        warn!(instance = %self.instance, ?action, "swap step ignored: this driver does not swap");
                    }
                }
            }
            self.report_status(&mut status, &published.borrow());
        }
    }

    /// Sends STATUS when the line changed.
    fn report_status(&self, last: &mut String, published: &Published) {
        let mut line = self.agent.status();
        if let Published::Unreachable { error } = published {
            line.push_str(&format!(" (etcd unreachable: {error})"));
        }
        if *last != line {
            debug!(instance = %self.instance, "status: {line}");
            notify(&[sd_notify::NotifyState::Status(&line)]);
            *last = line;
        }
    }
}

/// Waits until `at`, runs the probe once and logs a failure.
async fn probe_at<P: Probe>(probe: &mut P, at: Instant, instance: &str) -> bool {
    tokio::time::sleep_until(at).await;
    match probe.check().await {
        Ok(()) => true,
        Err(err) => {
            warn!(instance = %instance, error = %err, kind = err.kind(), "health check failed");
            false
        }
    }
}

/// sd_notify, ignoring errors: outside systemd there is no socket and nothing to tell.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::health::{HealthStreak, ProbeError};
    use crate::registry::{Desired, MemoryRegistry};
    use crate::systemd::{MemoryUnits, UnitManager};

    /// A probe whose answers the test flips.
    #[derive(Clone)]
    struct Switch(watch::Receiver<bool>);

    impl Probe for Switch {
        async fn check(&mut self) -> Result<(), ProbeError> {
            match *self.0.borrow() {
                true => Ok(()),
                false => Err(ProbeError::Timeout(Duration::ZERO)),
            }
        }
    }

    async fn wait_for(registry: &MemoryRegistry, want: bool) {
        let mut published = registry.published();
        let wait = published.wait_for(|p| matches!(p, Published::Registered { .. }) == want);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("registry state in time")
            .expect("registry alive");
    }

    #[tokio::test]
    async fn follows_unit_and_probe_and_deregisters_on_shutdown() {
        let units = MemoryUnits::new(ActiveState::Inactive);
        let registry = MemoryRegistry::new();
        let (healthy, probe) = watch::channel(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let n = |v| NonZeroU32::new(v).unwrap();
        let driver = Driver {
            agent: Agent::new(HealthStreak::new(n(2), n(1)), false),
            registry: registry.clone(),
            probe: Switch(probe),
            unit: units.unit_state(),
            entries: vec![("k".into(), "v".into())],
            interval: Duration::from_millis(10),
            instance: "web-1".into(),
        };
        let run = tokio::spawn(driver.run(async {
            let _ = stopped.await;
        }));
        units.set(ActiveState::Active);
        wait_for(&registry, true).await;
        healthy.send_replace(false);
        wait_for(&registry, false).await;
        healthy.send_replace(true);
        wait_for(&registry, true).await;
        units.set(ActiveState::Deactivating);
        wait_for(&registry, false).await;
        let _ = stop.send(());
        run.await.unwrap();
        assert_eq!(registry.history().last(), Some(&Desired::Shutdown));
        assert_eq!(registry.current(), None);
    }

    #[tokio::test]
    async fn a_restart_seen_only_as_active_again_deregisters_and_waits_for_rise() {
        let units = MemoryUnits::new(ActiveState::Active);
        let registry = MemoryRegistry::new();
        let (_healthy, probe) = watch::channel(true);
        let n = |v| NonZeroU32::new(v).unwrap();
        let driver = Driver {
            agent: Agent::new(HealthStreak::new(n(2), n(2)), false),
            registry: registry.clone(),
            probe: Switch(probe),
            unit: units.unit_state(),
            entries: vec![("k".into(), "v".into())],
            interval: Duration::from_millis(10),
            instance: "web-1".into(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(driver.run(async {
            let _ = stopped.await;
        }));
        wait_for(&registry, true).await;
        let before = registry.history().len();
        // All three before the driver runs again: it sees only the latest value.
        units.set(ActiveState::Deactivating);
        units.set(ActiveState::Activating);
        units.set(ActiveState::Active);
        let mut published = registry.published();
        let again = published.wait_for(|_| registry.history().len() >= before + 2);
        tokio::time::timeout(Duration::from_secs(5), again)
            .await
            .expect("deregistered and registered again in time")
            .expect("registry alive");
        let entries = vec![("k".to_string(), "v".to_string())];
        assert_eq!(
            registry.history()[before..],
            [Desired::Absent, Desired::Present(entries)]
        );
        let _ = stop.send(());
        run.await.unwrap();
    }
}
