//! Bodies of the subcommands (`run`; the one-shot `update-check`, `status`, `slots`): each loads the
//! configuration, talks to the update service, etcd or the FleetLock server, prints what it found
//! or did, and returns the exit code.

pub mod etcd_role;
pub mod handoff;
pub mod rollout;
mod rollout_status;
pub mod run;
pub mod slots;
pub mod status;
pub mod update_check;

use std::process::ExitCode;

use crate::config::{self, ConfigError, ConfigSources, EtcdOptions, LoadedConfig, Validated};
use crate::terminal_text::{MAX_LINE_CHARS, sanitize_to};

/// Exit code for an unusable configuration (also clap's code for bad flags).
pub const EXIT_CONFIG: u8 = 2;

/// The whole configuration, or [`EXIT_CONFIG`] after printing why it cannot be used.
/// Secret files that others can read are logged as warnings, as ssh does, and so is an update
/// service accepted over plain http (`update.allow_insecure`).
pub fn load_config(sources: &ConfigSources) -> Result<LoadedConfig, ExitCode> {
    let loaded = config::load(sources).map_err(refused)?;
    warn_about_secrets(&loaded.settings.etcd);
    if let Some(warning) = config::insecure_warning(&loaded.settings.update) {
        tracing::warn!("{warning}");
    }
    Ok(loaded)
}

/// The settings a command reads, validated alone (see [`Validated`]), or [`EXIT_CONFIG`] after
/// printing why they cannot be used.
pub fn load_settings<S: Validated>(sources: &ConfigSources) -> Result<S, ExitCode> {
    let settings = config::load_as::<S>(sources).map_err(refused)?;
    warn_about_secrets(settings.etcd());
    Ok(settings)
}

fn refused(err: ConfigError) -> ExitCode {
    eprintln!("sidekick: invalid configuration: {err}");
    ExitCode::from(EXIT_CONFIG)
}

fn warn_about_secrets(etcd: &EtcdOptions) {
    for warning in config::secrets::secret_file_warnings(etcd) {
        tracing::warn!("{warning}");
    }
    if let Some(warning) = config::etcd_insecure_warning(etcd) {
        tracing::warn!("{warning}");
    }
}

/// A connected etcd client, or failure after printing why in one line (the endpoints and the
/// cause; the client's full error only with `-v`).
pub async fn connect(settings: &EtcdOptions) -> Result<etcd_client::Client, ExitCode> {
    connect_or_why(settings).await.map_err(|why| {
        eprintln!("sidekick: {}", sanitize_to(&why, MAX_LINE_CHARS));
        ExitCode::FAILURE
    })
}

/// A connected etcd client, or the one line saying why not, unescaped (for a command that shows
/// the failure itself, as `status --json` does).
pub async fn connect_or_why(settings: &EtcdOptions) -> Result<etcd_client::Client, String> {
    crate::etcd::connect(settings)
        .await
        .map_err(|err| format!("{err:#}"))
}

/// A slot or etcd request's failure as one line: an etcd error says its cause in a few words
/// ([`crate::etcd::describe`]) rather than the client's nested debug text, which goes to the
/// DEBUG log (`-v`).
pub fn slot_error_line(err: &crate::slot::SlotError) -> String {
    match err {
        crate::slot::SlotError::Etcd(e) => {
            tracing::debug!("etcd request failed: {e:?}");
            format!("etcd request failed: {}", crate::etcd::describe(e))
        }
        other => other.to_string(),
    }
}
