//! Bodies of the subcommands (`run`; the one-shot `update-check`, `status`, `slots`): each loads the
//! configuration, talks to the update service, etcd or the FleetLock server, prints what it found
//! or did, and returns the exit code.

pub mod run;
pub mod slots;
pub mod status;
pub mod update_check;

use std::process::ExitCode;

use crate::config::{self, ConfigSources, LoadedConfig, Settings};

/// Exit code for an unusable configuration (also clap's code for bad flags).
pub const EXIT_CONFIG: u8 = 2;

/// The loaded configuration, or [`EXIT_CONFIG`] after printing why it cannot be used.
/// Secret files that others can read are logged as warnings, as ssh does.
pub fn load_config(sources: &ConfigSources) -> Result<LoadedConfig, ExitCode> {
    let loaded = config::load(sources).map_err(|err| {
        eprintln!("sidekick: invalid configuration: {err}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    for warning in config::secrets::secret_file_warnings(&loaded.settings) {
        tracing::warn!("{warning}");
    }
    Ok(loaded)
}

/// The validated settings, or the exit code after printing why there are none.
pub fn load_settings(sources: &ConfigSources) -> Result<Settings, ExitCode> {
    load_config(sources).map(|loaded| loaded.settings)
}

/// A connected etcd client, or failure after printing why.
pub async fn connect(settings: &Settings) -> Result<etcd_client::Client, ExitCode> {
    crate::etcd::connect(&settings.etcd).await.map_err(|err| {
        eprintln!("sidekick: {err:#}");
        ExitCode::FAILURE
    })
}
