//! SIGHUP: reads the configuration again from the sources the daemon started with (drop-ins,
//! `--config` files and flags; the embedded defaults for a dry run that has none), checks it as
//! at start and sets it against the settings in force ([`config::reload`]). An invalid one is
//! logged as an ERROR naming file, line and key, and the running configuration stays. A valid one
//! is handed to the driver as [`Reconfigure`], which puts the live keys in force without
//! dropping the registration; each key that needs a restart is logged as a WARN and keeps its
//! running value. systemd hears `RELOADING=1` at the signal and `READY=1` when it is done.

use anyhow::Context as _;
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{registration_entries, step_settings, update_client, verify_rise};
use crate::agent::update::UpdateReload;
use crate::agent::{HealthRules, Reconfigure};
use crate::config::reload::{Reconciled, reconcile};
use crate::config::{self, ConfigSources, HealthCheck, Settings};
use crate::health::HealthProbe;
use crate::notify;
use crate::omaha::{AnyUpdateSource, UpdateBackend};
use crate::registry::address::announced_host;

/// What a reload reads, and what it sets the result against.
pub(super) struct Reloader {
    /// The sources of the configuration; `None` for the embedded defaults, whose update
    /// service is in memory.
    pub sources: Option<ConfigSources>,
    /// The configuration root the daemon started with (where the embedded defaults' runtime
    /// directory lives).
    pub root: std::path::PathBuf,
    /// The settings in force: the last good configuration, with the keys that wait for a
    /// restart as the process started with them.
    pub running: Settings,
    /// The announced host in force.
    pub host: String,
    pub dry_run: bool,
}

impl Reloader {
    /// Reloads on each SIGHUP until the driver is gone.
    pub async fn follow(
        mut self,
        mut hangups: Signal,
        driver: mpsc::Sender<Reconfigure<HealthProbe>>,
    ) {
        while hangups.recv().await.is_some() {
            notify::reloading();
            info!("SIGHUP: reading the configuration again");
            match self.reload() {
                // The driver says READY=1 once it has put them in force.
                Ok(Some(reconfigure)) => {
                    if driver.send(reconfigure).await.is_err() {
                        return;
                    }
                }
                Ok(None) => notify::ready(),
                Err(err) => {
                    error!("configuration not reloaded, the running one stays in force: {err:#}");
                    notify::ready();
                }
            }
        }
    }

    /// Reads and checks the configuration; what the driver must put in force, if anything.
    /// Nothing is taken over unless all of it is usable.
    fn reload(&mut self) -> anyhow::Result<Option<Reconfigure<HealthProbe>>> {
        let loaded = match &self.sources {
            Some(sources) => config::load(sources),
            None => config::load_embedded(&self.root),
        }?;
        for warning in config::secrets::secret_file_warnings(&loaded.settings.etcd) {
            warn!("{warning}");
        }
        let reconciled = reconcile(&self.running, loaded.settings);
        let Reconciled {
            settings,
            applied,
            deferred,
        } = &reconciled;
        let host = match settings.registration.host == self.running.registration.host {
            true => self.host.clone(),
            false => announced_host(settings.registration.host.as_deref())?,
        };
        let reconfigure = match applied.is_empty() {
            true => None,
            false => Some(self.reconfigure(settings, &host)?),
        };
        for key in deferred {
            warn!(
                key,
                "{key} changed: takes effect after a restart; the running value stays"
            );
        }
        let later = applied
            .iter()
            .any(|key| key.starts_with("update.") || key.starts_with("swap.") || *key == "rollout");
        match (applied.is_empty(), deferred.is_empty()) {
            (true, true) => info!("configuration reloaded: nothing changed"),
            (true, false) => info!("configuration reloaded: nothing applies before a restart"),
            (false, _) if later => info!(
                "configuration reloaded: applied {} (update and swap settings from the next \
                 update pass, rollout from the next slot request)",
                applied.join(", ")
            ),
            (false, _) => info!("configuration reloaded: applied {}", applied.join(", ")),
        }
        self.running = reconciled.settings;
        self.host = host;
        Ok(reconfigure)
    }

