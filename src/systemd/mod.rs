//! systemd, spoken to over D-Bus (`org.freedesktop.systemd1`,
//! <https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.systemd1.html>):
//! following the bound unit's `ActiveState` and reading back its environment. Production connects
//! with [`zbus::Connection::system`], which honours `DBUS_SYSTEM_BUS_ADDRESS`; never `systemctl`. The [`UnitManager`] seam has the D-Bus
//! implementation ([`DbusUnits`], in [`watch`]) and an in-memory one ([`MemoryUnits`]).

pub mod control;
pub mod environment;
pub mod watch;

use std::fmt;

pub use watch::{Bus, DbusUnits};

/// A unit's `ActiveState` as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    /// Not read yet (no bus connection so far), or not known since the unit left `active`.
    Unknown,
    Active,
    Reloading,
    Inactive,
    Failed,
    Activating,
    Deactivating,
    Maintenance,
    Refreshing,
    /// A state this version does not know.
    Other(String),
}

impl ActiveState {
    /// Parses systemd's spelling.
    pub fn parse(value: &str) -> ActiveState {
        match value {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            "maintenance" => ActiveState::Maintenance,
            "refreshing" => ActiveState::Refreshing,
            other => ActiveState::Other(other.to_string()),
        }
    }

    /// True only for `active`: the one state in which the instance is registered.
    pub fn is_active(&self) -> bool {
        *self == ActiveState::Active
    }
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ActiveState::Unknown => "unknown",
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Maintenance => "maintenance",
            ActiveState::Refreshing => "refreshing",
            ActiveState::Other(s) => s,
        };
        f.write_str(text)
    }
}

/// A unit's `LoadState`: whether systemd has a unit file for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadState {
    /// Not read yet.
    Unknown,
    Loaded,
    /// No unit file of that name: a typo in `instance.unit`, or the unit is not installed.
    NotFound,
    /// Linked to `/dev/null`: it cannot start until unmasked.
    Masked,
    /// `error`, `bad-setting`, `stub`, `merged` or a state this version does not know.
    Other(String),
}

impl LoadState {
    /// Parses systemd's spelling.
    pub fn parse(value: &str) -> LoadState {
        match value {
            "loaded" => LoadState::Loaded,
            "not-found" => LoadState::NotFound,
            "masked" => LoadState::Masked,
            other => LoadState::Other(other.to_string()),
        }
    }

    /// True when the unit cannot run as named: `not-found` or `masked`.
    pub fn is_unusable(&self) -> bool {
        matches!(self, LoadState::NotFound | LoadState::Masked)
    }
}

impl fmt::Display for LoadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadState::Unknown => "unknown",
            LoadState::Loaded => "loaded",
            LoadState::NotFound => "not-found",
            LoadState::Masked => "masked",
            LoadState::Other(s) => s,
        })
    }
}

/// The bound unit as the agent follows it: its `ActiveState` and how often it has left `active`.
///
/// The state alone is not enough: a channel that keeps only the latest value (and a bus that was
/// down for a while) can turn `active → deactivating → activating → active` into `active` again.
/// `departures` still counts that restart, so the agent deregisters and re-checks health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub active: ActiveState,
    /// Times the unit left `active` since following began, seen as a state or not.
    pub departures: u64,
    /// Whether systemd knows the unit; `not-found` or `masked` explains an `inactive` that
    /// never changes, for `STATUS=` and `status`.
    pub load: LoadState,
}

/// Folds observed `ActiveState` values (and, for `active`, the unit's
/// `ActiveEnterTimestampMonotonic`) into a [`UnitState`], deduplicating repeats.
#[derive(Debug, Clone)]
pub struct UnitTracker {
    state: UnitState,
    /// `ActiveEnterTimestampMonotonic` of the activation last seen, while active.
    active_since: Option<u64>,
    /// The service's `NRestarts` last seen (automatic restarts: with `Restart=always` a crashing
    /// unit reads `failed` for an instant at most).
    restarts: Option<u32>,
}

impl UnitTracker {
    /// Nothing observed yet: state unknown, no departures.
    pub fn new() -> UnitTracker {
        UnitTracker {
            state: UnitState {
                active: ActiveState::Unknown,
                departures: 0,
                load: LoadState::Unknown,
            },
            active_since: None,
            restarts: None,
        }
    }

    /// Takes the service's `NRestarts`; a count grown since the last one read is a departure from
    /// `active` (an automatic restart, whether or not its states were seen). True when the
    /// [`UnitState`] changed.
    pub fn observe_restarts(&mut self, restarts: u32) -> bool {
        let grew = self.restarts.is_some_and(|before| restarts > before);
        self.restarts = Some(restarts);
        if grew {
            self.state.departures += 1;
        }
        grew
    }

    /// The state so far.
    pub fn state(&self) -> &UnitState {
        &self.state
    }

    /// Takes the unit's `LoadState`; true when it changed.
    pub fn observe_load(&mut self, load: LoadState) -> bool {
        let changed = self.state.load != load;
        self.state.load = load;
        changed
    }

