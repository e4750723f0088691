//! `KEY=VALUE` edits (`sidekick rollout set`) and the stored JSON form of a policy.

use std::time::Duration;

use super::*;

#[test]
fn each_key_is_set_from_text_and_validated_like_the_configuration() {
    let mut text = PolicyText::default();
    for (key, value) in [
        ("min_healthy", "25s"),
        ("monitor", "1m"),
        ("canary", "1"),
        ("canary_bake", "5m"),
        ("promote", "manual"),
        ("max_failures", "3"),
        ("batch_delay", "10s"),
        ("time_zone", "America/New_York"),
        ("window", "Mon,Tue/02:00/120"),
        ("window", "sun/23:30/60"),
    ] {
        text.set(key, value)
            .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
    }
    let p = text.validate().expect("valid");
    assert_eq!(p.min_healthy, Duration::from_secs(25));
    assert_eq!(p.canary_bake, Duration::from_secs(300));
    assert_eq!(p.promote, Promote::Manual);
    assert_eq!(p.max_failures.get(), 3);
    assert_eq!(p.time_zone.as_str(), "America/New_York");
    assert_eq!(p.windows.len(), 2);
    assert_eq!(p.windows[1].days, vec![Weekday::Sunday]);
    text.set("window", "none").expect("clears");
    assert!(text.window.is_empty());
}

#[test]
fn bad_edits_name_the_key_and_why() {
    let cases = [
        ("min_healthy", "soon", "min_healthy", "not a duration"),
        ("canary", "two", "canary", "not a whole number"),
        (
            "promote",
            "now",
            "promote",
            "neither \"auto\" nor \"manual\"",
        ),
        ("window", "Mon/02:00", "window", "DAYS/HH:MM/MINUTES"),
        ("window", "Mon/02:00/x", "window", "not a whole number"),
        ("speed", "1", "speed", "not a rollout key"),
    ];
    for (key, value, named, why) in cases {
        let err = PolicyText::default().set(key, value).expect_err("refused");
        assert_eq!(err.key, named);
        assert!(err.to_string().contains(why), "{err}");
    }
}

#[test]
fn a_policy_stores_as_json_and_reads_back_the_same() {
    let mut text = PolicyText::default();
    text.set("canary", "2").expect("set");
    text.set("window", "Wed/01:00/30").expect("set");
    let policy = text.validate().expect("valid");
    let json = serde_json::to_string(&policy.to_text()).expect("json");
    assert!(json.contains("\"min_healthy\":\"10s\""), "{json}");
    let back: PolicyText = serde_json::from_str(&json).expect("parses");
    assert_eq!(back.validate().expect("valid"), policy);
    // A stored value with keys missing takes the built-in defaults for them.
    let partial: PolicyText = serde_json::from_str(r#"{"canary":1}"#).expect("parses");
    assert_eq!(
        partial.validate().expect("valid").min_healthy,
        Duration::from_secs(10)
    );
    assert!(serde_json::from_str::<PolicyText>(r#"{"canary":1,"speed":2}"#).is_err());
}

#[test]
fn days_and_times_parse_as_zincati_writes_them() {
    assert_eq!(parse_day("Mon"), Some(Weekday::Monday));
    assert_eq!(parse_day("SUNDAY"), Some(Weekday::Sunday));
    assert_eq!(parse_day("Mo"), None);
    assert_eq!(parse_day("Mond"), None);
    assert_eq!(parse_start_time("00:00"), Some(0));
    assert_eq!(parse_start_time("23:59"), Some(23 * 60 + 59));
    for bad in ["24:00", "12:60", "2:00", "02:0", "0200", "aa:bb", "+1:00"] {
        assert_eq!(parse_start_time(bad), None, "{bad}");
    }
    assert_eq!(day_name(Weekday::Thursday), "Thu");
}

#[test]
fn the_default_policy_is_the_issue_table() {
    let p = RolloutPolicy::default();
    assert_eq!(p.to_text(), PolicyText::default());
    assert_eq!(p.min_healthy, Duration::from_secs(10));
}
