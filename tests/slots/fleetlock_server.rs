//! A FleetLock test server that answers exactly like the two real servers recorded in the design
//! notes (`reference/fleetlock/`): coreos/airlock and heathcliff26/fleetlock. Same statuses, the
//! headers that matter (`Content-Type`, `X-Content-Type-Options`, `Allow`, `Location`) and the same
//! bodies, byte for byte, for every recorded case: grant, recursive lock, slots full, unlock by a
//! non-holder, unknown group, bad header, bad JSON, empty id or group, wrong method, wrong path.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use url::Url;

/// Which real server to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// coreos/airlock a3585edf.
    Airlock,
    /// heathcliff26/fleetlock 3e0ee619.
    Heathcliff,
}

/// A FleetLock server's state: slots and holders per group.
pub struct Server {
    pub flavour: Flavour,
    pub groups: HashMap<String, (usize, BTreeSet<String>)>,
    /// Lock and unlock requests that reached a handler.
    pub requests: usize,
    /// airlock with its etcd stopped: every request fails with `failed_sem_init`.
    pub etcd_down: bool,
}

pub type Shared = Arc<Mutex<Server>>;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// An error in the flavour's shape: airlock's compact JSON with a newline and `nosniff`,
/// heathcliff26's two-space indented JSON without one.
fn error(flavour: Flavour, status: StatusCode, kind: &str, value: &str) -> Response {
    let body = json!({"kind": kind, "value": value});
    match flavour {
        Flavour::Airlock => (
            status,
            [
                (header::CONTENT_TYPE, TEXT_PLAIN),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            format!("{body}\n"),
        )
            .into_response(),
        Flavour::Heathcliff => (
            status,
            [(header::CONTENT_TYPE, TEXT_PLAIN)],
            serde_json::to_string_pretty(&body).unwrap_or_default(),
        )
            .into_response(),
    }
}

fn success(flavour: Flavour) -> Response {
    match flavour {
        Flavour::Airlock => StatusCode::OK.into_response(),
        // heathcliff26 sends its success in the error shape.
        Flavour::Heathcliff => error(
            flavour,
            StatusCode::OK,
            "success",
            "The operation was succesfull",
        ),
    }
}

/// Go's `http.Error` text answers (404, 405), the same on both servers.
fn go_text(status: StatusCode, text: &str, extra: Option<(header::HeaderName, &str)>) -> Response {
    let mut resp = (
        status,
        [
            (header::CONTENT_TYPE, TEXT_PLAIN),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{text}\n"),
    )
        .into_response();
    if let Some((name, value)) = extra
        && let Ok(value) = value.parse()
    {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// The client's group and id, or the 400 the flavour sends for a bad request.
fn identity(
    flavour: Flavour,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(String, String), Box<Response>> {
    let header = headers
        .get("fleet-lock-protocol")
        .and_then(|v| v.to_str().ok());
    let bad = StatusCode::BAD_REQUEST;
    match flavour {
        Flavour::Airlock => {
            let invalid = |why: &str| {
                let value = format!("failed to validate client identity: {why}");
                Box::new(error(flavour, bad, "invalid_client_identity", &value))
            };
            if header != Some("true") {
                return Err(invalid("wrong 'fleet-lock-protocol' header"));
            }
            if body.is_empty() {
                return Err(invalid("EOF"));
            }
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| invalid("invalid character 'o' in literal null (expecting 'u')"))?;
            let group = v["client_params"]["group"].as_str().unwrap_or_default();
            let id = v["client_params"]["id"].as_str().unwrap_or_default();
            if id.is_empty() {
                return Err(invalid("empty client ID"));
            }
            if group.is_empty() {
                return Err(invalid("empty client group"));
            }
            Ok((group.to_string(), id.to_string()))
        }
        Flavour::Heathcliff => {
            let bad_request = |why: &str| Box::new(error(flavour, bad, "bad_request", why));
            if !header.is_some_and(|h| h.eq_ignore_ascii_case("true")) {
                let why = "The header fleet-lock-protocol must be set to true";
                return Err(Box::new(error(
                    flavour,
                    bad,
                    "missing_fleetlock_header",
                    why,
                )));
            }
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| bad_request("The request json could not be parsed"))?;
            let group = v["client_params"]["group"].as_str().unwrap_or_default();
            let id = v["client_params"]["id"].as_str().unwrap_or_default();
            if id.is_empty() {
                return Err(bad_request("The value of id is empty"));
            }
            if !sidekick::slot::group_name::valid_group(group) {
                return Err(bad_request(
                    "The value of group is invalid or empty. It must conform to \"^[a-zA-Z0-9.-]+$\"",
                ));
            }
            Ok((group.to_string(), id.to_string()))
        }
    }
}

fn unknown_group(flavour: Flavour, group: &str) -> Response {
    match flavour {
        Flavour::Airlock => error(
            flavour,
            StatusCode::BAD_REQUEST,
            "unknown_group",
            &format!("unknown group \"{group}\""),
        ),
        Flavour::Heathcliff => error(
            flavour,
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "An unexpected error occured",
        ),
    }
}

/// Both endpoints: checks method, identity, etcd and group in the order the real servers do.
fn handle(s: &Shared, method: &Method, headers: &HeaderMap, body: &Bytes, lock: bool) -> Response {
    let flavour = s.lock().map(|s| s.flavour).unwrap_or(Flavour::Airlock);
    // airlock does not check the method; heathcliff26's router answers 405.
    if flavour == Flavour::Heathcliff && method != Method::POST {
        let allow = Some((header::ALLOW, "POST"));
        return go_text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", allow);
    }
    let (group, id) = match identity(flavour, headers, body) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let Ok(mut s) = s.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    s.requests += 1;
    if s.etcd_down {
        let value = "failed to initialize semaphore manager: context deadline exceeded";
        return error(
            flavour,
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_sem_init",
            value,
        );
    }
    let Some((slots, holders)) = s.groups.get_mut(&group) else {
        return unknown_group(flavour, &group);
    };
    if !lock {
        holders.remove(&id);
        return success(flavour);
    }
    // Recursive: a holder that asks again keeps its lock.
    if holders.contains(&id) || holders.len() < *slots {
        holders.insert(id);
        return success(flavour);
    }
    match flavour {
        Flavour::Airlock => {
            let value = format!("all {slots} semaphore slots currently locked");
            error(
                flavour,
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed_lock",
                &value,
            )
        }
        Flavour::Heathcliff => error(
            flavour,
            StatusCode::LOCKED,
            "all_slots_full",
            "Could not reserve a slot as all slots in the group are currently locked already",
        ),
    }
}

async fn pre_reboot(
    State(s): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, &method, &headers, &body, true)
}

async fn steady_state(
    State(s): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, &method, &headers, &body, false)
}

/// Go's mux: a path with `//` is redirected to its clean form (airlock 301, heathcliff26 307);
/// anything else unknown is a 404.
async fn not_found(State(s): State<Shared>, uri: Uri) -> Response {
    let flavour = s.lock().map(|s| s.flavour).unwrap_or(Flavour::Airlock);
    let path = uri.path();
    if path.contains("//") {
        let clean = path.replace("//", "/");
        let status = match flavour {
            Flavour::Airlock => StatusCode::MOVED_PERMANENTLY,
            Flavour::Heathcliff => StatusCode::TEMPORARY_REDIRECT,
        };
        return (status, [(header::LOCATION, clean)]).into_response();
    }
    go_text(StatusCode::NOT_FOUND, "404 page not found", None)
}

/// Serves `flavour` under `/fleetlock` (see [`serve_at`]): the base URL *without* a trailing
/// slash, the case zincati once got wrong.
pub async fn serve(flavour: Flavour) -> (Url, Shared) {
    serve_at(flavour, "/fleetlock").await
}

/// Serves `flavour` under `prefix` (`""` for the root) on a free loopback port, with the groups
/// of the recordings (`web-stable` of one slot, `default` of two) and `web` of one slot; returns
/// the base URL and the shared state.
pub async fn serve_at(flavour: Flavour, prefix: &str) -> (Url, Shared) {
    let state = Arc::new(Mutex::new(Server {
        flavour,
        groups: HashMap::from([
            ("web".to_string(), (1, BTreeSet::new())),
            ("web-stable".to_string(), (1, BTreeSet::new())),
            ("default".to_string(), (2, BTreeSet::new())),
        ]),
        requests: 0,
        etcd_down: false,
    }));
    let routes = Router::new()
        .route("/v1/pre-reboot", any(pre_reboot))
        .route("/v1/steady-state", any(steady_state));
    let app = match prefix {
        "" => routes,
        prefix => Router::new().nest(prefix, routes),
    };
    let app = app.fallback(not_found).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = Url::parse(&format!("http://127.0.0.1:{port}{prefix}")).expect("base URL");
    (base, state)
}
