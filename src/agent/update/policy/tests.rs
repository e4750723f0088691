use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::omaha::protocol::{ResponseErrorKind, error_code};
use crate::omaha::{
    AppInstance, HttpTimeouts, HttpUpdateSource, InMemoryUpdateSource, LocalRelease,
};
use crate::systemd::control::MemoryUnitControl;

fn release(version: &str) -> LocalRelease {
    LocalRelease {
        version: version.into(),
        codebase: format!("example/web:{version}"),
        name: String::new(),
        sha256: None,
        size: None,
    }
}

fn rules(server: Option<&str>) -> OfferRules {
    OfferRules {
        image: "{codebase}".into(),
        pin_digest: false,
        server: server.map(|s| Url::parse(s).unwrap()),
        allowed_repositories: Vec::new(),
        verify_digest: false,
        allow_major_jump: false,
        running_image: Some("example/web:1.0.0".into()),
    }
}

fn empty_denylist(dir: &Path) -> Denylist {
    Denylist::load(dir, "web-1").unwrap()
}

const V1: Version = Version::new(1, 0, 0);

#[tokio::test]
async fn a_valid_offer_becomes_a_swap_plan_from_what_systemd_says_runs() {
    let dir = tempfile::tempdir().unwrap();
    let source = InMemoryUpdateSource::new(Some(release("2.0.0")));
    let control = MemoryUnitControl::new(RunningVersion {
        version: Some("1.0.0".into()),
        image: Some("example/web:1.0.0".into()),
    });
    let (current, old) = running_version(&control).await.unwrap();
    assert_eq!(current, V1);
    let result = check(
        &source,
        &current,
        &rules(None),
        &empty_denylist(dir.path()),
        false,
    )
    .await;
    let CheckResult::Offer(update) = &result else {
        panic!("{result:?}");
    };
    assert_eq!(result.pacing(), PollResult::Success);
    assert_eq!(result.summary(), "offered 2.0.0");
    let plan = plan(update, old.clone(), 2);
    assert_eq!(plan.old, old);
    assert_eq!(
        plan.new,
        DropIn {
            image: "example/web:2.0.0".into(),
            version: "2.0.0".into()
        }
    );
    assert_eq!(plan.rise, 2);
    assert!(
        source.events().is_empty(),
        "a valid offer sends no event by itself"
    );
}

#[tokio::test]
async fn a_denylisted_version_is_skipped_until_a_newer_one_is_offered_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut denylist = empty_denylist(dir.path());
    denylist.add(&Version::new(3, 0, 0)).unwrap();
    // A restart reads the same list.
    let denylist = empty_denylist(dir.path());
    assert!(denylist.contains(&Version::new(3, 0, 0)));
    let source = InMemoryUpdateSource::new(Some(release("3.0.0")));
    // 1.0.0 to 3.0.0 is a major jump: allowed here, the denylist is what this test is about.
    let rules = OfferRules {
        allow_major_jump: true,
        ..rules(None)
    };
    let result = check(&source, &V1, &rules, &denylist, false).await;
    assert_eq!(
        result,
        CheckResult::Denylisted {
            version: Version::new(3, 0, 0)
        }
    );
    assert!(source.events().is_empty(), "a skip sends no event");
    source.set_release(Some(release("3.0.1")));
    let result = check(&source, &V1, &rules, &denylist, false).await;
    assert!(matches!(result, CheckResult::Offer(ref u) if u.version == Version::new(3, 0, 1)));
}

#[test]
fn a_malformed_denylist_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web-1/denylist.json");
    std::fs::create_dir_all(dir.path().join("web-1")).unwrap();
    for text in ["not json", "{\"versions\": [\"3.0\"]}"] {
        std::fs::write(&path, text).unwrap();
        let err = Denylist::load(dir.path(), "web-1").unwrap_err();
        assert_eq!(err.kind(), "denylist-malformed");
        assert!(err.to_string().contains("web-1/denylist.json"), "{err}");
    }
}

