//! The `[slot]` section: the group name and its default per backend, the FleetLock server URL.

use url::Url;

use super::Check;
use crate::config::ConfigError;
use crate::config::inputs::SlotInput;
use crate::config::settings::{SlotBackend, SlotOptions};
use crate::slot::group_name;

/// What names the default group: the app id (or, without one, the service) and the track.
pub(super) struct GroupName<'a> {
    pub(super) name: &'a str,
    pub(super) track: &'a str,
}

/// Validates `[slot]` for the daemon, whose group always has a default.
pub(super) fn validate(
    check: &Check,
    slot: SlotInput,
    named_by: GroupName,
) -> Result<SlotOptions, ConfigError> {
    let group = group(check, &slot, Some(named_by))?
        .ok_or_else(|| check.fail("slot.group", "required: set slot.group or update.app_id"))?;
    Ok(SlotOptions {
        backend: slot.backend,
        max: check.non_zero("slot.max", slot.max)?,
        group,
        ttl: check.duration("slot.ttl", slot.ttl)?,
        fleetlock_url: fleetlock_url(check, &slot)?,
    })
}

/// `slot.group`, or its default `<name>/<track>` (`None` when nothing names it). The app id names
/// it, or the service without one, when updates are off and the group only labels status output.
/// FleetLock servers accept only `^[a-zA-Z0-9.-]+$`, so that backend joins the two with `-`
/// instead, and other characters become `-`.
pub(super) fn group(
    check: &Check,
    slot: &SlotInput,
    named_by: Option<GroupName>,
) -> Result<Option<String>, ConfigError> {
    let fleetlock = slot.backend == SlotBackend::Fleetlock;
    let group = match (slot.group.as_str(), named_by) {
        ("", None) => return Ok(None),
        ("", Some(GroupName { name, track })) => default_group(fleetlock, name, track),
        (group, _) => group.to_string(),
    };
    if group.chars().any(|c| c.is_whitespace() || c.is_control()) || group.starts_with('/') {
        return Err(check.fail(
            "slot.group",
            format!("`{group}` must not contain whitespace or start with `/`"),
        ));
    }
    if fleetlock && !group_name::valid_group(&group) {
        return Err(check.fail(
            "slot.group",
            format!(
                "`{group}` is not a FleetLock group: the fleetlock backend needs \
                 letters, digits, `.` and `-` only (^[a-zA-Z0-9.-]+$)"
            ),
        ));
    }
    Ok(Some(group))
}

/// `slot.fleetlock_url`, required by the fleetlock backend.
pub(super) fn fleetlock_url(check: &Check, slot: &SlotInput) -> Result<Option<Url>, ConfigError> {
    match (slot.fleetlock_url.as_str(), slot.backend) {
        ("", SlotBackend::Fleetlock) => Err(check.fail(
            "slot.fleetlock_url",
            "required by the fleetlock backend: set it to the FleetLock server's base URL, \
             e.g. \"http://fleetlock.example.com:3333/\", or choose another slot.backend",
        )),
        ("", _) => Ok(None),
        (url, _) => Ok(Some(check.http_url("slot.fleetlock_url", url)?)),
    }
}

fn default_group(fleetlock: bool, name: &str, track: &str) -> String {
    match fleetlock {
        true => group_name::sanitise_group(&format!("{name}-{track}")),
        false => format!("{name}/{track}"),
    }
}
