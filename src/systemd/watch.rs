//! Following one unit's `ActiveState` over the system bus: `Manager.Subscribe()` (without it
//! systemd sends no unit `PropertiesChanged`), `LoadUnit` (works whether or not the unit is
//! loaded yet; the object path stays the same when systemd unloads and reloads it), then the
//! unit's `PropertiesChanged` signals. systemd repeats values (e.g. `active` again after a
//! reload), so changes are deduplicated. After a bus disconnect the task reconnects with backoff
//! and re-reads the state; until then the last known state stands.
//!
//! Every departure from `active` is counted ([`UnitTracker`]), also one whose intermediate states
//! were never seen: `ActiveEnterTimestampMonotonic` (sent with every unit `PropertiesChanged`)
//! differs when the unit is `active` again after a restart, whether the restart happened between
//! two signals or while the bus was down.
//!
//! `LoadState` is followed too: a unit that is `not-found` (no unit file: a typo, or not
//! installed) or `masked` would otherwise look `inactive` forever. Entering either is logged once
//! as a WARN naming the unit, and the [`UnitState`] carries it for `STATUS=` and `status`.
//! systemd sends no `PropertiesChanged` when a daemon-reload gives a unit its file, so after each
//! `Manager.Reloading(false)` the unit is loaded again and both states are re-read.

use std::time::Duration;

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::ManagerProxy;

use super::{ActiveState, LoadState, UnitManager, UnitState, UnitTracker};
use crate::backoff::Backoff;

const SYSTEMD_SERVICE: &str = "org.freedesktop.systemd1";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
/// Automatic restarts of a service (`Restart=`): a grown count is a departure from `active`.
const N_RESTARTS: &str = "NRestarts";
const ACTIVE_STATE: &str = "ActiveState";
const LOAD_STATE: &str = "LoadState";
/// Changes with each activation: tells a restart from a repeated `active`.
const ACTIVE_ENTERED: &str = "ActiveEnterTimestampMonotonic";
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
    state: watch::Receiver<UnitState>,
    task: tokio::task::JoinHandle<()>,
}

