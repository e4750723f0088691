//! The rollout policy wired into the slots against a real etcd: each instance's slot request
//! reads the group's effective policy (pause, canary places claimed by compare-and-swap, bake,
//! batch delay, windows against the swap estimate) and its swaps are recorded in the version's
//! state before the slot key goes, so the next waiter reads the release.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use jiff::Timestamp;
use semver::Version;
use sidekick::agent::machine::state::Phase;
use sidekick::agent::machine::swap::{
    self as swap, Report, Stage, SwapAction, SwapObservation, SwapPlan,
};
use sidekick::agent::update::StepSettings;
use sidekick::agent::update::steps::{SwapSeams, run_steps};
use sidekick::etcd::EtcdConnection;
use sidekick::omaha::{AnyUpdateSource, InMemoryUpdateSource, UpdateBackend};
use sidekick::rollout::agent::{RolloutAgent, SlotHold};
use sidekick::rollout::gate::CheckHold;
use sidekick::rollout::policy::{PolicyText, WindowText, day_name};
use sidekick::rollout::state::VersionState;
use sidekick::rollout::store;
use sidekick::rollout::{RolloutPolicy, policy::Promote};
use sidekick::slot::{Acquisition, AnySlots, EtcdSlots, SlotHolder, SlotLock};
use sidekick::systemd::control::{DropIn, MemoryUnitControl, RunningVersion};

use super::{GROUP, start};

pub(super) const TTL: Duration = Duration::from_secs(5);
pub(super) const FLOOR: Duration = Duration::from_secs(50);

pub(super) fn policy(edit: impl FnOnce(&mut PolicyText)) -> RolloutPolicy {
    let mut text = PolicyText::default();
    edit(&mut text);
    text.validate().expect("a valid policy")
}

/// One instance: its rollout agent and its slots over it.
pub(super) struct Member {
    pub(super) rollout: Arc<RolloutAgent>,
    pub(super) slots: EtcdSlots,
}

pub(super) fn member(client: &Client, name: &str, policy: &RolloutPolicy, max: u32) -> Member {
    let rollout = Arc::new(RolloutAgent::new(
        EtcdConnection::from_client(client.clone()),
        GROUP,
        name,
        policy.clone(),
        FLOOR,
    ));
    let who = SlotHolder {
        holder: format!("id-{name}"),
        instance: name.to_string(),
    };
    let max = NonZeroU32::new(max).expect("non-zero");
    let slots = EtcdSlots::new(client.clone(), GROUP, max, TTL, who).with_rollout(rollout.clone());
    Member { rollout, slots }
}

/// One instance as its driver holds it: the swap's seams over a member's slots.
pub(super) struct SwapMember {
    pub(super) rollout: Arc<RolloutAgent>,
    pub(super) seams: Arc<SwapSeams<MemoryUnitControl>>,
}

/// [`member`] with the swap's seams around its slots, as the driver wires them.
pub(super) fn swap_member(
    client: &Client,
    name: &str,
    policy: &RolloutPolicy,
    max: u32,
) -> SwapMember {
    let Member { rollout, slots } = member(client, name, policy, max);
    let seams = Arc::new(SwapSeams {
        source: AnyUpdateSource::new(
            UpdateBackend::Memory(InMemoryUpdateSource::new(None)),
            false,
        ),
        slots: AnySlots::Etcd(Box::new(slots)),
        control: MemoryUnitControl::new(RunningVersion::default()),
    });
    SwapMember { rollout, seams }
}

/// One swap action of `m` through the driver's step.
pub(super) async fn step(m: &SwapMember, action: SwapAction) -> SwapObservation {
    let settings = StepSettings {
        prepull: Vec::new(),
        drain: Duration::ZERO,
        start_timeout: Duration::from_secs(1),
    };
    let step = run_steps(
        m.seams.clone(),
        settings,
        Version::new(1, 0, 0),
        vec![action],
    );
    step.await.expect("the step answers")
}

pub(super) fn busy_detail(outcome: Acquisition) -> String {
    match outcome {
        Acquisition::Busy { detail } => detail,
        other => panic!("expected a hold, got {other:?}"),
    }
}

