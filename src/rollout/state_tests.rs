//! The stored state of a version: decoding refuses what is not ours and names the key; the pure
//! changes the instances make with compare-and-swap; the measured p95.

use std::time::Duration;

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().expect("a timestamp")
}

const KEY: &str = "/sidekick/rollouts/web/stable/2.0.0";

fn swap(instance: &str, took: &str, secs: i64) -> SwapRecord {
    let took = at(took);
    SwapRecord {
        instance: instance.into(),
        took_slot: took,
        released: Some(took + jiff::SignedDuration::from_secs(secs)),
        steps_ms: BTreeMap::from([("drain".to_string(), 5000)]),
    }
}

#[test]
fn a_state_round_trips_through_its_json() {
    let mut s = VersionState::new("2.0.0", at("2026-01-01T00:00:00Z"));
    s.add_canary("web-1", None, at("2026-01-01T00:00:01Z"));
    s.add_swap(swap("web-1", "2026-01-01T00:00:01Z", 30));
    let back = VersionState::decode(KEY, "2.0.0", &s.encode()).expect("decodes");
    assert_eq!(back, s);
}

#[test]
fn malformed_values_are_refused_naming_the_key() {
    let cases: [(&[u8], &str); 5] = [
        (b"not json", "not a rollout state"),
        (
            br#"{"version":"2.0.0","started":"yesterday"}"#,
            "not a rollout state",
        ),
        (
            br#"{"version":"2.0.0","started":"2026-01-01T00:00:00Z","extra":1}"#,
            "unknown field",
        ),
        (
            br#"{"version":"3.0.0","started":"2026-01-01T00:00:00Z"}"#,
            "names version `3.0.0`",
        ),
        (
            br#"{"started":"2026-01-01T00:00:00Z"}"#,
            "missing field `version`",
        ),
    ];
    for (raw, why) in cases {
        let err = VersionState::decode(KEY, "2.0.0", raw).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains(KEY) && text.contains(why), "{text}");
    }
}

#[test]
fn lists_past_their_bounds_are_refused() {
    let mut s = VersionState::new("2.0.0", at("2026-01-01T00:00:00Z"));
    for i in 0..=MAX_LISTED {
        s.failures.push(Failure {
            instance: format!("web-{i}"),
            at: s.started,
            stage: "verify".into(),
            reason: "x".into(),
        });
    }
    let err = VersionState::decode(KEY, "2.0.0", &s.encode()).expect_err("too many");
    assert!(err.message.contains("1001 failures"), "{err}");
}

#[test]
fn canaries_are_added_once_and_keep_their_first_result() {
    let t = at("2026-01-01T00:00:00Z");
    let mut s = VersionState::new("2.0.0", t);
    s.add_canary("web-1", None, t);
    s.add_canary("web-1", None, t);
    s.add_canary("web-2", None, t);
    assert_eq!(s.canaries.len(), 2);
    assert_eq!(s.wave_passed_at(2), None);
    s.canary_result("web-1", true, at("2026-01-01T00:01:00Z"));
    s.canary_result("web-1", false, at("2026-01-01T00:02:00Z"));
    assert_eq!(s.canaries[0].passed, Some(at("2026-01-01T00:01:00Z")));
    assert_eq!(s.canaries[0].failed, None);
    assert_eq!(s.canaries_passed(), 1);
    s.canary_result("web-2", true, at("2026-01-01T00:03:00Z"));
    assert_eq!(s.wave_passed_at(2), Some(at("2026-01-01T00:03:00Z")));
    assert_eq!(s.wave_passed_at(3), None);
    assert_eq!(s.wave_passed_at(0), None, "no wave to pass");
    s.canary_result("web-9", true, t);
    assert!(!s.is_canary("web-9"));
}

#[test]
fn the_failure_budget_counts_distinct_instances() {
    let t = at("2026-01-01T00:00:00Z");
    let mut s = VersionState::new("2.0.0", t);
    for instance in ["web-1", "web-1", "web-2"] {
        s.add_failure(Failure {
            instance: instance.into(),
            at: t,
            stage: "min_healthy".into(),
            reason: "left active".into(),
        });
    }
    assert_eq!(s.failures.len(), 3);
    assert_eq!(s.failed_instances(), 2);
}

#[test]
fn swaps_are_bounded_and_the_last_release_is_the_latest() {
    let mut s = VersionState::new("2.0.0", at("2026-01-01T00:00:00Z"));
    for i in 0..=MAX_SWAPS {
        let mut r = swap(&format!("web-{i}"), "2026-01-01T00:00:00Z", i as i64);
        r.instance = format!("web-{i}");
        s.add_swap(r);
    }
    assert_eq!(s.swaps.len(), MAX_SWAPS);
    assert_eq!(s.swaps[0].instance, "web-1", "the oldest went");
    assert_eq!(
        s.last_release(),
        Some(at("2026-01-01T00:00:00Z") + jiff::SignedDuration::from_secs(MAX_SWAPS as i64))
    );
    let mut in_flight = swap("web-x", "2026-01-01T00:00:00Z", 1);
    in_flight.released = None;
    assert_eq!(in_flight.duration(), None);
}

