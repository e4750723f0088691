//! The update pass over in-memory seams: what each check comes to, its label and pacing, and the
//! plan a valid offer hands the swap.

use super::*;
use crate::agent::update::fixtures::{
    memory_source, pass, release, swap_config, update_settings, who,
};
use crate::omaha::{
    Event, HttpTimeouts, HttpUpdateSource, InMemoryUpdateSource, UpdateBackend, error_code,
};
use crate::slot::MemorySlots;
use crate::systemd::control::{MemoryUnitControl, RunningVersion};

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
    let result = pass.poll(true).await;
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
    let result = pass.poll(true).await;
    assert_eq!((result.label, result.plan.is_none()), ("no-update", true));
}

#[tokio::test]
async fn a_refused_offer_is_reported_with_3_0_and_is_no_plan() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "Bad Image!")), false);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    let result = pass.poll(true).await;
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
    let result = pass.poll(true).await;
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
    let first = pass.poll(true).await;
    assert_eq!(first.label, "unknown-version");
    let second = pass.poll(true).await;
    assert!(
        second.delay > first.delay,
        "backs off: {:?} then {:?}",
        first.delay,
        second.delay
    );
    let source = memory_source(Some(release("2.0.0", "reg/web")), false);
    let (mut bad, _slots) = self::pass(source, Some("v1"), dir.path());
    bad.poll(true).await;
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
    assert_eq!(pass.poll(true).await.label, "refused");
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
        name: "web-1".into(),
    };
    // Nothing listens there: a sent check would fail as unreachable, not come back unchecked.
    let url = "http://127.0.0.1:9/v1/update/".parse().unwrap();
    let http = HttpUpdateSource::new(url, instance, HttpTimeouts::default(), None).unwrap();
    let source = AnyUpdateSource::new(UpdateBackend::Http(http), true);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    assert!(!pass.checks());
    let result = pass.poll(true).await;
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
    let result = pass.poll(true).await;
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
    let result = pass.poll(true).await;
    assert_eq!(result.label, "update", "{:?}", pass.last_report());
    let plan = result.plan.expect("a plan for the listed repository");
    assert_eq!(plan.new.image, "mirror.example.com/team/web:2.0.0");
    // The list widens to what it names, nothing more.
    let source = memory_source(Some(release("2.0.0", "mirror.example.com/team/db")), false);
    let (mut other, _slots) = self::pass(source, Some("1.0.0"), dir.path());
    other.settings.allowed_repositories = vec!["mirror.example.com/team/web".into()];
    assert_eq!(other.poll(true).await.label, "refused");
    assert_eq!(report_kind(&other), Some("repository-not-allowed"));
}

#[tokio::test]
async fn a_denylisted_offer_gives_its_grant_back_with_3_0_denylisted() {
    let dir = tempfile::tempdir().unwrap();
    let source = memory_source(Some(release("2.0.0", "reg/web")), false);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    pass.config.denylist.add(&Version::new(2, 0, 0)).unwrap();
    let result = pass.poll(true).await;
    assert_eq!((result.label, result.plan.is_none()), ("denylisted", true));
    assert_eq!(
        events(&pass),
        vec![Event::Failed {
            error_code: error_code::DENYLISTED
        }],
        "the grant ends with one 3/0 instead of lingering in the service"
    );
}

/// The example update service (Nebraska's rules, `examples/omaha_server`), in-process over real
/// HTTP.
#[path = "../../../../examples/omaha_server/service/mod.rs"]
mod service;

