//! Response fixtures: every Nebraska answer of reference §4.2, the CoreUpdate example and tolerated variants.

use super::*;

fn classify(name: &str, app_id: &str) -> CheckOutcome {
    classify_check_response(&fixture(name), app_id)
}

fn expect_update(name: &str, app_id: &str) -> UpdateOffer {
    match classify(name, app_id) {
        CheckOutcome::Update(offer) => offer,
        other => panic!("{name}: expected an update, got {other:?}"),
    }
}

fn expect_error(name: &str, app_id: &str, kind: ResponseErrorKind) {
    match classify(name, app_id) {
        CheckOutcome::Error { kind: got, .. } => assert_eq!(got, kind, "{name}"),
        other => panic!("{name}: expected an error, got {other:?}"),
    }
}

#[test]
fn nebraska_responses_a_to_g_are_classified() {
    assert_eq!(
        classify("a-noupdate.xml", FLATCAR_APP),
        CheckOutcome::NoUpdate
    );
    let b = expect_update("b-update-docker.xml", FLATCAR_APP);
    assert_eq!(
        b,
        UpdateOffer {
            version: "2.0.0".into(),
            codebase: "coreos/example-apache:2.0.0".into(),
            name: "example-apache.tar".into(),
            size: Some(23),
            sha1: Some("2jmj7l5rSw0yVb/vlWAYkK/YBwk=".into()),
            sha256: None,
        }
    );
    let b2 = expect_update("b2-update-empty-package.xml", FLATCAR_APP);
    assert_eq!((b2.name.as_str(), b2.size, b2.sha1), ("", Some(0), None));
    let c = expect_update("c-update-flatcar.xml", FLATCAR_APP);
    assert_eq!(c.version, "3033.2.0");
    assert_eq!(c.name, "flatcar_production_update.gz");
    assert_eq!(
        c.sha256.as_deref(),
        Some("DIAVxoI+8NpsudUawOA5U92VHlaxQBS3ejN4EPM6T2A=")
    );
    assert_eq!(
        classify("d-rate-limited.xml", FLATCAR_APP),
        CheckOutcome::OnHold {
            reason: "error-maxUpdatesPerPeriodLimitReached".into()
        }
    );
    expect_error(
        "e-unknown-app.xml",
        "{00000000-0000-0000-0000-000000000000}",
        ResponseErrorKind::UnknownApp,
    );
    expect_error(
        "f-event-ack.xml",
        FLATCAR_APP,
        ResponseErrorKind::InvalidResponse,
    );
    expect_error(
        "g-malformed-request.xml",
        FLATCAR_APP,
        ResponseErrorKind::EmptyDocument,
    );
}

#[test]
fn coreupdate_example_is_an_update_with_the_action_sha256() {
    let offer = expect_update("coreupdate-example.xml", FLATCAR_APP);
    assert_eq!(offer.version, "1.0.2");
    assert_eq!(offer.codebase, "http://index.example.com/webapp:1.0.2");
    assert_eq!(offer.name, "update.gz");
    assert_eq!(
        offer.sha256.as_deref(),
        Some("b602d630f0a081840d0ca8fc4d35810e42806642b3127bb702d65c3df227d0f5")
    );
}

#[test]
fn tolerated_variants_are_classified() {
    assert_eq!(
        classify("variant-self-closing-no-declaration.xml", FLATCAR_APP),
        CheckOutcome::NoUpdate
    );
    assert_eq!(
        classify("variant-coreupdate-noupdate.xml", FLATCAR_APP),
        CheckOutcome::NoUpdate
    );
    assert_eq!(
        classify("variant-braced-uppercase-appid.xml", FLATCAR_APP),
        CheckOutcome::NoUpdate
    );
    let offer = expect_update(
        "variant-unknown-attributes.xml",
        &FLATCAR_APP.to_uppercase(),
    );
    assert_eq!(offer.codebase, "registry.example.com/web:2.1.0");
    assert_eq!(
        offer.sha256.as_deref(),
        Some("3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043")
    );
    expect_error(
        "variant-registration-failed.xml",
        FLATCAR_APP,
        ResponseErrorKind::RegistrationFailed,
    );
}
