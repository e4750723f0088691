//! The agent's gates over snapshots as etcd would hold them: the slot answer reads the stored
//! policy over the configured one and the measured swaps, and the check gate follows windows,
//! the start jitter and a manual promotion.

use std::time::Duration;

use jiff::SignedDuration;

use super::*;
use crate::registry::record::InstanceRecord;
use crate::rollout::decide::{Hold, Stage};
use crate::rollout::policy::PolicyText;
use crate::rollout::state::{Promotion, SwapRecord};
use crate::rollout::window::MAX_START_JITTER;

const T0: &str = "2026-01-05T02:00:00Z"; // a Monday, 02:00 UTC
const FLOOR: Duration = Duration::from_secs(50);

fn t(secs: i64) -> Timestamp {
    T0.parse::<Timestamp>().expect("a timestamp") + SignedDuration::from_secs(secs)
}

fn policy(edit: impl FnOnce(&mut PolicyText)) -> RolloutPolicy {
    let mut text = PolicyText::default();
    edit(&mut text);
    text.validate().expect("a valid policy")
}

/// A window on Mondays from 02:00 for `minutes`.
fn monday_window(minutes: u32) -> impl FnOnce(&mut PolicyText) {
    move |p| {
        p.window = vec![crate::rollout::policy::WindowText {
            days: vec!["Mon".into()],
            start_time: "02:00".into(),
            length_minutes: minutes,
        }]
    }
}

fn snap(versions: Vec<VersionState>) -> GroupSnapshot {
    GroupSnapshot {
        revision: 1,
        stored_policy: None,
        paused: None,
        halt: None,
        versions,
        instances: Vec::new(),
        slots_held: 0,
    }
}

/// The slot answer of a host that has seen none of the group's stamps yet (an empty
/// [`Sightings`]), as the one-shot `rollout status` asks: the writers' stamps start the gaps.
fn slot_answer_unseen(
    s: &GroupSnapshot,
    configured: &RolloutPolicy,
    floor: Duration,
    instance: &str,
    version: &str,
    now: Timestamp,
) -> SlotGate {
    let unseen = Sightings::default();
    slot_answer_seen(
        s,
        configured,
        floor,
        instance,
        version,
        &unseen,
        Duration::ZERO,
        now,
    )
}

fn released_swap(instance: &str, took: i64, released: i64) -> SwapRecord {
    SwapRecord {
        instance: instance.into(),
        took_slot: t(took),
        released: Some(t(released)),
        steps_ms: Default::default(),
    }
}

#[test]
fn the_stored_policy_decides_the_slot_over_the_configured_one() {
    let configured = RolloutPolicy::default();
    let mut s = snap(Vec::new());
    let take = slot_answer_unseen(&s, &configured, FLOOR, "web-1", "2.0.0", t(0));
    assert_eq!(take, SlotGate::Take { canary: false });
    s.stored_policy = Some(policy(|p| p.canary = 1));
    let canary = slot_answer_unseen(&s, &configured, FLOOR, "web-1", "2.0.0", t(0));
    assert_eq!(canary, SlotGate::Take { canary: true });
}

#[test]
fn a_pause_holds_the_slot_and_is_not_a_halt() {
    let mut s = snap(Vec::new());
    s.paused = Some(crate::rollout::store::Paused {
        since: t(0),
        by: "ops".into(),
    });
    let answer = slot_answer_unseen(&s, &RolloutPolicy::default(), FLOOR, "web-1", "2.0.0", t(1));
    assert_eq!(answer, SlotGate::Hold(Hold::Paused));
}

