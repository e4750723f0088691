//! A small Omaha update service with Nebraska's semantics for the subset sidekick uses: apps,
//! groups selected by track, channels pointing at packages, the rollout policy, grants re-served
//! until completed, the events table and instance statuses. NOT for production: no auth, no TLS,
//! state in memory or one JSON file.
//!
//! Shared by `examples/omaha_server/main.rs` and the integration tests, which include it with
//! `#[path]`, so not every item is used by each.
#![allow(dead_code)]

pub mod admin;
pub mod model;
pub mod omaha;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use model::Store;

/// Largest Omaha request accepted, as Nebraska's `UpdateMaxRequestSize`.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The server's state, optionally mirrored to a JSON file after every change.
#[derive(Debug, Default)]
pub struct ServerState {
    store: Mutex<Store>,
    state_file: Option<PathBuf>,
}

impl ServerState {
    /// An empty state kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A state loaded from `path` when it exists, and saved there after every change.
    pub fn with_file(path: PathBuf) -> anyhow::Result<Self> {
        let store = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            store: Mutex::new(store),
            state_file: Some(path),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a change and saves the result when it succeeded.
    fn mutate<T>(
        &self,
        change: impl FnOnce(&mut Store) -> Result<T, admin::AdminError>,
    ) -> Result<axum::Json<T>, admin::AdminError> {
        let mut store = self.lock();
        let value = change(&mut store)?;
        self.save(&store);
        Ok(axum::Json(value))
    }

    fn save(&self, store: &Store) {
        let Some(path) = &self.state_file else { return };
        let tmp = path.with_extension("tmp");
        let result = serde_json::to_vec_pretty(store)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "failed to save state");
        }
    }
}

/// The routes: `/v1/update[/]` for Omaha, `/api/...` for administration.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/update", post(omaha_endpoint))
        .route("/v1/update/", post(omaha_endpoint))
        .route(
            "/api/apps/{app}",
            put(admin::put_app).delete(admin::delete_app),
        )
        .route(
            "/api/apps/{app}/packages/{package}",
            put(admin::put_package),
        )
        .route(
            "/api/apps/{app}/channels/{channel}",
            put(admin::put_channel),
        )
        .route(
            "/api/apps/{app}/channels/{channel}/publish",
            post(admin::publish),
        )
        .route("/api/apps/{app}/groups/{group}", put(admin::put_group))
        .route(
            "/api/apps/{app}/groups/{group}/policy",
            put(admin::put_policy),
        )
        .route("/api/apps/{app}/instances", get(admin::list_instances))
        .layer(axum::middleware::map_response(admin::end_json_with_newline))
        .with_state(state)
}

/// Serves the router on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

async fn omaha_endpoint(
    axum::extract::State(state): axum::extract::State<Arc<ServerState>>,
    body: Body,
) -> Response {
    // Nebraska answers an oversized request with 400 and an empty body.
    let Ok(bytes) = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let answer = {
        let mut store = state.lock();
        let answer = omaha::answer(&mut store, &text, now_ms());
        state.save(&store);
        answer
    };
    ([(header::CONTENT_TYPE, "text/xml")], answer).into_response()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
