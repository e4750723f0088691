//! Offers carrying shell or unit-file metacharacters, or non-strict versions, are refused and reported.

use super::*;

#[tokio::test]
async fn injected_offers_are_refused_and_reported_with_errorcode_34() {
    let current = v("1.0.0");
    let bad = [
        ("2.0.0", "registry.example.com/web\n:2.0.0", ""),
        ("2.0.0", "registry.example.com/web;reboot", ""),
        ("2.0.0", "registry.example.com/web$(id)", ""),
        ("2.0.0", "registry.example.com/web 2.0.0", ""),
        ("2.0.0", "registry.example.com/web\"", ""),
        ("2.0.0", "registry.example.com/web", "x\ny"),
        ("2.0.0", "registry.example.com/web", ";rm -rf"),
        ("2.0.0", "registry.example.com/web", "$(id)"),
        ("2.0.0", "registry.example.com/web", "a b"),
        ("2.0.0", "registry.example.com/web", "'q'"),
        ("2.0", "registry.example.com/web", "x"),
        ("v2.0.0", "registry.example.com/web", "x"),
        ("", "registry.example.com/web", "x"),
    ];
    for (version, codebase, name) in bad {
        let source = InMemoryUpdateSource::new(Some(LocalRelease {
            version: version.into(),
            codebase: codebase.into(),
            name: name.into(),
            sha256: None,
            size: None,
        }));
        let CheckOutcome::Update(offer) = source.check(&current, false).await.unwrap() else {
            panic!(
                "{version:?} {codebase:?}: the in-memory source offers anything newer or unparsable"
            );
        };
        let refusal = validate_offer(&offer, &current, "{codebase}:{name}", true)
            .expect_err(&format!("{version:?} {codebase:?} {name:?} was accepted"));
        source
            .send_event(
                &current,
                Event::Failed {
                    error_code: refusal.error_code(),
                },
            )
            .await
            .unwrap();
        let events = source.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, Event::Failed { error_code: 34 });
    }
}
