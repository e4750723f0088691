//! Following one unit's `ActiveState` over the system bus: `Manager.Subscribe()` (without it
//! systemd sends no unit `PropertiesChanged`), `LoadUnit` (works whether or not the unit is
//! loaded yet; the object path stays the same when systemd unloads and reloads it), then the
//! unit's `PropertiesChanged` signals. systemd repeats values (e.g. `active` again after a
//! reload), so changes are deduplicated. After a bus disconnect the task reconnects with backoff
//! and re-reads the state; until then the last known state stands.

use std::time::Duration;

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::ManagerProxy;

use super::{ActiveState, UnitManager};
use crate::backoff::Backoff;

const SYSTEMD_SERVICE: &str = "org.freedesktop.systemd1";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
/// Reconnect attempts to the bus back off up to this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Which bus to follow the unit on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (honours `DBUS_SYSTEM_BUS_ADDRESS`).
    System,
    /// An explicit address such as `unix:path=/run/dbus/system_bus_socket`.
    Address(String),
}

/// A D-Bus failure, with the step that failed.
#[derive(Debug, Error)]
#[error("{step}: {source}")]
pub struct BusError {
    step: &'static str,
    source: zbus::Error,
}

fn at(step: &'static str) -> impl FnOnce(zbus::Error) -> BusError {
    move |source| BusError { step, source }
}

/// The unit followed over D-Bus by a background task.
pub struct DbusUnits {
    state: watch::Receiver<ActiveState>,
    task: tokio::task::JoinHandle<()>,
}

impl DbusUnits {
    /// Starts following `unit` on `bus` on the current tokio runtime.
    pub fn start(bus: Bus, unit: String) -> DbusUnits {
        let (tx, state) = watch::channel(ActiveState::Unknown);
        let task = tokio::spawn(follow(bus, unit, tx));
        DbusUnits { state, task }
    }
}

impl Drop for DbusUnits {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UnitManager for DbusUnits {
    fn active_state(&self) -> watch::Receiver<ActiveState> {
        self.state.clone()
    }
}

/// Reconnects forever; each connection follows the unit until the bus goes away.
async fn follow(bus: Bus, unit: String, tx: watch::Sender<ActiveState>) {
    let mut backoff = Backoff::new(MAX_RECONNECT_DELAY);
    loop {
        let outcome = follow_once(&bus, &unit, &tx, &mut backoff).await;
        let delay = backoff.next_delay();
        match outcome {
            Ok(()) => {
                warn!(unit = %unit, "system bus connection lost; reconnecting in {delay:.1?}")
            }
            Err(err) => {
                warn!(unit = %unit, error = %err, "cannot follow the unit over D-Bus; retrying in {delay:.1?}")
            }
        }
        tokio::time::sleep(delay).await;
    }
}

fn publish(tx: &watch::Sender<ActiveState>, unit: &str, state: ActiveState) {
    tx.send_if_modified(|current| {
        if *current == state {
            return false;
        }
        info!(unit = %unit, "unit is {state} (was {current})");
        *current = state;
        true
    });
}

async fn follow_once(
    bus: &Bus,
    unit: &str,
    tx: &watch::Sender<ActiveState>,
    backoff: &mut Backoff,
) -> Result<(), BusError> {
    let conn = match bus {
        Bus::System => zbus::Connection::system().await,
        Bus::Address(address) => {
            zbus::connection::Builder::address(address.as_str())
                .build()
                .await
        }
    }
    .map_err(at("connect to the system bus"))?;
    let manager = ManagerProxy::new(&conn)
        .await
        .map_err(at("Manager proxy"))?;
    manager.subscribe().await.map_err(at("Manager.Subscribe"))?;
    let path = manager
        .load_unit(unit.to_string())
        .await
        .map_err(at("Manager.LoadUnit"))?;
    let properties = PropertiesProxy::builder(&conn)
        .destination(SYSTEMD_SERVICE)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(at("Properties proxy"))?;
    // Subscribe before reading, so no change slips between the read and the first signal.
    let mut changes = properties
        .receive_properties_changed()
        .await
        .map_err(at("PropertiesChanged match"))?;
    let current = read_active_state(&properties).await?;
    debug!(unit = %unit, path = %path.as_str(), "following unit over D-Bus");
    publish(tx, unit, ActiveState::parse(&current));
    backoff.reset();
    while let Some(signal) = changes.next().await {
        let Ok(args) = signal.args() else { continue };
        if args.interface_name().as_str() != UNIT_INTERFACE {
            continue;
        }
        let changed = args.changed_properties().get("ActiveState");
        let value = match changed.map(<&str>::try_from) {
            Some(Ok(value)) => value.to_string(),
            // Invalidated or an unexpected type: ask for the value.
            _ if changed.is_some() || args.invalidated_properties().contains(&"ActiveState") => {
                read_active_state(&properties).await?
            }
            _ => continue,
        };
        publish(tx, unit, ActiveState::parse(&value));
    }
    Ok(())
}

/// `Get(Unit, ActiveState)`, uncached.
async fn read_active_state(properties: &PropertiesProxy<'_>) -> Result<String, BusError> {
    let interface = InterfaceName::from_static_str_unchecked(UNIT_INTERFACE);
    let value = properties
        .get(interface, "ActiveState")
        .await
        .map_err(|e| at("Get ActiveState")(e.into()))?;
    String::try_from(value).map_err(at("ActiveState value"))
}
