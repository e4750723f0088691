//! The admin JSON API: create, replace or delete apps, create or replace packages, channels and
//! groups, publish a version, set a group's policy, and list instances. Every JSON answer ends
//! with a newline.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ServerState;
use super::model::{
    App, Channel, EventRecord, Group, InstanceStatus, Package, Policy, Store, app_key,
};

/// An admin error: a status and a message, sent as `{"error": "..."}`.
pub struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type AdminResult = Result<Json<serde_json::Value>, AdminError>;

fn bad_request(message: impl Into<String>) -> AdminError {
    AdminError(StatusCode::BAD_REQUEST, message.into())
}

fn app_mut<'a>(store: &'a mut Store, app: &str) -> Result<&'a mut App, AdminError> {
    store
        .apps
        .get_mut(&app_key(app))
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no app {app}")))
}

fn check_package(package: &Package) -> Result<(), AdminError> {
    Version::parse(&package.version).map_err(|_| {
        bad_request(format!(
            "package version {:?} is not semver",
            package.version
        ))
    })?;
    if package.url.is_empty() {
        return Err(bad_request("package url is empty"));
    }
    Ok(())
}

/// Body of `PUT /api/apps/{app}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppBody {
    #[serde(default)]
    name: String,
}

/// `PUT /api/apps/{app}`: creates the app, or renames it keeping its contents.
pub async fn put_app(
    State(state): State<Arc<ServerState>>,
    Path(app): Path<String>,
    body: Option<Json<AppBody>>,
) -> AdminResult {
    let name = body.map(|Json(b)| b.name).unwrap_or_default();
    state.mutate(|store| {
        store.apps.entry(app_key(&app)).or_default().name = name.clone();
        Ok(json!({ "app": app_key(&app), "name": name }))
    })
}

/// `DELETE /api/apps/{app}`: removes the app with its packages, channels, groups and instances
/// (the walkthrough's clean-up); 404 when there is none.
pub async fn delete_app(
    State(state): State<Arc<ServerState>>,
    Path(app): Path<String>,
) -> AdminResult {
    state.mutate(|store| {
        store
            .apps
            .remove(&app_key(&app))
            .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no app {app}")))?;
        Ok(json!({ "deleted": app_key(&app) }))
    })
}

/// Ends every JSON answer with a newline, so `curl` output in a terminal ends its line.
pub async fn end_json_with_newline(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut text = bytes.to_vec();
    text.push(b'\n');
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// `PUT /api/apps/{app}/packages/{package}`.
pub async fn put_package(
    State(state): State<Arc<ServerState>>,
    Path((app, id)): Path<(String, String)>,
    Json(package): Json<Package>,
) -> AdminResult {
    check_package(&package)?;
    state.mutate(|store| {
        app_mut(store, &app)?
            .packages
            .insert(id.clone(), package.clone());
        Ok(json!({ "package": id }))
    })
}

/// `PUT /api/apps/{app}/channels/{channel}`.
pub async fn put_channel(
    State(state): State<Arc<ServerState>>,
    Path((app, id)): Path<(String, String)>,
    Json(channel): Json<Channel>,
) -> AdminResult {
    state.mutate(|store| {
        let app = app_mut(store, &app)?;
        if let Some(package) = channel
            .package
            .as_ref()
            .filter(|p| !app.packages.contains_key(*p))
        {
            return Err(bad_request(format!("no package {package}")));
        }
        app.channels.insert(id.clone(), channel.clone());
        Ok(json!({ "channel": id }))
    })
}

/// `PUT /api/apps/{app}/groups/{group}`.
pub async fn put_group(
    State(state): State<Arc<ServerState>>,
    Path((app, id)): Path<(String, String)>,
    Json(group): Json<Group>,
) -> AdminResult {
    state.mutate(|store| {
        let app = app_mut(store, &app)?;
        if let Some(channel) = group
            .channel
            .as_ref()
            .filter(|c| !app.channels.contains_key(*c))
        {
            return Err(bad_request(format!("no channel {channel}")));
        }
        app.groups.insert(id.clone(), group.clone());
        Ok(json!({ "group": id }))
    })
}

/// `POST /api/apps/{app}/channels/{channel}/publish`: stores the package under its version and points the channel at it.
pub async fn publish(
    State(state): State<Arc<ServerState>>,
    Path((app, channel)): Path<(String, String)>,
    Json(package): Json<Package>,
) -> AdminResult {
    check_package(&package)?;
    state.mutate(|store| {
        let app = app_mut(store, &app)?;
        let id = package.version.clone();
        app.packages.insert(id.clone(), package.clone());
        let entry = app
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Channel {
                arch: "amd64".into(),
                package: None,
            });
        entry.package = Some(id.clone());
        Ok(json!({ "channel": channel, "package": id }))
    })
}

/// `PUT /api/apps/{app}/groups/{group}/policy`.
pub async fn put_policy(
    State(state): State<Arc<ServerState>>,
    Path((app, group)): Path<(String, String)>,
    Json(policy): Json<Policy>,
) -> AdminResult {
    if policy.max_updates_per_period == 0 {
        return Err(bad_request("max_updates_per_period must be > 0"));
    }
    state.mutate(|store| {
        let app = app_mut(store, &app)?;
        let entry = app
            .groups
            .get_mut(&group)
            .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no group {group}")))?;
        entry.policy = policy.clone();
        Ok(json!({ "group": group }))
    })
}

/// One row of `GET /api/apps/{app}/instances`.
#[derive(Debug, Serialize)]
pub struct InstanceRow {
    machine_id: String,
    /// The sidekick's instance name (`web-1`), when its requests carry one.
    name: Option<String>,
    group: String,
    version: String,
    status: InstanceStatus,
    status_code: u8,
    update_in_progress: bool,
    last_update_version: Option<String>,
    last_events: Vec<EventRecord>,
    update_checks: u64,
}

/// `GET /api/apps/{app}/instances`.
pub async fn list_instances(
    State(state): State<Arc<ServerState>>,
    Path(app): Path<String>,
) -> AdminResult {
    let mut store = state.lock();
    let app = app_mut(&mut store, &app)?;
    let rows: Vec<InstanceRow> = app
        .instances
        .iter()
        .map(|(id, i)| InstanceRow {
            machine_id: id.clone(),
            name: i.name.clone(),
            group: i.group.clone(),
            version: i.version.clone(),
            status: i.status,
            status_code: i.status as u8,
            update_in_progress: i.update_in_progress,
            last_update_version: i.last_update_version.clone(),
            last_events: i.events.clone(),
            update_checks: i.update_checks,
        })
        .collect();
    Ok(Json(json!(rows)))
}
