//! The driver's side of the update pass: sends it out to run beside the loop when it is due, and
//! takes it back with its result, which goes to the metrics, the instance record and the asks
//! waiting on the control socket.

use tokio::time::Instant;

use super::Driver;
use super::loop_state::LoopState;
use crate::agent::machine::swap::SwapPlan;
use crate::agent::update::UpdatePass;
use crate::agent::update::pass::PassResult;
use crate::health::Probe;
use crate::registry::Registry;
use crate::systemd::control::UnitControl;

impl<R: Registry, P: Probe, C: UnitControl + 'static> Driver<R, P, C> {
    /// Sends the update pass out, taken out of the seams for the time it runs.
    pub(super) fn send_pass(&mut self, state: &mut LoopState<C>) {
        if let Some(mut updates) = self.seams.updates.take() {
            let serving = self.agent.takes_offer();
            state.passing = Some(Box::pin(async move {
                let result = updates.poll(serving).await;
                (updates, result)
            }));
        }
    }

    /// Takes back the update pass that `pass` ran on; returns when the next one is due (`None`
    /// when `once` is done) and the swap a valid offer asks for.
    pub(super) fn pass_finished(
        &mut self,
        mut updates: UpdatePass<C>,
        pass: PassResult,
    ) -> (Option<Instant>, Option<SwapPlan>) {
        let PassResult { label, delay, plan } = pass;
        // An offer the agent would not take (unit not serving) is no reason for `--once` to go on;
        // the machine still sees it, to give its grant back.
        let taken = plan.is_some() && self.agent.takes_offer();
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
        let next = (!self.options.once || taken).then(|| Instant::now() + delay);
        self.update_record(Some(label), running);
        self.publish_changes();
        self.pass_done(label);
        (next, plan)
    }
}