#[test]
fn batch_delay_counts_from_the_last_release_of_any_version() {
    let configured = policy(|p| p.batch_delay = Duration::from_secs(10));
    let mut old = VersionState::new("1.0.0", t(-100));
    old.add_swap(released_swap("web-1", -100, -50));
    let mut new = VersionState::new("2.0.0", t(0));
    new.add_swap(released_swap("web-2", 0, 5));
    let s = snap(vec![new, old]);
    let held = slot_answer_unseen(&s, &configured, FLOOR, "web-3", "2.0.0", t(14));
    assert_eq!(held, SlotGate::Hold(Hold::BatchDelay { until: t(15) }));
    let take = slot_answer_unseen(&s, &configured, FLOOR, "web-3", "2.0.0", t(15));
    assert_eq!(take, SlotGate::Take { canary: false });
}

#[test]
fn the_estimate_is_the_floor_plus_min_healthy_before_any_swap_then_the_measured_p95() {
    let configured = policy(|p| p.min_healthy = Duration::from_secs(25));
    let mut s = snap(Vec::new());
    assert_eq!(
        swap_estimate(&s, &configured, FLOOR),
        Duration::from_secs(75)
    );
    let mut v = VersionState::new("2.0.0", t(0));
    v.add_swap(released_swap("web-1", 0, 30));
    s.versions.push(v);
    assert_eq!(
        swap_estimate(&s, &configured, FLOOR),
        Duration::from_secs(30)
    );
}

#[test]
fn a_window_closing_before_the_estimate_holds_the_slot() {
    // Open from 02:00 for 2 minutes; the floor is 50 s + 10 s min_healthy.
    let configured = policy(monday_window(2));
    let s = snap(Vec::new());
    let fits = slot_answer_unseen(&s, &configured, FLOOR, "web-1", "2.0.0", t(30));
    assert_eq!(fits, SlotGate::Take { canary: false });
    let short = slot_answer_unseen(&s, &configured, FLOOR, "web-1", "2.0.0", t(70));
    assert_eq!(
        short,
        SlotGate::Hold(Hold::WindowTooShort {
            closes: t(120),
            needs: Duration::from_secs(60)
        })
    );
}

#[test]
fn no_check_outside_every_window_and_the_hold_names_the_opening() {
    let configured = policy(monday_window(60));
    let s = snap(Vec::new());
    let mut jitter = Jitter::default();
    let hold = check_gate(&s, &configured, "web-1", None, &mut jitter, t(-60), 0.5);
    assert_eq!(hold, Some(CheckHold::OutsideWindow { opens: Some(t(0)) }));
    assert_eq!(hold.and_then(|h| h.until()), Some(t(0)));
}

#[test]
fn the_first_check_in_a_window_waits_its_jitter_drawn_once_per_opening() {
    // 60 minutes: the bound is a quarter, 15 min, capped at 10 min; draw 0.5 → 5 min.
    let configured = policy(monday_window(60));
    let s = snap(Vec::new());
    let mut jitter = Jitter::default();
    let hold = check_gate(&s, &configured, "web-1", None, &mut jitter, t(10), 0.5);
    assert_eq!(hold, Some(CheckHold::StartJitter { until: t(300) }));
    // Drawn once: another draw does not move it.
    let again = check_gate(&s, &configured, "web-1", None, &mut jitter, t(299), 0.0);
    assert_eq!(again, Some(CheckHold::StartJitter { until: t(300) }));
    let open = check_gate(&s, &configured, "web-1", None, &mut jitter, t(300), 0.9);
    assert_eq!(open, None);
    assert_eq!(MAX_START_JITTER, Duration::from_secs(600));
}

#[test]
fn a_short_window_jitters_a_quarter_of_its_length() {
    // 8 minutes: at most 2 minutes of jitter; the largest draw stays inside it.
    let configured = policy(monday_window(8));
    let s = snap(Vec::new());
    let mut jitter = Jitter::default();
    let hold = check_gate(&s, &configured, "web-1", None, &mut jitter, t(0), 0.999);
    let until = hold.and_then(|h| h.until()).expect("a jitter");
    assert!(until < t(120) && until > t(110), "{until}");
}