/// The example service on a loopback port with app `app` publishing 2.0.0 on track `stable`
/// (image `registry.example.com/web:<version>`), and its base URL.
async fn example_service() -> (url::Url, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base: url::Url = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let state = std::sync::Arc::new(service::ServerState::in_memory());
    let task = tokio::spawn(async move {
        let _ = service::serve(listener, state).await;
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let package = |version: &str| {
        serde_json::json!({
            "version": version, "url": format!("registry.example.com/web:{version}"),
            "filename": "web.tar", "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "size": 23,
        })
    };
    let calls = [
        ("PUT", "api/apps/app", serde_json::json!({"name": "web"})),
        (
            "POST",
            "api/apps/app/channels/stable/publish",
            package("1.0.0"),
        ),
        (
            "PUT",
            "api/apps/app/groups/g1",
            serde_json::json!({"track": "stable", "channel": "stable"}),
        ),
        (
            "PUT",
            "api/apps/app/groups/g1/policy",
            serde_json::json!({"max_updates_per_period": 10, "period_interval": "1h", "update_timeout": "1h"}),
        ),
        (
            "POST",
            "api/apps/app/channels/stable/publish",
            package("2.0.0"),
        ),
    ];
    for (method, path, body) in calls {
        let response = http
            .request(method.parse().unwrap(), base.join(path).unwrap())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{method} {path}");
    }
    (base, task)
}

/// A source for instance `web-1` of app `app` at the example service under `base`.
fn example_source(base: &url::Url) -> HttpUpdateSource {
    let instance = crate::omaha::AppInstance {
        app_id: "app".into(),
        track: "stable".into(),
        arch: "x64".into(),
        machine_id: "9ce7a919806c4f3785eb6d260345ac4a".into(),
        boot_id: "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into(),
        name: "web-1".into(),
    };
    let endpoint = base.join("v1/update/").unwrap();
    HttpUpdateSource::new(endpoint, instance, HttpTimeouts::default(), None).unwrap()
}

/// The instance's status and the 3/0 errorcodes the example service recorded for it.
async fn service_view(base: &url::Url) -> (String, Vec<i64>) {
    let url = base.join("api/apps/app/instances").unwrap();
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let row = &rows[0];
    let failed = row["last_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == 3 && e["event_result"] == 0)
        .map(|e| e["error_code"].as_i64().unwrap_or(-1))
        .collect();
    (row["status"].to_string(), failed)
}

/// A pass for `web-1` running 1.0.0 from `registry.example.com/web` against the example service.
fn example_pass(base: &url::Url, state_dir: &std::path::Path) -> UpdatePass<MemoryUnitControl> {
    let source = AnyUpdateSource::new(UpdateBackend::Http(example_source(base)), false);
    let control = MemoryUnitControl::new(RunningVersion {
        version: Some("1.0.0".into()),
        image: Some("registry.example.com/web:1.0.0".into()),
    });
    let slots = MemorySlots::new(std::num::NonZeroU32::MIN, who("web-1"));
    let mut settings = update_settings(Duration::from_secs(60));
    settings.image = "{codebase}".into();
    UpdatePass::new(
        source,
        AnySlots::Memory(slots),
        control,
        settings,
        swap_config(state_dir, 1),
    )
}

#[tokio::test]
async fn a_start_with_no_journal_ends_a_grant_the_service_still_holds_once_then_checks() {
    let (base, _server) = example_service().await;
    // An earlier run took the grant and reported 13/1, then died before journaling anything.
    let earlier = example_source(&base);
    let one = Version::new(1, 0, 0);
    assert!(matches!(
        earlier.check(&one, false).await.unwrap(),
        crate::omaha::CheckOutcome::Update(_)
    ));
    earlier
        .send_event(&one, Event::PrepullStarted)
        .await
        .unwrap();
    assert!(
        matches!(
            earlier.check(&one, false).await.unwrap(),
            crate::omaha::CheckOutcome::OnHold { reason } if reason == UPDATE_IN_PROGRESS
        ),
        "the service locks the instance while it holds the grant"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut pass = example_pass(&base, dir.path());
    assert_eq!(pass.recover().await.unwrap(), None, "no journal");
    let result = pass.poll(true).await;
    assert_eq!(result.label, "update", "{:?}", pass.last_report());
    assert_eq!(
        result.plan.map(|p| p.new.version),
        Some("2.0.0".to_string())
    );
    let (_, failed) = service_view(&base).await;
    assert_eq!(failed, vec![i64::from(error_code::STALE_GRANT)]);

    // The grant the pass now holds is its own: a later refusal is not ended again.
    pass.seams
        .source
        .send_event(&one, Event::PrepullStarted)
        .await
        .unwrap();
    let again = pass.poll(true).await;
    assert_eq!(again.label, "on-hold");
    let (status, failed) = service_view(&base).await;
    assert_eq!(failed.len(), 1, "one 3/0, once ({status})");
}

#[tokio::test]
async fn a_start_that_resumes_a_journaled_swap_leaves_the_grant_to_it() {
    let (base, _server) = example_service().await;
    let earlier = example_source(&base);
    let one = Version::new(1, 0, 0);
    earlier.check(&one, false).await.unwrap();
    earlier
        .send_event(&one, Event::PrepullStarted)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::new(dir.path(), "web-1");
    journal
        .write(&crate::agent::machine::fixtures::at(
            crate::agent::machine::swap::Stage::Prepulling,
        ))
        .unwrap();
    let mut pass = example_pass(&base, dir.path());
    assert!(pass.recover().await.unwrap().is_some());
    assert_eq!(pass.poll(true).await.label, "on-hold");
    let (_, failed) = service_view(&base).await;
    assert!(failed.is_empty(), "the resumed swap ends its own grant");
}

#[tokio::test]
async fn a_pass_while_the_unit_cannot_take_an_offer_sends_no_check_and_takes_no_grant() {
    // Simulation seeds 36 and 544: a grant taken while the unit was stopped or unregistered
    // stayed open in the service, and was swapped to after `slots resume`.
    let dir = tempfile::tempdir().unwrap();
    let memory = InMemoryUpdateSource::new(Some(release("2.0.0", "reg/web")));
    let source = AnyUpdateSource::new(UpdateBackend::Memory(memory.clone()), false);
    let (mut pass, _slots) = pass(source, Some("1.0.0"), dir.path());
    let result = pass.poll(false).await;
    assert_eq!((result.label, result.plan.is_none()), ("not-serving", true));
    assert_eq!(memory.checks(), 0, "no check sent");
    assert!(
        result.delay >= Duration::from_secs(54) && result.delay <= Duration::from_secs(66),
        "{:?}",
        result.delay
    );
    assert!(matches!(
        pass.last_report(),
        Some(CheckReport::Error { kind, .. }) if kind == "not-serving"
    ));
    // Serving again: the check goes out.
    assert_eq!(pass.poll(true).await.label, "update");
    assert_eq!(memory.checks(), 1);
}

#[tokio::test]
async fn a_stale_grant_is_still_ended_when_the_first_check_after_start_finds_the_service_down() {
    let (base, _server) = example_service().await;
    let earlier = example_source(&base);
    let one = Version::new(1, 0, 0);
    earlier.check(&one, false).await.unwrap();
    earlier
        .send_event(&one, Event::PrepullStarted)
        .await
        .unwrap();
    // The first check goes to a port nothing listens on: not an answer about any grant.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down: url::Url = format!("http://{}/", closed.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let mut pass = example_pass(&down, dir.path());
    assert_eq!(pass.recover().await.unwrap(), None, "no journal");
    assert_eq!(pass.poll(true).await.label, "error");
    let mut settings = update_settings(Duration::from_secs(60));
    settings.image = "{codebase}".into();
    pass.hold_reload(UpdateReload {
        settings,
        source: Some(AnyUpdateSource::new(
            UpdateBackend::Http(example_source(&base)),
            false,
        )),
        steps: crate::agent::update::fixtures::step_settings(Vec::new(), Duration::ZERO),
        verify_timeout: Duration::from_millis(500),
        rise: 1,
    });
    let result = pass.poll(true).await;
    assert_eq!(result.label, "update", "{:?}", pass.last_report());
    let (_, failed) = service_view(&base).await;
    assert_eq!(failed, vec![i64::from(error_code::STALE_GRANT)]);
}

/// A pass for `web-1` running 1.0.0 over an in-memory source offering 2.0.0.
fn memory_pass(state_dir: &std::path::Path) -> UpdatePass<MemoryUnitControl> {
    let source = memory_source(Some(release("2.0.0", "reg/web")), false);
    pass(source, Some("1.0.0"), state_dir).0
}

#[tokio::test]
async fn a_record_is_on_disk_when_it_answers_and_a_clear_removes_it_by_the_pass_end() {
    use crate::agent::machine::fixtures::at;
    use crate::agent::machine::swap::Stage;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::new(dir.path(), "web-1");
    let pass = memory_pass(dir.path());
    let phase = at(Stage::Draining);
    pass.record(&phase).await.unwrap();
    assert_eq!(journal.read().unwrap(), Some(phase));
    pass.clear_journal();
    // Dropping the pass lets the queued removal finish.
    drop(pass);
    assert_eq!(journal.read().unwrap(), None);
}

#[tokio::test]
async fn the_journal_is_written_on_the_task_unless_a_record_already_answered_for_it() {
    use crate::agent::machine::fixtures::at;
    use crate::agent::machine::swap::Stage;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::new(dir.path(), "web-1");
    let pass = memory_pass(dir.path());
    let draining = at(Stage::Draining);
    pass.journal(&draining).unwrap();
    assert_eq!(journal.read().unwrap(), Some(draining.clone()));
    // Marked as recorded: the next journal writes nothing, the one after writes again.
    pass.recorded();
    pass.journal(&at(Stage::Fencing)).unwrap();
    assert_eq!(journal.read().unwrap(), Some(draining));
    pass.journal(&at(Stage::Fencing)).unwrap();
    assert_eq!(journal.read().unwrap(), Some(at(Stage::Fencing)));
    // A mark withdrawn is not used.
    pass.recorded();
    pass.forget_recorded();
    pass.journal(&at(Stage::WritingDropIn)).unwrap();
    assert_eq!(journal.read().unwrap(), Some(at(Stage::WritingDropIn)));
}

#[tokio::test]
async fn a_denied_version_is_skipped_at_the_next_check_and_saved_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut pass = memory_pass(dir.path());
    pass.deny("2.0.0");
    assert_eq!(pass.poll(true).await.label, "denylisted");
    drop(pass);
    let saved = Denylist::load(dir.path(), "web-1").unwrap();
    assert!(saved.contains(&Version::new(2, 0, 0)));
}

#[test]
fn the_pass_answers_its_dry_run_and_verify_timeout_from_its_seams_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let pass = memory_pass(dir.path());
    assert!(!pass.dry_run());
    assert!(pass.checks(), "an in-memory source is always asked");
    assert_eq!(pass.verify_timeout(), Duration::from_millis(500));
    let source = memory_source(Some(release("2.0.0", "reg/web")), true);
    let (dry, _slots) = self::pass(source, Some("1.0.0"), dir.path());
    assert!(dry.dry_run());
}

/// A journal store that takes `delay` over each write and removal, and logs what it made.
#[derive(Clone)]
struct SlowStore {
    delay: Duration,
    made: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl JournalStore for SlowStore {
    fn write(&self, _: &SwapPhase) -> Result<(), JournalError> {
        std::thread::sleep(self.delay);
        self.made.lock().unwrap().push("write");
        Ok(())
    }
    fn clear(&self) -> Result<(), JournalError> {
        std::thread::sleep(self.delay);
        self.made.lock().unwrap().push("clear");
        Ok(())
    }
}

#[test]
fn dropping_the_pass_waits_for_a_queued_journal_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = SlowStore {
        delay: Duration::from_millis(100),
        made: Arc::default(),
    };
    let pass = memory_pass(dir.path()).with_journal_store(store.clone());
    pass.clear_journal();
    drop(pass);
    assert_eq!(*store.made.lock().unwrap(), ["clear"]);
}

#[test]
fn the_pass_hands_the_driver_the_groups_rollout_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    assert!(memory_pass(dir.path()).rollout().is_none());
    let etcd = crate::etcd::EtcdConnection::new(crate::etcd::EtcdOptions {
        endpoints: vec!["http://127.0.0.1:2379".parse().unwrap()],
        timeout: Duration::from_secs(1),
        auth: None,
        ca_file: None,
        client_cert: None,
    });
    let rollout = Arc::new(crate::rollout::agent::RolloutAgent::new(
        etcd,
        "g1",
        "web-1",
        crate::rollout::policy::RolloutPolicy::default(),
        Duration::ZERO,
    ));
    let pass = memory_pass(dir.path()).with_rollout(rollout.clone());
    assert!(pass.rollout().is_some_and(|r| Arc::ptr_eq(r, &rollout)));
}