#[test]
fn p95_is_the_nearest_rank_over_the_latest_released_swaps() {
    let mut old = VersionState::new("1.0.0", at("2025-12-01T00:00:00Z"));
    old.add_swap(swap("web-1", "2025-12-01T00:00:00Z", 1000));
    let mut new = VersionState::new("2.0.0", at("2026-01-01T00:00:00Z"));
    for i in 1..=20 {
        new.add_swap(swap("web-1", &format!("2026-01-01T00:{i:02}:00Z"), i));
    }
    let mut in_flight = swap("web-2", "2026-01-01T01:00:00Z", 1);
    in_flight.released = None;
    new.add_swap(in_flight);
    let history = [new.clone(), old.clone()];
    // The 20 latest are 1..=20 s; rank ceil(0.95 * 20) = 19.
    assert_eq!(p95_swap(&history, 20), Some(Duration::from_secs(19)));
    // Over 21 the old 1000 s swap counts: rank ceil(0.95 * 21) = 20 of 21.
    assert_eq!(p95_swap(&history, 21), Some(Duration::from_secs(20)));
    assert_eq!(p95_swap(&history, 1), Some(Duration::from_secs(20)));
    assert_eq!(p95_swap(&[old], 20), Some(Duration::from_secs(1000)));
    assert_eq!(p95_swap(&[], 20), None);
}

#[test]
fn a_failure_is_counted_once_per_instance_and_marks_its_canary_failed() {
    let t = at("2026-01-01T00:00:00Z");
    let later = at("2026-01-01T00:05:00Z");
    let mut s = VersionState::new("2.0.0", t);
    s.add_canary("web-1", None, t);
    let failure = |instance: &str, at: Timestamp, stage: &str| Failure {
        instance: instance.into(),
        at,
        stage: stage.into(),
        reason: "left active".into(),
    };
    assert!(s.count_failure(failure("web-1", t, "min_healthy")));
    assert_eq!(s.canaries[0].failed, Some(t));
    // Re-sent by a retried halt, or recorded again at the release: nothing changes.
    let before = s.clone();
    assert!(!s.count_failure(failure("web-1", later, "verify")));
    assert_eq!(s, before);
    assert!(s.count_failure(failure("web-2", later, "verify")));
    assert_eq!(s.failures.len(), 2);
    assert_eq!(s.failed_instances(), 2);
    assert_eq!(s.failures[0].stage, "min_healthy", "the first record stays");
}

#[test]
fn a_promotion_records_a_version_nobody_started_and_keeps_a_started_ones_canaries() {
    let now = at("2026-01-01T00:10:00Z");
    let fresh = VersionState::promoted(None, "2.0.0", "ops", now).expect("recorded");
    assert_eq!(fresh.version, "2.0.0");
    assert_eq!(fresh.started, now);
    assert!(fresh.canaries.is_empty() && fresh.swaps.is_empty());
    assert_eq!(
        fresh.promoted,
        Some(Promotion {
            at: now,
            by: "ops".into()
        })
    );
    let mut started = VersionState::new("2.0.0", at("2026-01-01T00:00:00Z"));
    started.add_canary("web-1", None, at("2026-01-01T00:00:01Z"));
    let next = VersionState::promoted(Some(&started), "2.0.0", "ops", now).expect("promoted");
    assert_eq!(next.started, started.started, "the rollout's start stays");
    assert_eq!(next.canaries, started.canaries);
    assert_eq!(next.promoted.as_ref().map(|p| p.at), Some(now));
    // Promoting again changes nothing: the first promotion stays on record.
    let later = at("2026-01-01T01:00:00Z");
    assert_eq!(
        VersionState::promoted(Some(&next), "2.0.0", "other", later),
        None
    );
}

fn release(instance: &str, took: Timestamp, end: SwapEnd) -> Release {
    Release {
        instance: instance.into(),
        took_slot: took,
        at: took + jiff::SignedDuration::from_secs(40),
        steps_ms: BTreeMap::from([("min_healthy".to_string(), 25_000)]),
        end,
    }
}

