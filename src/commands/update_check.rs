//! `sidekick update-check`: one update check, printed as one JSON object.
//!
//! When the instance's daemon answers on its control socket ([`crate::control`]), the daemon runs
//! the check and this prints its answer: in Nebraska an update check that gets an offer is a
//! grant, counted against the group's limits and timed out when nobody acts on it, so only the
//! daemon, which acts on it, should get one. With no daemon it checks only with `--standalone`,
//! against the configured Omaha service, with the daemon's own policy (validation, denylist, the
//! 3/0 for a refused offer: [`crate::agent::update::policy::check`]); it sends no events except the error
//! event for an offer it refuses.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use semver::Version;

use crate::agent::update::policy::{self, CheckResult, Denylist, OfferRules};
use crate::config::{
    ConfigSources, Handoff, InstanceSettings, Settings, UpdateCheckSettings, UpdateSettings,
};
pub use crate::control::CheckReport;
use crate::control::client::{self, AskError};
use crate::identity;
use crate::omaha::{AppInstance, HttpTimeouts, HttpUpdateSource};
use crate::systemd::control::envfile;
use crate::systemd::environment::{
    IMAGE_VARIABLE, VERSION_VARIABLE, service_environment, variable,
};

/// How long `update-check` waits for the daemon's answer: its own bound on a check, and a little.
pub const DAEMON_ANSWER_LIMIT: Duration =
    Duration::from_secs(crate::control::server::CHECK_LIMIT.as_secs() + 5);

/// `sidekick update-check`: prints the report; exit 0 when the check completed, 1 on error (also
/// when no daemon answers and `standalone` is not set).
pub async fn run(
    sources: &ConfigSources,
    current_version: Option<&str>,
    interactive: bool,
    standalone: bool,
) -> ExitCode {
    let settings = match super::load_settings::<UpdateCheckSettings>(sources) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let socket = settings.daemon.control_socket.as_deref();
    let report = match ask_daemon(socket, current_version, interactive).await {
        Ok(report) => report,
        Err(no_daemon) if standalone => {
            // Only a check of its own needs `[update]` complete.
            let update = match &settings.update {
                Ok(update) => update,
                Err(why) => {
                    eprintln!("sidekick: invalid configuration: {why}");
                    return ExitCode::from(super::EXIT_CONFIG);
                }
            };
            tracing::warn!(
                "{no_daemon}: checking standalone. An update check that gets an offer is a grant: \
                 the update service counts it against the group's limits and times it out if no \
                 update follows"
            );
            let check = CheckSettings {
                instance: &settings.instance,
                update,
                state_dir: &settings.daemon.state_dir,
                handoff: settings.handoff,
            };
            update_check(check, current_version, interactive).await
        }
        Err(no_daemon) => {
            let detail = format!(
                "{no_daemon}, and update-check sends no check of its own without --standalone: \
                 in Nebraska an update check that gets an offer is a grant, counted against the \
                 group's limits and timed out if no update follows. Start the daemon \
                 (sidekick run), or pass --standalone to check anyway"
            );
            eprintln!("sidekick: {detail}");
            CheckReport::error("no-daemon", detail)
        }
    };
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(err) => eprintln!("sidekick: failed to print the report: {err}"),
    }
    if report.completed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The daemon's answer to "check now"; `Err` (why) when no daemon answers on `socket`. A daemon
/// that is there but answers badly is an error report, never a reason to check beside it.
async fn ask_daemon(
    socket: Option<&Path>,
    current_version: Option<&str>,
    interactive: bool,
) -> Result<CheckReport, String> {
    let Some(path) = socket else {
        return Err("daemon.control_socket is off, so no daemon can be asked".into());
    };
    match client::check_now(path, DAEMON_ANSWER_LIMIT).await {
        Ok(report) => {
            tracing::info!(socket = %path.display(), "the daemon checked");
            if current_version.is_some() || interactive {
                tracing::warn!(
                    "--current-version and --interactive apply to a standalone check only: the \
                     daemon checks with the version its unit runs"
                );
            }
            Ok(report)
        }
        Err(err @ AskError::NoDaemon { .. }) => Err(err.to_string()),
        Err(err) => Ok(CheckReport::error(err.kind(), err)),
    }
}

/// The longest a whole `update-check` takes: reading the unit's version, the check, and the
/// event for a refused offer, each request also bounded by [`HttpTimeouts::default`].
pub const UPDATE_CHECK_LIMIT: Duration = Duration::from_secs(55);

/// What one standalone check reads: the instance, `[update]` and where the denylist is kept.
#[derive(Debug, Clone, Copy)]
pub struct CheckSettings<'a> {
    pub instance: &'a InstanceSettings,
    pub update: &'a UpdateSettings,
    pub state_dir: &'a Path,
    pub handoff: Handoff,
}

impl<'a> From<&'a Settings> for CheckSettings<'a> {
    fn from(settings: &'a Settings) -> Self {
        CheckSettings {
            instance: &settings.instance,
            update: &settings.update,
            state_dir: &settings.daemon.state_dir,
            handoff: settings.swap.handoff,
        }
    }
}