#[test]
fn the_denylist_keeps_the_newest_versions_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut denylist = empty_denylist(dir.path());
    for minor in 0..40 {
        denylist.add(&Version::new(2, minor, 0)).unwrap();
    }
    let denylist = empty_denylist(dir.path());
    assert!(!denylist.contains(&Version::new(2, 7, 0)));
    assert!(denylist.contains(&Version::new(2, 8, 0)));
    assert!(denylist.contains(&Version::new(2, 39, 0)));
}

#[tokio::test]
async fn a_refused_offer_sends_3_0_with_errorcode_34() {
    let dir = tempfile::tempdir().unwrap();
    let source = InMemoryUpdateSource::new(Some(release("2.0")));
    let result = check(
        &source,
        &V1,
        &rules(None),
        &empty_denylist(dir.path()),
        false,
    )
    .await;
    let CheckResult::Refused { refusal, reported } = &result else {
        panic!("{result:?}");
    };
    assert_eq!(refusal.kind(), "invalid-version");
    assert_eq!(reported, &Ok(()));
    let events = source.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].event,
        Event::Failed {
            error_code: error_code::OFFER_REFUSED
        }
    );
    assert_eq!(events[0].version, V1);
    assert_eq!(result.pacing(), PollResult::Success);
}

/// One check of `offered` (as [`release`]) from 1.0.0 under `rules`, and the events it sent.
async fn check_offer(offered: LocalRelease, rules: &OfferRules) -> (CheckResult, Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let source = InMemoryUpdateSource::new(Some(offered));
    let result = check(&source, &V1, rules, &empty_denylist(dir.path()), false).await;
    let events = source.events().into_iter().map(|e| e.event).collect();
    (result, events)
}

#[tokio::test]
async fn a_not_newer_offer_is_labelled_not_newer_for_status_and_metrics() {
    // A service (not the in-memory one, which offers only newer releases) offering 1.0.0 again.
    let dir = tempfile::tempdir().unwrap();
    let source = InMemoryUpdateSource::new(None);
    let offer = crate::omaha::UpdateOffer {
        version: "1.0.0".into(),
        codebase: "example/web:1.0.0".into(),
        name: String::new(),
        size: None,
        sha1: None,
        sha256: None,
    };
    source.push_outcome(CheckOutcome::Update(offer));
    let denylist = empty_denylist(dir.path());
    let result = check(&source, &V1, &rules(None), &denylist, false).await;
    let events: Vec<Event> = source.events().into_iter().map(|e| e.event).collect();
    assert_eq!(result.label(), "not-newer", "{result:?}");
    assert!(
        result.summary().contains("not newer"),
        "{}",
        result.summary()
    );
    let refused = Event::Failed {
        error_code: error_code::OFFER_REFUSED,
    };
    assert_eq!(events, vec![refused]);
    let (other, _) = check_offer(release("2.0"), &rules(None)).await;
    assert_eq!(other.label(), "refused");
}

#[tokio::test]
async fn a_frozen_label_or_a_major_jump_is_refused_with_3_0() {
    // The freeze: an old image labelled 99999.0.0, then every genuine update "not newer".
    let mut frozen = release("99999.0.0");
    frozen.codebase = "example/web:1.0.0".into();
    let allow_jump = OfferRules {
        allow_major_jump: true,
        ..rules(None)
    };
    let (result, events) = check_offer(frozen.clone(), &allow_jump).await;
    let CheckResult::Refused { refusal, .. } = &result else {
        panic!("{result:?}");
    };
    assert_eq!(refusal.kind(), "tag-not-version");
    assert_eq!(events.len(), 1, "reported with 3/0");
    // Without allow_major_jump the jump itself is refused first.
    let (result, _) = check_offer(frozen, &rules(None)).await;
    assert!(
        matches!(&result, CheckResult::Refused { refusal, .. } if refusal.kind() == "major-jump"),
        "{result:?}"
    );
    let (result, _) = check_offer(release("3.0.0"), &rules(None)).await;
    assert!(
        matches!(&result, CheckResult::Refused { refusal, .. } if refusal.kind() == "major-jump"),
        "{result:?}"
    );
    let (result, _) = check_offer(release("2.0.0"), &rules(None)).await;
    assert!(matches!(result, CheckResult::Offer(_)), "{result:?}");
}

