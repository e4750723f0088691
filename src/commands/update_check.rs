//! `sidekick update-check`: one update check against the configured Omaha service, printed as one
//! JSON object. The policy (validation, denylist, the 3/0 for a refused offer) is the daemon's
//! own, [`crate::agent::poll::check`]; it sends no events except the error event for an offer it
//! refuses.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use semver::Version;
use serde::Serialize;

use crate::agent::poll::{self, CheckResult, Denylist, OfferRules};
use crate::config::{ConfigSources, Settings};
use crate::identity;
use crate::omaha::{AppInstance, HttpTimeouts, HttpUpdateSource};
use crate::systemd::environment::{VERSION_VARIABLE, service_environment, variable};

/// The result of one check, as printed.
#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CheckReport {
    Update {
        version: String,
        image: String,
        sha256: Option<String>,
    },
    NoUpdate,
    OnHold {
        reason: String,
    },
    /// A version that failed on this instance and was rolled back; skipped until a newer one.
    Denylisted {
        version: String,
    },
    /// The group's rollout is halted (by `version`, for `reason`): no check was sent.
    Halted {
        version: String,
        reason: String,
    },
    Error {
        kind: String,
        detail: String,
    },
}

impl CheckReport {
    fn error(kind: &str, detail: impl ToString) -> Self {
        CheckReport::Error {
            kind: kind.to_string(),
            detail: detail.to_string(),
        }
    }

    /// True when the check itself completed (update, no update or on hold).
    pub fn completed(&self) -> bool {
        !matches!(self, CheckReport::Error { .. })
    }
}

/// `sidekick update-check`: prints the report; exit 0 when the check completed, 1 on error.
pub async fn run(
    sources: &ConfigSources,
    current_version: Option<&str>,
    interactive: bool,
) -> ExitCode {
    let settings = match super::load_settings(sources) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let report = update_check(&settings, current_version, interactive).await;
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

/// The longest a whole `update-check` takes: reading the unit's version, the check, and the
/// event for a refused offer, each request also bounded by [`HttpTimeouts::default`].
pub const UPDATE_CHECK_LIMIT: Duration = Duration::from_secs(55);

/// Runs one check; `current_version` overrides the version read from the unit over D-Bus.
pub async fn update_check(
    settings: &Settings,
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
pub async fn update_check_within(
    settings: &Settings,
    current_version: Option<&str>,
    interactive: bool,
    timeouts: HttpTimeouts,
    limit: Duration,
) -> CheckReport {
    let check = check_once(settings, current_version, interactive, timeouts);
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
    settings: &Settings,
    current_version: Option<&str>,
    interactive: bool,
    timeouts: HttpTimeouts,
) -> CheckReport {
    let current = match current_version {
        Some(raw) => Version::parse(raw)
            .map_err(|err| format!("--current-version `{raw}` is not a semantic version: {err}")),
        None => unit_version(&settings.instance.unit).await,
    };
    let current = match current {
        Ok(version) => version,
        Err(detail) => return CheckReport::error("current-version", detail),
    };
    let Some(server) = settings.update.server.clone() else {
        return CheckReport::error("config", "update.server is not set");
    };
    let instance = match app_instance(settings) {
        Ok(instance) => instance,
        Err(err) => return CheckReport::error("identity", err),
    };
    let ca_file = settings.update.ca_file.as_deref();
    let source = match HttpUpdateSource::new(server, instance, timeouts, ca_file) {
        Ok(source) => source,
        Err(err) => return CheckReport::error(err.kind(), err),
    };
    let denylist = match Denylist::load(&settings.daemon.state_dir, &settings.instance.name) {
        Ok(denylist) => denylist,
        Err(err) => return CheckReport::error(err.kind(), err),
    };
    let rules = OfferRules {
        image: settings.update.image.clone(),
        pin_digest: settings.update.pin_digest,
        server: settings.update.server.clone(),
    };
    match poll::check(&source, &current, &rules, &denylist, interactive).await {
        CheckResult::Offer(valid) => CheckReport::Update {
            version: valid.version.to_string(),
            image: valid.image.as_str().to_string(),
            sha256: valid.sha256.clone(),
        },
        CheckResult::NoUpdate => CheckReport::NoUpdate,
        CheckResult::OnHold { reason } => CheckReport::OnHold { reason },
        CheckResult::Denylisted { version } => CheckReport::Denylisted {
            version: version.to_string(),
        },
        CheckResult::Halted { version, reason } => CheckReport::Halted { version, reason },
        CheckResult::Refused { refusal, reported } => {
            tracing::warn!(error = %refusal, "refused the offered update");
            if let Err(err) = reported {
                tracing::warn!(error = %err, "failed to report the refused offer");
            }
            CheckReport::error(refusal.kind(), refusal)
        }
        CheckResult::ServerStatus { kind, detail } | CheckResult::Unreachable { kind, detail } => {
            CheckReport::error(&kind, detail)
        }
    }
}

/// The instance as the update service knows it.
pub fn app_instance(settings: &Settings) -> Result<AppInstance, identity::IdentityError> {
    let update = &settings.update;
    Ok(AppInstance {
        app_id: update.app_id.clone(),
        track: update.track.clone(),
        arch: update.arch.clone(),
        machine_id: identity::read_app_machine_id(
            Path::new(identity::MACHINE_ID_PATH),
            &update.app_id,
            &settings.instance.unit,
        )?,
        boot_id: identity::read_boot_id(Path::new(identity::BOOT_ID_PATH))?,
    })
}

/// The version the unit runs, from `SIDEKICK_VERSION` in its environment.
async fn unit_version(unit: &str) -> Result<Version, String> {
    let conn = zbus::Connection::system()
        .await
        .map_err(|err| format!("failed to connect to the system bus: {err}"))?;
    let environment = service_environment(&conn, unit)
        .await
        .map_err(|err| format!("failed to read the environment of {unit}: {err}"))?;
    let raw = variable(&environment, VERSION_VARIABLE).ok_or_else(|| {
        format!("{unit} sets no {VERSION_VARIABLE}; set it in the unit or pass --current-version")
    })?;
    Version::parse(raw).map_err(|err| {
        format!("{unit} has {VERSION_VARIABLE}={raw}, which is not a semantic version: {err}")
    })
}
