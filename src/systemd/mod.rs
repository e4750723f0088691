//! systemd, spoken to over D-Bus (`org.freedesktop.systemd1`,
//! <https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.systemd1.html>):
//! following the bound unit's `ActiveState` and reading back its environment. Production connects
//! with [`zbus::Connection::system`], which honours `DBUS_SYSTEM_BUS_ADDRESS`; never `systemctl`. The [`UnitManager`] seam has the D-Bus
//! implementation ([`DbusUnits`], in [`watch`]) and an in-memory one ([`MemoryUnits`]).

pub mod environment;
pub mod watch;

use std::fmt;

pub use watch::{Bus, DbusUnits};

/// A unit's `ActiveState` as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    /// Not read yet (no bus connection so far).
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

/// The bound unit, as the agent sees it.
pub trait UnitManager: Send {
    /// Follows the unit's `ActiveState`; holds the latest value, each change once.
    fn active_state(&self) -> tokio::sync::watch::Receiver<ActiveState>;
}

/// An in-memory unit whose state tests set by hand.
#[derive(Debug, Clone)]
pub struct MemoryUnits {
    state: tokio::sync::watch::Sender<ActiveState>,
}

impl MemoryUnits {
    /// A unit in `initial` state.
    pub fn new(initial: ActiveState) -> MemoryUnits {
        MemoryUnits {
            state: tokio::sync::watch::channel(initial).0,
        }
    }

    /// Changes the state (deduplicated like the D-Bus watch).
    pub fn set(&self, state: ActiveState) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }
}

impl UnitManager for MemoryUnits {
    fn active_state(&self) -> tokio::sync::watch::Receiver<ActiveState> {
        self.state.subscribe()
    }
}
