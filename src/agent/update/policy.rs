//! The update policy: one check against the update source, the offer validated
//! ([`crate::omaha::validate_offer`]) and kept to the repository the unit runs or one
//! `update.allowed_repositories` lists ([`crate::omaha::check_repository`]), a version on the
//! local [`Denylist`] skipped, the version label held to the image ([`version_rules`]: the tag
//! carries the version, no major jump unless allowed), with `update.verify_digest` the registry
//! asked which manifest the tag names ([`crate::oci`]), a refused offer reported with 3/0; and the pace of the checks ([`Poller`] over
//! [`crate::omaha::PollSchedule`]): `update.interval` ±10 %, backing off up to 4 h only on
//! transport errors, timeouts and 5xx. A server's configuration status (`error-noPackageFound`…)
//! keeps the normal interval. Every error text has the update URL's query string redacted.
//!
//! The running version comes from systemd ([`running_version`] over [`UnitControl::running`]),
//! never from the journal alone.

use std::time::Duration;

use semver::Version;
use thiserror::Error;
use url::Url;

pub use super::denylist::Denylist;
use super::version_rules;

use crate::agent::machine::swap::SwapPlan;
use crate::control::CheckReport;
use crate::omaha::{
    CheckOutcome, Event, OfferRefusal, OmahaError, PollResult, PollSchedule, UpdateSource,
    ValidatedUpdate, check_repository, validate_offer,
};
use crate::systemd::control::{ControlError, DropIn, RunningVersion, UnitControl};
use crate::systemd::environment::VERSION_VARIABLE;

#[cfg(test)]
mod tests;

/// Why the policy could not run.
#[derive(Debug, Error)]
pub enum PollError {
    #[error("failed to read what the unit runs from systemd: {0}")]
    Control(#[from] ControlError),
    #[error("the unit sets no {VERSION_VARIABLE}; set it (and SIDEKICK_IMAGE) in the unit")]
    NoVersion,
    #[error("the unit sets no SIDEKICK_IMAGE; set it in the unit next to {VERSION_VARIABLE}")]
    NoImage,
    #[error("the unit has {VERSION_VARIABLE}={raw}, which is not a semantic version: {source}")]
    Version { raw: String, source: semver::Error },
    #[error("failed to access the denylist {}: {source}", path.display())]
    DenylistIo {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the denylist {} is unreadable: {detail}", path.display())]
    DenylistMalformed {
        path: std::path::PathBuf,
        detail: String,
    },
}

impl PollError {
    /// A stable short name for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Control(_) => "control",
            PollError::NoVersion => "no-version",
            PollError::NoImage => "no-image",
            PollError::Version { .. } => "version",
            PollError::DenylistIo { .. } => "denylist-io",
            PollError::DenylistMalformed { .. } => "denylist-malformed",
        }
    }
}

/// How offers are turned into images: the `update` settings the policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferRules {
    /// The `update.image` template.
    pub image: String,
    /// `update.pin_digest`.
    pub pin_digest: bool,
    /// The update URL, whose query string never reaches a log line.
    pub server: Option<Url>,
    /// `update.allowed_repositories`: repositories an offer may name besides the running one.
    pub allowed_repositories: Vec<String>,
    /// The image the unit runs (its `SIDEKICK_IMAGE`, read back from systemd): an offer may
    /// change its tag or digest, not its repository, unless `allowed_repositories` lists the
    /// offered one. The update pass always knows it (a unit without `SIDEKICK_IMAGE` is not
    /// checked at all, [`PollError::NoImage`]). `None` only for `update-check --current-version`,
    /// which swaps nothing and does not read the unit: then no repository is enforced.
    pub running_image: Option<String>,
    /// `update.verify_digest`: the registry must resolve the offered tag to the offer's
    /// `hash_sha256`; implies pinning.
    pub verify_digest: bool,
    /// `update.allow_major_jump`.
    pub allow_major_jump: bool,
}

impl OfferRules {
    /// The `update` settings' rules for a unit running `running_image`.
    pub fn new(settings: &crate::config::UpdateSettings, running_image: Option<String>) -> Self {
        OfferRules {
            image: settings.image.clone(),
            pin_digest: settings.pin_digest,
            server: settings.server.clone(),
            allowed_repositories: settings.allowed_repositories.clone(),
            running_image,
            verify_digest: settings.verify_digest,
            allow_major_jump: settings.allow_major_jump,
        }
    }

