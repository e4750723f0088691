//! `sidekick slots release|resume|set-max`: an operator's hands on the update slots of a group.

use std::process::ExitCode;

use crate::cli::SlotsAction;

use crate::config::{ConfigSources, SlotBackend, SlotsSettings};
use url::Url;

use crate::slot::fleetlock::halt_record;
use crate::slot::{FleetLockSlots, SlotHolder, SlotLock, etcd, halt, limit};
use crate::terminal_text::{MAX_LINE_CHARS, sanitize, sanitize_to};

/// `sidekick slots ...`.
pub async fn run(sources: &ConfigSources, action: &SlotsAction) -> ExitCode {
    let settings = match super::load_settings::<SlotsSettings>(sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (SlotsAction::Release { group, .. }
    | SlotsAction::Resume { group }
    | SlotsAction::SetMax { group, .. }) = action;
    let Some(group) = group.as_deref().or(settings.group.as_deref()) else {
        eprintln!(
            "sidekick: no slot group: pass --group, or set slot.group or update.app_id \
             in the configuration"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    };
    let result = match action {
        SlotsAction::Release { holder, .. } => release(&settings, group, holder).await,
        SlotsAction::Resume { .. } => resume(&settings, group).await,
        SlotsAction::SetMax { max, .. } => set_max(&settings, group, max.get()).await,
    };
    match result {
        Ok(done) => {
            println!("{}", sanitize_to(&done, MAX_LINE_CHARS));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn release(settings: &SlotsSettings, group: &str, holder: &str) -> Result<String, ExitCode> {
    if let (SlotBackend::Fleetlock, Some(base)) = (settings.backend, &settings.fleetlock_url) {
        let client = fleetlock_client(settings, base, group, holder, "")?;
        match client.halt_record() {
            Ok(Some(r)) if r.holder == holder => {
                return fail(format!(
                    "{holder} halted group {group} at version {} ({}) and keeps its lock; \
                     `sidekick slots resume` lifts the halt and unlocks it",
                    sanitize(&r.marker.version),
                    sanitize(&r.marker.reason)
                ));
            }
            Ok(_) => {}
            Err(err) => return fail(format!("failed to read the halt of group {group}: {err}")),
        }
        return match client.unlock().await {
            Ok(()) => Ok(format!(
                "unlocked {holder} in FleetLock group {group} at {base}"
            )),
            Err(err) => fail(format!("failed to unlock {holder} at {base}: {err}")),
        };
    }
    let mut client = super::connect(&settings.etcd).await?;
    match etcd::release_holder(&mut client, group, holder).await {
        Ok(keys) if keys.is_empty() => Ok(format!(
            "no slot of group {group} is held by {holder}; nothing to release"
        )),
        Ok(keys) => Ok(format!("released {} held by {holder}", keys.join(", "))),
        Err(err) => fail(format!(
            "failed to release {holder} in group {group}: {}",
            super::slot_error_line(&err)
        )),
    }
}

async fn resume(settings: &SlotsSettings, group: &str) -> Result<String, ExitCode> {
    if let (SlotBackend::Fleetlock, Some(base)) = (settings.backend, &settings.fleetlock_url) {
        return resume_fleetlock(settings, base, group).await;
    }
    let mut client = super::connect(&settings.etcd).await?;
    match halt::remove(&mut client, group).await {
        // The marker was written by whoever could write to etcd: each value is shown escaped
        // and capped (so is the whole line, in `run`).
        Ok(Some(m)) => Ok(format!(
            "resumed group {group} (was halted at version {} by {}: {})",
            sanitize(&m.version),
            sanitize(&m.instance),
            sanitize(&m.reason)
        )),
        Ok(None) => Ok(format!("group {group} is not halted; nothing to resume")),
        Err(err) => fail(format!(
            "failed to resume group {group}: {}",
            super::slot_error_line(&err)
        )),
    }
}

async fn set_max(settings: &SlotsSettings, group: &str, max: u32) -> Result<String, ExitCode> {
    if settings.backend == SlotBackend::Fleetlock {
        return fail(format!(
            "group {group} uses the FleetLock backend: its limit is the FleetLock server's setting"
        ));
    }
    if max > limit::MAX_STORED_LIMIT {
        return fail(format!(
            "a limit of {max} for group {group} is above {}, the most a sidekick accepts from \
             etcd",
            limit::MAX_STORED_LIMIT
        ));
    }
    let mut client = super::connect(&settings.etcd).await?;
    match limit::set(&mut client, group, max).await {
        Ok(Some(was)) => Ok(format!("stored limit {max} for group {group} (was {was})")),
        Ok(None) => Ok(format!(
            "stored limit {max} for group {group} (was slot.max of each sidekick)"
        )),
        Err(err) => fail(format!(
            "failed to store the limit of group {group}: {}",
            super::slot_error_line(&err)
        )),
    }
}

/// FleetLock keeps no halt on the server: this host's record names the holder whose lock was
/// kept; unlock it, then remove the record.
async fn resume_fleetlock(
    settings: &SlotsSettings,
    base: &Url,
    group: &str,
) -> Result<String, ExitCode> {
    let path = halt_record::path(&settings.state_dir, group);
    let record = match halt_record::read(&path) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Ok(format!(
                "group {group} is not halted on this host ({} does not exist); nothing to resume",
                path.display()
            ));
        }
        Err(err) => return fail(format!("failed to read the halt of group {group}: {err}")),
    };
    let client = fleetlock_client(
        settings,
        base,
        group,
        &record.holder,
        &record.marker.instance,
    )?;
    let m = &record.marker;
    match client.resume().await {
        Ok(()) => Ok(format!(
            "resumed FleetLock group {group} (was halted at version {} by {}: {}); unlocked {} at {base}",
            sanitize(&m.version),
            sanitize(&m.instance),
            sanitize(&m.reason),
            sanitize(&record.holder)
        )),
        Err(err) => fail(format!("failed to resume group {group}: {err}")),
    }
}

fn fleetlock_client(
    settings: &SlotsSettings,
    base: &Url,
    group: &str,
    holder: &str,
    instance: &str,
) -> Result<FleetLockSlots, ExitCode> {
    let who = SlotHolder {
        holder: holder.to_string(),
        instance: instance.to_string(),
    };
    FleetLockSlots::new(base, group, &who, &settings.state_dir).or_else(|err| {
        fail(format!(
            "failed to set up the FleetLock client for {base}: {err}"
        ))
    })
}

fn fail<T>(message: String) -> Result<T, ExitCode> {
    eprintln!("sidekick: {}", sanitize_to(&message, MAX_LINE_CHARS));
    Err(ExitCode::FAILURE)
}