#[tokio::test]
async fn verify_digest_needs_a_hash_before_asking_any_registry() {
    // The offer names a registry nothing listens on: the refusal comes before any request.
    let mut offered = release("2.0.0");
    offered.codebase = "127.0.0.1:9/web:2.0.0".into();
    let verify = OfferRules {
        verify_digest: true,
        running_image: Some("127.0.0.1:9/web:1.0.0".into()),
        ..rules(None)
    };
    let (result, _) = check_offer(offered, &verify).await;
    assert!(
        matches!(&result, CheckResult::Refused { refusal, .. } if refusal.kind() == "unpinned"),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_unreachable_registry_backs_off_and_reports_nothing() {
    let mut offered = release("2.0.0");
    offered.codebase = "127.0.0.1:9/web:2.0.0".into();
    offered.sha256 =
        Some("3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043".into());
    let verify = OfferRules {
        verify_digest: true,
        running_image: Some("127.0.0.1:9/web:1.0.0".into()),
        ..rules(None)
    };
    let (result, events) = check_offer(offered, &verify).await;
    let CheckResult::Unreachable { kind, detail } = &result else {
        panic!("{result:?}");
    };
    assert_eq!(kind, "registry-unreachable");
    assert!(detail.contains("127.0.0.1:9"), "{detail}");
    assert_eq!(result.pacing(), PollResult::Failure);
    assert!(events.is_empty(), "the offer may be fine: no 3/0");
}

#[tokio::test]
async fn a_configuration_status_keeps_the_interval_and_is_logged_once_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let source = InMemoryUpdateSource::new(None);
    let no_package = CheckOutcome::Error {
        kind: ResponseErrorKind::ServerStatus,
        detail: "app status \"error-noPackageFound\"".into(),
    };
    source.push_outcome(no_package.clone());
    source.push_outcome(no_package);
    source.push_outcome(CheckOutcome::OnHold {
        reason: "error-updatesDisabled".into(),
    });
    let denylist = empty_denylist(dir.path());
    let interval = Duration::from_secs(300);
    let mut poller = Poller::new(interval);
    let mut logged = Vec::new();
    for _ in 0..4 {
        let result = check(&source, &V1, &rules(None), &denylist, false).await;
        let (delay, changed) = poller.record_with(&result, 0.5);
        assert_eq!(delay, interval, "{result:?}");
        logged.push((result.summary(), changed));
    }
    assert_eq!(
        logged,
        [
            (
                "update service says server-status: app status \"error-noPackageFound\"".into(),
                true
            ),
            (
                "update service says server-status: app status \"error-noPackageFound\"".into(),
                false
            ),
            ("on hold: error-updatesDisabled".into(), true),
            ("no update".into(), true),
        ]
    );
}

fn instance() -> AppInstance {
    AppInstance {
        app_id: "app".into(),
        track: "stable".into(),
        arch: "x64".into(),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        boot_id: "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into(),
        name: "web-1".into(),
    }
}

/// A loopback HTTP server answering every request with `status` and an empty body.
async fn answering(status: u16) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = vec![0u8; 65536];
            let _ = stream.read(&mut buffer).await;
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (format!("http://{address}/v1/update/?token=s3cret"), server)
}

async fn check_against(url: &str) -> CheckResult {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules(Some(url));
    let source = HttpUpdateSource::new(
        Url::parse(url).unwrap(),
        instance(),
        HttpTimeouts::default(),
        None,
    )
    .unwrap();
    check(&source, &V1, &rules, &empty_denylist(dir.path()), false).await
}

