//! The `[slot]` section: the group name and its default per backend, the FleetLock server URL.

use super::Check;
use crate::config::ConfigError;
use crate::config::inputs::SlotInput;
use crate::config::settings::{SlotBackend, SlotSettings, UpdateSettings};
use crate::slot::fleetlock;

/// Validates `[slot]`. The default group is `<app_id>/<track>` (`<service>/<track>` without an
/// app id, when updates are off and the group only labels status output). FleetLock servers
/// accept only `^[a-zA-Z0-9.-]+$`, so that backend joins the two with `-` instead, and other
/// characters become `-`.
pub(super) fn validate(
    check: &Check,
    slot: SlotInput,
    update: &UpdateSettings,
    service: &str,
) -> Result<SlotSettings, ConfigError> {
    let fleetlock = slot.backend == SlotBackend::Fleetlock;
    let group = match (slot.group.is_empty(), update.app_id.is_empty()) {
        (false, _) => slot.group,
        (true, false) => default_group(fleetlock, &update.app_id, &update.track),
        (true, true) => default_group(fleetlock, service, &update.track),
    };
    if group.chars().any(|c| c.is_whitespace() || c.is_control()) || group.starts_with('/') {
        return Err(check.fail(
            "slot.group",
            format!("`{group}` must not contain whitespace or start with `/`"),
        ));
    }
    if fleetlock && !fleetlock::valid_group(&group) {
        return Err(check.fail(
            "slot.group",
            format!(
                "`{group}` is not a FleetLock group: the fleetlock backend needs \
                 letters, digits, `.` and `-` only (^[a-zA-Z0-9.-]+$)"
            ),
        ));
    }
    let fleetlock_url = match (slot.fleetlock_url.as_str(), slot.backend) {
        ("", SlotBackend::Fleetlock) => {
            return Err(check.fail("slot.fleetlock_url", "required by the fleetlock backend"));
        }
        ("", _) => None,
        (url, _) => Some(check.http_url("slot.fleetlock_url", url)?),
    };
    Ok(SlotSettings {
        backend: slot.backend,
        max: check.non_zero("slot.max", slot.max)?,
        group,
        ttl: check.duration("slot.ttl", slot.ttl)?,
        fleetlock_url,
    })
}

fn default_group(fleetlock: bool, name: &str, track: &str) -> String {
    match fleetlock {
        true => fleetlock::sanitise_group(&format!("{name}-{track}")),
        false => format!("{name}/{track}"),
    }
}