#[test]
fn without_windows_checks_are_not_held() {
    let s = snap(Vec::new());
    let mut jitter = Jitter::default();
    let hold = check_gate(
        &s,
        &RolloutPolicy::default(),
        "web-1",
        None,
        &mut jitter,
        t(0),
        0.5,
    );
    assert_eq!(hold, None);
}

#[test]
fn waiting_for_a_manual_promotion_only_canaries_and_instances_on_it_check() {
    let configured = policy(|p| {
        p.canary = 1;
        p.promote = crate::rollout::Promote::Manual;
    });
    let mut v = VersionState::new("2.0.0", t(0));
    v.add_canary("web-1", None, t(0));
    let mut s = snap(vec![v]);
    let mut jitter = Jitter::default();
    let mut gate = |s: &GroupSnapshot, who: &str, running: Option<&str>| {
        check_gate(s, &configured, who, running, &mut jitter, t(5), 0.0)
    };
    let waiting = Some(CheckHold::AwaitingPromotion {
        version: "2.0.0".into(),
    });
    assert_eq!(gate(&s, "web-2", Some("1.0.0")), waiting);
    assert_eq!(gate(&s, "web-2", None), waiting);
    assert_eq!(gate(&s, "web-1", Some("1.0.0")), None, "the canary");
    assert_eq!(gate(&s, "web-3", Some("2.0.0")), None, "already on it");
    s.versions[0].promoted = Some(Promotion {
        at: t(3),
        by: "ops".into(),
    });
    assert_eq!(gate(&s, "web-2", Some("1.0.0")), None, "promoted");
}

fn record(version: &str, phase: &str, target: Option<&str>) -> InstanceRecord {
    InstanceRecord {
        version: version.into(),
        phase: phase.into(),
        since: String::new(),
        last_check: None,
        result: None,
        host: "127.0.0.1".into(),
        target: target.map(str::to_string),
        step: None,
        policy: None,
    }
}

#[test]
fn the_target_is_a_waited_for_version_with_no_state_else_the_newest_recorded() {
    let manual = policy(|p| p.promote = crate::rollout::Promote::Manual);
    let mut s = snap(vec![VersionState::new("1.0.0", t(0))]);
    s.instances = vec![
        ("web-1".into(), record("1.0.0", "serving", None)),
        (
            "web-2".into(),
            record("1.0.0", WAITING_FOR_SLOT, Some("2.0.0")),
        ),
    ];
    let (version, state) = rollout_target(&s).expect("a target");
    assert_eq!((version, state), ("2.0.0", None));
    // canary = 0, promote = "manual", nothing recorded: the stage says what it waits for.
    let (version, stage) = newest_stage(&s, &manual, FLOOR, t(5)).expect("a stage");
    assert_eq!(
        (version.as_str(), stage),
        ("2.0.0", Stage::AwaitingPromotion)
    );
    // Once promoted (the state recorded), the version is the newest recorded and rolls.
    let promoted = VersionState::promoted(None, "2.0.0", "ops", t(6)).expect("promoted");
    s.versions.insert(0, promoted);
    let (version, state) = rollout_target(&s).expect("a target");
    assert_eq!(version, "2.0.0");
    assert!(state.is_some_and(|v| v.promoted.is_some()));
    let (_, stage) = newest_stage(&s, &manual, FLOOR, t(7)).expect("a stage");
    assert_eq!(stage, Stage::Rolling);
    // An instance updating (not waiting) to an unrecorded version does not make it the target.
    s.versions.remove(0);
    s.instances[1].1 = record("1.0.0", "updating", Some("2.0.0"));
    assert_eq!(rollout_target(&s).map(|(v, _)| v), Some("1.0.0"));
    assert!(rollout_target(&snap(Vec::new())).is_none());
}