#[tokio::test]
async fn transport_errors_and_5xx_back_off_with_the_token_redacted() {
    // A port nothing listens on: bind one, then close it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = format!(
        "http://{}/v1/update/?token=s3cret",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let (unavailable, server) = answering(503).await;
    let interval = Duration::from_secs(60);
    for url in [refused, unavailable] {
        let result = check_against(&url).await;
        assert!(
            matches!(result, CheckResult::Unreachable { .. }),
            "{result:?}"
        );
        assert!(!result.summary().contains("s3cret"), "{}", result.summary());
        let mut poller = Poller::new(interval);
        let delays: Vec<_> = (0..3).map(|_| poller.record_with(&result, 0.5).0).collect();
        assert_eq!(
            delays,
            [interval * 2, interval * 4, interval * 8],
            "{}",
            result.summary()
        );
    }
    server.abort();
}

#[tokio::test]
async fn a_4xx_answer_is_the_servers_answer_and_keeps_the_interval() {
    let (url, server) = answering(404).await;
    let result = check_against(&url).await;
    assert_eq!(
        result,
        CheckResult::ServerStatus {
            kind: "http-status".into(),
            detail: "the update service answered HTTP 404".into()
        }
    );
    let mut poller = Poller::new(Duration::from_secs(60));
    assert_eq!(poller.record_with(&result, 0.5).0, Duration::from_secs(60));
    server.abort();
}

#[test]
fn redaction_replaces_only_the_query_string() {
    let url = Url::parse("https://u.example/v1/update/?token=abc&x=1").unwrap();
    assert_eq!(
        redact(
            "error sending request for url (https://u.example/v1/update/?token=abc&x=1)",
            Some(&url)
        ),
        "error sending request for url (https://u.example/v1/update/?REDACTED)"
    );
    let plain = Url::parse("https://u.example/v1/update/").unwrap();
    assert_eq!(redact("a?b", Some(&plain)), "a?b");
    assert_eq!(redact("a?b", None), "a?b");
}

#[test]
fn the_running_version_needs_both_variables_and_semver() {
    let running = |version: Option<&str>, image: Option<&str>| RunningVersion {
        version: version.map(str::to_string),
        image: image.map(str::to_string),
    };
    let cases = [
        (running(None, Some("i")), "no-version"),
        (running(Some("1.0.0"), None), "no-image"),
        (running(Some("1.0"), Some("i")), "version"),
    ];
    for (input, kind) in cases {
        assert_eq!(parse_running(input).unwrap_err().kind(), kind);
    }
    let (version, old) = parse_running(running(Some("1.2.3"), Some("i:1"))).unwrap();
    assert_eq!(version, Version::new(1, 2, 3));
    assert_eq!(old.image, "i:1");
}

#[test]
fn an_update_url_with_an_empty_query_string_leaves_error_texts_unchanged() {
    let url = Url::parse("https://u.example/v1/update/?").unwrap();
    let text = "error sending request for url (https://u.example/v1/update/?)";
    assert_eq!(redact(text, Some(&url)), text);
}

#[test]
fn the_poller_waits_the_interval_within_ten_percent_and_flags_only_a_changed_answer() {
    let interval = Duration::from_secs(300);
    let hold = CheckResult::OnHold {
        reason: "error-updatesDisabled".into(),
    };
    let answers = [
        (CheckResult::NoUpdate, true),
        (CheckResult::NoUpdate, false),
        (hold.clone(), true),
        (hold, false),
        (CheckResult::NoUpdate, true),
    ];
    let mut poller = Poller::new(interval);
    for (result, changed) in answers {
        let (delay, flagged) = poller.record(&result);
        assert!(
            delay >= interval.mul_f64(0.9) && delay <= interval.mul_f64(1.1),
            "{delay:?} after {result:?}"
        );
        assert_eq!(flagged, changed, "{result:?}");
    }
}

