//! The update pass over in-memory seams: what each check comes to, its label and pacing, and the
//! plan a valid offer hands the swap.

use super::*;
use crate::agent::update::fixtures::{memory_source, pass, release};
use crate::omaha::{Event, HttpTimeouts, HttpUpdateSource, UpdateBackend, error_code};

fn events(pass: &UpdatePass<crate::systemd::control::MemoryUnitControl>) -> Vec<Event> {
    match pass.seams.source.backend_for_tests() {
        UpdateBackend::Memory(source) => source.events().into_iter().map(|e| e.event).collect(),
        UpdateBackend::Http(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_valid_offer_is_a_plan_from_what_the_unit_runs_and_takes_no_slot_yet() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "reg/web")), false);
    let (mut pass, slots) = pass(source, Some("1.0.0"), dir.path());
    let result = pass.poll().await;
    assert_eq!(result.label, "update");
    let plan = result.plan.expect("a plan for the offer");
    assert_eq!(
        (plan.old.version.as_str(), plan.new.image.as_str()),
        ("1.0.0", "reg/web:2.0.0")
    );
    assert!(
        result.delay >= Duration::from_secs(54) && result.delay <= Duration::from_secs(66),
        "{:?}",
        result.delay
    );
    assert_eq!(
        pass.last_report(),
        Some(&CheckReport::Update {
            version: "2.0.0".into(),
            image: "reg/web:2.0.0".into(),
            sha256: None
        })
    );
    assert_eq!(pass.running(), Some(&Version::new(1, 0, 0)));
    assert!(slots.holders().is_empty(), "the swap takes the slot");
    assert!(events(&pass).is_empty(), "no event before the swap starts");
}

#[tokio::test]
async fn nothing_newer_is_no_update_and_no_plan() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("1.0.0", "reg/web")), false);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    let result = pass.poll().await;
    assert_eq!((result.label, result.plan.is_none()), ("no-update", true));
}

#[tokio::test]
async fn a_refused_offer_is_reported_with_3_0_and_is_no_plan() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "Bad Image!")), false);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    let result = pass.poll().await;
    assert_eq!((result.label, result.plan.is_none()), ("refused", true));
    assert_eq!(
        events(&pass),
        vec![Event::Failed {
            error_code: error_code::OFFER_REFUSED
        }]
    );
}

#[tokio::test]
async fn a_halted_group_sends_no_check() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "reg/web")), false);
    let (mut pass, slots) = pass(source, Some("1.0.0"), dir.path());
    slots.halt("1.9.0", "unhealthy").await.unwrap();
    let result = pass.poll().await;
    assert_eq!((result.label, result.plan.is_none()), ("halted", true));
    match pass.seams.source.backend_for_tests() {
        UpdateBackend::Memory(source) => assert_eq!(source.checks(), 0),
        UpdateBackend::Http(_) => unreachable!("memory source"),
    }
}

#[tokio::test]
async fn an_unknown_running_version_is_a_failure_that_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "reg/web")), false);
    let (mut pass, _slots) = pass(source, None, dir.path());
    let first = pass.poll().await;
    assert_eq!(first.label, "unknown-version");
    let second = pass.poll().await;
    assert!(
        second.delay > first.delay,
        "backs off: {:?} then {:?}",
        first.delay,
        second.delay
    );
    let source = memory_source(Some(release("2.0.0", "reg/web")), false);
    let (mut bad, _slots) = self::pass(source, Some("v1"), dir.path());
    bad.poll().await;
    assert!(
        matches!(bad.last_report(), Some(CheckReport::Error { detail, .. }) if detail.contains("SIDEKICK_VERSION=v1")),
        "{:?}",
        bad.last_report()
    );
}

#[tokio::test]
async fn a_dry_run_sends_no_event_for_a_refused_offer() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "Bad Image!")), true);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    assert_eq!(pass.poll().await.label, "refused");
    assert!(
        events(&pass).is_empty(),
        "a dry run prints the event, sends none"
    );
}

#[tokio::test]
async fn a_dry_run_against_a_real_service_sends_no_check() {
    let dir = tempfile::tempdir().unwrap();
    let instance = crate::omaha::AppInstance {
        app_id: "app".into(),
        track: "stable".into(),
        arch: "x64".into(),
        machine_id: "0".repeat(32),
        boot_id: "0".repeat(32),
    };
    // Nothing listens there: a sent check would fail as unreachable, not come back unchecked.
    let url = "http://127.0.0.1:9/v1/update/".parse().unwrap();
    let http = HttpUpdateSource::new(url, instance, HttpTimeouts::default(), None).unwrap();
    let source = AnyUpdateSource::new(UpdateBackend::Http(http), true);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    assert!(!pass.checks());
    let result = pass.poll().await;
    assert_eq!((result.label, result.plan.is_none()), ("not-checked", true));
    assert!(
        matches!(pass.last_report(), Some(CheckReport::Error { kind, .. }) if kind == "dry-run"),
        "{:?}",
        pass.last_report()
    );
}

/// The kind of the error `update-check` would print for the pass's last result.
fn report_kind(pass: &UpdatePass<crate::systemd::control::MemoryUnitControl>) -> Option<&str> {
    match pass.last_report() {
        Some(CheckReport::Error { kind, .. }) => Some(kind),
        _ => None,
    }
}

#[tokio::test]
async fn an_offer_naming_another_registry_is_refused_as_repository_not_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // The unit runs reg/web:1.0.0; the offer moves it to another registry's web.
    let source = memory_source(Some(release("2.0.0", "evil.example.net/web")), false);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    let result = pass.poll().await;
    assert_eq!((result.label, result.plan.is_none()), ("refused", true));
    assert_eq!(report_kind(&pass), Some("repository-not-allowed"));
    let Some(CheckReport::Error { detail, .. }) = pass.last_report() else {
        unreachable!("an error report")
    };
    assert!(
        detail.contains("evil.example.net/web") && detail.contains("reg/web"),
        "{detail}"
    );
    assert_eq!(
        events(&pass),
        vec![Event::Failed {
            error_code: error_code::OFFER_REFUSED
        }]
    );
    assert!(pass.seams.control.calls().is_empty(), "nothing written");
}

#[tokio::test]
async fn allowed_repositories_widen_the_offers_the_pass_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "mirror.example.com/team/web")), false);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    pass.settings.allowed_repositories = vec!["mirror.example.com/team/web".into()];
    let result = pass.poll().await;
    assert_eq!(result.label, "update", "{:?}", pass.last_report());
    let plan = result.plan.expect("a plan for the listed repository");
    assert_eq!(plan.new.image, "mirror.example.com/team/web:2.0.0");
    // The list widens to what it names, nothing more.
    let source = memory_source(Some(release("2.0.0", "mirror.example.com/team/db")), false);
    let (mut other, _slots) = self::pass(source, Some("1.0.0"), dir.path());
    other.settings.allowed_repositories = vec!["mirror.example.com/team/web".into()];
    assert_eq!(other.poll().await.label, "refused");
    assert_eq!(report_kind(&other), Some("repository-not-allowed"));
}