impl DbusUnits {
    /// Starts following `unit` on `bus` on the current tokio runtime.
    pub fn start(bus: Bus, unit: String) -> DbusUnits {
        let (tx, state) = watch::channel(UnitTracker::new().state().clone());
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
    fn unit_state(&self) -> watch::Receiver<UnitState> {
        self.state.clone()
    }
}

/// Reconnects forever; each connection follows the unit until the bus goes away.
async fn follow(bus: Bus, unit: String, tx: watch::Sender<UnitState>) {
    let mut backoff = Backoff::new(MAX_RECONNECT_DELAY);
    // Outlives connections: the activation seen before a disconnect is compared after it.
    let mut tracker = UnitTracker::new();
    loop {
        let outcome = follow_once(&bus, &unit, &tx, &mut tracker, &mut backoff).await;
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

/// Folds a `LoadState` into the tracker; warns once on entering `not-found` or `masked`.
fn publish_load(
    tx: &watch::Sender<UnitState>,
    tracker: &mut UnitTracker,
    unit: &str,
    load: LoadState,
) {
    let before = tracker.state().load.clone();
    if !tracker.observe_load(load) {
        return;
    }
    let now = tracker.state().load.clone();
    match &now {
        LoadState::NotFound => warn!(unit = %unit, load_state = %now,
            "unit {unit} is not-found: systemd has no unit file of that name; check instance.unit \
             or install the unit, then `systemctl daemon-reload`"),
        LoadState::Masked => warn!(unit = %unit, load_state = %now,
            "unit {unit} is masked: it cannot start until `systemctl unmask {unit}`"),
        _ => info!(unit = %unit, "unit load state is {now} (was {before})"),
    }
    tx.send_replace(tracker.state().clone());
}

/// Folds one observation into the tracker and publishes the state when it changed.
fn publish(
    tx: &watch::Sender<UnitState>,
    tracker: &mut UnitTracker,
    unit: &str,
    state: ActiveState,
    entered: Option<u64>,
) {
    let before = tracker.state().clone();
    if !tracker.observe(state, entered) {
        return;
    }
    let now = tracker.state().clone();
    if now.active == before.active {
        info!(unit = %unit, departures = now.departures,
            "unit is {} again: it left {} and came back between two reads", now.active, before.active);
    } else {
        info!(unit = %unit, departures = now.departures, "unit is {} (was {})", now.active, before.active);
    }
    tx.send_replace(now);
}

async fn follow_once(
    bus: &Bus,
    unit: &str,
    tx: &watch::Sender<UnitState>,
    tracker: &mut UnitTracker,
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
    let load = read_load_state(&properties).await?;
    let (current, entered) = read_state(&properties).await?;
    debug!(unit = %unit, path = %path.as_str(), "following unit over D-Bus");
    publish_load(tx, tracker, unit, load);
    publish(tx, tracker, unit, current, entered);
    if let Some(restarts) = read_restarts(&properties).await {
        publish_restarts(tx, tracker, unit, restarts);
    }
    backoff.reset();
    let mut reloads = manager
        .receive_reloading()
        .await
        .map_err(at("Manager.Reloading match"))?;
    loop {
        let signal = tokio::select! {
            signal = changes.next() => signal,
            reload = reloads.next() => {
                let Some(reload) = reload else { break };
                // `true` announces the reload; the unit is worth reading once it is done.
                if reload.args().is_ok_and(|a| !a.active) {
                    manager.load_unit(unit.to_string()).await.map_err(at("Manager.LoadUnit"))?;
                    let load = read_load_state(&properties).await?;
                    publish_load(tx, tracker, unit, load);
                    let (state, entered) = read_state(&properties).await?;
                    publish(tx, tracker, unit, state, entered);
                }
                continue;
            }
        };
        let Some(signal) = signal else { break };
        let Ok(args) = signal.args() else { continue };
        if args.interface_name().as_str() == SERVICE_INTERFACE {
            let restarts = args.changed_properties().get(N_RESTARTS);
            if let Some(Ok(restarts)) = restarts.map(u32::try_from) {
                publish_restarts(tx, tracker, unit, restarts);
            }
            continue;
        }
        if args.interface_name().as_str() != UNIT_INTERFACE {
            continue;
        }
        let changed = args.changed_properties();
        if let Some(load) = changed.get(LOAD_STATE) {
            let load = match <&str>::try_from(load) {
                Ok(value) => LoadState::parse(value),
                Err(_) => read_load_state(&properties).await?,
            };
            publish_load(tx, tracker, unit, load);
        } else if args.invalidated_properties().contains(&LOAD_STATE) {
            let load = read_load_state(&properties).await?;
            publish_load(tx, tracker, unit, load);
        }
        let state = changed.get(ACTIVE_STATE);
        let entered = changed
            .get(ACTIVE_ENTERED)
            .and_then(|v| u64::try_from(v).ok());
        let (state, entered) = match (state.map(<&str>::try_from), entered) {
            (Some(Ok(value)), Some(entered)) => (ActiveState::parse(value), Some(entered)),
            (Some(Ok(value)), None) if value != "active" => (ActiveState::parse(value), None),
            // Invalidated, an unexpected type, or `active` without its timestamp: ask for both.
            _ if state.is_some() || args.invalidated_properties().contains(&ACTIVE_STATE) => {
                read_state(&properties).await?
            }
            _ => continue,
        };
        publish(tx, tracker, unit, state, entered);
    }
    Ok(())
}

/// Folds the service's `NRestarts` into the tracker; a grown count is published as a departure.
fn publish_restarts(
    tx: &watch::Sender<UnitState>,
    tracker: &mut UnitTracker,
    unit: &str,
    restarts: u32,
) {
    if tracker.observe_restarts(restarts) {
        info!(unit = %unit, departures = tracker.state().departures, restarts,
            "unit restarted automatically (NRestarts grew)");
        tx.send_replace(tracker.state().clone());
    }
}

/// `NRestarts` of a service unit, uncached; `None` for other unit types or when unreadable.
async fn read_restarts(properties: &PropertiesProxy<'_>) -> Option<u32> {
    let interface = InterfaceName::from_static_str_unchecked(SERVICE_INTERFACE);
    let value = properties.get(interface, N_RESTARTS).await.ok()?;
    u32::try_from(value).ok()
}

/// `LoadState`, uncached.
async fn read_load_state(properties: &PropertiesProxy<'_>) -> Result<LoadState, BusError> {
    let interface = InterfaceName::from_static_str_unchecked(UNIT_INTERFACE);
    let value = properties
        .get(interface, LOAD_STATE)
        .await
        .map_err(|e| at("Get LoadState")(e.into()))?;
    let value = String::try_from(value).map_err(at("LoadState value"))?;
    Ok(LoadState::parse(&value))
}

/// `ActiveState` and, when active, `ActiveEnterTimestampMonotonic`; uncached.
async fn read_state(
    properties: &PropertiesProxy<'_>,
) -> Result<(ActiveState, Option<u64>), BusError> {
    let interface = || InterfaceName::from_static_str_unchecked(UNIT_INTERFACE);
    let value = properties
        .get(interface(), ACTIVE_STATE)
        .await
        .map_err(|e| at("Get ActiveState")(e.into()))?;
    let state = ActiveState::parse(&String::try_from(value).map_err(at("ActiveState value"))?);
    if !state.is_active() {
        return Ok((state, None));
    }
    let value = properties
        .get(interface(), ACTIVE_ENTERED)
        .await
        .map_err(|e| at("Get ActiveEnterTimestampMonotonic")(e.into()))?;
    let entered = u64::try_from(value).map_err(at("ActiveEnterTimestampMonotonic value"))?;
    Ok((state, Some(entered)))
}
