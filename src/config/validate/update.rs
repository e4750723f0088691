//! `[update]`: the Omaha service, the app's id and track there, and the image template.

use super::{Check, unknown_placeholder};
use crate::config::ConfigError;
use crate::config::inputs::UpdateInput;
use crate::config::settings::UpdateSettings;

/// What to do instead when updates are on but not set up: a host that only registers.
const UPDATES_OFF_HINT: &str = "or update.enabled = false for registration only";

/// The app's names in the update service, `(app_id, track)`: checked for shape, not required
/// (`slot.group` defaults to them).
pub(super) fn app(check: &Check, update: &UpdateInput) -> Result<(String, String), ConfigError> {
    if update
        .app_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '&' | '"' | '\''))
    {
        return Err(check.fail(
            "update.app_id",
            "must not contain whitespace, quotes or XML markup",
        ));
    }
    let track = check.word("update.track", &update.track)?;
    Ok((update.app_id.clone(), track))
}

/// Validates `[update]`; with updates enabled the server and app id are required.
pub(super) fn validate(check: &Check, update: UpdateInput) -> Result<UpdateSettings, ConfigError> {
    let server = match (update.server.as_str(), update.enabled) {
        ("", true) => {
            return Err(check.fail(
                "update.server",
                format!(
                    "required while update.enabled is true: set update.server (the Omaha \
                     endpoint, e.g. \"https://nebraska.example.com/v1/update/\") and \
                     update.app_id, {UPDATES_OFF_HINT}"
                ),
            ));
        }
        ("", false) => None,
        (server, _) => Some(check.http_url("update.server", server)?),
    };
    if update.enabled && update.app_id.trim().is_empty() {
        return Err(check.fail(
            "update.app_id",
            format!(
                "required while update.enabled is true: set update.app_id (the app's id in \
                 the update service), {UPDATES_OFF_HINT}"
            ),
        ));
    }
    let (app_id, track) = app(check, &update)?;
    if let Some(name) = unknown_placeholder(&update.image, &["codebase", "name", "version"]) {
        return Err(check.fail(
            "update.image",
            format!("unknown placeholder `{name}`: use {{codebase}}, {{name}} or {{version}}"),
        ));
    }
    Ok(UpdateSettings {
        enabled: update.enabled,
        server,
        track,
        arch: check.word("update.arch", &update.arch)?,
        app_id,
        interval: check.duration("update.interval", update.interval)?,
        image: update.image,
        pin_digest: update.pin_digest,
        ca_file: update.ca_file,
    })
}
