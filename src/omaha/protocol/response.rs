//! Tolerant classification of response documents (reference §4.6): declaration optional, empty or
//! missing `<urls>`, missing acks, unknown elements and attributes, appid braced or in any case.

use serde::Deserialize;

use super::{CheckOutcome, ResponseErrorKind, UpdateOffer, same_app_id};

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
    updatecheck: Option<UpdateCheckDoc>,
}

#[derive(Debug, Deserialize)]
struct UpdateCheckDoc {
    #[serde(rename = "@status", default)]
    status: Option<String>,
    urls: Option<UrlsDoc>,
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
    packages: Option<PackagesDoc>,
    actions: Option<ActionsDoc>,
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
    let check_status = app.updatecheck.as_ref().and_then(|u| u.status.as_deref());
    if ROLLOUT_REFUSALS.contains(&app_status) {
        // Nebraska pairs a refusal with `error-internal`; CoreRoller sent no <updatecheck> at all.
        return match check_status {
            Some("error-internal") | None => CheckOutcome::OnHold {
                reason: app_status.to_owned(),
            },
            Some(other) => error(
                ResponseErrorKind::ServerStatus,
                format!("app status {app_status:?} with updatecheck status {other:?}"),
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
            format!("app status {app_status:?}"),
        );
    }
    let Some(check) = app.updatecheck else {
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
            format!("updatecheck status {:?}", other.unwrap_or("")),
        ),
    }
}

/// The `status` of the `<app>` answering `app_id`, or why there is none; used to log event acks.
pub fn response_app_status(body: &str, app_id: &str) -> Result<String, String> {
    match find_app(body, app_id) {
        Ok(app) => Ok(app.status.unwrap_or_default()),
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
    CheckOutcome::Update(UpdateOffer {
        version: manifest.version,
        codebase,
        name: package.name,
        size: package.size.and_then(|s| s.trim().parse().ok()),
        sha1: package.hash.filter(|h| !h.is_empty()),
        sha256: package
            .hash_sha256
            .filter(|h| !h.is_empty())
            .or(action_sha256),
    })
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
mod tests {
    use super::*;

    const APP: &str = "6a6e5b4c-0000-4000-8000-00000000beef";

    fn wrap(app: &str) -> String {
        format!(
            "<response protocol=\"3.0\" server=\"t\"><daystart elapsed_seconds=\"0\"/>{app}</response>"
        )
    }

    #[test]
    fn declaration_only_is_an_empty_document() {
        let outcome = classify_check_response("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", APP);
        assert!(matches!(
            outcome,
            CheckOutcome::Error {
                kind: ResponseErrorKind::EmptyDocument,
                ..
            }
        ));
        assert!(is_empty_document("  "));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let outcome = classify_check_response("<response><app", APP);
        assert!(matches!(
            outcome,
            CheckOutcome::Error {
                kind: ResponseErrorKind::Parse,
                ..
            }
        ));
    }

    #[test]
    fn another_apps_answer_is_not_ours() {
        let body =
            wrap("<app appid=\"other\" status=\"ok\"><updatecheck status=\"noupdate\"/></app>");
        assert!(matches!(
            classify_check_response(&body, APP),
            CheckOutcome::Error {
                kind: ResponseErrorKind::InvalidResponse,
                ..
            }
        ));
    }

    #[test]
    fn refusal_without_updatecheck_is_on_hold() {
        let body = wrap(&format!(
            "<app appid=\"{APP}\" status=\"error-updatesDisabled\"/>"
        ));
        assert_eq!(
            classify_check_response(&body, APP),
            CheckOutcome::OnHold {
                reason: "error-updatesDisabled".into()
            }
        );
    }

    #[test]
    fn unknown_updatecheck_status_is_an_error() {
        let body = wrap(&format!(
            "<app appid=\"{APP}\" status=\"ok\"><updatecheck status=\"error-osnotsupported\"/></app>"
        ));
        assert!(matches!(
            classify_check_response(&body, APP),
            CheckOutcome::Error {
                kind: ResponseErrorKind::ServerStatus,
                ..
            }
        ));
    }

    #[test]
    fn ok_without_codebase_is_invalid() {
        let body = wrap(&format!(
            "<app appid=\"{APP}\" status=\"ok\"><updatecheck status=\"ok\"><urls/>\
             <manifest version=\"2.0.0\"><packages><package name=\"x\"/></packages></manifest>\
             </updatecheck></app>"
        ));
        assert!(matches!(
            classify_check_response(&body, APP),
            CheckOutcome::Error {
                kind: ResponseErrorKind::InvalidResponse,
                ..
            }
        ));
    }

    #[test]
    fn action_sha256_is_used_when_the_package_has_none() {
        let body = wrap(&format!(
            "<app appid=\"{APP}\" status=\"ok\"><updatecheck status=\"ok\"><urls><url codebase=\"r/a\"/></urls>\
             <manifest version=\"2.0.0\"><packages><package name=\"p\" size=\"x\"/></packages>\
             <actions><action event=\"postinstall\" sha256=\"abc=\"/></actions></manifest></updatecheck></app>"
        ));
        let CheckOutcome::Update(offer) = classify_check_response(&body, APP) else {
            panic!("expected an update");
        };
        assert_eq!(offer.sha256.as_deref(), Some("abc="));
        assert_eq!(offer.size, None);
    }
}