#[test]
fn a_free_canary_place_lets_the_check_through() {
    let configured = policy(|p| {
        p.canary = 2;
        p.promote = crate::rollout::Promote::Manual;
    });
    let mut v = VersionState::new("2.0.0", t(0));
    v.add_canary("web-1", None, t(0));
    let s = snap(vec![v]);
    let mut jitter = Jitter::default();
    let hold = check_gate(&s, &configured, "web-2", None, &mut jitter, t(5), 0.0);
    assert_eq!(hold, None);
}

#[test]
fn a_held_check_comes_back_when_the_hold_ends_or_at_the_usual_pace() {
    let interval = Duration::from_secs(300);
    assert_eq!(check_delay(None, interval), interval);
    let soon = Duration::from_secs(42);
    assert_eq!(check_delay(Some(soon), interval), soon);
    assert_eq!(
        check_delay(Some(Duration::from_secs(9000)), interval),
        interval
    );
    assert_eq!(
        check_delay(Some(Duration::ZERO), interval),
        Duration::from_secs(1)
    );
}

#[test]
fn the_eta_adds_the_measured_swaps_and_delays_from_when_the_stage_can_move() {
    let est = Duration::from_secs(30);
    let delay = Duration::from_secs(10);
    // Three left one after another: 3 × 30 s + 2 × 10 s.
    assert_eq!(eta(&Stage::Rolling, 3, est, delay, t(0)), Some(t(110)));
    assert_eq!(
        eta(&Stage::Baking { until: t(100) }, 1, est, delay, t(0)),
        Some(t(130))
    );
    assert_eq!(
        eta(
            &Stage::WaitingForWindow {
                opens: Some(t(600))
            },
            2,
            est,
            delay,
            t(0)
        ),
        Some(t(670))
    );
    for waiting in [
        Stage::Paused,
        Stage::AwaitingPromotion,
        Stage::Done,
        Stage::WaitingForWindow { opens: None },
    ] {
        assert_eq!(eta(&waiting, 2, est, delay, t(0)), None, "{waiting:?}");
    }
}

#[test]
fn a_version_older_than_a_recorded_rollout_is_superseded_and_refused() {
    let manual = policy(|p| p.promote = crate::rollout::Promote::Manual);
    let s = snap(vec![
        VersionState::new("10.0.0", t(0)),
        VersionState::new("2.0.0", t(0)),
        VersionState::new("not-semver", t(0)),
    ]);
    // Semantic order, not text order: 10.0.0 supersedes 2.0.0 and 9.1.0.
    assert_eq!(superseded_by(&s, "2.0.0"), Some("10.0.0"));
    assert_eq!(superseded_by(&s, "9.1.0"), Some("10.0.0"));
    assert_eq!(superseded_by(&s, "10.0.0"), None, "the newest itself");
    assert_eq!(superseded_by(&s, "11.0.0"), None, "newer than any recorded");
    assert_eq!(superseded_by(&s, "garbage"), None, "no version, no order");
    // Waiting for a promotion nobody will give: refused (the grant goes back), not held.
    let answer = slot_answer_unseen(&s, &manual, FLOOR, "web-1", "2.0.0", t(1));
    let hold = Hold::Superseded {
        by: "10.0.0".into(),
    };
    assert_eq!(answer, SlotGate::Hold(hold.clone()));
    let text = crate::rollout::agent::hold_text(&hold);
    assert_eq!(
        crate::rollout::agent::hold_answer(&hold),
        crate::rollout::agent::SlotHold::Refused(text)
    );
    // The newest is held only by what holds it (here, the manual promotion).
    let newest = slot_answer_unseen(&s, &manual, FLOOR, "web-1", "10.0.0", t(1));
    assert_eq!(newest, SlotGate::Hold(Hold::AwaitingPromotion));
}

