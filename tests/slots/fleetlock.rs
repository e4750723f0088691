//! The FleetLock backend against a server written here from the protocol description (airlock
//! itself cannot be built here): header and body checks, recursive lock, per-group slots, the
//! refusals real servers send (airlock's 500 `failed_lock` and a 423 are busy; 400
//! `unknown_group` and `invalid_client_identity` are errors), and a halt that outlives a restart
//! until `sidekick slots resume`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sidekick::slot::{Acquisition, FleetLockSlots, SlotError, SlotLock};
use url::Url;

use super::commands::{sidekick, stdout};
use super::support::temp_dir;
use super::who;

/// A FleetLock server's state: slots and holders per group, and how "full" is answered.
struct Server {
    groups: HashMap<String, (usize, BTreeSet<String>)>,
    full_status: StatusCode,
    requests: usize,
}

type Shared = Arc<Mutex<Server>>;

fn error(status: StatusCode, kind: &str, value: &str) -> Response {
    (status, axum::Json(json!({"kind": kind, "value": value}))).into_response()
}

/// Checks the header and body as airlock does; `Ok((group, id))` or why the 400 is sent.
fn identity(headers: &HeaderMap, body: &Bytes) -> Result<(String, String), &'static str> {
    let bad = |why| why;
    if headers
        .get("fleet-lock-protocol")
        .and_then(|v| v.to_str().ok())
        != Some("true")
    {
        return Err(bad("wrong 'fleet-lock-protocol' header"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("body is not JSON"))?;
    let params = &v["client_params"];
    let (Some(group), Some(id)) = (params["group"].as_str(), params["id"].as_str()) else {
        return Err(bad("missing client_params"));
    };
    if group.is_empty() || id.is_empty() {
        return Err(bad("empty group or id"));
    }
    Ok((group.to_string(), id.to_string()))
}

async fn pre_reboot(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (group, id) = match identity(&headers, &body) {
        Ok(x) => x,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_client_identity", why),
    };
    let mut s = s.lock().unwrap();
    s.requests += 1;
    let full_status = s.full_status;
    let Some((slots, holders)) = s.groups.get_mut(&group) else {
        return error(StatusCode::BAD_REQUEST, "unknown_group", &group);
    };
    // Recursive: a holder that asks again keeps its lock.
    if holders.contains(&id) || holders.len() < *slots {
        holders.insert(id);
        return StatusCode::OK.into_response();
    }
    let value = format!("all {slots} semaphore slots currently locked");
    error(full_status, "failed_lock", &value)
}

async fn steady_state(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (group, id) = match identity(&headers, &body) {
        Ok(x) => x,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_client_identity", why),
    };
    let mut s = s.lock().unwrap();
    s.requests += 1;
    match s.groups.get_mut(&group) {
        Some((_, holders)) => {
            holders.remove(&id);
            StatusCode::OK.into_response()
        }
        None => error(StatusCode::BAD_REQUEST, "unknown_group", &group),
    }
}

/// Serves the protocol under `/fleetlock` on a free port; returns the base URL *without* a
/// trailing slash (the case zincati once got wrong) and the shared state.
async fn serve(full_status: StatusCode) -> (Url, Shared) {
    let state = Arc::new(Mutex::new(Server {
        groups: HashMap::from([("web".to_string(), (1, BTreeSet::new()))]),
        full_status,
        requests: 0,
    }));
    let routes = Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .with_state(state.clone());
    let app = Router::new().nest("/fleetlock", routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = Url::parse(&format!("http://127.0.0.1:{port}/fleetlock")).unwrap();
    (base, state)
}

fn client(base: &Url, group: &str, id: &str, state_dir: &Path) -> FleetLockSlots {
    FleetLockSlots::new(base, group, &who(id), state_dir).expect("FleetLock client")
}

fn holders(state: &Shared) -> Vec<String> {
    let s = state.lock().unwrap();
    s.groups["web"].1.iter().cloned().collect()
}

async fn busy_detail(slot: &FleetLockSlots) -> String {
    match slot.acquire("2.0.0").await.expect("request answered") {
        Acquisition::Busy { detail } => detail,
        other => panic!("expected busy, got {other:?}"),
    }
}

#[tokio::test]
async fn fleetlock_locks_recursively_and_unlocks_on_a_base_without_trailing_slash() {
    let (base, state) = serve(StatusCode::INTERNAL_SERVER_ERROR).await;
    let dir = temp_dir("fleetlock");
    let a = client(&base, "web", "a", dir.path());
    let b = client(&base, "web", "b", dir.path());

    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(holders(&state), ["a"]);
    // airlock's "slots full" is a 500 with kind failed_lock: not granted, not an error.
    let detail = busy_detail(&b).await;
    assert!(
        detail.contains("500") && detail.contains("failed_lock"),
        "{detail}"
    );

    a.release().await.unwrap();
    a.release().await.expect("unlocking twice succeeds");
    assert!(holders(&state).is_empty());
    assert_eq!(b.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(holders(&state), ["b"]);
    assert_eq!(state.lock().unwrap().requests, 6);
}

#[tokio::test]
async fn fleetlock_slots_full_as_423_is_busy() {
    let (base, _state) = serve(StatusCode::LOCKED).await;
    let dir = temp_dir("fleetlock");
    let a = client(&base, "web", "a", dir.path());
    let b = client(&base, "web", "b", dir.path());
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let detail = busy_detail(&b).await;
    assert!(
        detail.contains("423") && detail.contains("failed_lock"),
        "{detail}"
    );
}

/// A refusal that retrying cannot change is an error, not "busy" retried forever.
fn assert_refused(got: Result<Acquisition, SlotError>, kind: &str) {
    match got {
        Err(err @ SlotError::Refused { status: 400, .. }) => {
            assert_eq!(err.kind(), "refused");
            assert!(err.to_string().contains(kind), "{err}");
        }
        other => panic!("expected a 400 {kind} error, got {other:?}"),
    }
}

#[tokio::test]
async fn fleetlock_unknown_group_and_bad_identity_are_errors_not_busy() {
    let (base, _state) = serve(StatusCode::INTERNAL_SERVER_ERROR).await;
    let dir = temp_dir("fleetlock");
    let stray = client(&base, "no-such-group", "a", dir.path());
    assert_refused(stray.acquire("2.0.0").await, "unknown_group");
    match stray.release_stale().await {
        Err(err @ SlotError::Refused { status: 400, .. }) => assert_eq!(err.kind(), "refused"),
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
    let nameless = client(&base, "web", "", dir.path());
    assert_refused(nameless.acquire("2.0.0").await, "invalid_client_identity");
}

#[tokio::test]
async fn fleetlock_client_refuses_a_group_the_protocol_does_not_allow() {
    let base = Url::parse("http://127.0.0.1:9/").unwrap();
    let dir = temp_dir("fleetlock");
    let err = FleetLockSlots::new(&base, "web/stable", &who("a"), dir.path()).unwrap_err();
    assert_eq!(err.kind(), "group", "{err}");
}

/// A configuration for the fleetlock backend at `base`, with its state under `dir`.
fn fleetlock_config(dir: &Path, base: &Url) -> String {
    let path = dir.join("sidekick.toml");
    let text = format!(
        "[instance]\nunit = \"web@1.service\"\n\n[registration]\nenabled = false\nport = 8080\n\n\
         [health]\ncheck = \"none\"\n\n[update]\nenabled = false\n\n[daemon]\nstate_dir = \"{}\"\n\n\
         [slot]\nbackend = \"fleetlock\"\nfleetlock_url = \"{base}\"\ngroup = \"web\"\n",
        dir.join("state").display()
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// Runs `sidekick` off the runtime's threads, so the in-process server keeps answering it.
async fn run_sidekick(dir: &Path, args: &[&str]) -> std::process::Output {
    let (dir, args) = (
        dir.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sidekick(&dir, &args)
    })
    .await
    .expect("sidekick runs")
}

#[tokio::test]
async fn fleetlock_halt_keeps_the_lock_across_a_restart_until_slots_resume() {
    let (base, state) = serve(StatusCode::INTERNAL_SERVER_ERROR).await;
    let dir = temp_dir("fleetlock-halt");
    let cfg = fleetlock_config(dir.path(), &base);
    let state_dir = dir.path().join("state");
    let failed = client(&base, "web", "failed", &state_dir);
    let sibling = client(&base, "web", "sibling", &state_dir);
    let next = client(&base, "web", "next", &dir.path().join("other-host"));
    assert_eq!(
        failed.acquire("3.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    failed
        .halt("3.0.0", "not healthy within 60s")
        .await
        .unwrap();
    failed.release().await.unwrap();
    assert_eq!(holders(&state), ["failed"], "release gave up a halted lock");

    // The daemon restarts: the halt is still there, and the stale-slot release keeps the lock.
    let restarted = client(&base, "web", "failed", &state_dir);
    restarted.release_stale().await.unwrap();
    assert_eq!(
        holders(&state),
        ["failed"],
        "release_stale gave up a halted lock"
    );
    let halted = Acquisition::Halted {
        version: "3.0.0".into(),
        reason: "not healthy within 60s".into(),
    };
    assert_eq!(restarted.acquire("3.0.0").await.unwrap(), halted);
    // Another instance on this host is halted too; one elsewhere finds the slot taken.
    assert_eq!(sibling.acquire("3.0.0").await.unwrap(), halted);
    assert!(busy_detail(&next).await.contains("failed_lock"));

    // `slots release` of the halted holder points at resume instead of lifting the halt.
    let out = run_sidekick(
        dir.path(),
        &["slots", "release", "--holder", "failed", "--config", &cfg],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("slots resume"));
    assert_eq!(holders(&state), ["failed"]);

    let out = stdout(&run_sidekick(dir.path(), &["slots", "resume", "--config", &cfg]).await);
    assert_eq!(
        out.trim(),
        format!(
            "resumed FleetLock group web (was halted at version 3.0.0 by web-failed: \
             not healthy within 60s); unlocked failed at {base}"
        )
    );
    assert!(holders(&state).is_empty());
    assert_eq!(next.acquire("3.0.0").await.unwrap(), Acquisition::Acquired);
    let out = stdout(&run_sidekick(dir.path(), &["slots", "resume", "--config", &cfg]).await);
    assert!(out.contains("not halted"), "{out}");
}

#[tokio::test]
async fn fleetlock_server_that_is_down_is_an_error_not_a_refusal() {
    let base = Url::parse(&format!(
        "http://127.0.0.1:{}/",
        super::support::free_port()
    ))
    .unwrap();
    let dir = temp_dir("fleetlock");
    let err = client(&base, "web", "a", dir.path())
        .acquire("2.0.0")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "http", "{err}");
}