/// The phase of a swap to 2.0.0 in `stage`.
pub(super) fn updating(stage: Stage) -> Phase {
    reporting(stage, None)
}

/// A swap of 1.0.0 to 2.0.0 (images `web:<version>`, rise 1).
pub(super) fn plan() -> SwapPlan {
    let dropin = |v: &str| DropIn {
        image: format!("web:{v}"),
        version: v.into(),
    };
    SwapPlan {
        old: dropin("1.0.0"),
        new: dropin("2.0.0"),
        rise: 1,
    }
}

/// The phase of a swap to 2.0.0 in `stage` that has decided `report`.
pub(super) fn reporting(stage: Stage, report: Option<Report>) -> Phase {
    // Built by the machine's own start, so the phase has every field a real swap has.
    let (mut phase, _) = swap::start(plan());
    phase.stage = stage;
    phase.report = report;
    phase.slot_held = true;
    Phase::Updating(phase)
}

/// A whole successful swap of `m` to 2.0.0 as the driver would feed it: slot, steps, min-healthy
/// over (3/1 decided), release.
async fn swap(m: &Member) {
    through_min_healthy(m).await;
    m.slots.release().await.expect("release");
}

/// A swap of `m` to 2.0.0 up to its release: slot, steps, min-healthy over (3/1 decided).
pub(super) async fn through_min_healthy(m: &Member) {
    assert_eq!(
        m.slots.acquire("2.0.0").await.expect("acquire"),
        Acquisition::Acquired
    );
    for stage in [
        Stage::Deregistering,
        Stage::Draining,
        Stage::Restarting,
        Stage::Verifying { passes: 0 },
        Stage::Registering { failure: None },
        Stage::MinHealthy { departed: false },
    ] {
        m.rollout.observe(&updating(stage));
    }
    m.rollout
        .observe(&reporting(Stage::Releasing, Some(Report::Complete)));
}

pub(super) async fn state(client: &Client) -> VersionState {
    store::get_version(&mut client.clone(), GROUP, "2.0.0")
        .await
        .expect("read")
        .expect("the version's state exists")
        .0
}

#[tokio::test]
async fn a_pause_holds_new_slots_while_the_held_one_finishes_and_resume_goes_on() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let p = RolloutPolicy::default();
    let (a, b) = (
        member(&client, "web-1", &p, 2),
        member(&client, "web-2", &p, 2),
    );
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    store::pause(&mut client, GROUP, "test")
        .await
        .expect("pause");
    // The held slot stays held (an acquire of a holder is idempotent) and is released.
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let detail = busy_detail(b.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("paused"), "{detail}");
    a.slots.release().await.expect("release");
    let detail = busy_detail(b.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("paused"), "{detail}");
    // The waiter wakes on the resume itself, not at its 30 s retry.
    let woke = Instant::now();
    let waiting = b.slots.wait_for_change(Duration::from_secs(30));
    let resume = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store::resume(&mut client.clone(), GROUP)
            .await
            .expect("resume");
    };
    tokio::join!(waiting, resume);
    assert!(
        woke.elapsed() < Duration::from_secs(10),
        "{:?}",
        woke.elapsed()
    );
    assert_eq!(
        b.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
}

#[tokio::test]
async fn canary_places_are_claimed_once_each_by_compare_and_swap() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let p = policy(|p| p.canary = 2);
    let members: Vec<Member> = (1..=6)
        .map(|i| member(&client, &format!("web-{i}"), &p, 6))
        .collect();
    let holds =
        futures_util::future::join_all(members.iter().map(|m| m.rollout.slot_hold("2.0.0"))).await;
    let taken = holds.iter().filter(|h| h.is_none()).count();
    assert_eq!(taken, 2, "{holds:?}");
    let s = state(&client).await;
    assert_eq!(s.canaries.len(), 2, "{s:?}");
    for hold in holds.iter().flatten() {
        assert_eq!(
            hold,
            &SlotHold::Busy(hold.text().into()),
            "held, not refused"
        );
        assert!(hold.text().contains("canary places"), "{hold}");
    }
    // A canary asking again keeps its place; the rest wait for the canaries.
    let canary = members
        .iter()
        .zip(&holds)
        .find(|(_, h)| h.is_none())
        .map(|(m, _)| m)
        .expect("a canary");
    assert_eq!(canary.rollout.slot_hold("2.0.0").await, None);
    let other = members
        .iter()
        .zip(&holds)
        .find(|(_, h)| h.is_some())
        .map(|(m, _)| m)
        .expect("another");
    let hold = other.rollout.slot_hold("2.0.0").await.expect("held");
    assert!(hold.text().contains("0 of 2 passed"), "{hold}");
}

