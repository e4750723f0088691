//! Keeping the registration lease alive over etcd-client's keepalive stream, every TTL/3.

use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::Client;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use super::RegistrationLease;
use crate::registry::error::{LeaseError, rpc};

impl RegistrationLease {
    /// Sends a keepalive every TTL/3 and reads the answers, until the desired state changes
    /// (`Ok`) or the stream or lease fails (`Err`).
    pub(super) async fn keep_alive(
        &mut self,
        client: &mut Client,
        id: i64,
        ttl: Duration,
    ) -> Result<(), LeaseError> {
        self.count();
        let opened = tokio::select! {
            biased;
            _ = self.desired.changed() => return Ok(()),
            opened = client.lease_keep_alive(id) => opened,
        };
        let (mut keeper, mut stream) = opened.map_err(rpc("lease keepalive"))?;
        debug!(
            etcd_requests = self.requests.load(Ordering::Relaxed),
            "keepalive stream open"
        );
        let period = (ttl / 3).max(Duration::from_millis(500));
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut unanswered = false;
        // `keeper` sent one keepalive on open: its answer is the first message.
        loop {
            tokio::select! {
                _ = self.desired.changed() => return Ok(()),
                _ = tick.tick() => {
                    if unanswered {
                        return Err(LeaseError::Stalled);
                    }
                    self.count();
                    keeper.keep_alive().await.map_err(rpc("lease keepalive"))?;
                    unanswered = true;
                    debug!(etcd_requests = self.requests.load(Ordering::Relaxed), "keepalive sent");
                }
                message = stream.message() => match message {
                    Ok(Some(answer)) if answer.ttl() > 0 => unanswered = false,
                    Ok(Some(_)) => return Err(LeaseError::Gone(id)),
                    Ok(None) => return Err(LeaseError::StreamEnded),
                    Err(e) => return Err(rpc("lease keepalive")(e)),
                },
            }
        }
    }
}
