//! Classification of response documents: the tolerant cases and the caps.
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
    let body = wrap("<app appid=\"other\" status=\"ok\"><updatecheck status=\"noupdate\"/></app>");
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

fn offer_app(version: &str) -> String {
    format!(
        "<app appid=\"{APP}\" status=\"ok\"><updatecheck status=\"ok\"><urls><url codebase=\"r/a\"/></urls>\
         <manifest version=\"{version}\"><packages><package name=\"p\"/></packages></manifest>\
         </updatecheck></app>"
    )
}

#[test]
fn our_app_is_found_when_other_elements_separate_the_apps() {
    let other = "<app appid=\"other\" status=\"ok\"><updatecheck status=\"noupdate\"/></app>";
    let body = wrap(&format!(
        "{other}<daystart elapsed_seconds=\"1\"/>{}",
        offer_app("2.0.0")
    ));
    let CheckOutcome::Update(offer) = classify_check_response(&body, APP) else {
        panic!("expected an update from {body}");
    };
    assert_eq!(offer.version, "2.0.0");
    let body = wrap(&format!(
        "{}<event status=\"ok\"/>{other}",
        offer_app("2.0.0")
    ));
    assert!(matches!(
        classify_check_response(&body, APP),
        CheckOutcome::Update(_)
    ));
}

#[test]
fn two_updatechecks_separated_by_an_event_parse_and_the_first_counts() {
    let body = wrap(&format!(
        "<app appid=\"{APP}\" status=\"ok\"><updatecheck status=\"noupdate\"/>\
         <event status=\"ok\"/><updatecheck status=\"noupdate\"/></app>"
    ));
    assert_eq!(classify_check_response(&body, APP), CheckOutcome::NoUpdate);
}

#[test]
fn a_version_longer_than_128_bytes_is_refused_and_not_echoed_whole() {
    let at_cap = format!("2.0.0-{}", "a".repeat(MAX_VERSION_BYTES - 6));
    assert!(matches!(
        classify_check_response(&wrap(&offer_app(&at_cap)), APP),
        CheckOutcome::Update(_)
    ));
    let huge = format!("2.0.0-{}", "a".repeat(500_000));
    match classify_check_response(&wrap(&offer_app(&huge)), APP) {
        CheckOutcome::Error {
            kind: ResponseErrorKind::InvalidResponse,
            detail,
        } => {
            assert!(
                detail.contains("manifest version is 500006 bytes"),
                "{detail}"
            );
            assert!(detail.len() < 300, "{} bytes of detail", detail.len());
        }
        other => panic!("expected an invalid response, got {other:?}"),
    }
}

#[test]
fn long_codebase_name_hash_and_status_strings_are_capped() {
    let long = "x".repeat(10_000);
    let body = wrap(&offer_app("2.0.0").replace("r/a", &long));
    let CheckOutcome::Error { detail, .. } = classify_check_response(&body, APP) else {
        panic!("long codebase accepted");
    };
    assert!(
        detail.contains("url codebase is 10000 bytes") && detail.len() < 300,
        "{detail}"
    );
    let body = wrap(&offer_app("2.0.0").replace("name=\"p\"", &format!("hash_sha256=\"{long}\"")));
    assert!(matches!(
        classify_check_response(&body, APP),
        CheckOutcome::Error { .. }
    ));
    let body = wrap(&format!("<app appid=\"{APP}\" status=\"{long}\"/>"));
    let CheckOutcome::Error { detail, .. } = classify_check_response(&body, APP) else {
        panic!("odd status accepted");
    };
    assert!(detail.len() < 100, "{detail}");
}
