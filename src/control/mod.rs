//! The local control socket: a Unix socket in the instance's runtime directory
//! (`daemon.control_socket`, by default `/run/sidekick/<unit>/control.sock`, the shipped unit's
//! `RuntimeDirectory=sidekick/%i`) through which `sidekick update-check` asks the running daemon
//! to check now, instead of sending a check of its own, and `sidekick status` reads the daemon's
//! view of its instance.
//!
//! Why a check goes through the daemon: in Nebraska (and CoreUpdate) an update check that is
//! answered with an offer *is* a grant. It counts against the group's limits and times out when no
//! update follows, so a second check from the command line beside the daemon's own would use a
//! grant the daemon never acts on.
//!
//! The wire format is in [`protocol`]; the daemon's end ([`server`]) hands "check now" to the
//! driver through a [`DaemonLink`] and answers "state" from the snapshot the driver keeps there;
//! [`client`] is the commands' end.

pub mod client;
pub mod protocol;
pub mod server;

use tokio::sync::{mpsc, oneshot, watch};

pub use protocol::{CheckReport, DaemonState, Request};

/// How many "check now" asks may wait for the driver at once; more are answered "busy".
const ASK_QUEUE: usize = 8;

/// One "check now": the driver runs its update pass and sends the result back.
#[derive(Debug)]
pub struct CheckAsk {
    pub reply: oneshot::Sender<CheckReport>,
}

/// The driver's end: the asks to answer, and where to keep its state for `state` requests.
#[derive(Debug)]
pub struct DaemonLink {
    pub asks: mpsc::Receiver<CheckAsk>,
    pub state: watch::Sender<DaemonState>,
}

/// The socket's end of a [`DaemonLink`].
#[derive(Debug, Clone)]
pub struct DaemonHandle {
    asks: mpsc::Sender<CheckAsk>,
    state: watch::Receiver<DaemonState>,
}

/// A connected pair, the state starting at `initial`.
pub fn link(initial: DaemonState) -> (DaemonLink, DaemonHandle) {
    let (ask, asks) = mpsc::channel(ASK_QUEUE);
    let (state, shown) = watch::channel(initial);
    (
        DaemonLink { asks, state },
        DaemonHandle {
            asks: ask,
            state: shown,
        },
    )
}

impl DaemonHandle {
    /// The driver's latest state.
    pub fn state(&self) -> DaemonState {
        self.state.borrow().clone()
    }

    /// Asks the driver to check now; its report, or why there is none within `limit`.
    pub async fn check_now(&self, limit: std::time::Duration) -> CheckReport {
        let (reply, answer) = oneshot::channel();
        if let Err(err) = self.asks.try_send(CheckAsk { reply }) {
            return match err {
                mpsc::error::TrySendError::Full(_) => CheckReport::error(
                    "busy",
                    format!("{ASK_QUEUE} checks are already waiting for the daemon"),
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    CheckReport::error("stopping", "the daemon is stopping")
                }
            };
        }
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(report)) => report,
            Ok(Err(_)) => CheckReport::error(
                "stopping",
                "the daemon stopped before it answered the check",
            ),
            Err(_) => CheckReport::error(
                "timeout",
                format!(
                    "the daemon did not finish the check within {}",
                    humantime::format_duration(limit)
                ),
            ),
        }
    }
}