    /// Takes one observation; true when the [`UnitState`] changed. `entered` is the unit's
    /// `ActiveEnterTimestampMonotonic` where known: `active` with a new one means the unit left
    /// `active` and came back while nobody was looking (a restart between two reads).
    pub fn observe(&mut self, active: ActiveState, entered: Option<u64>) -> bool {
        let was_active = self.state.active.is_active();
        let reactivated = matches!((self.active_since, entered), (Some(a), Some(b)) if a != b);
        let left = was_active && (!active.is_active() || reactivated);
        if !active.is_active() {
            self.active_since = None;
        } else if entered.is_some() {
            self.active_since = entered;
        }
        if left {
            self.state.departures += 1;
        }
        let changed = left || self.state.active != active;
        self.state.active = active;
        changed
    }
}

impl Default for UnitTracker {
    fn default() -> Self {
        UnitTracker::new()
    }
}

/// The bound unit, as the agent sees it.
pub trait UnitManager: Send {
    /// Follows the unit; holds the latest [`UnitState`], each change once.
    fn unit_state(&self) -> tokio::sync::watch::Receiver<UnitState>;
}

/// An in-memory unit whose state tests set by hand.
#[derive(Debug, Clone)]
pub struct MemoryUnits {
    state: tokio::sync::watch::Sender<UnitState>,
    tracker: std::sync::Arc<std::sync::Mutex<UnitTracker>>,
}

impl MemoryUnits {
    /// A unit in `initial` state.
    pub fn new(initial: ActiveState) -> MemoryUnits {
        let mut tracker = UnitTracker::new();
        tracker.observe(initial, Some(0));
        MemoryUnits {
            state: tokio::sync::watch::channel(tracker.state().clone()).0,
            tracker: std::sync::Arc::new(std::sync::Mutex::new(tracker)),
        }
    }

    /// Changes the state (deduplicated like the D-Bus watch). `active` counts as the same
    /// activation as before unless the unit left `active` in between.
    pub fn set(&self, state: ActiveState) {
        let Ok(mut tracker) = self.tracker.lock() else {
            return;
        };
        if tracker.observe(state, None) {
            self.state.send_replace(tracker.state().clone());
        }
    }
}

impl UnitManager for MemoryUnits {
    fn unit_state(&self) -> tokio::sync::watch::Receiver<UnitState> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::ActiveState::*;
    use super::*;

    #[test]
    fn tracker_counts_every_departure_from_active_and_dedups_repeats() {
        let mut t = UnitTracker::new();
        assert!(t.observe(Activating, None));
        assert!(t.observe(Active, Some(10)));
        assert!(
            !t.observe(Active, Some(10)),
            "a repeated value is no change"
        );
        assert!(
            !t.observe(Active, None),
            "no timestamp: the same activation"
        );
        assert_eq!(t.state().departures, 0);
        assert!(t.observe(Reloading, None));
        assert!(t.observe(Active, Some(10)));
        assert_eq!(t.state().departures, 1, "reloading leaves active");
        // A restart whose intermediate states were never seen: a new activation timestamp.
        assert!(t.observe(Active, Some(20)));
        assert_eq!(
            *t.state(),
            UnitState {
                active: Active,
                departures: 2,
                load: LoadState::Unknown,
            }
        );
        assert!(t.observe(Failed, None));
        assert!(!t.observe(Failed, None));
        assert!(t.observe(Active, Some(30)));
        assert_eq!(t.state().departures, 3);
    }

    #[test]
    fn a_grown_n_restarts_counts_as_a_departure() {
        let mut t = UnitTracker::new();
        assert!(t.observe(Active, Some(10)));
        assert!(
            !t.observe_restarts(2),
            "the first count read is the baseline"
        );
        assert!(!t.observe_restarts(2));
        assert_eq!(t.state().departures, 0);
        assert!(t.observe_restarts(3));
        assert_eq!(t.state().departures, 1);
        assert_eq!(t.state().active, Active);
    }

    #[test]
    fn load_states_parse_and_only_not_found_and_masked_are_unusable() {
        assert_eq!(LoadState::parse("not-found"), LoadState::NotFound);
        assert_eq!(LoadState::parse("masked").to_string(), "masked");
        assert!(LoadState::NotFound.is_unusable() && LoadState::Masked.is_unusable());
        for fine in ["loaded", "stub", "bad-setting"] {
            assert!(!LoadState::parse(fine).is_unusable(), "{fine}");
        }
        let mut t = UnitTracker::new();
        assert!(t.observe_load(LoadState::NotFound));
        assert!(!t.observe_load(LoadState::NotFound));
        assert_eq!(t.state().load, LoadState::NotFound);
    }

    #[test]
    fn memory_units_coalesce_like_a_watch_but_keep_the_departure() {
        let units = MemoryUnits::new(Active);
        let mut rx = units.unit_state();
        rx.borrow_and_update();
        units.set(Deactivating);
        units.set(Activating);
        units.set(Active);
        assert!(rx.has_changed().unwrap());
        let seen = rx.borrow_and_update().clone();
        assert_eq!(seen.active, Active);
        assert_eq!(seen.departures, 1);
    }
}