    /// `offer` validated against `current`, then kept to the allowed repositories.
    fn validate(
        &self,
        offer: &crate::omaha::UpdateOffer,
        current: &Version,
    ) -> Result<ValidatedUpdate, OfferRefusal> {
        // A verified digest is run pinned, so verifying needs a usable sha256 as pinning does.
        let pin = self.pin_digest || self.verify_digest;
        let update = validate_offer(offer, current, &self.image, pin)?;
        if let Some(running) = &self.running_image {
            check_repository(&update.image, running, &self.allowed_repositories)?;
        }
        version_rules::check_major_jump(&update.version, current, self.allow_major_jump)?;
        version_rules::check_tag_carries_version(&self.image, &update.image, &update.version)?;
        Ok(update)
    }
}

/// Why the registry's digest did not confirm an offer.
enum DigestCheck {
    /// The registry answered: the offer is refused.
    Refused(OfferRefusal),
    /// The registry could not be reached: ask again later.
    Unreachable(crate::oci::RegistryError),
}

/// `update.verify_digest`: the manifest the registry resolves the offered tag to must be the
/// offer's `hash_sha256`, so the update service alone cannot choose what runs.
async fn verify_digest(update: &ValidatedUpdate) -> Result<(), DigestCheck> {
    let asked = update.image.as_str().split('@').next().unwrap_or_default();
    let Some(offered) = update.sha256.clone() else {
        return Err(DigestCheck::Refused(OfferRefusal::Unpinned));
    };
    match crate::oci::manifest_digest(&update.image).await {
        Ok(registry) if registry == offered => Ok(()),
        Ok(registry) => Err(DigestCheck::Refused(OfferRefusal::DigestMismatch {
            image: asked.to_string(),
            offered,
            registry,
        })),
        Err(err) if err.is_transient() => Err(DigestCheck::Unreachable(err)),
        Err(err) => Err(DigestCheck::Refused(OfferRefusal::DigestUnverified {
            image: asked.to_string(),
            detail: err.to_string(),
        })),
    }
}

/// What one check came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// A valid offer not on the denylist: swap to it.
    Offer(Box<ValidatedUpdate>),
    NoUpdate,
    /// A rollout refusal: wait, not an error.
    OnHold {
        reason: String,
    },
    /// A valid offer of a version that failed here before; skipped until a newer one comes.
    Denylisted {
        version: Version,
    },
    /// An offer that failed validation; 3/0 was sent (`reported` says whether that worked).
    Refused {
        refusal: OfferRefusal,
        reported: Result<(), String>,
    },
    /// The service answered with a status that is not an offer (its configuration, a parse
    /// failure, a 4xx): keep the normal interval.
    ServerStatus {
        kind: String,
        detail: String,
    },
    /// A transport error, a timeout or a 5xx: back off.
    Unreachable {
        kind: String,
        detail: String,
    },
    /// The group's rollout is halted: no check was sent, since an answered offer is a grant the
    /// service would count and time out unused. The next check after `slots resume` asks again.
    Halted {
        version: String,
        reason: String,
    },
    /// The running version could not be read from systemd: no check was sent; back off.
    UnknownVersion {
        kind: String,
        detail: String,
    },
    /// A dry run against a real service: no check is sent, since the service counts an answered
    /// offer as a granted update.
    NotChecked,
    /// The unit is not active and registered, so an offer could not be taken: no check was sent,
    /// since an answered offer is a grant the service keeps open (and offers again) until a 3/x.
    NotServing,
}

impl CheckResult {
    /// How this result paces the next check.
    pub fn pacing(&self) -> PollResult {
        match self {
            CheckResult::Unreachable { .. } | CheckResult::UnknownVersion { .. } => {
                PollResult::Failure
            }
            CheckResult::OnHold { .. } => PollResult::OnHold,
            _ => PollResult::Success,
        }
    }

