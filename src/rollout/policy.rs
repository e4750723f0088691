//! The rollout policy of a group: its written form ([`PolicyText`], the `[rollout]` section of the
//! configuration and the JSON stored at `/sidekick/policy/<group>`), its validated form
//! ([`RolloutPolicy`]), the bounds of every key, and `KEY=VALUE` edits for `sidekick rollout set`.
//!
//! One validation serves the configuration file, the stored value and the command line, so a
//! policy that one of them accepts every other accepts too.

use std::num::NonZeroU32;
use std::time::Duration;

use jiff::civil::Weekday;
use serde::{Deserialize, Serialize};

/// Minutes in a day and in a week: window starts and lengths are whole minutes, as in zincati.
pub const MINUTES_PER_DAY: u32 = 24 * 60;
pub const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;

/// Most windows a policy may list (each names up to seven days).
pub const MAX_WINDOWS: usize = 64;
/// Largest `canary` and `max_failures` accepted.
pub const MAX_COUNT: u32 = 1000;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Each duration key with its floor and ceiling (both included).
pub const DURATION_BOUNDS: [(&str, Duration, Duration); 4] = [
    ("min_healthy", Duration::ZERO, secs(3600)),
    ("monitor", Duration::ZERO, secs(24 * 3600)),
    ("canary_bake", Duration::ZERO, secs(7 * 24 * 3600)),
    ("batch_delay", Duration::ZERO, secs(24 * 3600)),
];

/// Whether the rest of a version's rollout waits for `sidekick rollout promote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Promote {
    Auto,
    Manual,
}

/// The time zone windows are read in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneName {
    Utc,
    /// `/etc/localtime` (UTC where it does not exist), as zincati does.
    Local,
    Iana(String),
}

impl ZoneName {
    /// `UTC`, `localtime`, or a name the time zone database knows.
    pub fn parse(text: &str) -> Result<ZoneName, String> {
        match text {
            "UTC" => Ok(ZoneName::Utc),
            "localtime" => Ok(ZoneName::Local),
            name => match jiff::tz::db().get(name) {
                Ok(_) => Ok(ZoneName::Iana(name.to_string())),
                Err(_) => Err(format!(
                    "`{name}` is not \"UTC\", \"localtime\" or a time zone the IANA database \
                     knows (e.g. \"Europe/Berlin\")"
                )),
            },
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ZoneName::Utc => "UTC",
            ZoneName::Local => "localtime",
            ZoneName::Iana(name) => name,
        }
    }

    /// The zone itself; a name that vanished from the database since validation reads as UTC.
    pub fn zone(&self) -> jiff::tz::TimeZone {
        match self {
            ZoneName::Utc => jiff::tz::TimeZone::UTC,
            ZoneName::Local => jiff::tz::TimeZone::system(),
            ZoneName::Iana(name) => jiff::tz::db().get(name).unwrap_or(jiff::tz::TimeZone::UTC),
        }
    }
}

/// One weekly window: on each of `days`, from `start` (minutes after midnight) for `length`
/// minutes, possibly past midnight and past the end of the week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Distinct days, Monday first.
    pub days: Vec<Weekday>,
    pub start: u32,
    pub length: u32,
}

/// A validated rollout policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPolicy {
    pub min_healthy: Duration,
    pub monitor: Duration,
    pub canary: u32,
    pub canary_bake: Duration,
    pub promote: Promote,
    pub max_failures: NonZeroU32,
    pub batch_delay: Duration,
    pub time_zone: ZoneName,
    pub windows: Vec<Window>,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        PolicyText::default()
            .validate()
            .expect("the built-in rollout defaults are valid")
    }
}

/// A window as written (zincati's format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowText {
    pub days: Vec<String>,
    pub start_time: String,
    pub length_minutes: u32,
}

/// A whole policy as written: the merged `[rollout]` section, or a stored policy (a key missing
/// from a stored value takes its built-in default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyText {
    #[serde(with = "humantime_serde")]
    pub min_healthy: Duration,
    #[serde(with = "humantime_serde")]
    pub monitor: Duration,
    pub canary: u32,
    #[serde(with = "humantime_serde")]
    pub canary_bake: Duration,
    pub promote: Promote,
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    pub time_zone: String,
    pub window: Vec<WindowText>,
}

