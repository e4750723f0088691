//! What the update side's tests and the driver's share: the one `UpdateSettings`, swap settings
//! and in-memory seams for an instance `web-1` of app `app` on track `stable`.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use super::{Denylist, Journal, StepSettings, SwapConfig, UpdatePass};
use crate::config::UpdateSettings;
use crate::omaha::{AnyUpdateSource, InMemoryUpdateSource, LocalRelease, UpdateBackend};
use crate::slot::{AnySlots, MemorySlots, SlotHolder};
use crate::systemd::control::{MemoryUnitControl, RunningVersion};

/// `[update]` of app `app` on track `stable`, checking every `interval`, images
/// `{codebase}:{version}`.
pub(crate) fn update_settings(interval: Duration) -> UpdateSettings {
    UpdateSettings {
        enabled: true,
        server: None,
        app_id: "app".into(),
        track: "stable".into(),
        arch: "x64".into(),
        interval,
        image: "{codebase}:{version}".into(),
        pin_digest: false,
        ca_file: None,
        allow_insecure: false,
        allowed_repositories: Vec::new(),
        verify_digest: false,
        // The driver's tests swap 1.0.0 straight to 3.0.0; the jump rule has its own tests.
        allow_major_jump: true,
    }
}

/// Steps with `prepull` and `drain`, a restart bound of 1 s.
pub(crate) fn step_settings(prepull: Vec<String>, drain: Duration) -> StepSettings {
    StepSettings {
        prepull,
        drain,
        start_timeout: Duration::from_secs(1),
    }
}

/// The swap of `web-1` with its journal and denylist under `state_dir`: no pre-pull, no drain,
/// verified by `rise` passes within 500 ms.
pub(crate) fn swap_config(state_dir: &Path, rise: u32) -> SwapConfig {
    SwapConfig {
        steps: step_settings(Vec::new(), Duration::ZERO),
        verify_timeout: Duration::from_millis(500),
        rise,
        journal: Journal::new(state_dir, "web-1"),
        denylist: Denylist::load(state_dir, "web-1").expect("a readable denylist"),
        dry_run: false,
    }
}

/// A release of `version` from `codebase`.
pub(crate) fn release(version: &str, codebase: &str) -> LocalRelease {
    LocalRelease {
        version: version.into(),
        codebase: codebase.into(),
        name: String::new(),
        sha256: None,
        size: None,
    }
}

/// A slot holder whose holder id is its instance name.
pub(crate) fn who(name: &str) -> SlotHolder {
    SlotHolder {
        holder: name.into(),
        instance: name.into(),
    }
}

/// An in-memory update source offering `offered`; `dry_run` prints events instead of keeping
/// them.
pub(crate) fn memory_source(offered: Option<LocalRelease>, dry_run: bool) -> AnyUpdateSource {
    AnyUpdateSource::new(
        UpdateBackend::Memory(InMemoryUpdateSource::new(offered)),
        dry_run,
    )
}

/// A pass for `web-1` running `running` (image `reg/web:<running>`) over `source`, checking every
/// minute, with the group's one slot; returns the slots too.
pub(crate) fn pass(
    source: AnyUpdateSource,
    running: Option<&str>,
    state_dir: &Path,
) -> (UpdatePass<MemoryUnitControl>, MemorySlots) {
    let slots = MemorySlots::new(NonZeroU32::new(1).unwrap(), who("web-1"));
    let control = MemoryUnitControl::new(RunningVersion {
        version: running.map(str::to_string),
        image: running.map(|v| format!("reg/web:{v}")),
    });
    let pass = UpdatePass::new(
        source,
        AnySlots::Memory(slots.join(who("web-1"))),
        control,
        update_settings(Duration::from_secs(60)),
        swap_config(state_dir, 1),
    );
    (pass, slots)
}