    /// A short stable label for metrics, the instance record and the control socket: the one
    /// table of them.
    pub fn label(&self) -> &'static str {
        match self {
            CheckResult::Offer(_) => "update",
            CheckResult::NoUpdate => "no-update",
            CheckResult::OnHold { .. } => "on-hold",
            CheckResult::Denylisted { .. } => "denylisted",
            // An instance stuck on an offer it will never take shows as such (status, metrics).
            CheckResult::Refused {
                refusal: OfferRefusal::NotNewer { .. },
                ..
            } => "not-newer",
            CheckResult::Refused { .. } => "refused",
            CheckResult::Halted { .. } => "halted",
            CheckResult::ServerStatus { .. } | CheckResult::Unreachable { .. } => "error",
            CheckResult::UnknownVersion { .. } => "unknown-version",
            CheckResult::NotChecked => "not-checked",
            CheckResult::NotServing => "not-serving",
        }
    }

    /// One line for the log and the status; the same line means nothing changed.
    pub fn summary(&self) -> String {
        match self {
            CheckResult::Offer(update) => format!("offered {}", update.version),
            CheckResult::NoUpdate => "no update".to_string(),
            CheckResult::OnHold { reason } => format!("on hold: {reason}"),
            CheckResult::Denylisted { version } => {
                format!("offered {version}, which failed here before: skipped")
            }
            CheckResult::Refused { refusal, .. } => format!("refused the offer: {refusal}"),
            CheckResult::ServerStatus { kind, detail } => {
                format!("update service says {kind}: {detail}")
            }
            CheckResult::Unreachable { kind, detail } => {
                format!("update service unreachable ({kind}): {detail}")
            }
            CheckResult::Halted { version, reason } => {
                format!("not checked: the group's rollout is halted by {version} ({reason})")
            }
            CheckResult::UnknownVersion { kind, detail } => {
                format!("not checked: the running version is unknown ({kind}): {detail}")
            }
            CheckResult::NotChecked => "not checked: a dry run sends no check".to_string(),
            CheckResult::NotServing => {
                "not checked: the unit is not active and registered (an offer could not be taken)"
                    .to_string()
            }
        }
    }
}

impl From<&CheckResult> for CheckReport {
    /// The result as `update-check` prints it; a refused offer is an error of the refusal's kind.
    fn from(result: &CheckResult) -> CheckReport {
        match result {
            CheckResult::Offer(valid) => CheckReport::Update {
                version: valid.version.to_string(),
                image: valid.image.as_str().to_string(),
                sha256: valid.sha256.clone(),
            },
            CheckResult::NoUpdate => CheckReport::NoUpdate,
            CheckResult::OnHold { reason } => CheckReport::OnHold {
                reason: reason.clone(),
            },
            CheckResult::Denylisted { version } => CheckReport::Denylisted {
                version: version.to_string(),
            },
            CheckResult::Halted { version, reason } => CheckReport::Halted {
                version: version.clone(),
                reason: reason.clone(),
            },
            CheckResult::Refused { refusal, .. } => CheckReport::error(refusal.kind(), refusal),
            CheckResult::ServerStatus { kind, detail }
            | CheckResult::Unreachable { kind, detail }
            | CheckResult::UnknownVersion { kind, detail } => CheckReport::error(kind, detail),
            CheckResult::NotChecked => CheckReport::error(
                "dry-run",
                "a dry run sends no check to a real update service: the service counts an \
                 answered offer as a granted update",
            ),
            CheckResult::NotServing => CheckReport::error(
                "not-serving",
                "the unit is not active and registered: no check is sent, since an offer it \
                 could not take would stay granted in the service",
            ),
        }
    }
}

/// One check for an instance running `current`: validate, consult the denylist, report a
/// refusal with 3/0.
pub async fn check<S: UpdateSource>(
    source: &S,
    current: &Version,
    rules: &OfferRules,
    denylist: &Denylist,
    interactive: bool,
) -> CheckResult {
    let redact = |text: String| redact(&text, rules.server.as_ref());
    let offer = match source.check(current, interactive).await {
        Err(err) => return classify_error(&err, redact(err.to_string())),
        Ok(CheckOutcome::NoUpdate) => return CheckResult::NoUpdate,
        Ok(CheckOutcome::OnHold { reason }) => return CheckResult::OnHold { reason },
        Ok(CheckOutcome::Error { kind, detail }) => {
            return CheckResult::ServerStatus {
                kind: kind.as_str().to_string(),
                detail: redact(detail),
            };
        }
        Ok(CheckOutcome::Update(offer)) => offer,
    };
    let refuse = |refusal: OfferRefusal| async move {
        let event = Event::Failed {
            error_code: refusal.error_code(),
        };
        let reported = source
            .send_event(current, event)
            .await
            .map_err(|err| redact(err.to_string()));
        CheckResult::Refused { refusal, reported }
    };
    let update = match rules.validate(&offer, current) {
        Ok(update) => update,
        Err(refusal) => return refuse(refusal).await,
    };
    if denylist.contains(&update.version) {
        return CheckResult::Denylisted {
            version: update.version,
        };
    }
    if rules.verify_digest {
        match verify_digest(&update).await {
            Ok(()) => {}
            Err(DigestCheck::Refused(refusal)) => return refuse(refusal).await,
            Err(DigestCheck::Unreachable(err)) => {
                return CheckResult::Unreachable {
                    kind: err.kind().to_string(),
                    detail: err.to_string(),
                };
            }
        }
    }
    CheckResult::Offer(Box::new(update))
}