#[tokio::test]
async fn a_released_canary_passes_and_the_rest_follow_after_its_bake() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let bake = Duration::from_secs(2);
    let p = policy(|p| {
        p.canary = 1;
        p.canary_bake = bake;
    });
    let (a, b) = (
        member(&client, "web-1", &p, 1),
        member(&client, "web-2", &p, 1),
    );
    swap(&a).await;
    let s = state(&client).await;
    let passed = s.canaries[0].passed.expect("the canary passed");
    let record = &s.swaps[0];
    assert!(record.released.is_some(), "{record:?}");
    for step in [
        "deregister",
        "drain",
        "restart",
        "verify",
        "register",
        "min_healthy",
    ] {
        assert!(record.steps_ms.contains_key(step), "{step} in {record:?}");
    }
    let detail = busy_detail(b.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("bake"), "{detail}");
    // The waiter wakes when the bake ends.
    b.slots.wait_for_change(Duration::from_secs(30)).await;
    assert_eq!(
        b.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let took = Timestamp::now();
    assert!(took.duration_since(passed) >= jiff::SignedDuration::try_from(bake).unwrap());
    assert!(took.duration_since(passed) < jiff::SignedDuration::from_secs(10));
}

#[tokio::test]
async fn a_manual_promotion_holds_the_rest_and_their_checks_until_promote() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let p = policy(|p| {
        p.canary = 1;
        p.promote = Promote::Manual;
    });
    let (a, b) = (
        member(&client, "web-1", &p, 1),
        member(&client, "web-2", &p, 1),
    );
    swap(&a).await;
    let detail = busy_detail(b.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("promote"), "{detail}");
    let check = b.rollout.check_hold(Some("1.0.0")).await;
    assert_eq!(
        check,
        Some(CheckHold::AwaitingPromotion {
            version: "2.0.0".into()
        })
    );
    assert_eq!(a.rollout.check_hold(Some("2.0.0")).await, None);
    store::update_version(&mut client, GROUP, "2.0.0", |s| {
        let mut s = s.cloned()?;
        s.promoted = Some(sidekick::rollout::state::Promotion {
            at: Timestamp::now(),
            by: "test".into(),
        });
        Some(s)
    })
    .await
    .expect("promote");
    assert_eq!(b.rollout.check_hold(Some("1.0.0")).await, None);
    assert_eq!(
        b.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
}

/// The record of `name` waiting for a slot for `target`, as its driver publishes it.
async fn put_waiting(client: &mut Client, name: &str, target: &str) {
    let record = sidekick::registry::record::InstanceRecord {
        version: "1.0.0".into(),
        phase: "waiting-for-slot".into(),
        since: Timestamp::now().to_string(),
        last_check: None,
        result: Some("update".into()),
        host: "127.0.0.1".into(),
        target: Some(target.into()),
        step: Some("acquiring_slot".into()),
        policy: None,
    };
    let value = serde_json::to_string(&record).expect("json");
    client
        .put(sidekick::registry::record::key(GROUP, name), value, None)
        .await
        .expect("put record");
}

