//! Tolerant classification of response documents (reference §4.6): declaration optional, empty or
//! missing `<urls>`, missing acks, unknown elements and attributes, appid braced or in any case.
//! Repeated elements need not be adjacent (quick-xml's `overlapped-lists`): our `<app>` is picked
//! by id wherever it stands, and of several `<updatecheck>` (say, separated by an `<event/>`) the
//! first is used.
//!
//! Every attribute that can reach output, a unit file or an event is bounded: an offer whose
//! version, codebase, package name or hash is longer than its cap ([`MAX_VERSION_BYTES`] and
//! friends) is an invalid response, never truncated into something else; server strings quoted
//! in error details are cut to [`MAX_QUOTED_CHARS`].

use serde::Deserialize;

use super::{CheckOutcome, ResponseErrorKind, UpdateOffer, same_app_id};

/// Longest offered version accepted (semver allows any length; real versions are short).
pub const MAX_VERSION_BYTES: usize = 128;
/// Longest codebase accepted: a Docker reference is at most 255 bytes of name plus tag and digest.
pub const MAX_CODEBASE_BYTES: usize = 512;
/// Longest package name accepted.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest package hash accepted (SHA-256 is 64 hex or 44 base64 characters).
pub const MAX_HASH_BYTES: usize = 128;
/// Longest server string quoted in an error detail.
pub const MAX_QUOTED_CHARS: usize = 64;

/// App statuses Nebraska uses for rollout refusals: the instance should wait, not fail (§5.5, §5.8).
const ROLLOUT_REFUSALS: [&str; 5] = [
    "error-maxUpdatesPerPeriodLimitReached",
    "error-maxConcurrentUpdatesLimitReached",
    "error-maxTimedOutUpdatesLimitReached",
    "error-updatesDisabled",
    "error-updateInProgressOnInstance",
];

/// App statuses that mean the service does not know this app, track or arch.
const UNKNOWN_APP_STATUSES: [&str; 4] = [
    "error-failedToRetrieveUpdatePackageInfo",
    "error-unknownApplication",
    "error-unknownApplicationOrGroup",
    "error-invalidAppId",
];

#[derive(Debug, Deserialize)]
struct ResponseDoc {
    #[serde(rename = "app", default)]
    apps: Vec<AppDoc>,
}

#[derive(Debug, Deserialize)]
struct AppDoc {
    #[serde(rename = "@appid", default)]
    appid: String,
    #[serde(rename = "@status", default)]
    status: Option<String>,
    #[serde(rename = "updatecheck", default)]
    updatechecks: Vec<UpdateCheckDoc>,
}

#[derive(Debug, Deserialize)]
struct UpdateCheckDoc {
    #[serde(rename = "@status", default)]
    status: Option<String>,
    #[serde(default)]
    urls: Vec<UrlsDoc>,
    #[serde(rename = "manifest", default)]
    manifests: Vec<ManifestDoc>,
}

#[derive(Debug, Deserialize)]
struct UrlsDoc {
    #[serde(rename = "url", default)]
    urls: Vec<UrlDoc>,
}

#[derive(Debug, Deserialize)]
struct UrlDoc {
    #[serde(rename = "@codebase", default)]
    codebase: String,
}

#[derive(Debug, Deserialize)]
struct ManifestDoc {
    #[serde(rename = "@version", default)]
    version: String,
    #[serde(rename = "@is_target", default)]
    is_target: Option<String>,
    #[serde(default)]
    packages: Vec<PackagesDoc>,
    #[serde(default)]
    actions: Vec<ActionsDoc>,
}

#[derive(Debug, Deserialize)]
struct PackagesDoc {
    #[serde(rename = "package", default)]
    packages: Vec<PackageDoc>,
}