/// Transport errors, timeouts and 5xx back off; anything else is the server's answer.
fn classify_error(error: &OmahaError, detail: String) -> CheckResult {
    let kind = error.kind().to_string();
    let transport = match error {
        OmahaError::Connect(_)
        | OmahaError::Timeout
        | OmahaError::Body(_)
        | OmahaError::Request(_) => true,
        OmahaError::HttpStatus { status } => *status >= 500,
        _ => false,
    };
    if transport {
        CheckResult::Unreachable { kind, detail }
    } else {
        CheckResult::ServerStatus { kind, detail }
    }
}

/// `text` with the query string of `server` (which may carry a token) replaced.
pub fn redact(text: &str, server: Option<&Url>) -> String {
    match server.and_then(Url::query) {
        Some(query) if !query.is_empty() => text.replace(query, "REDACTED"),
        _ => text.to_string(),
    }
}

/// The pace of the checks and the memory of the last result, so a repeated answer is logged once.
#[derive(Debug, Clone)]
pub struct Poller {
    schedule: PollSchedule,
    last: Option<String>,
}

impl Poller {
    /// Checks every `interval` (±10 %).
    pub fn new(interval: Duration) -> Poller {
        Poller {
            schedule: PollSchedule::new(interval),
            last: None,
        }
    }

    /// Checks every `interval` from the next delay on.
    pub fn set_interval(&mut self, interval: Duration) {
        self.schedule.set_interval(interval);
    }

    /// Records a result: the delay before the next check, and whether the result differs from
    /// the previous one (log it only then).
    pub fn record(&mut self, result: &CheckResult) -> (Duration, bool) {
        self.record_with(result, fastrand::f64())
    }

    /// As [`Poller::record`], with `unit_random` in `[0, 1)` choosing the jitter.
    pub fn record_with(&mut self, result: &CheckResult, unit_random: f64) -> (Duration, bool) {
        let delay = self.schedule.next_delay_with(result.pacing(), unit_random);
        let summary = result.summary();
        let changed = self.last.as_ref() != Some(&summary);
        self.last = Some(summary);
        (delay, changed)
    }
}

/// The version and image the unit runs, as systemd reports them.
pub async fn running_version<C: UnitControl>(control: &C) -> Result<(Version, DropIn), PollError> {
    parse_running(control.running().await?)
}

/// Requires both variables and a semantic version.
pub fn parse_running(running: RunningVersion) -> Result<(Version, DropIn), PollError> {
    let raw = running.version.ok_or(PollError::NoVersion)?;
    let image = running.image.ok_or(PollError::NoImage)?;
    let version = parse_version(&raw)?;
    Ok((
        version,
        DropIn {
            image,
            version: raw,
        },
    ))
}

/// The unit's `SIDEKICK_VERSION` as a semantic version: the one parser of the running version
/// (the pass, the swap's plan and `update-check` all read it so).
pub fn parse_version(raw: &str) -> Result<Version, PollError> {
    Version::parse(raw).map_err(|source| PollError::Version {
        raw: raw.to_string(),
        source,
    })
}

/// The swap for an accepted offer, from what the unit runs now.
pub fn plan(update: &ValidatedUpdate, old: DropIn, rise: u32) -> SwapPlan {
    SwapPlan {
        old,
        new: DropIn {
            image: update.image.as_str().to_string(),
            version: update.version.to_string(),
        },
        rise,
    }
}