#[tokio::test]
async fn with_no_canary_a_manual_promotion_of_a_version_nobody_started_lets_the_slots_through() {
    let Some((etcd, mut client)) = start().await else {
        return;
    };
    let p = policy(|p| p.promote = Promote::Manual);
    let (a, b) = (
        member(&client, "web-1", &p, 1),
        member(&client, "web-2", &p, 1),
    );
    // canary = 0: the first slot request already waits for the promotion. It records the
    // version (no canaries, nothing promoted), so the other instances send no update check that
    // would take a grant they cannot use.
    let detail = busy_detail(a.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("rollout promote"), "{detail}");
    let s = state(&client).await;
    assert!(s.canaries.is_empty() && s.promoted.is_none(), "{s:?}");
    assert_eq!(
        b.rollout.check_hold(Some("1.0.0")).await,
        Some(CheckHold::AwaitingPromotion {
            version: "2.0.0".into()
        })
    );
    // Had that record failed (etcd unreachable at that moment), nothing would be recorded of
    // 2.0.0 (the defect: `rollout promote` refused it, and everyone waited).
    client
        .delete(store::version_key(GROUP, "2.0.0"), None)
        .await
        .expect("delete");
    put_waiting(&mut client, "web-1", "2.0.0").await;
    put_waiting(&mut client, "web-2", "2.0.0").await;

    let dir = super::temp_dir("rollout-promote-unstarted");
    let cfg = super::config(
        dir.path(),
        &etcd.endpoint(),
        "\n[rollout]\npromote = \"manual\"\n",
    );
    // What a person sees: the version the instances wait for, awaiting promotion.
    let status = super::ok(super::rollout(dir.path(), &cfg, &["status"]));
    assert!(
        status.contains("version 2.0.0 (nothing recorded yet; instances wait for a slot for it")
            && status.contains("awaiting promotion")
            && status.contains("0 of 2 instances serve it"),
        "{status}"
    );
    let wait = super::rollout(dir.path(), &cfg, &["status", "--wait", "--timeout", "10s"]);
    assert_eq!(wait.status.code(), Some(3), "{}", super::text(&wait));
    // Without a version, promote refuses and names what to pass.
    let out = super::rollout(dir.path(), &cfg, &["promote"]);
    assert_eq!(out.status.code(), Some(1), "{}", super::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no rollout of 2.0.0 is recorded in group web/stable yet")
            && err.contains("`sidekick rollout promote --group web/stable 2.0.0`"),
        "{err}"
    );
    // Named, it records the version with its promotion.
    let out = super::ok(super::rollout(dir.path(), &cfg, &["promote", "2.0.0"]));
    assert!(
        out.contains("version 2.0.0 of group web/stable is promoted (by ops")
            && out.contains("its rollout was not recorded before, it is now")
            && !out.contains("mistyped"),
        "{out}"
    );
    let s = state(&client).await;
    assert_eq!(s.promoted.as_ref().map(|p| p.by.as_str()), Some("ops"));
    assert!(s.canaries.is_empty() && s.swaps.is_empty(), "{s:?}");
    // Promoting again keeps the first promotion.
    let again = super::ok(super::rollout(dir.path(), &cfg, &["promote", "2.0.0"]));
    assert!(!again.contains("not recorded before"), "{again}");
    assert_eq!(state(&client).await.promoted, s.promoted);

    // The next slot request goes through, and the other instance follows once it is released.
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let status = super::ok(super::rollout(dir.path(), &cfg, &["status"]));
    assert!(status.contains("version 2.0.0: rolling"), "{status}");
    a.slots.release().await.expect("release");
    assert_eq!(
        b.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
}

#[tokio::test]
async fn batch_delay_spaces_a_release_and_the_next_slot() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let delay = Duration::from_secs(2);
    let p = policy(|p| p.batch_delay = delay);
    let (a, b) = (
        member(&client, "web-1", &p, 2),
        member(&client, "web-2", &p, 2),
    );
    swap(&a).await;
    let detail = busy_detail(b.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("batch_delay"), "{detail}");
    b.slots.wait_for_change(Duration::from_secs(30)).await;
    assert_eq!(
        b.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let s = state(&client).await;
    let released = s.swaps[0].released.expect("released");
    let took = s.swaps[1].took_slot;
    let gap = took.duration_since(released);
    assert!(
        gap >= jiff::SignedDuration::try_from(delay).unwrap(),
        "{gap:?}"
    );
    assert!(gap < jiff::SignedDuration::from_secs(8), "{gap:?}");
}

/// A window of `length` minutes in UTC starting `from_now` minutes from the current minute.
fn window_from_now(from_now: i64, length: u32) -> WindowText {
    let start = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_mins(from_now))
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC);
    WindowText {
        days: vec![day_name(start.weekday()).to_string()],
        start_time: format!("{:02}:{:02}", start.hour(), start.minute()),
        length_minutes: length,
    }
}