/// Issue 17, clock skew: the gaps other hosts' stamps start are measured from this host's first
/// sight (a monotonic reading), so a writer's clock an hour behind cannot cut `batch_delay`
/// short, one an hour ahead does not stretch it, and a step of this host's own wall clock after
/// the sight moves the gap's end along with it.
#[test]
fn batch_delay_runs_from_this_hosts_first_sight_of_the_release_whatever_the_writers_clock() {
    const HOUR: i64 = 3600;
    let configured = policy(|p| p.batch_delay = Duration::from_secs(60));
    let mono = |s: u64| Duration::from_secs(s);
    for skew in [-HOUR, HOUR, 0] {
        // Released at this host's t(0), stamped on a clock `skew` off.
        let mut v = VersionState::new("2.0.0", t(skew - 30));
        v.add_swap(released_swap("web-1", skew - 30, skew));
        let s = snap(vec![v]);
        let mut sightings = Sightings::default();
        sightings.observe(&s, &configured, mono(100));
        let answer = |m: u64, now: Timestamp| {
            slot_answer_seen(
                &s,
                &configured,
                FLOOR,
                "web-2",
                "2.0.0",
                &sightings,
                mono(m),
                now,
            )
        };
        assert_eq!(
            answer(100, t(0)),
            SlotGate::Hold(Hold::BatchDelay { until: t(60) }),
            "skew {skew}"
        );
        assert_eq!(
            answer(159, t(59)),
            SlotGate::Hold(Hold::BatchDelay { until: t(60) }),
            "skew {skew}"
        );
        assert_eq!(
            answer(160, t(60)),
            SlotGate::Take { canary: false },
            "skew {skew}"
        );
        // This host's wall clock stepped an hour ahead 10 s after the sight: 50 s still to go.
        assert_eq!(
            answer(110, t(HOUR + 10)),
            SlotGate::Hold(Hold::BatchDelay {
                until: t(HOUR + 60)
            }),
            "skew {skew}"
        );
    }
    // Without a sighting (the one-shot `rollout status`) the writer's clock decides, as it did
    // for every host before: the hour-behind stamp let the next slot go at once.
    let mut v = VersionState::new("2.0.0", t(-HOUR - 30));
    v.add_swap(released_swap("web-1", -HOUR - 30, -HOUR));
    let s = snap(vec![v]);
    assert_eq!(
        slot_answer_unseen(&s, &configured, FLOOR, "web-2", "2.0.0", t(0)),
        SlotGate::Take { canary: false }
    );
}

#[test]
fn canary_bake_runs_from_this_hosts_first_sight_of_the_wave_passing() {
    const HOUR: i64 = 3600;
    let configured = policy(|p| {
        p.canary = 1;
        p.canary_bake = Duration::from_secs(120);
    });
    let mono = |s: u64| Duration::from_secs(s);
    for skew in [-HOUR, HOUR] {
        let mut v = VersionState::new("2.0.0", t(skew - 60));
        v.add_canary("web-1", None, t(skew - 60));
        v.canary_result("web-1", true, t(skew));
        let s = snap(vec![v]);
        let mut sightings = Sightings::default();
        sightings.observe(&s, &configured, mono(7));
        let answer = |m: u64, now: Timestamp| {
            slot_answer_seen(
                &s,
                &configured,
                FLOOR,
                "web-2",
                "2.0.0",
                &sightings,
                mono(m),
                now,
            )
        };
        assert_eq!(
            answer(7, t(0)),
            SlotGate::Hold(Hold::Baking { until: t(120) }),
            "skew {skew}"
        );
        assert_eq!(
            answer(126, t(119)),
            SlotGate::Hold(Hold::Baking { until: t(120) }),
            "skew {skew}"
        );
        assert_eq!(
            answer(127, t(120)),
            SlotGate::Take { canary: false },
            "skew {skew}"
        );
    }
}

