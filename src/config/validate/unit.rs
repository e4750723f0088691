//! `[instance]`: the app's systemd service unit, as systemctl would take it, and the instance and
//! service names derived from it.

use super::Check;
use crate::config::ConfigError;
use crate::config::inputs::InstanceInput;
use crate::config::settings::InstanceSettings;

/// Validates `[instance]`: the unit is required, the names default to parts of it.
pub(super) fn validate(
    check: &Check,
    instance: InstanceInput,
) -> Result<InstanceSettings, ConfigError> {
    let unit = instance.unit.ok_or_else(|| {
        check.fail(
            "instance.unit",
            "required: set it in a config file or pass --unit",
        )
    })?;
    let unit = normalise_unit(&unit);
    if let Some(problem) = unit_problem(&unit) {
        return Err(check.fail("instance.unit", problem));
    }
    let stem = unit
        .rsplit_once('.')
        .map_or(unit.as_str(), |(stem, _)| stem);
    let name = match instance.name {
        Some(name) => check.word("instance.name", &name)?,
        None => check.word("instance.name", &stem.replace('@', "-"))?,
    };
    let service = match instance.service {
        Some(service) => check.word("instance.service", &service)?,
        None => check.word("instance.service", stem.split('@').next().unwrap_or(stem))?,
    };
    Ok(InstanceSettings {
        unit,
        name,
        service,
    })
}

/// Unit name as systemctl would take it: no suffix means `.service`.
fn normalise_unit(unit: &str) -> String {
    if unit.contains('.') {
        unit.to_string()
    } else {
        format!("{unit}.service")
    }
}

/// The sidekick's own template; its instances are never an app unit.
const OWN_TEMPLATE: &str = "sidekick@";

/// Why `unit` (normalised) cannot be the app unit, or `None` when it can: a valid systemd name,
/// a `.service`, an instance rather than a bare template, and not the sidekick's own unit.
fn unit_problem(unit: &str) -> Option<String> {
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\');
    if unit.is_empty() || unit.len() > 255 || unit.starts_with('@') || !unit.chars().all(allowed) {
        return Some(format!("`{unit}` is not a valid systemd unit name"));
    }
    let Some(stem) = unit.strip_suffix(".service") else {
        return Some(format!(
            "`{unit}` is not a service: the app unit must be a `.service`, e.g. `web@1.service`"
        ));
    };
    if stem.is_empty() || stem.contains('.') {
        return Some(format!("`{unit}` is not a valid systemd unit name"));
    }
    if stem.matches('@').count() > 1 {
        return Some(format!("`{unit}` has more than one `@`"));
    }
    if stem.ends_with('@') {
        return Some(format!(
            "`{unit}` is a template: name an instance of it, e.g. `{stem}1.service`"
        ));
    }
    if stem == "sidekick" || stem.starts_with(OWN_TEMPLATE) {
        return Some(format!(
            "`{unit}` is the sidekick's own unit: name the app unit it serves, e.g. `web@1.service`"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_units_are_service_instances_other_than_the_sidekick() {
        for good in [
            "web@1.service",
            "web.service",
            "my-app@blue_2.service",
            "a:b.service",
        ] {
            assert_eq!(unit_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("web@1.servce", "not a service"),
            ("web@1.socket", "not a service"),
            ("web@.service", "is a template"),
            ("sidekick@web@1.service", "more than one `@`"),
            ("sidekick@web-1.service", "sidekick's own unit"),
            ("sidekick.service", "sidekick's own unit"),
            ("web 1.service", "not a valid systemd unit name"),
            ("@1.service", "not a valid systemd unit name"),
            (".service", "not a valid systemd unit name"),
        ] {
            let problem = unit_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad}: {problem}");
        }
        assert_eq!(normalise_unit("web@1"), "web@1.service");
    }
}