#[tokio::test]
async fn a_closed_window_holds_checks_and_slots_and_a_short_one_holds_slots() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    // Closed now: it opens in two hours.
    let p = policy(|p| p.window = vec![window_from_now(120, 60)]);
    let a = member(&client, "web-1", &p, 1);
    let check = a.rollout.check_hold(None).await;
    assert!(
        matches!(check, Some(CheckHold::OutsideWindow { opens: Some(_) })),
        "{check:?}"
    );
    let detail = busy_detail(a.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("outside every window"), "{detail}");
    // Stored is authoritative: a window open for the next 30 minutes, shorter than the measured
    // swap (none measured: the floor plus min_healthy = 1 h).
    let stored = policy(|p| {
        p.window = vec![window_from_now(0, 30)];
        p.min_healthy = Duration::from_secs(3600) - FLOOR;
    });
    store::set_policy(&mut client, GROUP, &stored)
        .await
        .expect("store");
    let detail = busy_detail(a.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("before a swap of 1h would end"), "{detail}");
    // Inside the window (past its start jitter, at most 7.5 min of 30) checks go out.
    let open = policy(|p| p.window = vec![window_from_now(-20, 30)]);
    store::set_policy(&mut client, GROUP, &open)
        .await
        .expect("store");
    assert_eq!(a.rollout.check_hold(None).await, None);
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
}

#[tokio::test]
async fn a_canary_whose_swap_ends_without_a_result_frees_its_place() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let p = policy(|p| p.canary = 1);
    let (a, b) = (
        member(&client, "web-1", &p, 1),
        member(&client, "web-2", &p, 1),
    );
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    // Fenced: the slot was lost during the drain, the unit never touched; no verdict.
    a.rollout.observe(&updating(Stage::Draining));
    a.slots.release().await.expect("release");
    let s = state(&client).await;
    assert!(s.canaries.is_empty(), "{s:?}");
    assert_eq!(
        b.rollout.slot_hold("2.0.0").await,
        None,
        "b takes the free place"
    );
    assert!(state(&client).await.is_canary("web-2"));
}

#[tokio::test]
async fn a_rolled_back_canary_fails_and_spends_the_failure_budget() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let p = policy(|p| p.canary = 1);
    let (a, b) = (
        member(&client, "web-1", &p, 1),
        member(&client, "web-2", &p, 1),
    );
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let failure = sidekick::agent::machine::swap::Failure {
        code: 1001,
        reason: "not healthy within verify_timeout".into(),
        halt: true,
    };
    for stage in [
        Stage::Restarting,
        Stage::Verifying { passes: 0 },
        Stage::RollingBack {
            failure: failure.clone(),
        },
        Stage::Registering {
            failure: Some(failure),
        },
        Stage::Releasing,
    ] {
        a.rollout.observe(&updating(stage));
    }
    a.slots.release().await.expect("release");
    let s = state(&client).await;
    assert!(s.canaries[0].failed.is_some(), "{s:?}");
    assert_eq!(s.failures.len(), 1, "{s:?}");
    assert_eq!(s.failures[0].stage, "verify");
    assert!(s.swaps[0].steps_ms.contains_key("rollback"), "{s:?}");
    // The budget spent: refused as on a halt (the swap gives its grant back), not held.
    match b.slots.acquire("2.0.0").await.unwrap() {
        Acquisition::Halted { version, reason } => {
            assert_eq!(version, "2.0.0");
            assert!(reason.contains("max_failures 1"), "{reason}");
        }
        other => panic!("expected the budget's refusal, got {other:?}"),
    }
}

/// The queue's keys now.
async fn queued(client: &Client) -> usize {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let resp = client
        .clone()
        .get(sidekick::slot::keys::queue_prefix(GROUP), Some(options))
        .await
        .expect("read the queue");
    resp.count() as usize
}

