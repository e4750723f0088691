//! sd_notify: `READY=1`, `STATUS=`, `STOPPING=1`, `RELOADING=1` and the watchdog's `WATCHDOG=1`
//! (<https://www.freedesktop.org/software/systemd/man/sd_notify.html>). Outside systemd there is
//! no socket and nothing to tell, so every send ignores errors.
//!
//! The watchdog is pinged from the daemon's main loop (a select arm of the driver), never from a
//! task of its own: when the loop is stuck the pings stop and systemd restarts the unit.

use std::future::Future;
use std::time::Duration;

pub use sd_notify::NotifyState;
use tokio::time::{Interval, MissedTickBehavior};

/// Sends `states`, ignoring errors.
pub fn notify(states: &[NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

/// `READY=1`: started, or done reloading.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC=` newer systemd versions ask for with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The watchdog systemd asked for (`WATCHDOG_USEC`, for this process by `WATCHDOG_PID`): pinged
/// every half of its period.
pub struct Watchdog {
    ticks: Option<Interval>,
}

impl Watchdog {
    /// The watchdog of this process's environment; one that never ticks when none is set.
    pub fn from_env() -> Watchdog {
        Watchdog::every(sd_notify::watchdog_enabled().map(ping_period))
    }

    /// A watchdog pinged every `period` (`None`: never).
    pub fn every(period: Option<Duration>) -> Watchdog {
        let ticks = period.map(|period| {
            let mut ticks = tokio::time::interval(period);
            // After a stall, one ping and then the normal pace, not a burst.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        });
        Watchdog { ticks }
    }

    /// How often it pings, if at all.
    pub fn period(&self) -> Option<Duration> {
        self.ticks.as_ref().map(Interval::period)
    }

    /// Resolves when the next ping is due; never when no watchdog is set.
    pub async fn due(&mut self) {
        match &mut self.ticks {
            Some(ticks) => {
                ticks.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Sends `WATCHDOG=1` when a watchdog is set.
    pub fn ping(&self) {
        if self.ticks.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
    }

    /// Awaits `work` while keeping the pings going: for a bounded step the loop itself awaits
    /// (the journal recovery at start), which is waiting, not being stuck.
    pub async fn awaiting<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = self.due() => self.ping(),
            }
        }
    }
}

/// Half the watchdog period, as sd_watchdog_enabled(3) recommends.
fn ping_period(watchdog: Duration) -> Duration {
    (watchdog / 2).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_every_half_of_the_watchdog_period() {
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            ping_period(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
    }

    #[tokio::test]
    async fn without_a_watchdog_nothing_is_due() {
        let mut none = Watchdog::every(None);
        assert_eq!(none.period(), None);
        let due = tokio::time::timeout(Duration::from_millis(200), none.due()).await;
        assert!(due.is_err(), "a missing watchdog came due");
    }

    #[tokio::test]
    async fn awaiting_a_step_longer_than_the_period_returns_its_answer() {
        let mut watchdog = Watchdog::every(Some(Duration::from_millis(20)));
        assert_eq!(watchdog.period(), Some(Duration::from_millis(20)));
        let answer = watchdog
            .awaiting(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                7
            })
            .await;
        assert_eq!(answer, 7);
    }
}