    /// What the driver puts in force for `settings`.
    fn reconfigure(
        &self,
        settings: &Settings,
        host: &str,
    ) -> anyhow::Result<Reconfigure<HealthProbe>> {
        let health = &settings.health;
        let probe =
            HealthProbe::from_settings(health).context("failed to set up the health check")?;
        let updates = UpdateReload {
            settings: settings.update.clone(),
            source: self.update_source(settings)?,
            steps: step_settings(settings),
            verify_timeout: settings.swap.verify_timeout,
            rise: verify_rise(settings),
        };
        Ok(Reconfigure {
            entries: registration_entries(settings, host),
            host: host.to_string(),
            probe,
            interval: health.interval,
            rules: HealthRules {
                rise: health.rise,
                fall: health.fall,
                unchecked: health.check == HealthCheck::None,
            },
            updates,
            rollout: settings.rollout.clone(),
            rollout_floor: super::rollout_floor(settings),
        })
    }

    /// A new client of the configured update service when its address, arch or CA changed.
    fn update_source(&self, settings: &Settings) -> anyhow::Result<Option<AnyUpdateSource>> {
        let (old, new) = (&self.running.update, &settings.update);
        let same = old.server == new.server && old.arch == new.arch && old.ca_file == new.ca_file;
        let Some(server) = new
            .server
            .clone()
            .filter(|_| !same && self.sources.is_some())
        else {
            return Ok(None);
        };
        let instance =
            super::super::update_check::app_instance(&settings.update, &settings.instance)
                .context("failed to identify the instance to the update service")?;
        let client = update_client(server, instance, settings)?;
        Ok(Some(AnyUpdateSource::new(
            UpdateBackend::Http(client),
            self.dry_run,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[instance]\nunit = \"web@1.service\"\n\
                        [registration]\nhost = \"127.0.0.1\"\nport = 8080\n\
                        [health]\ncheck = \"none\"\n[update]\nenabled = false\n";

    /// A reloader over one `--config` file under `dir`, running what it says now.
    fn reloader(dir: &Path, text: &str) -> Reloader {
        let file = dir.join("sk.toml");
        std::fs::write(&file, text).unwrap();
        let sources = ConfigSources {
            root: dir.join("root"),
            files: vec![file],
            unit: None,
        };
        let running = config::load(&sources).unwrap().settings;
        Reloader {
            root: sources.root.clone(),
            sources: Some(sources),
            running,
            host: "127.0.0.1".into(),
            dry_run: false,
        }
    }

    #[test]
    fn a_live_change_is_handed_over_and_becomes_the_configuration_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut reloader = reloader(dir.path(), BASE);
        std::fs::write(dir.path().join("sk.toml"), BASE.replace("8080", "8081")).unwrap();
        let handed = reloader.reload().unwrap().expect("something to apply");
        assert_eq!(
            handed.entries,
            [(
                "/services/web/web-1".to_string(),
                r#"{"host":"127.0.0.1","port":8081}"#.to_string()
            )]
        );
        assert!(handed.rules.unchecked);
        assert!(
            handed.updates.source.is_none(),
            "no update service to reach"
        );
        assert_eq!(reloader.running.registration.port, 8081);
        // The same file again: nothing to hand over.
        assert!(reloader.reload().unwrap().is_none());
    }

    #[test]
    fn an_invalid_file_or_a_change_that_waits_for_a_restart_changes_nothing_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut reloader = reloader(dir.path(), BASE);
        let before = reloader.running.clone();
        let file = dir.path().join("sk.toml");
        std::fs::write(&file, BASE.replace("port = 8080", "port = 8081\nprot = 1")).unwrap();
        let Err(err) = reloader.reload() else {
            panic!("an unknown key was accepted");
        };
        let err = err.to_string();
        assert!(err.contains("sk.toml:6: key `registration.prot`"), "{err}");
        assert_eq!(reloader.running, before);
        // Only a key that needs a restart: nothing to hand over, the running value stays.
        std::fs::write(&file, format!("{BASE}[daemon]\nstate_dir = \"/srv/sk\"\n")).unwrap();
        assert!(reloader.reload().unwrap().is_none());
        assert_eq!(reloader.running, before);
    }
}