#[test]
fn a_release_sent_again_changes_nothing_and_adds_a_swap_whose_start_was_lost() {
    let t = at("2026-01-01T00:00:00Z");
    let mut s = VersionState::new("2.0.0", t);
    s.add_canary("web-1", None, t);
    let passed = release("web-1", t, SwapEnd::Passed);
    // The start's write failed: the release adds the record.
    s.record_release(&passed);
    assert_eq!(s.swaps.len(), 1);
    assert_eq!(s.swaps[0].duration(), Some(Duration::from_secs(40)));
    assert_eq!(s.canaries[0].passed, Some(passed.at));
    let before = s.clone();
    s.record_release(&passed);
    assert_eq!(s, before, "a retried write is idempotent");
    // With its start recorded, the release completes that record.
    let mut s = VersionState::new("2.0.0", t);
    s.add_swap(SwapRecord {
        instance: "web-1".into(),
        took_slot: t,
        released: None,
        steps_ms: BTreeMap::new(),
    });
    s.record_release(&passed);
    assert_eq!(s.swaps.len(), 1);
    assert_eq!(s.swaps[0].released, Some(passed.at));
    assert_eq!(s.swaps[0].steps_ms["min_healthy"], 25_000);
}

#[test]
fn a_late_release_judges_only_the_canary_place_claimed_before_its_slot() {
    let t = at("2026-01-01T00:00:00Z");
    let later = at("2026-01-01T01:00:00Z");
    // An unjudged swap frees its place, unless the place was claimed again since (a retry of
    // the write sent after the next claim must not take the new claim away).
    let mut s = VersionState::new("2.0.0", t);
    s.add_canary("web-1", None, t);
    s.record_release(&release("web-1", t, SwapEnd::Unjudged));
    assert!(!s.is_canary("web-1"));
    s.add_canary("web-1", None, later);
    s.record_release(&release("web-1", t, SwapEnd::Unjudged));
    assert!(s.awaits_result_of("web-1"), "{s:?}");
    s.record_release(&release("web-1", t, SwapEnd::Passed));
    assert!(
        s.awaits_result_of("web-1"),
        "an old pass is not the new claim's"
    );
    // A failure marks the place failed and counts once.
    let failure = Failure {
        instance: "web-2".into(),
        at: t,
        stage: "min_healthy".into(),
        reason: "left active".into(),
    };
    s.add_canary("web-2", None, t);
    s.record_release(&release("web-2", t, SwapEnd::Failed(failure.clone())));
    s.record_release(&release("web-2", t, SwapEnd::Failed(failure)));
    assert_eq!(s.failed_instances(), 1);
    assert!(
        s.canaries
            .iter()
            .any(|c| c.instance == "web-2" && c.failed.is_some())
    );
}

#[test]
fn a_lost_canary_result_is_settled_by_what_its_instance_serves_and_never_passes_a_failure() {
    let t = at("2026-01-01T00:00:00Z");
    let mut s = VersionState::new("2.0.0", t);
    s.add_canary("web-1", None, t);
    let failure = |instance: &str| Failure {
        instance: instance.into(),
        at: t,
        stage: "verify".into(),
        reason: "unhealthy".into(),
    };
    let mut failed = s.clone();
    failed.add_failure(failure("web-1"));
    let mut other_failed = s.clone();
    other_failed.add_failure(failure("web-2"));
    // (state, running, denylisted) → rule
    let cases = [
        (&s, "2.0.0", false, Some(LostCanary::Passed)),
        (&s, "1.0.0", false, Some(LostCanary::GiveUp)),
        (&s, "3.0.0", false, Some(LostCanary::GiveUp)),
        (&s, "1.0.0", true, Some(LostCanary::Failed)),
        (&s, "2.0.0", true, Some(LostCanary::Failed)),
        (&failed, "2.0.0", false, Some(LostCanary::Failed)),
        (&failed, "1.0.0", false, Some(LostCanary::Failed)),
        (&other_failed, "2.0.0", false, Some(LostCanary::Passed)),
    ];
    for (i, (state, running, denylisted, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            state.lost_canary("web-1", running, denylisted),
            want,
            "case {i}"
        );
    }
    // No place, or a place with a result: nothing to settle.
    assert_eq!(s.lost_canary("web-2", "2.0.0", false), None);
    let mut passed = s.clone();
    passed.canary_result("web-1", true, t);
    assert_eq!(passed.lost_canary("web-1", "1.0.0", true), None);
    let mut judged = s.clone();
    judged.canary_result("web-1", false, t);
    assert_eq!(
        judged.lost_canary("web-1", "2.0.0", false),
        None,
        "a failure stays"
    );
    assert!(!judged.settle_lost_canary("web-1", LostCanary::Passed, t));
    assert_eq!(judged.canaries_passed(), 0);
}

