//! Update windows with zincati's periodic-strategy semantics, pure: given an instant, is a window
//! open, when does the next one open, when does the open one close, how long a start jitter may
//! be, and whether a swap of a given duration finishes before the close.
//!
//! As in zincati (docs/usage/updates-strategy.md), the windows form one weekly calendar of wall
//! clock minutes in the configured zone: overlapping or touching windows are one opening, a
//! window runs past midnight and past Sunday into Monday, and wall clock times are always obeyed.
//! So on a daylight-saving change a window is shortened (the skipped hour is never inside it) or
//! lengthened (a repeated wall clock time is inside it both times), and may open twice.
//!
//! The calendar is a bitmap of the week's 10,080 minutes; an instant is inside when its wall
//! clock minute is set. Zone offsets are whole minutes and change on whole minutes (every zone
//! since 1972), so the answer is constant within a UTC minute and the edges are found by stepping
//! whole minutes through at most [`HORIZON_MINUTES`].

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::policy::{MINUTES_PER_DAY, MINUTES_PER_WEEK, Window};

/// How far ahead (and back) an edge is looked for: a week and a day, so every weekly window is
/// met even across a daylight-saving change.
pub const HORIZON_MINUTES: i64 = (MINUTES_PER_WEEK + MINUTES_PER_DAY) as i64;

/// The longest start jitter, whatever the window's length (locksmith users asked for one).
pub const MAX_START_JITTER: Duration = Duration::from_secs(10 * 60);

/// The weekly calendar of a policy's windows in its zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    zone: TimeZone,
    /// `None`: no window is configured, so updates are never held for one.
    week: Option<Vec<bool>>,
}

/// Where an instant stands against the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// No window is configured.
    Unrestricted,
    /// Inside an opening that began at `opened` (or earlier than the horizon: `None`) and closes
    /// at `closes` (`None`: not within the horizon, the windows cover the whole week).
    Open {
        opened: Option<Timestamp>,
        closes: Option<Timestamp>,
    },
    /// Outside every window; the next opens at `opens` (`None`: none within the horizon).
    Closed { opens: Option<Timestamp> },
}

/// Whether a swap may start now as far as the windows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// No window applies, or the swap ends before the open window closes.
    Fits,
    /// Outside every window.
    Closed { opens: Option<Timestamp> },
    /// Inside a window that closes before a swap of `needs` would finish.
    TooShort { closes: Timestamp, needs: Duration },
}

fn minute_floor(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second().div_euclid(60) * 60).unwrap_or(t)
}

fn plus_minutes(t: Timestamp, minutes: i64) -> Option<Timestamp> {
    t.checked_add(SignedDuration::from_mins(minutes)).ok()
}

impl Schedule {
    /// The calendar of `windows` read in `zone`.
    pub fn new(windows: &[Window], zone: TimeZone) -> Schedule {
        if windows.is_empty() {
            return Schedule { zone, week: None };
        }
        let mut week = vec![false; MINUTES_PER_WEEK as usize];
        for window in windows {
            for day in &window.days {
                let first =
                    u32::from(day.to_monday_zero_offset() as u8) * MINUTES_PER_DAY + window.start;
                for minute in first..first + window.length {
                    week[(minute % MINUTES_PER_WEEK) as usize] = true;
                }
            }
        }
        Schedule {
            zone,
            week: Some(week),
        }
    }

    /// Whether `t` is inside a window (always, with none configured).
    pub fn contains(&self, t: Timestamp) -> bool {
        let Some(week) = &self.week else {
            return true;
        };
        let local = t.to_zoned(self.zone.clone()).datetime();
        let minute = u32::from(local.weekday().to_monday_zero_offset() as u8) * MINUTES_PER_DAY
            + local.hour() as u32 * 60
            + local.minute() as u32;
        week[minute as usize]
    }

    /// The first whole minute after `t`, within the horizon, whose state differs from `t`'s.
    fn next_change(&self, t: Timestamp) -> Option<Timestamp> {
        let now = self.contains(t);
        let start = minute_floor(t);
        (1..=HORIZON_MINUTES)
            .filter_map(|i| plus_minutes(start, i))
            .find(|&m| self.contains(m) != now)
    }

    /// The start of the opening `t` is in, within the horizon.
    fn opened(&self, t: Timestamp) -> Option<Timestamp> {
        let mut opened = minute_floor(t);
        for _ in 0..HORIZON_MINUTES {
            let before = plus_minutes(opened, -1)?;
            if !self.contains(before) {
                return Some(opened);
            }
            opened = before;
        }
        None
    }

    /// Where `t` stands.
    pub fn state_at(&self, t: Timestamp) -> WindowState {
        if self.week.is_none() {
            return WindowState::Unrestricted;
        }
        if self.contains(t) {
            WindowState::Open {
                opened: self.opened(t),
                closes: self.next_change(t),
            }
        } else {
            WindowState::Closed {
                opens: self.next_change(t),
            }
        }
    }

    /// Whether a swap of `needs`, started at `t`, ends before the open window closes. A swap that
    /// holds a slot always finishes; this only decides whether to take one.
    pub fn fits(&self, t: Timestamp, needs: Duration) -> Fit {
        match self.state_at(t) {
            WindowState::Unrestricted | WindowState::Open { closes: None, .. } => Fit::Fits,
            WindowState::Closed { opens } => Fit::Closed { opens },
            WindowState::Open {
                closes: Some(closes),
                ..
            } => {
                let left = closes.duration_since(t);
                if SignedDuration::try_from(needs).is_ok_and(|needs| needs <= left) {
                    Fit::Fits
                } else {
                    Fit::TooShort { closes, needs }
                }
            }
        }
    }
}

/// The longest start jitter for an opening from `opened` to `closes`: a quarter of its length,
/// at most [`MAX_START_JITTER`] (an opening with an unknown end counts as long).
pub fn jitter_bound(opened: Option<Timestamp>, closes: Option<Timestamp>) -> Duration {
    let (Some(opened), Some(closes)) = (opened, closes) else {
        return MAX_START_JITTER;
    };
    let length = Duration::try_from(closes.duration_since(opened)).unwrap_or(Duration::ZERO);
    (length / 4).min(MAX_START_JITTER)
}

/// The jitter for a `draw` in [0, 1) (a uniform random number): `draw` of `bound`.
pub fn start_jitter(bound: Duration, draw: f64) -> Duration {
    bound.mul_f64(draw.clamp(0.0, 1.0))
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
