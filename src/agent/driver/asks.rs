//! The driver's side of the control socket ([`crate::control`]): a "check now" runs the update
//! pass at once when the instance is serving (and is answered with the pass's result), or is
//! answered at once with why not; and the state the socket shows is kept up to date.

use tokio::sync::oneshot;

use super::Driver;
use crate::agent::machine::state::Phase;
use crate::control::{CheckAsk, CheckReport, DaemonLink, DaemonState};
use crate::health::Probe;
use crate::registry::{Published, Registry};
use crate::systemd::control::UnitControl;

/// The link to the control socket, the asks waiting for the next pass, and the last check.
#[derive(Debug)]
pub(super) struct Asks {
    link: DaemonLink,
    waiting: Vec<oneshot::Sender<CheckReport>>,
    /// When the last pass checked (RFC 3339), and its result's label.
    last_check: Option<(String, &'static str)>,
}

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Answers the control socket's asks and shows it this driver's state.
    pub fn with_control(mut self, link: DaemonLink) -> Self {
        self.asks = Some(Asks {
            link,
            waiting: Vec::new(),
            last_check: None,
        });
        self.show_state();
        self
    }

    /// Takes a "check now": true when the pass is to run at once (`can_pass`: serving, settled,
    /// with updates), else answers it with the reason.
    pub(super) fn take_ask(&mut self, ask: CheckAsk, can_pass: bool) -> bool {
        if can_pass {
            if let Some(asks) = self.asks.as_mut() {
                asks.waiting.push(ask.reply);
            }
            return true;
        }
        let refusal = match &self.agent.phase {
            _ if self.seams.updates.is_none() => CheckReport::error(
                "updates-off",
                "this sidekick does not check for updates (update.enabled is false, \
                 update.server is not set, or updates stopped on an error: see its log)",
            ),
            Phase::Updating(swap) => CheckReport::error(
                "swap-in-progress",
                format!("a swap is in progress: {}", swap.status()),
            ),
            Phase::Stopping => CheckReport::error("stopping", "the daemon is stopping"),
            Phase::Serving => CheckReport::error(
                "not-serving",
                format!(
                    "not serving yet (the unit's state is not known or the registration has not \
                     settled): {}",
                    self.agent.status()
                ),
            ),
        };
        let _ = ask.reply.send(refusal);
        false
    }

    /// After a pass labelled `label`: remembers it, and answers the asks that wait for it and
    /// those that came while it ran with its result.
    pub(super) fn pass_done(&mut self, label: &'static str) {
        let report = self
            .seams
            .updates
            .as_ref()
            .and_then(|u| u.last_report().cloned())
            .unwrap_or_else(|| CheckReport::error("not-checked", "the pass did not check"));
        let Some(asks) = self.asks.as_mut() else {
            return;
        };
        asks.last_check = Some((crate::slot::now_rfc3339(), label));
        while let Ok(ask) = asks.link.asks.try_recv() {
            asks.waiting.push(ask.reply);
        }
        for reply in asks.waiting.drain(..) {
            let _ = reply.send(report.clone());
        }
        self.show_state();
    }

    /// Publishes the state the control socket shows, when it changed.
    pub(super) fn show_state(&self) {
        let Some(asks) = &self.asks else {
            return;
        };
        let published = self.seams.registry.published().borrow().clone();
        let unit = self.seams.unit.borrow().clone();
        let status = super::status::status_line(
            &self.agent,
            &published,
            &unit.load,
            &self.options.unit_name,
        );
        let (last_check, last_result) = match &asks.last_check {
            Some((at, label)) => (Some(at.clone()), Some(label.to_string())),
            None => (None, None),
        };
        let state = DaemonState {
            instance: self.options.instance.clone(),
            unit: self.options.unit_name.clone(),
            active_state: unit.active.to_string(),
            load_state: unit.load.to_string(),
            phase: super::record::shown_phase(&self.agent).0.to_string(),
            status,
            registered: matches!(published, Published::Registered { .. }),
            version: self
                .seams
                .updates
                .as_ref()
                .and_then(|u| u.running())
                .map(ToString::to_string),
            last_check,
            last_result,
            pid: std::process::id(),
        };
        asks.link.state.send_if_modified(|shown| {
            let changed = *shown != state;
            if changed {
                *shown = state;
            }
            changed
        });
    }
}

/// The next "check now"; never resolves without a control socket.
pub(super) async fn next_ask(asks: &mut Option<Asks>) -> CheckAsk {
    match asks {
        Some(asks) => match asks.link.asks.recv().await {
            Some(ask) => ask,
            // The socket is gone (it is dropped only after the driver): nothing more comes.
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