#[test]
fn settling_a_lost_canary_records_the_result_or_frees_the_place() {
    let t = at("2026-01-01T00:00:00Z");
    let now = at("2026-01-01T00:10:00Z");
    let mut s = VersionState::new("2.0.0", t);
    s.add_canary("web-1", None, t);
    s.add_canary("web-2", None, t);
    let mut passed = s.clone();
    assert!(passed.settle_lost_canary("web-1", LostCanary::Passed, now));
    assert_eq!(passed.canaries[0].passed, Some(now));
    assert!(!passed.settle_lost_canary("web-1", LostCanary::GiveUp, now));
    let mut failed = s.clone();
    assert!(failed.settle_lost_canary("web-1", LostCanary::Failed, now));
    assert_eq!(failed.canaries[0].failed, Some(now));
    let mut freed = s.clone();
    assert!(freed.settle_lost_canary("web-1", LostCanary::GiveUp, now));
    assert!(!freed.is_canary("web-1"));
    assert!(freed.is_canary("web-2"), "only its own place");
}

fn claimant(run: &str, boot: &str) -> Claimant {
    Claimant {
        run: run.into(),
        boot: boot.into(),
    }
}

#[test]
fn a_place_is_lost_by_its_run_id_in_this_boot_whatever_the_clocks_say() {
    let started = at("2026-01-01T00:00:00Z");
    let (ahead, behind) = (at("2026-01-01T01:00:00Z"), at("2025-12-31T23:00:00Z"));
    let me = claimant("b0b0b0b0b0b0b0b0", "boot-1");
    let earlier = claimant("a0a0a0a0a0a0a0a0", "boot-1");
    let elsewhere = claimant("a0a0a0a0a0a0a0a0", "boot-2");
    // (claimed by, at) → lost for `me`, started at `started`
    let cases = [
        // An earlier process in this boot, its claim stamped by a clock an hour ahead (set back
        // since): lost all the same.
        (Some(&earlier), ahead, true),
        (Some(&earlier), behind, true),
        // Its own claim, read after its clock was set back an hour: never lost.
        (Some(&me), behind, false),
        (Some(&me), ahead, false),
        // Claimed on another host or boot: maybe a live clone's, told apart by time alone.
        (Some(&elsewhere), behind, true),
        (Some(&elsewhere), ahead, false),
        // A place from a release before run ids: by time, as that release judged it.
        (None, behind, true),
        (None, started, true),
        (None, ahead, false),
    ];
    for (i, (by, since, lost)) in cases.into_iter().enumerate() {
        let mut s = VersionState::new("2.0.0", since);
        s.add_canary("web-1", by, since);
        assert_eq!(s.lost_place_of("web-1", &me, started), lost, "case {i}");
        assert!(!s.lost_place_of("web-2", &me, started), "case {i}");
    }
    // An unreadable boot id matches no boot: time decides.
    let (no_boot, other_no_boot) = (claimant("b0", ""), claimant("a0", ""));
    let mut s = VersionState::new("2.0.0", ahead);
    s.add_canary("web-1", Some(&other_no_boot), ahead);
    assert!(!s.lost_place_of("web-1", &no_boot, started));
    // A place with a result is never lost.
    let mut judged = VersionState::new("2.0.0", behind);
    judged.add_canary("web-1", Some(&earlier), behind);
    judged.canary_result("web-1", true, started);
    assert!(!judged.lost_place_of("web-1", &me, started));
}

#[test]
fn a_place_without_a_claimant_from_an_older_release_still_decodes_and_none_is_written() {
    let older = br#"{"version":"2.0.0","started":"2026-01-01T00:00:00Z",
        "canaries":[{"instance":"web-1","since":"2026-01-01T00:00:01Z","passed":null,"failed":null}]}"#;
    let s = VersionState::decode(KEY, "2.0.0", older).expect("an older release's state decodes");
    assert_eq!(s.canaries[0].claimed_by, None);
    let text = String::from_utf8(s.encode()).unwrap();
    assert!(!text.contains("claimed_by"), "{text}");
    let mut claimed = s.clone();
    claimed.canaries.clear();
    let by = claimant("0123456789abcdef", "8c1f0e6b-4c5e-4d0a-9f1e-2b7d3c4a5e6f");
    claimed.add_canary("web-1", Some(&by), at("2026-01-01T00:00:02Z"));
    let text = String::from_utf8(claimed.encode()).unwrap();
    assert!(
        text.contains(r#""claimed_by":{"run":"0123456789abcdef","boot":"8c1f0e6b-"#),
        "{text}"
    );
    let back = VersionState::decode(KEY, "2.0.0", text.as_bytes()).expect("decodes");
    assert_eq!(back, claimed);
}

#[test]
fn run_ids_are_sixteen_hex_digits_and_differ() {
    let (a, b) = (new_run_id(), new_run_id());
    assert_ne!(a, b);
    for id in [a, b] {
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