impl Default for PolicyText {
    /// The defaults of issue 17's key table.
    fn default() -> Self {
        PolicyText {
            min_healthy: secs(10),
            monitor: Duration::ZERO,
            canary: 0,
            canary_bake: Duration::ZERO,
            promote: Promote::Auto,
            max_failures: 1,
            batch_delay: Duration::ZERO,
            time_zone: "UTC".into(),
            window: Vec::new(),
        }
    }
}

/// A value that is not acceptable: the key (`min_healthy`, `window[1].days`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

fn refuse(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        key: key.into(),
        message: message.into(),
    }
}

fn bounded(key: &str, value: Duration) -> Result<Duration, PolicyError> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let (_, min, max) = DURATION_BOUNDS
        .iter()
        .find(|(name, _, _)| *name == key)
        .ok_or_else(|| refuse(key, "has no bounds (a bug)"))?;
    if value < *min || value > *max {
        return Err(refuse(
            key,
            format!(
                "must be between {} and {}, not {}",
                show(*min),
                show(*max),
                show(value)
            ),
        ));
    }
    Ok(value)
}

fn count(key: &str, value: u32, min: u32) -> Result<u32, PolicyError> {
    if !(min..=MAX_COUNT).contains(&value) {
        return Err(refuse(
            key,
            format!("must be between {min} and {MAX_COUNT}, not {value}"),
        ));
    }
    Ok(value)
}

/// A weekday in full or in its first three letters, any case (zincati's C-locale names).
pub fn parse_day(text: &str) -> Option<Weekday> {
    const DAYS: [(&str, Weekday); 7] = [
        ("monday", Weekday::Monday),
        ("tuesday", Weekday::Tuesday),
        ("wednesday", Weekday::Wednesday),
        ("thursday", Weekday::Thursday),
        ("friday", Weekday::Friday),
        ("saturday", Weekday::Saturday),
        ("sunday", Weekday::Sunday),
    ];
    let lower = text.to_ascii_lowercase();
    DAYS.iter()
        .find(|(name, _)| lower == *name || lower == name[..3])
        .map(|(_, day)| *day)
}

/// `hh:mm`, 24-hour, as minutes after midnight.
pub fn parse_start_time(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// The short name of `day`, as a window is written.
pub fn day_name(day: Weekday) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][day.to_monday_zero_offset() as usize]
}

impl WindowText {
    fn validate(&self, key: &str) -> Result<Window, PolicyError> {
        if self.days.is_empty() {
            return Err(refuse(format!("{key}.days"), "must name at least one day"));
        }
        let mut days = Vec::new();
        for text in &self.days {
            let day = parse_day(text).ok_or_else(|| {
                refuse(
                    format!("{key}.days"),
                    format!("`{text}` is not a weekday (Mon … Sun, or in full: Monday … Sunday)"),
                )
            })?;
            days.push(day);
        }
        days.sort_by_key(|d| d.to_monday_zero_offset());
        days.dedup();
        let start = parse_start_time(&self.start_time).ok_or_else(|| {
            refuse(
                format!("{key}.start_time"),
                format!(
                    "`{}` is not a time like \"02:00\" (hh:mm, 24-hour)",
                    self.start_time
                ),
            )
        })?;
        if !(1..=MINUTES_PER_WEEK).contains(&self.length_minutes) {
            return Err(refuse(
                format!("{key}.length_minutes"),
                format!(
                    "must be between 1 and {MINUTES_PER_WEEK} (a week), not {}",
                    self.length_minutes
                ),
            ));
        }
        Ok(Window {
            days,
            start,
            length: self.length_minutes,
        })
    }
}