#[test]
fn only_an_unreachable_service_backs_off_and_a_hold_is_paced_as_a_hold() {
    let interval = Duration::from_secs(60);
    let unreachable = CheckResult::Unreachable {
        kind: "connect".into(),
        detail: "connection refused".into(),
    };
    let answers = [
        (
            CheckResult::OnHold {
                reason: "error-updatesDisabled".into(),
            },
            PollResult::OnHold,
        ),
        (CheckResult::NoUpdate, PollResult::Success),
        (
            CheckResult::Denylisted {
                version: Version::new(2, 0, 0),
            },
            PollResult::Success,
        ),
        (
            CheckResult::ServerStatus {
                kind: "server-status".into(),
                detail: "app status \"error-noPackageFound\"".into(),
            },
            PollResult::Success,
        ),
        (
            CheckResult::Halted {
                version: "2.0.0".into(),
                reason: "not healthy".into(),
            },
            PollResult::Success,
        ),
    ];
    for (result, pacing) in answers {
        assert_eq!(result.pacing(), pacing, "{result:?}");
        // After a backoff, any answer but another failure returns to the normal interval.
        let mut poller = Poller::new(interval);
        assert_eq!(poller.record_with(&unreachable, 0.5).0, interval * 2);
        assert_eq!(poller.record_with(&result, 0.5).0, interval, "{result:?}");
        assert_eq!(poller.record_with(&unreachable, 0.5).0, interval * 2);
    }
    assert_eq!(unreachable.pacing(), PollResult::Failure);
}

const HEX: &str = "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043";

/// A loopback registry answering every request with `status` and, when given, the digest header
/// `sha256:<digest>`; returns its `host:port`.
async fn registry(status: u16, digest: Option<&str>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let header = digest
        .map(|hex| format!("{}: sha256:{hex}\r\n", crate::oci::DIGEST_HEADER))
        .unwrap_or_default();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = vec![0u8; 65536];
            let _ = stream.read(&mut buffer).await;
            let answer = format!(
                "HTTP/1.1 {status} X\r\n{header}content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (address.to_string(), server)
}

/// One check, with `update.verify_digest` (not `pin_digest`), of 2.0.0 offered with [`HEX`] from
/// a registry answering `status` and `digest`: the result, the events and the registry's address.
async fn check_verified(status: u16, digest: Option<&str>) -> (CheckResult, Vec<Event>, String) {
    let (address, server) = registry(status, digest).await;
    let mut offered = release("2.0.0");
    offered.codebase = format!("{address}/web:2.0.0");
    offered.sha256 = Some(HEX.into());
    let verify = OfferRules {
        verify_digest: true,
        running_image: Some(format!("{address}/web:1.0.0")),
        ..rules(None)
    };
    let (result, events) = check_offer(offered, &verify).await;
    server.abort();
    (result, events, address)
}

#[tokio::test]
async fn verify_digest_takes_an_offer_the_registry_confirms_pinned_to_that_digest() {
    let (result, events, address) = check_verified(200, Some(HEX)).await;
    let CheckResult::Offer(update) = &result else {
        panic!("{result:?}");
    };
    // Verified implies pinned, with `pin_digest` off.
    assert_eq!(
        update.image.as_str(),
        format!("{address}/web:2.0.0@sha256:{HEX}")
    );
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn verify_digest_refuses_with_3_0_a_tag_the_registry_resolves_to_another_manifest() {
    let (result, events, _) = check_verified(200, Some(&"0".repeat(64))).await;
    assert!(
        matches!(&result, CheckResult::Refused { refusal, .. } if refusal.kind() == "digest-mismatch"),
        "{result:?}"
    );
    assert_eq!(
        events,
        [Event::Failed {
            error_code: error_code::DIGEST_MISMATCH
        }]
    );
}

#[tokio::test]
async fn verify_digest_refuses_a_tag_the_registry_does_not_know_and_backs_off_on_a_5xx() {
    let (result, events, _) = check_verified(404, None).await;
    let CheckResult::Refused { refusal, .. } = &result else {
        panic!("{result:?}");
    };
    assert_eq!(refusal.kind(), "digest-unverified");
    assert_eq!(
        events,
        [Event::Failed {
            error_code: error_code::OFFER_REFUSED
        }]
    );
    assert_eq!(result.pacing(), PollResult::Success);
    let (result, events, _) = check_verified(503, None).await;
    assert!(
        matches!(&result, CheckResult::Unreachable { kind, .. } if kind == "registry-unreachable"),
        "{result:?}"
    );
    assert!(events.is_empty(), "the offer may be fine: no 3/0");
}
