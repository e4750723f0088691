//! `sidekick slots release|resume`: an operator's hands on the update slots of a group.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::{ConfigSources, Settings, SlotBackend};
use crate::slot::{FleetLockSlots, SlotHolder, SlotLock, etcd, halt};

/// What to do to a slot group.
#[derive(Debug, Clone, Subcommand)]
pub enum SlotsAction {
    /// Release the slot held by a holder id (to clear a holder known to be gone).
    Release {
        /// The holder id, as shown by `sidekick status`.
        #[arg(long, value_name = "ID")]
        holder: String,
        /// The slot group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Remove the halt marker of a group, so updates go on.
    Resume {
        /// The slot group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
}

/// `sidekick slots ...`.
pub async fn run(sources: &ConfigSources, action: &SlotsAction) -> ExitCode {
    let settings = match super::load_settings(sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = match action {
        SlotsAction::Release { holder, group } => {
            let group = group.as_deref().unwrap_or(&settings.slot.group);
            release(&settings, group, holder).await
        }
        SlotsAction::Resume { group } => {
            let group = group.as_deref().unwrap_or(&settings.slot.group);
            resume(&settings, group).await
        }
    };
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn release(settings: &Settings, group: &str, holder: &str) -> Result<String, ExitCode> {
    if let (SlotBackend::Fleetlock, Some(base)) =
        (settings.slot.backend, &settings.slot.fleetlock_url)
    {
        let who = SlotHolder {
            holder: holder.to_string(),
            instance: String::new(),
        };
        let unlocked = match FleetLockSlots::new(base, group, &who) {
            Ok(client) => client.release_stale().await,
            Err(err) => Err(err),
        };
        return match unlocked {
            Ok(()) => Ok(format!(
                "unlocked {holder} in FleetLock group {group} at {base}"
            )),
            Err(err) => fail(format!("failed to unlock {holder} at {base}: {err}")),
        };
    }
    let mut client = super::connect(settings).await?;
    match etcd::release_holder(&mut client, group, holder).await {
        Ok(keys) if keys.is_empty() => Ok(format!(
            "no slot of group {group} is held by {holder}; nothing to release"
        )),
        Ok(keys) => Ok(format!("released {} held by {holder}", keys.join(", "))),
        Err(err) => fail(format!(
            "failed to release {holder} in group {group}: {err}"
        )),
    }
}

async fn resume(settings: &Settings, group: &str) -> Result<String, ExitCode> {
    if settings.slot.backend == SlotBackend::Fleetlock {
        return fail(
            "the fleetlock backend has no halt marker: a halted instance keeps its lock; \
             release it with `sidekick slots release --holder ID`"
                .into(),
        );
    }
    let mut client = super::connect(settings).await?;
    match halt::remove(&mut client, group).await {
        Ok(Some(m)) => Ok(format!(
            "resumed group {group} (was halted at version {} by {}: {})",
            m.version, m.instance, m.reason
        )),
        Ok(None) => Ok(format!("group {group} is not halted; nothing to resume")),
        Err(err) => fail(format!("failed to resume group {group}: {err}")),
    }
}

fn fail(message: String) -> Result<String, ExitCode> {
    eprintln!("sidekick: {message}");
    Err(ExitCode::FAILURE)
}