/// Runs one check; `current_version` overrides the version read from the unit over D-Bus.
pub async fn update_check(
    settings: CheckSettings<'_>,
    current_version: Option<&str>,
    interactive: bool,
) -> CheckReport {
    let timeouts = HttpTimeouts::default();
    update_check_within(
        settings,
        current_version,
        interactive,
        timeouts,
        UPDATE_CHECK_LIMIT,
    )
    .await
}

/// [`update_check`] with its own per-request `timeouts` and overall `limit` (tests use short ones).
pub async fn update_check_within<'a>(
    settings: impl Into<CheckSettings<'a>>,
    current_version: Option<&str>,
    interactive: bool,
    timeouts: HttpTimeouts,
    limit: Duration,
) -> CheckReport {
    let check = check_once(settings.into(), current_version, interactive, timeouts);
    match tokio::time::timeout(limit, check).await {
        Ok(report) => report,
        Err(_) => CheckReport::error(
            "timeout",
            format!(
                "update-check did not finish within {}",
                humantime::format_duration(limit)
            ),
        ),
    }
}

async fn check_once(
    settings: CheckSettings<'_>,
    current_version: Option<&str>,
    interactive: bool,
    timeouts: HttpTimeouts,
) -> CheckReport {
    // With --current-version the unit is not read, so no running repository is enforced.
    let current = match current_version {
        Some(raw) => Version::parse(raw)
            .map(|version| (version, None))
            .map_err(|err| format!("--current-version `{raw}` is not a semantic version: {err}")),
        None => unit_version(&settings.instance.unit)
            .await
            .map(|(version, image)| {
                // Environment-file mode: the root-owned file's values win, as systemd applies them.
                match settings.handoff {
                    Handoff::DropIn => (version, image),
                    Handoff::EnvironmentFile => match envfile::file_values(
                        Path::new(envfile::VERSIONS_DIR),
                        &settings.instance.name,
                    ) {
                        Some(values) => match policy::parse_version(&values.version) {
                            Ok(version) => (version, Some(values.image)),
                            Err(_) => (version, image),
                        },
                        None => (version, image),
                    },
                }
            }),
    };
    let (current, running_image) = match current {
        Ok(running) => running,
        Err(detail) => return CheckReport::error("current-version", detail),
    };
    let Some(server) = settings.update.server.clone() else {
        return CheckReport::error("config", "update.server is not set");
    };
    let instance = match app_instance(settings.update, settings.instance) {
        Ok(instance) => instance,
        Err(err) => return CheckReport::error("identity", err),
    };
    let ca_file = settings.update.ca_file.as_deref();
    let source = match HttpUpdateSource::new(server, instance, timeouts, ca_file) {
        Ok(source) => source,
        Err(err) => return CheckReport::error(err.kind(), err),
    };
    let denylist = match Denylist::load(settings.state_dir, &settings.instance.name) {
        Ok(denylist) => denylist,
        Err(err) => return CheckReport::error(err.kind(), err),
    };
    let rules = OfferRules::new(settings.update, running_image);
    let result = policy::check(&source, &current, &rules, &denylist, interactive).await;
    if let CheckResult::Refused { refusal, reported } = &result {
        tracing::warn!(error = %refusal, "refused the offered update");
        if let Err(err) = reported {
            tracing::warn!(error = %err, "failed to report the refused offer");
        }
    }
    CheckReport::from(&result)
}

/// The instance as the update service knows it.
pub fn app_instance(
    update: &UpdateSettings,
    instance: &InstanceSettings,
) -> Result<AppInstance, identity::IdentityError> {
    Ok(AppInstance {
        app_id: update.app_id.clone(),
        track: update.track.clone(),
        arch: update.arch.clone(),
        machine_id: identity::read_app_machine_id(
            Path::new(identity::MACHINE_ID_PATH),
            &update.app_id,
            &instance.unit,
        )?,
        boot_id: identity::read_boot_id(Path::new(identity::BOOT_ID_PATH))?,
        name: instance.name.clone(),
    })
}

/// The version the unit runs, from `SIDEKICK_VERSION` in its environment, and when it sets one, its
/// `SIDEKICK_IMAGE`.
async fn unit_version(unit: &str) -> Result<(Version, Option<String>), String> {
    let conn = zbus::Connection::system()
        .await
        .map_err(|err| format!("failed to connect to the system bus: {err}"))?;
    let environment = service_environment(&conn, unit)
        .await
        .map_err(|err| format!("failed to read the environment of {unit}: {err}"))?;
    let raw = variable(&environment, VERSION_VARIABLE).ok_or_else(|| {
        format!("{unit} sets no {VERSION_VARIABLE}; set it in the unit or pass --current-version")
    })?;
    let version = policy::parse_version(raw).map_err(|err| format!("{unit}: {err}"))?;
    let image = variable(&environment, IMAGE_VARIABLE).map(str::to_string);
    Ok((version, image))
}