#[derive(Debug, Deserialize)]
struct PackageDoc {
    #[serde(rename = "@name", default)]
    name: String,
    #[serde(rename = "@hash", default)]
    hash: Option<String>,
    #[serde(rename = "@hash_sha256", default)]
    hash_sha256: Option<String>,
    #[serde(rename = "@size", default)]
    size: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ActionsDoc {
    #[serde(rename = "action", default)]
    actions: Vec<ActionDoc>,
}

#[derive(Debug, Deserialize)]
struct ActionDoc {
    #[serde(rename = "@event", default)]
    event: String,
    #[serde(rename = "@sha256", default)]
    sha256: Option<String>,
}

/// Classifies the answer to an update check for `app_id` as update, no update, on hold or error.
pub fn classify_check_response(body: &str, app_id: &str) -> CheckOutcome {
    let app = match find_app(body, app_id) {
        Ok(app) => app,
        Err((kind, detail)) => return error(kind, detail),
    };
    let app_status = app.status.as_deref().unwrap_or("");
    let mut checks = app.updatechecks;
    let first_check = (!checks.is_empty()).then(|| checks.swap_remove(0));
    let check_status = first_check.as_ref().and_then(|u| u.status.as_deref());
    if ROLLOUT_REFUSALS.contains(&app_status) {
        // Nebraska pairs a refusal with `error-internal`; CoreRoller sent no <updatecheck> at all.
        return match check_status {
            Some("error-internal") | None => CheckOutcome::OnHold {
                reason: app_status.to_owned(),
            },
            Some(other) => error(
                ResponseErrorKind::ServerStatus,
                format!(
                    "app status {app_status:?} with updatecheck status {:?}",
                    quoted(other)
                ),
            ),
        };
    }
    if UNKNOWN_APP_STATUSES.contains(&app_status) {
        return error(ResponseErrorKind::UnknownApp, app_status.to_owned());
    }
    if app_status == "error-instanceRegistrationFailed" {
        return error(ResponseErrorKind::RegistrationFailed, app_status.to_owned());
    }
    if app_status != "ok" {
        return error(
            ResponseErrorKind::ServerStatus,
            format!("app status {:?}", quoted(app_status)),
        );
    }
    let Some(check) = first_check else {
        return error(
            ResponseErrorKind::InvalidResponse,
            "no <updatecheck>".into(),
        );
    };
    match check.status.as_deref() {
        Some("noupdate") => CheckOutcome::NoUpdate,
        Some("ok") => offer_from(check),
        other => error(
            ResponseErrorKind::ServerStatus,
            format!("updatecheck status {:?}", quoted(other.unwrap_or(""))),
        ),
    }
}

/// The `status` of the `<app>` answering `app_id`, or why there is none; used to log event acks.
pub fn response_app_status(body: &str, app_id: &str) -> Result<String, String> {
    match find_app(body, app_id) {
        Ok(app) => Ok(quoted(&app.status.unwrap_or_default())),
        Err((_, detail)) => Err(detail),
    }
}

fn find_app(body: &str, app_id: &str) -> Result<AppDoc, (ResponseErrorKind, String)> {
    if is_empty_document(body) {
        return Err((
            ResponseErrorKind::EmptyDocument,
            "empty response document (the server could not read the request)".into(),
        ));
    }
    let doc: ResponseDoc = quick_xml::de::from_str(body)
        .map_err(|e| (ResponseErrorKind::Parse, format!("unreadable XML: {e}")))?;
    doc.apps
        .into_iter()
        .find(|app| same_app_id(&app.appid, app_id))
        .ok_or_else(|| {
            (
                ResponseErrorKind::InvalidResponse,
                format!("no <app> for appid {app_id:?} in the response"),
            )
        })
}

fn offer_from(check: UpdateCheckDoc) -> CheckOutcome {
    let codebase = check
        .urls
        .into_iter()
        .flat_map(|u| u.urls)
        .map(|u| u.codebase)
        .find(|c| !c.is_empty());
    let Some(codebase) = codebase else {
        return error(
            ResponseErrorKind::InvalidResponse,
            "update without a codebase".into(),
        );
    };
    let mut manifests = check.manifests;
    let target = manifests
        .iter()
        .position(|m| m.is_target.as_deref() == Some("true"))
        .unwrap_or(0);
    if manifests.is_empty() {
        return error(
            ResponseErrorKind::InvalidResponse,
            "update without a <manifest>".into(),
        );
    }
    let manifest = manifests.swap_remove(target);
    let action_sha256 = manifest
        .actions
        .into_iter()
        .flat_map(|a| a.actions)
        .find(|a| a.event == "postinstall")
        .and_then(|a| a.sha256)
        .filter(|s| !s.is_empty());
    let Some(package) = manifest
        .packages
        .into_iter()
        .flat_map(|p| p.packages)
        .next()
    else {
        return error(
            ResponseErrorKind::InvalidResponse,
            "update without a <package>".into(),
        );
    };
    let offer = UpdateOffer {
        version: manifest.version,
        codebase,
        name: package.name,
        size: package.size.and_then(|s| s.trim().parse().ok()),
        sha1: package.hash.filter(|h| !h.is_empty()),
        sha256: package
            .hash_sha256
            .filter(|h| !h.is_empty())
            .or(action_sha256),
    };
    match oversized(&offer) {
        Some(detail) => error(ResponseErrorKind::InvalidResponse, detail),
        None => CheckOutcome::Update(offer),
    }
}

/// The first attribute of `offer` longer than its cap, described.
fn oversized(offer: &UpdateOffer) -> Option<String> {
    let fields = [
        ("manifest version", Some(&offer.version), MAX_VERSION_BYTES),
        ("url codebase", Some(&offer.codebase), MAX_CODEBASE_BYTES),
        ("package name", Some(&offer.name), MAX_NAME_BYTES),
        ("package hash", offer.sha1.as_ref(), MAX_HASH_BYTES),
        ("package hash_sha256", offer.sha256.as_ref(), MAX_HASH_BYTES),
    ];
    fields.into_iter().find_map(|(what, value, cap)| {
        let value = value?;
        (value.len() > cap).then(|| {
            format!(
                "offered {what} is {} bytes, longer than the {cap} accepted (starts {:?})",
                value.len(),
                quoted(value)
            )
        })
    })
}

/// `text` cut to [`MAX_QUOTED_CHARS`] characters, marked with `…` when cut.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// True when nothing but whitespace and an XML declaration remains.
fn is_empty_document(body: &str) -> bool {
    let rest = body.trim_start_matches('\u{feff}').trim();
    let rest = match rest.strip_prefix("<?xml") {
        Some(after) => after.split_once("?>").map_or("", |(_, tail)| tail),
        None => rest,
    };
    rest.trim().is_empty()
}

fn error(kind: ResponseErrorKind, detail: String) -> CheckOutcome {
    CheckOutcome::Error { kind, detail }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