/// The slot gate in the queued wait (the daemon's): a waiter its gate holds when it reaches the
/// head of the line steps out of it, so the waiter behind it whose gate lets it go takes the
/// freed slot; the held one answers with its hold, keeps no place, and joins again only once
/// its gate lets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_held_at_the_head_of_the_line_steps_aside_for_one_that_may_go() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    // While a policy is stored, it applies to all; without one, each its configured `[rollout]`:
    // b's has a window that opens in two hours, c's none.
    let open = RolloutPolicy::default();
    store::set_policy(&mut client, GROUP, &open)
        .await
        .expect("store");
    let closed = policy(|p| p.window = vec![window_from_now(120, 60)]);
    let a = member(&client, "web-1", &open, 1);
    let b = member(&client, "web-2", &closed, 1);
    let c = member(&client, "web-3", &open, 1);
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    // b, then c, join the line (their first wait answers at once and keeps the place).
    for m in [&b, &c] {
        let got = m.slots.acquire_within("2.0.0", Duration::ZERO).await;
        assert!(matches!(got.unwrap(), Acquisition::Busy { .. }));
    }
    assert_eq!(queued(&client).await, 2);
    // b's own window now decides for b: closed.
    assert!(
        store::clear_policy(&mut client, GROUP)
            .await
            .expect("clear")
    );
    let (b_wait, c_wait) = (
        b.slots.acquire_within("2.0.0", Duration::from_secs(4)),
        c.slots.acquire_within("2.0.0", Duration::from_secs(20)),
    );
    let release = async {
        // b and c are back in their waits by now; if not, they find the slot free anyway.
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.slots.release().await.expect("release");
        Instant::now()
    };
    let (b_got, c_got, released) = tokio::join!(
        async { (b_wait.await, Instant::now()) },
        async { (c_wait.await, Instant::now()) },
        release
    );
    assert_eq!(c_got.0.unwrap(), Acquisition::Acquired, "c, behind held b");
    let took = c_got.1.duration_since(released);
    assert!(took < Duration::from_secs(3), "c waited {took:?} for b");
    let detail = busy_detail(b_got.0.unwrap());
    assert!(detail.contains("outside every window"), "{detail}");
    assert_eq!(queued(&client).await, 0, "held b kept a place");
    // Still held: b's next wait does not join the line at all.
    let detail = busy_detail(
        b.slots
            .acquire_within("2.0.0", Duration::ZERO)
            .await
            .unwrap(),
    );
    assert!(detail.contains("outside every window"), "{detail}");
    assert_eq!(queued(&client).await, 0, "held b joined the line");
    // Its gate lets it (a stored open policy again): b joins and takes the slot c gives back.
    store::set_policy(&mut client, GROUP, &open)
        .await
        .expect("store");
    let b_wait = b.slots.acquire_within("2.0.0", Duration::from_secs(20));
    let c_release = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.slots.release().await.expect("release");
    };
    let (b_got, ()) = tokio::join!(b_wait, c_release);
    assert_eq!(b_got.unwrap(), Acquisition::Acquired);
}

#[tokio::test]
async fn a_reloaded_rollout_section_applies_from_the_next_slot_request_not_to_the_swap_under_way() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let first = policy(|p| p.min_healthy = Duration::from_secs(10));
    let a = member(&client, "web-1", &first, 1);
    assert_eq!(a.rollout.policy_hash(), first.short_hash());
    assert_eq!(
        a.slots.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    // SIGHUP mid-swap: a window closed now, a longer min-healthy.
    let reloaded = policy(|p| {
        p.window = vec![window_from_now(120, 60)];
        p.min_healthy = Duration::from_secs(60);
    });
    assert!(a.rollout.reconfigure(reloaded.clone(), FLOOR));
    assert!(
        !a.rollout.reconfigure(reloaded.clone(), FLOOR),
        "the same policy again is no change"
    );
    // The instance record's hash follows at once; the swap keeps what its request was judged by.
    assert_eq!(a.rollout.policy_hash(), reloaded.short_hash());
    assert_ne!(reloaded.short_hash(), first.short_hash());
    assert_eq!(a.rollout.min_healthy(), Duration::from_secs(10));
    a.slots.release().await.expect("release");
    // The next request is judged by the reloaded policy.
    let detail = busy_detail(a.slots.acquire("2.0.0").await.unwrap());
    assert!(detail.contains("outside every window"), "{detail}");
    assert_eq!(a.rollout.min_healthy(), Duration::from_secs(60));
}
