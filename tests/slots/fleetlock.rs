//! The FleetLock backend against a server written here from the protocol description (airlock
//! itself cannot be built here): header and body checks, recursive lock, per-group slots, and the
//! refusals real servers send (airlock's 500 `failed_lock`, a 423, 400 `unknown_group`).

use std::collections::{BTreeSet, HashMap};
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

fn client(base: &Url, group: &str, id: &str) -> FleetLockSlots {
    FleetLockSlots::new(base, group, &who(id)).expect("FleetLock client")
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
    let a = client(&base, "web", "a");
    let b = client(&base, "web", "b");

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
    let a = client(&base, "web", "a");
    let b = client(&base, "web", "b");
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let detail = busy_detail(&b).await;
    assert!(
        detail.contains("423") && detail.contains("failed_lock"),
        "{detail}"
    );
}

#[tokio::test]
async fn fleetlock_unknown_group_is_400_not_granted_and_unlock_reports_it() {
    let (base, _state) = serve(StatusCode::INTERNAL_SERVER_ERROR).await;
    let stray = client(&base, "no-such-group", "a");
    let detail = busy_detail(&stray).await;
    assert!(
        detail.contains("400") && detail.contains("unknown_group"),
        "{detail}"
    );
    match stray.release_stale().await {
        Err(err @ SlotError::Refused { status: 400, .. }) => assert_eq!(err.kind(), "refused"),
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn fleetlock_server_that_is_down_is_an_error_not_a_refusal() {
    let base = Url::parse(&format!(
        "http://127.0.0.1:{}/",
        super::support::free_port()
    ))
    .unwrap();
    let err = client(&base, "web", "a")
        .acquire("2.0.0")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "http", "{err}");
}
