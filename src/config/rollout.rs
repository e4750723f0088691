//! The `[rollout]` section through the three stages: [`RolloutFragment`] (one file, every key
//! optional), the merged [`PolicyText`] (windows from every file add up into one weekly calendar,
//! as zincati assembles its `[[updates.periodic.window]]` entries), and the validated
//! [`RolloutPolicy`], whose errors name the file, line and key (`rollout.window[1].days`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::origin::{Origin, Origins};
use crate::rollout::RolloutPolicy;
use crate::rollout::policy::{PolicyText, Promote, WindowText};

/// `[rollout]` as written in one file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFragment {
    #[serde(default, with = "humantime_serde")]
    pub min_healthy: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub monitor: Option<Duration>,
    pub canary: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub canary_bake: Option<Duration>,
    pub promote: Option<Promote>,
    pub max_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub batch_delay: Option<Duration>,
    pub time_zone: Option<String>,
    pub window: Option<Vec<WindowText>>,
}

/// Applies one file's `[rollout]` over `input`, recording where each value came from; its
/// windows are appended, numbered after those of earlier files.
pub fn overlay(
    input: &mut PolicyText,
    fragment: Option<RolloutFragment>,
    path: &Path,
    lines: &BTreeMap<String, usize>,
    origins: &mut Origins,
) {
    let Some(f) = fragment else { return };
    let mut record = |local: &str, key: String| {
        let line = lines.get(&format!("rollout.{local}")).copied().unwrap_or(1);
        let path = path.to_path_buf();
        origins.insert(format!("rollout.{key}"), Origin::File { path, line });
    };
    macro_rules! set {
        ($($key:ident),*) => {$(
            if let Some(value) = f.$key {
                input.$key = value.into();
                record(stringify!($key), stringify!($key).to_string());
            }
        )*};
    }
    set!(
        min_healthy,
        monitor,
        canary,
        canary_bake,
        promote,
        max_failures,
        batch_delay,
        time_zone
    );
    for (i, window) in f.window.into_iter().flatten().enumerate() {
        let n = input.window.len();
        for field in ["", ".days", ".start_time", ".length_minutes"] {
            record(
                &format!("window[{i}]{field}"),
                format!("window[{n}]{field}"),
            );
        }
        input.window.push(window);
    }
}

/// Validates the merged `[rollout]`.
pub fn validate(input: &PolicyText, origins: &Origins) -> Result<RolloutPolicy, ConfigError> {
    input.validate().map_err(|e| {
        let key = format!("rollout.{}", e.key);
        // A window's key names its entry when the field itself came from nowhere (a default).
        let origin = origins.get(&key).cloned().or_else(|| {
            let entry = key.split_once("].").map(|(entry, _)| format!("{entry}]"));
            entry.and_then(|entry| origins.get(&entry).cloned())
        });
        ConfigError::Invalid {
            key,
            origin,
            message: e.message,
        }
    })
}

/// What `sidekick rollout …` reads: etcd, the group (as `sidekick slots` finds it), the
/// configured policy and the floor of the swap estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSettings {
    pub slots: super::SlotsSettings,
    pub policy: RolloutPolicy,
    /// `swap.drain + swap.start_timeout + swap.verify_timeout`, to which `min_healthy` is added.
    pub swap_bounds: Duration,
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