impl PolicyText {
    /// Checks every key; the first problem found names its key.
    pub fn validate(&self) -> Result<RolloutPolicy, PolicyError> {
        if self.window.len() > MAX_WINDOWS {
            return Err(refuse(
                "window",
                format!("at most {MAX_WINDOWS} windows, not {}", self.window.len()),
            ));
        }
        let windows = self
            .window
            .iter()
            .enumerate()
            .map(|(i, w)| w.validate(&format!("window[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_failures = count("max_failures", self.max_failures, 1)?;
        Ok(RolloutPolicy {
            min_healthy: bounded("min_healthy", self.min_healthy)?,
            monitor: bounded("monitor", self.monitor)?,
            canary: count("canary", self.canary, 0)?,
            canary_bake: bounded("canary_bake", self.canary_bake)?,
            promote: self.promote,
            max_failures: NonZeroU32::new(max_failures).unwrap_or(NonZeroU32::MIN),
            batch_delay: bounded("batch_delay", self.batch_delay)?,
            time_zone: ZoneName::parse(&self.time_zone).map_err(|m| refuse("time_zone", m))?,
            windows,
        })
    }

    /// Sets one key from `KEY=VALUE` text (`sidekick rollout set`). `window=DAYS/HH:MM/MINUTES`
    /// (days joined by `,`) adds a window; `window=none` removes them all.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PolicyError> {
        let duration = |v: &str| {
            humantime::parse_duration(v)
                .map_err(|e| refuse(key, format!("`{v}` is not a duration like \"10s\" ({e})")))
        };
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| refuse(key, format!("`{v}` is not a whole number")))
        };
        match key {
            "min_healthy" => self.min_healthy = duration(value)?,
            "monitor" => self.monitor = duration(value)?,
            "canary_bake" => self.canary_bake = duration(value)?,
            "batch_delay" => self.batch_delay = duration(value)?,
            "canary" => self.canary = number(value)?,
            "max_failures" => self.max_failures = number(value)?,
            "time_zone" => self.time_zone = value.to_string(),
            "promote" => {
                self.promote = match value {
                    "auto" => Promote::Auto,
                    "manual" => Promote::Manual,
                    other => {
                        return Err(refuse(
                            key,
                            format!("`{other}` is neither \"auto\" nor \"manual\""),
                        ));
                    }
                }
            }
            "window" if value == "none" => self.window.clear(),
            "window" => {
                let parts: Vec<&str> = value.split('/').collect();
                let [days, start, length] = parts[..] else {
                    return Err(refuse(
                        key,
                        format!("`{value}` is not DAYS/HH:MM/MINUTES, e.g. Mon,Tue/02:00/120"),
                    ));
                };
                self.window.push(WindowText {
                    days: days.split(',').map(str::to_string).collect(),
                    start_time: start.to_string(),
                    length_minutes: number(length)?,
                });
            }
            other => {
                return Err(refuse(
                    other,
                    "is not a rollout key (min_healthy, monitor, canary, canary_bake, promote, \
                     max_failures, batch_delay, time_zone, window)",
                ));
            }
        }
        Ok(())
    }
}

impl RolloutPolicy {
    /// A short hash of the policy (FNV-1a over its stored JSON, 8 hex digits), stable across
    /// builds: instance records carry it so `sidekick rollout status` can tell when a group's
    /// instances enforce different `[rollout]` sections.
    pub fn short_hash(&self) -> String {
        let json = serde_json::to_vec(&self.to_text()).unwrap_or_default();
        let hash = json.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{:08x}", hash >> 32)
    }

    /// The policy as written, for storing and showing.
    pub fn to_text(&self) -> PolicyText {
        PolicyText {
            min_healthy: self.min_healthy,
            monitor: self.monitor,
            canary: self.canary,
            canary_bake: self.canary_bake,
            promote: self.promote,
            max_failures: self.max_failures.get(),
            batch_delay: self.batch_delay,
            time_zone: self.time_zone.as_str().to_string(),
            window: self
                .windows
                .iter()
                .map(|w| WindowText {
                    days: w.days.iter().map(|d| day_name(*d).to_string()).collect(),
                    start_time: format!("{:02}:{:02}", w.start / 60, w.start % 60),
                    length_minutes: w.length,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