#[test]
fn a_new_stamp_is_seen_anew_and_a_sighting_of_another_stamp_is_not_used() {
    let configured = policy(|p| p.batch_delay = Duration::from_secs(60));
    let mono = |s: u64| Duration::from_secs(s);
    let mut v = VersionState::new("2.0.0", t(0));
    v.add_swap(released_swap("web-1", 0, 10));
    let mut s = snap(vec![v]);
    let mut sightings = Sightings::default();
    sightings.observe(&s, &configured, mono(10));
    // Seen again later: the first sight stays.
    sightings.observe(&s, &configured, mono(40));
    assert_eq!(sightings.release_seen(t(10), mono(40), t(40)), Some(t(10)));
    // Another stamp than the one seen: no sighting of it.
    assert_eq!(sightings.release_seen(t(11), mono(40), t(40)), None);
    // The next release is seen when it is first read.
    s.versions[0].add_swap(released_swap("web-2", 20, 30));
    sightings.observe(&s, &configured, mono(50));
    assert_eq!(sightings.release_seen(t(30), mono(50), t(50)), Some(t(50)));
    assert_eq!(
        slot_answer_seen(
            &s,
            &configured,
            FLOOR,
            "web-3",
            "2.0.0",
            &sightings,
            mono(50),
            t(50)
        ),
        SlotGate::Hold(Hold::BatchDelay { until: t(110) })
    );
}

#[test]
fn a_wave_is_forgotten_with_its_version_and_seen_anew_when_its_stamp_changes() {
    let configured = policy(|p| p.canary = 1);
    let mono = |s: u64| Duration::from_secs(s);
    let mut v = VersionState::new("2.0.0", t(0));
    v.add_canary("web-1", None, t(0));
    v.canary_result("web-1", true, t(5));
    let s = snap(vec![v.clone()]);
    let mut sightings = Sightings::default();
    sightings.observe(&s, &configured, mono(5));
    assert_eq!(
        sightings.wave_seen("2.0.0", t(5), mono(9), t(9)),
        Some(t(5))
    );
    sightings.observe(&snap(Vec::new()), &configured, mono(9));
    assert_eq!(sightings.wave_seen("2.0.0", t(5), mono(9), t(9)), None);
    sightings.observe(&s, &configured, mono(12));
    assert_eq!(
        sightings.wave_seen("2.0.0", t(5), mono(12), t(12)),
        Some(t(12))
    );
}

#[test]
fn only_an_instance_registered_with_no_swap_serves_and_a_held_slot_keeps_the_rollout_going() {
    let mut s = snap(vec![VersionState::new("2.0.0", t(0))]);
    s.instances = vec![
        ("web-1".into(), record("2.0.0", SERVING, None)),
        // Restarted on 2.0.0, in min-healthy: runs it, does not serve it yet.
        ("web-2".into(), record("2.0.0", "updating", Some("2.0.0"))),
    ];
    assert_eq!(serving_counts(&s, "2.0.0"), (1, 2));
    let (_, stage) = newest_stage(&s, &RolloutPolicy::default(), FLOOR, t(5)).expect("a stage");
    assert_eq!(stage, Stage::Rolling);
    s.instances[1].1 = record("2.0.0", SERVING, None);
    assert_eq!(serving_counts(&s, "2.0.0"), (2, 2));
    let (_, stage) = newest_stage(&s, &RolloutPolicy::default(), FLOOR, t(6)).expect("a stage");
    assert_eq!(stage, Stage::Done);
    // A third instance holds a slot while its record moves between leases (absent): not done.
    s.slots_held = 1;
    assert_eq!(serving_counts(&s, "2.0.0"), (2, 3));
    let (_, stage) = newest_stage(&s, &RolloutPolicy::default(), FLOOR, t(7)).expect("a stage");
    assert_eq!(stage, Stage::Rolling);
    // Its record present (swapping): still three counted, not four.
    s.instances
        .push(("web-3".into(), record("1.0.0", "swapping", Some("2.0.0"))));
    assert_eq!(serving_counts(&s, "2.0.0"), (2, 3));
}
